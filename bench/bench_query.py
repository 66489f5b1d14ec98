"""Filtered vector-query latency: LanceDB (indexed and flat) beside brute-force numpy (issue 5, item 5).

    .venv/bin/python bench/bench_query.py [--quick] [--sizes 10000,100000,1000000] [--queries 200]
        [--index ivf_sq|ivf_pq|ivf_hnsw_sq] [--nprobes 40] [--refine 5] [--sweep 10,20,40,80]

Synthetic tables shaped like `frames`: id, episode, shot, frame_index, character (skewed: a few
characters hold most shots), expression, has_effects, quality, and a 512-d float32 vector (CLIP
ViT-B-32). Vectors are clustered the way one show's frames are: a shared style direction, 30
places of 10 looks each (300 L2-normalised centroids), each shot near one of its character's usual
looks, each frame near its shot. So nearest neighbours have real structure and recall means something.

Each query is a frame's vector plus noise, filtered on that frame's metadata, e.g.
`character = 'c0003' AND expression = 'happy' AND NOT has_effects AND quality >= 0.2`; top-20 by
cosine, filter applied before the search (prefilter). Per size, p50 / p95 of single queries (after
warm-up) for:
  numpy    columns in memory: boolean mask, matrix-vector product over the matching rows, argpartition
  flat     LanceDB without the vector index (`bypass_vector_index()`), BITMAP indexes on the filter
  indexed  LanceDB with the vector index (`vector_index`), nprobes / refine_factor as given
and recall@20 of the indexed search against the exact numpy top-20, plus an nprobes sweep.
Tables are written in 100k-row batches to a temp dir and queried warm (in the page cache).
Target: indexed p95 < 50 ms at 1M rows. All three sizes take 2.5-3.5 min on 2 cores (1M: 20-30 s
to write, 80-100 s to build the index); peak memory about 4.5 GB, 2.5 GB of disk at 1M.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LANCEDB_LOG", "error")  # lance's Rust logger warns on every new table otherwise

import lancedb  # noqa: E402
from lancedb.index import Bitmap, BTree, HnswSq, IvfPq, IvfSq  # noqa: E402

DIM = 512  # CLIP ViT-B-32
K = 20
N_CENTROIDS = 300
N_CHARACTERS = 40
EXPRESSIONS = np.array(["neutral", "happy", "sad", "angry", "surprised", "embarrassed", "determined", "crying"])
EXPRESSION_P = np.array([0.34, 0.2, 0.1, 0.1, 0.09, 0.07, 0.06, 0.04])
MIN_QUALITY = 0.2  # the "good enough for training" part of the filter
TARGET_P95_MS = 50.0
BATCH_ROWS = 100_000  # write 1M rows as 10 batches: ~200 MB of vectors each, never 2 GB at once

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("episode", pa.string()),
    pa.field("shot", pa.string()),
    pa.field("frame_index", pa.int32()),
    pa.field("character", pa.string()),
    pa.field("expression", pa.string()),
    pa.field("has_effects", pa.bool_()),
    pa.field("quality", pa.float32()),
    pa.field("vector", pa.list_(pa.float32(), DIM)),
])


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Frames:
    """n synthetic frame rows, generated shot by shot in batches; keeps the columns the numpy
    baseline needs (vectors, integer codes of the filter columns, ids) in memory."""

    def __init__(self, n: int, seed: int = 0):
        self.n = n
        rng = np.random.default_rng(seed)
        # Graded structure, as CLIP vectors of one show have: a shared style direction, 30 places,
        # 10 looks per place. Looks of one place are ~0.6 cosine apart, of two places ~0.25.
        style = _unit(rng.standard_normal(DIM))
        place = _unit(rng.standard_normal((N_CENTROIDS // 10, DIM)))
        self.centroids = _unit(0.5 * style + 0.6 * np.repeat(place, 10, axis=0)
                               + 0.6 * _unit(rng.standard_normal((N_CENTROIDS, DIM))))
        # Zipf-like share of shots per character: c0000 is in ~23% of shots, c0039 in ~0.6%.
        w = 1.0 / np.arange(1, N_CHARACTERS + 1)
        self.char_p = w / w.sum()
        # Each character is mostly drawn in a handful of looks (outfits in their usual places).
        self.homes = rng.integers(0, N_CENTROIDS, (N_CHARACTERS, 8))
        self.n_episodes = int(np.clip(n // 10_000, 24, 100))
        self.vectors = np.empty((n, DIM), np.float32)
        self.character = np.empty(n, np.int16)
        self.expression = np.empty(n, np.int8)
        self.has_effects = np.empty(n, bool)
        self.quality = np.empty(n, np.float32)
        self.ids = np.empty(n, object)  # to map numpy row positions to LanceDB ids for recall
        self._rng = rng

    def batches(self):
        """Yield pyarrow RecordBatches of about BATCH_ROWS rows, filling the in-memory columns."""
        rng, start, shot_no = self._rng, 0, 0
        while start < self.n:
            stop = min(start + BATCH_ROWS, self.n)
            m = stop - start
            # Shots of 8-60 frames; the last one is cut at the batch end.
            lengths = rng.integers(8, 61, m // 8 + 1)
            lengths = lengths[: np.searchsorted(np.cumsum(lengths), m) + 1]
            lengths[-1] -= lengths.sum() - m
            n_shots = len(lengths)
            shot_char = rng.choice(N_CHARACTERS, n_shots, p=self.char_p)
            home = rng.random(n_shots) < 0.8
            shot_centroid = np.where(home, self.homes[shot_char, rng.integers(0, 8, n_shots)],
                                     rng.integers(0, N_CENTROIDS, n_shots))
            shot_vec = self.centroids[shot_centroid] + 0.6 * rng.standard_normal((n_shots, DIM), np.float32) / math.sqrt(DIM)
            shot_of_row = np.repeat(np.arange(n_shots), lengths)
            vec = shot_vec[shot_of_row]
            vec += 0.3 * rng.standard_normal((m, DIM), np.float32) / math.sqrt(DIM)
            vec = _unit(vec)
            sl = slice(start, stop)
            self.vectors[sl] = vec
            self.character[sl] = shot_char[shot_of_row]
            self.expression[sl] = rng.choice(len(EXPRESSIONS), m, p=EXPRESSION_P)
            self.has_effects[sl] = (rng.random(n_shots) < 0.25)[shot_of_row]
            self.quality[sl] = rng.random(m, np.float32)
            frame_index = np.concatenate([np.arange(k) for k in lengths]).astype(np.int32)
            shots = shot_no + shot_of_row
            # Consecutive shots share an episode (~34 frames a shot on average).
            episode = np.minimum(shots * self.n_episodes // max(1, self.n // 34), self.n_episodes - 1)
            ep_s = np.char.add("ep", np.char.zfill(episode.astype(str), 3))
            shot_s = np.char.add(np.char.add(ep_s, "-s"), np.char.zfill(shots.astype(str), 6))
            id_s = np.char.add(np.char.add(shot_s, "-f"), np.char.zfill(frame_index.astype(str), 4))
            self.ids[sl] = id_s.tolist()
            char_s = np.char.add("c", np.char.zfill(self.character[sl].astype(str), 4))
            yield pa.record_batch([
                pa.array(id_s.tolist(), pa.string()),
                pa.array(ep_s.tolist(), pa.string()),
                pa.array(shot_s.tolist(), pa.string()),
                pa.array(frame_index),
                pa.array(char_s.tolist(), pa.string()),
                pa.array(EXPRESSIONS[self.expression[sl]].tolist(), pa.string()),
                pa.array(self.has_effects[sl]),
                pa.array(self.quality[sl]),
                pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), DIM),
            ], schema=SCHEMA)
            start, shot_no = stop, shot_no + n_shots


@dataclass
class Query:
    vector: np.ndarray
    character: int
    expression: int
    sql: str


def make_queries(frames: Frames, count: int, seed: int = 1) -> list[Query]:
    """Queries that look like 'more frames like this one, same character and expression, no
    effects': a frame's vector plus noise, and that frame's metadata as the filter (so the
    popular characters are asked about most, as in real use)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        i = int(rng.integers(frames.n))
        if frames.has_effects[i] or frames.quality[i] < MIN_QUALITY:
            continue  # the frame asked about passes its own filter, so every query has matches
        c, e = int(frames.character[i]), int(frames.expression[i])
        q = _unit(frames.vectors[i] + 0.3 * rng.standard_normal(DIM).astype(np.float32) / math.sqrt(DIM))
        sql = f"character = 'c{c:04d}' AND expression = '{EXPRESSIONS[e]}' AND NOT has_effects AND quality >= {MIN_QUALITY}"
        out.append(Query(q, c, e, sql))
    return out


