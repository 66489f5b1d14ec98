"""Split a shot's character alpha into character instances with stable ids.

A segmenter gives one alpha for all characters together.  :func:`track_instances`
turns the alphas of ONE shot into per-frame label images:

1. **Per frame**: connected components of ``alpha > 0.5``.  Components are
   taken largest first; a component close to (within ``merge_frac`` of the
   long side) a group at least ``1 / merge_ratio`` times its size joins that
   group (a detached hand, a hair strand, a character cut in two by a thin
   occluder); components below ``min_area_frac`` of the frame that join
   nothing are dropped (specks).
2. **Between frames**: every group is compared with every track in *plate
   coordinates* (frame pixel ``u`` shows plate pixel ``u + offset``), so a
   camera pan does not move the characters.  The affinity of two masks (on a
   small grid) is the mean of their IoU and their overlap coefficient
   (intersection over the smaller one, so a character half out of frame still
   matches itself); groups and tracks are matched one-to-one with the
   Hungarian algorithm (``scipy.optimize.linear_sum_assignment``); a match
   needs affinity >= ``min_affinity``.
3. **Leftovers**: a group that lies mostly (``absorb_frac``) inside the last
   mask of a track already matched in this frame joins it (a character split
   in two); a group near the last position of a track that is not visible in
   this frame (left, hidden, a flash frame) gets that track's id back
   (centroids within ``reentry_frac`` of the larger box diagonal, Hungarian
   again);
   anything else starts a new id.

Ids are 1..255 (0 = no character), assigned in order of first appearance.
Pure numpy / OpenCV / SciPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["InstanceTrack", "track_instances", "DEFAULTS"]

#: Tuning knobs accepted as keyword arguments by :func:`track_instances`.
DEFAULTS = dict(
    threshold=0.5,       # alpha > threshold is character
    merge_frac=0.03,     # fragments within this fraction of the long side may join a bigger group
    merge_ratio=0.35,    # ... if smaller than this fraction of it
    grid_px=320,         # long side of the grid masks are compared on
    min_affinity=0.15,   # frame-to-frame match needs at least this mask affinity (plate coordinates)
    absorb_frac=0.5,     # unmatched group mostly inside a matched track's last mask joins it
    reentry_frac=0.75,   # lost track is re-identified within this fraction of its box diagonal
)

MAX_ID = 255


@dataclass
class InstanceTrack:
    labels: list = field(default_factory=list)  # per frame (H, W) uint8: 0 = none, k = instance id k
    ids: list = field(default_factory=list)     # all instance ids used, ascending
    boxes: list = field(default_factory=list)   # per frame {id: (x0, y0, x1, y1)}, frame pixels, x1/y1 exclusive


@dataclass
class _Obj:
    """A mask on the comparison grid, in plate coordinates: ``mask`` (bool) with
    top-left corner ``(gx, gy)``."""

    mask: np.ndarray
    gx: int
    gy: int

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def centroid(self) -> np.ndarray:
        ys, xs = np.nonzero(self.mask)
        return np.array([xs.mean() + self.gx, ys.mean() + self.gy]) if ys.size else np.array([self.gx, self.gy], float)

    def diag(self) -> float:
        h, w = self.mask.shape
        return float(np.hypot(h, w))


def _overlap(a: _Obj, b: _Obj) -> int:
    x0, y0 = max(a.gx, b.gx), max(a.gy, b.gy)
    x1 = min(a.gx + a.mask.shape[1], b.gx + b.mask.shape[1])
    y1 = min(a.gy + a.mask.shape[0], b.gy + b.mask.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    sa = a.mask[y0 - a.gy:y1 - a.gy, x0 - a.gx:x1 - a.gx]
    sb = b.mask[y0 - b.gy:y1 - b.gy, x0 - b.gx:x1 - b.gx]
    return int(np.count_nonzero(sa & sb))


def _affinity(a: _Obj, b: _Obj) -> float:
    """Mean of IoU and overlap coefficient (intersection over the smaller area):
    a character partly out of frame or partly hidden still matches its full self."""
    inter = _overlap(a, b)
    if not inter:
        return 0.0
    aa, ab = a.area, b.area
    return 0.5 * (inter / (aa + ab - inter) + inter / min(aa, ab))


def _groups(alpha: np.ndarray, p: dict, min_area: float) -> np.ndarray:
    """(H, W) int32 group labels 0..G of one frame (0 = none), groups ordered by area."""
    H, W = alpha.shape
    fg = (alpha > p["threshold"]).astype(np.uint8)
    n, lab, st, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros((H, W), np.int32)
    areas = st[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas, kind="stable") + 1
    gap = max(1, int(round(p["merge_frac"] * max(H, W))))
    group_of = np.zeros(n, np.int32)  # component -> group (1-based), 0 = dropped
    g_area: list[int] = []
    g_box: list[list[int]] = []  # x0, y0, x1, y1 (exclusive)
    g_comps: list[list[int]] = []
    for c in order:
        x, y, w, h, a = (int(v) for v in st[c])
        best, best_d = 0, None
        for g in range(len(g_area)):
            if a >= p["merge_ratio"] * g_area[g]:
                continue
            bx0, by0, bx1, by1 = g_box[g]
            # quick reject on the boxes' gap
            dx = max(bx0 - (x + w), x - bx1, 0)
            dy = max(by0 - (y + h), y - by1, 0)
            if max(dx, dy) > gap:
                continue
            # exact: distance from the group's pixels, in the window around the component
            wx0, wy0 = max(0, x - gap - 1), max(0, y - gap - 1)
            wx1, wy1 = min(W, x + w + gap + 1), min(H, y + h + gap + 1)
            win = lab[wy0:wy1, wx0:wx1]
            gm = np.isin(win, g_comps[g])
            if not gm.any():
                continue
            dist = cv2.distanceTransform((~gm).astype(np.uint8), cv2.DIST_L2, 3)
            d = float(dist[win == c].min())
            if d <= gap and (best_d is None or d < best_d):
                best, best_d = g + 1, d
        if best:
            group_of[c] = best
            g_area[best - 1] += a
            bx = g_box[best - 1]
            g_box[best - 1] = [min(bx[0], x), min(bx[1], y), max(bx[2], x + w), max(bx[3], y + h)]
            g_comps[best - 1].append(int(c))
        elif a >= min_area:
            g_area.append(a)
            g_box.append([x, y, x + w, y + h])
            g_comps.append([int(c)])
            group_of[c] = len(g_area)
    return group_of[lab]


def track_instances(alphas: list, offsets: np.ndarray | None = None, *, min_area_frac: float = 0.002,
                    **tuning) -> InstanceTrack:
    """Per-frame instance labels with ids stable through one shot.

    ``alphas``: per-frame (H, W) character alpha of one shot (all characters
    together).  ``offsets``: (N, 2) camera position (x, y) per frame in plate
    pixels (frame pixel ``u`` shows plate pixel ``u + offset``); None = static
    camera.  ``min_area_frac``: components smaller than this fraction of the
    frame are specks unless they join a nearby bigger group.  ``tuning``:
    overrides of :data:`DEFAULTS`.
    """
    unknown = set(tuning) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown tuning keys: {sorted(unknown)}")
    p = {**DEFAULTS, **tuning}
    n = len(alphas)
    if offsets is None:
        offsets = np.zeros((n, 2), np.float64)
    offsets = np.asarray(offsets, np.float64).reshape(-1, 2)
    if offsets.shape[0] != n:
        raise ValueError(f"{offsets.shape[0]} offsets for {n} frames")
    out = InstanceTrack()
    tracks: dict[int, _Obj] = {}  # id -> last mask (plate coordinates, grid)
    next_id = 1
    for i, alpha in enumerate(alphas):
        alpha = np.asarray(alpha, np.float32)
        if alpha.ndim != 2:
            raise ValueError("alphas must be (H, W) arrays")
        H, W = alpha.shape
        s = min(1.0, p["grid_px"] / max(H, W))
        gl = _groups(alpha, p, min_area_frac * H * W)
        G = int(gl.max())
        ox, oy = offsets[i]
        dets: list[_Obj] = []
        boxes: list[tuple] = []
        if G:
            small = cv2.resize(gl, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_NEAREST) if s < 1 else gl
            gx0, gy0 = int(round(ox * s)), int(round(oy * s))
            for g in range(1, G + 1):
                rows = np.flatnonzero((gl == g).any(axis=1))
                cols = np.flatnonzero((gl == g).any(axis=0))
                boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
                m = small == g
                if not m.any():  # vanished on the grid: keep one pixel at its box centre
                    m = np.zeros_like(m)
                    cy = min(m.shape[0] - 1, int((rows[0] + rows[-1]) / 2 * s))
                    cx = min(m.shape[1] - 1, int((cols[0] + cols[-1]) / 2 * s))
                    m[cy, cx] = True
                r = np.flatnonzero(m.any(axis=1))
                c = np.flatnonzero(m.any(axis=0))
                dets.append(_Obj(m[r[0]:r[-1] + 1, c[0]:c[-1] + 1], gx0 + int(c[0]), gy0 + int(r[0])))
        assign: dict[int, int] = {}  # det index -> id
        prev_ids = list(tracks)
        matched: set[int] = set()
        active = prev_ids  # a track lost earlier at the same place matches by overlap too
        if dets and active:
            M = np.array([[_affinity(d, tracks[t]) for t in active] for d in dets])
            rr, cc = linear_sum_assignment(-M)
            for a, b in zip(rr, cc):
                if M[a, b] >= p["min_affinity"]:
                    assign[a] = active[b]
                    matched.add(active[b])
        # leftovers: absorbed by a matched track (split character)
        for a, d in enumerate(dets):
            if a in assign or not matched:
                continue
            best, frac = None, 0.0
            for t in matched:
                f = _overlap(d, tracks[t]) / max(1, d.area)
                if f > frac:
                    best, frac = t, f
            if best is not None and frac >= p["absorb_frac"]:
                assign[a] = best
        # leftovers: lost tracks near their last position
        rest = [a for a in range(len(dets)) if a not in assign]
        lost = [t for t in prev_ids if t not in matched]
        if rest and lost:
            C = np.full((len(rest), len(lost)), np.inf)
            for ia, a in enumerate(rest):
                ca = dets[a].centroid()
                for it, t in enumerate(lost):
                    dd = float(np.hypot(*(ca - tracks[t].centroid()))) / max(1.0, tracks[t].diag(), dets[a].diag())
                    if dd <= p["reentry_frac"]:
                        C[ia, it] = dd - _affinity(dets[a], tracks[t])
            if np.isfinite(C).any():
                big = 1e6
                rr, cc = linear_sum_assignment(np.where(np.isfinite(C), C, big))
                for ia, it in zip(rr, cc):
                    if np.isfinite(C[ia, it]):
                        assign[rest[ia]] = lost[it]
        for a in range(len(dets)):
            if a not in assign:
                assign[a] = next_id  # past MAX_ID every new instance shares the last id
                next_id = min(MAX_ID, next_id + 1)
        # labels, boxes, track memory
        lut = np.zeros(G + 1, np.uint8)
        fb: dict[int, tuple] = {}
        by_id: dict[int, list[int]] = {}
        for a, t in assign.items():
            lut[a + 1] = t
            by_id.setdefault(t, []).append(a)
        for t, dl in by_id.items():
            bx = [boxes[a] for a in dl]
            fb[t] = (min(b[0] for b in bx), min(b[1] for b in bx), max(b[2] for b in bx), max(b[3] for b in bx))
            tracks[t] = dets[dl[0]] if len(dl) == 1 else _union([dets[a] for a in dl])
        out.labels.append(lut[gl])
        out.boxes.append(fb)
    out.ids = sorted({t for fb in out.boxes for t in fb})
    return out


def _union(objs: list) -> _Obj:
    x0 = min(o.gx for o in objs)
    y0 = min(o.gy for o in objs)
    x1 = max(o.gx + o.mask.shape[1] for o in objs)
    y1 = max(o.gy + o.mask.shape[0] for o in objs)
    m = np.zeros((y1 - y0, x1 - x0), bool)
    for o in objs:
        m[o.gy - y0:o.gy - y0 + o.mask.shape[0], o.gx - x0:o.gx - x0 + o.mask.shape[1]] |= o.mask
    return _Obj(m, x0, y0)
