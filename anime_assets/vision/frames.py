"""Clean frames of a shot, the anime way.

Anime is drawn on twos and threes and holds still drawings for many frames, so most
decoded frames repeat a drawing that is already on screen. This module decides which
frames are worth keeping:

* `DrawingTracker` runs ONLINE during the single decode pass. It sees every frame at
  analysis resolution (~256 px wide luma) and calls a frame a *candidate* only when it
  shows a drawing that differs from the last candidate. Only candidates are converted to
  full-resolution RGB and written, so the tracker has to be cheap (~0.2 ms/frame) and
  stingy, but it must never miss a new drawing (a mouth-only change included).
* `select_shot_frames` is the per-shot FINAL pass, run once shot boundaries are known.
  With the whole shot in view it drops candidates that repeat an earlier kept drawing
  (A B A), flash / impact bursts and transition frames, and picks keyframes.

Change measure (`block_change`): both images get a light blur (which removes most H.264
noise and makes the measure tolerant to sub-pixel jitter), then the absolute difference
is averaged over every BxB window (a box filter) and the MAXIMUM window mean is the
score. A mouth redrawn on a face is a few analysis pixels of strong line change: it
fills a window and scores high, while compression noise, spread thinly over the whole
frame, never does. The threshold adapts to such spread-out differences (grain, encoder
pumping; after alignment, resampling): it is raised to a multiple of the 90th
percentile of the window means, up to a cap. Frames are compared with the LAST
CANDIDATE, not the previous frame, so slow changes accumulate until they count.

Camera moves: when a frame differs from the reference, the global translation is
predicted from the pan's velocity or measured by phase correlation (half size,
Hann-windowed; cv2's sub-pixel peak is biased to whole pixels, so it is polished by a
Lucas-Kanade step) and the frame is compared again after alignment, over the overlap
only (newly revealed area is not evidence of a new drawing). Both images are warped
half way so both get the same interpolation blur. Only a move of the WHOLE picture is
a camera move: if a part of the picture clearly stood still (matches better unshifted)
while the rest moved, it's a character moving over the background - a new drawing.
If every window matches, the frame shows the same drawing: reason 'pan'. During a pan
the reference stays the pan's first candidate; the shift is accumulated (re-basing on
the current frame when the overlap gets small) so a long pan over one drawing produces
one candidate.

A-B-A online: a changed frame is also compared (as is) with the last few candidates; a
drawing that comes back (mouth flaps) is marked 'repeat' of it and not written again.

Black / white frames (`exposure_class`) are never candidates. Everything that needs
the whole shot (repeats of any earlier drawing, flash / impact bursts, transitions,
keyframes) is done by `select_shot_frames`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import cv2
import numpy as np

from anime_assets.vision.align import phase_peaks

#: Reason codes for frames that are not kept.
REASONS = (
    "hold",  # same drawing as the reference candidate, camera still (drawn on twos/threes, held cel)
    "pan",  # same drawing as the reference, seen through a camera translation (pan / shake / bob)
    "repeat",  # shows a drawing already kept earlier in the shot (A B A return); online: of a recent candidate
    "black",  # (near-)black frame
    "white",  # (near-)white frame
    "flash",  # part of a short flash / impact burst inside a shot (very different from both sides)
    "transition",  # inside a detected transition (dissolve, fade, wipe) between shots
    "low_quality",  # candidate too blurry / featureless to be useful (line_art_sharpness below minimum)
)


@dataclass
class CleanFrameParams:
    """Thresholds. Change scores are in grey levels (0-255) of the analysis image."""

    blur_sigma: float = 0.8
    """Gaussian blur applied before differencing (analysis pixels). Suppresses H.264 noise."""
    block: int = 4
    """Side of the windows whose mean abs difference is scored (analysis pixels)."""
    hold_threshold: float = 3.0
    """A window whose mean abs diff reaches this (grey levels) is a change of drawing ..."""
    noise_factor: float = 5.0
    """... unless the difference is spread over the whole frame: the threshold is raised to
    noise_factor x the 90th percentile of the window means (grain, encoder pumping, and
    after camera alignment the resampling blur that follows every edge) ..."""
    hold_cap: float = 4.5
    """... but never above hold_cap (comparison without a camera move: a dissolve's tail or
    a slow fade is a global, faint change, and must not pass as a hold) ..."""
    pan_cap: float = 12.0
    """... or pan_cap (comparison after undoing a camera move of at least min_pan_shift)."""
    pan_threshold: float = 6.0
    """Floor of the threshold after undoing a camera move (instead of hold_threshold):
    moving content is resampled and re-encoded, never bit-identical."""
    still_area: float = 0.02
    """A camera move moves EVERYTHING: if at least this fraction of the picture matches
    clearly better unshifted (d0 < hold_threshold and d0 + still_margin < aligned diff),
    part of the picture stood still while another part moved - a character bob or a
    character sliding over a still background, i.e. a new drawing, not a pan."""
    still_margin: float = 1.0
    """(grey levels, see still_area)"""
    min_pan_shift: float = 0.1
    """Camera shifts (analysis px) below this are no camera move (hold_cap applies)."""
    layered_peaks: int = 3
    """A cel held on the screen while the background pans under it (the camera follows a
    character on twos or threes) is not a new drawing: each pixel is explained either as it
    was (the held cel) or moved by the camera (the background). This many phase-correlation
    peaks are tried as the background's motion. 0 disables."""
    layered_min_shift: float = 0.75
    """... for background motions of at least this many analysis pixels (below, the two
    explanations cannot be told apart from noise) ..."""
    layer_min_area: float = 0.01
    """The held cel is a connected region of at least this fraction of the picture."""
    border_band: float = 0.12
    """... and only where the background moved: the border band (this fraction of the short
    side) is what the background holds ..."""
    border_texture: float = 12.0
    """... judged on its textured pixels (3x3 morphological gradient >= this, grey levels) ..."""
    border_agree: float = 0.7
    """... at least this share of which match after the motion ..."""
    border_margin: float = 0.3
    """... and this share more than match as they were."""
    recent_candidates: int = 8
    """The tracker also compares a changed frame with this many recent candidates (as is,
    no camera move): a drawing that comes back (mouth flaps A B A B) is marked 'repeat'
    online and not written again. 0 disables."""
    recent_max_area: float = 0.4
    """... but only for changes covering less than this fraction of the picture: a frame
    that changed almost everywhere may be the first of a new shot (shot / reverse shot
    returning to an identical drawing), and a new shot needs its own candidate."""
    max_pan_shift_frac: float = 0.45
    """Largest shift (fraction of the image size) the phase correlation is trusted for."""
    min_overlap: float = 0.3
    """A camera-aligned match needs at least this fraction of the frame in common."""
    rebase_overlap: float = 0.7
    """During a long pan, re-base the alignment reference when the overlap falls below this."""
    black_mean: float = 24.0
    """Exposure: 'black' if mean luma <= black_mean and 99th percentile <= black_p99."""
    black_p99: float = 48.0
    white_mean: float = 232.0
    """Exposure: 'white' if mean luma >= white_mean and 1st percentile >= white_p1."""
    white_p1: float = 200.0
    flash_max_frames: int = 4
    """Flash / impact bursts are at most this many frames long."""
    flash_level: float = 24.0
    """A burst frame differs by >= flash_level (window mean, after camera alignment) from
    the frames on both sides over at least flash_area of the picture ..."""
    flash_area: float = 0.5
    flash_luma_delta: float = 20.0
    """... or its mean luma jumps by at least this much vs both sides."""
    min_quality: float = 0.05
    """Candidates with line_art_sharpness below this are dropped as 'low_quality' (only
    when the shot keeps another frame)."""
    repeat_aligned_window: int = 4
    """Final pass: a candidate is compared as is with EVERY kept frame of the shot, and also
    through a camera move with the last this-many kept frames (the alignment costs ~1 ms
    a pair; long full-animation shots would otherwise cost K^2 of them)."""
    keyframe_span: int = 48
    """One keyframe per this many frames of shot (1 to max_keyframes)."""
    max_keyframes: int = 3


