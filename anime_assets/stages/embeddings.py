"""Embed a shot's kept frames and write its rows to LanceDB in one commit."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from anime_assets import PIPELINE_VERSION
from anime_assets.storage import schema as S
from anime_assets.storage.media import MediaStore


def embed_paths(embedder, paths: list[Path]) -> np.ndarray:
    """Vectors of image files; each embedder decodes on a prefetch thread at the size it needs."""
    if not paths:
        return np.zeros((0, embedder.dim), np.float32)
    return np.asarray(embedder.embed_files(paths), np.float32)


def frame_rows(episode: str, shot: str, kept: Iterable, vectors: np.ndarray, embedder,
               width: int, height: int) -> pa.Table:
    kept = list(kept)
    now = dt.datetime.now(dt.timezone.utc)
    n = len(kept)
    data = {
        S.ID: [S.frame_id(episode, shot, k.frame_index) for k in kept],
        S.EPISODE: [episode] * n,
        S.SHOT: [shot] * n,
        S.FRAME_INDEX: [int(k.frame_index) for k in kept],
        S.PTS_SECONDS: [float(k.pts) for k in kept],
        S.IMAGE_URI: [MediaStore.uri(k.path) for k in kept],
        S.WIDTH: [int(width)] * n,
        S.HEIGHT: [int(height)] * n,
        S.QUALITY: [float(k.quality) for k in kept],
        S.IS_KEYFRAME: [bool(k.is_keyframe) for k in kept],
        S.VECTOR: list(vectors.astype(np.float32)) if n else [],
        S.EMBEDDING_MODEL: [embedder.model_id] * n,
        S.PIPELINE_VERSION: [PIPELINE_VERSION] * n,
        S.CLUSTER_EPISODE: [S.NOISE_LABEL] * n,
        S.CLUSTER_GLOBAL: [S.NOISE_LABEL] * n,
        S.CLUSTER_PROBABILITY: [0.0] * n,
        S.UMAP_X: [float("nan")] * n,
        S.UMAP_Y: [float("nan")] * n,
        S.UPDATED_AT: [now] * n,
    }
    return pa.Table.from_pydict(data, schema=S.frames_schema(embedder.dim, embedder.model_id))


def embed_shot(tables, embedder, episode: str, shot: str, kept: list, width: int, height: int) -> dict:
    """Embed and replace the shot's rows. Returns counts and timings for the UI."""
    t0 = time.perf_counter()
    vectors = embed_paths(embedder, [k.path for k in kept])
    t1 = time.perf_counter()
    rows = frame_rows(episode, shot, kept, vectors, embedder, width, height)
    tables.open_frames(embedder.model_id, embedder.dim)
    tables.replace_partition(episode, shot, rows)
    t2 = time.perf_counter()
    return {"rows": rows.num_rows, "embed_seconds": t1 - t0, "write_seconds": t2 - t1,
            "nan_vectors": int(np.isnan(vectors).any(axis=1).sum()) if len(vectors) else 0}
