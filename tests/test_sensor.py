"""The folder sensor against a real (ephemeral) Dagster instance."""

import json

from dagster import DagsterInstance, build_sensor_context

from dagster_project.sensors import (
    EVAL_ASSET_KEYS,
    SKIPPED_FOLDERS_TAG,
    batch_folder_sensor,
    folder_signature,
)
from resources.settings import PixelsiftSettings

# Any cursor means "not the first tick"; this one has seen no folders yet.
AFTER_FIRST_TICK = "{}"


def evaluate(instance, root, cursor=AFTER_FIRST_TICK, baselines_dir=None, run_existing=False):
    settings = PixelsiftSettings(images_root=str(root), baselines_dir=str(baselines_dir or root / "no_baselines"),
                                 run_existing_batches=run_existing)
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"settings": settings})
    return batch_folder_sensor(context)


def test_new_folders_become_partitions_and_runs(tmp_path):
    (tmp_path / "trip").mkdir()
    (tmp_path / "trip" / "a.jpg").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "bad name").mkdir()
    instance = DagsterInstance.ephemeral()
    result = evaluate(instance, tmp_path)
    # The skipped folder is on the runs, since a tick with runs shows no skip reason.
    assert {r.tags[SKIPPED_FOLDERS_TAG] for r in result.run_requests} == {
        "'bad name' (batch key 'bad name' must be 1-128 letters, digits, '_', '-' or '.', starting with a letter "
        "or digit)"}
    assert sorted(r.partition_key for r in result.run_requests) == ["empty", "trip"]
    [add] = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["empty", "trip"]

    # Nothing changed: no new runs. A file added to one batch: that batch runs again.
    instance.add_dynamic_partitions("batch", ["empty", "trip"])
    again = evaluate(instance, tmp_path, result.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    (tmp_path / "trip" / "b.jpg").write_bytes(b"y")
    changed = evaluate(instance, tmp_path, again.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["trip"]
    assert changed.run_requests[0].run_key != result.run_requests[1].run_key
    assert set(json.loads(changed.cursor)) == {"empty", "trip"}


def test_missing_root_is_quiet(tmp_path):
    result = evaluate(DagsterInstance.ephemeral(), tmp_path / "nope")
    assert result.run_requests == []
    assert "does not exist" in result.skip_reason.skip_message


def test_a_changed_reference_file_reruns_only_the_evaluation(tmp_path):
    images, baselines = tmp_path / "images", tmp_path / "baselines"
    (images / "trip").mkdir(parents=True)
    (images / "trip" / "a.jpg").write_bytes(b"x")
    baselines.mkdir()
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["trip"])
    first = evaluate(instance, images, baselines_dir=baselines)
    assert [r.asset_selection for r in first.run_requests] == [None]  # a new batch: everything

    (baselines / "trip.jsonl").write_text("{}\n")  # e.g. `pixelsift baseline import ... --batch trip`
    imported = evaluate(instance, images, first.cursor, baselines_dir=baselines)
    [run] = imported.run_requests
    assert run.partition_key == "trip" and run.asset_selection == EVAL_ASSET_KEYS
    assert {k.to_user_string() for k in run.asset_selection} == {
        "gemini_baseline", "metadata_eval", "cluster_eval", "eval_summary", "eval_report"}
    assert evaluate(instance, images, imported.cursor, baselines_dir=baselines).run_requests == []

    # Images and reference both changed: the whole batch runs, once.
    (baselines / "trip.jsonl").write_text("{}\n{}\n")
    (images / "trip" / "b.jpg").write_bytes(b"y")
    [both] = evaluate(instance, images, imported.cursor, baselines_dir=baselines).run_requests
    assert both.asset_selection is None and len({first.run_requests[0].run_key, run.run_key, both.run_key}) == 3


def test_a_cursor_from_before_baselines_were_watched_reruns_nothing(tmp_path):
    (tmp_path / "trip").mkdir()
    (tmp_path / "trip" / "a.jpg").write_bytes(b"x")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["trip"])
    old_cursor = json.dumps({"trip": folder_signature(tmp_path / "trip")})
    assert evaluate(instance, tmp_path, old_cursor).run_requests == []


def test_first_tick_registers_existing_folders_without_running_them(tmp_path):
    # With the default hub models, running them would start a ~24 GB download nobody asked for.
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "a.jpg").write_bytes(b"x")
    instance = DagsterInstance.ephemeral()
    first = evaluate(instance, tmp_path, cursor=None)
    assert first.run_requests == []
    [add] = first.dynamic_partitions_requests
    assert add.partition_keys == ["sample"]
    assert "registered the 1 batch folder(s)" in first.skip_reason.skip_message
    assert "PIXELSIFT_RUN_EXISTING_BATCHES=1" in first.skip_reason.skip_message

    # From then on, what appears or changes runs; what was there already stays put.
    instance.add_dynamic_partitions("batch", add.partition_keys)
    (tmp_path / "trip").mkdir()
    later = evaluate(instance, tmp_path, cursor=first.cursor)
    assert [r.partition_key for r in later.run_requests] == ["trip"]
    (tmp_path / "sample" / "b.jpg").write_bytes(b"y")
    assert [r.partition_key for r in evaluate(instance, tmp_path, later.cursor).run_requests] == ["sample"]


def test_first_tick_runs_existing_folders_when_asked(tmp_path, monkeypatch):
    (tmp_path / "sample").mkdir()
    monkeypatch.setenv("PIXELSIFT_RUN_EXISTING_BATCHES", "1")
    assert PixelsiftSettings().run_existing_batches
    result = evaluate(DagsterInstance.ephemeral(), tmp_path, cursor=None, run_existing=True)
    assert [r.partition_key for r in result.run_requests] == ["sample"]


def test_skip_reason_names_skipped_folders_and_partitions_without_a_folder(tmp_path):
    (tmp_path / "Summer 2024").mkdir()
    (tmp_path / "trip").mkdir()
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["trip", "typo"])  # "typo" added by hand, no such folder
    first = evaluate(instance, tmp_path, cursor=None)
    again = evaluate(instance, tmp_path, cursor=first.cursor)
    assert again.run_requests == []
    reason = again.skip_reason.skip_message
    assert reason.startswith(f"No new or changed batch folders in {tmp_path}.")
    assert "Skipped folders: 'Summer 2024' (batch key 'Summer 2024' must be" in reason
    assert "Partitions without a folder: typo (remove them with `pixelsift batches prune`)" in reason


def test_sensor_has_a_markdown_description():
    assert "PIXELSIFT_RUN_EXISTING_BATCHES" in batch_folder_sensor.description
    assert "``" not in batch_folder_sensor.description
