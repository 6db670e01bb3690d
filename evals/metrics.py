"""Pure metric functions: no models, no I/O. Each one is checked against hand-computed cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# scipy and sklearn are imported by the functions that use them: the code location loads this
# module, and the two cost seconds in every process that loads it (the UI's run worker too).


def accuracy(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Share of positions where the labels agree; NaN for no pairs."""
    if not truth:
        return float("nan")
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """Labels (sorted; a missing prediction is '(none)') and counts, rows = truth, columns = predicted."""
    predicted = ["(none)" if p is None else p for p in predicted]
    labels = sorted(set(truth) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return labels, matrix


def cohen_kappa(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Agreement beyond chance: (p_o - p_e) / (1 - p_e).

    NaN when it is undefined: no pairs, or both sides always give the same single label (p_e = 1).
    """
    if not truth:
        return float("nan")
    _, matrix = confusion_matrix(truth, predicted)
    n = matrix.sum()
    observed = np.trace(matrix) / n
    expected = float((matrix.sum(axis=1) * matrix.sum(axis=0)).sum()) / n**2
    if expected == 1.0:
        return float("nan")
    return float((observed - expected) / (1 - expected))


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float
    matched: int


def prf(matched: int, n_predicted: int, n_reference: int) -> PRF:
    """Precision, recall and F1 from counts. Two empty lists agree fully; one empty list against a
    non-empty one scores 0 (an empty answer is not vacuously precise)."""
    if n_predicted == 0 and n_reference == 0:
        return PRF(1.0, 1.0, 1.0, 0)
    if n_predicted == 0 or n_reference == 0:
        return PRF(0.0, 0.0, 0.0, 0)
    precision, recall = matched / n_predicted, matched / n_reference
    f1 = 0.0 if matched == 0 else 2 * precision * recall / (precision + recall)
    return PRF(precision, recall, f1, matched)


def exact_prf(predicted: Sequence[str], reference: Sequence[str]) -> PRF:
    """P/R/F1 of two already-normalised, duplicate-free term lists matched by equality."""
    return prf(len(set(predicted) & set(reference)), len(predicted), len(reference))


def one_to_one_matches(similarity: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, column) of a one-to-one matching with as many pairs at or above ``threshold`` as
    possible, and among those the largest total similarity.

    Hungarian assignment on weights ``big + similarity`` for eligible pairs and 0 otherwise: with
    ``big`` larger than the number of possible pairs, one more pair always outweighs any gain in
    similarity, so the count is maximised first.
    """
    if similarity.size == 0:
        return []
    eligible = similarity >= threshold
    big = min(similarity.shape) + 1.0
    weights = np.where(eligible, big + similarity, 0.0)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(weights, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if eligible[r, c]]


def semantic_prf(similarity: np.ndarray, threshold: float) -> PRF:
    """P/R/F1 where predicted term i matches reference term j when cos(i, j) >= threshold, one-to-one.

    ``similarity`` is (n_predicted, n_reference)."""
    n_pred, n_ref = similarity.shape
    return prf(len(one_to_one_matches(similarity, threshold)), n_pred, n_ref)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1) between Lab colours, broadcasting over leading axes.

    Follows Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula: implementation
    notes, supplementary test data, and mathematical observations", equations (1)-(17).
    """
    lab1, lab2 = np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]

    c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c_mean7 / (c_mean7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    chroma_zero = (c1p * c2p) == 0

    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma_zero, 0.0, dh)
    d_l, d_c = L2 - L1, c2p - c1p
    d_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))

    l_mean, c_mean = (L1 + L2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(
        np.abs(h1p - h2p) <= 180, h_sum / 2, np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)
    )
    h_mean = np.where(chroma_zero, h_sum, h_mean)

    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    d_theta = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * c_mean
    s_h = 1 + 0.015 * c_mean * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt(
        (d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h)
    )


def palette_distance(lab_a: np.ndarray, lab_b: np.ndarray) -> float:
    """Mean CIEDE2000 over an optimal one-to-one matching of two palettes given as (n, 3) Lab arrays.

    The matching minimises the total difference; with palettes of different sizes only
    min(n_a, n_b) pairs are matched, so extra colours neither help nor hurt. NaN if either is empty.
    """
    if len(lab_a) == 0 or len(lab_b) == 0:
        return float("nan")
    cost = ciede2000(np.asarray(lab_a)[:, None, :], np.asarray(lab_b)[None, :, :])
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def ramp(value: float, floor: float, ceiling: float) -> float:
    """0 at or below ``floor``, 1 at or above ``ceiling``, linear between."""
    if ceiling <= floor:
        raise ValueError(f"ceiling ({ceiling}) must be above floor ({floor})")
    return float(np.clip((value - floor) / (ceiling - floor), 0.0, 1.0))


def bootstrap_mean_ci(
    values: Sequence[float], samples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean, resampling items with replacement. NaNs are ignored."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    a: float  # the statistic of run A
    b: float
    low: float  # interval of b - a
    high: float

    @property
    def diff(self) -> float:
        return self.b - self.a


def _mean_last_axis(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def paired_bootstrap_diff(
    a: Sequence[float],
    b: Sequence[float],
    samples: int,
    seed: int,
    confidence: float = 0.95,
    statistic: Callable[[np.ndarray], np.ndarray] = _mean_last_axis,
) -> PairedDifference:
    """statistic(b) - statistic(a) over items measured in both runs, with its percentile bootstrap interval.

    Items are resampled together (the same images for both runs), which removes the
    between-image variance: this is the interval that says whether a change between two
    runs on the same batch is more than resampling noise. ``statistic`` reduces the last
    axis (default: the mean). All NaN when no item has both values.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return PairedDifference(*[float("nan")] * 4)
    index = np.random.default_rng(seed).integers(0, len(a), size=(samples, len(a)))
    diffs = statistic(b[index]) - statistic(a[index])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return PairedDifference(float(statistic(a)), float(statistic(b)), float(low), float(high))


def partition_agreement(ours: Sequence[int | str], theirs: Sequence[str]) -> tuple[float, float]:
    """(adjusted Rand index, normalised mutual information) of two labelings; NaN below two items."""
    if len(ours) < 2:
        return float("nan"), float("nan")
    ours = [str(x) for x in ours]
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return float(adjusted_rand_score(theirs, ours)), float(normalized_mutual_info_score(theirs, ours))


def cosine_silhouette(vectors: np.ndarray, labels: Sequence[int], max_items: int, seed: int) -> float:
    """Mean silhouette with cosine distance; NaN unless there are 2..n-1 clusters.

    Above ``max_items`` a seeded random subset is scored, as silhouette costs O(n^2)."""
    labels = np.asarray(labels)
    n_clusters = len(set(labels.tolist()))
    if not 2 <= n_clusters <= len(labels) - 1:
        return float("nan")
    sample = max_items if len(labels) > max_items else None
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(vectors, labels, metric="cosine", sample_size=sample, random_state=seed))


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95)) -> list[float]:
    """Percentiles (linear interpolation) ignoring NaN; NaN for no values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(x, qs)]
