"""What limits how many steps run side by side: the tag and the pool of a step holding a large model.

Assets carry both (``model_step``). The tag limits steps within one run (the executor in
``dagster_project/execution.py`` allows one tagged step at a time); the pool limits them across
every run of the instance (``concurrency: pools:`` in ``dagster_project/dagster.yaml``: one slot),
and a lock file per slot keeps that so on this machine when the pool's claim does not
(``resources/large_model_lock.py``).
They live here, at the bottom, so asset modules never import the composition root.
"""

import os
from typing import Any, Callable

from dagster import asset

LARGE_MODEL_TAG = "pixelsift/large_model"

# Steps that hold a multi-GB model (BLIP-2, Phi-3.5-mini: 9-14 GiB each at the benchmarked batch
# sizes) carry this tag; only one of them runs at a time so two never share 24 GiB of memory.
# CLIP, palettes, clustering and the evals run beside them.
LARGE_MODEL = {LARGE_MODEL_TAG: "true"}

# The same steps' Dagster concurrency pool: a slot of it is claimed by the run before the step
# starts and freed when it ends, so two runs (a backfill's, the sensor's, `pixelsift run`) never
# hold large models at once. Same name as the tag, so the UI's pool page says what it limits.
LARGE_MODEL_POOL = "pixelsift/large_model"

# Steps of one run that execute at once under the multiprocess executor (``dagster_project/execution.py``),
# each in its own process. Model steps share the machine's cores among them (resources/torch_runtime.py).
MAX_CONCURRENT_STEPS = 2


# On a machine with GPUs the large-model steps take this pool instead, one slot per GPU
# (``PIXELSIFT_GPUS``), and each step holds one GPU of its own (resources/gpu_slots.py). The tag
# marks them in the UI; the per-run limit of LARGE_MODEL_TAG still applies.
GPU_POOL = "pixelsift/gpu"
GPU_TAG = "pixelsift/gpu"


def gpu_count() -> int:
    """GPUs the large-model steps of this instance share (PIXELSIFT_GPUS; 0, the default: none, they
    share the large-model pool's one slot). Read when the definitions load."""
    value = os.environ.get("PIXELSIFT_GPUS", "0").strip()
    if not value.isdigit():
        raise ValueError(f"PIXELSIFT_GPUS must be a whole number of GPUs, got {value!r}")
    return int(value)


def model_step_pool() -> str:
    return GPU_POOL if gpu_count() else LARGE_MODEL_POOL


def model_step(in_process: bool, **asset_args: Any) -> Callable[[Callable[..., Any]], Any]:
    """``@asset(**asset_args)`` for a model step, with its limits (``model_step_limits``); in the
    large-model pool its compute also holds this machine's large-model lock while it runs
    (``resources/large_model_lock.py``), which keeps two runs' models apart even when the pool's
    claim in the instance's database lets both through."""
    from resources.large_model_lock import holds_large_model_slot  # it imports LARGE_MODEL_POOL from here

    limits = model_step_limits(in_process)

    def decorate(fn: Callable[..., Any]) -> Any:
        if limits.get("pool") == LARGE_MODEL_POOL:
            fn = holds_large_model_slot(fn)
        return asset(**asset_args, **limits)(fn)

    return decorate


def model_step_limits(in_process: bool) -> dict:
    """The ``@asset`` arguments of a model step: the large-model tag and pool (the GPU pool where
    there are GPUs) when its model runs in this process; none when it runs on a model server (the
    server has its own memory and queue). On a cluster the step also asks for its GPUs
    (``resources/distributed.py``)."""
    from resources.distributed import model_step_placement  # it reads the settings, which read gpu_count here

    if not in_process:
        return {}
    tags = LARGE_MODEL | model_step_placement()
    if gpu_count():
        return {"op_tags": {**tags, GPU_TAG: "true"}, "pool": GPU_POOL}
    return {"op_tags": tags, "pool": LARGE_MODEL_POOL}
