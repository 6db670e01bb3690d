"""The vector index that search uses (resources/vector_index.py), on planted vectors in a real Parquet
warehouse. The IVF threshold is set to a few hundred vectors so the approximate path runs here; the
exact SQL macros are the reference every indexed answer is compared with."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from resources.search import Filters, SearchError, open_search_index, similar_to_image, similar_to_vector
from resources.vector_index import IndexRefused, index_dir, open_index
from resources.warehouse import connect
from tests.search_warehouse import Planted, image_id, write_planted

DIM = 32
MODEL = "ViT-test"
ANN_ABOVE = 200  # the IVF answers from 200 vectors; 360 are planted
NEAR = [0.99, 0.97, 0.95, 0.93, 0.91, 0.89]  # cosines with the query of the planted neighbours


def _items(batches=("a", "b", "c"), per_batch=120) -> list[Planted]:
    """Per batch: two planted neighbours of the query, the rest unrelated (cosine near 0); every
    fifth image is an animal, every second is indoors."""
    items, near = [], iter(NEAR)
    for b in batches:
        for i in range(per_batch):
            score = next(near) if i in (7, 60) else float(np.random.default_rng([ord(b), i]).uniform(-0.3, 0.3))
            items.append(Planted(b, f"{i:03d}.jpg", score, category="animal" if i % 5 == 0 else "nature",
                                 scene="indoor" if i % 2 else "outdoor"))
    return items


@pytest.fixture(scope="module")
def query() -> np.ndarray:
    direction = np.random.default_rng(42).normal(size=DIM)
    return (direction / np.linalg.norm(direction)).astype(np.float32)


def _warehouse(root: Path, query: np.ndarray, items=None, seed=0) -> Path:
    write_planted(root, query, items or _items(), MODEL, seed=seed)
    return root


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, query) -> Path:
    return _warehouse(tmp_path_factory.mktemp("warehouse"), query)


def _exact(root, query, k, filters=Filters()) -> list[tuple[str, str]]:
    return [(h.batch, h.path) for h in similar_to_vector(connect(root), query, MODEL, k, filters)]


def _indexed(root, query, k, filters=Filters(), ann_above=ANN_ABOVE):
    index = open_search_index(root, MODEL, ann_above)
    return index, similar_to_vector(connect(root), query, MODEL, k, filters, index=index)


def test_the_ivf_returns_the_planted_neighbours_with_exact_scores(warehouse, query):
    index, hits = _indexed(warehouse, query, 6)
    assert index.ivf is not None and index.size == 360
    assert [round(h.score, 4) for h in hits] == NEAR
    assert [(h.batch, h.path) for h in hits] == _exact(warehouse, query, 6)
    exact = similar_to_vector(connect(warehouse), query, MODEL, 6)
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in exact], atol=1e-6)
    assert hits[0].caption == "a photo" and hits[0].category == "nature" and hits[0].width == 64


def test_below_the_threshold_every_vector_is_scored(warehouse, query):
    index, hits = _indexed(warehouse, query, 20, ann_above=10_000)
    assert index.ivf is None
    assert [(h.batch, h.path) for h in hits] == _exact(warehouse, query, 20)


@pytest.mark.parametrize("filters", [
    Filters(category="animal"),  # 72 of 360 allowed: fewer than the threshold, scored exactly
    Filters(scene="outdoor"),  # 180 allowed
    Filters(category="nature"),  # 288 allowed: the IVF, asked for more than k
    Filters(batch_key="b", scene="indoor"),
])
def test_a_filter_still_gives_k_results_the_exact_ones(warehouse, query, filters):
    _, hits = _indexed(warehouse, query, 25, filters)
    assert len(hits) == 25
    assert [(h.batch, h.path) for h in hits] == _exact(warehouse, query, 25, filters)


def test_a_filter_matching_fewer_than_k_gives_all_it_matches(warehouse, query):
    _, hits = _indexed(warehouse, query, 10, Filters(batch_key="nope"))
    assert hits == []
    _, hits = _indexed(warehouse, query, 500, Filters(category="animal"))
    assert len(hits) == 72


def test_similar_image_leaves_its_copies_out(warehouse, query):
    index = open_search_index(warehouse, MODEL, ANN_ABOVE)
    sha = image_id(Planted("a", "007.jpg", 0))
    hits = similar_to_image(connect(warehouse), sha, 5, index=index)
    assert sha not in {h.image_id for h in hits} and len(hits) == 5
    assert [h.path for h in hits] == [h.path for h in similar_to_image(connect(warehouse), sha, 5)]


def test_a_rewritten_or_removed_batch_is_noticed_and_only_it_rebuilt(tmp_path, query):
    root = _warehouse(tmp_path, query)
    open_index(root, MODEL, ANN_ABOVE)
    before = json.loads((index_dir(root, MODEL) / "manifest.json").read_text())
    # batch c is written again: its former neighbours are now unrelated, and 050.jpg is the best match
    write_planted(root, query, [Planted("c", f"{i:03d}.jpg", 0.995 if i == 50 else 0.0) for i in range(120)],
                  MODEL, seed=1)
    index, hits = _indexed(root, query, 3)
    assert [(h.batch, h.path) for h in hits] == [("c", "050.jpg"), ("a", "007.jpg"), ("a", "060.jpg")]
    after = json.loads((index_dir(root, MODEL) / "manifest.json").read_text())
    uids = lambda m: {s["batch"]: s["uid"] for s in m["segments"]}  # noqa: E731
    assert uids(after)["a"] == uids(before)["a"] and uids(after)["c"] != uids(before)["c"]
    assert after["ivf"]["trained_on"] == before["ivf"]["trained_on"]  # updated in place, not trained again
    assert index.ivf.ntotal == 360
    shutil.rmtree(root / "clip_embeddings" / "batch=c")
    index, hits = _indexed(root, query, 3, ann_above=10_000)
    assert index.size == 240 and all(h.batch != "c" for h in hits)
    assert not list(index_dir(root, MODEL).glob(f"seg-{uids(after)['c']}.*"))  # its files are gone


@pytest.mark.parametrize("damage", ["truncated vectors", "garbage manifest", "garbage ivf", "missing rows file"])
def test_a_damaged_index_is_rebuilt_not_believed(tmp_path, query, damage):
    root = _warehouse(tmp_path, query)
    open_index(root, MODEL, ANN_ABOVE)
    folder = index_dir(root, MODEL)
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "truncated vectors":
        path = folder / f"seg-{manifest['segments'][0]['uid']}.npy"
        path.write_bytes(path.read_bytes()[:-DIM * 4 * 3])
    elif damage == "garbage manifest":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "garbage ivf":
        (folder / manifest["ivf"]["file"]).write_bytes(os.urandom(4096))
    else:
        (folder / f"seg-{manifest['segments'][1]['uid']}.arrow").unlink()
    index, hits = _indexed(root, query, 6)
    assert [round(h.score, 4) for h in hits] == NEAR and index.size == 360 and index.ivf.ntotal == 360


def test_another_models_vectors_are_never_used(tmp_path, query):
    root = _warehouse(tmp_path, query)
    index = open_index(root, MODEL, ANN_ABOVE)
    with pytest.raises(IndexRefused, match="never mixed"):
        index.search(query, "other-model", 5)
    with pytest.raises(IndexRefused, match="8-float query"):
        index.search(query[:8], MODEL, 5)
    with pytest.raises(SearchError, match="not by the query's model other-model"):
        similar_to_vector(connect(root), query, "other-model", 5, index=index)
    # an index folder holding another model's manifest (copied, or a hash collision) is rebuilt
    other = index_dir(root, "other-model")
    shutil.copytree(index_dir(root, MODEL), other)
    assert open_index(root, "other-model", ANN_ABOVE).size == 0
    assert json.loads((other / "manifest.json").read_text())["model_id"] == "other-model"


def test_the_similar_command_answers_from_the_index(warehouse, monkeypatch):
    from click.testing import CliRunner

    from dagster_project.cli import main

    monkeypatch.setenv("PIXELSIFT_WAREHOUSE_DIR", str(warehouse))
    monkeypatch.setenv("PIXELSIFT_IMAGES_ROOT", "/photos")
    monkeypatch.setenv("PIXELSIFT_SEARCH_INDEX_ABOVE", str(ANN_ABOVE))
    shutil.rmtree(warehouse / ".cache" / "vector_index", ignore_errors=True)
    sha = image_id(Planted("a", "007.jpg", 0))
    result = CliRunner().invoke(main, ["similar", sha, "-k", "3", "--category", "nature"])
    assert result.exit_code == 0, result.output
    assert (index_dir(warehouse, MODEL) / "manifest.json").exists()
    expected = [h.path for h in similar_to_image(connect(warehouse), sha, 3, Filters(category="nature"))]
    assert [line.split()[1].rsplit("/", 1)[1] for line in result.output.splitlines()] == expected


def test_a_filtered_indexed_search_leaves_the_connections_tables_as_they_were(warehouse, query):
    con = connect(warehouse)
    tables = con.sql("show tables").fetchall()
    index = open_search_index(warehouse, MODEL, ANN_ABOVE)
    assert len(similar_to_vector(con, query, MODEL, 3, Filters(category="animal"), index=index)) == 3
    assert con.sql("show tables").fetchall() == tables
