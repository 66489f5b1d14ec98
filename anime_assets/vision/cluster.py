"""Cluster frame embeddings (UMAP + HDBSCAN) and draw a small scatter plot of the result.

Why two UMAP projections: HDBSCAN finds density clusters far better in ~5 dimensions than in
2 (2D squeezes neighbouring scenes together), while people need a 2D picture. The 2D run is
only for the plot and the umap_x/umap_y columns; labels come from the 5D run.

Tiny inputs: with fewer than `MIN_POINTS` vectors there is no neighbourhood structure to learn
(UMAP needs a k-NN graph, HDBSCAN a density estimate), so every point is labelled noise (-1)
with probability 0, and the plot coordinates come from a 2-component PCA instead of UMAP.
"""

from __future__ import annotations

import base64
import colorsys
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

NOISE = -1
MIN_POINTS = 10
CLUSTER_DIMS = 5


@dataclass(frozen=True)
class ClusterResult:
    labels: np.ndarray  # (n,) int32, -1 = noise
    probabilities: np.ndarray  # (n,) float32 in [0, 1]
    coords_2d: np.ndarray  # (n, 2) float32, for plots / umap_x, umap_y

    @property
    def n_clusters(self) -> int:
        return int(len(set(self.labels.tolist()) - {NOISE}))

    @property
    def noise_fraction(self) -> float:
        return float(np.mean(self.labels == NOISE)) if len(self.labels) else 0.0


def default_min_cluster_size(n: int) -> int:
    """~sqrt(n)/2, at least 3, at most 50: 100 frames -> 5, 1000 -> 16, 10000 -> 50."""
    return int(min(50, max(3, round(np.sqrt(n) / 2))))


def cluster_embeddings(
    vectors: np.ndarray,
    min_cluster_size: int | None = None,
    seed: int = 0,
    n_neighbors: int = 15,
) -> ClusterResult:
    """Labels, membership probabilities and 2D coordinates for (n, d) embeddings.

    Cosine geometry (the embeddings are L2-normalised); deterministic for a given seed.
    """
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected (n, d) vectors, got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return ClusterResult(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if n < MIN_POINTS:
        return ClusterResult(np.full(n, NOISE, np.int32), np.zeros(n, np.float32), pca_2d(x))

    import hdbscan
    import umap

    k = max(2, min(n_neighbors, n - 1))
    with warnings.catch_warnings():
        # random_state forces single-threaded UMAP (that is the point: reproducible labels).
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*[Gg]raph is not fully connected.*")
        reduced = umap.UMAP(
            n_components=min(CLUSTER_DIMS, n - 2),
            n_neighbors=k,
            min_dist=0.0,  # pack clusters tightly: better for density clustering
            metric="cosine",
            random_state=seed,
            init="spectral" if n > CLUSTER_DIMS + 10 else "random",
        ).fit_transform(x)
        coords = umap.UMAP(
            n_components=2,
            n_neighbors=k,
            min_dist=0.1,
            metric="cosine",
            random_state=seed,
            init="spectral" if n > 12 else "random",
        ).fit_transform(x)

    size = min_cluster_size or default_min_cluster_size(n)
    size = max(2, min(size, n))
    clusterer = hdbscan.HDBSCAN(min_cluster_size=size, min_samples=min(size, 5))
    labels = clusterer.fit_predict(reduced.astype(np.float64))
    return ClusterResult(
        labels.astype(np.int32),
        np.nan_to_num(clusterer.probabilities_).astype(np.float32),
        coords.astype(np.float32),
    )


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components (zeros where there is no spread)."""
    centred = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2 or not np.any(centred):
        return np.zeros((x.shape[0], 2), np.float32)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    # SVD sign is arbitrary: fix it so the output is reproducible.
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), np.arange(coords.shape[1])])
    coords = coords * np.where(signs == 0, 1, signs)
    out = np.zeros((x.shape[0], 2), np.float32)
    out[:, : coords.shape[1]] = coords
    return out


def cluster_colour_bgr(label: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per cluster (golden-ratio hue steps); grey for noise."""
    if label == NOISE:
        return (150, 150, 150)
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (int(b * 255), int(g * 255), int(r * 255))


def scatter_png(coords_2d: np.ndarray, labels: np.ndarray, size: int = 256) -> bytes:
    """A size x size PNG scatter plot, points coloured by cluster, noise small and grey."""
    coords = np.asarray(coords_2d, np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    if len(coords) != len(labels):
        raise ValueError("coords and labels differ in length")
    canvas = np.full((size, size, 3), 255, np.uint8)
    margin = max(6, size // 20)
    if len(coords):
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        span = np.where(hi - lo > 1e-9, hi - lo, 1.0)
        pixels = margin + (coords - lo) / span * (size - 2 * margin)
        pixels[:, 1] = size - pixels[:, 1]  # y up, like a plot
        radius = max(1, size // 110)
        # Noise first so clusters are drawn on top of it.
        order = np.argsort(labels != NOISE, kind="stable")
        for i in order:
            label = int(labels[i])
            x, y = int(round(pixels[i, 0])), int(round(pixels[i, 1]))
            r = radius if label == NOISE else radius + 1
            cv2.circle(canvas, (x, y), r, cluster_colour_bgr(label), -1, lineType=cv2.LINE_AA)
    cv2.rectangle(canvas, (0, 0), (size - 1, size - 1), (210, 210, 210), 1)
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def scatter_markdown(result: ClusterResult, title: str = "clusters", size: int = 256) -> str:
    """Markdown with the inline plot and a one-line summary (for Dagster metadata)."""
    png = scatter_png(result.coords_2d, result.labels, size=size)
    return (
        f"![{title}]({png_data_uri(png)})\n\n"
        f"{len(result.labels)} frames, {result.n_clusters} clusters, {result.noise_fraction:.0%} noise"
    )
