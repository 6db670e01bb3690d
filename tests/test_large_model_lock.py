"""The machine-wide large-model lock (resources/large_model_lock.py): which steps hold it, real
processes contending for it on a real instance, its re-entrancy, and one lock file per slot of the pool.

The pool keeps steps apart too; the steps here take no slot of it (``tests/large_model_probe.py``
``lock``), as when SQLite's pool claim lets two runs through, so only the lock stands between them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, job, op

from assets import build_pipeline_assets
from dagster_project.dagster_home import initialize_pools
from dagster_project.definitions import defs
from resources.concurrency import LARGE_MODEL_POOL
from resources.file_locks import release, try_claim
from resources.large_model_lock import holds_large_model_slot, lock_paths
from tests.conftest import LARGE_MODEL_ASSETS

ROOT = Path(__file__).resolve().parents[1]
WAITING = "Waiting for another run's large-model step to finish"


@pytest.fixture
def instance(shipped_home):
    with DagsterInstance.get() as instance:
        initialize_pools(instance)  # the pool's one slot, as `pixelsift run` and `pixelsift ui` record it
        yield instance


def _holds_the_lock(assets_def) -> bool:
    """Whether the asset's compute runs inside ``holds_large_model_slot`` (its wrapper's code)."""
    return assets_def.op.compute_fn.decorated_fn.__code__ is holds_large_model_slot(lambda context: None).__code__


def test_every_step_in_the_large_model_pool_and_no_other_holds_the_lock(monkeypatch):
    graph = defs.resolve_asset_graph()
    executable = [graph.get(key).assets_def for key in graph.get_all_asset_keys()
                  if graph.get(key).assets_def.is_executable]
    locked = {a.key.to_user_string() for a in executable if _holds_the_lock(a)}
    assert locked == {a.key.to_user_string() for a in executable if a.op.pool == LARGE_MODEL_POOL}
    assert locked == LARGE_MODEL_ASSETS | {"collection_cluster_labels"}
    monkeypatch.setenv("PIXELSIFT_GPUS", "2")  # each step then holds a GPU's lock instead (resources/gpu_slots.py)
    assert [a for a in build_pipeline_assets({}) if _holds_the_lock(a)] == []


def _holder(tmp_path: Path, seconds: float, log: bool = True) -> subprocess.Popen:
    """A run, in a process of its own, of one step that holds the lock for ``seconds``; its log on stdout."""
    env = {**os.environ, "PROBE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "PROBE_HOLD_SECONDS": str(seconds)}
    return subprocess.Popen([sys.executable, "-m", "tests.large_model_probe", "lock"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE if log else subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _wait_for(condition, what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_steps_of_other_runs_wait_for_the_holder_and_a_killed_holder_frees_it(instance, tmp_path):
    lock_file = lock_paths(Path(instance.root_directory), 1)[0]
    holder = _holder(tmp_path, 120, log=False)
    waiters: list[subprocess.Popen] = []
    try:
        _wait_for(lambda: list(tmp_path.glob("*.holding")), "the first step to hold the lock")
        waiters = [_holder(tmp_path, 1.0) for _ in range(2)]
        logs = ["", ""]

        def read(index: int) -> None:  # each waiter's log, until it says why it is idle
            for line in waiters[index].stdout:
                logs[index] += line
                if WAITING in line:
                    return

        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=90)
        assert all(WAITING in log and str(lock_file) in log for log in logs), logs
        assert len(list(tmp_path.glob("*.holding"))) == 1  # both still wait

        killed_at = time.time()
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel frees the lock
        holder.wait(timeout=30)
        outputs = [waiter.communicate(timeout=60)[0] for waiter in waiters]
        assert [waiter.returncode for waiter in waiters] == [0, 0], outputs
    finally:
        for child in (holder, *waiters):
            child.kill()
            child.wait()

    held = sorted(tuple(map(float, path.read_text().split())) for path in tmp_path.glob("*.held"))
    assert len(held) == 2  # the two waiters; the killed holder never finished
    (first_start, first_end), (second_start, _) = held
    assert first_start >= killed_at - 0.5  # neither began before the holder died (clock read in another process)
    assert first_end <= second_start, f"the two waiters overlapped: {held}"  # one waited for the other's exit
    assert sum(WAITING in log for log in "".join(logs + outputs).splitlines()) == 2  # once per waiting step


def _run(fn) -> list[str]:
    """``fn(context)`` as the compute of a one-step job on the shipped instance, in a thread that must
    end within a minute (a lock taken twice would wait for ever); the run's log messages."""

    @op
    @holds_large_model_slot
    def step(context):
        fn(context)

    @job
    def one_step():
        step()

    outcome = []
    with DagsterInstance.get() as instance:
        worker = threading.Thread(target=lambda: outcome.append(one_step.execute_in_process(instance=instance)),
                                  daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert outcome and outcome[0].success, "the step did not finish: it waited for a lock it held"
        return [entry.user_message for entry in instance.all_logs(outcome[0].run_id)]


def test_a_step_that_nests_takes_the_lock_once(instance):
    paths = lock_paths(Path(instance.root_directory), 1)
    seen = []

    def outer(context):
        assert try_claim(paths) is None  # held, by this step
        holds_large_model_slot(lambda context: seen.append(try_claim(paths)))(context)  # a range run's batch
        assert try_claim(paths) is None  # still held after the inner one ends

    _run(outer)
    assert seen == [None]
    claim = try_claim(paths)  # free once the step ended
    assert claim is not None
    release(claim)


def test_a_pool_of_two_slots_lets_two_steps_hold_models(instance, tmp_path):
    instance.event_log_storage.set_concurrency_slots(LARGE_MODEL_POOL, 2)  # a bigger machine's setting
    paths = lock_paths(Path(instance.root_directory), 2)
    seen = []

    def step(context):
        assert try_claim(paths[:1]) is None  # this step holds the first
        other = _holder(tmp_path, 0.1)  # another run's step, while this one holds its model
        try:
            seen.append((other.communicate(timeout=60)[0], other.returncode))
        finally:
            other.kill()
        claim = try_claim(paths[1:])  # the other step took the second, and freed it as it ended
        assert claim is not None
        release(claim)

    _run(step)
    [(log, returncode)] = seen
    assert returncode == 0 and WAITING not in log
    assert len(list(tmp_path.glob("*.held"))) == 1


def test_a_folder_that_cannot_hold_the_lock_files_leaves_the_step_to_the_pool(instance):
    # Where the instance's folder is read-only (a Postgres instance's pod); here a file is where the folder would be.
    (Path(instance.root_directory) / "locks").write_text("")
    ran = []
    messages = _run(lambda context: ran.append(True))
    assert ran == [True]
    [warning] = [m for m in messages if "Could not take the large-model lock" in m]
    assert "locks/large_model0.lock" in warning and "pool pixelsift/large_model alone" in warning
