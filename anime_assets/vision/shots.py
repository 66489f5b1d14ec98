"""Shot boundary detection tuned for 2D anime (pure numpy: no Dagster, no file IO).

Input: the 48x27 RGB views of every frame (TransNetV2's input size), optionally a
TransNetV2 scorer ``frames -> (single, many)`` (see ``anime_assets.models.transnet``).

Why not one off-the-shelf detector
----------------------------------
* TransNetV2 alone fires on white flashes and impact frames (1-3 frames of
  white / inverted / tinted art inside one shot): measured on the synthetic
  'cuts' clip its single-frame score is 0.5-0.7 on them. It also misses some
  cuts between two nearly static shots (score 0.00 at a real cut into an
  8-frame shot of the 'sample' clip) and splits a fade-through-black in two.
* PySceneDetect's content/adaptive detectors miss dissolves and, with their
  15-frame default minimum, drop short shots.

Design
------
1. **Evidence curves.**  ``pix[i]`` = mean |frame[i] - frame[i-1]| (0..1) on the
   small frames; a local context level (upper quartile of ``pix`` within
   +-0.5 s, excluding the frame itself) turns it into a ratio, like an adaptive
   detector. With TransNetV2: ``single`` (cut after frame i, so a cut *into*
   frame c reads ``single[c-1]``) and ``many`` (frame is inside a transition).
2. **Cut candidates** (frame c = first frame of the new shot):
   TransNetV2 ``single[c-1] >= cut_threshold``, or a weaker TransNetV2 peak
   confirmed by a classical jump, or a strong classical jump alone (pixel change
   >= ``classical_cut_abs`` and >= ``classical_ratio`` x local context). Peaks
   closer than 2 frames are merged (highest score wins).
3. **Flash / impact filter.** A candidate is dropped (its frames reported in
   ``flashes``) when there is a burst of at most ``max_flash_frames`` frames
   around it such that the frame before the burst matches the frame after it
   (pixel distance <= ``flash_match_abs`` and < ``flash_match_ratio`` x how
   different the burst frames are from both sides). A cut that happens to
   be hidden behind a flash still counts, because before/after do not match.
   Two shots with the same background but different framing differ far more
   than ``flash_match_abs`` at 48x27, so they are still split.
4. **Gradual transitions.** With TransNetV2: runs of ``many`` above a
   hysteresis threshold (seed ``gradual_high``, extend while >= ``gradual_low``)
   that last >= ``min_gradual_frames``; runs separated by near-black frames or a
   gap of <= 2 frames are merged (a fade out / black / fade in is ONE
   boundary). A run in which one frame-to-frame step carries most of the total
   change (``step_fraction``) is a hard cut, not a gradual transition. Without
   TransNetV2: a classical blend test (a dissolve frame is the average of the
   frames ``w`` before and after; a pan, a moving character or a cut is not)
   plus near-black runs with brightness ramps for fades. Runs of blend-like
   frames longer than ``max_blend_seconds`` are ignored: slow (sub-pixel at
   48x27) pans also look like blends. Wipes are only found with TransNetV2.
   Kind: ``fade`` if the range contains near-black frames, ``wipe`` if the mid
   frame is better explained by choosing, per pixel, the frame before or after
   than by any global blend of the two, else ``dissolve``.
5. **Partition.** Cut candidates inside (or touching) a gradual range are
   absorbed into it; boundaries closer than ``min_shot_frames`` keep the
   highest score; shots are split at cuts and at the midpoint
   ``(start + end + 1) // 2`` of gradual ranges.

``transnet=None`` (classical only) is a documented, weaker fallback: it finds
hard cuts, flashes, fades and clean dissolves on flat 2D art, but is less
robust on real footage with fast motion, camera shake or lighting changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["Boundary", "ShotDetection", "ShotParams", "detect_shots", "frame_distance", "transition_frames"]

TransNetFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Boundary:
    kind: str  # 'cut' | 'dissolve' | 'fade' | 'wipe'
    start: int  # transition frame range, inclusive; for a hard cut start == end == first frame of the new shot
    end: int
    score: float


@dataclass
class ShotDetection:
    shots: list[tuple[int, int]]  # (start, end exclusive), contiguous partition of [0, N)
    boundaries: list[Boundary]
    flashes: list[int]  # frames recognised as flash / impact inside a shot (not cuts)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # per-frame curves for plots / debugging


@dataclass(frozen=True)
class ShotParams:
    cut_threshold: float = 0.5  # TransNetV2 single-frame probability accepted on its own
    weak_cut_threshold: float = 0.15  # TransNetV2 peak accepted when a classical jump confirms it
    classical_cut_abs: float = 0.06  # mean |diff| (0..1) for a classical jump (~15 grey levels)
    classical_strong_abs: float = 0.08  # classical-only cut (no TransNetV2 support needed)
    classical_ratio: float = 3.5  # jump vs local context level (3.0 gave false cuts on motion graphics)
    context_seconds: float = 0.5
    max_flash_frames: int = 4
    flash_match_abs: float = 0.05  # before/after a flash must match this well (mean |diff|)
    flash_match_ratio: float = 0.5  # ... and much better than the burst matches either side
    gradual_high: float = 0.5  # TransNetV2 many-hot hysteresis
    gradual_low: float = 0.3
    min_gradual_frames: int = 4
    step_fraction: float = 0.5  # one step carrying this share of a run's change = hard cut
    black_level: float = 0.08  # 95th percentile of a near-black frame (0..1)
    max_black_gap_seconds: float = 3.0  # longest black stretch inside one fade
    min_shot_frames: int = 4
    # a step in a still shot: a character appearing on the same held background is a cut
    # (in-shot drawing changes over a still background measured <= 0.008 on the fixtures)
    still_context: float = 0.005
    still_step_abs: float = 0.04
    # classical-only gradual detection
    blend_halfwidths: tuple[int, ...] = (3, 5, 8)
    blend_min_change: float = 0.04  # end-to-end change across the window
    blend_max_residual: float = 0.2  # residual / end-to-end change for a linear blend
    max_blend_seconds: float = 2.5  # a longer run of blend-like frames is slow camera motion


# --------------------------------------------------------------- features
def _as_float(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) * (1.0 / 255.0)


def frame_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0..1) between float frames, over the last three axes."""
    return np.abs(a - b).mean(axis=(-3, -2, -1))


