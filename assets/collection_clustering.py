"""Clusters of a growing collection whose ids keep their meaning: the numerics of ``collection_clusters``.

An update starts from the stored clusters (id, mean vector, size) of one CLIP model and the images
now embedded by it, each with the cluster it had before (or ``NEW``):

1. Images that had a cluster keep it; images of removed batches are simply no longer there.
2. Every other image (new ones, and earlier noise) joins the cluster whose members it is closest to
   on average, if that average cosine distance is under ``distance_threshold``: the rule by which
   average linkage (``assets.clustering``) merges. The average similarity to the members is the dot
   product with the mean of their unit vectors, so a cluster needs only its mean, not its members.
3. The new images left over are clustered (``cluster_embeddings``) together with the earlier noise
   within ``distance_threshold`` of one of them; each group of at least ``min_cluster_size`` becomes
   a cluster with a new id, the rest stays noise. (Earlier noise far from every newcomer was
   clustered before, with the same result: clustering it again at each update would cost as much
   as the first clustering.)

Ids are never renumbered or given twice: a cluster whose images all left keeps its id and last mean
(an image like them later joins it again), and new ids start above every id issued. A full
recluster (``recluster=True``) clusters every image from scratch; a new cluster keeps an old id when
the two share more than half of each other's images, the others get new ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assets.clustering import (NOISE, cluster_embeddings, distances_to, member_means, nearest_centroid,
                               nearest_per_group, normalize_rows, unit_rows)

NEW = -2  # ``previous`` of an image that was not in the collection's clusters before
KEPT, JOINED, FOUNDED, UNCLUSTERED = "kept", "joined", "new", "noise"  # what an update did to each image


@dataclass(frozen=True)
class Clusters:
    """The clusters of one CLIP model: ids (ascending), the mean of their members' unit vectors
    (length <= 1; kept as last seen for a cluster without images), and how many images each has."""

    ids: np.ndarray  # (k,) int64
    means: np.ndarray  # (k, d) float32
    sizes: np.ndarray  # (k,) int64

    @classmethod
    def empty(cls, dim: int) -> Clusters:
        return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32), np.zeros(0, np.int64))


@dataclass(frozen=True)
class Update:
    labels: np.ndarray  # (n,) cluster id per image, NOISE for noise
    change: np.ndarray  # (n,) KEPT / JOINED / FOUNDED / UNCLUSTERED
    distances: np.ndarray  # (n,) cosine distance to the cluster's normalised mean, NaN for noise
    representatives: np.ndarray  # (n,) bool: among the cluster's images nearest its mean
    clusters: Clusters  # every cluster after the update, those without images included
    joined: np.ndarray  # (k,) images that came into each cluster in this update
    left: np.ndarray  # (k,) images that went out of it (their batch was removed, or a recluster moved them)
    next_id: int  # the first id never issued


def update_clusters(vectors: np.ndarray, keys: list[str], previous: np.ndarray, stored: Clusters, next_id: int, *,
                    distance_threshold: float, min_cluster_size: int, n_representatives: int,
                    recluster: bool = False) -> Update:
    """The clusters after one update (see the module doc). ``vectors``: one per distinct image of one
    CLIP model; ``keys`` (sha256) fix every tie; ``previous``: each image's earlier cluster id, NOISE, or NEW."""
    unit = unit_rows(vectors)  # no copy when they are unit float32 already (as CLIP's are stored)
    previous = np.where(np.isin(previous, stored.ids) | (previous == NOISE), previous, NEW)
    if recluster:
        labels, next_id = _recluster(unit, keys, previous, stored, next_id, distance_threshold, min_cluster_size)
    else:
        labels, next_id = _incremental(unit, keys, previous, stored, next_id, distance_threshold, min_cluster_size)

    ids = np.union1d(stored.ids, labels[labels != NOISE]).astype(np.int64)
    slots = _slots(ids, labels)
    means, sizes = member_means(unit, slots, len(ids))
    means = means.astype(np.float32)
    empty = np.flatnonzero(sizes == 0)  # only stored clusters can be empty: keep their last mean
    means[empty] = stored.means[np.searchsorted(stored.ids, ids[empty])]

    distances = distances_to(unit, normalize_rows(means), slots)
    rank = np.empty(len(unit), dtype=np.int64)
    rank[np.argsort(np.asarray(keys, dtype=str), kind="stable")] = np.arange(len(unit))
    representatives = np.zeros(len(unit), dtype=bool)
    representatives[nearest_per_group(labels, distances, rank, n_representatives)] = True

    stayed = labels == previous
    change = np.where(labels == NOISE, UNCLUSTERED, np.where(stayed, KEPT, np.where(
        np.isin(labels, stored.ids), JOINED, FOUNDED)))
    joined = np.bincount(slots[(slots != NOISE) & ~stayed], minlength=len(ids))
    before = np.zeros(len(ids), dtype=np.int64)
    before[np.searchsorted(ids, stored.ids)] = stored.sizes
    left = before - (sizes - joined)
    return Update(labels, change.astype(object), distances, representatives, Clusters(ids, means, sizes.astype(np.int64)),
                  joined.astype(np.int64), left.astype(np.int64), next_id)


