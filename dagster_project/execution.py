"""How a run executes its steps, whichever way it was started: the one executor of pixelsift.

``process_batch`` (the sensor's job) names it, and ``Definitions(executor=...)`` makes it the
executor of Dagster's implicit asset job too, which the UI's "Materialize" and every backfill run.
``pixelsift run`` executes in process instead (``execute_in_process``), one step at a time, and
so pays no process start-up at all.
Across runs, the large-model pool (``resources/concurrency.py``, limit in ``dagster.yaml``) applies.
"""

from dagster import multiprocess_executor

from resources.concurrency import LARGE_MODEL_TAG, MAX_CONCURRENT_STEPS

CODE_LOCATION_MODULE = "dagster_project.definitions"  # what dagster_project/workspace.yaml loads
STEP_PRELOAD = "dagster_project.step_preload"  # imports STEP_LIBRARIES, which the code location leaves out
# The model steps' libraries (torch, transformers, open_clip), the evaluations' (sentence_transformers,
# sklearn, scipy) and the report's (matplotlib).
STEP_LIBRARIES = ("torch", "transformers", "open_clip", "sentence_transformers", "sklearn.cluster", "sklearn.metrics",
                  "scipy.optimize", "matplotlib.figure")
LARGE_MODEL_STEPS_PER_RUN = 1

executor = multiprocess_executor.configured(
    {
        "max_concurrent": MAX_CONCURRENT_STEPS,
        "tag_concurrency_limits": [{"key": LARGE_MODEL_TAG, "limit": LARGE_MODEL_STEPS_PER_RUN}],
        # Each step runs in a process forked from a server that has imported the code location
        # and the libraries the steps use (torch and all, STEP_PRELOAD) once per run, instead of a
        # fresh interpreter importing them again per step (`spawn`, Dagster's default): seconds per
        # step instead of tens under load. Forking is safe here: the preloading process only imports,
        # it starts no model, thread pool or CUDA context.
        # The module is named: with `forkserver: {}` Dagster 1.13 preloads nothing but itself (an
        # absent preload_modules reads as an empty list, not as "the job's module" its docs promise).
        "start_method": {"forkserver": {"preload_modules": [CODE_LOCATION_MODULE, STEP_PRELOAD]}},
    },
    name="pixelsift_executor",
)
