"""UMAP + HDBSCAN clustering on synthetic blobs, tiny inputs, and the cv2 scatter plot."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from anime_assets.vision.cluster import (
    NOISE,
    ClusterResult,
    cluster_embeddings,
    default_min_cluster_size,
    png_data_uri,
    scatter_markdown,
    scatter_png,
)


def blobs(n_per: int = 40, k: int = 4, dim: int = 64, spread: float = 0.08, seed: int = 0):
    """k well-separated clusters of unit vectors (like embeddings of k recurring scenes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centres])
    truth = np.repeat(np.arange(k), n_per)
    order = rng.permutation(len(points))
    return points[order].astype(np.float32), truth[order]


def agreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of non-noise points whose found cluster is pure for one true cluster, with one
    found cluster per true cluster."""
    from sklearn.metrics import adjusted_rand_score

    kept = labels != NOISE
    return adjusted_rand_score(truth[kept], labels[kept])


@pytest.fixture(scope="module")
def blob_result():
    vectors, truth = blobs()
    return vectors, truth, cluster_embeddings(vectors, seed=0)


def test_finds_blobs(blob_result):
    vectors, truth, result = blob_result
    assert isinstance(result, ClusterResult)
    assert result.labels.dtype == np.int32 and result.labels.shape == (160,)
    assert result.probabilities.dtype == np.float32 and result.coords_2d.shape == (160, 2)
    assert result.coords_2d.dtype == np.float32 and np.isfinite(result.coords_2d).all()
    assert result.n_clusters == 4
    assert result.noise_fraction < 0.15
    assert agreement(result.labels, truth) > 0.95
    assert ((result.probabilities >= 0) & (result.probabilities <= 1)).all()


def test_deterministic_with_seed(blob_result):
    vectors, _, first = blob_result
    second = cluster_embeddings(vectors, seed=0)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_allclose(first.coords_2d, second.coords_2d, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 9])
def test_tiny_inputs_are_all_noise_without_crashing(n):
    vectors, _ = blobs(n_per=max(n, 1), k=1)
    result = cluster_embeddings(vectors[:n])
    assert result.labels.shape == (n,) and (result.labels == NOISE).all()
    assert result.coords_2d.shape == (n, 2) and np.isfinite(result.coords_2d).all()
    assert (result.probabilities == 0).all()


def test_small_but_clusterable_and_duplicates():
    """Just above the tiny threshold, with exact duplicates (held anime frames) present."""
    vectors, truth = blobs(n_per=6, k=2, seed=3)
    vectors = np.concatenate([vectors, vectors[:4]])
    result = cluster_embeddings(vectors, seed=1)
    assert result.labels.shape == (16,) and np.isfinite(result.coords_2d).all()


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        cluster_embeddings(np.zeros(5, np.float32))
    with pytest.raises(ValueError):
        cluster_embeddings(np.full((12, 4), np.nan, np.float32))


def test_default_min_cluster_size():
    assert default_min_cluster_size(10) == 3
    assert default_min_cluster_size(100) == 5
    assert default_min_cluster_size(1000) == 16
    assert default_min_cluster_size(10**6) == 50


def test_scatter_png(blob_result):
    _, _, result = blob_result
    png = scatter_png(result.coords_2d, result.labels, size=200)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (200, 200, 3)
    # Coloured (non-grey) points were drawn for the clusters.
    saturation = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1]
    assert (saturation > 100).sum() > 100
    assert png_data_uri(png).startswith("data:image/png;base64,")
    assert base64.b64decode(png_data_uri(png).split(",", 1)[1]) == png
    markdown = scatter_markdown(result)
    assert markdown.startswith("![clusters](data:image/png;base64,") and "4 clusters" in markdown
    # Degenerate inputs still give a picture.
    assert scatter_png(np.zeros((0, 2)), np.zeros(0, np.int32))[:4] == b"\x89PNG"
    assert scatter_png(np.zeros((3, 2)), np.full(3, NOISE))[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        scatter_png(np.zeros((3, 2)), np.zeros(2))
