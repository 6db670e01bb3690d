"""How a run executes its steps, whichever way it was started: the one executor of pixelsift.

``process_batch`` (the sensor's job) names it, and ``Definitions(executor=...)`` makes it the
executor of Dagster's implicit asset job too, which the UI's "Materialize" and every backfill run.
``pixelsift run`` executes in process instead (``execute_in_process``), one step at a time, and
so pays no process start-up at all.
Across runs, the large-model pool (``resources/concurrency.py``, limit in ``dagster.yaml``) applies.

``PIXELSIFT_EXECUTOR`` (``resources/distributed.py``) picks where steps run: processes of this
machine (default), Ray jobs (dagster-ray) or Kubernetes Jobs (dagster-k8s); docs/deployment.md.
"""

from __future__ import annotations

import os

from dagster import ExecutorDefinition, multiprocess_executor

from resources.concurrency import LARGE_MODEL_TAG, MAX_CONCURRENT_STEPS
from resources.distributed import ExecutionSettings

CODE_LOCATION_MODULE = "dagster_project.definitions"  # what dagster_project/workspace.yaml loads
STEP_PRELOAD = "dagster_project.step_preload"  # imports STEP_LIBRARIES, which the code location leaves out
# The model steps' libraries (torch, transformers, open_clip), the evaluations' (sentence_transformers,
# sklearn, scipy) and the report's (matplotlib).
STEP_LIBRARIES = ("torch", "transformers", "open_clip", "sentence_transformers", "sklearn.cluster", "sklearn.metrics",
                  "scipy.optimize", "matplotlib.figure")
LARGE_MODEL_STEPS_PER_RUN = 1
EXECUTOR_NAME = "pixelsift_executor"
_LIMITS = {"tag_concurrency_limits": [{"key": LARGE_MODEL_TAG, "limit": LARGE_MODEL_STEPS_PER_RUN}]}
_EXTRA = {"ray": "ray", "k8s": "k8s"}  # the pyproject extra each cluster executor needs


def forwarded_variables() -> list[str]:
    """The variables a step on another machine must see as the run did: every PIXELSIFT_* setting
    (paths, model choice) set where the code location loaded. Names only: the executor reads
    their values when the run starts."""
    return sorted(name for name in os.environ if name.startswith("PIXELSIFT_"))


def _multiprocess() -> ExecutorDefinition:
    return multiprocess_executor.configured(
        {
            "max_concurrent": MAX_CONCURRENT_STEPS,
            **_LIMITS,
            # Each step runs in a process forked from a server that has imported the code location
            # and the libraries the steps use (torch and all, STEP_PRELOAD) once per run, instead of a
            # fresh interpreter importing them again per step (`spawn`, Dagster's default): seconds per
            # step instead of tens under load. Forking is safe
            # here: the preloading process only imports, it starts no model, thread pool or CUDA context.
            # The module is named: with `forkserver: {}` Dagster 1.13 preloads nothing but itself (an
            # absent preload_modules reads as an empty list, not as "the job's module" its docs promise).
            "start_method": {"forkserver": {"preload_modules": [CODE_LOCATION_MODULE, STEP_PRELOAD]}},
        },
        name=EXECUTOR_NAME,
    )


def _ray(settings: ExecutionSettings) -> ExecutorDefinition:
    from dagster_ray import ray_executor

    # No executor-wide num_gpus or resources: dagster-ray 0.4.8 lets those override every step's
    # own tag (resources/distributed.py), so only the large-model steps would not get their GPU.
    ray = {"num_cpus": settings.step_cpus, "env_vars": forwarded_variables()}
    if settings.ray_address:
        ray["address"] = settings.ray_address
    return ray_executor.configured({"ray": ray, **_LIMITS}, name=EXECUTOR_NAME)


def _k8s() -> ExecutorDefinition:
    from dagster_k8s import k8s_job_executor

    # Image, namespace, volumes and the instance come from the K8sRunLauncher of dagster.yaml
    # (deploy/k8s/); per-step GPUs from the large-model steps' dagster-k8s/config tag.
    return k8s_job_executor.configured(
        {"max_concurrent": MAX_CONCURRENT_STEPS, **_LIMITS, "env_vars": forwarded_variables()},
        name=EXECUTOR_NAME,
    )


def build_executor(settings: ExecutionSettings | None = None) -> ExecutorDefinition:
    """The executor ``settings.executor`` names; a cluster executor whose package is missing says
    which extra installs it."""
    settings = settings or ExecutionSettings()
    if settings.executor == "multiprocess":
        return _multiprocess()
    try:
        return _ray(settings) if settings.executor == "ray" else _k8s()
    except ImportError as exc:
        extra = _EXTRA[settings.executor]
        raise ImportError(f"PIXELSIFT_EXECUTOR={settings.executor} needs the {extra} extra: "
                          f"pip install 'pixelsift[{extra}]' ({exc})") from exc


executor = build_executor()
