"""`pixelsift batches prune` against a real Dagster instance in a temporary DAGSTER_HOME."""

from click.testing import CliRunner
from dagster import DagsterInstance

from dagster_project.cli import main


def run_prune(tmp_path, monkeypatch, *args):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIXELSIFT_IMAGES_ROOT", str(tmp_path / "images"))
    return CliRunner().invoke(main, ["batches", "prune", *args])


def partitions(tmp_path):
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        return sorted(instance.get_dynamic_partitions("batch"))


def add_partitions(tmp_path, keys):
    (tmp_path / "home").mkdir(exist_ok=True)
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("batch", keys)


def test_prune_removes_only_partitions_without_a_folder(tmp_path, monkeypatch):
    (tmp_path / "images" / "trip").mkdir(parents=True)
    (tmp_path / "images" / "Summer 2024").mkdir()
    add_partitions(tmp_path, ["trip", "typo", "Summer 2024"])  # the last two added by hand

    dry = run_prune(tmp_path, monkeypatch, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would remove partition 'typo'" in dry.output and "'Summer 2024'" in dry.output
    assert partitions(tmp_path) == ["Summer 2024", "trip", "typo"]

    result = run_prune(tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "removed partition 'typo'" in result.output
    assert partitions(tmp_path) == ["trip"]
    assert "nothing to remove" in run_prune(tmp_path, monkeypatch).output


def test_prune_removes_nothing_when_the_images_root_is_missing(tmp_path, monkeypatch):
    # An unmounted drive must not cost every partition.
    add_partitions(tmp_path, ["trip"])
    result = run_prune(tmp_path, monkeypatch)
    assert result.exit_code == 1 and "does not exist" in result.output
    assert partitions(tmp_path) == ["trip"]
