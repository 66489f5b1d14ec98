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
channel at 1). Small residuals are compression noise (H.264 at crf 18 leaves ~2-4
levels, more at edges): they are thresholded and speckle components dropped.

Blend mode: all three modes reproduce a brightening exactly, so the mode is the one under
which the effect's COLOUR is smoothest (an effect is drawn with few colours; in the wrong
mode the background's texture leaks into the colour, e.g. an additive glow read as
'normal' takes the colour ``S + P / a``). A footprint that darkens the background cannot
be 'add'/'screen': it is 'normal'. Ties go to 'normal' (a white flash is 'normal' with
alpha 1, exactly as 'screen' with alpha 1 would be).

Over the character the base is unknown. The effect there is:

* with ``char_reference`` (the character's own colours, e.g. from another frame of the
  same drawing): inverted exactly against ``background * (1-A) + reference * A``;
* otherwise, for 'add'/'screen': the premultiplied field seen around the character is
  propagated inwards (geodesic, nearest-known average) and capped by what the frame
  allows (``P <= F`` per channel, taken as a small-window minimum: the character's dark
  line art holds the field down where an effect stops at the silhouette, e.g. an aura,
  and lets it through where it continues, e.g. a glow crossing the character);
* for 'normal': pixels whose colour lies between the local character colour (median of
  the neighbourhood) and the effect's colour (the dominant colour of the footprint
  outside) get the alpha of that mix (thin line art such as a magic circle drawn over
  the character), and colour-matching areas of a broad layer (a flash) the alpha
  propagated from outside.

An effect entirely inside the character with no reference (e.g. an orb held in front of
the chest) leaves no trace outside it and is NOT separated: it stays in the character's
colours (the recomposition is still exact).

