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


def unit_rows(vectors: np.ndarray, dtype=np.float32, order: np.ndarray | None = None) -> np.ndarray:
    """``vectors`` (rows taken in ``order``) scaled to unit length, as ``dtype``. Rows already of unit
    length, in that type and order, are used as they are: a million 512-d vectors are 2 GB a copy."""
    vectors = np.asarray(vectors)
    in_order = order is None or np.array_equal(order, np.arange(len(vectors)))
    if in_order and vectors.dtype == dtype and len(vectors) and np.allclose(
            np.einsum("ij,ij->i", vectors, vectors), 1.0, atol=1e-4):
        return vectors
    out = np.array(vectors if in_order else vectors[order], dtype=dtype)  # the one copy
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.where(norms == 0, 1, norms)
    return out


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
    # Everything below runs in key order, and only the results are put back in row order. Above the
    # exact limit the vectors stay float32: a float64 copy of a million of them is 4 GB.
    unit = unit_rows(vectors, np.float64 if n <= EXACT_LIMIT else np.float32, order)
    raw = _agglomerative(unit, distance_threshold) if n <= EXACT_LIMIT else _via_micro_clusters(unit, distance_threshold)
    sizes = np.bincount(raw[raw != NOISE], minlength=max(raw.max() + 1, 1))
    raw = np.where((raw != NOISE) & (sizes[np.maximum(raw, 0)] >= min_cluster_size), raw, NOISE)
    in_key_order = _renumber_by_size(raw)
    labels[order] = in_key_order
    if (in_key_order != NOISE).any():
        centroids = normalize_rows(member_means(unit, in_key_order, int(in_key_order.max()) + 1)[0])
        dist = distances_to(unit, centroids, in_key_order)
        distances[order] = dist
        # Ties in distance broken by key (the position here), so the choice is stable.
        representatives[order[nearest_per_group(in_key_order, dist, np.arange(n), n_representatives)]] = True
    return Clustering(labels, distances, representatives)


def member_means(vectors: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean vector, member count) of each group 0..n_groups-1 (zeros for an empty group; rows in
    group NOISE count nowhere), in one sparse product: linear in the rows, whatever the number of
    groups, and without copying the rows."""
    from scipy import sparse  # here: the code location loads without scipy

    rows = np.where(groups >= 0, groups, n_groups)  # NOISE into one extra group, dropped below
    members = sparse.csr_matrix((np.ones(len(groups), np.float32), (rows, np.arange(len(groups)))),
                                shape=(n_groups + 1, len(groups)))
    counts = np.bincount(rows, minlength=n_groups + 1)[:n_groups]
    sums = np.asarray(members @ vectors)[:n_groups]
    return sums / np.maximum(counts, 1)[:, None], counts


def distances_to(unit: np.ndarray, centres: np.ndarray, groups: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Cosine distance of each row to its group's unit centre (NaN for NOISE), a chunk at a time."""
    out = np.full(len(unit), np.nan)
    for start in range(0, len(unit), chunk):
        block, member = out[start:start + chunk], groups[start:start + chunk]
        ok = member != NOISE
        block[ok] = 1.0 - np.einsum("ij,ij->i", unit[start:start + chunk][ok], centres[member[ok]])
    return np.clip(out, 0.0, 2.0)


def nearest_per_group(groups: np.ndarray, distances: np.ndarray, tiebreak: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` rows of each group (NOISE excluded) with the smallest distance, ties by
    ``tiebreak``: one sort, not a pass over the rows per group."""
    order = np.lexsort((tiebreak, distances, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order[(position < k) & (sorted_groups != NOISE)]


def _agglomerative(unit: np.ndarray, distance_threshold: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering  # here: seconds to import, for the clusters step only

    return AgglomerativeClustering(
        n_clusters=None, distance_threshold=distance_threshold, metric="cosine", linkage="average"
    ).fit_predict(unit)


def _via_micro_clusters(unit: np.ndarray, distance_threshold: float, chunk: int = 16_384) -> np.ndarray:
    n = len(unit)
    k = min(MICRO_CLUSTERS, n // 10)
    from scipy import sparse

    data = np.asarray(unit, dtype=np.float32)
    centroids = data[np.sort(np.random.default_rng(0).choice(n, size=k, replace=False))]
    for _ in range(KMEANS_STEPS):
        assign, similarity = nearest_centroid(data, centroids, chunk)
        members = sparse.csr_matrix((np.ones(n, np.float32), (assign, np.arange(n))), shape=(len(centroids), n))
        sums = np.asarray(members @ data)
        used = np.asarray(members.sum(axis=1)).ravel() > 0
        centroids = normalize_rows(sums[used]).astype(np.float32)
    assign, similarity = nearest_centroid(data, centroids, chunk)
    labels = _agglomerative(centroids, distance_threshold)[assign]
    return np.where(1.0 - similarity > distance_threshold, NOISE, labels)


def nearest_centroid(data: np.ndarray, centroids: np.ndarray, chunk: int = 16_384,
                     rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index of, and cosine similarity to, the nearest centroid of each row (of ``rows`` of ``data``
    when given), chunked to bound memory."""
    n = len(data) if rows is None else len(rows)
    assign = np.empty(n, dtype=np.int64)
    similarity = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):
        block = data[start : start + chunk] if rows is None else data[rows[start : start + chunk]]
        sims = block @ centroids.T
        assign[start : start + chunk] = sims.argmax(axis=1)
        similarity[start : start + chunk] = sims.max(axis=1)
    return assign, similarity


def _renumber_by_size(raw: np.ndarray) -> np.ndarray:
    """Largest cluster becomes 0; ties by first appearance. Noise stays NOISE. Counted with one
    ``np.unique``, not a pass over the rows per cluster (which grew as rows x clusters)."""
    clustered = raw != NOISE
    if not clustered.any():
        return raw.astype(np.int64)
    found, first, sizes = np.unique(raw[clustered], return_index=True, return_counts=True)
    ranked = np.lexsort((first, -sizes))  # by size, then by first appearance
    mapping = np.empty(len(found), dtype=np.int64)
    mapping[ranked] = np.arange(len(found))
    out = np.full(len(raw), NOISE, dtype=np.int64)
    out[clustered] = mapping[np.searchsorted(found, raw[clustered])]
    return out
