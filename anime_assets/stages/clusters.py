"""UMAP + HDBSCAN over the frame embeddings, per episode and across all episodes."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from anime_assets.storage import schema as S
from anime_assets.vision.cluster import cluster_embeddings, scatter_png


def cluster_episode(tables, episode: str, seed: int = 0) -> dict:
    """Cluster one episode's frames; writes cluster_episode, probability and the 2-D map."""
    ids, vectors = tables.read_vectors(episode)
    t0 = time.perf_counter()
    res = cluster_embeddings(vectors, seed=seed)
    rows = pa.table({
        S.ID: ids,
        S.CLUSTER_EPISODE: res.labels.astype(np.int32),
        S.CLUSTER_PROBABILITY: res.probabilities.astype(np.float32),
        S.UMAP_X: res.coords_2d[:, 0].astype(np.float32) if len(ids) else np.zeros(0, np.float32),
        S.UMAP_Y: res.coords_2d[:, 1].astype(np.float32) if len(ids) else np.zeros(0, np.float32),
    })
    updated = tables.update_clusters(rows)
    return _summary(res, len(ids), updated, time.perf_counter() - t0)


def cluster_all(tables, seed: int = 0) -> dict:
    """Cluster every frame of every episode together; writes cluster_global only."""
    ids, vectors = tables.read_vectors(None)
    t0 = time.perf_counter()
    res = cluster_embeddings(vectors, seed=seed)
    rows = pa.table({S.ID: ids, S.CLUSTER_GLOBAL: res.labels.astype(np.int32)})
    updated = tables.update_clusters(rows)
    return _summary(res, len(ids), updated, time.perf_counter() - t0)


def _summary(res, n: int, updated: int, seconds: float) -> dict:
    labels = res.labels
    n_clusters = int(len(set(labels.tolist()) - {S.NOISE_LABEL})) if n else 0
    return {
        "frames": n, "rows_updated": updated, "clusters": n_clusters,
        "noise": int((labels == S.NOISE_LABEL).sum()) if n else 0, "seconds": seconds,
        "scatter_png": scatter_png(res.coords_2d, labels) if n else None,
    }
