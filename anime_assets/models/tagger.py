"""Danbooru tags for anime images: SmilingWolf's WD ViT tagger v3 (ONNX, onnxruntime on the CPU).

`load_tagger("auto")` takes ``model.onnx`` and ``selected_tags.csv`` of hf-hub
``SmilingWolf/wd-vit-tagger-v3`` (Apache-2.0) from the Hugging Face cache, or downloads them
when ``allow_download`` and HF_HUB_OFFLINE is not set; otherwise it raises
`ModelUnavailable(reason)`. There is no offline fallback: no weight-free model can tag.

Preprocessing is the reference code of the WD tagger space (SmilingWolf/wd-tagger app.py),
done with Pillow as there, so the model sees the pixels it was published with: alpha composited
over white, padded to a square with white (centred), resized to the model input with bicubic
(PIL, antialiased when shrinking), RGB -> BGR, float32 0..255, no normalisation, NHWC. The
input size is read from the session (448 for v3). Tag names (Danbooru spelling, underscores)
and categories (9 rating, 0 general, 4 character) come from ``selected_tags.csv``
(tag_id,name,category,count); the model outputs sigmoid probabilities in that order.

No Dagster here.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anime_assets.models.clip import ModelUnavailable, as_rgb_uint8
from anime_assets.models.segment import _static_dim, file_sha12, hub_file, loader_key, onnx_session

WD_VIT = "wd-vit-tagger-v3"
WD_REPO = "SmilingWolf/wd-vit-tagger-v3"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
WD_SIZE = 448
RATING, GENERAL, CHARACTER = 9, 0, 4
DEFAULT_BATCH_SIZE = 8
TAGGER_NAMES = ("auto", WD_VIT, "none")
_ALIASES = {
    "auto": "wd",
    WD_VIT: "wd",
    "wd": "wd",
    "wd-tagger": "wd",
    "none": "none",
    "off": "none",
}


def preprocess(image: np.ndarray, size: int = WD_SIZE) -> np.ndarray:
    """One RGB / RGBA / grey uint8 image -> (size, size, 3) float32 BGR 0..255, as WD's reference
    code prepares it (see the module docstring)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 4:
        rgba = Image.fromarray(np.ascontiguousarray(image), "RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255))
        canvas.alpha_composite(rgba)
        pil = canvas.convert("RGB")
    else:
        pil = Image.fromarray(np.ascontiguousarray(as_rgb_uint8(image)), "RGB")
    w, h = pil.size
    side = max(w, h)
    if (w, h) != (side, side):
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(pil, ((side - w) // 2, (side - h) // 2))
        pil = square
    if side != size:
        pil = pil.resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(pil, dtype=np.float32)[:, :, ::-1])


def read_tags_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """(names, categories) from a WD ``selected_tags.csv``; ModelUnavailable when malformed."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"name", "category"} - set(reader.fieldnames or ())
            if missing:
                raise ModelUnavailable(f"{WD_VIT}: {path} has no {sorted(missing)} column (expected tag_id,name,category,count)")
            rows = [(row["name"], int(row["category"])) for row in reader]
    except (OSError, ValueError, csv.Error) as exc:
        raise ModelUnavailable(f"{WD_VIT}: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not rows:
        raise ModelUnavailable(f"{WD_VIT}: {path} lists no tags")
    return [name for name, _ in rows], np.array([cat for _, cat in rows], np.int16)


@dataclass
class Tagger:
    """A WD v3 tagger session with its tag list. `predict` is batched; `tags` thresholds."""

    session: object
    model_id: str
    names: list[str]
    categories: np.ndarray
    input_size: int
    input_name: str
    output_name: str
    batch_size: int = DEFAULT_BATCH_SIZE
    fallback_reason: str | None = None  # always None: there is no fallback tagger

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return preprocess(image, self.input_size)

    def predict(self, images) -> np.ndarray:
        """RGB (or RGBA) uint8 images of any size -> (n, T) float32 probabilities, T = len(names)."""
        images = list(images)
        out = np.zeros((len(images), len(self.names)), np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            probs = np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], np.float32)
            probs = probs.reshape(len(batch), -1)
            if probs.shape[1] != len(self.names):
                raise ValueError(f"{self.model_id} gave {probs.shape[1]} outputs for {len(self.names)} tags")
            if probs.min() < -0.01 or probs.max() > 1.01:  # an export that stops before the sigmoid
                probs = 1.0 / (1.0 + np.exp(-np.clip(probs, -50, 50)))
            out[start : start + len(batch)] = np.clip(probs, 0.0, 1.0)
        return out

    def tags(self, image: np.ndarray, general_threshold: float = 0.35, character_threshold: float = 0.85) -> dict:
        """{general: [(tag, p)] (p >= general_threshold, best first), character: [(tag, p)]
        (p >= character_threshold), rating: {rating: p}} for one image."""
        return self.tags_batch([image], general_threshold, character_threshold)[0]

    def tags_batch(self, images, general_threshold: float = 0.35, character_threshold: float = 0.85) -> list[dict]:
        """`tags` for many images, run in batches."""
        return [self.threshold(p, general_threshold, character_threshold) for p in self.predict(images)]

    def threshold(self, probs: np.ndarray, general_threshold: float = 0.35, character_threshold: float = 0.85) -> dict:
        """One row of `predict` -> the `tags` dict."""

        def pick(category: int, threshold: float) -> list[tuple[str, float]]:
            idx = np.flatnonzero((self.categories == category) & (probs >= threshold))
            idx = idx[np.argsort(-probs[idx], kind="stable")]
            return [(self.names[i], round(float(probs[i]), 4)) for i in idx]

        ratings = np.flatnonzero(self.categories == RATING)
        return {
            "general": pick(GENERAL, general_threshold),
            "character": pick(CHARACTER, character_threshold),
            "rating": {self.names[i]: round(float(probs[i]), 4) for i in ratings},
        }


def _tagger_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) of a local folder, or of a .onnx file and the csv next to it."""
    where = Path(path).expanduser()
    model = where / MODEL_FILE if where.is_dir() else where
    tags = model.parent / TAGS_FILE
    if not model.is_file():
        raise ModelUnavailable(f"{WD_VIT}: {model} does not exist (expected a folder with {MODEL_FILE} and {TAGS_FILE})")
    if not tags.is_file():
        raise ModelUnavailable(f"{WD_VIT}: {TAGS_FILE} is missing next to {model}")
    return model, tags


def load_wd_tagger(path: str | os.PathLike | None = None, *, allow_download: bool = True, batch_size: int = DEFAULT_BATCH_SIZE) -> Tagger:
    """The WD ViT v3 tagger from a local folder `path`, or the HF cache / hub."""
    if path is not None:
        model_file, tags_file = _tagger_files(path)
    else:
        try:
            model_file = hub_file(WD_REPO, MODEL_FILE, allow_download=allow_download)
            tags_file = hub_file(WD_REPO, TAGS_FILE, allow_download=allow_download)
        except ModelUnavailable as exc:
            raise ModelUnavailable(
                f"{WD_VIT} unavailable: {exc.reason}; there is no offline tagger fallback "
                f"(pull hf-hub:{WD_REPO} where there is network, or pass a local folder as path)"
            ) from exc
    names, categories = read_tags_csv(tags_file)
    session = onnx_session(model_file, WD_VIT)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[3] not in (3, "3"):
        got = [(i.name, i.shape) for i in inputs]
        raise ModelUnavailable(f"{WD_VIT}: {model_file} has inputs {got}, expected one Nx448x448x3 (NHWC) image")
    size = _static_dim(inputs[0].shape[1], WD_SIZE)
    n_out = outputs[0].shape[-1] if outputs[0].shape else None
    if isinstance(n_out, int) and n_out != len(names):
        raise ModelUnavailable(f"{WD_VIT}: {model_file} outputs {n_out} tags but {tags_file} lists {len(names)}")
    batch = inputs[0].shape[0]
    if isinstance(batch, int) and batch > 0:  # a fixed batch size (1 in some exports)
        batch_size = batch
    return Tagger(
        session=session,
        model_id=f"{WD_VIT}@{file_sha12(model_file)}",
        names=names,
        categories=categories,
        input_size=size,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        batch_size=max(1, int(batch_size)),
    )


def load_tagger(name: str = "auto", *, allow_download: bool = True, path: str | os.PathLike | None = None) -> Tagger:
    """A Danbooru tagger by name: "auto" | "wd-vit-tagger-v3" (alias "wd") | "none".

    "auto" and "wd-vit-tagger-v3" are the same model (the only one): `path` (a folder with
    model.onnx + selected_tags.csv), else the HF cache, else a download when allowed and online,
    else ModelUnavailable. An explicit `path` that cannot be loaded is an error. "none" raises
    ModelUnavailable (tagging turned off); unknown names raise ValueError.
    """
    loader_key(name, _ALIASES, TAGGER_NAMES, "tagger", "tagging is turned off (tagger 'none')")  # checks the name
    return load_wd_tagger(path, allow_download=allow_download)
