"""Grouping images by their CLIP embeddings without asking the user for a cluster count.

Average-linkage agglomerative clustering on cosine distance, cut at a distance threshold:
two groups merge only while their images are, on average, closer than the threshold, so
the number of clusters follows from the data. Groups smaller than ``min_cluster_size``
are noise (cluster -1): outliers are kept out instead of being forced into a cluster.
The result does not depend on row order (rows are sorted by image id first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering

NOISE = -1


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
    raw = AgglomerativeClustering(
        n_clusters=None, distance_threshold=distance_threshold, metric="cosine", linkage="average"
    ).fit_predict(unit)
    sizes = np.bincount(raw)
    raw = np.where(sizes[raw] >= min_cluster_size, raw, NOISE)
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


def _renumber_by_size(raw: np.ndarray) -> np.ndarray:
    """Largest cluster becomes 0; ties by first appearance. Noise stays NOISE."""
    found = [c for c in dict.fromkeys(raw.tolist()) if c != NOISE]
    found.sort(key=lambda c: -int((raw == c).sum()))
    mapping = {c: i for i, c in enumerate(found)}
    return np.array([mapping.get(c, NOISE) for c in raw.tolist()], dtype=np.int64)
