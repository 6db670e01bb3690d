"""Where the steps of a run execute: this machine's processes, a Ray cluster or Kubernetes pods.

One setting per fact, read from ``PIXELSIFT_*`` variables when the code location loads (the
executor and the op tags are part of the definitions). ``dagster_project/execution.py`` builds the
executor from these; the large-model steps carry :func:`model_step_placement` as op tags, so a
cluster gives each of them a GPU when ``model_step_gpus`` says so (docs/deployment.md).
It lives here, at the bottom, because asset modules read the tags.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from resources.settings import env_default

# The tags dagster-ray's executor and run launcher, and dagster-k8s's executor and run launcher,
# read a step's resources from (their documented names).
RAY_CONFIG_TAG = "dagster-ray/config"
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's resource name on Kubernetes

Executor = Literal["multiprocess", "ray", "k8s"]


class ExecutionSettings(BaseModel):
    """Where each step of a run executes, and what it asks a cluster for (PIXELSIFT_* variables)."""

    model_config = ConfigDict(validate_default=True)  # a misspelt PIXELSIFT_EXECUTOR fails when the code loads

    executor: Executor = Field(
        default_factory=lambda: env_default("EXECUTOR", "multiprocess"),
        description="multiprocess: each step a process on this machine; ray: each step a Ray job on the cluster at "
        "ray_address (dagster-ray); k8s: each step a Kubernetes Job (dagster-k8s, deploy/k8s/). See "
        "docs/deployment.md (PIXELSIFT_EXECUTOR). `pixelsift run` always executes in its own process.",
    )
    ray_address: str = Field(
        default_factory=lambda: env_default("RAY_ADDRESS", ""),
        description="The Ray cluster's job server, http://<head>:8265; empty: Ray's own RAY_ADDRESS variable "
        "(PIXELSIFT_RAY_ADDRESS).",
    )
    step_cpus: float = Field(
        default_factory=lambda: float(env_default("STEP_CPUS", "1")),
        gt=0,
        description="CPUs each step reserves on the Ray cluster, so Ray places steps where cores are free "
        "(PIXELSIFT_STEP_CPUS).",
    )
    model_step_gpus: int = Field(
        default_factory=lambda: int(env_default("MODEL_STEP_GPUS", "0")),
        ge=0,
        description="GPUs each large-model step (captions, image_metadata, cluster_labels) requests on Ray "
        "(num_gpus) or Kubernetes (nvidia.com/gpu limit); 0: none (PIXELSIFT_MODEL_STEP_GPUS).",
    )


def model_step_placement(settings: ExecutionSettings | None = None) -> dict[str, str]:
    """Op tags asking Ray and Kubernetes for the GPUs of one large-model step; none without GPUs.

    Both engines' tags are set: each engine reads only its own, and the definitions stay the same
    whichever executor a deployment picks."""
    gpus = (settings or ExecutionSettings()).model_step_gpus
    if not gpus:
        return {}
    limits = {GPU_RESOURCE: str(gpus)}
    return {
        RAY_CONFIG_TAG: json.dumps({"num_gpus": gpus}),
        K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": {"requests": limits, "limits": limits}}}),
    }
