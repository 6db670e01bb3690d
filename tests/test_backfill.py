"""Backfills over many batches: one run over a range of batches loads each model once, writes each
batch's partition as a run of that batch would, resumes after a crash, and the scheduled backfill
picks exactly the stale batches, saying why.

Real Dagster runs (execute_in_process over a range of partitions, the way a single-run backfill
launches them), the real tiny models, real Parquet; the sensor is evaluated for real against the
instance and warehouse those runs wrote.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, DefaultSensorStatus, build_sensor_context

from dagster_project.batch_runs import range_tags, run_batches
from dagster_project.definitions import build_definitions
from dagster_project.profiles import model_resources
from dagster_project.schedules import STALE_BATCHES_TAG, stale_batches_backfill
from resources import captioner as captioner_module
from resources import clip_embedder as clip_module
from resources import torch_runtime
from resources.backends import ModelLoadError
from resources.partitions import batch_ranges
from resources.settings import PixelsiftSettings
from resources.warehouse import partition_file
from tests.conftest import solid

BATCHES = ["b1", "b2", "b3"]
PIPELINE = ["images", "captions", "color_palettes", "image_metadata", "clip_embeddings", "clusters", "cluster_labels"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    os.environ.setdefault("PIXELSIFT_TINY_MODELS_DIR", str(tmp_path_factory.mktemp("tiny_models")))
    return model_resources("tiny")


def write_batch(root: Path, batch: str, colors: list[tuple[int, int, int]]) -> None:
    (root / batch).mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(colors):
        solid(color).save(root / batch / f"img{i}.png")


def settings_for(tmp: Path) -> PixelsiftSettings:
    return PixelsiftSettings(images_root=str(tmp / "images"), warehouse_dir=str(tmp / "warehouse"),
                             baselines_dir=str(tmp / "baselines"), reports_dir=str(tmp / "reports"))


class LoadCounter:
    """Counts real model loads: load_once calls its loader only when the model is not loaded yet."""

    def __init__(self, monkeypatch):
        self.loads: Counter = Counter()
        real = torch_runtime.load_once

        def counting(key, loader, **kwargs):
            def counted():
                self.loads[key[0]] += 1
                return loader()
            return real(key, counted, **kwargs)

        for module in (torch_runtime, captioner_module, clip_module):
            monkeypatch.setattr(module, "load_once", counting)
        torch_runtime.clear_model_cache()


@pytest.fixture(scope="module")
def backfilled(tiny, tmp_path_factory):
    """Three batches of distinct images, run as `pixelsift run --all` runs them."""
    tmp = tmp_path_factory.mktemp("backfill")
    for n, batch in enumerate(BATCHES):
        write_batch(tmp / "images", batch, [(40 * n, 200, 10), (250, 40 * n, 90)])
    settings = settings_for(tmp)
    defs = build_definitions(settings, tiny)
    instance = DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = LoadCounter(monkeypatch)
        outcome = run_batches(defs, instance, BATCHES, tags={})
    return tmp, settings, defs, instance, outcome, counter.loads


def test_a_run_over_several_batches_loads_each_model_once(backfilled):
    _, _, _, instance, outcome, loads = backfilled
    assert not outcome.failed and [b for b, _ in outcome.done] == BATCHES
    # One pipeline run over the range (its id is every batch's), then one evaluation run per batch.
    assert len({run_id for _, run_id in outcome.done}) == 1
    assert loads["blip2"] == 1 and loads["metadata_llm"] == 1 and loads["open_clip"] == 1, loads


def test_each_batch_gets_its_own_partition_and_materialization(backfilled):
    tmp, _, _, instance, _, _ = backfilled
    for n, batch in enumerate(BATCHES):
        for asset in PIPELINE:
            assert partition_file(tmp / "warehouse", asset, batch).is_file(), (asset, batch)
        images = pq.read_table(partition_file(tmp / "warehouse", "images", batch))
        assert sorted(images.column("path").to_pylist()) == ["img0.png", "img1.png"]
        captions = pq.read_table(partition_file(tmp / "warehouse", "captions", batch))
        assert captions.column("image_id").to_pylist() == images.column("image_id").to_pylist()
        record = instance.fetch_materializations(AssetKey("captions"), limit=10).records
        by_batch = {r.partition_key: r.asset_materialization.metadata for r in record}
        assert by_batch[batch]["dagster/row_count"].value == 2
    ids = [set(pq.read_table(partition_file(tmp / "warehouse", "images", b)).column("image_id").to_pylist())
           for b in BATCHES]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # distinct images: every batch was computed


class CrashingCaptioner:
    """The real tiny captioner, until the batch named: then the step fails as a lost model does."""

    def __init__(self, inner, crash_on_image_count: int):
        self.inner, self.left, self.captioned = inner, crash_on_image_count, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def caption(self, images, prompt):
        if self.left <= 0:
            raise ModelLoadError("simulated: the model went away mid-backfill")
        self.left -= len(images)
        self.captioned += len(images)
        return self.inner.caption(images, prompt)


def test_a_range_step_that_crashes_keeps_finished_batches_and_the_rerun_does_only_the_rest(tiny, tmp_path):
    for n, batch in enumerate(BATCHES):
        write_batch(tmp_path / "images", batch, [(n, 1, 2), (3, n, 4)])
    settings = settings_for(tmp_path)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", BATCHES)
    selection = [AssetKey("images"), AssetKey("captions")]

    def run(captioner):
        job = build_definitions(settings, {**tiny, "captioner": captioner}).resolve_job_def("process_batch")
        return job.execute_in_process(instance=instance, asset_selection=selection, tags=range_tags(BATCHES),
                                      raise_on_error=False)

    crashing = CrashingCaptioner(tiny["captioner"], crash_on_image_count=2)  # b1's two images, then it fails
    assert not run(crashing).success
    assert crashing.captioned == 2
    again = CrashingCaptioner(tiny["captioner"], crash_on_image_count=100)
    assert run(again).success
    assert again.captioned == 4  # b2 and b3 only: b1's captions were saved when its chunk finished
    for batch in BATCHES:
        assert pq.read_table(partition_file(tmp_path / "warehouse", "captions", batch)).num_rows == 2


def test_batch_ranges_follow_partition_order_and_the_run_limit():
    assert batch_ranges(list("abcdef"), list("fabd")) == [["a", "b"], ["d"], ["f"]]
    assert batch_ranges(list("abcdef"), list("abcdef"), 4) == [list("abcd"), list("ef")]
    with pytest.raises(ValueError, match="zz"):
        batch_ranges(["a"], ["a", "zz"])


def evaluate(settings, models, instance, cursor: str | None):
    """One tick of the sensor as the daemon evaluates it, against the code location's definitions."""
    defs = build_definitions(settings, models)
    context = build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
                                   resources={"settings": settings, **models})
    return stale_batches_backfill.evaluate_tick(context)


