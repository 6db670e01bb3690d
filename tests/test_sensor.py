"""The folder sensor against a real (ephemeral) Dagster instance."""

import json

from dagster import DagsterInstance, build_sensor_context

from dagster_project.sensors import batch_folder_sensor
from resources.settings import PixelsiftSettings


def evaluate(instance, root, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"settings": PixelsiftSettings(images_root=str(root))})
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
