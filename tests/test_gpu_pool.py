"""Large-model steps across runs and machines: the GPU pool, one GPU per step, and slots that a
killed run leaves are freed.

Real instance (the shipped dagster.yaml on a temporary DAGSTER_HOME), real runs in child processes
killed with SIGKILL mid-step, real flock claims between processes. No GPU exists here: the device
claim is checked as the lock it is; which CUDA device a model then loads on is not exercised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from assets import build_pipeline_assets
from dagster_project.dagster_home import initialize_pools
from dagster_project.run_history import fail_stale_runs, free_slots_of_ended_runs
from resources.concurrency import GPU_POOL, GPU_TAG, LARGE_MODEL_POOL
from resources.gpu_slots import claim_gpu
from tests.conftest import LARGE_MODEL_ASSETS

ROOT = Path(__file__).resolve().parents[1]


def pools(assets) -> dict[str, tuple[str | None, dict]]:
    return {a.key.to_user_string(): (a.op.pool, a.op.tags) for a in assets}


def test_with_gpus_the_large_model_steps_take_the_gpu_pool_with_a_slot_per_gpu(shipped_home, monkeypatch):
    assert {k for k, (pool, _) in pools(build_pipeline_assets({})).items() if pool == LARGE_MODEL_POOL} == \
        LARGE_MODEL_ASSETS
    monkeypatch.setenv("PIXELSIFT_GPUS", "4")
    on_gpus = pools(build_pipeline_assets({}))
    assert {k for k, (pool, tags) in on_gpus.items() if pool == GPU_POOL and tags.get(GPU_TAG)} == LARGE_MODEL_ASSETS
    assert on_gpus["clip_embeddings"][0] is None  # small model: beside them
    with DagsterInstance.get() as instance:
        initialize_pools(instance)
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 4
        assert instance.event_log_storage.get_concurrency_info(LARGE_MODEL_POOL).slot_count == 1
    monkeypatch.setenv("PIXELSIFT_GPUS", "two")
    with pytest.raises(ValueError, match="PIXELSIFT_GPUS"):
        build_pipeline_assets({})


CLAIMER = "import sys, time; from resources.gpu_slots import claim_gpu; print(claim_gpu(2), flush=True); time.sleep(60)"


def test_each_step_process_holds_its_own_gpu_until_it_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELSIFT_GPU_LOCK_DIR", str(tmp_path / "locks"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first, second = (subprocess.Popen([sys.executable, "-c", CLAIMER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      text=True) for _ in range(2))
    try:
        claimed = {first.stdout.readline().strip(), second.stdout.readline().strip()}
        assert claimed == {"0", "1"}
        third = subprocess.run([sys.executable, "-c", CLAIMER.replace("time.sleep(60)", "")], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
        assert third.stdout.strip() == "None"  # both held: the pool should not have started a third step
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert claim_gpu(2, tmp_path / "locks") is not None  # the killed step's GPU is free at once
    finally:
        for child in (first, second):
            child.kill()
            child.wait()


def test_a_run_killed_mid_step_has_its_slot_freed_and_the_next_run_gets_it(shipped_home, tmp_path):
    env = {**os.environ, "PROBE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "PROBE_HOLD_SECONDS": "120"}
    child = subprocess.Popen([sys.executable, "-m", "tests.large_model_probe", "hold"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*.holding")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob("*.holding")), "the probe run never reached its large-model step"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    with DagsterInstance.get() as instance:
        [killed] = instance.get_runs()
        storage = instance.event_log_storage
        assert killed.status == DagsterRunStatus.STARTED  # it never wrote its end
        assert storage.get_concurrency_info(LARGE_MODEL_POOL).active_run_ids == {killed.run_id}
        # What `pixelsift run` and `pixelsift ui` do at start (the UI's daemon also frees it a minute
        # after the run is marked ended: free_slots_after_run_end_seconds in dagster.yaml).
        assert [r.run_id for r in fail_stale_runs(instance)] == [killed.run_id]
        assert free_slots_of_ended_runs(instance) == [killed.run_id]
        assert storage.get_concurrency_info(LARGE_MODEL_POOL).active_run_ids == set()
    env["PROBE_HOLD_SECONDS"] = "0.1"
    again = subprocess.run([sys.executable, "-m", "tests.large_model_probe", "hold"], cwd=ROOT, env=env, timeout=120)
    assert again.returncode == 0  # would wait for ever on a slot nobody holds, had it not been freed
