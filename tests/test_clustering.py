import numpy as np

from assets.clustering import NOISE, cluster_embeddings


def groups(seed=0, sizes=(7, 6, 5), dim=32, spread=0.05):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(sizes), dim))
    vectors = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centers, sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return vectors, truth


def test_recovers_known_groups_numbered_by_size():
    vectors, truth = groups()
    result = cluster_embeddings(vectors, [f"id{i:03d}" for i in range(len(vectors))])
    assert (result.labels == truth).all()


def test_outlier_is_noise_not_forced_into_a_cluster():
    vectors, truth = groups()
    outlier = np.random.default_rng(9).normal(size=(1, vectors.shape[1]))
    result = cluster_embeddings(np.concatenate([vectors, outlier]), [f"id{i:03d}" for i in range(len(vectors) + 1)])
    assert result.labels[-1] == NOISE
    assert np.isnan(result.distances[-1]) and not result.representatives[-1]
    assert (result.labels[:-1] == truth).all()


def test_same_result_whatever_the_row_order():
    vectors, _ = groups(seed=4)
    keys = [f"id{i:03d}" for i in range(len(vectors))]
    first = cluster_embeddings(vectors, keys)
    perm = np.random.default_rng(5).permutation(len(vectors))
    second = cluster_embeddings(vectors[perm], [keys[i] for i in perm])
    assert (second.labels == first.labels[perm]).all()
    assert (second.representatives == first.representatives[perm]).all()


def test_representatives_are_the_nearest_to_the_centroid():
    vectors, truth = groups(sizes=(9,), spread=0.2)
    result = cluster_embeddings(vectors, [f"k{i}" for i in range(9)], n_representatives=5, distance_threshold=1.0)
    assert result.representatives.sum() == 5
    chosen = result.distances[result.representatives]
    assert chosen.max() <= result.distances[~result.representatives].min()


def test_tiny_inputs():
    assert (cluster_embeddings(np.zeros((0, 4)), []).labels == []).all()
    assert cluster_embeddings(np.ones((1, 4)), ["a"]).labels.tolist() == [NOISE]


def test_large_inputs_use_micro_clusters_and_still_find_the_groups(monkeypatch):
    from assets import clustering

    monkeypatch.setattr(clustering, "EXACT_LIMIT", 100)  # force the approximation on a small input
    vectors, truth = groups(seed=6, sizes=(120, 90, 60), dim=24)
    outlier = np.random.default_rng(7).normal(size=(1, 24)) * 5
    keys = [f"id{i:04d}" for i in range(len(vectors) + 1)]
    result = cluster_embeddings(np.concatenate([vectors, outlier]), keys)
    assert (result.labels[:-1] == truth).all()
    assert result.labels[-1] == NOISE
    perm = np.random.default_rng(8).permutation(len(keys))
    again = cluster_embeddings(np.concatenate([vectors, outlier])[perm], [keys[i] for i in perm])
    assert (again.labels == result.labels[perm]).all()
