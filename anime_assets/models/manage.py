"""`anime-assets models list | verify | pull`: what the registry knows, what is here, fetching.

`list` and `verify` never touch the network. `pull` downloads hub files into the Hugging Face
cache (where the machine is online) at the revision the registry pins, checks them against the
registered sha256 or, for files with none, records their sha256 in the lock file
(`integrity.lock_path()`), so later checks know the file; a cached file that does not check out is
fetched again. Weights that ship inside a registry package are installed or extracted by
scripts/setup.sh, so `pull` only reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from anime_assets.models import registry
from anime_assets.models.clip import ModelUnavailable

MISMATCH = "MISMATCH"  # `verify`: the file's sha256 is not the registered or recorded one


@dataclass
class ModelStatus:
    name: str
    task: str
    source: str
    available: bool
    detail: str  # where the files are, or why they are missing / cannot be used
    license: str
    state: str = ""  # "present", "missing", "corrupt" or "unverified"


def statuses(names=None) -> list[ModelStatus]:
    out = []
    for name in _names(names):
        spec = registry.REGISTRY[name]
        a = registry.availability(name)
        out.append(ModelStatus(name, spec.task, spec.source, a.ok, a.reason, spec.license, a.state))
    return out


def verify(names=None) -> list[tuple[str, str, str]]:
    """(model, file, verdict) for every local file of the models. Verdicts: 'ok' (its sha256 is the
    registered or recorded one), 'MISMATCH' (it is not), 'CORRUPT (why)' (no digest known, and not a
    model file at all), 'UNVERIFIED (why)' (no digest known: not pulled by `models pull`).
    Models with no local file are left out."""
    rows = []
    for name in _names(names):
        for path in registry.local_files(name):
            rows.append((name, str(path), verdict(registry.check_file(name, path))))
    return rows


def verdict(check: registry.FileCheck) -> str:
    if check.ok:
        return "ok"
    if check.state == "corrupt" and check.expected is not None and check.sha256 != check.expected:
        return MISMATCH
    return f"{check.state.upper()} ({check.reason})"


def pull(names=None) -> list[tuple[str, bool, str]]:
    """(model, available afterwards, what happened) for the models; downloads hub files."""
    from anime_assets.models.segment import hub_file

    out = []
    for name in _names(names):
        spec = registry.REGISTRY[name]
        before = registry.availability(name)
        if before.ok:
            out.append((name, True, f"present: {before.reason}"))
            continue
        if not spec.source.startswith(registry.HF_PREFIX):
            out.append((name, False, f"not downloadable by pull ({before.reason})"))
            continue
        repo_id = spec.source[len(registry.HF_PREFIX):]
        try:
            path = hub_file(repo_id, spec.files[0], allow_download=True, force=_refetch(repo_id, spec.files[0]))
            for extra in spec.requires:
                hub_file(repo_id, extra, allow_download=True, force=_refetch(repo_id, extra))
        except ModelUnavailable as e:
            out.append((name, False, str(e)))
            continue
        after = registry.availability(name)
        out.append((name, after.ok, f"downloaded {path} ({after.reason})" if after.ok else after.reason))
    return out


def _refetch(repo_id: str, filename: str) -> bool:
    """A cached file whose recorded digest checks out but which is no model (a junk download was
    recorded): fetch it again instead of taking the cached copy (hub_file does that by itself for
    a file whose digest does not check out)."""
    found = registry.find_cached_file(repo_id, (filename,))
    return found is not None and registry.check_hub_file(repo_id, found, format_check=True).state == "corrupt"


def _names(names) -> list[str]:
    if not names:
        return sorted(registry.REGISTRY)
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.REGISTRY))}")
    return list(names)
