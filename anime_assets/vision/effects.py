"""Effect layer extraction: what lies on top of background + character.

Model: ``frame = blend(base, E)`` with ``base = background * (1 - A) + X * A`` (the
character X over the background with coverage A) and ``E`` one straight-alpha RGBA
layer with ONE blend mode per frame (the fixtures' formulas, see `metrics.recompose`)::

    normal:  F = S (1 - a) + C a
    add:     F = min(S + C a, 1)
    screen:  F = 1 - (1 - S)(1 - C a)

Where no character covers the frame the base is the background, so the effect is
recovered exactly, pixel by pixel, for every mode:

* ``add``:    premultiplied ``P = C a = F - S``;
* ``screen``: ``P = 1 - (1 - F) / (1 - S)``;
* ``normal``: the MINIMAL alpha that keeps the colour inside [0, 1]
  (``a = max_c (F-S)/(1-S)`` where brighter, ``(S-F)/S`` where darker), ``C = S + (F-S)/a``;

and for the additive modes ``a = max_c P`` (the minimal alpha: ``C = P / a`` has a
channel at 1).

Footprint (`_footprint`): the residual against the base, at ~640 px wide (area-averaged),
blurred (sigma 1.5), above ``noise + texture_k * gradient(base)`` (H.264 at crf 18 leaves
2-4 levels in flat areas but up to ~30 on textured backgrounds); a 2 px ring around the
character needs ``edge_noise`` more and components lying almost entirely in it are the
codec's smear of the line art, not effects; small weak components are speckle.

Blend mode (`_choose_mode`): all three modes reproduce a brightening exactly, so the mode
is the one that explains the footprint best with a locally SMOOTH colour (an effect is
drawn with few colours; in the wrong mode the background's texture leaks into the colour,
e.g. an additive glow read as 'normal' takes the colour ``S + P / a``), measured as the
alpha^2-weighted error of re-blending with the colour field smoothed. A footprint that
darkens the background cannot be 'add'/'screen': it is 'normal'. Ties go to 'normal' (a
white flash is 'normal' with alpha 1, exactly as 'screen' with alpha 1 would be).

Over the character the base is unknown. The effect there is:

* with ``char_reference`` (the character's own colours, e.g. from another frame of the
  same drawing): inverted exactly against ``background * (1-A) + reference * A``;
* otherwise, for 'add'/'screen': the premultiplied field seen next to the character,
  faded over ``reach`` px (an aura stops at the silhouette; following it further puts it
  on the character), kept within what the frame allows: ``0 <= X <= 1`` for the
  character colour at each pixel (with partial coverage this pins the effect down), and
  ``P <= F`` over a small window inside;
* for 'normal': the layer seen next to the character, faded likewise; thin overlays of the
  effect's dominant colour (pixels on the segment from the local character colour - the
  mean of neighbours that are off the overlay - towards that colour, e.g. a magic circle
  drawn over the character); areas of that colour connected to a strong part of the
  footprint (a flash) with its typical alpha; then the least change of alpha keeping
  ``0 <= X <= 1``.

So the recomposition is exact up to 8-bit rounding wherever char_alpha is partial or the
effect was estimated. Known limits (numbers in test_effects_layer.py):

* an effect entirely inside the character with no reference (an orb held in front of the
  chest) leaves no trace outside it and is NOT separated: it stays in the character's
  colours;
* an effect that char_alpha labels as character (a segmenter that includes a glow) stays
  in the character layer, except its part right at the edge;
* one blend mode per frame: a frame with two effect types (a 'normal' magic circle plus an
  additive glow) is represented in the mode that explains most of it; the other effect is
  re-expressed in that mode (recomposition stays exact, its alpha is the minimal alpha of
  that mode, not the artist's);
* against a background that did not go through the codec, the codec's smoothing of
  texture looks like a faint 'normal' layer: on H.264 frames 'add'/'screen' are told apart
  less reliably than on clean frames.

Pure numpy / OpenCV; no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["EffectEstimate", "extract_effects", "invert_effect"]

_CHAR_EPS = 1.0 / 255.0  # coverage above this counts as character (base unknown)
_debug: dict = {}  # last call's mode-test figures (diagnostics only)


@dataclass
class EffectEstimate:
    rgba: np.ndarray  # (H, W, 4) float32 straight alpha in [0, 1]
    blend: str  # 'normal' | 'add' | 'screen': the mode that recomposes the frame
    coverage: float  # share of pixels with alpha > 1/255

    @property
    def alpha(self) -> np.ndarray:
        return self.rgba[..., 3]


def _empty(h: int, w: int) -> EffectEstimate:
    return EffectEstimate(np.zeros((h, w, 4), np.float32), "normal", 0.0)


def _max3(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def _sum3(x: np.ndarray) -> np.ndarray:
    return x[..., 0] + x[..., 1] + x[..., 2]


def _min3(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])


# ------------------------------------------------------------ per-pixel inversion
def _additive_field(F: np.ndarray, S: np.ndarray, mode: str) -> np.ndarray:
    """Premultiplied effect P = C a of an 'add' / 'screen' layer over base S (floats in [0, 1])."""
    if mode == "add":
        return np.maximum(F - S, 0.0)
    return np.maximum(1.0 - (1.0 - F) / np.maximum(1.0 - S, 1e-3), 0.0)


def _normal_alpha(F: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Minimal alpha of a 'normal' layer turning S into F with its colour in [0, 1]."""
    d = F - S
    up = d / np.maximum(1.0 - S, 1e-3)
    down = -d / np.maximum(S, 1e-3)
    return np.clip(_max3(np.where(d > 0, up, down)), 0.0, 1.0)