def _slots(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's row in ``ids`` (ascending), NOISE for noise."""
    return np.where(labels != NOISE, np.searchsorted(ids, labels), NOISE)


def _incremental(unit: np.ndarray, keys: list[str], previous: np.ndarray, stored: Clusters, next_id: int,
                 distance_threshold: float, min_cluster_size: int) -> tuple[np.ndarray, int]:
    labels = np.where(previous >= 0, previous, NOISE).astype(np.int64)
    candidates = np.flatnonzero(previous < 0)
    if len(stored.ids) and len(candidates):
        means, sizes = member_means(unit, _slots(stored.ids, labels), len(stored.ids))
        # A cluster that lost every image still attracts images like its last ones.
        means = np.where(sizes[:, None] > 0, means, stored.means).astype(np.float32)
        best, similarity = nearest_centroid(unit, means, rows=candidates)  # similarity: average over the members
        joins = 1.0 - similarity <= distance_threshold
        labels[candidates[joins]] = stored.ids[best[joins]]
        candidates = candidates[~joins]
    # Earlier noise enters the new clusters only beside a newcomer near it: clustering all of it again
    # at every update cost as much as the first clustering (most of a collection can be noise).
    newcomers, noise = candidates[previous[candidates] == NEW], candidates[previous[candidates] == NOISE]
    if len(newcomers) and len(noise):
        similarity = nearest_centroid(unit, unit[newcomers], rows=noise)[1]  # to the nearest newcomer
        newcomers = np.union1d(newcomers, noise[1.0 - similarity <= distance_threshold])
    return _found_new(unit, keys, labels, newcomers, next_id, distance_threshold, min_cluster_size)


def _found_new(unit: np.ndarray, keys: list[str], labels: np.ndarray, rest: np.ndarray, next_id: int,
               distance_threshold: float, min_cluster_size: int) -> tuple[np.ndarray, int]:
    """``labels`` with the groups among ``rest`` numbered from ``next_id`` (largest first); the new next id."""
    everything = len(rest) == len(unit)  # the first update: no copy of every vector
    found = cluster_embeddings(unit if everything else unit[rest], keys if everything else [keys[i] for i in rest],
                               distance_threshold=distance_threshold,
                               min_cluster_size=min_cluster_size, n_representatives=0).labels
    grouped = found != NOISE
    labels[rest[grouped]] = next_id + found[grouped]
    return labels, next_id + (int(found.max()) + 1 if grouped.any() else 0)


def _recluster(unit: np.ndarray, keys: list[str], previous: np.ndarray, stored: Clusters, next_id: int,
               distance_threshold: float, min_cluster_size: int) -> tuple[np.ndarray, int]:
    fresh = cluster_embeddings(unit, keys, distance_threshold=distance_threshold, min_cluster_size=min_cluster_size,
                               n_representatives=0).labels
    both = (fresh != NOISE) & (previous >= 0)
    pairs, overlap = (np.unique(np.stack([previous[both], fresh[both]]), axis=1, return_counts=True) if both.any()
                      else (np.zeros((2, 0), np.int64), np.zeros(0, np.int64)))
    old_ids, old_sizes = np.unique(previous[previous >= 0], return_counts=True)
    new_sizes = np.bincount(fresh[fresh != NOISE], minlength=int(fresh.max()) + 1 if len(fresh) else 0)
    carried = {}
    for (old, new), shared in zip(pairs.T.tolist(), overlap.tolist()):
        # More than half of each: at most one such pair per old and per new cluster.
        if 2 * shared > old_sizes[np.searchsorted(old_ids, old)] and 2 * shared > new_sizes[new]:
            carried[new] = old
    mapping = np.full(len(new_sizes), NOISE, dtype=np.int64)
    for new in range(len(new_sizes)):  # new ids in the order cluster_embeddings numbers (largest first)
        if new in carried:
            mapping[new] = carried[new]
        else:
            mapping[new], next_id = next_id, next_id + 1
    labels = np.where(fresh != NOISE, mapping[np.maximum(fresh, 0)], NOISE)
    return labels.astype(np.int64), next_id