@dataclass
class FrameDecision:
    """The tracker's verdict on one frame.

    reason: None for candidates; else 'hold' | 'pan' | 'repeat' (same drawing as `ref`)
    or 'black' | 'white' (ref None).
    """

    candidate: bool
    reason: str | None
    ref: int | None  # the candidate whose drawing this frame shows (hold / pan / repeat)
    shift: tuple[float, float] | None
    """When a pan: how far the picture content moved since `ref`, in analysis pixels:
    this frame at (x + dx, y + dy) shows what `ref` shows at (x, y). A camera moving right
    gives dx < 0."""
    change: float
    """Change vs the previous frame, for plots: max mean abs diff over a grid of
    block x block tiles (grey levels; 255 for the first frame)."""


# ----------------------------------------------------------------------------------------
# low-level measures


def exposure_class(gray: np.ndarray, params: CleanFrameParams | None = None) -> str | None:
    """'black' | 'white' | None for a luma image (any resolution)."""
    p = params or CleanFrameParams()
    m = cv2.mean(gray)[0]
    if m <= p.black_mean:  # 99th percentile <= black_p99
        if np.count_nonzero(gray > p.black_p99) <= 0.01 * gray.size:
            return "black"
    elif m >= p.white_mean:  # 1st percentile >= white_p1
        if np.count_nonzero(gray < p.white_p1) <= 0.01 * gray.size:
            return "white"
    return None


def _prep(gray: np.ndarray, p: CleanFrameParams) -> np.ndarray:
    """Float32 blurred copy used by every comparison."""
    g = gray.astype(np.float32)
    if p.blur_sigma > 0:
        k = 2 * int(np.ceil(2.5 * p.blur_sigma)) + 1
        g = cv2.GaussianBlur(g, (k, k), p.blur_sigma)
    return g


def _block_map(a: np.ndarray, b: np.ndarray, p: CleanFrameParams) -> np.ndarray:
    """Mean abs difference over every block x block window (dense, same size as input)."""
    return cv2.blur(cv2.absdiff(a, b), (p.block, p.block), borderType=cv2.BORDER_REPLICATE)


