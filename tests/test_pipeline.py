"""The whole pipeline on tiny random-weight models, through the real Dagster job and the real model code.

Outputs of random weights are meaningless, so these tests check structure, schema validity,
row accounting, reuse, determinism and error paths, never quality.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from PIL import Image

from assets import parquet_schemas as tables
from assets.caption_checks import unusable_caption
from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from dagster_project.definitions import build_definitions
from dagster_project.profiles import model_resources
from dagster_project.sensors import EVAL_ASSET_KEYS
from evals.checks import THRESHOLDS
from resources.settings import PixelsiftSettings
from resources.backends import ModelLoadError
from resources.warehouse import PARTIAL_DIR, partial_dir, partition_file, query
from tests.conftest import MAX_PIXELS_IN_TESTS, make_mixed_batch

PER_IMAGE = ["images", "captions", "image_metadata", "color_palettes", "clip_embeddings", "clusters"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    os.environ["PIXELSIFT_TINY_MODELS_DIR"] = str(tmp_path_factory.mktemp("tiny_models"))
    return model_resources("tiny")


class Counting:
    """Passes every call through to a real model resource and counts them (a spy, not a mock)."""

    def __init__(self, inner, fail: bool = False):
        self.inner, self.fail, self.calls = inner, fail, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _call(self, method, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise RuntimeError("simulated model crash")
        return getattr(self.inner, method)(*args, **kwargs)

    def caption(self, images, prompt):
        return self._call("caption", images, prompt)

    def embed(self, images):
        return self._call("embed", images)

    def generate_json(self, chats, **kwargs):
        return self._call("generate_json", chats, **kwargs)


def run_batch(images_root, warehouse, models, batch="mixed", reuse=True):
    settings = PixelsiftSettings(images_root=str(images_root), warehouse_dir=str(warehouse),
                                 max_image_pixels=MAX_PIXELS_IN_TESTS, reuse_results=reuse)
    defs = build_definitions(settings, models)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", [batch])
    job = defs.resolve_job_def("process_batch")
    result = job.execute_in_process(partition_key=batch, instance=instance)
    assert result.success
    return {name: pq.read_table(partition_file(warehouse, name, batch)) for name in PER_IMAGE + ["cluster_labels"]}


def spies(models, fail=False):
    return {key: Counting(resource, fail=fail) for key, resource in models.items()}


@pytest.fixture(scope="session")
def first_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    images_root = make_mixed_batch(root)
    counted = spies(tiny_models)
    out = run_batch(images_root, root / "warehouse", counted)
    return images_root, root / "warehouse", out, counted


def test_every_asset_has_its_schema_and_every_file_its_row(first_run):
    _, _, out, _ = first_run
    expected = {"images": tables.IMAGES, "captions": tables.CAPTIONS, "image_metadata": tables.IMAGE_METADATA,
                "color_palettes": tables.COLOR_PALETTES, "clusters": tables.CLUSTERS,
                "cluster_labels": tables.CLUSTER_LABELS}
    for name, schema in expected.items():
        assert out[name].schema.remove_metadata() == schema, name
    assert out["clip_embeddings"].schema.field("embedding").type.list_size > 0

    paths = out["images"].column("path").to_pylist()
    assert len(paths) == 10 and len(set(paths)) == 10
    errors = {r["path"]: r["error"] for r in out["images"].to_pylist() if r["status"] == "error"}
    assert set(errors) == {"truncated.jpg", "notes.txt", "empty.png", "huge.png"}
    for name in PER_IMAGE:
        rows = {r["path"]: r for r in out[name].to_pylist()}
        assert list(rows) == paths, name  # same rows, same order: nothing lost or duplicated
        for path, reason in errors.items():
            assert rows[path]["status"] == "error" and rows[path]["error"] == reason, (name, path)
        assert all(rows[p]["status"] == "ok" for p in paths if p not in errors), name


def test_metadata_rows_are_schema_valid_and_accounted(first_run):
    _, _, out, _ = first_run
    palettes = {r["path"]: r["colors"] for r in out["color_palettes"].to_pylist()}
    captions = {r["path"]: r for r in out["captions"].to_pylist()}
    for row in out["image_metadata"].to_pylist():
        if row["status"] != "ok":
            continue
        ImageMetadataOutput.model_validate({k: row[k] for k in ImageMetadataOutput.model_fields})
        assert row["description"] == captions[row["path"]]["caption"]
        assert row["color_palette"] == palettes[row["path"]]
        assert row["fallback_used"] == (row["fallback_reason"] is not None) == (not row["json_valid"])
        if unusable_caption(row["description"]):  # a random captioner writes some captions without words
            assert row["attempts"] == 0 and row["fallback_reason"] == unusable_caption(row["description"])
        else:
            assert row["attempts"] >= 1 and row["llm_ms"] > 0
        assert row["processing_time_ms"] >= row["llm_ms"] + captions[row["path"]]["ms"]
        assert "+" in row["vlm_model"]
    for row in out["cluster_labels"].to_pylist():
        ClusterLabelOutput.model_validate({k: row[k] for k in ClusterLabelOutput.model_fields})


def test_identical_files_are_computed_once(first_run):
    _, _, out, counted = first_run
    captions = {r["path"]: r["caption"] for r in out["captions"].to_pylist()}
    assert captions["chelsea.png"] == captions["sub/chelsea_copy.png"]
    # 6 decodable files, 5 distinct images: one captioner call of 5 (batch size 8).
    assert counted["captioner"].calls == 1


def test_embeddings_clusters_and_labels_fit_together(first_run):
    _, _, out, _ = first_run
    ok = [r for r in out["clip_embeddings"].to_pylist() if r["status"] == "ok"]
    vectors = np.array([r["embedding"] for r in ok])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    clusters = [r for r in out["clusters"].to_pylist() if r["status"] == "ok"]
    ids = {r["cluster_id"] for r in clusters if r["cluster_id"] >= 0}
    labels = out["cluster_labels"].to_pylist()
    assert sorted(r["cluster_id"] for r in labels) == sorted(ids)
    usable = {r["path"] for r in out["captions"].to_pylist() if r["status"] == "ok" and not unusable_caption(r["caption"])}
    for label in labels:
        members = [r for r in clusters if r["cluster_id"] == label["cluster_id"]]
        assert label["total_images"] == len(members)
        # Representatives whose caption has words: the others are left out of the prompt.
        assert label["images_analyzed"] == sum(r["is_representative"] and r["path"] in usable for r in members) <= 5
    assert all(not r["is_representative"] for r in clusters if r["cluster_id"] == -1)


def test_rerun_of_an_unchanged_batch_calls_no_model_and_gives_the_same_rows(first_run, tiny_models):
    images_root, warehouse, first, _ = first_run
    counted = spies(tiny_models)
    second = run_batch(images_root, warehouse, counted)
    assert {k: c.calls for k, c in counted.items()} == {"captioner": 0, "metadata_llm": 0, "clip_embedder": 0}
    for name in ["captions", "image_metadata", "clip_embeddings"]:
        ok = [r for r in second[name].to_pylist() if r["status"] == "ok"]
        assert ok and all(r["reused"] for r in ok), name
    assert second["cluster_labels"].column("reused").to_pylist() == [True] * second["cluster_labels"].num_rows
    drop = ["reused", "ms", "llm_ms", "processing_time_ms"]
    for name in PER_IMAGE + ["cluster_labels"]:
        keep = [c for c in first[name].column_names if c not in drop]
        assert second[name].select(keep).equals(first[name].select(keep)), name


def test_deterministic_without_reuse(first_run, tiny_models, tmp_path):
    images_root, _, first, _ = first_run
    again = run_batch(images_root, tmp_path / "wh", tiny_models, reuse=False)
    for name, column in [("captions", "caption"), ("image_metadata", "tags"), ("clusters", "cluster_id"),
                         ("clip_embeddings", "embedding"), ("cluster_labels", "cluster_name")]:
        assert again[name].column(column).equals(first[name].column(column)), name


def test_model_crash_becomes_error_rows_not_a_failed_run(first_run, tiny_models, tmp_path):
    images_root, _, _, _ = first_run
    broken = spies(tiny_models)
    broken["captioner"] = Counting(tiny_models["captioner"], fail=True)
    out = run_batch(images_root, tmp_path / "wh", broken)
    caption_rows = [r for r in out["captions"].to_pylist() if r["status"] == "error"]
    crashed = [r for r in caption_rows if r["error"].startswith("model failed: RuntimeError")]
    assert len(crashed) == 6  # every decodable file
    metadata = {r["path"]: r for r in out["image_metadata"].to_pylist()}
    assert all(metadata[r["path"]]["error"].startswith("no caption: model failed") for r in crashed)
    # Retried: the chunk twice, then each of the 5 distinct images twice.
    assert broken["captioner"].calls == 2 + 5 * 2
    # Embeddings and palettes do not depend on captions and are still computed.
    assert all(r["status"] == "ok" for r in out["clip_embeddings"].to_pylist() if r["path"] in metadata
               and r["path"] in {c["path"] for c in crashed})


@pytest.mark.parametrize("files", [{}, {"a.jpg": b"not a jpeg", "b.png": b""}], ids=["empty", "all_broken"])
def test_a_batch_without_one_decodable_image_still_completes(files, tiny_models, tmp_path):
    batch = tmp_path / "images" / "nothing"
    batch.mkdir(parents=True)
    for name, data in files.items():
        (batch / name).write_bytes(data)
    out = run_batch(tmp_path / "images", tmp_path / "wh", spies(tiny_models), batch="nothing")
    for name in PER_IMAGE:
        assert out[name].num_rows == len(files) and set(out[name].column("status").to_pylist()) <= {"error"}, name
    assert out["cluster_labels"].num_rows == 0


def test_duckdb_answers_over_the_warehouse(first_run):
    _, warehouse, _, _ = first_run
    rows = query(warehouse, "select status, count(*) from images where batch = 'mixed' group by 1 order by 1")
    assert rows.fetchall() == [("error", 4), ("ok", 6)]
    joined = query(warehouse, "select count(*) from image_metadata m join clusters c using (batch, path) "
                              "where m.status = 'ok'")
    assert joined.fetchall() == [(6,)]


def test_cli_runs_the_tiny_profile_and_queries(tmp_path, tiny_models):
    env = {**os.environ, "PIXELSIFT_IMAGES_ROOT": str(ROOT / "data" / "images"),
           "PIXELSIFT_WAREHOUSE_DIR": str(tmp_path / "wh"), "PIXELSIFT_REPORTS_DIR": str(tmp_path / "reports"),
           "DAGSTER_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "dagster_project.cli"]
    run = subprocess.run(cli + ["run", "--batch", "sample", "--models", "tiny"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "meaningless" in run.stderr
    assert (tmp_path / "home" / "locks" / "large_model0.lock").exists()  # its model steps took the machine's lock
    for name in PER_IMAGE + ["cluster_labels"]:
        assert "batch=sample" in run.stdout and name in run.stdout
        assert partition_file(tmp_path / "wh", name, "sample").exists()
    # A collection of one batch has that batch's clusters: their labels are the batch's, reused.
    shared = query(tmp_path / "wh", "select c.reused from collection_cluster_labels c "
                                    "join cluster_labels b using (fingerprint)").fetchall()
    assert shared and all(reused for (reused,) in shared)
    out = subprocess.run(cli + ["query", "select count(*) as n from captions", "--format", "csv"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["n", "10"]
    bad = subprocess.run(cli + ["query", "drop view captions"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "read-only" in bad.stderr


def test_cli_runs_every_batch_folder_with_all(tmp_path, tiny_models, monkeypatch):
    from click.testing import CliRunner

    from dagster_project.cli import main

    root = tmp_path / "images"
    for batch, names in {"trip": ["coffee.png", "rocket.jpg"], "home": ["chelsea.png"]}.items():
        (root / batch).mkdir(parents=True)
        for name in names:
            Image.open(ROOT / "data" / "images" / "sample" / name).resize((64, 48)).save(root / batch / name)
    (root / "home" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "bad name").mkdir()  # not a valid batch key: skipped
    for name, value in {"IMAGES_ROOT": root, "WAREHOUSE_DIR": tmp_path / "wh", "REPORTS_DIR": tmp_path / "reports",
                        "MODELS": "tiny"}.items():
        monkeypatch.setenv(f"PIXELSIFT_{name}", str(value))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))

    result = CliRunner().invoke(main, ["run", "--all"])
    assert result.exit_code == 0, result.output
    assert "Batch 'home' done" in result.output and "Batch 'trip' done" in result.output
    counts = query(tmp_path / "wh", "select batch, status, count(*) from images group by all order by all")
    assert counts.fetchall() == [("home", "error", 1), ("home", "ok", 1), ("trip", "ok", 2)]
    # The collection's clusters and labels came after the batches; an explicit recluster of the same
    # images finds the same groups and keeps their ids.
    assert "Clusters across all batches:" in result.output
    ids = "select batch, path, cluster_id from collection_clusters order by all"
    before = query(tmp_path / "wh", ids).fetchall()
    assert len(before) == 3 and query(tmp_path / "wh", "select count(*) from collection_cluster_labels").fetchall() == [
        (len({c for _, _, c in before if c >= 0}),)]
    recluster = CliRunner().invoke(main, ["recluster"])
    assert recluster.exit_code == 0, recluster.output
    assert query(tmp_path / "wh", ids).fetchall() == before

    missing = CliRunner().invoke(main, ["run", "--batch", "trip", "--batch", "gone"])
    assert missing.exit_code != 0 and "no batch folder" in missing.output and "gone" in missing.output


def test_dagster_definitions_validate():
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run([str(dagster), "definitions", "validate", "-m", "dagster_project.definitions"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_an_unloadable_model_fails_its_step_with_a_clear_message(first_run, tiny_models, tmp_path):
    from resources.captioner import CaptionerResource

    images_root, _, _, _ = first_run
    (tmp_path / "not_a_model").mkdir()
    models = {**tiny_models, "captioner": CaptionerResource(model=str(tmp_path / "not_a_model"), device="cpu",
                                                            dtype="float32")}
    settings = PixelsiftSettings(images_root=str(images_root), warehouse_dir=str(tmp_path / "wh"),
                                 max_image_pixels=MAX_PIXELS_IN_TESTS)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["mixed"])
    result = build_definitions(settings, models).resolve_job_def("process_batch").execute_in_process(
        partition_key="mixed", instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "captions"
    assert "could not load model" in str(failure.event_specific_data.error)
    # Stages that do not need the captioner still ran.
    assert partition_file(tmp_path / "wh", "clip_embeddings", "mixed").exists()


def test_an_eval_only_run_rescores_without_touching_the_pipeline(first_run, tiny_models):
    """What the folder sensor launches when only a batch's reference file changed."""
    images_root, warehouse, _, _ = first_run
    settings = PixelsiftSettings(images_root=str(images_root), warehouse_dir=str(warehouse),
                                 max_image_pixels=MAX_PIXELS_IN_TESTS)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["mixed"])
    job = build_definitions(settings, spies(tiny_models, fail=True)).resolve_job_def("process_batch")
    result = job.execute_in_process(partition_key="mixed", instance=instance, asset_selection=EVAL_ASSET_KEYS)
    assert result.success
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == set(EVAL_ASSET_KEYS)
    checks = {e.asset_check_key.name for e in result.get_asset_check_evaluations()}
    assert checks == {t.check for t in THRESHOLDS} | {"baseline_loads_cleanly"}


