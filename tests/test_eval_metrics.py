import math

import numpy as np
import pytest

from assets.colorspace import hex_to_rgb, rgb_to_lab
from evals.metrics import (
    accuracy, bootstrap_mean_ci, ciede2000, cohen_kappa, confusion_matrix, cosine_silhouette, exact_prf,
    one_to_one_matches, paired_bootstrap_diff, palette_distance, partition_agreement, percentiles, prf, ramp,
    semantic_prf,
)


def test_accuracy_and_confusion():
    truth = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", None]
    assert accuracy(truth, pred) == 0.5
    labels, matrix = confusion_matrix(truth, pred)
    assert labels == ["(none)", "a", "b"]
    assert matrix.tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 1]]
    assert math.isnan(accuracy([], []))


def test_kappa_by_hand():
    # 10 pairs: 4 (a,a), 1 (a,b), 2 (b,a), 3 (b,b). p_o = 0.7;
    # truth a:5 b:5, pred a:6 b:4 -> p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7-0.5)/0.5 = 0.4.
    truth = ["a"] * 5 + ["b"] * 5
    pred = ["a"] * 4 + ["b"] + ["a"] * 2 + ["b"] * 3
    assert cohen_kappa(truth, pred) == pytest.approx(0.4)


def test_kappa_edges():
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))  # one label on both sides: undefined
    assert math.isnan(cohen_kappa([], []))


def test_prf_from_counts():
    # 2 of 4 predicted match, 2 of 5 reference found: P = .5, R = .4, F1 = 2*.2/.9
    result = prf(2, 4, 5)
    assert (result.precision, result.recall) == (0.5, 0.4)
    assert result.f1 == pytest.approx(0.4 / 0.9)
    assert prf(0, 0, 0).f1 == 1.0  # both empty: full agreement
    assert prf(0, 0, 3).f1 == 0.0 and prf(0, 0, 3).precision == 0.0  # an empty answer is not precise
    assert prf(0, 2, 3).f1 == 0.0


def test_exact_prf():
    result = exact_prf(["cat", "dog", "sofa"], ["cat", "sofa", "lamp", "rug"])
    assert (result.precision, result.recall, result.matched) == (2 / 3, 0.5, 2)


def test_matching_is_one_to_one_and_maximises_pairs():
    # Greedy would pair row 0 with column 0 (0.9) and leave row 1 unmatched; the best matching pairs both.
    similarity = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(one_to_one_matches(similarity, 0.7)) == [(0, 1), (1, 0)]
    result = semantic_prf(similarity, 0.7)
    assert (result.precision, result.recall, result.f1) == (1.0, 1.0, 1.0)


def test_a_term_matches_at_most_one_reference_term():
    # Both predicted terms are close to the single reference term: only one may match it.
    similarity = np.array([[0.95], [0.9]])
    result = semantic_prf(similarity, 0.7)
    assert (result.matched, result.precision, result.recall) == (1, 0.5, 1.0)


def test_matching_prefers_higher_similarity_among_equal_counts():
    similarity = np.array([[0.8, 0.75], [0.75, 0.8]])
    assert sorted(one_to_one_matches(similarity, 0.7)) == [(0, 0), (1, 1)]


def test_matching_threshold_and_empty():
    assert one_to_one_matches(np.array([[0.69]]), 0.7) == []
    assert one_to_one_matches(np.zeros((0, 3)), 0.7) == []
    assert semantic_prf(np.zeros((0, 0)), 0.7).f1 == 1.0


# Sharma, Wu and Dalal (2005), Table 1: pairs and their published CIEDE2000.
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, -0.001, 2.49), (50.0, 0.0009, -2.49), 4.8045),
    ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0009), 7.1792),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (61.0, -5.0, 29.0), 22.8977),
    ((50.0, 2.5, 0.0), (56.0, -27.0, -3.0), 31.9030),
    ((50.0, 2.5, 0.0), (50.0, 3.1736, 0.5854), 1.0000),
]