def _consecutive(f: np.ndarray) -> np.ndarray:
    """pix[i] = distance(frame i-1, frame i); pix[0] = 0."""
    out = np.zeros(len(f), np.float32)
    if len(f) > 1:
        out[1:] = frame_distance(f[1:], f[:-1])
    return out


def _context_level(pix: np.ndarray, half: int) -> np.ndarray:
    """Upper quartile of pix in [i-half, i+half] excluding i-1..i+1 (local motion level)."""
    n = len(pix)
    if n == 0:
        return np.zeros(0, np.float32)
    vals = pix.astype(np.float32).copy()
    vals[0] = np.nan  # pix[0] is not a real difference
    padded = np.concatenate([np.full(half, np.nan, np.float32), vals, np.full(half, np.nan, np.float32)])
    win = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1).copy()  # (n, 2*half+1), centre = i
    win[:, half - 1 : half + 2] = np.nan
    # vectorised nan-percentile (np.nanpercentile loops in Python): NaNs sort to the end
    srt = np.sort(win, axis=1)
    k = np.isfinite(win).sum(axis=1)
    pos = 0.75 * np.maximum(k - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
    rows = np.arange(n)
    ctx = srt[rows, lo] + (srt[rows, hi] - srt[rows, lo]) * (pos - lo)
    ctx[k == 0] = 0.0
    return ctx.astype(np.float32)


def _dark(f: np.ndarray, level: float) -> np.ndarray:
    flat = f.reshape(len(f), -1)
    return np.percentile(flat, 95, axis=1) <= level


# ---------------------------------------------------------------- helpers
def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) runs of True."""
    out = []
    i, n = 0, len(mask)
    while i < n:
        if mask[i]:
            j = i
            while j + 1 < n and mask[j + 1]:
                j += 1
            out.append((i, j))
            i = j + 1
        else:
            i += 1
    return out


def _hysteresis(curve: np.ndarray, high: float, low: float) -> list[tuple[int, int]]:
    out = []
    for a, b in _runs(curve >= low):
        if curve[a : b + 1].max() >= high:
            out.append((a, b))
    return out


def _nms(cands: dict[int, float], radius: int) -> dict[int, float]:
    kept: dict[int, float] = {}
    for c in sorted(cands, key=lambda k: -cands[k]):
        if all(abs(c - k) > radius for k in kept):
            kept[c] = cands[c]
    return dict(sorted(kept.items()))


# ----------------------------------------------------------- flash filter
def _flash_burst(f: np.ndarray, c: int, p: ShotParams, motion: float = 0.0) -> tuple[int, int] | None:
    """A burst [a, b] (<= max_flash_frames) with c in [a, b+1] whose surroundings match, else None.

    `motion` is the shot's usual frame-to-frame change (the local context level): during a
    camera pan the frames on either side of a flash differ by the pan's motion over the burst,
    so the match allowance grows with it.
    """
    n = len(f)
    best = None
    for length in range(1, p.max_flash_frames + 1):
        for a in range(c - length, c + 1):
            b = a + length - 1
            if a < 1 or b + 1 >= n or not (a <= c <= b + 1):
                continue
            outside = float(frame_distance(f[a - 1], f[b + 1]))
            if outside > max(p.flash_match_abs, 1.5 * (length + 1) * motion):
                continue
            burst = f[a : b + 1]
            inside = float(min(frame_distance(burst, f[a - 1][None]).min(), frame_distance(burst, f[b + 1][None]).min()))
            if outside < p.flash_match_ratio * inside:
                score = inside - outside
                if best is None or score > best[0]:
                    best = (score, a, b)
    return None if best is None else (best[1], best[2])


# --------------------------------------------------------- gradual helpers
def _blend_curve(f: np.ndarray, p: ShotParams) -> np.ndarray:
    """Per frame, 1 where it is a linear blend (dissolve / fade) of the frames w before and after
    (for some w), else 0. (A per-pixel "selection" test for wipes was tried and rejected: moving
    objects and zooms pass it too, 10 false transitions on 26 s of motion graphics.)"""
    n = len(f)
    hit = np.zeros(n, np.float32)
    for w in p.blend_halfwidths:
        if n <= 2 * w:
            continue
        a, m, b = f[: n - 2 * w], f[w : n - w], f[2 * w :]
        change = frame_distance(a, b)
        resid = frame_distance(m, 0.5 * (a + b))
        # the middle must also differ from both ends (not a still frame next to a cut)
        mid_diff = np.minimum(frame_distance(m, a), frame_distance(m, b))
        ok = (change >= p.blend_min_change) & (resid <= p.blend_max_residual * change) & (mid_diff >= 0.25 * change)
        idx = np.nonzero(ok)[0] + w
        for i in idx:
            hit[max(0, i - w + 1) : i + w] = 1.0
    return hit


def _trim_static(pix: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """Shrink [a, b] so that its end frames actually change (pix > 0.15 x the run's median)."""
    seg = pix[a : b + 2] if b + 2 <= len(pix) else pix[a:]
    if len(seg) == 0:
        return a, b
    thr = 0.15 * float(np.median(seg[seg > 0])) if np.any(seg > 0) else 0.0
    while a < b and pix[a] <= thr:
        a += 1
    while b > a and (b + 1 >= len(pix) or pix[b + 1] <= thr) and pix[b] <= thr:
        b -= 1
    return a, b


def _classify_gradual(f: np.ndarray, dark: np.ndarray, a: int, b: int) -> str:
    if dark[a : b + 1].any():
        return "fade"
    n = len(f)
    before, after = f[max(0, a - 1)], f[min(n - 1, b + 1)]
    mid = f[(a + b) // 2]
    d = (before - after).reshape(-1)
    r = (mid - after).reshape(-1)
    denom = float(d @ d)
    alpha = float(np.clip(r @ d / denom, 0.0, 1.0)) if denom > 1e-9 else 0.5
    mix_resid = float(np.abs(mid - (alpha * before + (1 - alpha) * after)).mean())
    select_resid = float(np.minimum(np.abs(mid - before), np.abs(mid - after)).mean())
    if 0.15 < alpha < 0.85 and select_resid < 0.5 * mix_resid:
        return "wipe"
    return "dissolve"


def _merge_ranges(ranges: list[tuple[int, int, float]], dark: np.ndarray, max_black: int) -> list[tuple[int, int, float]]:
    """Merge ranges separated by <= 2 frames or by a stretch of near-black frames."""
    out: list[list] = []
    for a, b, s in sorted(ranges):
        if out:
            pa, pb, ps = out[-1]
            gap = a - pb - 1
            if gap <= 2 or (gap <= max_black and dark[pb + 1 : a].all()):
                out[-1] = [pa, max(pb, b), max(ps, s)]
                continue
        out.append([a, b, s])
    return [tuple(r) for r in out]


def _fade_ranges(pix: np.ndarray, lum: np.ndarray, dark: np.ndarray, max_black: int, max_ramp: int) -> list[tuple[int, int, float]]:
    """Classical fades: a near-black run (<= max_black) plus the brightness ramps on either side."""
    out = []
    n = len(dark)
    for a, b in _runs(dark):
        if b - a + 1 > max_black:
            continue
        lo = a
        while lo - 1 >= 0 and a - (lo - 1) <= max_ramp and lum[lo - 1] > lum[lo] + 1e-3 and pix[lo] > 1e-3:
            lo -= 1
        hi = b
        while hi + 1 < n and (hi + 1) - b <= max_ramp and lum[hi + 1] > lum[hi] + 1e-3 and pix[hi + 1] > 1e-3:
            hi += 1
        ramps = (a - lo) + (hi - b)
        if a == 0 and hi == b or b == n - 1 and lo == a:
            continue  # black leader / trailer without a ramp: not a transition
        if ramps >= 2:
            out.append((lo, hi, 1.0))
    return out


# -------------------------------------------------------------- detector
def detect_shots(
    small_rgb: np.ndarray,
    fps: float,
    transnet: TransNetFn | None = None,
    params: ShotParams = ShotParams(),
) -> ShotDetection:
    """Split a clip into shots. See the module docstring for the method."""
    p = params
    small_rgb = np.asarray(small_rgb)
    if small_rgb.ndim != 4 or small_rgb.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) frames, got {small_rgb.shape}")
    n = len(small_rgb)
    if n == 0:
        return ShotDetection([], [], [], {})
    fps = float(fps) if fps and fps > 0 else 24.0

    f = _as_float(small_rgb)
    pix = _consecutive(f)
    ctx = _context_level(pix, max(2, int(round(p.context_seconds * fps))))
    lum = f.mean(axis=(1, 2, 3))
    dark = _dark(f, p.black_level)
    max_black = max(1, int(round(p.max_black_gap_seconds * fps)))
    classical = pix / (ctx + 0.01)  # jump over local motion (0.01 ~ 2.5 grey levels floor)
    scores: dict[str, np.ndarray] = {"pixel_diff": pix, "context": ctx, "classical": classical.astype(np.float32)}

    single = many = None
    if transnet is not None:
        single, many = transnet(small_rgb)
        single = np.asarray(single, np.float32).reshape(-1)
        many = np.asarray(many, np.float32).reshape(-1)
        if len(single) != n or len(many) != n:
            raise ValueError("transnet returned curves of the wrong length")
        scores["transnet_single"] = single
        scores["transnet_many"] = many

    # ---- cut candidates (c = first frame of the new shot)
    jump = (pix >= p.classical_cut_abs) & (classical >= p.classical_ratio)
    strong = (pix >= p.classical_strong_abs) & (classical >= p.classical_ratio)
    strong |= (ctx < p.still_context) & (pix >= p.still_step_abs)
    jump |= strong
    cands: dict[int, float] = {}
    for c in range(1, n):
        t = float(single[c - 1]) if single is not None else 0.0
        cl = float(min(1.0, pix[c] / max(p.classical_strong_abs, 1e-6)) * min(1.0, classical[c] / (2 * p.classical_ratio)))
        if single is not None:
            if t >= p.cut_threshold or (t >= p.weak_cut_threshold and jump[c]) or strong[c]:
                cands[c] = max(t, cl)
        elif jump[c]:
            cands[c] = cl
    # a TransNetV2 run above threshold marks the cut after its last frame; keep the strongest per 2 frames
    cands = _nms(cands, 2)

    # ---- flash / impact filter
    flashes: set[int] = set()
    cuts: dict[int, float] = {}
    for c, s in cands.items():
        burst = _flash_burst(f, c, p, float(ctx[c]))
        if burst is not None:
            flashes.update(range(burst[0], burst[1] + 1))
        else:
            cuts[c] = s

    # ---- gradual transitions
    ranges: list[tuple[int, int, float]] = []
    if many is not None:
        for a, b in _hysteresis(many, p.gradual_high, p.gradual_low):
            ranges.append((a, b, float(many[a : b + 1].mean())))
    else:
        blend = _blend_curve(f, p)
        scores["blend"] = blend
        max_len = int(round(p.max_blend_seconds * fps))
        for a, b in _runs(blend > 0):
            if b - a + 1 <= max_len:  # longer "blends" are slow pans / drifts, not transitions
                ranges.append((a, b, 0.6))
    ranges += _fade_ranges(pix, lum, dark, max_black, max_ramp=int(round(2 * fps)))
    ranges = _merge_ranges(ranges, dark, max_black)

    gradual: list[Boundary] = []
    for a, b, s in ranges:
        a, b = _trim_static(pix, a, b)
        # include the flash bookkeeping: a burst is not a transition
        if all(i in flashes for i in range(a, b + 1)):
            continue
        lo, hi = max(1, a), min(n - 1, b + 1)
        steps = pix[lo : hi + 1]
        total = float(steps.sum())
        has_dark = bool(dark[a : b + 1].any())
        if b - a + 1 < p.min_gradual_frames and not has_dark:
            continue  # short: a hard cut's many-hot bump (handled by the cut candidates)
        if total > 0 and float(steps.max()) >= p.step_fraction * total and not has_dark:
            c = lo + int(np.argmax(steps))
            if _flash_burst(f, c, p, float(ctx[c])) is None:
                cuts[c] = max(cuts.get(c, 0.0), s)
            continue
        gradual.append(Boundary(_classify_gradual(f, dark, a, b), int(a), int(b), float(s)))

    # ---- absorb cuts inside / touching gradual ranges
    bounds: list[Boundary] = list(gradual)
    for c, s in cuts.items():
        if any(g.start - 1 <= c <= g.end + 1 for g in gradual):
            continue
        bounds.append(Boundary("cut", int(c), int(c), float(s)))

    # ---- minimum shot length: drop the weaker of two boundaries too close together
    def split(bd: Boundary) -> int:
        return bd.start if bd.kind == "cut" else (bd.start + bd.end + 1) // 2

    bounds.sort(key=split)
    changed = True
    while changed:
        changed = False
        pts = [0] + [split(b) for b in bounds] + [n]
        for i, bd in enumerate(bounds):
            if pts[i + 1] - pts[i] < p.min_shot_frames or pts[i + 2] - pts[i + 1] < p.min_shot_frames:
                # compare with the neighbour that is too close
                j = i - 1 if pts[i + 1] - pts[i] < p.min_shot_frames else i + 1
                if 0 <= j < len(bounds):
                    drop = i if bd.score < bounds[j].score else j
                elif split(bd) <= 0 or split(bd) >= n:
                    drop = i
                else:
                    drop = i  # too close to the clip's start or end
                del bounds[drop]
                changed = True
                break
    bounds = [b for b in bounds if 0 < split(b) < n]

    shots = []
    prev = 0
    for bd in bounds:
        s = split(bd)
        if s > prev:
            shots.append((prev, s))
            prev = s
    shots.append((prev, n))
    return ShotDetection(shots=shots, boundaries=bounds, flashes=sorted(flashes), scores=scores)


def transition_frames(boundaries) -> set[int]:
    """Frames inside gradual transitions (dissolves, fades, wipes): mixed images of two shots.

    `boundaries`: Boundary objects or dicts with kind/start/end (as stored in shots.json).
    """
    out: set[int] = set()
    for b in boundaries:
        kind, start, end = (b["kind"], b["start"], b["end"]) if isinstance(b, dict) else (b.kind, b.start, b.end)
        if kind != "cut":
            out.update(range(int(start), int(end) + 1))
    return out
