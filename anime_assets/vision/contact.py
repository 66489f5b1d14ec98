"""Small contact sheets and plots for the Dagster UI (pure numpy/cv2)."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from anime_assets.vision.metrics import over_checkerboard


def contact_sheet(images: list[np.ndarray], max_width: int = 256, columns: int = 4, gap: int = 2) -> np.ndarray:
    """Tile RGB/BGR images (same channel order in, same out) into one image at most `max_width` wide."""
    if not images:
        return np.zeros((8, 8, 3), np.uint8)
    columns = max(1, min(columns, len(images)))
    tile_w = max(8, (max_width - gap * (columns - 1)) // columns)
    tiles = []
    for im in images:
        if im.ndim == 2:
            im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)
        h, w = im.shape[:2]
        tiles.append(cv2.resize(im[..., :3], (tile_w, max(1, round(h * tile_w / w))), interpolation=cv2.INTER_AREA))
    tile_h = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * tile_h + gap * (rows - 1), columns * tile_w + gap * (columns - 1), 3), 32, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        y, x = r * (tile_h + gap), c * (tile_w + gap)
        sheet[y:y + t.shape[0], x:x + tile_w] = t
    return sheet


def png_bytes(image_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def markdown_image(png: bytes, alt: str = "preview") -> str:
    """Inline markdown image (data URI), for Dagster's markdown metadata."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def curve_plot(curves: dict[str, np.ndarray], marks: list[int] = (), width: int = 256, height: int = 64) -> np.ndarray:
    """Tiny line plot of per-frame curves in [0, 1] (e.g. shot scores) with vertical marks (BGR)."""
    img = np.full((height, width, 3), 255, np.uint8)
    colours = [(200, 80, 0), (0, 140, 255), (60, 160, 60), (180, 0, 180)]
    n = max((len(c) for c in curves.values()), default=0)
    if n < 2:
        return img
    for m in marks:
        x = int(m * (width - 1) / (n - 1))
        cv2.line(img, (x, 0), (x, height - 1), (0, 0, 220), 1)
    for (name, c), col in zip(curves.items(), colours):
        c = np.clip(np.nan_to_num(np.asarray(c, np.float32)), 0, 1)
        xs = np.linspace(0, width - 1, len(c)).astype(np.int32)
        # Max-pool to the pixel grid so 1-frame spikes stay visible.
        top = np.zeros(width, np.float32)
        np.maximum.at(top, xs, c)
        pts = np.stack([np.arange(width), (height - 1 - top * (height - 2)).astype(np.int32)], 1)
        cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, col, 1)
    return img


def layer_strip(rows: list[tuple[np.ndarray, ...]], tile_width: int = 192, gap: int = 2) -> np.ndarray:
    """One row per frame of (frame RGB, character RGBA, effect RGBA, background RGB):
    original | character on a checkerboard | effect on a checkerboard | background. RGB out."""
    lines = []
    for frame, character, effect, background in rows:
        h, w = frame.shape[:2]
        size = (tile_width, max(1, round(h * tile_width / w)))
        tiles = [frame, over_checkerboard(character, cell=8), over_checkerboard(effect, cell=8), background]
        tiles = [cv2.resize(t[..., :3], size, interpolation=cv2.INTER_AREA) for t in tiles]
        sep = np.full((size[1], gap, 3), 32, np.uint8)
        lines.append(np.hstack([x for t in tiles for x in (t, sep)][:-1]))
    if not lines:
        return np.zeros((8, 8, 3), np.uint8)
    sep = np.full((gap, lines[0].shape[1], 3), 32, np.uint8)
    return np.vstack([x for ln in lines for x in (ln, sep)][:-1])
