"""collection_clusters: ids that keep their meaning across updates, and labels written once per new or
changed cluster. Planted CLIP vectors and captions are written as the pipeline writes them (the real
warehouse writer and schemas); the real assets run through Dagster's ``materialize`` with the tiny
random-weight Phi-3 writing the labels through the real structured-output code, counted by a spy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from dagster import DagsterInstance, materialize

from assets.collection_clustering import FOUNDED, JOINED, KEPT, NEW, Clusters, update_clusters
from assets.collection_clusters import collection_cluster_labels, collection_clusters
from assets.clustering import NOISE
from assets.parquet_schemas import CAPTIONS, clip_embeddings_schema
from resources.metadata_llm import MetadataLLMResource
from resources.settings import PixelsiftSettings
from resources.tiny.phi3 import build_tiny_phi3
from resources.warehouse import ParquetWarehouse, partition_file, query, write_table

DIM = 16
AXES = {"cats": 0, "boats": 1, "trees": 2, "far": 3}  # each planted group lies near one axis


def planted(group: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = np.zeros((n, DIM), np.float32)
    vectors[:, AXES[group]] = 1.0
    vectors += 0.05 * rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_batch(warehouse: Path, batch: str, groups: dict[str, int], seed: int, model: str = "clip-a") -> None:
    """The clip_embeddings and captions partitions of a batch of planted images: ``n`` per group."""
    rows, captions = [], []
    for g, (group, n) in enumerate(groups.items()):
        for i, vector in enumerate(planted(group, n, seed + g)):
            path = f"{group}_{i}.jpg"
            image_id = f"{batch}-{path}".encode().hex().ljust(64, "0")[:64]
            rows.append({"image_id": image_id, "path": path, "status": "ok", "error": None,
                         "embedding": vector.tolist(), "model_id": model, "ms": 1.0, "fingerprint": model,
                         "reused": False})
            captions.append({"image_id": image_id, "path": path, "status": "ok", "error": None,
                             "caption": f"a photo of {group} number {i} from {batch}", "model_id": "planted",
                             "ms": 1.0, "new_tokens": 5, "fingerprint": "planted", "reused": False})
    write_table(pa.Table.from_pylist(rows, schema=clip_embeddings_schema(DIM)),
                partition_file(warehouse, "clip_embeddings", batch))
    write_table(pa.Table.from_pylist(captions, schema=CAPTIONS), partition_file(warehouse, "captions", batch))


BUDGETS = {"max_new_tokens": 24, "retry_max_new_tokens": 32}  # random weights write no JSON: keep it short


class CountingLLM:
    """Passes every call to the real tiny Phi-3 resource and counts the clusters it is asked to label:
    prompts at the first token budget (an invalid answer is asked again, with the retry budget)."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate_json(self, chats, **kwargs):
        if kwargs["max_new_tokens"] == BUDGETS["max_new_tokens"]:
            self.prompts.extend(chats)
        return self.inner.generate_json(chats, **kwargs)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    warehouse = root / "warehouse"
    llm = CountingLLM(MetadataLLMResource(model=str(build_tiny_phi3(root / "phi3")), device="cpu", dtype="float32"))
    resources = {"settings": PixelsiftSettings(images_root=str(root / "images"), warehouse_dir=str(warehouse)),
                 "io_manager": ParquetWarehouse(root=str(warehouse)), "metadata_llm": llm}
    instance = DagsterInstance.ephemeral()

    def update(config: dict | None = None) -> tuple[dict, dict, int]:
        """Run both assets; (cluster id by batch/path, labels by cluster id, prompts the LLM got)."""
        before = len(llm.prompts)
        run_config = {"ops": {"collection_cluster_labels": {"config": BUDGETS}}}
        if config:
            run_config["ops"]["collection_clusters"] = {"config": config}
        assert materialize([collection_clusters, collection_cluster_labels], instance=instance, resources=resources,
                           run_config=run_config).success
        ids = dict(query(warehouse, "select batch || '/' || path, cluster_id from collection_clusters").fetchall())
        labels = {r[0]: r for r in query(warehouse, "select cluster_id, reused, total_images, fingerprint "
                                                    "from collection_cluster_labels").fetchall()}
        return ids, labels, len(llm.prompts) - before

    return warehouse, update


def cluster_of(ids: dict, batch: str, group: str) -> set[int]:
    return {c for key, c in ids.items() if key.startswith(f"{batch}/{group}_")}