def test_ciede2000_matches_published_values():
    first = np.array([p[0] for p in SHARMA])
    second = np.array([p[1] for p in SHARMA])
    expected = np.array([p[2] for p in SHARMA])
    assert np.allclose(ciede2000(first, second), expected, atol=1e-4)
    assert np.allclose(ciede2000(second, first), expected, atol=1e-4)  # symmetric
    assert ciede2000(first[0], first[0]) == pytest.approx(0.0)


def lab(*colors):
    return rgb_to_lab(np.array([hex_to_rgb(c) for c in colors]))


def test_palette_distance_uses_the_optimal_matching():
    # Same colours in another order: distance 0, which a position-by-position comparison would miss.
    assert palette_distance(lab("#FF0000", "#00FF00", "#0000FF"), lab("#0000FF", "#FF0000", "#00FF00")) == (
        pytest.approx(0.0, abs=1e-9)
    )
    # One pair differs: the mean over the two matched pairs is half that pair's difference.
    a, b = lab("#FF0000", "#808080"), lab("#808080", "#FE0000")
    assert palette_distance(a, b) == pytest.approx(float(ciede2000(a[0], b[1])) / 2)
    # Extra colours in the larger palette are left unmatched.
    assert palette_distance(lab("#123456"), lab("#123456", "#FFFFFF")) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(palette_distance(lab("#123456")[:0], lab("#123456")))


def test_ramp():
    assert ramp(0.2, 0.3, 0.6) == 0.0
    assert ramp(0.45, 0.3, 0.6) == pytest.approx(0.5)
    assert ramp(0.9, 0.3, 0.6) == 1.0
    with pytest.raises(ValueError):
        ramp(0.5, 0.6, 0.3)


def test_bootstrap_interval():
    assert bootstrap_mean_ci([0.5] * 20, 200, 0) == (0.5, 0.5)
    values = np.random.default_rng(3).uniform(0, 1, 200)
    low, high = bootstrap_mean_ci(values, 1000, 0)
    assert low < values.mean() < high
    assert (low, high) == bootstrap_mean_ci(values, 1000, 0)  # seeded: reproducible
    assert high - low < 0.2
    assert all(math.isnan(x) for x in bootstrap_mean_ci([], 100, 0))
    assert bootstrap_mean_ci([float("nan"), 1.0], 100, 0) == (1.0, 1.0)


def test_paired_bootstrap_sees_a_consistent_small_improvement():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 50)  # a wide spread between images ...
    b = a + 0.02  # ... and the same small gain on every one
    result = paired_bootstrap_diff(a, b, 500, 0)
    assert result.diff == pytest.approx(0.02)
    assert 0 < result.low <= result.high  # the gain is clear only because the images are paired
    p95 = paired_bootstrap_diff(a, b, 500, 0, statistic=lambda x: np.percentile(x, 95, axis=-1))
    assert p95.diff == pytest.approx(0.02)


def test_partition_agreement():
    assert partition_agreement([0, 0, 1, 1], ["x", "x", "y", "y"]) == pytest.approx((1.0, 1.0))
    assert partition_agreement([5, 5, 2, 2], ["x", "x", "y", "y"]) == pytest.approx((1.0, 1.0))  # names don't matter
    ari, _ = partition_agreement([0, 0, 0, 0], ["x", "x", "y", "y"])
    assert ari == pytest.approx(0.0)
    assert all(math.isnan(x) for x in partition_agreement([0], ["x"]))


def test_cosine_silhouette():
    vectors = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]])
    assert cosine_silhouette(vectors, [0, 0, 1, 1], 100, 0) > 0.8
    assert math.isnan(cosine_silhouette(vectors, [0, 0, 0, 0], 100, 0))


def test_percentiles():
    assert percentiles([1, 2, 3, 4, 5]) == [3.0, pytest.approx(4.8)]
    assert all(math.isnan(x) for x in percentiles([]))
