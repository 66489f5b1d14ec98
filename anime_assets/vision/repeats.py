"""Openings, endings and other repeated shot sequences across the episodes of a season.

Pure numpy: no Dagster and no file IO. The caller gives, per episode, the shots in time order with
the descriptors of their kept frames (`ShotSignature`); `find_repeats` returns the sequences of
consecutive shots that play, as the same footage, in more than one place (`RepeatGroup`), and
`flag_map` turns them into a per-shot flag so trainers can leave them out or keep one copy.

Matching rule
-------------
1. **Shot similarity** = cosine of the shots' mean descriptors (the kept frames' L2-normalised
   vectors averaged, then re-normalised). Only cosines are used, so the same code runs on CLIP
   vectors and on the weight-free 256-d colour-layout descriptors. A shot pair is a *match* when
   ``1 - cosine <= max_distance``. The mean is robust to which frames of a shot happened to be
   kept, and to a cut shifted by a few frames (one drawing more or less at an edge).
2. **Timing.** Repeated footage has the same cuts: the offset ``delta = tA - tB`` between the two
   episodes is constant along the sequence up to cut jitter (``cut_tolerance`` seconds, default
   0.25 s = 6 frames at 24 fps), and it changes only where one side has footage the other lacks.
   A chain of matched shot pairs ``(i, j)`` (shot i of episode A, shot j of episode B) is built
   from these steps:

   * diagonal ``(i-1, j-1) -> (i, j)``: the cut into shot i of A and the cut into shot j of B
     coincide, ``|(startA_i - startB_j) - delta| <= tol``; ``delta`` is re-read at that cut;
   * split ``(i, j-1) -> (i, j)``: B has a cut A lacks (a detector difference), which must fall
     inside A's shot i (at least ``tol`` from its ends); at most 3 pieces, and a split is never
     directly followed by a merge or the reverse (merge ``(i-1, j) -> (i, j)``: the transpose),
     so pieces must add up to the other side's shot before the chain goes on;
   * skip (up to ``max_skip`` shots on either or both sides, together at most
     ``max_gap_seconds``: a missing shot, an episode-specific title card, a shot whose mean missed
     the threshold): allowed only between two *verified* steps (diagonal / split / merge), out of
     a pair whose end cut is aligned (``|(endA - endB) - delta| <= tol``); ``delta`` is re-read
     after it.

   The first pair of a chain takes ``delta`` from its start cut; the chain must end with a
   verified step on an aligned end cut, so a chain has at least two pairs and both its ends are
   checked. Two conversations in the same room with near-identical drawings but other shot
   lengths do not chain (a chance alignment of every cut is improbable), the same footage cut a
   few frames differently does. The best chain is found by dynamic programming over the sparse
   matched pairs (local alignment, Smith-Waterman style, on the shot-level similarity matrix),
   scored by the seconds it covers minus half the skipped seconds; chains are taken best first,
   and a later chain of the same episode pair may not reuse a shot. Before the DP a vectorised
   filter drops matched pairs that no verified step can link to a neighbour (pairs that cannot be
   in any reportable chain; a test checks that results are the same without it).
3. **Length.** A chain is a repeated sequence when it spans at least ``min_seconds`` in both
   episodes. Its *occurrence* in an episode is the contiguous run of shots from its first to its
   last matched shot, skipped shots inside included (a title card inside the opening is flagged
   with the opening).
4. **Groups.** Every pair of episodes is compared once, and each episode with itself (pairs
   ``j > i`` only, and the two copies must not overlap, so an episode never reports its own shots
   as a repeat of themselves; a sequence shown twice in one episode, e.g. a flashback, *is*
   reported, as a ``"repeat"``). Occurrences linked by a chain, or sharing a shot in the same
   episode, form one group (an opening present in 12 episodes is one group with 12 members);
   within an episode they merge into one member. A shot at either end of a member that fewer
   than a quarter as many chains cover as its best-covered shot is trimmed (with 24 episodes, a
   neighbouring shot that one other episode happens to share is outvoted).
5. **Kind, by position.** An occurrence is *early* when its midpoint lies in the first third of
   its episode (episode = first shot start .. last shot end; an opening after a cold open of a
   few minutes still qualifies) and *late* when it lies in the last third. A group present in at
   least two episodes is an ``"opening"`` when more than half of its occurrences are early, an
   ``"ending"`` when more than half are late, else a ``"repeat"`` (e.g. a recap of the previous
   episode's cliffhanger: late in one, early in the next). A group seen in one episode only is a
   ``"repeat"``. The kind belongs to the group: an episode that plays the opening as its ending
   (often episode 1) gets those shots flagged ``"opening"`` too. Limitation: a recap of a scene
   from the first third of the previous episode reads as an ``"opening"`` of two members.
6. **Ids.** Groups are numbered ``r00, r01, ...`` by first appearance: episodes in natural order
   of their keys (``ep2`` before ``ep10``), then by start frame. The numbering does not depend on
   the order of the input dict or of the shots, and adding an episode that sorts after the others
   and brings no new group keeps every id.

Cost: one (shots x later shots) matrix product per episode (24 x 300 shots: 276 pairs of 300 x 300
cosines), a vectorised filter, and a Python DP over the surviving matched pairs only. Measured on
a shared 2-core box (load ~5): 0.3-0.8 s for a 24 x 300 season; 0.7-1.7 s (one outlier 2.9 s) in
worst cases where 2-7 % of all shot pairs pass the threshold (every shot resembling a tenth to a
fortieth of the season, as colour-layout descriptors of one room do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

KINDS = ("opening", "ending", "repeat")

_START, _DIAG, _SPLIT, _MERGE, _SKIP = range(5)
_PREFILTER = True  # tests switch it off to check that the vectorised prefilter changes no result


@dataclass
class ShotSignature:
    """One shot of one episode: frame range ``[start, end)`` at ``fps`` and the (k x d) descriptors
    of its kept frames in time order (k >= 1; rows are L2-normalised here if they are not)."""

    episode: str
    shot: str
    start: int
    end: int
    fps: float
    vectors: np.ndarray


@dataclass
class RepeatGroup:
    """A repeated sequence. ``members``: one entry per occurrence, ``(episode, shot keys in
    order)``, sorted by episode (natural order) then time; ``seconds``: median duration of the
    occurrences; ``similarity``: mean cosine of the matched shot pairs behind the group."""

    group: str
    kind: str
    members: list[tuple[str, list[str]]] = field(default_factory=list)
    seconds: float = 0.0
    similarity: float = 0.0


# ----------------------------------------------------------------------------- helpers


def _natural_key(name: str) -> tuple:
    """``ep2`` before ``ep10``; ties (``ep1`` / ``ep01``) broken by the plain string."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p), name