def _changed(m: np.ndarray, p: CleanFrameParams, cap: float,
             floor: float | None = None) -> tuple[bool, float]:
    """(changed, score) of a block map. score = max window mean; changed iff
    score >= clip(noise_factor * p90, floor, cap), p90 = 90th percentile of the window
    means on a block-spaced grid (counted, not sorted: score >= noise_factor * p90 iff at
    most 10 % of the grid exceeds score / noise_factor)."""
    score = float(m.max())
    floor = p.hold_threshold if floor is None else floor
    if score < floor:
        return False, score
    if score >= cap:
        return True, score
    b = p.block
    grid = m[b // 2::b, b // 2::b]
    return np.count_nonzero(grid > score / p.noise_factor) <= 0.1 * grid.size, score


def _block_means(g: np.ndarray, p: CleanFrameParams) -> np.ndarray:
    h, w = g.shape
    return cv2.resize(g, (w // p.block, h // p.block), interpolation=cv2.INTER_AREA)


def _grid_change(a: np.ndarray, b: np.ndarray, p: CleanFrameParams) -> float:
    """Cheap change score for plots: max mean abs diff over a grid of block x block tiles."""
    h, w = a.shape
    d = cv2.absdiff(a, b)
    return float(cv2.resize(d, (w // p.block, h // p.block), interpolation=cv2.INTER_AREA).max())


def block_change(a: np.ndarray, b: np.ndarray, params: CleanFrameParams | None = None) -> float:
    """Change score of two analysis luma images: max window mean abs diff after blur (grey levels)."""
    p = params or CleanFrameParams()
    return float(_block_map(_prep(a, p), _prep(b, p), p).max())


def _phase_shift(ref: np.ndarray, cur: np.ndarray, win: dict) -> tuple[float, float]:
    """(dx, dy) such that cur(x + dx, y + dy) ~ ref(x, y): windowed phase correlation on
    half-size copies (coarse, ~0.2 px; `_refine_shift` polishes it)."""
    h, w = ref.shape
    size = (w // 2, h // 2)
    hw = win.get(size)
    if hw is None:
        hw = win[size] = cv2.createHanningWindow(size, cv2.CV_32F)
    # fresh copies: cv2.phaseCorrelate (OpenCV 5) windows its inputs in place
    a = cv2.resize(ref, size, interpolation=cv2.INTER_AREA)
    b = cv2.resize(cur, size, interpolation=cv2.INTER_AREA)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, hw)
    return 2.0 * float(dx), 2.0 * float(dy)


def _translate(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """out(x, y) = img(x + dx, y + dy), bilinear; outside samples replicate the edge.
    (A 2x2 filter for the fraction plus slicing: several times faster than warpAffine.)"""
    h, w = img.shape
    nx, ny = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - nx, dy - ny
    if fx > 1e-3 or fy > 1e-3:
        k = np.float32([[(1 - fx) * (1 - fy), fx * (1 - fy)], [(1 - fx) * fy, fx * fy]])
        img = cv2.filter2D(img, -1, k, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    if nx == 0 and ny == 0:
        return img
    nx = min(max(nx, 1 - w), w - 1)  # beyond the image: all replicated edge anyway
    ny = min(max(ny, 1 - h), h - 1)
    crop = img[max(ny, 0):h + min(ny, 0), max(nx, 0):w + min(nx, 0)]
    return cv2.copyMakeBorder(crop, max(-ny, 0), max(ny, 0), max(-nx, 0), max(nx, 0),
                              cv2.BORDER_REPLICATE)


def _refine_shift(ref: np.ndarray, cur: np.ndarray, dx: float, dy: float,
                  iters: int = 2) -> tuple[float, float]:
    """Lucas-Kanade refinement of a global translation (phase correlation's sub-pixel
    estimate is biased towards whole pixels): least squares of ref(x) = cur(x + s)."""
    h, w = ref.shape
    for _ in range(iters):
        wc = _translate(cur, dx, dy)
        x0 = max(0, int(np.ceil(-dx))) + 2
        x1 = w - max(0, int(np.ceil(dx))) - 2
        y0 = max(0, int(np.ceil(-dy))) + 2
        y1 = h - max(0, int(np.ceil(dy))) - 2
        if x1 - x0 < 8 or y1 - y0 < 8:
            break
        c = wc[y0 - 1:y1 + 1, x0 - 1:x1 + 1]
        gx = 0.5 * (c[1:-1, 2:] - c[1:-1, :-2])
        gy = 0.5 * (c[2:, 1:-1] - c[:-2, 1:-1])
        e = ref[y0:y1, x0:x1] - c[1:-1, 1:-1]
        a11 = float(np.vdot(gx, gx))
        a12 = float(np.vdot(gx, gy))
        a22 = float(np.vdot(gy, gy))
        b1 = float(np.vdot(gx, e))
        b2 = float(np.vdot(gy, e))
        det = a11 * a22 - a12 * a12
        if det <= 1e-6 * (a11 + a22) ** 2 or det == 0:
            break
        ux = (a22 * b1 - a12 * b2) / det
        uy = (a11 * b2 - a12 * b1) / det
        if abs(ux) > 1.5 or abs(uy) > 1.5:  # not a small correction: keep the estimate
            break
        dx, dy = dx + ux, dy + uy
        if abs(ux) < 0.01 and abs(uy) < 0.01:
            break
    return dx, dy


def _aligned_map(ref: np.ndarray, cur: np.ndarray, d0: np.ndarray, dx: float, dy: float,
                 p: CleanFrameParams) -> tuple[np.ndarray | None, float]:
    """Block map of `cur` vs `ref` after undoing a (dx, dy) camera shift, and the overlap.

    Both images are warped half way (ref by -s/2, cur by +s/2) so that both get the same
    amount of interpolation blur: warping only one of them blurs thin lines that the
    other keeps sharp, and that residual would look like a change of drawing.
    Only a move of the WHOLE picture is a camera move: a character that moves relative
    to the background is a new drawing, so every window must match after alignment.
    Windows outside the overlap (newly revealed area) are not evidence and are zeroed.
    """
    h, w = ref.shape
    if abs(dx) >= p.max_pan_shift_frac * w or abs(dy) >= p.max_pan_shift_frac * h:
        return None, 0.0
    hx, hy = 0.5 * dx, 0.5 * dy
    wr = _translate(ref, -hx, -hy)
    wc = _translate(cur, hx, hy)
    r = _block_map(wr, wc, p)
    if np.hypot(dx, dy) >= p.min_pan_shift:
        # windows that stood still (in cur's frame of reference this is a shift of the
        # unaligned map by s/2; at these small scales the unshifted map is close enough)
        still = (d0 < p.hold_threshold) & (d0 + p.still_margin < r)
    else:
        still = None
    # valid x: both x - s/2 and x + s/2 inside the image, shrunk by the reach of the blur
    # and of the window (the images' borders were blurred with reflected content)
    e = p.block // 2 + int(np.ceil(2 * p.blur_sigma)) + 3
    mx = int(np.ceil(abs(hx))) + e
    my = int(np.ceil(abs(hy))) + e
    if w - 2 * mx <= 0 or h - 2 * my <= 0:
        return None, 0.0
    _zero_margins(r, mx, my)
    overlap = (w - abs(dx)) * (h - abs(dy)) / float(w * h)
    if still is not None:
        _zero_margins(still, mx, my)
        if np.count_nonzero(still) >= p.still_area * still.size:
            return None, overlap
    return r, overlap


def _pan_match(ref: np.ndarray, cur: np.ndarray, d0: np.ndarray, dx: float, dy: float,
               p: CleanFrameParams) -> tuple[bool, float, float]:
    """Does `cur` show `ref`'s drawing through a camera shift (dx, dy)?
    (match, overlap, residual score)."""
    r, overlap = _aligned_map(ref, cur, d0, dx, dy, p)
    if r is None or overlap < p.min_overlap:
        return False, overlap, float("inf")
    if np.hypot(dx, dy) >= p.min_pan_shift:
        changed, score = _changed(r, p, p.pan_cap, p.pan_threshold)
    else:
        changed, score = _changed(r, p, p.hold_cap)
    return not changed, overlap, score


def _layered_map(ref: np.ndarray, cur: np.ndarray, dx: float, dy: float, p: CleanFrameParams) -> np.ndarray | None:
    """Block map of what a two-layer explanation leaves, or None when there is no held cel:
    each pixel of `cur` is as it was in `ref` (a cel held on the screen) or `ref` moved by
    (dx, dy) (the background panning under it).

    The cel is where `ref` as it was fits clearly better than moved: it must be one sizeable
    region (`layer_min_area`), not scattered spots - a new drawing of a character who moves with
    the background fits unmoved only by chance, in flat patches. Where the background slides past
    the cel's outline a band as wide as the motion was hidden in `ref`; it lies outside the cel
    (and, as found, partly inside) and is not scored, nor is the strip the camera newly reveals
    at the image border."""
    held = cv2.absdiff(ref, cur)
    moved = cv2.absdiff(_translate(ref, -dx, -dy), cur)
    win = (p.block, p.block)
    better = (cv2.blur(held, win) + p.still_margin < cv2.blur(moved, win)).astype(np.uint8)
    # one sizeable region, its holes filled: a changed face is a hole, and must stay scored
    min_area = p.layer_min_area * better.size
    cel = _without_small_parts(_without_small_parts(better, min_area), min_area, 0)
    if not cel.any():
        return None
    r = cv2.blur(cv2.min(held, moved), win, borderType=cv2.BORDER_REPLICATE)
    motion = int(np.ceil(max(abs(dx), abs(dy))))
    outside, inside = motion + p.block, motion + 1  # the outline found is only as sharp as the motion
    r[cv2.dilate(cel, np.ones((2 * outside + 1, 2 * outside + 1), np.uint8)) > cel] = 0
    r[cel > cv2.erode(cel, np.ones((2 * inside + 1, 2 * inside + 1), np.uint8))] = 0
    e = p.block // 2 + int(np.ceil(2 * p.blur_sigma)) + 1
    _zero_margins(r, int(np.ceil(abs(dx))) + e, int(np.ceil(abs(dy))) + e)
    return r


def _zero_margins(a: np.ndarray, mx: int, my: int) -> None:
    """Zero (or clear) `a`'s outer mx columns and my rows on each side, in place: the strip a camera
    move reveals, and the reach of the blur, are no evidence."""
    h, w = a.shape[:2]
    mx, my = min(mx, w // 2), min(my, h // 2)
    a[:, :mx] = 0
    a[:, w - mx:] = 0
    a[:my] = 0
    a[h - my:] = 0


def _without_small_parts(mask: np.ndarray, min_area: float, value: int = 1) -> np.ndarray:
    """`mask` (uint8 0/1) with the connected parts of `value` smaller than `min_area` flipped."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == value).astype(np.uint8), connectivity=4)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
    small = small[small > 0]  # label 0 is the other value
    if small.size == 0:
        return mask
    out = mask.copy()
    out[np.isin(labels, small)] = 1 - value
    return out


def _border_band(ref: np.ndarray, p: CleanFrameParams) -> np.ndarray:
    """Textured pixels of the border band: what the background holds. (The held-cel explanation
    is symmetric - a cel sliding over a still background fits as well, and is a new drawing -
    and the background is what reaches the image border.)"""
    h, w = ref.shape
    band = max(4, int(p.border_band * min(h, w)))
    edge = np.zeros((h, w), bool)
    edge[:band] = edge[-band:] = True
    edge[:, :band] = edge[:, -band:] = True
    grad = cv2.morphologyEx(ref, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    return edge & (grad >= p.border_texture)


def _background_shift(ref: np.ndarray, cur: np.ndarray, s, band: np.ndarray, p: CleanFrameParams):
    """The background's motion near the guess `s`, fitted on the border `band` alone (a global fit
    would be pulled toward the held cel), or None when the border does not move with it."""
    border = band.copy()
    _zero_margins(border, int(np.ceil(abs(s[0]))) + 3, int(np.ceil(abs(s[1]))) + 3)  # revealed strip
    if np.count_nonzero(border) < 0.01 * border.size:
        return None  # a flat border: no evidence of which layer moved
    diffs: dict = {}

    def diff(d):
        if d not in diffs:
            diffs[d] = cv2.absdiff(_translate(ref, -d[0], -d[1]), cur)[border]
        return diffs[d]

    best = (float(round(s[0])), float(round(s[1])))
    if (diff(best) < p.pan_threshold).mean() < 0.5 * p.border_agree:
        return None  # not even roughly the background's motion: no fit needed
    for step in (0.5, 0.25):
        around = [(best[0] + i * step, best[1] + j * step) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        best = min(around, key=lambda d: float(diff(d).mean()))
    moved = (diff(best) < p.pan_threshold).mean()
    held = (diff((0.0, 0.0)) < p.pan_threshold).mean()
    return best if moved >= p.border_agree and moved - held >= p.border_margin else None


def _held_cel_shift(ref: np.ndarray, cur: np.ndarray, guesses, win: dict, p: CleanFrameParams):
    """The background motion (dx, dy) under which `cur` is `ref`'s cel held over a panning
    background, or None. Tries `guesses` (the pan's prediction), then phase-correlation peaks."""
    if p.layered_peaks <= 0:
        return None
    band = _border_band(ref, p)
    if not band.any() or (cv2.absdiff(ref, cur)[band] < p.pan_threshold).mean() > 1.0 - p.border_margin:
        return None  # the border (the background) did not move: most new drawings end here, cheaply
    h, w = ref.shape
    # full resolution: at half size a slow background's peak is next to the held cel's and is
    # suppressed as its neighbour
    hw = win.get(("hann", (w, h)))
    if hw is None:
        hw = win[("hann", (w, h))] = cv2.createHanningWindow((w, h), cv2.CV_32F)
    peaks = phase_peaks(ref, cur, p.layered_peaks, hw)
    for s in [*guesses, *peaks]:
        if np.hypot(*s) < p.layered_min_shift or abs(s[0]) >= p.max_pan_shift_frac * w \
                or abs(s[1]) >= p.max_pan_shift_frac * h:
            continue
        s = _background_shift(ref, cur, s, band, p)
        r = _layered_map(ref, cur, s[0], s[1], p) if s is not None else None
        if r is not None and not _changed(r, p, p.pan_cap, p.pan_threshold)[0]:
            return s
    return None


# ----------------------------------------------------------------------------------------
# online tracker


class DrawingTracker:
    """Online candidate picker; one per decode pass. Call `push` for every frame in order.

    Every non-black/white frame is compared with the LAST CANDIDATE (the reference):
    'hold' if it matches as is, 'pan' if it matches after undoing a camera translation
    (the translation is first predicted from the pan's velocity, else measured by phase
    correlation), otherwise it becomes the new candidate and reference.
    """

    def __init__(self, params: CleanFrameParams | None = None):
        self.p = params or CleanFrameParams()
        self._win: dict = {}
        self._prev: np.ndarray | None = None  # prepped previous frame (any exposure)
        self._ref: np.ndarray | None = None  # prepped last candidate
        self._ref_index: int | None = None
        # during a pan: alignment base (the ref, or a re-based later frame of the pan),
        # the base's shift vs the ref, the last measured shift vs the base and its velocity
        self._base: np.ndarray | None = None
        self._base_shift = (0.0, 0.0)
        self._last = (0.0, 0.0)
        self._vel = (0.0, 0.0)
        self._recent: list[tuple[int, np.ndarray]] = []  # (index, prepped) of recent candidates
        self.n_candidates = 0

    def push(self, index: int, gray: np.ndarray) -> FrameDecision:
        p = self.p
        g = _prep(gray, p)
        prev, self._prev = self._prev, g
        change = _grid_change(g, prev, p) if prev is not None and prev.shape == g.shape else 255.0
        expo = exposure_class(gray, p)
        if expo is not None:
            return FrameDecision(False, expo, None, None, change)
        ref = self._ref
        if ref is None or ref.shape != g.shape:
            return self._new_candidate(index, g, change)

        base = self._base if self._base is not None else ref
        d0 = _block_map(base, g, p)
        if base is ref:
            if not _changed(d0, p, p.hold_cap)[0]:
                self._vel = (0.0, 0.0)
                return FrameDecision(False, "hold", self._ref_index, None, change)

        # outside a pan, first: a drawing seen a moment ago (A B A, mouth flaps)?
        local = np.count_nonzero(d0 >= p.hold_threshold) < p.recent_max_area * d0.size
        if self._vel == (0.0, 0.0) and local:
            hit = self._recent_match(g)
            if hit is not None:
                return FrameDecision(False, "repeat", hit, None, change)
        # camera move: try the shift predicted from the pan's velocity (as is, then
        # refined), then measure it by phase correlation (as is, then refined)
        tries = ["pred", "pred+"] if self._vel != (0.0, 0.0) else []
        tries += ["phase", "phase+"]
        s = (0.0, 0.0)
        for t in tries:
            if t == "pred":
                s = (self._last[0] + self._vel[0], self._last[1] + self._vel[1])
            elif t == "pred+":
                s = _refine_shift(base, g, *s, iters=1)
            elif t == "phase":
                s = _phase_shift(base, g, self._win)
            else:
                s = _refine_shift(base, g, *s)
            ok, overlap, score = _pan_match(base, g, d0, s[0], s[1], p)
            if ok:
                self._vel = (s[0] - self._last[0], s[1] - self._last[1])
                self._last = s
                tot = (self._base_shift[0] + s[0], self._base_shift[1] + s[1])
                if overlap < p.rebase_overlap:
                    self._base, self._base_shift, self._last = g, tot, (0.0, 0.0)
                return FrameDecision(False, "pan", self._ref_index, tot, change)
        if self._vel != (0.0, 0.0) and local:
            hit = self._recent_match(g)
            if hit is not None:
                return FrameDecision(False, "repeat", hit, None, change)
        if base is ref:  # the camera follows a held cel: the background pans, the cel stays
            guess = [(self._last[0] + self._vel[0], self._last[1] + self._vel[1])] if self._vel != (0.0, 0.0) else []
            s = _held_cel_shift(ref, g, guess, self._win, p)
            if s is not None:
                self._vel = (s[0] - self._last[0], s[1] - self._last[1])
                self._last = s
                return FrameDecision(False, "pan", self._ref_index, s, change)
        return self._new_candidate(index, g, change)

    def _recent_match(self, g: np.ndarray) -> int | None:
        """Index of a recent candidate (not the ref) showing the same drawing as is; it
        becomes the reference again."""
        p = self.p
        for k in range(len(self._recent) - 2, -1, -1):  # the last one is the ref itself
            j, r = self._recent[k]
            if _grid_change(r, g, p) >= p.hold_cap:  # cheap certain "changed"
                continue
            if not _changed(_block_map(r, g, p), p, p.hold_cap)[0]:
                self._recent.append(self._recent.pop(k))
                self._set_ref(j, r)
                return j
        return None

    def _set_ref(self, index: int, g: np.ndarray) -> None:
        self._ref, self._ref_index = g, index
        self._base, self._base_shift = None, (0.0, 0.0)
        self._last, self._vel = (0.0, 0.0), (0.0, 0.0)

    def _new_candidate(self, index: int, g: np.ndarray, change: float) -> FrameDecision:
        self._set_ref(index, g)
        if self.p.recent_candidates > 0:
            self._recent.append((index, g))
            del self._recent[:-self.p.recent_candidates]
        self.n_candidates += 1
        return FrameDecision(True, None, None, None, change)


# ----------------------------------------------------------------------------------------
# sharpness


def line_art_sharpness(gray: np.ndarray, min_contrast: float = 24.0) -> float:
    """Sharpness of line art in [0, 1], independent of contrast and of the amount of line art.

    At every edge centre (a 3x3 local maximum of the slope max(|dx|, |dy|), with a local
    contrast of at least `min_contrast` grey levels and a slope of at least 1/16 of it)
    the slope is divided by the local contrast (max - min in a 9x9 neighbourhood). For a step edge blurred by a
    Gaussian of sigma s this ratio is ~1/(2.5 s) and it is ~0.5 for a perfectly sharp
    edge (central differences), whatever the step's height. The score is the median
    ratio over edge pixels, times 2, clipped to [0, 1]. Flat colour areas contribute
    nothing, so a frame with little line art is judged on the little it has.
    Returns 0.0 for a frame with no edge at all. Meant for ~960x540 input (~2-3 ms).
    """
    g = gray if gray.dtype == np.uint8 else np.clip(gray, 0, 255).astype(np.uint8)
    if g.ndim == 3:
        g = cv2.cvtColor(g, cv2.COLOR_BGR2GRAY)
    k = np.ones((9, 9), np.uint8)
    rng = cv2.subtract(cv2.dilate(g, k), cv2.erode(g, k))  # local contrast
    # 2 x central derivatives, |.| <= 255 so uint8 is exact
    s = cv2.max(cv2.convertScaleAbs(cv2.Sobel(g, cv2.CV_16S, 1, 0, ksize=1)),
                cv2.convertScaleAbs(cv2.Sobel(g, cv2.CV_16S, 0, 1, ksize=1)))
    # edge centres: the slope is a local maximum (3x3, ties allowed: along a straight edge
    # the slope is flat, across it peaks). uint8 0/255 masks and cv2 ops: fast.
    mask = cv2.compare(s, cv2.dilate(s, np.ones((3, 3), np.uint8)), cv2.CMP_GE)
    mask = cv2.bitwise_and(mask, cv2.compare(rng, min_contrast, cv2.CMP_GE))
    # not a flat or faint spot next to an edge: s * 8 > rng  <=>  s > rng // 8
    mask = cv2.bitwise_and(mask, cv2.compare(s, rng >> 3, cv2.CMP_GT))
    mask[:1] = mask[-1:] = 0  # image borders: one-sided derivatives
    mask[:, :1] = mask[:, -1:] = 0
    # slope per pixel / contrast = s / (2 r), as 1/256 bins: 128 s / r (cv2.divide rounds and
    # saturates at 255, i.e. ratio >= 1 - a score of 1 anyway); median of the masked histogram
    q = cv2.divide(s, rng, scale=128.0)
    hist = cv2.calcHist([q], [0], mask, [256], [0, 256]).ravel()
    n = float(hist.sum())
    if n < 16:
        return 0.0
    med = (int(np.searchsorted(np.cumsum(hist), (n + 1) // 2)) + 0.5) / 256
    return float(np.clip(2.0 * med, 0.0, 1.0))


# ----------------------------------------------------------------------------------------
# per-shot final pass


@dataclass
class ShotSelection:
    kept: list[int]  # frame indices kept (all were online candidates), in order
    keyframes: list[int]  # 1-3 representative frames among `kept`
    dropped: dict[int, tuple[str, int | None]] = field(default_factory=dict)  # frame -> (reason, ref)


def same_drawing(a: np.ndarray, b: np.ndarray, params: CleanFrameParams | None = None) -> bool:
    """True if analysis images `a` and `b` show the same drawing, up to a camera translation."""
    p = params or CleanFrameParams()
    return _same(_prep(a, p), _prep(b, p), p, {})


def _same(ra: np.ndarray, rb: np.ndarray, p: CleanFrameParams, win: dict,
          aligned: bool = True) -> bool:
    """Prepped images show the same drawing, as is or (if `aligned`) through a camera
    translation."""
    if ra.shape != rb.shape:
        return False
    if not aligned and _grid_change(ra, rb, p) >= p.hold_cap:  # cheap certain "changed"
        return False
    d0 = _block_map(ra, rb, p)
    if not _changed(d0, p, p.hold_cap)[0]:
        return True
    if not aligned:
        return False
    dx, dy = _phase_shift(ra, rb, win)
    if _pan_match(ra, rb, d0, dx, dy, p)[0]:
        return True
    dx, dy = _refine_shift(ra, rb, dx, dy)
    return _pan_match(ra, rb, d0, dx, dy, p)[0]


def _as_decisions(decisions, n: int) -> list[FrameDecision]:
    if isinstance(decisions, Mapping):  # arrays: candidate, reason, ref (+ optional shift, change)
        cand = np.asarray(decisions["candidate"], bool)
        reason = list(decisions.get("reason", [None] * n))
        ref = list(decisions.get("ref", [None] * n))
        change = np.asarray(decisions.get("change", np.zeros(n)), float)
        out = []
        for i in range(n):
            r = reason[i] if reason[i] not in ("", None) else None
            f = ref[i]
            f = None if f is None or (isinstance(f, (float, np.floating)) and np.isnan(f)) or \
                (isinstance(f, (int, np.integer)) and f < 0) else int(f)
            out.append(FrameDecision(bool(cand[i]), r, f, None, float(change[i])))
        return out
    out = list(decisions)
    if len(out) != n:
        raise ValueError(f"{len(out)} decisions for {n} frames")
    return out


def select_shot_frames(
    frame_indices: np.ndarray | Sequence[int],
    decisions: Sequence[FrameDecision] | Mapping[str, Sequence],
    candidate_signatures: Mapping[int, np.ndarray],
    quality: Mapping[int, float],
    luma_mean: np.ndarray | Sequence[float],
    transition_frames: set[int] | frozenset[int] = frozenset(),
    params: CleanFrameParams | None = None,
) -> ShotSelection:
    """Decide the kept frames of ONE shot, with the whole shot in view.

    frame_indices: the shot's frames (episode indices), in order. `decisions` (the tracker's
    output; a list of FrameDecision or a dict of arrays 'candidate', 'reason', 'ref') and
    `luma_mean` (mean analysis luma per frame) are aligned with `frame_indices`.
    candidate_signatures: frame -> analysis gray, for every candidate of the shot.
    quality: frame -> line_art_sharpness, for candidates (missing = 1.0).

    Every frame ends up in `kept` or in `dropped` with (reason, ref); `ref` is the kept
    frame showing the same drawing where there is one. Frames that hold / pan from a frame
    outside the shot (a cut the tracker saw as "same drawing") keep that outside ref.
    """
    p = params or CleanFrameParams()
    idx = [int(i) for i in np.asarray(frame_indices).ravel()]
    n = len(idx)
    dec = _as_decisions(decisions, n)
    luma = np.asarray(luma_mean, np.float64).ravel()
    if luma.size != n:
        raise ValueError(f"{luma.size} luma values for {n} frames")
    trans = set(int(t) for t in transition_frames)
    al: dict = {}  # phase-correlation windows
    dropped: dict[int, tuple[str, int | None]] = {}

    # 1. frames that are out before any comparison. A candidate inside a detected
    #    transition that frames after the transition still hold is where the picture
    #    settled (a detected range can overrun the real one by a frame): not a mix.
    settled = {d.ref for k, d in enumerate(dec) if idx[k] not in trans and not d.candidate and d.ref is not None}
    cands: list[int] = []  # positions in the shot
    for k, f in enumerate(idx):
        d = dec[k]
        if f in trans and not (d.candidate and f in settled):
            dropped[f] = ("transition", None)
        elif d.reason in ("black", "white"):
            dropped[f] = (d.reason, None)
        elif d.candidate and f in candidate_signatures:
            cands.append(k)
    prepped = {idx[k]: _prep(candidate_signatures[idx[k]], p) for k in cands}
    cand_set = set(cands)

    # 2. flash / impact bursts. The shot as a sequence of runs of what is on screen (the
    #    candidate a frame is, or holds / pans from / repeats); a burst is a short stretch
    #    of runs (<= flash_max_frames frames) each very different from the runs on both
    #    sides of the stretch, while the sides are alike (the picture comes back, maybe
    #    with a new expression: an impact frame often marks a drawing change).
    pos = {f: k for k, f in enumerate(idx)}
    runs: list[list[int]] = []  # [state frame, first pos, last pos]
    for k, f in enumerate(idx):
        d = dec[k]
        if f in dropped:
            continue
        st = f if k in cand_set else d.ref
        if st not in prepped:
            st = None
        if runs and runs[-1][0] == st and runs[-1][2] == k - 1:
            runs[-1][2] = k
        else:
            runs.append([st, k, k])
    area_cache: dict[tuple[int, int], float] = {}

    def area(x: int, y: int) -> float:  # strong-difference area of two states
        key = (x, y) if x < y else (y, x)
        if key not in area_cache:
            area_cache[key] = _strong_area(prepped[x], prepped[y], p, al)
        return area_cache[key]

    def differs(x: int, y: int) -> bool:  # burst-like difference of state x from side y
        return abs(luma[pos[x]] - luma[pos[y]]) >= p.flash_luma_delta or area(x, y) >= p.flash_area

    flash: set[int] = set()  # state frames of bursts
    flash_pos: set[int] = set()
    a = 1
    while a < len(runs) - 1:
        before = runs[a - 1][0]
        if before is None or runs[a][0] is None or not differs(runs[a][0], before):
            a += 1
            continue
        hit = False
        for b in range(a, len(runs) - 1):
            st = runs[b][0]
            if runs[b][2] - runs[a][1] + 1 > p.flash_max_frames or st is None or not differs(st, before):
                break
            after = runs[b + 1][0]
            if after is None:
                continue
            # the picture comes back: before and after differ at most locally (a burst
            # inside big full-frame animation is animation, not a flash)
            if area(before, after) >= p.flash_area:
                continue
            if all(differs(r[0], after) for r in runs[a:b + 1]):
                for r in runs[a:b + 1]:
                    flash.add(r[0])
                    flash_pos.update(range(r[1], r[2] + 1))
                a, hit = b + 1, True
                break
        if not hit:
            a += 1
    for k in flash_pos:
        dropped[idx[k]] = ("flash", None)

    # 3. repeats of any earlier kept drawing (A B A); low quality
    kept: list[int] = []
    redirect: dict[int, int] = {}  # dropped candidate -> kept frame with the same drawing
    # block means of the kept frames, to rule out most "as is" comparisons at once:
    # |mean(a - b)| <= mean|a - b|, so a block-mean difference >= hold_cap is a change
    grids: np.ndarray | None = None
    for k in cands:
        f = idx[k]
        if f in flash:
            continue
        fg = _block_means(prepped[f], p)
        if grids is None:
            grids = np.empty((len(cands),) + fg.shape, np.float32)
        bound = np.abs(grids[:len(kept)] - fg).max(axis=(1, 2)) if kept else np.empty(0)
        hit = None
        for n in range(len(kept)):  # most recent first: the likeliest match
            j = len(kept) - 1 - n
            near = n < p.repeat_aligned_window
            if not near and bound[j] >= p.hold_cap:
                continue
            if _same(prepped[kept[j]], prepped[f], p, al, aligned=near):
                hit = kept[j]
                break
        if hit is not None:
            dropped[f] = ("repeat", hit)
            redirect[f] = hit
            continue
        grids[len(kept)] = fg
        kept.append(f)
    low = [f for f in kept if quality.get(f, 1.0) < p.min_quality]
    if low and len(low) < len(kept):
        for f in low:
            kept.remove(f)
            dropped[f] = ("low_quality", None)

    # 4. non-candidates: hold / pan from their ref (redirected to the kept frame)
    for k, f in enumerate(idx):
        if f in dropped or f in kept:
            continue
        d = dec[k]
        ref = redirect.get(d.ref, d.ref) if d.ref is not None else None
        if ref is not None and ref in dropped and dropped[ref][0] == "low_quality":
            dropped[f] = ("low_quality", ref)
        elif d.candidate:  # candidate without a signature: cannot compare, keep out
            dropped[f] = ("low_quality", None)
        else:
            dropped[f] = (d.reason or "hold", ref)

    # 5. at least one frame if the shot has a non-black candidate
    if not kept:
        pool = [idx[k] for k in cands if dropped.get(idx[k], ("",))[0] not in ("black", "white")]
        if pool:
            best = max(pool, key=lambda f: quality.get(f, 1.0))
            dropped.pop(best, None)
            kept.append(best)

    kept.sort()
    return ShotSelection(kept=kept, keyframes=_keyframes(kept, quality, idx, p), dropped=dropped)


def _strong_area(a: np.ndarray, b: np.ndarray, p: CleanFrameParams, win: dict) -> float:
    """Fraction of the picture whose window mean diff is >= flash_level, as is or after
    alignment (the smaller; alignment is only tried when the first is large)."""
    m = _block_map(a, b, p)
    frac = float(np.count_nonzero(m >= p.flash_level)) / m.size
    if frac < p.flash_area:
        return frac
    dx, dy = _phase_shift(a, b, win)
    if np.hypot(dx, dy) >= p.min_pan_shift:
        r, overlap = _aligned_map(a, b, m, dx, dy, p)
        if r is not None and overlap >= p.min_overlap:
            frac = min(frac, float(np.count_nonzero(r >= p.flash_level)) / r.size)
    return frac


def _keyframes(kept: list[int], quality: Mapping[int, float], idx: list[int],
               p: CleanFrameParams) -> list[int]:
    """1-3 kept frames: the sharpest, then sharp ones far (in time) from those chosen."""
    if not kept:
        return []
    n = int(np.clip(1 + len(idx) // max(1, p.keyframe_span), 1, p.max_keyframes))
    n = min(n, len(kept))
    span = max(1, idx[-1] - idx[0])
    q = {f: float(quality.get(f, 1.0)) for f in kept}
    chosen = [max(kept, key=lambda f: (q[f], -f))]
    while len(chosen) < n:
        def score(f):
            dist = min(abs(f - c) for c in chosen) / span
            return (0.25 + q[f]) * dist
        rest = [f for f in kept if f not in chosen]
        chosen.append(max(rest, key=score))
    return sorted(chosen)
