"""Every way of starting work keeps to one large model at a time: the executor, the pool, the run queue.

Entry points: the ``process_batch`` job (``pixelsift run``, the sensor), the implicit asset job
(the UI's "Materialize"), a backfill's runs (real backfill daemon iteration), the sensor's run
requests. The scheduled backfill (``stale_batches_backfill``) requests a backfill like the one here. The instance side loads the shipped dagster.yaml into a
real DagsterInstance, and two real runs in two processes show the pool keeping their large-model
steps apart.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.instance.config import PoolGranularity

from dagster_project.dagster_home import initialize_pools
from dagster_project.definitions import defs
from dagster_project.execution import CODE_LOCATION_MODULE, STEP_LIBRARIES, STEP_PRELOAD, executor
from dagster_project.run_history import free_slots_of_ended_runs
from dagster_project.sensors import batch_folder_sensor
from resources.concurrency import LARGE_MODEL, LARGE_MODEL_POOL, LARGE_MODEL_TAG
from tests.conftest import LARGE_MODEL_ASSETS
from tests.one_op_job import quick

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture
def shipped_instance(shipped_home):
    """A real instance on a temporary DAGSTER_HOME holding the dagster.yaml pixelsift ships."""
    with DagsterInstance.get() as instance:
        initialize_pools(instance)  # as `pixelsift run` and `pixelsift ui` do before any run
        yield instance


# --- The executor of every entry point -------------------------------------------------------


def test_the_executor_runs_two_steps_and_one_large_model_at_a_time():
    config = executor.apply_config_mapping({}).value["config"]  # what `.configured(...)` fixed
    assert executor.name == "pixelsift_executor"
    assert config["max_concurrent"] == 2
    assert config["tag_concurrency_limits"] == [{"key": LARGE_MODEL_TAG, "limit": 1}]


def test_steps_fork_from_a_server_that_imported_the_code_location_once():
    # Not Dagster's default (spawn: every step imports the code location, torch included, again).
    config = executor.apply_config_mapping({}).value["config"]
    assert config["start_method"] == {"forkserver": {"preload_modules": [CODE_LOCATION_MODULE, STEP_PRELOAD]}}
    workspace = yaml.safe_load((ROOT / "dagster_project" / "workspace.yaml").read_text())
    assert [entry["python_module"]["module_name"] for entry in workspace["load_from"]] == [CODE_LOCATION_MODULE]


def test_the_fork_server_preloads_libraries_that_exist():
    # multiprocessing's fork server skips a preload module that fails to import: a misspelt name
    # would make every step import that library itself, slowly and silently.
    assert [name for name in STEP_LIBRARIES if importlib.util.find_spec(name) is None] == []


def test_process_batch_and_the_ui_materialize_job_share_the_executor():
    assert defs.resolve_job_def("process_batch").executor_def is executor
    # "Materialize" in the UI, for any selection, runs the implicit asset job.
    assert defs.resolve_implicit_global_asset_job_def().executor_def is executor
    selection = [AssetKey(name) for name in LARGE_MODEL_ASSETS]
    assert defs.resolve_implicit_job_def_def_for_assets(selection).executor_def is executor


def test_the_sensor_runs_process_batch():
    # Both kinds of its RunRequest (a whole batch, the evaluation only) run this job, so its executor.
    assert batch_folder_sensor.job_name == "process_batch"


def test_the_large_model_assets_carry_the_tag_and_the_pool():
    job_def = defs.resolve_implicit_global_asset_job_def()
    pooled = set()
    for node in job_def.graph.node_defs:
        if node.pool == LARGE_MODEL_POOL:
            pooled.add(node.name)
            assert LARGE_MODEL.items() <= node.tags.items()
    # The collection's cluster labels run the same LLM, over every batch's clusters.
    assert pooled == LARGE_MODEL_ASSETS | {"collection_cluster_labels"}


def test_a_backfill_runs_the_asset_job_whose_steps_claim_the_pool(shipped_instance):
    """A real backfill over two batches, as the UI creates it, through one backfill-daemon iteration."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    instance = shipped_instance
    instance.add_dynamic_partitions("batch", ["one", "two"])
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="dagster_project.definitions", working_directory=str(ROOT))
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        graph = workspace.create_request_context().asset_graph
        instance.add_backfill(PartitionBackfill.from_asset_partitions(
            backfill_id="two_batches", asset_graph=graph, partition_names=["one", "two"],
            asset_selection=list(graph.materializable_asset_keys), backfill_timestamp=time.time(), tags={},
            dynamic_partitions_store=instance, all_partitions=False, title=None, description=None,
            run_config=None,
        ))
        list(execute_backfill_iteration(workspace, logging.getLogger(__name__)))

    # One run of every pipeline asset over both batches (their single-run backfill policy: each model
    # loads once); the evaluation assets in a run per batch (here the one with no pipeline parent).
    runs = instance.get_runs()
    [run] = [r for r in runs if "dagster/partition" not in r.tags]
    assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == \
        ("one", "two")
    assert {key.to_user_string() for key in run.asset_selection} >= LARGE_MODEL_ASSETS | {"images", "clusters"}
    assert sorted(r.tags["dagster/partition"] for r in runs if r is not run) == ["one", "two"]
    # Queued, not started: the run queue (max_concurrent_runs) decides when it starts.
    assert run.status == DagsterRunStatus.QUEUED
    assert defs.resolve_job_def(run.job_name).executor_def is executor
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    assert {step.key for step in plan.steps if step.pool == LARGE_MODEL_POOL} == LARGE_MODEL_ASSETS