def invert_effect(frame_f: np.ndarray, rgba: np.ndarray, blend: str) -> np.ndarray:
    """The base S under an effect layer: -> float32 (H, W, 3) in [0, 1] (unknown where a
    'normal' layer is opaque: the frame is returned there)."""
    C, a = rgba[..., :3], rgba[..., 3:4]
    P = C * a  # works for (H, W, 4) and (N, 4)
    if blend == "add":
        S = frame_f - P
    elif blend == "screen":
        S = 1.0 - (1.0 - frame_f) / np.maximum(1.0 - P, 1e-3)
    elif blend == "normal":
        S = np.where(a < 0.999, (frame_f - P) / np.maximum(1.0 - a, 1e-3), frame_f)
    else:
        raise ValueError(f"unknown blend mode {blend!r}")
    return np.clip(S, 0.0, 1.0)


# ---------------------------------------------------------------- small helpers
def _bbox(m: np.ndarray):
    ys = np.flatnonzero(m.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(m.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _clean(mask: np.ndarray, strength: np.ndarray, min_area: int, strong: float, f: int = 1) -> np.ndarray:
    """Drop connected components smaller than ``min_area`` pixels unless their peak
    ``strength`` reaches ``strong`` (compression speckle is weak; a bit of glow seen through
    a gap of the character is not). Components are found on a max-pooled copy (cells of
    f x f pixels) for speed. bool in, bool out."""
    if f > 1:
        h, w = mask.shape
        hs, ws = (h + f - 1) // f, (w + f - 1) // f
        m8 = np.zeros((hs * f, ws * f), np.uint8)
        m8[:h, :w] = mask
        st = np.zeros((hs * f, ws * f), np.uint8)
        st[:h, :w] = strength
        st[:h, :w][~mask] = 0
        ker = np.ones((f, f), np.uint8)
        small = cv2.dilate(m8, ker, anchor=(0, 0))[::f, ::f]
        s_small = cv2.dilate(st, ker, anchor=(0, 0))[::f, ::f]
        area_scale = f * f
    else:
        small, s_small, area_scale = mask.view(np.uint8), strength, 1
    n, lab, stats, _ = cv2.connectedComponentsWithStats(small, connectivity=8)
    if n <= 1:  # nothing but background
        return mask
    keep = stats[:, cv2.CC_STAT_AREA] * area_scale >= min_area
    if not keep[1:].all():
        keep[np.unique(lab[(s_small >= strong) & (small > 0)])] = True
    keep[0] = False
    if keep[1:].all():
        return mask
    ks = keep[lab].view(np.uint8)
    if f > 1:
        ks = cv2.resize(ks, (ks.shape[1] * f, ks.shape[0] * f), interpolation=cv2.INTER_NEAREST)
        ks = ks[:mask.shape[0], :mask.shape[1]]
    return mask & (ks > 0)


def _footprint(F8, S8, known, noise, texture_k, edge_noise, min_area, f, ring_share=0.95) -> np.ndarray:
    """Pixels whose residual against the base is an effect, not compression noise.

    Detection runs at ~640 px wide (area-averaged by ``f``, itself a denoiser) on the
    residual of the two images blurred (sigma 1.5): codec noise is high-frequency and
    concentrated on the background's texture, effects are smooth or at least several
    pixels wide. A pixel is kept if the blurred residual exceeds ``noise + texture_k *
    gradient`` of the base and, at full resolution, its own residual exceeds ``noise``;
    small weak components are speckle (see `_clean`)."""
    H, W = F8.shape[:2]
    if f > 1:
        size = (max(1, W // f), max(1, H // f))
        Fs = cv2.resize(F8, size, interpolation=cv2.INTER_AREA)
        Ss = cv2.resize(S8, size, interpolation=cv2.INTER_AREA)
        ks = None if known is None else cv2.resize(known.view(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
    else:
        Fs, Ss, ks = F8, S8, known
    Fb = cv2.GaussianBlur(Fs, (0, 0), 1.5)
    Sb = cv2.GaussianBlur(Ss, (0, 0), 1.5)
    d = cv2.absdiff(Fb, Sb)
    dm = cv2.max(cv2.max(d[..., 0], d[..., 1]), d[..., 2]).astype(np.float32)
    g = cv2.cvtColor(Sb, cv2.COLOR_RGB2GRAY)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    tex = cv2.dilate(cv2.magnitude(gx, gy) * 0.125, np.ones((3, 3), np.uint8))
    thr = noise + texture_k * tex
    if ks is not None:
        # right next to the character the codec smears its line art into the background:
        # a ring of ~2 px (at 640 wide) needs a clearly stronger residual
        ring = cv2.dilate((~ks).view(np.uint8), np.ones((5, 5), np.uint8)) > 0
        thr = np.where(ring, thr + edge_noise, thr)
    m = dm > thr
    if ks is not None:
        m &= ks
        # a component lying mostly in that ring is the character's own colour smeared
        # (chroma subsampling, ringing), not an effect: effects reach further out
        n, lab = cv2.connectedComponents(m.view(np.uint8), connectivity=8)
        if n > 1:
            area = np.bincount(lab.ravel(), minlength=n)
            in_ring = np.bincount(lab[ring & m], minlength=n)
            drop = in_ring >= ring_share * np.maximum(area, 1)
            drop[0] = False
            if drop.any():
                m &= ~drop[lab]
    m = _clean(m, dm, max(1, min_area // (f * f)), 6.0 * noise, 1)
    if not m.any():
        return np.zeros((H, W), bool)
    if f > 1:
        m = cv2.dilate(m.view(np.uint8), np.ones((3, 3), np.uint8))
        m = cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST) > 0
    diff = cv2.absdiff(F8, S8)
    dmax = cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2])
    m &= dmax > noise
    if known is not None:
        m &= known
    return m


def _blend(S: np.ndarray, C: np.ndarray, a: np.ndarray, mode: str) -> np.ndarray:
    if mode == "normal":
        return S * (1.0 - a) + C * a
    if mode == "add":
        return np.minimum(S + C * a, 1.0)
    return 1.0 - (1.0 - S) * (1.0 - C * a)


def _smooth_colour_error(F, S, C, a, fp, mode: str, k: int) -> float:
    """How well the mode explains the footprint with a locally SMOOTH colour: the colour field
    is replaced by its local alpha^2-weighted mean (k x k) and the frame re-blended; -> mean
    absolute error (0..1 units) over the footprint. Texture of the background that leaks into
    the colour in the wrong mode shows up here; quantisation noise hardly does."""
    w = a * a
    wsum = cv2.boxFilter(w, -1, (k, k), normalize=False)
    Cs = cv2.boxFilter(C * w[..., None], -1, (k, k), normalize=False) / np.maximum(wsum, 1e-9)[..., None]
    R = _blend(S, Cs, a[..., None], mode)
    e = _max3(np.abs(R - F))
    wa = np.where(fp, a * a, 0.0)  # strong pixels carry the evidence (noise / alpha elsewhere)
    tot = float(wa.sum())
    return float((e * wa).sum()) / tot if tot > 0 else 0.0


def _mix_position(F, X, C):
    """t in [0, 1] of the point of the segment X -> C closest to F (per pixel, last axis RGB)."""
    v = C - X
    return np.clip(_sum3((F - X) * v) / np.maximum(_sum3(v * v), 1e-6), 0.0, 1.0)


def _feasible_alpha(F, C, a, Smin, Smax):
    """Alpha closest to ``a`` for which the base under a 'normal' layer of colour C,
    ``S = (F - C a) / (1 - a)``, lies in [Smin, Smax] in every channel (a = 1 always does).
    Arrays (..., 3), ``a`` (...)."""
    d = F - C  # S = F + d * t with t = a / (1 - a)
    eps = 1e-4
    pos, neg = d > eps, d < -eps
    dd = np.where(pos | neg, d, 1.0)
    lo = np.where(pos, (Smin - F) / dd, np.where(neg, (Smax - F) / dd, -np.inf))
    hi = np.where(pos, (Smax - F) / dd, np.where(neg, (Smin - F) / dd, np.inf))
    flat = ~(pos | neg)
    bad = _max3(flat & ((F < Smin - 1e-3) | (F > Smax + 1e-3)))  # only a = 1 fixes it
    t_lo = np.maximum(_max3(lo), 0.0)
    t_hi = _min3(hi)
    t = a / np.maximum(1.0 - a, 1e-6)
    t = np.where(t_lo <= t_hi, np.clip(t, t_lo, t_hi), t_lo)
    out = np.where(bad, np.where(a > 0.5, 1.0, a), t / (1.0 + t))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) * np.float32(1.0 / 255.0)


# ------------------------------------------------------------------------ main
def extract_effects(frame, background, char_alpha, *, char_reference=None, noise: float = 5.0,
                    min_area_frac: float = 2e-4, mode_margin: float = 0.1, darken_frac: float = 0.05,
                    reach: float = 1.0, line_min: float = 0.4, line_resid: float = 3.0,
                    texture_k: float = 0.5, edge_noise: float = 20.0) -> tuple:
    """Effect layer of one frame and the character's colours with the effect taken off.

    frame, background: (H, W, 3) uint8 RGB (background: the estimated background layer);
    char_alpha: (H, W) float32 in [0, 1] character coverage; char_reference: optional
    (H, W, 3) uint8 character colours without effects.

    Tuning (defaults measured on the fixtures, see test_effects_layer.py): ``noise``
    (8-bit levels of residual taken as compression noise), ``texture_k`` (extra residual
    allowed per level/px of background gradient: codecs smear texture), ``edge_noise``
    (extra residual required within ~2 px of the character, where codecs smear line art), ``min_area_frac`` (smallest
    effect component, share of the frame, unless it is strong), ``mode_margin`` (relative
    margin by which an additive mode must explain the footprint better than 'normal'),
    ``darken_frac`` (share of the footprint's energy that darkens the background above
    which only 'normal' fits), ``reach`` (px at 640 wide over which an effect seen around
    the character fades when followed into it), ``line_min`` / ``line_resid`` (thin
    'normal' overlays over the character: least alpha, largest misfit in noise units).

    -> (EffectEstimate, character_rgb (H, W, 3) uint8). ``character_rgb`` is the straight
    (un-premultiplied) character colour where ``char_alpha > 0`` and the frame elsewhere,
    so that ``recompose(background, (character_rgb, char_alpha), effect.rgba, effect.blend)``
    reproduces the frame (exactly up to 8-bit rounding, whatever the effect estimate, as
    long as char_alpha is positive wherever the frame differs from the background
    outside the effect)."""
    F8 = np.ascontiguousarray(frame)
    B8 = np.ascontiguousarray(background)
    if F8.shape != B8.shape or F8.ndim != 3 or F8.shape[2] != 3 or F8.dtype != np.uint8 or B8.dtype != np.uint8:
        raise ValueError(f"frame {F8.shape} and background {B8.shape} must be (H, W, 3) uint8")
    H, W = F8.shape[:2]
    A = np.asarray(char_alpha, np.float32)
    if A.shape != (H, W):
        raise ValueError(f"char_alpha {A.shape} != frame {(H, W)}")
    A = np.clip(A, 0.0, 1.0)
    R8 = None if char_reference is None else np.ascontiguousarray(char_reference, np.uint8)
    scale = max(H, W) / 640.0
    min_area = max(4, int(round(min_area_frac * H * W)))

    # ---- footprint: where the frame differs from what background (+ reference) explain
    inside = A > _CHAR_EPS
    if R8 is not None:
        base8 = _base_u8(B8, R8, A, inside)
        known = None
    else:
        base8 = B8
        known = ~inside
    foot = _footprint(F8, base8, known, noise, texture_k, edge_noise, min_area, max(1, int(round(scale))))
    bb = _bbox(foot)
    if bb is None:
        return _empty(H, W), _character_rgb(F8, B8, A, inside, None, "normal", None)

    # ---- working region: the footprint's box, grown by what the over-character steps look at
    lw = max(5, int(round(11 * scale)) | 1)  # window of the local character colour
    pad = lw + int(np.ceil(6 * reach * scale)) + 2
    x0, y0, x1, y1 = max(0, bb[0] - pad), max(0, bb[1] - pad), min(W, bb[2] + pad), min(H, bb[3] + pad)
    sl = (slice(y0, y1), slice(x0, x1))
    fp = foot[sl]
    h, w = fp.shape
    F8r, S8r = F8[sl], base8[sl]

    # ---- blend mode, decided on a decimated grid (every s-th pixel: exact values, no blur)
    s = max(1, int(round(scale)), int(np.ceil(np.sqrt(h * w / 60000.0))))
    blend = _choose_mode(_f32(F8r[::s, ::s]), _f32(S8r[::s, ::s]), fp[::s, ::s], noise, darken_frac, mode_margin,
                         max(5, int(round(9 * scale / s)) | 1))
    _debug["mode_step"] = s

    # ---- the effect where the base is known: exact per-pixel inversion (footprint pixels only)
    ys, xs = np.nonzero(fp)
    Fp, Sp = _f32(F8r[ys, xs]), _f32(S8r[ys, xs])
    out = np.zeros((H, W, 4), np.float32)
    rgba = out[sl]  # a view: everything below writes into the output
    if blend == "normal":
        a = _normal_alpha(Fp, Sp)
        C = np.clip(Sp + (Fp - Sp) / np.maximum(a, 1e-3)[:, None], 0.0, 1.0)
    else:
        P = _additive_field(Fp, Sp, blend)
        a = _max3(P)
        C = P / np.maximum(a, 1e-6)[:, None]
    rgba[ys, xs, :3] = C
    rgba[ys, xs, 3] = a

    # ---- over the character (base unknown)
    ins = inside[sl]
    if R8 is None and ins.any():
        if blend == "normal":
            _normal_over_character(F8r, S8r, A[sl], rgba, fp, ins, noise, reach * scale, line_min, line_resid, lw)
        else:
            _additive_over_character(F8r, S8r, A[sl], rgba, blend, fp, ins, noise, reach * scale)

    cov = float(np.count_nonzero(rgba[..., 3] > 1.0 / 255.0)) / float(H * W)
    est = EffectEstimate(out, blend if cov > 0 else "normal", cov)
    return est, _character_rgb(F8, B8, A, inside, (sl, rgba), blend, R8)


def _choose_mode(F, S, fp, noise, darken_frac, margin, k) -> str:
    """'normal', 'add' or 'screen': the mode under which the footprint is best explained by
    a locally smooth colour (see the module docstring)."""
    if not fp.any():
        return "normal"
    d = F - S
    energy = _max3(np.abs(d)) * fp
    # darkening, judged on a lightly denoised residual (codec noise darkens single pixels)
    dark = _min3(cv2.GaussianBlur(d, (0, 0), 1.0)) < -2.0 * noise / 255.0
    dark_share = float((energy * dark).sum()) / max(float(energy.sum()), 1e-9)
    _debug["dark"] = round(dark_share, 3)
    # saturated pixels say little about the mode ('add' clips there): left out of the test
    fm = fp & (_max3(F) < 250.0 / 255.0) & (_max3(S) < 250.0 / 255.0)
    if np.count_nonzero(fm) < max(16, np.count_nonzero(fp) // 10):
        fm = fp
    a = np.where(fm, _normal_alpha(F, S), 0.0).astype(np.float32)
    C = np.clip(S + d / np.maximum(a, 1e-3)[..., None], 0.0, 1.0)
    err = {"normal": _smooth_colour_error(F, S, C, a, fm, "normal", k)}
    if dark_share <= darken_frac:
        for m in ("add", "screen"):
            P = np.where(fm[..., None], _additive_field(F, S, m), 0.0).astype(np.float32)
            a = _max3(P)
            err[m] = _smooth_colour_error(F, S, P / np.maximum(a, 1e-3)[..., None], a, fm, m, k)
    _debug["mode_error"] = err
    best = min(err, key=err.get)
    if best != "normal" and err[best] + 0.1 / 255.0 < (1.0 - margin) * err["normal"]:
        return best
    return "normal"


def _base_u8(B8: np.ndarray, R8: np.ndarray, A: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """background * (1 - A) + reference * A (uint8), computed over the character only."""
    out = B8.copy()
    ys, xs = np.nonzero(inside)
    a = A[ys, xs][:, None]
    v = B8[ys, xs].astype(np.float32) * (1.0 - a) + R8[ys, xs].astype(np.float32) * a
    out[ys, xs] = np.clip(v + 0.5, 0, 255).astype(np.uint8)
    return out


def _near_known(field: np.ndarray, fp: np.ndarray, band_px: int, ys, xs, reach_px: float):
    """Estimate of ``field`` (h, w, c) at pixels (ys, xs) from the footprint pixels around
    them (normalised box average over a (2 band_px + 1) window), faded by
    exp(-distance / reach)."""
    k = 2 * band_px + 1
    num = cv2.boxFilter(field, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)
    den = cv2.boxFilter(fp.astype(np.float32), -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)[ys, xs]
    est = num.reshape(field.shape)[ys, xs] / np.maximum(den, 1e-6)[:, None]
    dist = cv2.distanceTransform((~fp).view(np.uint8), cv2.DIST_L2, 3)[ys, xs]
    fade = np.exp(-dist / max(reach_px, 1e-3)) * (den > 0.5)
    return est * fade[:, None]


def _additive_over_character(F8r, S8r, Ar, rgba, blend, fp, ins, noise, reach_px):
    """'add' / 'screen' over character pixels near the footprint: the field seen next to
    them, faded, kept inside what the frame allows (0 <= X <= 1 for the character colour;
    inside the character the X >= 0 bound is taken over a small window)."""
    band_px = max(1, int(np.ceil(3 * reach_px)))  # the fade is < 5 % beyond
    ker = np.ones((2 * band_px + 1,) * 2, np.uint8)
    # near the footprint, and every partial-coverage pixel (its floor keeps X <= 1)
    band = ins & ((cv2.dilate(fp.view(np.uint8), ker) > 0) | (Ar < 0.99))
    ys, xs = np.nonzero(band)
    if ys.size == 0:
        return
    bb = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    y0, x0 = max(0, bb[0] - band_px - 1), max(0, bb[1] - band_px - 1)
    cs = (slice(y0, bb[2] + band_px + 1), slice(x0, bb[3] + band_px + 1))
    fy, fx = np.nonzero(fp[cs])
    P = np.zeros(fp[cs].shape + (3,), np.float32)
    e = rgba[cs][fy, fx]
    P[fy, fx] = e[:, :3] * e[:, 3:4]
    Pn = _near_known(P, fp[cs], band_px, ys - y0, xs - x0, reach_px)
    Fb, Sb, ab = _f32(F8r[ys, xs]), _f32(S8r[ys, xs]), Ar[ys, xs][:, None]
    cap = _additive_field(Fb, Sb * (1.0 - ab), blend)
    win = max(3, int(round(3 * reach_px)) | 1)
    # field(F, 0) = F in both modes
    Fe = _f32(cv2.erode(np.ascontiguousarray(F8r[cs]), np.ones((win, win), np.uint8))[ys - y0, xs - x0])
    cap = np.where(ab < 0.99, cap, np.minimum(cap, Fe))
    low = np.where(ab < 0.99, np.minimum(_additive_field(Fb, Sb * (1.0 - ab) + ab, blend), cap), 0.0)
    Pb = np.clip(Pn, low, cap)
    a = _max3(Pb)
    a = np.where(a > noise / 255.0, a, 0.0)
    rgba[ys, xs, :3] = np.where(a[:, None] > 0, Pb / np.maximum(a, 1e-6)[:, None], 0.0)
    rgba[ys, xs, 3] = a


def _normal_over_character(F8r, S8r, Ar, rgba, fp, ins, noise, reach_px, line_min, line_resid, lw):
    """'normal' over character pixels: (1) the layer seen next to them, faded (edges);
    (2) thin overlays of the effect's dominant colour (skipped for a broad layer);
    (3) areas of that colour connected to a strong part of the footprint (a broad layer
    such as a flash) with the footprint's typical alpha; then the least change of alpha
    that keeps the character colour inside [0, 1]."""
    a_out = rgba[..., 3]
    sel = fp & (a_out > 0.25)
    if not sel.any():
        return
    Cdom = _dominant_colour(rgba[..., :3][sel])
    bb = _bbox(ins)
    cs = (slice(bb[1], bb[3]), slice(bb[0], bb[2]))
    insc = ins[cs]
    ys, xs = np.nonzero(insc)
    F8c = np.ascontiguousarray(F8r[cs])
    Fi = _f32(F8c[ys, xs])
    # (1) continuation of the layer over the character's edge
    band_px = max(1, int(np.ceil(3 * reach_px)))
    rc = rgba[cs]
    prem = np.empty(rc.shape, np.float32)
    np.multiply(rc[..., :3], rc[..., 3:4], out=prem[..., :3])
    prem[..., 3] = rc[..., 3]
    Pn = _near_known(prem, fp[cs], band_px, ys, xs, reach_px)
    ap = Pn[:, 3]
    Cp = np.where(ap[:, None] > 1e-3, Pn[:, :3] / np.maximum(ap, 1e-3)[:, None], Cdom)
    a_col = np.zeros(ys.size, np.float32)
    broad = np.count_nonzero(sel) > 0.5 * np.count_nonzero(~ins)
    if not broad:
        a_col = _thin_overlay(F8c, Fi, ys, xs, Cdom, noise, line_min, line_resid, lw)
    # (3) broad areas of the effect colour connected to a strong part of the footprint
    dc = cv2.absdiff(F8c, np.full_like(F8c, 0) + np.clip(Cdom * 255.0 + 0.5, 0, 255).astype(np.uint8))
    match = (cv2.max(cv2.max(dc[..., 0], dc[..., 1]), dc[..., 2]) < 2 * noise) & insc
    if match.any():
        seed = sel[cs]
        n, lab = cv2.connectedComponents((match | seed).view(np.uint8), connectivity=8)
        good = np.zeros(n, bool)
        good[np.unique(lab[seed])] = True
        good[0] = False
        a_typ = float(np.median(a_out[sel]))
        a_col = np.maximum(a_col, np.where(good[lab[ys, xs]] & match[ys, xs], a_typ, 0.0))
    use_col = a_col > ap
    a = np.where(use_col, a_col, ap)
    C = np.where(use_col[:, None], Cdom, Cp)
    Sb, ab = _f32(S8r[cs][ys, xs]), Ar[cs][ys, xs][:, None]
    Smin = Sb * (1.0 - ab)
    a = _feasible_alpha(Fi, C, a, Smin, Smin + ab)
    a = np.where(a > noise / 255.0, a, 0.0)
    sub = rgba[cs]
    sub[ys, xs, :3] = np.where(a[:, None] > 0, C, 0.0)
    sub[ys, xs, 3] = a


def _dominant_colour(C: np.ndarray) -> np.ndarray:
    """Most frequent colour of (N, 3) colours in [0, 1]: the mean of the fullest cell of a
    16^3 histogram (an effect drawn in one colour beats a second effect re-expressed in
    this mode, whose colours spread)."""
    if len(C) > 50000:  # a sample is plenty
        C = C[:: len(C) // 50000]
    q = np.minimum((C * 16.0).astype(np.int32), 15)
    key = (q[:, 0] << 8) | (q[:, 1] << 4) | q[:, 2]
    cnt = np.bincount(key, minlength=4096)
    return C[key == int(np.argmax(cnt))].mean(axis=0).astype(np.float32)


def _thin_overlay(F8c, Fi, ys, xs, Cdom, noise, line_min, line_resid, lw):
    """Alpha of thin overlays of colour ``Cdom`` at pixels (ys, xs) of F8c: the local
    character colour is the mean of the neighbours that are neither close to Cdom nor on a
    first guess of the overlay (estimated at ~640 px wide: a smooth field), and a pixel on
    the segment from it towards Cdom (within ``line_resid`` noise units) gets the position
    along it as alpha (at least ``line_min``)."""
    h, w = F8c.shape[:2]
    r = max(1, int(round(lw / 11.0)))  # lw: 11 px at 640 wide
    small = F8c if r == 1 else cv2.resize(F8c, (max(1, w // r), max(1, h // r)), interpolation=cv2.INTER_AREA)
    Fs = _f32(small)
    Xm = _f32(cv2.medianBlur(small, 7))
    near = (_max3(np.abs(Fs - Cdom)) < 0.2) | (_mix_position(Fs, Xm, Cdom) > 0.15)
    free = (cv2.dilate(near.view(np.uint8), np.ones((3, 3), np.uint8)) == 0).astype(np.float32)
    k = 11
    den = cv2.boxFilter(free, -1, (k, k), normalize=False)
    Xs = cv2.boxFilter(Fs * free[..., None], -1, (k, k), normalize=False) / np.maximum(den, 1e-6)[..., None]
    if r > 1:
        Xs = cv2.resize(Xs, (w, h), interpolation=cv2.INTER_LINEAR)
        den = cv2.resize(den, (w, h), interpolation=cv2.INTER_LINEAR)
    Xb = Xs[ys, xs]
    v = Cdom - Xb
    t = _mix_position(Fi, Xb, Cdom)
    resid = _max3(np.abs(Fi - (Xb + t[:, None] * v)))
    ok = (den[ys, xs] >= 3) & (_sum3(v * v) > 0.02) & (resid < line_resid * noise / 255.0) & (t >= line_min)
    return np.where(ok, t, 0.0).astype(np.float32)


def _character_rgb(F8, B8, A, inside, effect, blend, R8) -> np.ndarray:
    """Straight character colour with the effect taken off (the frame where A == 0):
    ``X = (S - background (1 - A)) / A`` with S the base under the effect. Only pixels
    with partial coverage or under the effect are computed (elsewhere X = frame)."""
    out = F8.copy()
    need = inside & (A < 1.0)
    if effect is not None:
        sl, rgba = effect
        sub = need[sl]
        sub |= inside[sl] & (rgba[..., 3] > 0)
    ys, xs = np.nonzero(need)
    if ys.size == 0:
        return out
    Fi = _f32(F8[ys, xs])
    if effect is not None:
        sl, rgba = effect
        y0, x0 = sl[0].start, sl[1].start
        e = np.zeros((ys.size, 4), np.float32)
        r = (ys >= y0) & (ys < sl[0].stop) & (xs >= x0) & (xs < sl[1].stop)
        e[r] = rgba[ys[r] - y0, xs[r] - x0]
        S = invert_effect(Fi, e, blend)
        if R8 is not None:  # where a 'normal' effect is opaque, the reference is all we know
            opq = e[:, 3] >= 0.999
            if opq.any():
                a = A[ys[opq], xs[opq]][:, None]
                S[opq] = (B8[ys[opq], xs[opq]].astype(np.float32) * (1.0 - a)
                          + R8[ys[opq], xs[opq]].astype(np.float32) * a) / 255.0
    else:
        S = Fi
    a = A[ys, xs][:, None]
    X = (S - _f32(B8[ys, xs]) * (1.0 - a)) / np.maximum(a, 1e-3)
    out[ys, xs] = np.clip(X * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out
