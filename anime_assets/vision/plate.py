"""Shot background plate: camera track, one painted background per shot, per-frame layers.

Anime shots hold or pan over ONE painted background. This module recovers it:

* `estimate_camera`: translation-only camera track of a shot. Consecutive frames are
  matched at 1/4 resolution by phase correlation computed with numpy FFTs; instead of
  trusting the highest peak (which, in pans, is usually the character's line art when
  the camera follows a character), the top `max_peaks` peaks plus the constant-velocity
  prediction are scored by how many TEXTURED pixels they bring into agreement, and the
  winner is polished by a robust (Cauchy-weighted) Lucas-Kanade step against a
  KEYFRAME at 1/2 then full resolution. Registering against a keyframe instead of the
  previous frame keeps sub-pixel errors from accumulating; the keyframe is re-based when
  the overlap gets small.
* `build_plate`: every frame is shifted into plate coordinates (sub-pixel, bilinear)
  and each plate pixel takes a robust temporal mode of the frames that see it: the
  20-level luma window holding most samples, and the median sample inside it (its RGB,
  so colours are never mixed). A character moving over a pixel shows changing colours
  there while the background repeats one, so the background wins even where the
  character covers it most of the time (a plain median loses there). Pixels whose mode
  holds less than `min_support` of the samples are marked not seen; `fg_hint` (probability a pixel is character, from a
  segmenter) excludes samples outright. A character that stands still through the whole
  shot IS the median: no temporal method can see behind it (its pixels are then only
  recovered if `fg_hint` marks them, in which case they become holes).
* `foreground_masks`: per-frame soft mask of pixels that differ from the plate.
* `background_layer`: the plate cropped at a frame's camera position - identical content
  in every frame of the shot (no flicker) - and its hole mask (never-seen pixels).
* `fill_holes`: OpenCV Telea inpainting fallback for the holes.

Coordinates: frame pixel ``u`` of frame ``i`` shows plate pixel ``u + offsets[i]``.

Pure numpy / OpenCV; no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anime_assets.vision.align import phase_peaks

__all__ = [
    "CameraTrack", "Plate", "estimate_camera", "build_plate", "foreground_masks",
    "background_layer", "fill_holes",
]

_COARSE = 4  # coarse matching at 1/4 resolution
_TEX_GRAD = 12.0  # gradient magnitude (8-bit levels / px, Sobel/8) of a "textured" pixel
_AGREE = 12.0  # |difference| counted as agreement (8-bit levels)
_REBASE_OVERLAP = 0.6  # re-base the keyframe when the overlap drops below this fraction


@dataclass
class CameraTrack:
    offsets: np.ndarray  # (N, 2) float32 camera position (x, y) in plate pixels, all >= 0
    confidence: np.ndarray  # (N,) float32 in [0, 1]: share of textured pixels that agree with the keyframe


@dataclass
class Plate:
    image: np.ndarray  # (Hp, Wp, 3) uint8 background plate
    seen: np.ndarray  # (Hp, Wp) bool: background visible in at least one frame
    offsets: np.ndarray  # (N, 2) float32 camera position of each frame in plate pixels
    frame_size: tuple = (0, 0)  # (W, H) of the frames the plate was built from
    support: np.ndarray | None = None  # (Hp, Wp) float32: share of the samples that agree with the plate


# ------------------------------------------------------------------ camera
def _gray_f32(g) -> np.ndarray:
    g = np.asarray(g)
    if g.ndim == 3:
        g = cv2.cvtColor(g, cv2.COLOR_RGB2GRAY)
    return g.astype(np.float32)


def _shift(img: np.ndarray, dx: float, dy: float, border=cv2.BORDER_CONSTANT) -> np.ndarray:
    """out(u) = img(u + d) (bilinear)."""
    M = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], np.float64)
    h, w = img.shape[:2]
    return cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)


def _valid(h: int, w: int, dx: float, dy: float) -> np.ndarray:
    """Pixels u with u + d inside an (h, w) image (bilinear support)."""
    xs = np.arange(w, dtype=np.float32) + dx
    ys = np.arange(h, dtype=np.float32) + dy
    vx = (xs >= 0) & (xs <= w - 1)
    vy = (ys >= 0) & (ys <= h - 1)
    return vy[:, None] & vx[None, :]


def _texture(g: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy)


def _agreement(a: np.ndarray, b: np.ndarray, tex: np.ndarray, d) -> int:
    """Textured pixels of a that b(u + d) reproduces (integer-rounded d)."""
    dx, dy = int(round(d[0])), int(round(d[1]))
    h, w = a.shape
    x0, x1 = max(0, -dx), min(w, w - dx)
    y0, y1 = max(0, -dy), min(h, h - dy)
    if x1 - x0 < w // 4 or y1 - y0 < h // 4:
        return -1
    ra = a[y0:y1, x0:x1]
    rb = b[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    t = tex[y0:y1, x0:x1]
    return int(np.count_nonzero(t & (np.abs(ra - rb) < _AGREE)))


def _lk(T: np.ndarray, K: np.ndarray, d0, iters: int = 10, tgrad=None, keep=None) -> tuple:
    """Robust translation Lucas-Kanade: d with K(u + d) ~ T(u). -> (d, inlier share).
    `keep`: bool mask of T's pixels that may be used (None: all)."""
    h, w = T.shape
    if tgrad is None:
        gx = cv2.Sobel(T, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(T, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    else:
        gx, gy = tgrad
    d = np.array(d0, np.float64)
    share = 0.0
    for it in range(iters):
        Kw = _shift(K, d[0], d[1])
        v = _valid(h, w, d[0], d[1])
        v[:1] = v[-1:] = False
        v[:, :1] = v[:, -1:] = False
        if keep is not None:
            v &= keep
        r = (Kw - T)[v]
        if r.size < 64:
            break
        gxv, gyv = gx[v], gy[v]
        c = 8.0  # Cauchy scale (8-bit levels): a moving character's pixels get ~0 weight
        wgt = 1.0 / (1.0 + (r / c) ** 2)
        share = float(np.mean(np.abs(r) < _AGREE))
        H = np.array([[np.sum(wgt * gxv * gxv), np.sum(wgt * gxv * gyv)],
                      [np.sum(wgt * gxv * gyv), np.sum(wgt * gyv * gyv)]], np.float64)
        bvec = -np.array([np.sum(wgt * gxv * r), np.sum(wgt * gyv * r)], np.float64)
        if np.linalg.det(H) < 1e-6:
            break
        step = np.linalg.solve(H, bvec)
        step = np.clip(step, -1.5, 1.5)
        d += step
        if np.abs(step).max() < 0.01:
            break
    return d, share


def _pyr(g: np.ndarray, f: int) -> np.ndarray:
    h, w = g.shape
    return cv2.resize(g, (max(8, w // f), max(8, h // f)), interpolation=cv2.INTER_AREA)


def estimate_camera(frames_gray, max_peaks: int = 5, ignore=None) -> CameraTrack:
    """Translation-only camera track of one shot (frames: (H, W) uint8 luma, or RGB).

    Offsets are in the frames' pixels, normalised so that every offset is >= 0 (the
    frame furthest up/left sits at the plate's origin). Robust to a character moving
    against the background as long as the background holds most of the texture; ``ignore``
    (per frame, (H, W) probability of being character, e.g. a segmentation prior) takes the
    characters out of the matching, which matters when the camera follows a character over a
    plain background (the character then holds most of the texture)."""
    n = len(frames_gray)
    if n == 0:
        return CameraTrack(np.zeros((0, 2), np.float32), np.zeros(0, np.float32))
    full = [cv2.GaussianBlur(_gray_f32(g), (0, 0), 0.8) for g in frames_gray]
    h, w = full[0].shape
    half = [_pyr(g, 2) for g in full]
    small = [_pyr(g, _COARSE) for g in full]
    sh, sw = small[0].shape
    win = np.outer(np.hanning(sh), np.hanning(sw)).astype(np.float32)
    tex_small = [_texture(s) > _TEX_GRAD for s in small]
    keep = keep_half = keep_small = None
    if ignore is not None:
        grow = np.ones((5, 5), np.uint8)
        keep = [cv2.erode((np.asarray(m, np.float32) < 0.5).astype(np.uint8), grow) for m in ignore]
        keep = [k if k.mean() > 0.2 else np.ones_like(k) for k in keep]  # too little left: use everything
        keep_half = [_pyr(k.astype(np.float32), 2) > 0.99 for k in keep]
        keep_small = [_pyr(k.astype(np.float32), _COARSE) for k in keep]
        tex_small = [t & (k > 0.99) for t, k in zip(tex_small, keep_small)]
        keep = [k.astype(bool) for k in keep]

    def grads(g):
        return (cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0, cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0)

    pos = np.zeros((n, 2), np.float64)  # absolute offset, frame 0 at origin
    conf = np.ones(n, np.float32)
    key = 0
    vel = np.zeros(2)
    for i in range(1, n):
        # coarse: consecutive frames at 1/4 resolution, multi-peak + agreement vote
        a, b = small[i - 1], small[i]
        wa = wb = None
        if keep_small is not None:
            wa, wb = keep_small[i], keep_small[i - 1]
        cands = phase_peaks(b, a, max_peaks, win, wa, wb)  # a(u + d) ~ b(u): d = o_i - o_{i-1}
        cands.append(tuple(vel / _COARSE))
        cands.append((0.0, 0.0))
        best, best_s = (0.0, 0.0), -2
        tb = tex_small[i]
        for c in cands:
            s = _agreement(b, a, tb, c)
            if s > best_s:
                best, best_s = c, s
        d_pair = np.array(best, np.float64) * _COARSE
        # refine the pairwise step at 1/4 (sub-pixel), then against the keyframe
        d_pair, _ = _lk(small[i], small[i - 1], d_pair / _COARSE, iters=6,
                        keep=None if keep_small is None else keep_small[i] > 0.99)
        d_pair *= _COARSE
        guess = pos[i - 1] + d_pair - pos[key]  # o_i - o_key
        d, _ = _lk(half[i], half[key], guess / 2.0, iters=8, keep=None if keep_half is None else keep_half[i])
        d, share = _lk(full[i], full[key], d * 2.0, iters=8, tgrad=grads(full[i]),
                       keep=None if keep is None else keep[i])
        pos[i] = pos[key] + d
        conf[i] = share
        vel = pos[i] - pos[i - 1]
        ov = max(0.0, 1 - abs(pos[i][0] - pos[key][0]) / w) * max(0.0, 1 - abs(pos[i][1] - pos[key][1]) / h)
        if ov < _REBASE_OVERLAP:
            key = i
    pos -= pos.min(axis=0, keepdims=True)
    return CameraTrack(pos.astype(np.float32), conf)


# ------------------------------------------------------------------- plate
_SENTINEL = np.uint32(0xFFFFFFFF)
_BIN_SHIFT = 2  # luma histogram bins of 4 levels
_NBINS = 256 >> _BIN_SHIFT
_MODE_BINS = 5  # mode window: 20 luma levels


def _place(img: np.ndarray, ox: float, oy: float):
    """Frame shifted by its fractional offset: -> (ix, iy, shifted img (h+1, w+1), valid)."""
    ix, iy = int(np.floor(ox)), int(np.floor(oy))
    fx, fy = ox - ix, oy - iy
    h, w = img.shape[:2]
    if fx < 1e-3 and fy < 1e-3:
        return ix, iy, img, np.ones((h, w), bool)
    if fx > 1 - 1e-3 and fy > 1 - 1e-3:
        return ix + 1, iy + 1, img, np.ones((h, w), bool)
    # plate pixel p = (ix, iy) + q shows frame pixel q - f
    M = np.array([[1.0, 0.0, fx], [0.0, 1.0, fy]], np.float64)
    out = cv2.warpAffine(img, M, (w + 1, h + 1), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ones = np.ones((h, w), np.float32)
    v = cv2.warpAffine(ones, M, (w + 1, h + 1), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT) > 0.999
    return ix, iy, out, v


def build_plate(frames_rgb, track, fg_hint=None, min_support: float = 0.25) -> Plate:
    """One background plate for the shot: per plate pixel, the temporal mode (see the
    module docstring) over the frames that see it, excluding samples whose ``fg_hint``
    (probability of being character) is >= 0.5. ``track``: a CameraTrack or (N, 2)
    offsets. At most 255 frames are used (evenly subsampled beyond)."""
    offsets = np.asarray(track.offsets if hasattr(track, "offsets") else track, np.float32)
    n = len(frames_rgb)
    if n == 0:
        raise ValueError("build_plate needs at least one frame")
    h, w = frames_rgb[0].shape[:2]
    Wp = int(np.ceil(offsets[:, 0].max() - 1e-3)) + w
    Hp = int(np.ceil(offsets[:, 1].max() - 1e-3)) + h
    if n > 255:  # frame index is packed into 8 bits: subsample evenly
        use = np.linspace(0, n - 1, 255).round().astype(int)
    else:
        use = np.arange(n)
    m = len(use)
    keys = np.full((Hp, Wp, m), _SENTINEL, np.uint32)
    hist = np.zeros((Hp, Wp, _NBINS), np.uint8)
    placed = []
    for j, i in enumerate(use):
        f = np.ascontiguousarray(frames_rgb[i])
        ix, iy, sf, v = _place(f, float(offsets[i, 0]), float(offsets[i, 1]))
        if fg_hint is not None and fg_hint[i] is not None:
            _, _, hs, _ = _place(np.asarray(fg_hint[i], np.float32), float(offsets[i, 0]), float(offsets[i, 1]))
            v = v & (hs < 0.5)
        hh, ww = sf.shape[:2]
        hh, ww = min(hh, Hp - iy), min(ww, Wp - ix)
        sf, v = sf[:hh, :ww], v[:hh, :ww]
        lum = (sf[..., 0].astype(np.uint32) * 77 + sf[..., 1].astype(np.uint32) * 150 + sf[..., 2].astype(np.uint32) * 29) >> 8
        k = (lum << 8) | np.uint32(j)
        keys[iy : iy + hh, ix : ix + ww, j] = np.where(v, k, _SENTINEL)
        hv = hist[iy : iy + hh, ix : ix + ww]  # view
        yy, xx = np.nonzero(v)
        hv[yy, xx, lum[yy, xx] >> _BIN_SHIFT] += 1  # one sample per pixel and frame: no duplicates
        placed.append((ix, iy, sf))
    cnt = hist.sum(axis=2, dtype=np.int32).reshape(Hp, Wp)
    keys.sort(axis=2)
    # mode: the luma window of _MODE_BINS bins holding most samples; the median sample
    # inside it (samples are sorted by luma, so they are contiguous)
    cs = np.zeros((Hp * Wp, _NBINS + 1), np.int32)
    np.cumsum(hist.reshape(-1, _NBINS), axis=1, out=cs[:, 1:])
    del hist
    ws = cs[:, _MODE_BINS:] - cs[:, :-_MODE_BINS]  # samples in bins [b, b + _MODE_BINS)
    b = np.argmax(ws, axis=1)
    support = np.take_along_axis(ws, b[:, None], axis=1)[:, 0].reshape(Hp, Wp)
    start = np.take_along_axis(cs, b[:, None], axis=1)[:, 0].reshape(Hp, Wp)
    del cs, ws
    mid = start + np.maximum(support - 1, 0) // 2
    pick = np.take_along_axis(keys, mid[..., None].astype(np.intp), axis=2)[..., 0]
    seen = (cnt > 0) & (support >= np.maximum(1, min_support * cnt))
    src = np.where(cnt > 0, pick & np.uint32(0xFF), np.uint32(0xFFFF)).astype(np.int32)
    support_frac = np.where(cnt > 0, support / np.maximum(cnt, 1), 0).astype(np.float32)
    del keys
    image = np.zeros((Hp, Wp, 3), np.uint8)
    for j, (ix, iy, sf) in enumerate(placed):
        hh, ww = sf.shape[:2]
        sel = src[iy : iy + hh, ix : ix + ww] == j
        image[iy : iy + hh, ix : ix + ww][sel] = sf[sel]
    return Plate(image=image, seen=seen, offsets=offsets.copy(), frame_size=(w, h), support=support_frac)


# ----------------------------------------------------------------- layers
def background_layer(plate: Plate, i: int, size) -> tuple:
    """The plate cropped at frame i's camera position: -> (rgb (H, W, 3) uint8, hole (H, W) bool).
    ``hole``: plate pixels never seen (to inpaint, see `fill_holes`)."""
    W, H = int(size[0]), int(size[1])
    ox, oy = float(plate.offsets[i, 0]), float(plate.offsets[i, 1])
    M = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if abs(ox - round(ox)) < 1e-3 and abs(oy - round(oy)) < 1e-3:
        M[:, 2] = np.round(M[:, 2])
        flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    rgb = cv2.warpAffine(plate.image, M, (W, H), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    unseen = (~plate.seen).astype(np.float32)
    hole = cv2.warpAffine(unseen, M, (W, H), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=1.0) > 0.01
    return rgb, hole


def foreground_masks(frames_rgb, plate: Plate, threshold: float = 30.0, soft: float = 1.5) -> list:
    """Per frame (H, W) float32 in [0, 1]: pixels that differ from the plate.

    The difference is the largest per-channel absolute difference after a light blur
    (tolerates compression noise and sub-pixel resampling at edges); pixels above
    ``threshold`` (8-bit levels) are foreground, speckles and thin resampling lines are
    opened away, small gaps closed, and the edge is softened with a Gaussian of
    ``soft`` px. Never-seen plate pixels are foreground by definition."""
    out = []
    k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    k7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for i, f in enumerate(frames_rgb):
        h, w = f.shape[:2]
        bg, hole = background_layer(plate, i, (w, h))
        a = cv2.GaussianBlur(f, (3, 3), 0).astype(np.int16)
        b = cv2.GaussianBlur(bg, (3, 3), 0).astype(np.int16)
        d = np.abs(a - b).max(axis=2)
        m = ((d > threshold) | hole).astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, k3)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k7)
        # drop tiny components (residual resampling edges)
        nl, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if nl > 1:
            small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < max(16, (h * w) // 4000))
            small = small[small > 0]
            if small.size:
                m[np.isin(lab, small)] = 0
        mf = m.astype(np.float32)
        if soft > 0:
            mf = cv2.GaussianBlur(mf, (0, 0), soft)
        out.append(np.clip(mf, 0.0, 1.0))
    return out


def fill_holes(rgb: np.ndarray, hole: np.ndarray, radius: int = 3) -> np.ndarray:
    """Inpaint never-seen pixels (OpenCV Telea); returns a new uint8 image."""
    if not np.any(hole):
        return rgb.copy()
    return cv2.inpaint(np.ascontiguousarray(rgb), hole.astype(np.uint8), radius, cv2.INPAINT_TELEA)


# ------------------------------------------------------- plates across shots
# Anime reuses its paintings: the same location appears in several shots of an episode, at
# other framings and scales. A plate recovered in one shot (where the character moved, or was
# elsewhere, or absent) shows the background behind a character who stands still in another.
_MATCH_WIDTH = 480  # feature matching at most this wide


@dataclass
class Borrowed:
    image: np.ndarray  # (Hp, Wp, 3) uint8: the target plate with never-seen pixels filled from other shots
    seen: np.ndarray  # (Hp, Wp) bool: seen in this shot or borrowed
    borrowed: np.ndarray  # (Hp, Wp) bool: filled from another shot
    sources: list  # indices of the library plates that matched


def _orb(gray: np.ndarray, mask: np.ndarray):
    orb = cv2.ORB_create(nfeatures=3000, scaleFactor=1.2, nlevels=8, fastThreshold=10)
    return orb.detectAndCompute(gray, mask)


def register_plate(target: np.ndarray, target_seen: np.ndarray, source: np.ndarray, source_seen: np.ndarray,
                   min_inliers: int = 25, min_agree: float = 0.7):
    """Similarity transform (2x3) mapping `source` plate pixels onto `target` plate pixels, or None.

    ORB features on the seen parts, ratio-tested matches, RANSAC similarity (rotation, scale,
    translation), then a photometric check: where both plates saw the background, at least
    `min_agree` of the pixels must agree (a different room with similar features is refused)."""
    def small(img, seen):
        f = min(1.0, _MATCH_WIDTH / img.shape[1])
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        g = cv2.resize(g, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else g
        m = cv2.resize(seen.astype(np.uint8) * 255, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_NEAREST)
        return g, cv2.erode(m, np.ones((5, 5), np.uint8)), f

    gt, mt, ft = small(target, target_seen)
    gs, ms, fs_ = small(source, source_seen)
    kt, dt = _orb(gt, mt)
    ks, ds = _orb(gs, ms)
    if dt is None or ds is None or len(kt) < min_inliers or len(ks) < min_inliers:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(ds, dt, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < min_inliers:
        return None
    src = np.float32([ks[m.queryIdx].pt for m in good]) / fs_
    dst = np.float32([kt[m.trainIdx].pt for m in good]) / ft
    M, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0 / ft,
                                         maxIters=4000, confidence=0.999)
    if M is None or inl is None or int(inl.sum()) < min_inliers:
        return None
    scale = float(np.hypot(M[0, 0], M[1, 0]))
    if not 0.33 < scale < 3.0:
        return None
    h, w = target.shape[:2]
    warped = cv2.warpAffine(source, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    wseen = cv2.warpAffine(source_seen.astype(np.uint8), M, (w, h), flags=cv2.INTER_NEAREST) > 0
    both = wseen & target_seen
    if both.sum() < 0.02 * h * w:
        return None
    a = cv2.GaussianBlur(target, (5, 5), 0).astype(np.int16)
    b = cv2.GaussianBlur(warped, (5, 5), 0).astype(np.int16)
    agree = float(np.mean(np.abs(a - b).max(axis=2)[both] < 24))
    if agree < min_agree:
        return None
    return M, agree, warped, wseen


def borrow_background(target: Plate, library, max_sources: int = 4, fringe_px: int = 12) -> Borrowed:
    """Fill `target`'s never-seen pixels from other shots' plates (`library`: [(image, seen)]).

    Sources are tried in order of how much of the hole they cover; a pixel takes the first
    source that saw it. Only holes are filled: what this shot saw itself is kept."""
    img, seen = target.image.copy(), target.seen.copy()
    borrowed = np.zeros_like(seen)
    used = []
    hole = ~seen
    if not hole.any() or not library:
        return Borrowed(img, seen, borrowed, used)
    matches = []
    for k, (src, src_seen) in enumerate(library):
        r = register_plate(target.image, target.seen, src, src_seen)
        if r is not None:
            _, agree, warped, wseen = r
            matches.append((int((wseen & hole).sum()), agree, k, warped, wseen))
    matches.sort(key=lambda m: (-m[0], -m[1]))
    # Around the hole, what this shot "saw" may be bits of the character the prior missed (they
    # never moved either): where a matching source disagrees strongly there, the source wins.
    near = cv2.dilate(hole.astype(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (2 * fringe_px + 1,) * 2)).astype(bool) & ~hole
    blur_t = cv2.GaussianBlur(target.image, (5, 5), 0).astype(np.int16)
    for cover, _, k, warped, wseen in matches[:max_sources]:
        fill = wseen & ~seen
        if cover == 0:
            continue
        differs = np.abs(cv2.GaussianBlur(warped, (5, 5), 0).astype(np.int16) - blur_t).max(axis=2) > 40
        fill |= near & wseen & differs & ~borrowed
        if not fill.any():
            continue
        img[fill] = warped[fill]
        seen |= fill
        borrowed |= fill
        used.append(k)
    return Borrowed(img, seen, borrowed, used)


def build_plate_guided(frames_rgb, offsets, reference: np.ndarray, reference_seen: np.ndarray,
                       fg_hint=None) -> Plate:
    """Full-resolution plate from a few frames, guided by a plate already built (at a lower
    resolution, upsampled to this plate's size): per pixel, the frame sample closest to the
    reference, so the result has full-resolution detail and the reference's robust choice.
    Linear in frames x pixels (the temporal mode of `build_plate` sorts every pixel's samples:
    ~10x slower at 1080p). Samples whose ``fg_hint`` >= 0.5 are not used; pixels with no usable
    sample are not seen; where the reference saw nothing, the first usable sample is taken."""
    offsets = np.asarray(offsets, np.float32)
    h, w = frames_rgb[0].shape[:2]
    Hp, Wp = reference.shape[:2]
    best = np.full((Hp, Wp), np.iinfo(np.int32).max, np.int32)
    image = np.zeros((Hp, Wp, 3), np.uint8)
    ref = reference.astype(np.int16)
    for i, f in enumerate(frames_rgb):
        ix, iy, sf, v = _place(np.ascontiguousarray(f), float(offsets[i, 0]), float(offsets[i, 1]))
        if fg_hint is not None and fg_hint[i] is not None:
            _, _, hs, _ = _place(np.asarray(fg_hint[i], np.float32), float(offsets[i, 0]), float(offsets[i, 1]))
            v = v & (hs < 0.5)
        hh, ww = min(sf.shape[0], Hp - iy), min(sf.shape[1], Wp - ix)
        if hh <= 0 or ww <= 0:
            continue
        sf, v = sf[:hh, :ww], v[:hh, :ww]
        r = ref[iy:iy + hh, ix:ix + ww]
        d = np.abs(sf.astype(np.int16) - r).sum(axis=2, dtype=np.int32)
        d = np.where(reference_seen[iy:iy + hh, ix:ix + ww], d, i)  # no reference: earliest sample wins
        b = best[iy:iy + hh, ix:ix + ww]
        take = v & (d < b)
        b[take] = d[take]
        image[iy:iy + hh, ix:ix + ww][take] = sf[take]
    seen = best < np.iinfo(np.int32).max
    return Plate(image=image, seen=seen, offsets=offsets.copy(), frame_size=(w, h))