One blend mode per frame: a frame with two effect types (a 'normal' magic circle plus an
additive glow) is represented in the mode that explains most of it; the other effect is
re-expressed in that mode (recomposition stays exact, its alpha is the minimal alpha of
that mode, not the artist's).

Pure numpy / OpenCV; no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["EffectEstimate", "extract_effects", "invert_effect"]

_CHAR_EPS = 1.0 / 255.0  # coverage above this counts as character (base unknown)
_debug: dict = {}


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
    P = C * a
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


def _clean(mask: np.ndarray, strength: np.ndarray, min_area: int, strong: float) -> np.ndarray:
    """Drop connected components smaller than ``min_area`` pixels unless their peak
    ``strength`` reaches ``strong`` (compression speckle is weak; a bit of glow seen through
    a gap of the character is not). uint8 0/1 in, bool out."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    small = np.flatnonzero(~keep)
    if small.size:
        keep[np.unique(lab[strength >= strong])] = True
    keep[0] = False
    return keep[lab]


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
    e = np.abs(R - F).max(axis=2)
    n = int(np.count_nonzero(fp))
    return float(e[fp].sum()) / n if n else 0.0


def _propagate(field: np.ndarray, known: np.ndarray, cap: np.ndarray, todo: np.ndarray, iters: int,
               decay: float = 1.0, floor: np.ndarray | None = None) -> np.ndarray:
    """Fill ``todo`` pixels of ``field`` (H, W, C) front by front from ``known`` ones: each
    new pixel takes ``decay`` times the mean of its known 3x3 neighbours, clipped to
    [``floor``, ``cap``]. Pixels not reached in ``iters`` fronts get ``floor`` (or 0)."""
    f = np.where(known[..., None], field, 0.0).astype(np.float32)
    k = known.astype(np.float32)
    todo = todo & ~known
    for _ in range(iters):
        if not todo.any():
            break
        num = cv2.boxFilter(f, -1, (3, 3), normalize=False).reshape(f.shape)
        den = cv2.boxFilter(k, -1, (3, 3), normalize=False)
        new = todo & (den > 0.5)
        if not new.any():
            break
        v = np.minimum(num[new] / den[new][:, None] * decay, cap[new])
        if floor is not None:
            v = np.maximum(v, floor[new])
        f[new] = v
        k[new] = 1.0
        todo = todo & ~new
    if floor is not None and todo.any():
        f[todo] = floor[todo]
    return f


# ------------------------------------------------------------------------ main
def extract_effects(frame, background, char_alpha, *, char_reference=None, noise: float = 5.0,
                    min_area_frac: float = 2e-4, mode_margin: float = 0.2, darken_frac: float = 0.05,
                    cap_window: int = 0, max_fronts: int = 0, reach: float = 1.0,
                    line_min: float = 0.4, line_resid: float = 3.0) -> tuple:
    """Effect layer of one frame and the character's colours with the effect taken off.

    frame, background: (H, W, 3) uint8 RGB; char_alpha: (H, W) float32 in [0, 1];
    char_reference: optional (H, W, 3) uint8 character colours without effects.
    Tuning: ``noise`` (8-bit levels of residual treated as compression noise),
    ``min_area_frac`` (smallest effect component, share of the frame), ``mode_margin``
    (relative margin by which an additive mode must explain the footprint better than 'normal'), ``darken_frac`` (share of the
    footprint's energy that darkens the background above which only 'normal' fits),
    ``cap_window`` / ``max_fronts`` (0: from the frame size), ``reach`` (px at 640 wide over
    which an effect seen around the character fades when followed inside it).

    -> (EffectEstimate, character_rgb (H, W, 3) uint8). ``character_rgb`` is the straight
    (un-premultiplied) character colour where ``char_alpha > 0`` and the frame elsewhere,
    so that ``recompose(background, (character_rgb, char_alpha), effect.rgba, effect.blend)``
    reproduces the frame."""
    F8 = np.ascontiguousarray(frame)
    B8 = np.ascontiguousarray(background)
    if F8.shape != B8.shape or F8.ndim != 3 or F8.shape[2] != 3:
        raise ValueError(f"frame {F8.shape} and background {B8.shape} must be (H, W, 3)")
    H, W = F8.shape[:2]
    A = np.clip(np.asarray(char_alpha, np.float32), 0.0, 1.0)
    if A.shape != (H, W):
        raise ValueError(f"char_alpha {A.shape} != frame {(H, W)}")
    R8 = None if char_reference is None else np.ascontiguousarray(char_reference)
    scale = max(H, W) / 640.0
    cap_window = cap_window or max(3, int(round(3 * scale)) | 1)
    max_fronts = max_fronts or int(round(60 * max(1.0, scale)))
    min_area = max(4, int(round(min_area_frac * H * W)))

    # ---- footprint: where the frame differs from what background (+ reference) explain
    inside = A > _CHAR_EPS
    if R8 is not None:
        base8 = _base_u8(B8, R8, A)
        diff = cv2.absdiff(F8, base8)
        known = np.ones((H, W), bool)
    else:
        base8 = B8
        diff = cv2.absdiff(F8, B8)
        known = ~inside
    dmax = cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2])
    cand = ((dmax > noise) & known).astype(np.uint8)
    foot = _clean(cand, dmax, min_area, 6.0 * noise)
    bb = _bbox(foot)
    if bb is None:
        return _empty(H, W), _character_rgb(F8, B8, A, None, "normal", R8)

    # ---- working region: the footprint's box, grown so the effect can be followed over the character
    pad = int(round(0.15 * max(bb[2] - bb[0], bb[3] - bb[1]))) + cap_window + 2
    x0, y0, x1, y1 = max(0, bb[0] - pad), max(0, bb[1] - pad), min(W, bb[2] + pad), min(H, bb[3] + pad)
    sl = (slice(y0, y1), slice(x0, x1))
    F = F8[sl].astype(np.float32) * (1.0 / 255.0)
    S = base8[sl].astype(np.float32) * (1.0 / 255.0)
    fp = foot[sl]
    kn = known[sl]
    ins = inside[sl]
    d = F - S

    # ---- blend mode
    energy = dmax[sl].astype(np.float32) * fp
    dark = _min3(d) < -noise / 255.0
    etot = float(energy.sum())
    dark_share = float((energy * dark).sum()) / max(etot, 1e-6)
    k = max(9, int(round(9 * scale)) | 1)
    w_norm = np.where(fp, _normal_alpha(F, S), 0.0).astype(np.float32)
    C_norm = np.clip(S + d / np.maximum(w_norm, 1e-3)[..., None], 0.0, 1.0)
    # saturated pixels say little about the mode ('add' clips there): left out of the test
    fm = fp & (_max3(F) < 250.0 / 255.0) & (_max3(S) < 250.0 / 255.0)
    if np.count_nonzero(fm) < max(16, np.count_nonzero(fp) // 10):
        fm = fp
    rough = {"normal": _smooth_colour_error(F, S, C_norm, w_norm * fm, fm, "normal", k)}
    fields = {}
    if dark_share <= darken_frac:
        for m in ("add", "screen"):
            P = np.where(fp[..., None], _additive_field(F, S, m), 0.0).astype(np.float32)
            a = _max3(P)
            fields[m] = P
            rough[m] = _smooth_colour_error(F, S, P / np.maximum(a, 1e-3)[..., None], a * fm, fm, m, k)
    _debug["rough"] = rough
    blend = "normal"
    best = min(rough, key=rough.get)
    if best != "normal" and rough[best] + 0.25 / 255.0 < (1.0 - mode_margin) * rough["normal"]:
        blend = best

    # ---- effect where the base is known
    h, w = fp.shape
    rgba = np.zeros((h, w, 4), np.float32)
    if blend == "normal":
        a = w_norm
        rgba[..., :3] = np.where(fp[..., None], C_norm, 0.0)
        rgba[..., 3] = a
    else:
        P = fields[blend]
        a = _max3(P)
        rgba[..., :3] = np.where(a[..., None] > 0, P / np.maximum(a, 1e-6)[..., None], 0.0)
        rgba[..., 3] = a

    # ---- over the character (base unknown)
    if R8 is None and ins.any():
        fill = _over_character(F, S, A[sl], rgba, blend, fp, kn, ins, cap_window, max_fronts, noise,
                               float(np.exp(-1.0 / (reach * scale))), line_min, line_resid,
                               max(5, int(round(11 * scale)) | 1))
        rgba = np.where(ins[..., None], fill, rgba)

    rgba[..., 3] = np.where(rgba[..., 3] > 0.5 / 255.0, rgba[..., 3], 0.0)
    out = np.zeros((H, W, 4), np.float32)
    out[sl] = rgba
    cov = float(np.count_nonzero(out[..., 3] > 1.0 / 255.0)) / float(H * W)
    est = EffectEstimate(out, blend if cov > 0 else "normal", cov)
    return est, _character_rgb(F8, B8, A, out, blend, R8)


def _base_u8(B8: np.ndarray, R8: np.ndarray, A: np.ndarray) -> np.ndarray:
    """background * (1 - A) + reference * A, uint8."""
    a = A[..., None]
    return np.clip(B8.astype(np.float32) * (1.0 - a) + R8.astype(np.float32) * a + 0.5, 0, 255).astype(np.uint8)


def _over_character(F, S, Aroi, rgba, blend, fp, kn, ins, cap_window, max_fronts, noise, decay,
                    line_min=0.4, line_resid=3.0, line_window=11):
    """Effect rgba over character pixels (base unknown), see the module docstring."""
    h, w = fp.shape
    ker = np.ones((cap_window, cap_window), np.uint8)
    out = np.zeros((h, w, 4), np.float32)
    if blend in ("add", "screen"):
        P = rgba[..., :3] * rgba[..., 3:4]
        # the character colour X >= 0 bounds the effect per pixel: P <= field(F, S (1 - A));
        # inside the character (A ~ 1) the field is smooth, so the bound holds over a window
        cap = _additive_field(F, S * (1.0 - Aroi[..., None]), blend)
        cap = np.where((Aroi < 0.99)[..., None], cap, cv2.erode(cap, ker))
        # X <= 1 bounds it from below (only binds where the coverage is partial)
        low = _additive_field(F, S * (1.0 - Aroi[..., None]) + Aroi[..., None], blend)
        low = np.where((Aroi < 0.99)[..., None], np.minimum(low, cap), 0.0)
        Pf = _propagate(P, kn, cap, ins, max_fronts, decay, low)
        a = _max3(Pf)
        a = np.where(a > noise / 255.0, a, 0.0)
        out[..., :3] = np.where(a[..., None] > 0, Pf / np.maximum(a, 1e-6)[..., None], 0.0)
        out[..., 3] = a
        return out
    # normal: (1) the layer seen around the character, followed a short way in (edges);
    # (2) thin overlays of the effect's dominant colour; (3) broad colour-matching areas
    a_out = rgba[..., 3]
    sel = fp & (a_out > 0.25)
    if not sel.any():
        return out
    Cdom = np.median(rgba[..., :3][sel], axis=0).astype(np.float32)  # dominant effect colour
    prem = np.concatenate([rgba[..., :3] * a_out[..., None], a_out[..., None]], axis=2)
    Pp = _propagate(prem, kn, np.ones_like(prem), ins, max_fronts, decay)
    ap = Pp[..., 3]
    Cp = np.where(ap[..., None] > 1e-3, Pp[..., :3] / np.maximum(ap, 1e-3)[..., None], Cdom)
    # local character colour without the overlay: mean of the neighbours that are neither
    # close to the effect colour nor on a first guess of the overlay (a 3x3 median base)
    Fu = np.clip(F * 255.0 + 0.5, 0, 255).astype(np.uint8)
    Xm = cv2.medianBlur(Fu, 7).astype(np.float32) * (1.0 / 255.0)
    t0 = _mix_position(F, Xm, Cdom)
    near = (np.abs(F - Cdom).max(axis=2) < 0.2) | (t0 > 0.15)
    free = cv2.dilate(near.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
    wgt = free.astype(np.float32)
    den = cv2.boxFilter(wgt, -1, (line_window, line_window), normalize=False)
    Xb = cv2.boxFilter(F * wgt[..., None], -1, (line_window, line_window), normalize=False)
    Xb = Xb / np.maximum(den, 1e-6)[..., None]
    v = Cdom[None, None, :] - Xb
    vv = (v * v).sum(axis=2)
    t = _mix_position(F, Xb, Cdom)
    resid = np.abs(F - (Xb + t[..., None] * v)).max(axis=2)
    proj_ok = (den >= 3) & (vv > 0.02) & (resid < line_resid * noise / 255.0) & (t >= line_min)
    a_proj = np.where(proj_ok & ins, t, 0.0)
    match = np.abs(F - Cdom).max(axis=2) < 2 * noise / 255.0
    am = _propagate(a_out[..., None], kn, match[..., None].astype(np.float32), ins, max_fronts)[..., 0]
    a_col = np.maximum(a_proj, np.where(match, am, 0.0))
    use_col = a_col > ap
    a = np.where(use_col, a_col, ap)
    C = np.where(use_col[..., None], Cdom, Cp)
    # the smallest change of alpha that keeps the character colour inside [0, 1]
    Smin = S * (1.0 - Aroi[..., None])
    a = _feasible_alpha(F, C, a, Smin, Smin + Aroi[..., None])
    a = np.where(a > noise / 255.0, a, 0.0)
    out[..., :3] = np.where(a[..., None] > 0, C, 0.0)
    out[..., 3] = a
    return out


def _mix_position(F, X, C):
    """t in [0, 1] of the point of the segment X -> C closest to F (per pixel)."""
    v = C - X
    return np.clip(((F - X) * v).sum(axis=2) / np.maximum((v * v).sum(axis=2), 1e-6), 0.0, 1.0)


def _feasible_alpha(F, C, a, Smin, Smax):
    """Alpha closest to ``a`` for which the base under a 'normal' layer of colour C,
    ``S = (F - C a) / (1 - a)``, lies in [Smin, Smax] in every channel (a = 1 always does)."""
    d = F - C  # S = F + d * t with t = a / (1 - a)
    eps = 1e-4
    pos, neg = d > eps, d < -eps
    dd = np.where(pos | neg, d, 1.0)
    lo = np.where(pos, (Smin - F) / dd, np.where(neg, (Smax - F) / dd, -np.inf))
    hi = np.where(pos, (Smax - F) / dd, np.where(neg, (Smin - F) / dd, np.inf))
    flat = ~(pos | neg)
    bad = flat & ((F < Smin - 1e-3) | (F > Smax + 1e-3))  # unreachable channel: only a = 1 helps
    t_lo = np.maximum(_max3(lo), 0.0)
    t_hi = _min3(hi)
    t = a / np.maximum(1.0 - a, 1e-6)
    t = np.where(t_lo <= t_hi, np.clip(t, t_lo, t_hi), t_lo)
    out = t / (1.0 + t)
    out = np.where(bad.any(axis=2), np.where(a > 0.5, 1.0, a), out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _character_rgb(F8, B8, A, effect, blend, R8) -> np.ndarray:
    """Straight character colour with the effect taken off (the frame where A == 0):
    ``X = (S - background (1 - A)) / A`` with S the base under the effect."""
    out = F8.copy()
    ins = A > _CHAR_EPS
    bb = _bbox(ins)
    if bb is None:
        return out
    sl = (slice(bb[1], bb[3]), slice(bb[0], bb[2]))
    Ff = F8[sl].astype(np.float32) * (1.0 / 255.0)
    if effect is None:
        Sb = Ff
    else:
        rgba = effect[sl]
        Sb = invert_effect(Ff, rgba, blend)
        if R8 is not None:  # where a 'normal' effect is opaque, the reference is all we know
            opaque = rgba[..., 3] >= 0.999
            if opaque.any():
                base = _base_u8(B8[sl], R8[sl], A[sl]).astype(np.float32) * (1.0 / 255.0)
                Sb = np.where(opaque[..., None], base, Sb)
    a = A[sl][..., None]
    Bf = B8[sl].astype(np.float32) * (1.0 / 255.0)
    X = (Sb - Bf * (1.0 - a)) / np.maximum(a, 1e-3)
    X8 = np.clip(X * 255.0 + 0.5, 0, 255).astype(np.uint8)
    region = out[sl]
    m = ins[sl]
    region[m] = X8[m]
    return out
