"""`anime-assets models list | verify | pull`: what the registry knows, what is here, fetching.

`list` and `verify` never touch the network. `pull` downloads hub files into the Hugging Face
cache (where the machine is online); weights that ship inside a registry package are installed
or extracted by scripts/setup.sh, so `pull` only reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from anime_assets.models import registry
from anime_assets.models.clip import ModelUnavailable


@dataclass
class ModelStatus:
    name: str
    task: str
    source: str
    available: bool
    detail: str  # where the files are, or why they are missing
    license: str


def statuses(names=None) -> list[ModelStatus]:
    out = []
    for name in _names(names):
        spec = registry.REGISTRY[name]
        ok, why = registry.is_available(name)
        out.append(ModelStatus(name, spec.task, spec.source, ok, why, spec.license))
    return out


def verify(names=None) -> list[tuple[str, str, str]]:
    """(model, file, verdict) for every local file of the models: 'ok', 'MISMATCH' or
    'no digest registered (sha256 ...)'. Models with no local file are left out."""
    rows = []
    for name in _names(names):
        spec = registry.REGISTRY[name]
        for path in registry.local_files(name):
            digest = registry.sha256_file(path)
            expected = spec.sha256.get(path.name)
            verdict = "ok" if expected == digest else ("MISMATCH" if expected else f"no digest registered (sha256 {digest})")
            rows.append((name, str(path), verdict))
    return rows


def pull(names=None) -> list[tuple[str, bool, str]]:
    """(model, available afterwards, what happened) for the models; downloads hub files."""
    from anime_assets.models.segment import hub_file

    out = []
    for name in _names(names):
        spec = registry.REGISTRY[name]
        ok, why = registry.is_available(name)
        if ok:
            out.append((name, True, f"present: {why}"))
            continue
        if not spec.source.startswith(registry.HF_PREFIX):
            out.append((name, False, f"not downloadable by pull ({why})"))
            continue
        repo_id = spec.source[len(registry.HF_PREFIX):]
        try:
            path = hub_file(repo_id, spec.files[0], allow_download=True)
            for extra in spec.requires:
                hub_file(repo_id, extra, allow_download=True)
        except ModelUnavailable as e:
            out.append((name, False, str(e)))
            continue
        ok, why = registry.is_available(name)
        out.append((name, ok, f"downloaded {path}" if ok else why))
    return out


def _names(names) -> list[str]:
    if not names:
        return sorted(registry.REGISTRY)
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.REGISTRY))}")
    return list(names)
