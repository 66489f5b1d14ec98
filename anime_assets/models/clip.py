"""CLIP image/text embeddings through open_clip, loaded from local files only by default.

Weights are resolved before open_clip is asked to build anything, so a machine without the
weights fails in milliseconds with `ModelUnavailable(reason)` instead of hanging on a download
(this pipeline runs on offline machines). Sources, all going through open_clip's own loaders:

* a pretrained tag, e.g. `load_clip("ViT-B-32", "laion2b_s34b_b79k")`: its hub repo must be in
  the local Hugging Face cache;
* `"hf-hub:org/repo"` (as `pretrained` or `model_name`): the cached snapshot is loaded with
  open_clip's `local-dir:` schema (config + weights from the snapshot);
* a local checkpoint file (`.safetensors` preferred; `.bin/.pt/.pth` loaded with
  weights_only=True) for the `model_name` architecture, or a folder with open_clip_config.json.

Preprocessing (resize shortest side, centre crop, normalise) is done with cv2/numpy; JPEGs are
decoded at reduced size (libjpeg DCT scaling). On a GPU, or when torch leaves a core free, it
runs on a background thread one batch ahead of the model; on a CPU where torch uses every core
it runs inline, which costs only a few % of the forward pass (bench/bench_embed.py).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from anime_assets.models import integrity, registry

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_BATCH_SIZE = 32
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here (weights not cached, offline, unknown tag, bad file)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Preprocess:
    """What open_clip's eval transform does, as numbers we can apply with cv2."""

    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resize_mode: str = "shortest"  # "shortest": resize + centre crop; "squash": plain resize

    @classmethod
    def from_open_clip(cls, cfg: dict) -> Preprocess:
        size = cfg.get("size", 224)
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mode = cfg.get("resize_mode", "shortest")
        return cls(size, tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD)), mode)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (any size) -> (n, 3, S, S) float32, normalised."""
        s = self.image_size
        out = np.empty((len(images), s, s, 3), np.float32)
        for i, image in enumerate(images):
            out[i] = self._square(as_rgb_uint8(image))
        # One vectorised pass for the whole batch: x/255 - mean) / std == x*a - b.
        scale = (1.0 / (255.0 * np.asarray(self.std, np.float32))).astype(np.float32)
        shift = (np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)).astype(np.float32)
        out *= scale
        out -= shift
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def _square(self, rgb: np.ndarray) -> np.ndarray:
        s = self.image_size
        h, w = rgb.shape[:2]
        if self.resize_mode == "squash":
            return resize(rgb, s, s)
        ratio = s / min(h, w)
        nh, nw = max(s, round(h * ratio)), max(s, round(w * ratio))
        resized = resize(rgb, nw, nh)
        top, left = (nh - s) // 2, (nw - s) // 2
        return resized[top : top + s, left : left + s]


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    # INTER_AREA when shrinking: it averages, like the antialiased PIL resize CLIP was trained
    # with (cv2's cubic would alias on 1080p line art); cubic when enlarging.
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    shrinking = width * height < w * h
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images, got dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected HxWx3 RGB images, got shape {image.shape}")
    return image[:, :, :3]


def read_rgb(path: str | os.PathLike, min_side: int = 0) -> np.ndarray:
    """Decode an image file to RGB uint8. With `min_side`, large JPEGs are decoded at 1/2, 1/4 or
    1/8 scale (libjpeg's DCT scaling, much faster than a full decode + resize) as long as the
    short side stays >= min_side."""
    path = os.fspath(path)
    flags = cv2.IMREAD_COLOR
    if min_side > 0:
        short = _jpeg_short_side(path)
        if short:
            for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
                if short // factor >= min_side:
                    flags = flag
                    break
    bgr = cv2.imread(path, flags)
    if bgr is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _jpeg_short_side(path: str) -> int | None:
    """Short side of a JPEG from its SOF header (None if not a JPEG or unreadable)."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return None
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                kind = marker[1]
                length = int.from_bytes(f.read(2), "big")
                if kind in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    header = f.read(5)
                    height, width = int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
                    return min(height, width)
                f.seek(length - 2, os.SEEK_CUR)
    except OSError:
        return None


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate `items` on a background thread, `depth` items ahead; re-raises its errors.

    cv2 and numpy release the GIL, so the next batch is decoded/preprocessed while torch runs.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
        except BaseException as exc:  # hand the error to the consumer
            q.put((False, exc))
            return
        q.put((True, done))

    thread = threading.Thread(target=work, name="clip-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure_torch_threads(num_threads: int | None = None) -> int:
    """Use the cores this process may run on (2 here), not the machine's count."""
    num_threads = max(1, int(num_threads if num_threads is not None else usable_cores()))
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads


class ClipEmbedder:
    """Batched, L2-normalised CLIP embeddings of RGB uint8 images and of texts."""

    def __init__(
        self,
        model: torch.nn.Module,
        model_id: str,
        preprocess: Preprocess,
        tokenizer: Callable | None = None,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        prefetch: bool | None = None,
    ):
        self.model = model.eval().to(device)
        self.model_id = model_id
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dim = _embed_dim(model)
        # Decode + preprocess the next batch on a thread while the model runs. Measured on the
        # 2-core CPU (bench/bench_embed.py, quiet machine): 1.01x the bare forward throughput
        # with the thread, 0.89x inline - torch leaves enough gaps between its parallel ops.
        if prefetch is None:
            prefetch = True
        self.use_prefetch = prefetch

    # ---- images ------------------------------------------------------------------
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised, in input order."""
        batches = (images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size))
        return self.embed_batches(self.preprocess(b) for b in batches)

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Like embed_images, decoding the files on the prefetch thread (reduced-size JPEG decode)."""
        size = self.preprocess.image_size

        def batches():
            for i in range(0, len(paths), self.batch_size):
                yield self.preprocess([read_rgb(p, min_side=size) for p in paths[i : i + self.batch_size]])

        return self.embed_batches(batches())

    def embed_batches(self, pixel_batches: Iterable[np.ndarray]) -> np.ndarray:
        """Run the model over preprocessed (b, 3, S, S) batches (the next one prefetched on a
        thread when `use_prefetch`)."""
        batches = prefetch(pixel_batches) if self.use_prefetch else pixel_batches
        outputs = [self.forward_pixels(batch) for batch in batches]
        if not outputs:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(outputs)

    def forward_pixels(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """The bare model step: preprocessed pixels -> normalised vectors."""
        tensor = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        with torch.inference_mode():
            features = self.model.encode_image(tensor)
        return l2_normalise(features.float().cpu().numpy())

    # ---- texts -------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise ModelUnavailable(f"{self.model_id} has no tokenizer")
        outputs = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            with torch.inference_mode():
                outputs.append(l2_normalise(self.model.encode_text(tokens).float().cpu().numpy()))
        return np.concatenate(outputs) if outputs else np.zeros((0, self.dim), np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _embed_dim(model: torch.nn.Module) -> int:
    visual = getattr(model, "visual", None)
    dim = getattr(visual, "output_dim", None)
    if dim is None and getattr(model, "text_projection", None) is not None:
        dim = model.text_projection.shape[-1]
    if dim is None:
        raise ValueError("cannot tell the embedding dim of this model")
    return int(dim)


# ---------------------------------------------------------------- loading
def load_clip(
    model_name: str = DEFAULT_MODEL,
    pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_threads: int | None = None,
    allow_download: bool = False,
) -> ClipEmbedder:
    """Load an open_clip model from local files, or raise ModelUnavailable fast.

    `allow_download=True` lets a machine with network fetch missing hub files first (short
    timeout; ignored when HF_HUB_OFFLINE=1). The pipeline itself never downloads.
    """
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - it is a pinned dependency
        raise ModelUnavailable(f"open_clip is not installed: {exc}") from exc
    configure_torch_threads(num_threads)

    if isinstance(model_name, str) and model_name.startswith(registry.HF_PREFIX):
        model_name, pretrained = DEFAULT_MODEL, model_name
    if pretrained is None:
        raise ModelUnavailable("no pretrained weights given; refusing to embed with a randomly initialised model")
    source = os.fspath(pretrained)

    force_preprocess: dict = {}
    if source.startswith(registry.HF_PREFIX):
        repo_id = source[len(registry.HF_PREFIX) :].strip("/")
        snapshot = _hub_snapshot(repo_id, ("open_clip_config.json",), allow_download)
        build_name, checkpoint, model_id = f"local-dir:{snapshot}", None, f"open_clip:hf-hub:{repo_id}"
    elif _looks_like_path(source):
        path = Path(source).expanduser()
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise ModelUnavailable(f"{path} has no open_clip_config.json")
            _weights_in(path)
            build_name, checkpoint = f"local-dir:{path}", None
            model_id = f"open_clip:local-dir:{path.name}"
        elif path.is_file():
            if path.suffix not in CHECKPOINT_SUFFIXES:
                raise ModelUnavailable(f"{path}: expected one of {CHECKPOINT_SUFFIXES}")
            build_name, checkpoint = model_name, path
            # The file's digest, not its path, names the weights: same file -> same vectors.
            model_id = f"open_clip:{model_name}/file-{integrity.sha256_file(path)[:12]}"
        else:
            raise ModelUnavailable(f"checkpoint {path} does not exist")
    else:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, source)
        if not tag_cfg:
            raise ModelUnavailable(
                f"unknown open_clip pretrained tag {source!r} for {model_name!r} "
                f"(known: {open_clip.list_pretrained_tags_by_model(model_name)})"
            )
        checkpoint = _tag_checkpoint(tag_cfg, model_name, source, allow_download)
        build_name, model_id = model_name, f"open_clip:{model_name}/{source}"
        # A checkpoint passed as a file does not carry the tag's preprocessing; pass it on.
        force_preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}

    try:
        kwargs = dict(device=device, weights_only=True, require_pretrained=True)
        if checkpoint is not None:
            kwargs["pretrained"] = str(checkpoint)
        if force_preprocess:
            kwargs["force_preprocess_cfg"] = force_preprocess
        model = open_clip.create_model(build_name, **kwargs)
    except ModelUnavailable:
        raise
    except Exception as exc:  # bad file, wrong architecture, unpickling refused, ...
        raise ModelUnavailable(f"open_clip could not load {model_id}: {type(exc).__name__}: {exc}") from exc

    preprocess = Preprocess.from_open_clip(dict(getattr(model.visual, "preprocess_cfg", {})))
    try:
        tokenizer = open_clip.get_tokenizer(build_name)
    except Exception:  # a tokenizer that would need a download: images still work
        tokenizer = None
    return ClipEmbedder(model, model_id, preprocess, tokenizer, device=device, batch_size=batch_size)


def _looks_like_path(source: str) -> bool:
    return os.sep in source or source.startswith((".", "~")) or source.endswith(CHECKPOINT_SUFFIXES)


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    others = sorted(p for p in folder.glob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if others:
        return others[0]
    # open_clip would silently build a random model here; we refuse.
    raise ModelUnavailable(f"no weights ({' / '.join(WEIGHT_FILES)}) in {folder}")


def _hub_snapshot(repo_id: str, required: tuple[str, ...], allow_download: bool) -> Path:
    snapshot = registry.cached_hf_snapshot(repo_id)
    if snapshot is not None and all((snapshot / f).is_file() for f in required):
        _weights_in(snapshot)
        return snapshot
    where = f"the Hugging Face cache at {registry.hf_cache_dir()}"
    if not allow_download or registry.hf_offline():
        why = "HF_HUB_OFFLINE is set" if registry.hf_offline() else "downloads are off (allow_download=False)"
        raise ModelUnavailable(f"hf-hub:{repo_id} is not in {where} and {why}")
    unreachable = registry.hub_unreachable_reason()
    if unreachable:
        raise ModelUnavailable(f"hf-hub:{repo_id} is not in {where} and {unreachable}")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id,
            allow_patterns=[*required, *WEIGHT_FILES],
            cache_dir=registry.hf_cache_dir(),
            etag_timeout=10,
        )
    except Exception as exc:
        raise ModelUnavailable(f"could not download hf-hub:{repo_id}: {type(exc).__name__}: {exc}") from exc
    snapshot = Path(path)
    _weights_in(snapshot)
    return snapshot


def _tag_checkpoint(tag_cfg: dict, model_name: str, tag: str, allow_download: bool) -> Path:
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        # open_clip's convention: "org/repo/" = default weight files, "org/repo/file.bin" = that file.
        repo_id, filename = (hub.strip("/"), "") if hub.endswith("/") else os.path.split(hub)
        names = (filename,) if filename else WEIGHT_FILES
        found = registry.find_cached_file(repo_id, names)
        if found is not None:
            return found
        if allow_download and not registry.hf_offline():
            return _weights_in(_hub_snapshot(repo_id, (), allow_download=True))
        why = "HF_HUB_OFFLINE is set" if registry.hf_offline() else "downloads are off (allow_download=False)"
        raise ModelUnavailable(
            f"weights of {model_name}/{tag} (hf-hub:{repo_id}) are not in the Hugging Face cache at "
            f"{registry.hf_cache_dir()} and {why}"
        )
    url = tag_cfg.get("url", "")
    if url:  # OpenAI-hosted weights: open_clip caches them under ~/.cache/clip
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return cached
        raise ModelUnavailable(f"weights of {model_name}/{tag} ({url}) are not cached at {cached}")
    raise ModelUnavailable(f"{model_name}/{tag} has no download source")


def write_open_clip_config(folder: Path, model_cfg: dict, preprocess_cfg: dict | None = None) -> Path:
    """Write the `open_clip_config.json` open_clip expects next to hub/local-dir weights."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "open_clip_config.json"
    path.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}, indent=1))
    return path
