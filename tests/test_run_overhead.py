"""What every `pixelsift run` pays whatever the batch: model hashing, the collector, and the tool
that shows where the time goes (benchmarks/run_timeline.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resources import model_names
from resources.model_names import hash_cache_file, model_identity

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hash_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache" / "model_file_hashes.json"
    monkeypatch.setenv("PIXELSIFT_MODEL_HASH_CACHE", str(cache))
    monkeypatch.setattr(model_names, "_hashes", {})  # as in a new process
    return cache


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _identity_in_a_new_process(model: Path) -> str:
    code = f"from resources.model_names import model_identity; print(model_identity({str(model)!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=os.environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_an_unchanged_model_is_not_read_again_by_the_next_process(hash_cache, tmp_path, monkeypatch):
    model = _model(tmp_path / "m", b"\x01" * 4096)
    identity = _identity_in_a_new_process(model)
    assert hash_cache_file() == hash_cache and hash_cache.is_file()
    monkeypatch.setattr(model_names, "_sha256", lambda path: pytest.fail(f"{path} was read again"))
    assert model_identity(str(model)) == identity


def test_a_rewritten_file_is_hashed_again_even_with_its_old_size_and_mtime(hash_cache, tmp_path):
    model = _model(tmp_path / "m", b"\x01" * 4096)
    identity = _identity_in_a_new_process(model)
    weights = model / "model.safetensors"
    before = weights.stat()
    weights.write_bytes(b"\x02" * 4096)  # new weights, same size
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime, as `cp -p` keeps it
    assert _identity_in_a_new_process(model) != identity
    model_names._hashes.clear()
    assert model_identity(str(model)) == _identity_in_a_new_process(model)


def test_a_damaged_or_unwritable_cache_only_costs_a_hash(hash_cache, tmp_path, monkeypatch):
    model = _model(tmp_path / "m", b"\x01" * 4096)
    identity = model_identity(str(model))
    hash_cache.write_text("{not json")
    model_names._hashes.clear()
    assert model_identity(str(model)) == identity
    assert json.loads(hash_cache.read_text())  # written anew
    monkeypatch.setenv("PIXELSIFT_MODEL_HASH_CACHE", str(model / "config.json" / "cache.json"))  # cannot be made
    model_names._hashes.clear()
    assert model_identity(str(model)) == identity
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]  # no temporary left


def test_the_command_skips_the_collection_over_everything_loaded_at_exit():
    # Seconds per `pixelsift run` once torch is loaded (dagster_project/long_lived.py). The check is
    # registered before the command's own exit handler, so it runs after it.
    code = ("import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
            "from dagster_project.cli import main; main(['run', '--help'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip().endswith("frozen True"), out.stdout[-500:] + out.stderr[-2000:]


def test_the_timeline_of_a_command_has_each_phase_in_order(tmp_path):
    from benchmarks.run_timeline import format_timeline, timed_command, timeline

    env = os.environ | {"PYTHONPATH": str(ROOT)}
    spawned, exited, marks = timed_command(["run", "--help"], env, tmp_path)
    phases = timeline(spawned, exited, marks, runs=[])
    labels = [label for label, _, _ in phases]
    assert labels[:3] == ["pixelsift run, process start to exit", "interpreter start", "CLI import"]
    assert labels[-1] == "exit: interpreter teardown"
    assert all(start <= end for _, start, end in phases) and phases[0][1] == spawned
    assert "import dagster_project.definitions" not in labels  # --help loads no definitions
    assert format_timeline(phases, spawned).splitlines()[-1].startswith("wall ")
    assert set(marks["collections"]) == {"0", "1", "2"}  # collections by generation, as JSON keys


def test_run_inside_a_longer_lived_process_leaves_the_collector_as_it_was(tmp_path, monkeypatch):
    # pixelsift run freezes what it loaded for its own duration only: a test's CliRunner (or any
    # caller) must not be left with garbage the collector can no longer free.
    import gc

    from click.testing import CliRunner

    from dagster_project.cli import main

    (tmp_path / "images" / "empty").mkdir(parents=True)
    for name, value in {"IMAGES_ROOT": "images", "WAREHOUSE_DIR": "wh", "REPORTS_DIR": "reports"}.items():
        monkeypatch.setenv(f"PIXELSIFT_{name}", str(tmp_path / value))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    frozen = []
    monkeypatch.setattr("dagster_project.cli.freeze_long_lived", lambda: (gc.freeze(), frozen.append(1)))
    result = CliRunner().invoke(main, ["run", "--batch", "empty", "--batch", "nowhere", "--models", "tiny"])
    assert result.exit_code != 0 and "no batch folder" in result.output  # fails before the definitions load
    assert gc.isenabled() and gc.get_freeze_count() == 0 and not frozen
    result = CliRunner().invoke(main, ["run", "--batch", "empty", "--models", "tiny"])
    assert result.exit_code == 0, result.output
    assert frozen and gc.isenabled() and gc.get_freeze_count() == 0
