"""Text and similar-image search over the warehouse, through the real CLIP text tower (tiny, random
weights) and real Parquet read by DuckDB. The ranking of a random model means nothing, so the image
vectors are planted at known cosines from the query's own vector: the expected order is exact."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from resources.clip_embedder import ClipEmbedderResource
from resources.search import Filters, SearchError, search_text, similar_to_image, similar_to_vector
from resources.tiny.clip import EMBED_DIM, build_tiny_clip
from resources.warehouse import connect
from tests.search_warehouse import Planted, image_id, write_planted

QUERY = "dog on a beach at sunset"
# By cosine with the query: the four best are animals of batch "trip"; the other categories trail.
ITEMS = [
    Planted("trip", "dog.jpg", 0.95, category="animal", tags=("dog", "beach"), caption="a dog <b>"),
    Planted("trip", "dog2.jpg", 0.90, category="animal", tags=("dog",), taken_at=datetime(2024, 6, 1)),
    Planted("trip", "cat.jpg", 0.85, category="animal", tags=("cat",), scene="indoor", taken_at=datetime(2023, 1, 1)),
    Planted("trip", "horse.jpg", 0.80, category="animal", tags=("horse",), taken_at=datetime(2024, 8, 1)),
    Planted("home", "sofa.jpg", 0.30, category="object", tags=("sofa",), scene="indoor"),
    Planted("home", "lamp.jpg", 0.20, category="object", tags=("lamp",), scene="indoor"),
    Planted("home", "tree.jpg", 0.10, category="nature"),
    Planted("home", "rock.jpg", -0.20, category="nature"),
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> ClipEmbedderResource:
    return ClipEmbedderResource(model=str(build_tiny_clip(tmp_path_factory.mktemp("clip"))), device="cpu",
                                dtype="float32")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, embedder) -> Path:
    root = tmp_path_factory.mktemp("warehouse")
    write_planted(root, embedder.embed_text([QUERY])[0], ITEMS, embedder.model_id)
    return root


@pytest.fixture(scope="module")
def con(warehouse, embedder):
    return connect(warehouse, text_embedder=embedder)


def paths(hits) -> list[str]:
    return [h.path for h in hits]


def test_text_embeddings_are_unit_vectors_of_the_image_space(embedder):
    vectors = embedder.embed_text([QUERY, "<script>alert(1)</script>", ""])
    assert vectors.shape == (3, EMBED_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_text([QUERY]), vectors[:1], atol=1e-6)  # deterministic
    assert not np.allclose(vectors[0], vectors[1])


def test_ranked_by_cosine_with_the_planted_scores(con, embedder):
    hits = search_text(con, QUERY, embedder.model_id, k=5)
    assert paths(hits) == ["dog.jpg", "dog2.jpg", "cat.jpg", "horse.jpg", "sofa.jpg"]
    assert [round(h.score, 4) for h in hits] == [0.95, 0.90, 0.85, 0.80, 0.30]
    assert hits[0].caption == "a dog <b>" and hits[0].category == "animal" and hits[0].batch == "trip"


def test_a_filter_narrows_before_the_limit_so_k_results_come_back(con, embedder):
    # The top 4 are all animals: filtering after taking the top 3 would return none of these.
    objects_and_nature = search_text(con, QUERY, embedder.model_id, k=3, filters=Filters(category="nature"))
    assert paths(objects_and_nature) == ["tree.jpg", "rock.jpg"]  # all that match, fewer than k
    assert paths(search_text(con, QUERY, embedder.model_id, k=2, filters=Filters(scene="indoor"))) == [
        "cat.jpg", "sofa.jpg"]
    assert paths(search_text(con, QUERY, embedder.model_id, k=3, filters=Filters(batch_key="home"))) == [
        "sofa.jpg", "lamp.jpg", "tree.jpg"]
    assert paths(search_text(con, QUERY, embedder.model_id, filters=Filters(tag="DOG"))) == ["dog.jpg", "dog2.jpg"]
    dated = Filters(taken_after=datetime(2024, 1, 1), taken_before=datetime(2024, 7, 1))
    assert paths(search_text(con, QUERY, embedder.model_id, filters=dated)) == ["dog2.jpg"]


def test_similar_images_leave_the_query_image_out(con):
    hits = similar_to_image(con, image_id(ITEMS[0]), k=3)
    assert "dog.jpg" not in paths(hits) and len(hits) == 3
    assert paths(similar_to_image(con, image_id(ITEMS[0]), k=2, filters=Filters(category="object"))) == [
        "sofa.jpg", "lamp.jpg"]


def test_similar_to_a_vector_ranks_by_it(con, embedder):
    query = embedder.embed_text([QUERY])[0]
    assert paths(similar_to_vector(con, query, embedder.model_id, k=2)) == ["dog.jpg", "dog2.jpg"]


def test_clear_errors_for_searches_that_cannot_run(con, embedder, tmp_path):
    with pytest.raises(SearchError, match="not by the query's model"):
        search_text(con, QUERY, "another/model", k=3)
    with pytest.raises(SearchError, match="no embedded image with sha256"):
        similar_to_image(con, "0" * 64)
    with pytest.raises(SearchError, match="give some text"):
        search_text(con, "  ", embedder.model_id)
    with pytest.raises(SearchError, match="no clip_embeddings yet"):
        search_text(connect(tmp_path, text_embedder=embedder), QUERY, embedder.model_id)


def test_the_same_search_from_sql_with_filters_as_named_arguments(warehouse, embedder):
    from resources.warehouse import query

    sql = f"select path, round(score::DOUBLE, 2) from search_images('{QUERY}', k := 2, category := 'object')"
    assert query(warehouse, sql, text_embedder=embedder).fetchall() == [("sofa.jpg", 0.3), ("lamp.jpg", 0.2)]
    # Ordinary SQL around it: the macro is a table like any other.
    sql = (f"select s.path from similar_images('{image_id(ITEMS[0])}', k := 8) s "
           "join image_metadata m using (batch, path) where m.scene_type = 'indoor' order by s.score desc")
    assert [p for (p,) in query(warehouse, sql).fetchall()] == ["cat.jpg", "sofa.jpg", "lamp.jpg"]


def test_sql_search_stays_read_only(warehouse, embedder):
    from resources.warehouse import ReadOnlyQueryError, query

    for statement in ["create or replace macro search_images(q) as table select 1",
                      "drop macro table search_vector", f"copy (select * from search_images('{QUERY}')) to 'x.csv'"]:
        with pytest.raises(ReadOnlyQueryError):
            query(warehouse, statement, text_embedder=embedder)
    with pytest.raises(Exception, match="search_images does not exist"):  # without the model, text search is not there at all
        query(warehouse, f"select * from search_images('{QUERY}')").fetchall()


def test_the_commands_search_by_sha256_and_by_sql(warehouse, monkeypatch):
    from click.testing import CliRunner

    from dagster_project.cli import main

    monkeypatch.setenv("PIXELSIFT_WAREHOUSE_DIR", str(warehouse))
    monkeypatch.setenv("PIXELSIFT_IMAGES_ROOT", "/photos")
    result = CliRunner().invoke(main, ["similar", image_id(ITEMS[0]), "-k", "2", "--category", "object"])
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines()] == ["/photos/home/sofa.jpg", "/photos/home/lamp.jpg"]
    result = CliRunner().invoke(main, ["similar", "f" * 64])
    assert result.exit_code == 1 and "no embedded image with sha256" in result.output
    result = CliRunner().invoke(main, ["query", "--format", "csv",
                                       f"select path from similar_images('{image_id(ITEMS[0])}', k := 1)"])
    assert result.exit_code == 0 and result.output.splitlines() == ["path", "dog2.jpg"]


def test_search_works_when_a_description_table_lacks_columns(tmp_path, embedder):
    # A warehouse from an older pipeline: image_metadata without scene_type or tags.
    import pyarrow as pa

    from resources.warehouse import partition_file, write_table

    write_planted(tmp_path, embedder.embed_text([QUERY])[0], ITEMS[:3], embedder.model_id)
    write_table(pa.table({"path": ["dog.jpg", "dog2.jpg"], "primary_category": ["animal", "animal"]}),
                partition_file(tmp_path, "image_metadata", "trip"))
    hits = search_text(connect(tmp_path, text_embedder=embedder), QUERY, embedder.model_id, k=2,
                       filters=Filters(category="animal"))
    assert paths(hits) == ["dog.jpg", "dog2.jpg"] and hits[0].scene is None


def test_the_query_command_loads_clip_only_for_text_search(monkeypatch):
    import dagster_project.search_cli as search_cli

    monkeypatch.setattr(search_cli, "clip_embedder", lambda: "the model")
    assert search_cli.text_embedder_for("select * from similar_images('abc')") is None
    assert search_cli.text_embedder_for("select * from SEARCH_IMAGES ('dog', k := 3)") == "the model"


def test_printed_names_and_captions_cannot_drive_the_terminal():
    from dagster_project.search_cli import printable

    assert printable("cat\x1b[2J\x1b]0;owned\x07.jpg\n") == "cat\\x1b[2J\\x1b]0;owned\\x07.jpg\\n"


def test_similar_images_of_an_unknown_sha256_in_sql_is_empty(warehouse):
    from resources.warehouse import query

    assert query(warehouse, "select * from similar_images('nope')").fetchall() == []


def test_a_tiny_clip_built_before_text_search_says_what_to_do(tmp_path, monkeypatch):
    # Tiny models are built once and kept (data/models/tiny); one from before text search has a
    # 64-token text tower. Its image tower is the same (built first from the same seed), so image
    # vectors stored by it stay valid.
    import copy

    import resources.tiny.clip as tiny
    from PIL import Image

    from resources.backends import ModelLoadError

    old_cfg = copy.deepcopy(tiny.MODEL_CFG)
    old_cfg["text_cfg"] = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    monkeypatch.setattr(tiny, "MODEL_CFG", old_cfg)
    old = ClipEmbedderResource(model=str(tiny.build_tiny_clip(tmp_path / "old")), device="cpu", dtype="float32")
    monkeypatch.undo()
    new = ClipEmbedderResource(model=str(tiny.build_tiny_clip(tmp_path / "new")), device="cpu", dtype="float32")
    with pytest.raises(ModelLoadError, match="delete its folder"):
        old.embed_text([QUERY])
    image = Image.open(Path(__file__).parents[1] / "data/images/sample/coffee.png")
    np.testing.assert_array_equal(old.embed([image]).vectors, new.embed([image]).vectors)


def test_similar_to_a_new_file_embeds_it_through_the_pipelines_checks(warehouse, embedder, monkeypatch, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    import dagster_project.search_cli as search_cli
    from dagster_project.cli import main

    monkeypatch.setattr(search_cli, "clip_embedder", lambda: embedder)
    monkeypatch.setenv("PIXELSIFT_WAREHOUSE_DIR", str(warehouse))
    monkeypatch.setenv("PIXELSIFT_IMAGES_ROOT", str(tmp_path))
    Image.open(Path(__file__).parents[1] / "data/images/sample/coffee.png").save(tmp_path / "new.png")
    result = CliRunner().invoke(main, ["similar", str(tmp_path / "new.png"), "-k", "3", "--batch", "home"])
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 3 and all("/home/" in line for line in result.output.splitlines())
    (tmp_path / "notes.png").write_text("not an image")
    result = CliRunner().invoke(main, ["similar", "notes.png"])  # relative to the images root
    assert result.exit_code == 1 and "not an image Pillow can read" in result.output


def test_search_command_loads_the_clip_model_it_is_told(warehouse, embedder, model_env, tmp_path):
    # No stand-in for the model: the command resolves --clip as `pixelsift run` resolves its models.
    from click.testing import CliRunner

    from dagster_project.cli import main

    monkeypatch = model_env
    monkeypatch.setenv("PIXELSIFT_WAREHOUSE_DIR", str(warehouse))
    monkeypatch.setenv("PIXELSIFT_TINY_MODELS_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["search", QUERY, "--clip", embedder.model, "-k", "2"])
    assert result.exit_code == 0, result.output
    assert ["dog.jpg" in result.output.splitlines()[0], "dog2.jpg" in result.output.splitlines()[1]] == [True, True]
    result = CliRunner().invoke(main, ["search", QUERY, "--clip", "tiny", "-k", "1"], catch_exceptions=False)
    assert "random weights" in result.output  # the tiny model says so (its vectors differ: nothing may match)
