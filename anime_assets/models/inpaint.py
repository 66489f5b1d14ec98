"""Hole filling for background plates, behind one small interface.

`load_inpainter("auto")` picks, best first:

* ``lama``: LaMa exported to ONNX (hf-hub ``Carve/LaMa-ONNX``, file ``lama_fp32.onnx``, Apache-2.0),
  fixed 512x512: inputs ``image`` 1x3x512x512 RGB in [0, 1] and ``mask`` 1x1x512x512 (1 = hole),
  output 1x3x512x512 in 0..255 per its model card; the scale is checked on every call against the
  known pixels, so an export that returns [0, 1] works too. From the HF cache, or downloaded when
  ``allow_download`` and HF_HUB_OFFLINE is not set.
* ``telea``: OpenCV's Telea inpainting, weight-free and always available (smears large holes).

Frames of any size: a box around the hole with context on every side (at least 512 px when the
frame allows, so small holes are filled at native resolution) is resized to the model input,
filled, resized back, and only the hole pixels are pasted: pixels outside the hole never change.
When "auto" falls back, the inpainter's ``fallback_reason`` says why (one line, e.g. "lama-onnx
unavailable (hf-hub:Carve/LaMa-ONNX/lama_fp32.onnx is not in ... and HF_HUB_OFFLINE is set)");
log it with ``model_id``. None when LaMa loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from anime_assets.models.clip import ModelUnavailable, as_rgb_uint8
from anime_assets.models.segment import _static_dim, file_sha12, hub_file, loader_key, onnx_session

LAMA = "lama-onnx"
LAMA_REPO = "Carve/LaMa-ONNX"
LAMA_FILE = "lama_fp32.onnx"
LAMA_SIZE = 512
TELEA = "opencv-telea"
NAMES = ("auto", "lama", "telea", "none")
_ALIASES = {"auto": "auto", "lama": "lama", LAMA: "lama", "telea": "telea", TELEA: "telea", "opencv": "telea",
            "none": "none", "off": "none"}


@runtime_checkable
class Inpainter(Protocol):
    model_id: str

    def inpaint(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3), bool (H, W) -> uint8 (H, W, 3); pixels outside `hole` unchanged."""
        ...