LONG_AGO = str(time.time() - 3 * 86400)  # a cursor before the last daily tick: a tick is due


def test_the_schedule_is_off_by_default_and_acts_only_on_a_due_tick(backfilled, tiny):
    _, settings, defs, instance, _, _ = backfilled
    assert stale_batches_backfill.default_status == DefaultSensorStatus.STOPPED
    assert defs.resolve_sensor_def("stale_batches_backfill") is not None
    first = evaluate(settings, tiny, instance, None)
    assert not first.run_requests and "first backfill" in first.skip_message and first.cursor
    not_due = evaluate(settings, tiny, instance, first.cursor)
    assert not not_due.run_requests and "Next backfill" in not_due.skip_message


def test_an_unchanged_collection_launches_nothing(backfilled, tiny):
    _, settings, _, instance, _, _ = backfilled
    result = evaluate(settings, tiny, instance, LONG_AGO)
    assert not result.run_requests, result.skip_message
    assert "none of the 3 batches is stale" in result.skip_message


def test_a_changed_batch_launches_one_backfill_of_just_that_batch(backfilled, tiny):
    tmp, settings, _, instance, _, _ = backfilled
    added = tmp / "images" / "b2" / "new.png"
    solid((1, 2, 3)).save(added)
    try:
        result = evaluate(settings, tiny, instance, LONG_AGO)
    finally:
        added.unlink()  # the folder is as the run read it again, for the tests after this one
    [request] = result.run_requests
    subset = request.asset_graph_subset
    assert {key.partition_key for key in subset.iterate_asset_partitions()} == {"b2"}
    assert AssetKey("captions") in subset.asset_keys and AssetKey("eval_summary") in subset.asset_keys
    assert request.tags[STALE_BATCHES_TAG] == "b2: new or changed images"


def test_a_changed_model_setting_makes_every_batch_stale_and_says_which(backfilled, tiny):
    _, settings, _, instance, _, _ = backfilled
    captioner = tiny["captioner"]
    longer = type(captioner)(**{**captioner.model_dump(), "max_new_tokens": captioner.max_new_tokens + 1})
    [request] = evaluate(settings, {**tiny, "captioner": longer}, instance, LONG_AGO).run_requests
    assert {k.partition_key for k in request.asset_graph_subset.iterate_asset_partitions()} == set(BATCHES)
    assert request.tags[STALE_BATCHES_TAG] == "; ".join(f"{b}: model changed: captioner" for b in BATCHES)
