"""Metric definitions shared by the benchmark, the tests and the asset checks.

Small, exact and dependency-light (numpy + OpenCV):

* masks: `iou`, `boundary_f` (DAVIS-style boundary F-measure), `flicker_iou`;
* alpha: `alpha_mae`;
* images: `psnr` (optionally over a mask);
* layers: `recompose` (background + character + effect with its blend mode, the same
  formulas as the fixtures' `composite`), `checkerboard` / `over_checkerboard` for
  previews of RGBA layers.

Masks may be bool or float (thresholded at ``threshold``, ``>``-comparison for floats).
Images are uint8 unless stated otherwise.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "iou", "boundary_f", "alpha_mae", "psnr", "flicker_iou", "recompose",
    "checkerboard", "over_checkerboard", "BLEND_MODES",
]

BLEND_MODES = ("normal", "add", "screen")


def _binary(m, threshold: float = 0.5) -> np.ndarray:
    m = np.asarray(m)
    if m.dtype == bool:
        return m
    return m > threshold


def iou(pred, truth, threshold: float = 0.5) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    p, t = _binary(pred, threshold), _binary(truth, threshold)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch {p.shape} vs {t.shape}")
    union = np.count_nonzero(p | t)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & t)) / float(union)


def _boundary(m: np.ndarray) -> np.ndarray:
    """Boundary pixels: inside the mask with a 4-neighbour outside it (image border counts as outside)."""
    u = m.astype(np.uint8)
    er = cv2.erode(u, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)),
                   borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return m & (er == 0)


def _within(b: np.ndarray, other: np.ndarray, tol_px: float) -> int:
    """How many pixels of boundary ``b`` lie within ``tol_px`` (Euclidean) of boundary ``other``."""
    if not other.any():
        return 0
    # distance of every pixel to the nearest pixel of `other`
    dist = cv2.distanceTransform((~other).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int(np.count_nonzero(b & (dist <= tol_px + 1e-6)))


def boundary_f(pred, truth, tol_px: float = 2, threshold: float = 0.5) -> float:
    """Boundary F-measure (as in DAVIS): precision = share of the predicted boundary pixels
    within ``tol_px`` of the true boundary, recall = share of the true boundary pixels within
    ``tol_px`` of the predicted one, F = 2PR / (P + R). 1.0 when both masks are empty,
    0.0 when only one is."""
    p, t = _binary(pred, threshold), _binary(truth, threshold)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch {p.shape} vs {t.shape}")
    bp, bt = _boundary(p), _boundary(t)
    np_, nt = int(np.count_nonzero(bp)), int(np.count_nonzero(bt))
    if np_ == 0 and nt == 0:
        return 1.0
    if np_ == 0 or nt == 0:
        return 0.0
    prec = _within(bp, bt, tol_px) / np_
    rec = _within(bt, bp, tol_px) / nt
    if prec + rec == 0:
        return 0.0
    return float(2.0 * prec * rec / (prec + rec))


def alpha_mae(pred_alpha, true_alpha, region=None) -> float:
    """Mean |a - a*| over ``region`` (bool mask) or the whole image; 0.0 for an empty region."""
    a = np.asarray(pred_alpha, np.float64)
    b = np.asarray(true_alpha, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    d = np.abs(a - b)
    if region is None:
        return float(d.mean()) if d.size else 0.0
    r = np.asarray(region, bool)
    return float(d[r].mean()) if r.any() else 0.0


def psnr(a, b, mask=None) -> float:
    """PSNR (dB, peak 255) of two 8-bit-range images, over ``mask`` pixels (all channels)
    or the whole image; ``inf`` when identical there (or the mask is empty)."""
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    d2 = (x - y) ** 2
    if mask is not None:
        m = np.asarray(mask, bool)
        d2 = d2[m]
    if d2.size == 0:
        return float("inf")
    mse = float(d2.mean())
    return float("inf") if mse == 0.0 else 10.0 * math.log10(255.0 ** 2 / mse)


def flicker_iou(masks) -> list[float]:
    """IoU of each pair of consecutive masks (len(masks) - 1 values)."""
    ms = [_binary(m) for m in masks]
    return [iou(ms[k], ms[k + 1]) for k in range(len(ms) - 1)]


def _unit(img) -> np.ndarray:
    """uint8 -> float32 / 255; float -> float32 as is (assumed in [0, 1])."""
    x = np.asarray(img)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)


def _blend(B: np.ndarray, C: np.ndarray, a: np.ndarray, mode: str) -> np.ndarray:
    if mode == "normal":
        return B * (1.0 - a) + C * a
    if mode == "add":
        return np.minimum(B + C * a, 1.0)
    if mode == "screen":
        return 1.0 - (1.0 - B) * (1.0 - C * a)
    raise ValueError(f"unknown blend mode {mode!r}")


def recompose(background_rgb, character_rgba, effect_rgba, blend: str) -> np.ndarray:
    """Background, then the character (straight alpha, 'normal'), then the effect with its
    blend mode; -> uint8 RGB. Layers are uint8 or float in [0, 1]; either layer may be None.

    Same arithmetic as the fixtures' ``composite`` (float32, ``B' = B (1-a) + C a``,
    ``min(B + C a, 1)``, ``1 - (1-B)(1 - C a)``, then ``rint(255 B)``)."""
    B = _unit(background_rgb)[..., :3]
    if character_rgba is not None:
        c = _unit(character_rgba)
        B = _blend(B, c[..., :3], c[..., 3:4], "normal")
    if effect_rgba is not None:
        e = _unit(effect_rgba)
        B = _blend(B, e[..., :3], e[..., 3:4], blend)
    return np.clip(np.rint(B * 255.0), 0, 255).astype(np.uint8)


def checkerboard(h: int, w: int, cell: int = 16) -> np.ndarray:
    """(h, w, 3) uint8 light/dark grey checkerboard (the usual transparency backdrop)."""
    cell = max(1, int(cell))
    yy = (np.arange(h) // cell)[:, None]
    xx = (np.arange(w) // cell)[None, :]
    tile = ((yy + xx) % 2).astype(bool)
    out = np.where(tile[..., None], np.uint8(204), np.uint8(255))
    return np.broadcast_to(out, (h, w, 3)).copy()


def over_checkerboard(rgba, cell: int = 16) -> np.ndarray:
    """An RGBA layer (uint8 or float [0, 1], straight alpha) composited 'normal' over a
    checkerboard; -> uint8 RGB preview."""
    x = np.asarray(rgba)
    h, w = x.shape[:2]
    return recompose(checkerboard(h, w, cell), x, None, "normal")