def _check(rgb: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = as_rgb_uint8(rgb)
    hole = np.asarray(hole)
    if hole.shape != rgb.shape[:2]:
        raise ValueError(f"hole {hole.shape} does not match the image {rgb.shape[:2]}")
    return np.ascontiguousarray(rgb), hole.astype(bool, copy=False)


def context_box(hole: np.ndarray, min_side: int, context: float = 0.5, min_margin: int = 8) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the hole's bounding box grown by `context` x its longer side (at least
    `min_margin` px) on every side, made square and at least `min_side`, shifted to stay inside
    the frame and clipped to it (a frame smaller than the box gives the whole axis)."""
    h, w = hole.shape
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    margin = max(min_margin, int(round(context * max(y1 - y0, x1 - x0))))
    side = max(y1 - y0 + 2 * margin, x1 - x0 + 2 * margin, min_side)

    def span(lo: int, hi: int, limit: int) -> tuple[int, int]:
        if side >= limit:
            return 0, limit
        start = (lo + hi) // 2 - side // 2
        start = min(max(start, 0), limit - side)
        return start, start + side

    (y0, y1), (x0, x1) = span(y0, y1, h), span(x0, x1, w)
    return y0, y1, x0, x1


# ---------------------------------------------------------------- OpenCV Telea
@dataclass
class TeleaInpainter:
    model_id: str = TELEA
    radius: int = 3
    fallback_reason: str | None = None

    def inpaint(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        rgb, hole = _check(rgb, hole)
        out = rgb.copy()
        if not hole.any():
            return out
        # Telea only looks `radius` px around the hole: work on a box around it.
        y0, y1, x0, x1 = context_box(hole, 0, context=0.0, min_margin=self.radius + 2)
        crop, crop_hole = rgb[y0:y1, x0:x1], hole[y0:y1, x0:x1]
        filled = cv2.inpaint(np.ascontiguousarray(crop), crop_hole.astype(np.uint8), self.radius, cv2.INPAINT_TELEA)
        out[y0:y1, x0:x1][crop_hole] = filled[crop_hole]
        return out


# ---------------------------------------------------------------- LaMa (ONNX)
@dataclass
class LamaInpainter:
    session: object
    model_id: str
    image_name: str
    mask_name: str
    size: int = LAMA_SIZE
    fallback_reason: str | None = None
    last_output_scale: float | None = None  # 255.0 or 1.0: what the model's output range turned out to be

    def inpaint(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        rgb, hole = _check(rgb, hole)
        out = rgb.copy()
        if not hole.any():
            return out
        s = self.size
        y0, y1, x0, x1 = context_box(hole, s)
        crop, crop_hole = rgb[y0:y1, x0:x1], hole[y0:y1, x0:x1]
        ch, cw = crop_hole.shape
        same = (ch, cw) == (s, s)
        image = crop if same else cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA if ch * cw > s * s else cv2.INTER_LINEAR)
        # A model pixel is hole if any of the frame pixels it covers is (thin holes survive shrinking).
        mask = crop_hole if same else cv2.resize(crop_hole.astype(np.float32), (s, s), interpolation=cv2.INTER_AREA) > 0
        x = image.astype(np.float32) * np.float32(1.0 / 255.0)
        x[mask] = 0.0  # the model never sees what is under the hole
        feeds = {
            self.image_name: np.ascontiguousarray(x.transpose(2, 0, 1)[None]),
            self.mask_name: mask.astype(np.float32)[None, None],
        }
        pred = np.asarray(self.session.run(None, feeds)[0], np.float32)[0].transpose(1, 2, 0)  # (s, s, 3)
        scale = self._output_scale(pred, image, mask)
        self.last_output_scale = scale
        pred = np.clip(pred * np.float32(255.0 / scale), 0, 255)
        if not same:
            pred = cv2.resize(pred, (cw, ch), interpolation=cv2.INTER_LINEAR)
        filled = np.rint(pred).astype(np.uint8)
        out[y0:y1, x0:x1][crop_hole] = filled[crop_hole]
        return out

    @staticmethod
    def _output_scale(pred: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
        """255 if the output is in 0..255 (the Carve export), 1 if in [0, 1]: whichever reproduces
        the known pixels better (LaMa returns them nearly unchanged)."""
        known = ~mask
        if known.sum() < 16:
            return 255.0 if float(pred.max()) > 1.5 else 1.0
        p, ref = pred[known], image[known].astype(np.float32)
        err255 = float(np.abs(p - ref).mean())
        err1 = float(np.abs(p * 255.0 - ref).mean())
        return 255.0 if err255 <= err1 else 1.0


def load_lama(path: str | os.PathLike | None = None, *, allow_download: bool = True) -> LamaInpainter:
    if path is not None:
        file = Path(path).expanduser()
    else:
        file = hub_file(LAMA_REPO, LAMA_FILE, allow_download=allow_download)
    session = onnx_session(file, LAMA)
    inputs = session.get_inputs()
    by_name = {i.name: i for i in inputs}
    by_channels = {}
    for inp in inputs:
        if len(inp.shape) == 4:
            by_channels.setdefault(inp.shape[1], inp)
    image = by_name.get("image") or by_channels.get(3)
    mask = by_name.get("mask") or by_channels.get(1)
    if len(inputs) != 2 or image is None or mask is None:
        got = [(i.name, i.shape) for i in inputs]
        raise ModelUnavailable(f"{LAMA}: {file} has inputs {got}, expected image 1x3xSxS and mask 1x1xSxS")
    size = _static_dim(image.shape[2], LAMA_SIZE)
    return LamaInpainter(session, f"{LAMA}@{file_sha12(file)}", image.name, mask.name, size)


# ---------------------------------------------------------------- choosing
def load_inpainter(name: str = "auto", *, allow_download: bool = True, path: str | os.PathLike | None = None) -> Inpainter:
    """An inpainter by name: "auto" | "lama" | "telea" | "none".

    "auto": LaMa (`path`, else the HF cache, else a download when allowed and online) -> OpenCV
    Telea, with ``fallback_reason`` set. An explicit `path` that cannot be loaded is an error.
    "none" raises ModelUnavailable; unknown names raise ValueError.
    """
    key = loader_key(name, _ALIASES, NAMES, "inpainter", "inpainting is turned off (inpainter 'none')")
    if key == "telea":
        return TeleaInpainter()
    if key == "lama" or path is not None:
        return load_lama(path, allow_download=allow_download)
    try:
        return load_lama(None, allow_download=allow_download)
    except ModelUnavailable as exc:
        return TeleaInpainter(fallback_reason=f"{LAMA} unavailable ({exc.reason})")