class Stopping(Counting):
    """A real model resource that dies after ``stop_after`` calls, as a killed or out-of-memory step
    would: ModelLoadError is never retried, so the step fails there. Records each call's size."""

    items_per_call = 2  # several chunks from the 5 distinct images of the batch

    def __init__(self, inner, stop_after=None):
        super().__init__(inner)
        self.stop_after, self.items = stop_after, []

    def _call(self, method, *args, **kwargs):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise ModelLoadError("simulated stop")
        self.items.append((kwargs["schema"].__name__, len(args[0])) if "schema" in kwargs else (method, len(args[0])))
        return super()._call(method, *args, **kwargs)


def test_a_stopped_step_resumes_from_its_saved_chunks(first_run, tiny_models, tmp_path):
    images_root, _, first, _ = first_run
    warehouse = tmp_path / "wh"
    settings = PixelsiftSettings(images_root=str(images_root), warehouse_dir=str(warehouse),
                                 max_image_pixels=MAX_PIXELS_IN_TESTS)

    def run(stops):
        models = {key: Stopping(model, stops.get(key)) for key, model in tiny_models.items()}
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("batch", ["mixed"])
        result = build_definitions(settings, models).resolve_job_def("process_batch").execute_in_process(
            partition_key="mixed", instance=instance, raise_on_error=False)
        return result, models

    # Captions and CLIP die after their first chunk (2 of the 5 distinct images), which stays saved.
    result, _ = run({"captioner": 1, "clip_embedder": 1})
    assert not result.success
    for asset in ("captions", "clip_embeddings"):
        assert len(list(partial_dir(warehouse, asset, "mixed").glob("part-*.parquet"))) == 1
        assert not partition_file(warehouse, asset, "mixed").exists()

    # The next run computes only the other 3; metadata dies after its first chunk.
    result, models = run({"metadata_llm": 1})
    assert not result.success
    assert models["captioner"].items == [("caption", 2), ("caption", 1)]
    assert models["clip_embedder"].items == [("embed", 2), ("embed", 1)]
    assert not partial_dir(warehouse, "captions", "mixed").exists()  # the partition holds it now

    result, models = run({})
    assert result.success
    # The images whose caption has words, less the first chunk of 2 saved by the stopped run.
    usable = {r["image_id"] for r in first["captions"].to_pylist() if r["status"] == "ok"
              and not unusable_caption(r["caption"])}
    left = len(usable) - 2
    assert [n for kind, n in models["metadata_llm"].items if kind == "ImageMetadataOutput"] == \
        [min(2, left - start) for start in range(0, left, 2)]
    assert not any((warehouse / PARTIAL_DIR).rglob("*.parquet"))

    # Same rows as the uninterrupted run (CLIP ran in chunks of 2 here: floats agree to rounding).
    close = {"embedding", "distance"}
    drop = {"reused", "ms", "llm_ms", "processing_time_ms"} | close
    for name in PER_IMAGE + ["cluster_labels"]:
        resumed = pq.read_table(partition_file(warehouse, name, "mixed"))
        keep = [c for c in first[name].column_names if c not in drop]
        assert resumed.select(keep).equals(first[name].select(keep)), name
        for column in close & set(first[name].column_names):
            for a, b in zip(resumed.column(column).to_pylist(), first[name].column(column).to_pylist()):
                assert (a is None) == (b is None) and (a is None or np.allclose(a, b, atol=1e-5)), (name, column)


def test_the_command_line_loads_without_torch_or_dagster():
    """Every `pixelsift` command imports this module, and so does every worker process a command
    starts (spawn runs the parent's main script again): torch there cost each of them 5 s."""
    code = "import sys, dagster_project.cli; print(sorted({'torch', 'transformers', 'dagster'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