@dataclass
class _Episode:
    name: str
    shots: list[ShotSignature]
    means: np.ndarray  # (n, d) float32, unit rows
    start: np.ndarray  # (n,) seconds
    end: np.ndarray  # (n,) seconds
    t0: float
    t1: float


def _prepare(name: str, shots: list[ShotSignature], dim: int | None) -> _Episode:
    shots = sorted(shots, key=lambda s: (s.start, s.end))
    blocks = []
    for s in shots:
        v = np.asarray(s.vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[0] < 1:
            raise ValueError(f"{name}/{s.shot}: vectors must be (k, d) with k >= 1, got {v.shape}")
        if dim is not None and v.shape[1] != dim:
            raise ValueError(f"{name}/{s.shot}: descriptor dimension {v.shape[1]} != {dim} of the other shots")
        if s.end <= s.start or s.fps <= 0:
            raise ValueError(f"{name}/{s.shot}: empty frame range {s.start}..{s.end} or fps {s.fps}")
        dim = v.shape[1]
        blocks.append(v)
    if not shots:
        return _Episode(name, [], np.zeros((0, dim or 1), np.float32), np.zeros(0), np.zeros(0), 0.0, 0.0)
    v = np.concatenate(blocks)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    first = np.cumsum([0] + [len(x) for x in blocks[:-1]])
    means = np.add.reduceat(v, first, axis=0)  # the 1/k of the mean goes away in the norm
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    start = np.array([s.start / s.fps for s in shots], np.float64)
    end = np.array([s.end / s.fps for s in shots], np.float64)
    return _Episode(name, shots, np.ascontiguousarray(means, np.float32), start, end, float(start.min()), float(end.max()))


@dataclass
class _Run:
    a: str
    b: str
    cells: list[tuple[int, int]]
    sims: list[float]


def _linked(ii: np.ndarray, jj: np.ndarray, sA, eA, sB, eB, tol: float) -> np.ndarray:
    """Which matched pairs ``(ii[k], jj[k])`` can be part of a chain: a superset, vectorised, so
    the DP only visits these.

    Every pair of a chain is linked to a neighbour by a verified step: a diagonal step out of a
    pair whose offset is its own start offset (start, diagonal or skip entry) needs equal cut
    spacing, ``|(sA[i+1] - sB[j+1]) - (sA[i] - sB[j])| <= tol``; a split (merge) group of 2-3
    pieces needs its pieces to add up to the other side's shot where it leaves (a diagonal into
    the next pair, or an aligned end). Pairs without any such link are dropped.
    """
    pad = 4  # every neighbour looked at is at most 3 rows / columns away
    matched = np.zeros((len(sA) + pad, len(sB) + pad), bool)
    matched[ii, jj] = True
    keep = np.zeros_like(matched)

    def has(x, y):
        return matched[x, y]

    nan = np.full(pad, np.nan)
    sA, eA, sB, eB = (np.concatenate([x, nan]) for x in (sA, eA, sB, eB))
    marks = []
    off = sA[ii] - sB[jj]
    d = has(ii + 1, jj + 1) & (np.abs((sA[ii + 1] - sB[jj + 1]) - off) <= tol)
    marks += [(ii[d], jj[d]), (ii[d] + 1, jj[d] + 1)]
    # split groups (row i of A in pieces j..j+m of B), then merge groups (the transpose)
    for X, Y, sX, eX, sY, eY, o, split in ((ii, jj, sA, eA, sB, eB, off, True), (jj, ii, sB, eB, sA, eA, -off, False)):
        def at(x, y):
            return has(x, y) if split else has(y, x)

        g = np.ones(len(X), bool)
        for m in (1, 2):
            g = g & at(X, Y + m)
            end_ok = np.abs((eX[X] - eY[Y + m]) - o) <= tol
            exit_ok = g & at(X + 1, Y + m + 1) & (np.abs((sX[X + 1] - sY[Y + m + 1]) - o) <= tol)
            ok = g & (end_ok | exit_ok)
            pairs = [(X[ok], Y[ok] + t) for t in range(m + 1)] + [(X[exit_ok] + 1, Y[exit_ok] + m + 1)]
            marks += pairs if split else [(y, x) for x, y in pairs]
    for x, y in marks:
        keep[x, y] = True
    return keep[ii, jj]


def _chains(A: _Episode, B: _Episode, ii: np.ndarray, jj: np.ndarray, sims: np.ndarray, same: bool,
            min_seconds: float, tol: float, max_skip: int, max_gap: float) -> list[_Run]:
    """Repeated runs between episodes A and B from their matched shot pairs (row-major order)
    and the pairs' cosines (see module doc)."""
    sA, eA, sB, eB = A.start, A.end, B.start, B.end
    while _PREFILTER and len(ii):  # repeat while it shrinks: a pair whose only links were dropped goes too
        k = _linked(ii, jj, sA, eA, sB, eB, tol)
        if k.all():
            break
        ii, jj, sims = ii[k], jj[k], sims[k]
    if len(ii) < 2:
        return []
    live = list(zip(ii.tolist(), jj.tolist()))  # row-major: every predecessor comes first
    index = {c: k for k, c in enumerate(live)}
    steps = [(di, dj) for di in range(max_skip + 2) for dj in range(max_skip + 2)
             if (di, dj) != (0, 0) and (di != 0 or dj == 1) and (dj != 0 or di == 1)]
    n = len(live)
    score = [0.0] * n
    delta = [0.0] * n
    pred = [-1] * n
    kind = [_START] * n  # step that reached the pair: START, DIAG, SPLIT, MERGE, SKIP
    pieces = [1] * n  # pieces so far of the current split / merge group
    sA, eA, sB, eB = sA.tolist(), eA.tolist(), sB.tolist(), eB.tolist()  # python floats: faster here
    for k, (i, j) in enumerate(live):
        dA, dB = eA[i] - sA[i], eB[j] - sB[j]
        best, best_d, best_p, best_k, best_n = 0.5 * (dA + dB), sA[i] - sB[j], -1, _START, 1
        for di, dj in steps:
            p = index.get((i - di, j - dj))
            if p is None:
                continue
            dp, kp = delta[p], kind[p]
            npieces = 1
            if di == 1 and dj == 1:
                d = sA[i] - sB[j]
                if abs(d - dp) > tol:
                    continue
                gain, step = 0.5 * (dA + dB), _DIAG
            elif di == 0:  # split: B's cut into shot j falls inside A's shot i
                npieces = pieces[p] + 1 if kp == _SPLIT else 2
                x = sB[j] + dp
                if kp == _MERGE or npieces > 3 or not (sA[i] + tol <= x <= eA[i] - tol):
                    continue
                d, gain, step = dp, 0.5 * dB, _SPLIT
            elif dj == 0:  # merge: A's cut into shot i falls inside B's shot j
                npieces = pieces[p] + 1 if kp == _MERGE else 2
                x = sA[i] - dp
                if kp == _SPLIT or npieces > 3 or not (sB[j] + tol <= x <= eB[j] - tol):
                    continue
                d, gain, step = dp, 0.5 * dA, _MERGE
            else:  # skip: shots missing on one or both sides
                if kp == _START or kp == _SKIP:  # both sides of a skip need a verified step
                    continue
                if abs((eA[i - di] - eB[j - dj]) - dp) > tol:  # ... and it leaves on an aligned cut
                    continue
                gA = sA[i] - eA[i - di]
                gB = sB[j] - eB[j - dj]
                if gA + gB > max_gap:
                    continue
                d = sA[i] - sB[j]
                gain, step = 0.5 * (dA + dB) - 0.25 * (gA + gB), _SKIP
            s = score[p] + gain
            if s > best:
                best, best_d, best_p, best_k, best_n = s, d, p, step, npieces
        score[k], delta[k], pred[k], kind[k], pieces[k] = best, best_d, best_p, best_k, best_n

    # greedy extraction, best chain first; later chains may not reuse a claimed shot
    runs: list[_Run] = []
    rows_taken = np.zeros(len(sA), bool)
    cols_taken = np.zeros(len(sB), bool)
    for k in np.argsort(-np.asarray(score), kind="stable").tolist():
        if score[k] < 0.5 * min_seconds:
            break
        i, j = live[k]
        if kind[k] in (_START, _SKIP):  # must end with a verified step ...
            continue
        if abs((eA[i] - eB[j]) - delta[k]) > tol:  # ... on an aligned cut
            continue
        if rows_taken[i] or cols_taken[j]:
            continue
        path = [k]
        while pred[path[-1]] >= 0:
            path.append(pred[path[-1]])
        path = [live[p] for p in reversed(path)]
        (i0, j0), (i1, j1) = path[0], path[-1]
        if min(eA[i1] - sA[i0], eB[j1] - sB[j0]) < min_seconds:
            continue
        if same and i1 >= j0:  # the two copies inside one episode must not overlap
            continue
        if rows_taken[i0 : i1 + 1].any() or cols_taken[j0 : j1 + 1].any():
            continue
        if same and (rows_taken[j0 : j1 + 1].any() or cols_taken[i0 : i1 + 1].any()):
            continue
        rows_taken[i0 : i1 + 1] = True
        cols_taken[j0 : j1 + 1] = True
        if same:
            rows_taken[j0 : j1 + 1] = True
            cols_taken[i0 : i1 + 1] = True
        runs.append(_Run(A.name, B.name, path, [float(sims[index[c]]) for c in path]))
    return runs


class _UnionFind:
    def __init__(self, n: int):
        self.p = list(range(n))

    def find(self, x: int) -> int:
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.p[max(a, b)] = min(a, b)


# ----------------------------------------------------------------------------- API


def find_repeats(
    episodes: dict[str, list[ShotSignature]],
    min_seconds: float = 20.0,
    max_distance: float = 0.05,
    cut_tolerance: float = 0.25,
    max_skip: int = 2,
    max_gap_seconds: float = 8.0,
) -> list[RepeatGroup]:
    """Shot sequences of at least ``min_seconds`` that repeat across (or inside) episodes.

    ``episodes``: episode key -> its shots (any order; sorted by start here). The key, not
    ``ShotSignature.episode``, names the episode in the result.
    ``max_distance``: largest ``1 - cosine`` between two shots' mean descriptors that counts as
    the same footage. ``cut_tolerance``: seconds two corresponding cuts may differ by.
    ``max_skip`` / ``max_gap_seconds``: how many shots (and seconds) one side of a sequence may
    have that the other lacks between two matched shots. See the module docstring for the rule.
    """
    names = sorted(episodes, key=_natural_key)
    dim = None
    eps: list[_Episode] = []
    for name in names:
        ep = _prepare(name, list(episodes[name]), dim)
        if len(ep.shots):
            dim = ep.means.shape[1]
        eps.append(ep)
    thr = 1.0 - float(max_distance)
    cut_tolerance = float(cut_tolerance) + 1e-6  # frame counts / fps: 6/24 s must pass a 0.25 s tolerance

    # one (shots x later shots) product per episode: its rows against itself and every later episode
    runs: list[_Run] = []
    offsets = np.cumsum([0] + [len(ep.shots) for ep in eps])
    every = np.concatenate([ep.means for ep in eps]) if eps else np.zeros((0, 1), np.float32)
    for ia, A in enumerate(eps):
        if not len(A.shots):
            continue
        S = A.means @ every[offsets[ia]:].T
        S[:, : len(A.shots)][np.tril_indices(len(A.shots))] = -np.inf  # j > i only: never a shot against itself
        hit = S >= thr
        cols = np.flatnonzero(hit.any(axis=0)) + offsets[ia]
        for ib in np.unique(np.searchsorted(offsets, cols, side="right") - 1).tolist():
            lo, hi = offsets[ib] - offsets[ia], offsets[ib + 1] - offsets[ia]
            ii, jj = np.nonzero(hit[:, lo:hi])  # row-major
            runs.extend(_chains(A, eps[ib], ii, jj, S[:, lo:hi][ii, jj], ib == ia,
                                min_seconds, cut_tolerance, max_skip, max_gap_seconds))

    # occurrences: (episode index, first shot, last shot); one per side of each run
    by_name = {ep.name: k for k, ep in enumerate(eps)}
    occ: list[tuple[int, int, int]] = []
    occ_sims: list[list[float]] = []
    uf_edges = []
    for r in runs:
        (i0, j0), (i1, j1) = r.cells[0], r.cells[-1]
        occ.append((by_name[r.a], i0, i1))
        occ.append((by_name[r.b], j0, j1))
        occ_sims.append(r.sims)
        occ_sims.append([])
        uf_edges.append((len(occ) - 2, len(occ) - 1))
    uf = _UnionFind(len(occ))
    for a, b in uf_edges:
        uf.union(a, b)
    order = sorted(range(len(occ)), key=lambda k: occ[k])
    by_ep: dict[int, list[int]] = {}
    for k in order:
        by_ep.setdefault(occ[k][0], []).append(k)
    for ks in by_ep.values():
        reach, owner = -1, -1
        for k in ks:  # sorted by first shot: union with the interval reaching furthest so far
            _, lo, hi = occ[k]
            if lo <= reach:
                uf.union(owner, k)
            if hi > reach:
                reach, owner = hi, k

    groups: dict[int, list[int]] = {}
    for k in range(len(occ)):
        groups.setdefault(uf.find(k), []).append(k)

    out = []
    for ks in groups.values():
        # per episode, merge overlapping intervals into members (two copies back to back stay two)
        merged: list[list] = []  # [episode, lo, hi, [intervals]]
        for e, lo, hi in sorted(occ[k] for k in ks):
            if merged and merged[-1][0] == e and lo <= merged[-1][2]:
                merged[-1][2] = max(merged[-1][2], hi)
                merged[-1][3].append((lo, hi))
            else:
                merged.append([e, lo, hi, [(lo, hi)]])
        # a shot at either end of an occurrence that less than a quarter as many chains cover as
        # the best-covered shot is a stray extension (a similar shot that happened to be cut alike
        # in one other episode): trimmed when enough other episodes outvote it
        members: list[tuple[int, int, int]] = []
        for e, lo, hi, parts in merged:
            count = np.zeros(hi - lo + 1, np.int64)
            for a, b in parts:
                count[a - lo : b - lo + 1] += 1
            strong = np.flatnonzero(4 * count >= count.max())
            members.append((e, lo + int(strong[0]), lo + int(strong[-1])))
        early = late = 0
        spans = []
        for e, lo, hi in members:
            ep = eps[e]
            mid = 0.5 * (ep.start[lo] + ep.end[hi])
            length = max(ep.t1 - ep.t0, 1e-9)
            early += mid <= ep.t0 + length / 3.0
            late += mid >= ep.t0 + 2.0 * length / 3.0
            spans.append(ep.end[hi] - ep.start[lo])
        kind = "repeat"
        if len({e for e, _, _ in members}) >= 2:
            if 2 * early > len(members):
                kind = "opening"
            elif 2 * late > len(members):
                kind = "ending"
        sims = [s for k in ks for s in occ_sims[k]]
        first = min((e, int(eps[e].shots[lo].start)) for e, lo, _ in members)
        out.append((first, RepeatGroup(
            group="",
            kind=kind,
            members=[(eps[e].name, [s.shot for s in eps[e].shots[lo:hi + 1]]) for e, lo, hi in members],
            seconds=float(np.median(spans)),
            similarity=float(np.mean(sims)) if sims else 0.0,
        )))
    out.sort(key=lambda t: t[0])
    width = max(2, len(str(max(len(out) - 1, 0))))
    result = []
    for n, (_, g) in enumerate(out):
        g.group = f"r{n:0{width}d}"
        result.append(g)
    return result


def flag_map(groups: list[RepeatGroup]) -> dict[tuple[str, str], tuple[str, str]]:
    """(episode, shot) -> (group id, kind) for every shot of every occurrence."""
    flags: dict[tuple[str, str], tuple[str, str]] = {}
    for g in groups:
        for episode, shots in g.members:
            for shot in shots:
                flags.setdefault((episode, shot), (g.group, g.kind))
    return flags