def matches(frames: Frames, q: Query) -> np.ndarray:
    return ((frames.character == q.character) & (frames.expression == q.expression) & ~frames.has_effects
            & (frames.quality >= np.float32(MIN_QUALITY)))


def numpy_search(frames: Frames, q: Query) -> np.ndarray:
    """Exact filtered top-K by cosine (vectors are unit length, so cosine = dot)."""
    idx = np.flatnonzero(matches(frames, q))
    scores = frames.vectors[idx] @ q.vector
    if len(idx) > K:
        top = np.argpartition(-scores, K)[:K]
        idx, scores = idx[top], scores[top]
    return idx[np.argsort(-scores)]


def lance_search(table, q: Query, *, flat: bool = False, nprobes: int = 0, refine: int = 0, hnsw: bool = False) -> list[str]:
    s = table.search(q.vector, vector_column_name="vector").distance_type("cosine")
    # Selecting _distance too silences lance's "will not be included in the future" warning per query.
    s = s.where(q.sql, prefilter=True).select(["id", "_distance"]).limit(K)
    if flat:
        s = s.bypass_vector_index()
    else:
        s = s.nprobes(nprobes)
        if refine:
            s = s.refine_factor(refine)
        if hnsw:  # HNSW refuses ef < limit * refine_factor
            s = s.ef(max(2 * K, K * max(1, refine)))
    return s.to_arrow().column("id").to_pylist()


