"""What limits how many steps run side by side: the tag and the pool of a step holding a large model.

Assets carry both. The tag limits steps within one run (the executor in
``dagster_project/execution.py`` allows one tagged step at a time); the pool limits them across
every run of the instance (``concurrency: pools:`` in ``dagster_project/dagster.yaml``: one slot).
They live here, at the bottom, so asset modules never import the composition root.
"""

from resources.distributed import model_step_placement

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



def model_step_limits(in_process: bool) -> dict:
    """The ``@asset`` arguments of a model step: the large-model tag and pool when its model runs in
    this process; none when it runs on a model server (the server has its own memory and queue).
    On a cluster the step also asks for its GPUs (``resources/distributed.py``)."""
    return {"op_tags": LARGE_MODEL | model_step_placement(), "pool": LARGE_MODEL_POOL} if in_process else {}
