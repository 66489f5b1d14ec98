"""Embed a shot's kept frames and write its rows to LanceDB in one commit."""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

from anime_assets import PIPELINE_VERSION
from anime_assets.storage import schema as S
from anime_assets.storage.media import MediaStore


def read_rgb(path: Path) -> np.ndarray:
    """Decode a kept frame for embedding at half size: every embedder works at <= 512 px,
    and JPEG's reduced decode skips most of the work at 1080p."""
    flag = cv2.IMREAD_COLOR
    if path.suffix.lower() in (".jpg", ".jpeg"):
        with Image.open(path) as im:  # reads the header only
            if min(im.size) >= 2 * 448:
                flag = cv2.IMREAD_REDUCED_COLOR_2
    bgr = cv2.imread(str(path), flag)
    if bgr is None:
        raise ValueError(f"{path.name}: cannot read image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _prefetch(paths: list[Path], batch_size: int) -> Iterator[list[np.ndarray]]:
    """Read images in a background thread (cv2 releases the GIL) while the model runs."""
    q: queue.Queue = queue.Queue(maxsize=2)

    def work():
        try:
            for i in range(0, len(paths), batch_size):
                q.put([read_rgb(p) for p in paths[i:i + batch_size]])
        except BaseException as e:
            q.put(e)
        q.put(None)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def embed_paths(embedder, paths: list[Path], batch_size: int = 32) -> np.ndarray:
    out = [embedder.embed_images(batch) for batch in _prefetch(paths, batch_size)]
    if not out:
        return np.zeros((0, embedder.dim), np.float32)
    return np.concatenate(out).astype(np.float32)


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


def embed_shot(tables, embedder, episode: str, shot: str, kept: list, width: int, height: int,
               batch_size: int = 32) -> dict:
    """Embed and replace the shot's rows. Returns counts and timings for the UI."""
    t0 = time.perf_counter()
    vectors = embed_paths(embedder, [k.path for k in kept], batch_size)
    t1 = time.perf_counter()
    rows = frame_rows(episode, shot, kept, vectors, embedder, width, height)
    tables.open_frames(embedder.model_id, embedder.dim)
    tables.replace_partition(episode, shot, rows)
    t2 = time.perf_counter()
    return {"rows": rows.num_rows, "embed_seconds": t1 - t0, "write_seconds": t2 - t1,
            "nan_vectors": int(np.isnan(vectors).any(axis=1).sum()) if len(vectors) else 0}
