"""Hostile inputs: folder names, reference files and exports made to break pixelsift, and runs killed
mid-way. Each must cost a clear message about that one thing, never the rest of the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, build_sensor_context, materialize_to_memory

import evals.baseline
from dagster_project.cli import main
from dagster_project.dagster_home import SHIPPED, install_instance_settings
from dagster_project.run_history import HOST_TAG, PID_START_TAG, PID_TAG, process_tags, stale_runs
from dagster_project.sensors import SKIPPED_FOLDERS_TAG, batch_folder_sensor
from evals.assets import gemini_baseline
from evals.baseline import load_baseline
from evals.cli import baseline as baseline_cli
from evals.legacy_import import convert_rows
from resources.batch_keys import InvalidBatchKey, validate_batch_key
from resources.partitions import batch_partitions
from tests.one_op_job import quick
from resources.settings import PixelsiftSettings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BASELINE = ROOT / "data" / "baselines" / "sample.jsonl"
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads recurses once per '[': RecursionError


def record(path="cat.jpg", **fields):
    return json.dumps({"path": path, "primary_category": "animals", "tags": ["cat"], **fields})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """Settings as the real command reads them: environment variables, all under tmp_path."""
    for name in ("images", "warehouse", "reports", "baselines"):
        (tmp_path / name).mkdir()
    for name, value in {"IMAGES_ROOT": "images", "WAREHOUSE_DIR": "warehouse", "REPORTS_DIR": "reports",
                        "BASELINES_DIR": "baselines"}.items():
        monkeypatch.setenv(f"PIXELSIFT_{name}", str(tmp_path / value))
    monkeypatch.setenv("PIXELSIFT_MODELS", "tiny")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    return tmp_path


# --- Batch folder names --------------------------------------------------------------------------

def test_a_folder_name_ending_in_a_newline_is_not_a_batch_key():
    with pytest.raises(InvalidBatchKey, match=r"'trip\\n'"):
        validate_batch_key("trip\n")


def test_dot_and_dotdot_are_named_for_what_they_are():
    with pytest.raises(InvalidBatchKey) as dot:
        validate_batch_key(".")
    assert "images root itself" in str(dot.value) and "'..'" not in str(dot.value)
    with pytest.raises(InvalidBatchKey, match="folder above the images root"):
        validate_batch_key("..")


def test_run_all_lists_each_skipped_folder_and_why(cli_env):
    images = cli_env / "images"
    (images / "trip\n").mkdir()
    (images / "bad name").mkdir()
    os.mkdir(os.fsencode(images) + b"/caf\xe9")  # Latin-1, not UTF-8: the name is not text
    (images / ".cache").mkdir()  # hidden: skipped without a word, as hidden files are
    result = CliRunner().invoke(main, ["run", "--all"])
    assert result.exit_code != 0 and "no batch folders with valid names" in result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipping folder")]
    assert len(warnings) == 3, result.stderr
    assert any("'trip\\n'" in w and "must be 1-128 letters" in w for w in warnings)
    assert any("'bad name'" in w for w in warnings)
    assert any("'caf\\udce9'" in w for w in warnings)
    assert ".cache" not in result.stderr


def test_the_folder_sensor_skips_bad_names_and_survives_file_names_that_are_not_text(tmp_path):
    (tmp_path / "trip").mkdir()
    Path(os.fsdecode(os.fsencode(tmp_path) + b"/trip/caf\xe9.jpg")).write_bytes(b"x")
    (tmp_path / "trip\n").mkdir()
    settings = PixelsiftSettings(images_root=str(tmp_path), baselines_dir=str(tmp_path / "none"))
    # A cursor: a tick after the first, which registers folders without running them.
    context = build_sensor_context(instance=DagsterInstance.ephemeral(), cursor="{}", resources={"settings": settings})
    result = batch_folder_sensor(context)  # hashing the Latin-1 name used to fail every tick
    assert [r.partition_key for r in result.run_requests] == ["trip"]
    assert result.run_requests[0].tags[SKIPPED_FOLDERS_TAG].startswith("'trip\\n' (batch key 'trip\\n'")


def test_run_all_goes_on_after_a_batch_crashes_and_lists_it(cli_env, monkeypatch):
    import dagster_project.cli as cli

    for key in ("one", "two"):
        (cli_env / "images" / key).mkdir()
    say_where = cli._say_where

    def summary_crashes_for_one(settings, key, run_id):
        # As the end-of-run summary did on a warehouse holding a folder named with a newline.
        if key == "one":
            raise RuntimeError("summary could not read the warehouse")
        say_where(settings, key, run_id)

    monkeypatch.setattr(cli, "_say_where", summary_crashes_for_one)
    result = CliRunner().invoke(main, ["run", "--all"])
    assert result.exit_code == 1, result.output
    assert "Batch 'two' done" in result.output
    assert "1 of 2 batches failed: one (RuntimeError: summary could not read the warehouse)" in result.output


# --- Reference files and exports -----------------------------------------------------------------

def test_a_deeply_nested_line_is_that_lines_problem(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [record("a.jpg"), '{"path": "b.jpg", "tags": ' + DEEP + "}",
                                              "[" * 100_000, record("c.jpg")])
    baseline = load_baseline(path)
    assert [r.path for _, r in baseline.images] == ["a.jpg", "c.jpg"]
    assert [(p.line, p.reason) for p in baseline.problems] == [
        (2, "nested 100001 levels deep; a record may nest at most 32"),
        (3, "nested 100000 levels deep; a record may nest at most 32"),
    ]
    result = CliRunner().invoke(baseline_cli, ["validate", str(path)])
    assert result.exit_code == 1 and "line 2: nested 100001 levels deep" in result.stderr
    assert "2 image records" in result.stdout


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    text = json.dumps({"path": "a.jpg", "description": "[" * 1000 + ' \\" { ' + "]" * 5, "tags": ["[[["]})
    assert evals.baseline.nesting_depth(text) == 2
    assert load_baseline(write_lines(tmp_path / "b.jsonl", [text])).problems == []


def test_the_gemini_baseline_asset_reports_a_deep_line_and_keeps_the_rest(tmp_path):
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    write_lines(baselines / "trip.jsonl", [record("a.jpg"), DEEP, record("b.jpg")])
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batch_partitions.name, ["trip"])
    result = materialize_to_memory([gemini_baseline], partition_key="trip", instance=instance,
                                   resources={"settings": PixelsiftSettings(baselines_dir=str(baselines))})
    assert result.success
    rows = result.output_for_node("gemini_baseline").to_pylist()
    assert [r["path"] for r in rows if r["record"] == "image"] == ["a.jpg", "b.jpg"]
    assert [(r["line"], r["problem"]) for r in rows if r["record"] == "problem"] == [
        (2, "nested 100000 levels deep; a record may nest at most 32")]


def test_lines_that_stopped_the_whole_file_now_cost_only_themselves(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [
        record("a.jpg"),
        '{"path": "b.jpg", "tags": ["x"], "n": ' + "1" * 5000 + "}",  # over Python's 4,300-digit int limit
        record("c.jpg"),
    ])
    baseline = load_baseline(path)
    assert [r.path for _, r in baseline.images] == ["a.jpg", "c.jpg"]
    [problem] = baseline.problems
    assert problem.line == 2 and problem.reason.startswith("invalid JSON: Exceeds the limit")


def test_oversize_fields_lines_and_files_are_reported_not_loaded(tmp_path, monkeypatch):
    path = write_lines(tmp_path / "b.jsonl", [
        record("a.jpg"),
        record("b.jpg", description="x" * 5_000),
        record("c.jpg", tags=["t"] * 200_000),
        record("d.jpg", detected_objects=["o" * 300]),
        json.dumps({"cluster_name": "c", "members": ["m"] * 100_001}),
        record("e.jpg", description="x" * 10_000_000),
        record("f.jpg"),
    ])
    baseline = load_baseline(path)
    assert [r.path for _, r in baseline.images] == ["a.jpg", "f.jpg"]
    reasons = {p.line: p.reason for p in baseline.problems}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert reasons[2] == "description: String should have at most 2000 characters"
    assert reasons[3] == "tags: List should have at most 100 items after validation, not 200000"
    assert "at most 200 characters" in reasons[4]
    assert reasons[5] == "members: List should have at most 100000 items after validation, not 100001"
    assert reasons[6] == "longer than 8 MiB"

    monkeypatch.setattr(evals.baseline, "MAX_FILE_BYTES", 1_000)
    too_big = load_baseline(path)
    assert too_big.images == [] and [p.line for p in too_big.problems] == [0]
    assert "may have at most" in too_big.problems[0].reason


def gemini_row(sha, **meta):
    return {"sha256": sha, "metadata": {"vlm_primary_category": "animals", "vlm_tags": ["cat"], **meta}}


def test_import_reports_deep_and_oversize_rows_by_line(tmp_path):
    export = write_lines(tmp_path / "export.jsonl", [
        json.dumps(gemini_row("a" * 64)),
        '{"sha256": "' + "b" * 64 + '", "metadata": ' + DEEP + "}",
        json.dumps({"sha256": "c" * 64, "metadata": '{"vlm_tags": ' + DEEP + "}"}),  # metadata as a JSON string
        json.dumps(gemini_row("d" * 64, vlm_tags=["t"] * 200_000)),
        json.dumps(gemini_row("e" * 64)),
    ])
    result = CliRunner().invoke(baseline_cli, ["import", str(export), "--batch", "trip",
                                               "--out", str(tmp_path / "bl")])
    assert result.exit_code == 0, result.output
    assert "2 image records" in result.stdout
    assert "line 2: nested 100001 levels deep" in result.stderr
    assert "line 3: metadata: nested 100001 levels deep" in result.stderr
    assert "line 4: tags: List should have at most 100 items" in result.stderr


def test_duplicate_cluster_ids_are_reported_and_the_first_stands():
    result = convert_rows([
        gemini_row("a" * 64) | {"cluster_id": "k1"},
        {"id": "k1", "name": "Cats", "metadata": {"vlm_tags": ["cat"]}},
        {"id": "k1", "name": "Dogs", "metadata": {"vlm_tags": ["dog"]}},
    ])
    assert [(p.line, p.reason) for p in result.problems] == [(3, "duplicate of line 2 (same cluster id 'k1')")]
    [cluster] = [r for r in result.records if r["record"] == "cluster"]
    assert cluster["cluster_name"] == "Cats" and cluster["members"] == ["a" * 64]


def test_a_failed_forced_import_keeps_the_old_baseline_byte_identical(tmp_path):
    out = tmp_path / "bl"
    out.mkdir()
    old = out / "holiday.jsonl"
    old.write_bytes(SAMPLE_BASELINE.read_bytes())
    before = old.read_bytes()
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)  # the whole export is one JSON document
    nothing = write_lines(tmp_path / "nothing.jsonl", ["{oops", json.dumps({"id": "u1"})])
    runner = CliRunner()
    for export, why in [(deep, "nested 100000 levels deep"), (nothing, "no row of")]:
        result = runner.invoke(baseline_cli, ["import", str(export), "--batch", "holiday", "--out", str(out),
                                              "--force"])
        assert result.exit_code == 1, result.output
        assert str(export) in result.stderr and why in result.stderr
        assert f"{old} left as it was" in result.stderr
        assert old.read_bytes() == before
        assert sorted(p.name for p in out.iterdir()) == ["holiday.jsonl"]  # no temporary file left


def test_a_forced_import_replaces_a_parquet_baseline_only_once_it_succeeded(tmp_path):
    out = tmp_path / "bl"
    out.mkdir()
    (out / "holiday.parquet").write_bytes(b"an older baseline")
    (tmp_path / "broken.json").write_text('{"assets": [')
    good = write_lines(tmp_path / "export.jsonl", [json.dumps(gemini_row("a" * 64))])
    runner = CliRunner()
    failed = runner.invoke(baseline_cli, ["import", str(tmp_path / "broken.json"), "--batch", "holiday",
                                          "--out", str(out), "--force"])
    assert failed.exit_code == 1 and "broken.json: invalid JSON" in failed.stderr
    assert (out / "holiday.parquet").read_bytes() == b"an older baseline"
    result = runner.invoke(baseline_cli, ["import", str(good), "--batch", "holiday", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jsonl"]  # one file per batch, not two


# --- Run history ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from dagster import DagsterInstance, job, op
    from dagster_project.run_history import process_tags

    @op
    def wait():
        print("running", flush=True)
        time.sleep(120)

    @job
    def sleepy():
        wait()

    with DagsterInstance.get() as instance:
        sleepy.execute_in_process(instance=instance, tags=process_tags() if sys.argv[1] == "tagged" else None)
""")


