"""The folder sensor against a real (ephemeral) Dagster instance."""

import json

from dagster import DagsterInstance, build_sensor_context

from dagster_project.sensors import EVAL_ASSET_KEYS, batch_folder_sensor, folder_signature
from resources.settings import PixelsiftSettings


def evaluate(instance, root, cursor=None, baselines_dir=None):
    settings = PixelsiftSettings(images_root=str(root), baselines_dir=str(baselines_dir or root / "no_baselines"))
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
