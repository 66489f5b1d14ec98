"""Image embedders: CLIP when its weights are here, else a weight-free colour-layout descriptor.

`ColourLayoutEmbedder` ("offline:colour-layout-v1", 256-d) describes what a 2D anime frame
looks like without any learned weights, so the pipeline still produces usable neighbours and
clusters on an offline machine:

* where the colours are: a 8x5 grid of mean CIE Lab colours (sky on top, floor below, the
  character's hair in the middle), 120 dims;
* which colours: a hue x saturation histogram plus 4 lightness bins for greys, 40 dims
  (flat cel shading makes palettes very characteristic);
* how the line art runs: edge-orientation histograms (8 orientations) in a 4x3 grid, 96 dims
  (interiors have verticals, skies have none, close-ups have curves).

Each block is centred so unrelated frames score near 0 rather than near 1 under cosine, the
blocks are weighted, and the whole vector is L2-normalised. Everything is computed on a small
area-downscaled copy, which also averages away JPEG block noise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from anime_assets.models.clip import ModelUnavailable, as_rgb_uint8, l2_normalise, prefetch, read_rgb

COLOUR_LAYOUT_ID = "offline:colour-layout-v1"

WORK_SIZE = (160, 90)  # (w, h): 16:9 like the episodes; other shapes are squashed to it
LAB_GRID = (8, 5)  # cells across, down
HUE_BINS, SAT_BINS, GREY_BINS = 12, 3, 4
EDGE_GRID = (4, 3)
EDGE_BINS = 8
BLOCK_WEIGHTS = {"lab": 0.7, "hue": 0.9, "edge": 0.55}  # relative say of each block in the cosine
SATURATION_MIN = 40  # below this (0-255) a pixel counts as grey, its hue is noise
EDGE_MIN = 24.0  # gradient magnitude below this is shading/JPEG noise, not line art

DIM = LAB_GRID[0] * LAB_GRID[1] * 3 + HUE_BINS * SAT_BINS + GREY_BINS + EDGE_GRID[0] * EDGE_GRID[1] * EDGE_BINS


class ColourLayoutEmbedder:
    """Deterministic 256-d descriptor of RGB uint8 frames; same interface as ClipEmbedder."""

    model_id = COLOUR_LAYOUT_ID
    dim = DIM

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, DIM), np.float32)
        return np.stack([colour_layout_descriptor(image) for image in images])

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Decode on a background thread (reduced-size JPEG decode) while describing."""
        if len(paths) == 0:
            return np.zeros((0, DIM), np.float32)
        frames = prefetch((read_rgb(p, min_side=WORK_SIZE[1]) for p in paths), depth=8)
        return np.stack([colour_layout_descriptor(frame) for frame in frames])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise ModelUnavailable(f"{COLOUR_LAYOUT_ID} embeds images only; text search needs CLIP weights")


def colour_layout_descriptor(image: np.ndarray) -> np.ndarray:
    """(256,) float32, L2-normalised. See the module docstring for the layout."""
    rgb = as_rgb_uint8(image)
    small = cv2.resize(rgb, WORK_SIZE, interpolation=cv2.INTER_AREA)
    blocks = {
        "lab": _lab_grid(small),
        "hue": _hue_histogram(small),
        "edge": _edge_orientation_grid(small),
    }
    parts = [BLOCK_WEIGHTS[name] * _unit(block) for name, block in blocks.items()]
    return l2_normalise(np.concatenate(parts)[None])[0]


def _lab_grid(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    cells = cv2.resize(lab, LAB_GRID, interpolation=cv2.INTER_AREA)  # per-cell means
    # Centre on mid-grey so cosine compares colours, not "everything is positive".
    centred = (cells - np.float32([128.0, 128.0, 128.0])) / np.float32([128.0, 64.0, 64.0])
    return centred.ravel()


def _hue_histogram(rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0].ravel(), hsv[..., 1].ravel(), hsv[..., 2].ravel()
    chromatic = sat >= SATURATION_MIN
    hue_bin = (hue[chromatic].astype(np.int32) * HUE_BINS) // 180
    sat_bin = np.minimum((sat[chromatic].astype(np.int32) - SATURATION_MIN) * SAT_BINS // (256 - SATURATION_MIN), SAT_BINS - 1)
    colour = np.bincount(hue_bin * SAT_BINS + sat_bin, minlength=HUE_BINS * SAT_BINS)
    grey = np.bincount(val[~chromatic].astype(np.int32) * GREY_BINS // 256, minlength=GREY_BINS)
    hist = np.concatenate([colour, grey]).astype(np.float32) / hue.size
    return _centred_sqrt(hist)


def _edge_orientation_grid(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy)
    magnitude[magnitude < EDGE_MIN] = 0.0
    # Orientation of the line (mod 180): a line and its mirror image are the same stroke.
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    orient_bin = np.minimum((angle * EDGE_BINS / np.pi).astype(np.int32), EDGE_BINS - 1)
    h, w = grey.shape
    cols, rows = EDGE_GRID
    cell_y = np.minimum(np.arange(h) * rows // h, rows - 1)[:, None]
    cell_x = np.minimum(np.arange(w) * cols // w, cols - 1)[None, :]
    index = ((cell_y * cols + cell_x) * EDGE_BINS + orient_bin).ravel()
    hist = np.bincount(index, weights=magnitude.ravel(), minlength=rows * cols * EDGE_BINS).astype(np.float32)
    # Relative to the frame's own edge energy: the same drawing at another contrast matches.
    hist /= max(float(hist.sum()), 1e-6)
    return _centred_sqrt(hist)


def _centred_sqrt(hist: np.ndarray) -> np.ndarray:
    # sqrt (Hellinger) keeps one dominant bin from swamping the rest; centring makes an
    # unrelated histogram score ~0 instead of ~+0.5 under cosine.
    root = np.sqrt(hist)
    return root - root.mean()


def _unit(block: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(block))
    return block / norm if norm > 1e-6 else block


def load_embedder(
    model_name: str = "ViT-B-32",
    pretrained: str | os.PathLike | None = "laion2b_s34b_b79k",
    device: str = "cpu",
    allow_fallback: bool = True,
    **clip_kwargs,
):
    """(embedder, warning or None): CLIP if it loads here, else the colour-layout fallback.

    The fallback's vectors are a different model: they go to their own table (the frames
    table records the embedding model and never mixes two).
    """
    from anime_assets.models.clip import load_clip

    try:
        return load_clip(model_name, pretrained, device=device, **clip_kwargs), None
    except ModelUnavailable as exc:
        if not allow_fallback:
            raise
        warning = (
            f"CLIP {model_name}/{pretrained} is NOT AVAILABLE ({exc.reason}). FALLING BACK to the weight-free "
            f"{COLOUR_LAYOUT_ID} embedder: vectors describe colour layout and line art only, there is no "
            "text search, and they are stored apart from CLIP vectors."
        )
        return ColourLayoutEmbedder(), warning
