"""Layers of one shot: character (RGBA + instances), effect (RGBA + blend mode), background.

The shot is decomposed jointly, because each layer is defined by the others:

1. Camera track over the shot at a working resolution (`plate.estimate_camera`).
2. A working-resolution background plate: per pixel the temporal mode of the frames that see
   it, with the segmentation prior's character pixels excluded (`fg_hint`). Where a prior
   always marks a pixel (a character that never moves) the plate has a hole there.
3. Coarse character masks: what differs from the plate (motion against the plate) plus those
   holes. Temporal stabilisation: a pixel whose aligned colour did not change since the
   previous frame keeps the previous frame's mask value, so holds and still parts of a
   character cannot flicker.
4. The full-resolution plate from a subset of frames, with the coarse masks excluded, its
   never-visible pixels inpainted ONCE (LaMa when present, else OpenCV Telea); each frame's
   background layer is a crop of it, so the background is the same picture in every frame,
   shifted by the camera.
5. Per kept frame at full resolution: line-art-aware alpha refinement (`matte.refine_alpha`),
   the same stabilisation, effect extraction against background + character
   (`effects.extract_effects`, which also returns the character's colours with the effect
   taken off), and character instances tracked through the shot (`instances.track_instances`).

Pure numpy / OpenCV; models come in as plain callables. No Dagster, no file IO.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
from scipy import ndimage

from anime_assets.vision import plate as plates
from anime_assets.vision.effects import EffectEstimate, extract_effects
from anime_assets.vision.instances import track_instances
from anime_assets.vision.matte import peel_glow, refine_alpha

Segment = Callable[[np.ndarray], np.ndarray]  # RGB uint8 -> P(character) float32, same H, W
Inpaint = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (RGB uint8, hole bool) -> RGB uint8


@dataclass
class LayerConfig:
    work_width: int = 640  # camera, plate and coarse masks at most this wide
    plate_frames: int = 32  # frames of a shot the working plate sees (evenly spread)
    full_plate_frames: int = 10  # frames the full-resolution plate is built from
    motion_threshold: float = 30.0  # 8-bit levels: differs from the plate -> foreground
    still_threshold: float = 6.0  # aligned change below this -> keep the previous mask value
    hint_dilate_px: int = 3  # grow the character mask before excluding it from the full plate
    inpaint_width: int = 960  # never-seen background is filled at most this wide (it is smooth), then upsampled


@dataclass
class FrameLayers:
    frame_index: int
    alpha: np.ndarray  # (H, W) float32 character coverage, straight alpha
    character_rgb: np.ndarray  # (H, W, 3) uint8 character colours, effects taken off
    labels: np.ndarray  # (H, W) uint8 instance id per pixel (0: none)
    instances: list  # [{"id", "bbox": [x0, y0, x1, y1], "area"}] of this frame
    effect: EffectEstimate
    background: np.ndarray  # (H, W, 3) uint8: the shot plate at this frame's camera position
    hole: np.ndarray  # (H, W) bool: background never visible in this shot nor lent by another (inpainted)
    offset: tuple  # camera position (x, y) in plate pixels (full resolution)
    lent: np.ndarray | None = None  # (H, W) bool: background this shot never saw, taken from another shot

    def character_rgba(self) -> np.ndarray:
        """uint8 RGBA; colour 0 where alpha is 0 (undefined there; zeros also halve the PNG cost)."""
        a = cv2.convertScaleAbs(self.alpha, alpha=255.0)  # rounds and saturates, ~10x faster than numpy
        rgb = self.character_rgb.copy()
        rgb[a == 0] = 0
        return np.dstack([rgb, a])

    def effect_rgba(self) -> np.ndarray:
        out = cv2.convertScaleAbs(self.effect.rgba, alpha=255.0)
        out[out[..., 3] == 0, :3] = 0
        return out


@dataclass
class ShotLayers:
    frames: list  # [FrameLayers] of the kept frames, in order
    plate: plates.Plate  # full-resolution plate, holes filled; `plate.seen` marks what was visible
    working: "WorkingPlate"  # this shot's own working plate (what other shots may borrow)
    stats: dict = field(default_factory=dict)


def plate_frame_indices(start: int, end: int, kept, n: int, exclude=()) -> list[int]:
    """Frames of shot [start, end) to decode for the layers: the kept ones plus `n` spread evenly
    over the frames not in `exclude` (flash, black/white and transition frames show no background
    and would throw the camera track off)."""
    bad = set(int(i) for i in exclude)
    usable = np.array([i for i in range(start, end) if i not in bad], int)
    spread = usable[np.linspace(0, len(usable) - 1, num=min(n, len(usable))).round().astype(int)] if len(usable) else []
    return sorted(set(int(i) for i in spread) | set(int(k) for k in kept))


def _resize(img: np.ndarray, size, interp=cv2.INTER_AREA) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == tuple(size):
        return img
    return cv2.resize(img, tuple(size), interpolation=interp)


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """out(u) = img(u + d); outside -> replicated border."""
    return plates._shift(img, dx, dy, border=cv2.BORDER_REPLICATE)


def still_pixels(cur: np.ndarray, prev: np.ndarray, d, threshold: float) -> np.ndarray:
    """Pixels of `cur` whose colour equals `prev` at the camera-aligned position (u + d)."""
    a = cv2.GaussianBlur(cur, (3, 3), 0).astype(np.int16)
    b = cv2.GaussianBlur(_shift(prev, float(d[0]), float(d[1])), (3, 3), 0).astype(np.int16)
    d = np.abs(a - b)
    still = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]) < threshold
    # erode: a pixel next to a change is not trusted to be unchanged (edges move first)
    return cv2.erode(still.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def stabilise(masks: list, frames: list, offsets: np.ndarray, threshold: float) -> list:
    """Masks that change only where the picture changes: still pixels keep the previous value."""
    out = [masks[0]]
    for j in range(1, len(masks)):
        d = offsets[j] - offsets[j - 1]
        still = still_pixels(frames[j], frames[j - 1], d, threshold)
        prev = _shift(out[-1], float(d[0]), float(d[1]))
        out.append(np.where(still, prev, masks[j]).astype(np.float32))
    return out


@dataclass
class WorkingPlate:
    """Camera track and working-resolution plate of one shot (characters excluded by the prior).
    Depends on this shot alone, so other shots can borrow its background (`plate.borrow_background`)."""

    order: list  # frame indices, in time order
    work: list  # working-resolution RGB frames, parallel to `order`
    prior: list | None  # per frame P(character) from the segmentation prior, or None
    offsets: np.ndarray  # (N, 2) camera positions in working pixels
    confidence: float  # median share of textured pixels that agree with the camera model
    plate: plates.Plate
    scale: tuple  # (full width / working width, full height / working height)


def working_plate(frames: dict, segment: Segment | None = None, config: LayerConfig | None = None,
                  timings: dict | None = None, reuse: WorkingPlate | None = None) -> WorkingPlate:
    """Steps 1-2 of the module docstring for one shot (``frames``: index -> full-res RGB).
    ``reuse``: an earlier result for the same frames whose camera track and plate are kept
    (only the working frames and the prior are recomputed; they are too big to keep around)."""
    cfg = config or LayerConfig()
    timings = {} if timings is None else timings
    t = time.perf_counter()
    order = sorted(frames)
    H, W = frames[order[0]].shape[:2]
    s = min(1.0, cfg.work_width / W)
    ws = (max(16, int(round(W * s))), max(16, int(round(H * s))))
    work = [_resize(frames[f], ws) for f in order]
    if reuse is not None and reuse.order == order:  # the prior only served the track and the plate
        return WorkingPlate(order, work, None, reuse.offsets, reuse.confidence, reuse.plate, reuse.scale)
    prior = [np.clip(segment(w), 0, 1).astype(np.float32) for w in work] if segment is not None else None
    timings["segment_prior"] = timings.get("segment_prior", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    track = plates.estimate_camera([cv2.cvtColor(w, cv2.COLOR_RGB2GRAY) for w in work], ignore=prior)
    timings["camera"] = timings.get("camera", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    plate_w = plates.build_plate(work, track.offsets, fg_hint=prior)
    timings["working_plate"] = timings.get("working_plate", 0.0) + time.perf_counter() - t
    return WorkingPlate(order, work, prior, track.offsets.astype(np.float64), float(np.median(track.confidence)),
                        plate_w, (W / ws[0], H / ws[1]))


def _inpaint(image: np.ndarray, hole: np.ndarray, fill: Inpaint, max_width: int) -> np.ndarray:
    """Fill `hole` at a reduced resolution (cost grows with the hole's area; the fill is smooth
    anyway) and paste the upsampled fill into the hole only."""
    h, w = hole.shape
    f = min(1.0, max_width / w)
    if f >= 1.0:
        return fill(image, hole)
    size = (max(8, int(round(w * f))), max(8, int(round(h * f))))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small_hole = cv2.resize(hole.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    small_hole |= cv2.resize(hole.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.01
    up = cv2.resize(fill(small, small_hole), (w, h), interpolation=cv2.INTER_CUBIC)
    out = image.copy()
    out[hole] = up[hole]
    return out


def _label_alpha(labels: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Instance ids on the refined mask: ids come from the coarse masks, so character pixels the
    refinement added take the id of the nearest labelled pixel."""
    out = np.where(inside, labels, 0).astype(np.uint8)
    todo = inside & (out == 0)
    if not todo.any() or not out.any():
        return out
    ys, xs = np.nonzero(inside)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = out[y0:y1, x0:x1]
    iy, ix = ndimage.distance_transform_edt(crop == 0, return_distances=False, return_indices=True)
    nearest = crop[iy, ix]
    t = todo[y0:y1, x0:x1]
    crop[t] = nearest[t]
    return out