# --- The shipped instance settings -----------------------------------------------------------


def test_the_shipped_instance_gives_the_pool_one_slot_and_queues_runs(shipped_instance):
    instance = shipped_instance
    concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.pool_config.pool_granularity == PoolGranularity.OP  # per step, not per run
    assert concurrency.run_queue_config.max_concurrent_runs == 2
    assert instance.event_log_storage.get_concurrency_info(LARGE_MODEL_POOL).limit == 1
    # The daemon of `pixelsift ui` frees the slot of a run that ended without freeing it.
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60



def test_a_slot_left_by_an_ended_run_is_freed_and_a_running_runs_slot_kept(shipped_instance):
    instance = shipped_instance
    storage = instance.event_log_storage
    storage.set_concurrency_slots(LARGE_MODEL_POOL, 2)  # room for both claims
    killed = instance.create_run_for_job(quick)
    running = instance.create_run_for_job(quick, status=DagsterRunStatus.STARTED)
    for run in (killed, running):
        assert storage.claim_concurrency_slot(LARGE_MODEL_POOL, run.run_id, "captions").is_claimed
    instance.report_run_failed(killed, "its process was killed mid-step")

    assert free_slots_of_ended_runs(instance) == [killed.run_id]
    assert storage.get_concurrency_info(LARGE_MODEL_POOL).active_run_ids == {running.run_id}


def test_doctor_names_an_ended_run_holding_the_slot_and_frees_nothing(shipped_instance, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dagster_project.cli import main

    storage = shipped_instance.event_log_storage
    killed = shipped_instance.create_run_for_job(quick, tags={"dagster/partition": "holiday"})
    assert storage.claim_concurrency_slot(LARGE_MODEL_POOL, killed.run_id, "captions").is_claimed
    shipped_instance.report_run_failed(killed, "its process was killed mid-step")
    monkeypatch.setenv("PIXELSIFT_WAREHOUSE_DIR", str(tmp_path / "warehouse"))  # nothing wrong there

    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert f"run {killed.run_id} (quick, batch 'holiday')" in result.output
    assert "ended FAILURE but still holds a large-model slot" in result.output
    assert "1 ended run(s) holding a slot" in result.output
    assert storage.get_concurrency_info(LARGE_MODEL_POOL).active_run_ids == {killed.run_id}  # left as it was


# --- Two real runs at once -------------------------------------------------------------------


def test_two_runs_at_once_never_hold_large_models_together(shipped_instance, tmp_path):
    """A UI run (multiprocess executor) and a `pixelsift run` (in process) of a job with two
    large-model steps each, started together in two processes on the shipped instance."""
    env = {**os.environ, "PROBE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-m", "tests.large_model_probe", kind], cwd=ROOT, env=env)
                for kind in ("ui", "cli")]
    assert [child.wait(timeout=120) for child in children] == [0, 0]

    held = sorted(tuple(map(float, path.read_text().split())) for path in tmp_path.glob("*.held"))
    assert len(held) == 4  # two runs, two large-model steps each
    for (_, end), (next_start, _) in zip(held, held[1:]):
        assert end <= next_start, f"two large-model steps overlapped: {held}"
    runs = shipped_instance.get_runs()
    assert len(runs) == 2 and all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    assert shipped_instance.event_log_storage.get_concurrency_info(LARGE_MODEL_POOL).claimed_slots == []
    # The steps also took the machine-wide lock beside the instance (resources/large_model_lock.py),
    # which keeps them apart when SQLite's pool claim lets both runs through.
    assert [path.name for path in (Path(shipped_instance.root_directory) / "locks").iterdir()] == ["large_model0.lock"]