def test_ids_stay_across_updates_and_labels_are_written_once_per_new_or_changed_cluster(collection):
    warehouse, update = collection
    write_batch(warehouse, "b1", {"cats": 4, "boats": 3}, seed=1)
    ids1, labels1, prompts1 = update()
    (cats,), (boats,) = cluster_of(ids1, "b1", "cats"), cluster_of(ids1, "b1", "boats")
    assert cats != boats and prompts1 == 2 and set(labels1) == {cats, boats}
    assert not any(reused for _, reused, _, _ in labels1.values())

    # A second batch: more cats join the cats' cluster; trees, far from both, found a new id; boats
    # are untouched, so their label is reused without a model call.
    write_batch(warehouse, "b2", {"cats": 2, "trees": 3}, seed=2)
    ids2, labels2, prompts2 = update()
    assert {k: v for k, v in ids2.items() if k.startswith("b1/")} == ids1
    assert cluster_of(ids2, "b2", "cats") == {cats}
    (trees,) = cluster_of(ids2, "b2", "trees")
    assert trees not in (cats, boats) and trees > max(cats, boats)
    assert labels2[boats][1] and labels2[boats][3] == labels1[boats][3]  # reused, same fingerprint
    assert not labels2[cats][1] and not labels2[trees][1] and labels2[cats][2] == 6
    assert prompts2 == 2  # cats (new representatives) and trees (new); boats reused

    # The same inputs again: nothing new, nothing changed, no model call.
    assert update()[2] == 0

    # Batch b2 removed from the warehouse: its images leave, the other ids stay, the trees' id
    # stays issued (0 images) and is not given to anything else.
    shutil.rmtree(warehouse / "clip_embeddings" / "batch=b2")
    shutil.rmtree(warehouse / "captions" / "batch=b2")
    write_batch(warehouse, "b3", {"far": 3}, seed=3)
    ids3, labels3, prompts3 = update()
    assert {k: v for k, v in ids3.items() if k.startswith("b1/")} == ids1
    (far,) = cluster_of(ids3, "b3", "far")
    assert far not in (cats, boats, trees) and trees not in labels3
    assert query(warehouse, f"select images, \"left\" from collection_cluster_centroids where cluster_id = {trees}"
                 ).fetchall() == [(0, 3)]
    assert prompts3 == 2  # cats changed back (its label of two updates ago was replaced) and the new far

    # The trees come back (b2 re-run): they join their old, empty cluster again.
    write_batch(warehouse, "b2", {"cats": 2, "trees": 3}, seed=2)
    ids4, _, _ = update()
    assert cluster_of(ids4, "b2", "trees") == {trees} and cluster_of(ids4, "b2", "cats") == {cats}

    # A full recluster is asked for explicitly; the same groups keep their ids.
    ids5, _, _ = update({"recluster": True})
    assert ids5 == ids4


def test_a_damaged_state_is_a_clear_error_not_new_ids(collection, tmp_path):
    warehouse, update = collection
    copy = tmp_path / "warehouse"
    shutil.copytree(warehouse, copy)
    (copy / "collection_cluster_centroids" / "data.parquet").write_bytes(b"not parquet")
    settings = PixelsiftSettings(images_root=str(tmp_path), warehouse_dir=str(copy))
    result = materialize([collection_clusters], resources={"settings": settings,
                                                           "io_manager": ParquetWarehouse(root=str(copy))},
                         raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "cluster ids cannot be kept" in failure and "pixelsift recluster" in failure
    assert (copy / "collection_clusters" / "data.parquet").read_bytes() == (
        warehouse / "collection_clusters" / "data.parquet").read_bytes()  # nothing lost
    # The way out: a full recluster keeps the ids it can read from the images' table.
    before = dict(query(copy, "select batch || path, cluster_id from collection_clusters").fetchall())
    assert materialize([collection_clusters], resources={"settings": settings, "io_manager": ParquetWarehouse(
        root=str(copy))}, run_config={"ops": {"collection_clusters": {"config": {"recluster": True}}}}).success
    assert dict(query(copy, "select batch || path, cluster_id from collection_clusters").fetchall()) == before


def test_models_are_clustered_apart_with_ids_unique_across_them():
    # Two CLIP models' vectors of the same images: the same directions mean nothing across models.
    vectors = np.vstack([planted("cats", 3, 1), planted("boats", 3, 2)])
    keys = [f"{i:064x}" for i in range(6)]
    a = update_clusters(vectors, keys, np.full(6, NEW), Clusters.empty(DIM), 0, distance_threshold=0.35,
                        min_cluster_size=2, n_representatives=2)
    b = update_clusters(vectors, keys, np.full(6, NEW), Clusters.empty(DIM), a.next_id, distance_threshold=0.35,
                        min_cluster_size=2, n_representatives=2)
    assert set(a.labels) == {0, 1} and set(b.labels) == {2, 3}


def test_update_rules_on_planted_vectors():
    keys = [f"{i:064x}" for i in range(10)]
    vectors = np.vstack([planted("cats", 4, 1), planted("boats", 3, 2), planted("trees", 1, 3), planted("far", 2, 4)])
    first = update_clusters(vectors[:8], keys[:8], np.full(8, NEW), Clusters.empty(DIM), 0, distance_threshold=0.35,
                            min_cluster_size=2, n_representatives=2)
    assert list(first.labels) == [0] * 4 + [1] * 3 + [NOISE]  # largest first; a lone tree is noise
    assert first.representatives.sum() == 4 and first.next_id == 2
    # Noise from before is reconsidered with the newcomers: tree + nothing near stays noise; the far
    # pair founds id 2; a previous member keeps its id even if it now sits nearer another mean.
    second = update_clusters(vectors, keys, np.r_[first.labels, NEW, NEW], first.clusters, first.next_id,
                             distance_threshold=0.35, min_cluster_size=2, n_representatives=2)
    assert list(second.labels) == [0] * 4 + [1] * 3 + [NOISE, 2, 2]
    assert list(second.change[:8]) == [KEPT] * 7 + ["noise"] and list(second.change[8:]) == [FOUNDED] * 2
    # A newcomer near the boats joins them.
    extra = np.vstack([vectors, planted("boats", 1, 9)])
    third = update_clusters(extra, keys + ["f" * 64], np.r_[second.labels, NEW], second.clusters, second.next_id,
                            distance_threshold=0.35, min_cluster_size=2, n_representatives=2)
    assert third.labels[-1] == 1 and third.change[-1] == JOINED and third.next_id == 3
    assert list(third.joined) == [0, 1, 0] and list(third.clusters.sizes) == [4, 4, 2]
