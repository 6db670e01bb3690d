"""A job whose two steps stand in for large-model steps (same pool, tag, machine-wide lock and executor
settings as pixelsift's: ``resources/concurrency.py``, ``resources/large_model_lock.py``),
for tests/test_run_limits.py to run in child processes. It imports no models, so a child starts fast.

Run as ``python -m tests.large_model_probe ui|cli``: the child first waits until every other child
is ready, so their runs start together, then runs the job as a run worker of the UI does (``ui``:
pixelsift's multiprocess executor) or as ``pixelsift run`` does (``cli``: in process). Each step
records in $PROBE_DIR when it held the model. ``hold``: one run alone, in process and tagged as
``pixelsift run`` tags its runs, whose first step holds the model for $PROBE_HOLD_SECONDS (for a
test to kill it mid-step). ``lock``: one run of one step that holds the machine-wide lock but takes
no slot of the pool, as a step does when the pool's claim let two runs through.
"""

import os
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, execute_job, job, multiprocess_executor, op, reconstructable

from dagster_project.execution import executor as pixelsift_executor
from resources.concurrency import LARGE_MODEL, LARGE_MODEL_POOL
from resources.large_model_lock import holds_large_model_slot

HOLD_SECONDS = float(os.environ.get("PROBE_HOLD_SECONDS", "2.0"))

# pixelsift's executor as it is (steps, tag limit, forkserver), except that the fork server preloads
# this module rather than the code location: importing torch there would cost a child tens of seconds.
_config = pixelsift_executor.apply_config_mapping({}).value["config"]
executor = multiprocess_executor.configured(
    {**_config, "start_method": {"forkserver": {"preload_modules": ["tests.large_model_probe"]}}},
    name="pixelsift_executor_without_models",
)


def _hold_the_model(context) -> None:
    started = time.time()
    (Path(os.environ["PROBE_DIR"]) / f"{context.run_id}-{context.op.name}.holding").touch()
    time.sleep(HOLD_SECONDS)
    out = Path(os.environ["PROBE_DIR"]) / f"{context.run_id}-{context.op.name}.held"
    out.write_text(f"{started} {time.time()}")


@op(pool=LARGE_MODEL_POOL, tags=LARGE_MODEL)
@holds_large_model_slot  # as model_step wraps a large-model asset's compute
def first_model(context):
    _hold_the_model(context)


@op(pool=LARGE_MODEL_POOL, tags=LARGE_MODEL)
@holds_large_model_slot
def second_model(context):
    _hold_the_model(context)


@op(tags=LARGE_MODEL)
@holds_large_model_slot
def model_past_the_pool(context):
    _hold_the_model(context)


@job
def lock_only():
    model_past_the_pool()


@job(executor_def=executor)
def two_models():
    first_model()
    second_model()


def main(kind: str, children: int = 2) -> int:
    if kind == "lock":
        with DagsterInstance.get() as instance:
            return 0 if lock_only.execute_in_process(instance=instance).success else 1
    if kind == "hold":
        from dagster_project.run_history import process_tags

        with DagsterInstance.get() as instance:
            return 0 if two_models.execute_in_process(instance=instance, tags=process_tags()).success else 1
    ready = Path(os.environ["PROBE_DIR"]) / f"{kind}.ready"
    ready.touch()
    while len(list(ready.parent.glob("*.ready"))) < children:
        time.sleep(0.05)
    with DagsterInstance.get() as instance:
        if kind == "ui":
            result = execute_job(reconstructable(two_models), instance)
        else:
            result = two_models.execute_in_process(instance=instance)
        return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
