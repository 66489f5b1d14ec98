"""Who is who: descriptors of character instances and their grouping into outfits and characters.

Anime identity lives in the head: hair, eyes and skin are drawn the same in every outfit, while
the clothes change. So each instance gets two descriptors from its character layer (pixels with
alpha, never background):

* `face` - a colour histogram of the head region (the face box found by the face detector,
  grown to take in the hair): the same character in two outfits has near-identical ones;
* `look` - a colour histogram of the whole instance: the outfit (with the head).

Both are hue x saturation x value histograms, square-rooted (Hellinger) and L2-normalised, so
the cosine of two is a similarity in [0, 1]. Pure numpy + OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

HUE_BINS, SAT_BINS, VAL_BINS = 18, 3, 3
DIM = HUE_BINS * SAT_BINS * VAL_BINS
HEAD_SCALE = 1.6  # the face box grown this much (centred, a little upwards) takes in the hair


def colour_histogram(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """(DIM,) float32 descriptor of the masked pixels, or None when fewer than 64 pixels."""
    pix = rgb[mask]
    if len(pix) < 64:
        return None
    hsv = cv2.cvtColor(pix.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.int32)
    # Grey pixels (low saturation) carry no hue: they fall in saturation bin 0 whatever their hue.
    h = np.minimum(hsv[:, 0] * HUE_BINS // 180, HUE_BINS - 1)
    s = np.minimum(hsv[:, 1] * SAT_BINS // 256, SAT_BINS - 1)
    v = np.minimum(hsv[:, 2] * VAL_BINS // 256, VAL_BINS - 1)
    h = np.where(s == 0, 0, h)
    idx = (h * SAT_BINS + s) * VAL_BINS + v
    hist = np.bincount(idx, minlength=DIM).astype(np.float32)
    hist = np.sqrt(hist / hist.sum())
    return hist / max(float(np.linalg.norm(hist)), 1e-8)


def head_box(face_box, shape) -> tuple[int, int, int, int]:
    """The face box grown by HEAD_SCALE, shifted up a little (hair sits above), clipped."""
    x0, y0, x1, y1 = face_box
    w, h = (x1 - x0) * HEAD_SCALE, (y1 - y0) * HEAD_SCALE
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.1 * (y1 - y0)
    H, W = shape[:2]
    return (max(0, int(cx - w / 2)), max(0, int(cy - h / 2)), min(W, int(cx + w / 2)), min(H, int(cy + h / 2)))


def instance_descriptors(rgb: np.ndarray, alpha_mask: np.ndarray, face_box=None):
    """(look, face or None) of one instance: `alpha_mask` is its pixels (bool HxW); `face_box` a
    face inside it (x0, y0, x1, y1) or None."""
    look = colour_histogram(rgb, alpha_mask)
    face = None
    if face_box is not None:
        x0, y0, x1, y1 = head_box(face_box, rgb.shape)
        region = np.zeros_like(alpha_mask)
        region[y0:y1, x0:x1] = alpha_mask[y0:y1, x0:x1]
        face = colour_histogram(rgb, region)
    return look, face


def face_in_box(faces: list[tuple[int, int, int, int]], box) -> tuple[int, int, int, int] | None:
    """The largest face whose centre lies in the upper 70% of the instance box."""
    x0, y0, x1, y1 = box
    best, area = None, 0
    for f in faces:
        cx, cy = (f[0] + f[2]) / 2, (f[1] + f[3]) / 2
        a = (f[2] - f[0]) * (f[3] - f[1])
        if x0 <= cx <= x1 and y0 <= cy <= y0 + 0.7 * (y1 - y0) and a > area:
            best, area = f, a
    return best


def cluster(vectors: np.ndarray, max_distance: float) -> np.ndarray:
    """Average-linkage clusters of unit vectors, cut at cosine distance `max_distance`; labels
    0..k-1 numbered by first appearance (deterministic)."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.zeros(1, np.int64)
    d = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    raw = fcluster(linkage(squareform(d, checks=False), "average"), max_distance, "distance")
    order = {lab: i for i, lab in enumerate(dict.fromkeys(raw.tolist()))}
    return np.array([order[lab] for lab in raw], np.int64)


def mean_unit(vectors) -> np.ndarray | None:
    vs = [v for v in vectors if v is not None]
    if not vs:
        return None
    m = np.mean(vs, axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-8)).astype(np.float32)
