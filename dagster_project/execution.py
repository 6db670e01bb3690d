"""How a run executes its steps, whichever way it was started: the one executor of pixelsift.

``process_batch`` (the sensor's job) names it, and ``Definitions(executor=...)`` makes it the
executor of Dagster's implicit asset job too, which the UI's "Materialize" and every backfill run.
``pixelsift run`` executes in process instead (``execute_in_process``), one step at a time.
Across runs, the large-model pool (``resources/concurrency.py``, limit in ``dagster.yaml``) applies.
"""

from dagster import multiprocess_executor

from resources.concurrency import LARGE_MODEL_TAG, MAX_CONCURRENT_STEPS

LARGE_MODEL_STEPS_PER_RUN = 1

executor = multiprocess_executor.configured(
    {
        "max_concurrent": MAX_CONCURRENT_STEPS,
        "tag_concurrency_limits": [{"key": LARGE_MODEL_TAG, "limit": LARGE_MODEL_STEPS_PER_RUN}],
    },
    name="pixelsift_executor",
)
