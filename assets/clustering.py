"""Grouping images by their CLIP embeddings without asking the user for a cluster count.

Average-linkage agglomerative clustering on cosine distance, cut at a distance threshold:
two groups merge only while their images are, on average, closer than the threshold, so
the number of clusters follows from the data. Groups smaller than ``min_cluster_size``
are noise (cluster -1): outliers are kept out instead of being forced into a cluster.
The result does not depend on row order (rows are sorted by image id first).

Exact average linkage needs the full n x n distance matrix, so above ``EXACT_LIMIT`` images
it runs on micro-clusters instead (documented approximation): a few spherical k-means steps
(matrix products, seeded from a fixed sample) reduce the images to at most
``MICRO_CLUSTERS`` unit centroids, those are clustered exactly, and every image takes its
centroid's cluster. Images farther than the threshold from their centroid are noise.
100,000 x 512 takes a few seconds on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE = -1
EXACT_LIMIT = 5_000
MICRO_CLUSTERS = 2_000
KMEANS_STEPS = 3


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray  # (n,) int, NOISE for outliers, clusters numbered 0.. by size (largest first)
    distances: np.ndarray  # (n,) cosine distance to own centroid, NaN for noise
    representatives: np.ndarray  # (n,) bool: among the `n_representatives` nearest their centroid


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def cluster_embeddings(
    vectors: np.ndarray,
    keys: list[str],
    distance_threshold: float = 0.35,
    min_cluster_size: int = 2,
    n_representatives: int = 5,
) -> Clustering:
    """Cluster rows of ``vectors``; ``keys`` (e.g. image ids) fix a canonical order for determinism."""
    n = len(vectors)
    labels = np.full(n, NOISE, dtype=np.int64)
    distances = np.full(n, np.nan)
    representatives = np.zeros(n, dtype=bool)
    if n < max(2, min_cluster_size):
        return Clustering(labels, distances, representatives)

    order = np.lexsort((np.arange(n), np.array(keys)))
    unit = normalize_rows(np.asarray(vectors, dtype=np.float64))[order]
    raw = _agglomerative(unit, distance_threshold) if n <= EXACT_LIMIT else _via_micro_clusters(unit, distance_threshold)
    sizes = np.bincount(raw[raw != NOISE], minlength=max(raw.max() + 1, 1))
    raw = np.where((raw != NOISE) & (sizes[np.maximum(raw, 0)] >= min_cluster_size), raw, NOISE)
    labels[order] = _renumber_by_size(raw)

    unit_by_row = np.empty_like(unit)
    unit_by_row[order] = unit
    for cluster in range(labels.max() + 1):
        members = np.flatnonzero(labels == cluster)
        centroid = normalize_rows(unit_by_row[members].mean(axis=0, keepdims=True))[0]
        dist = 1.0 - unit_by_row[members] @ centroid
        distances[members] = np.clip(dist, 0.0, 2.0)
        # Ties broken by key so the choice is stable.
        nearest = sorted(members, key=lambda i: (distances[i], keys[i]))[:n_representatives]
        representatives[nearest] = True
    return Clustering(labels, distances, representatives)


def _agglomerative(unit: np.ndarray, distance_threshold: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering  # here: seconds to import, for the clusters step only

    return AgglomerativeClustering(
        n_clusters=None, distance_threshold=distance_threshold, metric="cosine", linkage="average"
    ).fit_predict(unit)


def _via_micro_clusters(unit: np.ndarray, distance_threshold: float, chunk: int = 16_384) -> np.ndarray:
    n = len(unit)
    k = min(MICRO_CLUSTERS, n // 10)
    from scipy import sparse

    data = unit.astype(np.float32)
    centroids = data[np.sort(np.random.default_rng(0).choice(n, size=k, replace=False))]
    for _ in range(KMEANS_STEPS):
        assign, similarity = _nearest(data, centroids, chunk)
        members = sparse.csr_matrix((np.ones(n, np.float32), (assign, np.arange(n))), shape=(len(centroids), n))
        sums = np.asarray(members @ data)
        used = np.asarray(members.sum(axis=1)).ravel() > 0
        centroids = normalize_rows(sums[used]).astype(np.float32)
    assign, similarity = _nearest(data, centroids, chunk)
    labels = _agglomerative(centroids, distance_threshold)[assign]
    return np.where(1.0 - similarity > distance_threshold, NOISE, labels)


def _nearest(data: np.ndarray, centroids: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of, and cosine similarity to, each row's nearest centroid (chunked to bound memory)."""
    assign = np.empty(len(data), dtype=np.int64)
    similarity = np.empty(len(data), dtype=np.float32)
    for start in range(0, len(data), chunk):
        sims = data[start : start + chunk] @ centroids.T
        assign[start : start + chunk] = sims.argmax(axis=1)
        similarity[start : start + chunk] = sims.max(axis=1)
    return assign, similarity


def _renumber_by_size(raw: np.ndarray) -> np.ndarray:
    """Largest cluster becomes 0; ties by first appearance. Noise stays NOISE."""
    found = [c for c in dict.fromkeys(raw.tolist()) if c != NOISE]
    found.sort(key=lambda c: -int((raw == c).sum()))
    mapping = {c: i for i, c in enumerate(found)}
    return np.array([mapping.get(c, NOISE) for c in raw.tolist()], dtype=np.int64)