def decompose_shot(frames: dict, kept, *, segment: Segment | None = None, inpaint: Inpaint | None = None,
                   config: LayerConfig | None = None, library=(), working: WorkingPlate | None = None) -> ShotLayers:
    """Layers of the kept frames of one shot.

    ``frames``: frame index -> full-resolution RGB uint8 (the kept frames plus others spread
    over the shot, see `plate_frame_indices`); ``kept``: the frame indices to return layers for.
    ``segment``: a character prior (None: motion against the plate only; a character that never
    moves is then not found). ``inpaint``: hole filler for never-visible background
    (None: OpenCV Telea). ``library``: [(plate RGB, seen)] of OTHER shots of the episode (their
    `WorkingPlate.plate`): background this shot never saw is borrowed from them where they
    match. ``working``: this shot's `working_plate`, when already computed.
    """
    cfg = config or LayerConfig()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - since
        return now

    kept = sorted(int(k) for k in kept)
    missing = [k for k in kept if k not in frames]
    if missing:
        raise ValueError(f"kept frames {missing[:5]} not among the decoded frames")
    wp = working or working_plate(frames, segment, cfg, timings)
    order, work = wp.order, wp.work
    pos = {f: j for j, f in enumerate(order)}
    H, W = frames[order[0]].shape[:2]
    off_w = wp.offsets
    off_f = off_w * np.array(wp.scale)
    t = time.perf_counter()

    lent = plates.borrow_background(wp.plate, library)
    plate_w = plates.Plate(lent.image, lent.seen, wp.plate.offsets, wp.plate.frame_size, wp.plate.support)
    t = lap("borrow_background", t)
    # coarse masks only where needed: the kept frames and the frames the full plate is built from
    sub = sorted(set(np.linspace(0, len(order) - 1, num=min(cfg.full_plate_frames, len(order))).round().astype(int)))
    need = sorted(set(sub) | {pos[f] for f in kept})
    masks = plates.foreground_masks([work[j] for j in need], dataclasses.replace(plate_w, offsets=plate_w.offsets[need]),
                                    threshold=cfg.motion_threshold)
    masks = stabilise(masks, [work[j] for j in need], off_w[need], cfg.still_threshold)
    coarse = dict(zip(need, masks))
    t = lap("coarse_masks", t)

    # full-resolution plate, coarse character masks excluded; never-visible pixels filled once
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * cfg.hint_dilate_px + 1,) * 2)
    hints = [cv2.dilate(_resize(coarse[j], (W, H), cv2.INTER_LINEAR), k) for j in sub]
    # the working plate, upsampled into full-resolution plate coordinates, guides the choice of
    # full-resolution samples (both plates share the origin: full = working * scale)
    sx, sy = wp.scale
    pw = int(np.ceil(off_f[:, 0].max() - 1e-3)) + W
    ph = int(np.ceil(off_f[:, 1].max() - 1e-3)) + H
    M = np.array([[sx, 0, 0.5 * (sx - 1)], [0, sy, 0.5 * (sy - 1)]], np.float64)
    ref = cv2.warpAffine(lent.image, M, (pw, ph), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ref_seen = cv2.warpAffine(wp.plate.seen.astype(np.uint8), M, (pw, ph), flags=cv2.INTER_NEAREST) > 0
    plate_f = plates.build_plate_guided([frames[order[j]] for j in sub], off_f[sub], ref, ref_seen, fg_hint=hints)
    plate_f.offsets = off_f.astype(np.float32)  # same plate coordinates for every decoded frame
    lent_full = None
    if lent.borrowed.any():  # background other shots saw, at working resolution, where this one never did
        up = cv2.warpAffine(lent.image, M, (pw, ph), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        got = cv2.warpAffine(lent.borrowed.astype(np.uint8), M, (pw, ph), flags=cv2.INTER_NEAREST) > 0
        fill = got & ~plate_f.seen
        lent_full = fill
        plate_f.image[fill] = up[fill]
        plate_f.seen = plate_f.seen | fill
    unseen = ~plate_f.seen
    filled = _inpaint(plate_f.image, unseen, inpaint or plates.fill_holes, cfg.inpaint_width) if unseen.any() else plate_f.image
    plate_f = plates.Plate(image=filled, seen=plate_f.seen, offsets=plate_f.offsets,
                           frame_size=(W, H), support=plate_f.support)
    t = lap("background_plate", t)

    kj = [pos[f] for f in kept]
    tracks = track_instances([coarse[j] for j in kj], off_w[kj])
    t = lap("instances", t)

    out: list[FrameLayers] = []
    prev = None
    for n, f in enumerate(kept):
        j = pos[f]
        rgb = frames[f]
        bg, hole = plates.background_layer(plate_f, j, (W, H))
        lent_here = None
        if lent_full is not None:  # crop of the lent-pixels map (background_layer crops ~seen)
            _, lent_here = plates.background_layer(dataclasses.replace(plate_f, seen=~lent_full), j, (W, H))
        t = lap("background_layer", t)
        alpha = refine_alpha(rgb, _resize(coarse[j], (W, H), cv2.INTER_LINEAR), background=bg)
        alpha = peel_glow(alpha, rgb, bg, trusted=~hole)
        if prev is not None:
            d = off_f[j] - off_f[prev[0]]
            still = still_pixels(rgb, prev[1], d, cfg.still_threshold)
            alpha = np.where(still, _shift(prev[2], float(d[0]), float(d[1])), alpha).astype(np.float32)
        prev = (j, rgb, alpha)
        t = lap("refine_alpha", t)
        effect, char_rgb = extract_effects(rgb, bg, alpha)
        t = lap("effects", t)
        labels = _label_alpha(_resize(tracks.labels[n], (W, H), cv2.INTER_NEAREST), alpha >= 0.5)
        inst = []
        for i in sorted(int(v) for v in np.unique(labels) if v):
            ys, xs = np.nonzero(labels == i)
            inst.append({"id": i, "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                         "area": round(float(len(xs)) / (W * H), 5)})
        out.append(FrameLayers(f, alpha, char_rgb, labels, inst, effect, bg, hole,
                               (float(off_f[j, 0]), float(off_f[j, 1])), lent_here))
        t = lap("instances", t)

    timings["total"] = time.perf_counter() - t0
    stats = {
        "frames_decoded": len(order),
        "kept": len(kept),
        "work_size": [int(work[0].shape[1]), int(work[0].shape[0])],
        "camera_travel_px": [round(float(v), 1) for v in (off_f.max(axis=0) - off_f.min(axis=0))],
        "camera_confidence": round(wp.confidence, 3),
        "borrowed_from": lent.sources,
        "borrowed_fraction": round(float(lent.borrowed.mean()), 4),
        "plate_size": [int(plate_f.image.shape[1]), int(plate_f.image.shape[0])],
        "plate_unseen_fraction": round(float(unseen.mean()), 4),
        "prior": segment is not None,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    return ShotLayers(out, plate_f, wp, stats)