def timed_queries(fn, queries: list[Query], warmup: int) -> tuple[np.ndarray, list]:
    """Milliseconds per query (one at a time, as an interactive search does) and the results."""
    for q in queries[:warmup]:
        fn(q)
    times, results = [], []
    for q in queries[warmup:]:
        t = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - t)
    return np.array(times) * 1000.0, results


def pct(ms: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def vector_index(kind: str, n: int):
    """The vector index for n rows. sqrt(N) IVF partitions (LanceDB's own default rule: ~1k rows
    per partition at 1M). IVF_SQ is the default because it measured best in a trial here (2 cores,
    1M rows, filter without the quality clause, nprobes 40, refine 5): built in 87 s, p95 9 ms at
    recall@20 0.98; IVF_HNSW_SQ (64 partitions) took 397 s to build and had p95 27-49 ms for recall
    0.985-0.999. At 100k IVF_PQ (64 sub-vectors) took 74 s to build against 13 s for IVF_SQ, with
    recall 0.90 against 0.92. SQ keeps 1 byte per dimension: a 519 MB index at 1M."""
    parts = max(4, int(round(math.sqrt(n))))
    if kind == "ivf_sq":
        return IvfSq(distance_type="cosine", num_partitions=parts)
    if kind == "ivf_pq":  # 64 sub-vectors of 8 dims: one of the two SIMD-friendly shapes, 64 B per vector
        return IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=DIM // 8)
    if kind == "ivf_hnsw_sq":  # few, large partitions: each is an HNSW graph
        return HnswSq(distance_type="cosine", num_partitions=max(1, parts // 16))
    raise ValueError(kind)


def recall(frames: Frames, truth: list[np.ndarray], got: list[list[str]]) -> float:
    return float(np.mean([len(set(frames.ids[e]) & set(g)) / max(1, len(e)) for e, g in zip(truth, got)]))


def run_size(n: int, args) -> dict:
    res: dict = {"n": n}
    t0 = time.perf_counter()
    frames = Frames(n, seed=n)
    db = lancedb.connect(str(args.workdir / f"db_{n}"))
    table = None
    for batch in frames.batches():
        if table is None:
            table = db.create_table("frames", data=pa.Table.from_batches([batch]), schema=SCHEMA, mode="overwrite")
        else:
            table.add(pa.Table.from_batches([batch]))
    res["write_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # Low-cardinality filter columns -> BITMAP. `quality >= 0.2` keeps ~80% of rows: a BTREE on it
    # made the filtered 1M query twice as slow here (p50 22 ms vs 11 ms unindexed; the index turns
    # the range into a huge row-id set), so it stays unindexed unless --btree-quality.
    for col in ("character", "expression", "has_effects"):
        table.create_index(col, config=Bitmap())
    if args.btree_quality:
        table.create_index("quality", config=BTree())
    res["scalar_index_s"] = time.perf_counter() - t0

    w = args.warmup
    queries = make_queries(frames, w + args.queries)
    res["matching"] = np.array([matches(frames, q).sum() for q in queries[w:]])

    res["numpy"], truth = timed_queries(lambda q: numpy_search(frames, q), queries, w)
    res["flat"], flat_ids = timed_queries(lambda q: lance_search(table, q, flat=True), queries, w)
    res["flat_recall"] = recall(frames, truth, flat_ids)  # exact search: should be 1.0

    hnsw = args.index == "ivf_hnsw_sq"
    t0 = time.perf_counter()
    table.create_index("vector", config=vector_index(args.index, n))
    res["index_s"] = time.perf_counter() - t0
    res["indexed"], ann_ids = timed_queries(
        lambda q: lance_search(table, q, nprobes=args.nprobes, refine=args.refine, hnsw=hnsw), queries, w)
    res["recall"] = recall(frames, truth, ann_ids)

    # The recall / latency trade-off around the chosen setting, on the first half of the queries.
    half = queries[: w + args.queries // 2]
    res["sweep"] = {}
    for nprobes in args.sweep:
        ms, got = timed_queries(lambda q: lance_search(table, q, nprobes=nprobes, refine=args.refine, hnsw=hnsw), half, w)
        res["sweep"][nprobes] = (pct(ms)[1], recall(frames, truth, got))
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k rows only")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per size (after warm-up)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--index", default="ivf_sq", choices=["ivf_sq", "ivf_pq", "ivf_hnsw_sq"])
    parser.add_argument("--nprobes", type=int, default=40)
    parser.add_argument("--refine", type=int, default=5, help="refine_factor: re-rank limit*refine candidates on full vectors")
    parser.add_argument("--sweep", default="10,20,40,80", help="nprobes values for the trade-off table ('' for none)")
    parser.add_argument("--btree-quality", action="store_true", help="also put a BTREE index on quality (slower, see run_size)")
    parser.add_argument("--workdir", default=None, help="where the tables go (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    args.sweep = [int(s) for s in args.sweep.split(",") if s]
    warnings.simplefilter("ignore", DeprecationWarning)

    own_dir = args.workdir is None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_query_"))
    start = time.perf_counter()
    rows = []
    try:
        for n in sizes:
            t = time.perf_counter()
            r = run_size(n, args)
            m = r["matching"]
            print(f"  {n:>9,} rows: write {r['write_s']:.1f} s, scalar indexes {r['scalar_index_s']:.1f} s, "
                  f"vector index {r['index_s']:.1f} s; rows passing the filter per query: median {np.median(m):.0f} "
                  f"(min {m.min()}, max {m.max()}); flat recall {r['flat_recall']:.3f}; {time.perf_counter() - t:.0f} s",
                  flush=True)
            rows.append(r)
            shutil.rmtree(args.workdir / f"db_{n}", ignore_errors=True)  # 2 GB at 1M
    finally:
        if own_dir:
            shutil.rmtree(args.workdir, ignore_errors=True)

    print()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores (load average now {load}: other work on a shared machine inflates p95); "
          f"lancedb {lancedb.__version__}, numpy {np.__version__}; top-{K} by cosine, filter before search; "
          f"{args.queries} timed queries after {args.warmup} warm-up; "
          f"index {args.index.upper()} (sqrt(N) partitions), nprobes={args.nprobes}, refine_factor={args.refine}; "
          f"BITMAP on character, expression, has_effects{', BTREE on quality' if args.btree_quality else ''}")
    print()
    print("| rows | numpy p50 / p95 ms | LanceDB flat p50 / p95 ms | LanceDB indexed p50 / p95 ms | recall@20 "
          "| index build s | indexed p95 / numpy p95 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        (n50, n95), (f50, f95), (i50, i95) = pct(r["numpy"]), pct(r["flat"]), pct(r["indexed"])
        print(f"| {r['n']:,} | {n50:.1f} / {n95:.1f} | {f50:.1f} / {f95:.1f} | {i50:.1f} / {i95:.1f} | "
              f"{r['recall']:.3f} | {r['index_s']:.1f} | {i95 / n95:.1f} |")
    if args.sweep:
        print()
        print(f"indexed p95 ms / recall@20 by nprobes (refine_factor={args.refine}, {args.queries // 2} queries):")
        print()
        print("| rows | " + " | ".join(f"nprobes {p}" for p in args.sweep) + " |")
        print("|---:|" + "---:|" * len(args.sweep))
        for r in rows:
            cells = (f"{r['sweep'][p][0]:.1f} / {r['sweep'][p][1]:.3f}" for p in args.sweep)
            print(f"| {r['n']:,} | " + " | ".join(cells) + " |")
    print()
    big = [r for r in rows if r["n"] == 1_000_000]
    if big:
        p95 = pct(big[0]["indexed"])[1]
        verdict = "met" if p95 < TARGET_P95_MS else "missed"
        print(f"target: indexed p95 < {TARGET_P95_MS:.0f} ms at 1M rows: {verdict} "
              f"({p95:.1f} ms, recall@20 {big[0]['recall']:.3f})")
    else:
        print(f"target: indexed p95 < {TARGET_P95_MS:.0f} ms at 1M rows: not measured (no 1M size in this run)")
    print(f"total runtime {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