@pytest.mark.parametrize("launched_by", ["tagged", "untagged"])
def test_a_run_killed_with_sigkill_is_marked_failed_by_the_next_pixelsift_run(cli_env, launched_by):
    """tagged: as ``pixelsift run`` launches; untagged: as the UI does, known by Dagster's own pid event."""
    home = cli_env / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(home)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, launched_by], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout.readline().strip() == "running"
        instance = DagsterInstance.get()
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.STARTED
        assert stale_runs(instance) == []  # its process is alive: left alone
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED  # and would stay so

    doctor = CliRunner().invoke(main, ["doctor"])  # names it, changes nothing
    assert doctor.exit_code == 1 and f"run {run.run_id} (sleepy" in doctor.output and "1 stale run" in doctor.output
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED

    result = CliRunner().invoke(main, ["run", "--batch", "nowhere"])  # fails, but only after the check
    assert "no batch folder" in result.output
    assert f"marked run {run.run_id} (sleepy) failed: its process (pid {child.pid} " in result.stderr
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    [failure] = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
    assert "is gone: it was killed (SIGKILL, out of memory)" in failure.message
    assert (home / "dagster.yaml").read_text() == SHIPPED.read_text()



def test_a_reused_pid_is_not_the_runs_process_and_another_hosts_run_is_left_alone():
    instance = DagsterInstance.ephemeral()
    ours = process_tags()  # this process, alive
    alive = instance.create_run_for_job(quick, tags=ours)
    reused = instance.create_run_for_job(quick, tags={**ours, PID_START_TAG: str(int(ours[PID_START_TAG]) - 1)})
    elsewhere = instance.create_run_for_job(quick, tags={PID_TAG: "999999999", HOST_TAG: "another-machine"})
    stale = {s.run_id for s in stale_runs(instance)}
    assert reused.run_id in stale and alive.run_id not in stale and elsewhere.run_id not in stale


def test_dagster_home_gets_the_shipped_run_monitoring_settings(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    install_instance_settings(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
    first_line = SHIPPED.read_text().partition("\n")[0]
    (home / "dagster.yaml").write_text(first_line + "\nrun_monitoring:\n  enabled: false\n")  # an older copy
    install_instance_settings(home)
    assert (home / "dagster.yaml").read_text() == SHIPPED.read_text()
    (home / "dagster.yaml").write_text("# mine\ntelemetry:\n  enabled: false\n")
    install_instance_settings(home)
    assert (home / "dagster.yaml").read_text() == "# mine\ntelemetry:\n  enabled: false\n"
