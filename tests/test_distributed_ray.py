"""A whole batch through the real ``process_batch`` job on a real Ray cluster (head plus a worker
node on 127.0.0.1), each step a Ray job (dagster-ray's executor), and the same batch in process:
every table of the warehouse must be the same, timing columns aside.

The run is started as a user starts one outside the UI, ``dagster job execute`` with
``PIXELSIFT_EXECUTOR=ray``; its steps get the run's PIXELSIFT_* settings from the executor (the
Ray nodes were started without them), and share the warehouse and the Dagster instance through
this machine's filesystem, as a multi-machine cluster shares them through a mounted volume.

No skip under CI: a cluster that cannot start here fails the test there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "images" / "sample"
BATCH = "sample"
# The pipeline's steps, every model among them. The eval assets and checks of process_batch are
# left out here: sixteen more steps of the same kind (no model, no GPU), each a fresh process that
# imports the code location, would add about ten minutes on a shared 2-core machine.
PIPELINE = ["images", "captions", "image_metadata", "color_palettes", "clip_embeddings", "clusters", "cluster_labels"]
# What differs between two runs of the same inputs: how long things took, when, and the run.
TIMING = {"ms", "llm_ms", "processing_time_ms"}


def _require_ray():
    try:
        import dagster_ray  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        message = f"ray and dagster-ray are not installed (pip install -e '.[dev]'): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def cluster():
    _require_ray()
    from tests.ray_cluster import start_cluster

    started = time.monotonic()
    for cluster in start_cluster(worker_cpus=2):
        print(f"\nlocal Ray cluster up in {time.monotonic() - started:.1f} s")  # seen with pytest -s
        yield cluster


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    images = root / "images"
    shutil.copytree(SAMPLE, images / BATCH)
    return {"images": images, "tiny": root / "tiny_models", "baselines": ROOT / "data" / "baselines",
            "in_process": root / "warehouse_in_process", "ray": root / "warehouse_ray", "home": root / "dagster_home"}


def _settings_env(paths: dict, warehouse: Path) -> dict[str, str]:
    return {"PIXELSIFT_MODELS": "tiny", "PIXELSIFT_TINY_MODELS_DIR": str(paths["tiny"]),
            "PIXELSIFT_IMAGES_ROOT": str(paths["images"]), "PIXELSIFT_WAREHOUSE_DIR": str(warehouse),
            "PIXELSIFT_BASELINES_DIR": str(paths["baselines"])}


@pytest.fixture(scope="module")
def in_process(paths):
    """The reference: the batch in this process; it also builds the tiny models the Ray run loads."""
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions
    from dagster_project.profiles import model_resources
    from resources.settings import PixelsiftSettings

    env = _settings_env(paths, paths["in_process"])
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        models = model_resources()  # builds the tiny models
        started = time.monotonic()
        defs = build_definitions(PixelsiftSettings(), models)
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("batch", [BATCH])
        job = defs.resolve_job_def("process_batch")
        assert job.execute_in_process(partition_key=BATCH, instance=instance, op_selection=PIPELINE).success
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    print(f"\nin-process run, {len(PIPELINE)} steps: {time.monotonic() - started:.1f} s")
    return paths["in_process"]


@pytest.fixture(scope="module")
def on_ray(paths, cluster, in_process):
    """The same batch through `dagster job execute`, every step a Ray job on the cluster."""
    from dagster import DagsterInstance

    home = paths["home"]
    home.mkdir()
    shutil.copy(ROOT / "dagster_project" / "dagster.yaml", home / "dagster.yaml")  # pools and all, as deployed
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("batch", [BATCH])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSIFT_")}
    env.update(_settings_env(paths, paths["ray"]), DAGSTER_HOME=str(home), PIXELSIFT_EXECUTOR="ray",
               PIXELSIFT_RAY_ADDRESS=cluster.job_server)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "dagster_project.definitions", "-d", str(ROOT),
         "-j", "process_batch", "-o", ",".join(PIPELINE), "--tags", json.dumps({"dagster/partition": BATCH})],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    print(f"\nrun on Ray, {len(PIPELINE)} steps: {time.monotonic() - started:.1f} s")
    return done.stdout + done.stderr


def _tables(warehouse: Path) -> dict[str, object]:
    return {p.parent.parent.relative_to(warehouse).as_posix(): pq.read_table(p)
            for p in sorted(warehouse.glob(f"**/batch={BATCH}/data.parquet")) if ".cache" not in p.parts}


def test_every_step_ran_as_a_ray_job_on_the_worker_node(cluster, on_ray):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.job_server)
    # Dagster ends a step when its STEP_SUCCESS event is written, not when its Ray job ends: the last
    # step's driver may still be exiting as the run returns (CI once saw it RUNNING), so wait for that.
    deadline = time.monotonic() + 60
    while True:
        jobs = [j for j in client.list_jobs() if (j.submission_id or "").startswith("dagster-step-")]
        if all(j.status.is_terminal() for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    steps = {j.metadata["dagster/op"] for j in jobs}
    assert steps == set(PIPELINE), steps
    unfinished = [(j.metadata["dagster/op"], j.status, j.message) for j in jobs if j.status != JobStatus.SUCCEEDED]
    assert not unfinished, unfinished
    # The head offers no CPUs and each step asks for one (PIXELSIFT_STEP_CPUS): all ran on the worker node.
    assert {j.driver_node_id for j in jobs} <= set(cluster.worker_node_ids)


def test_results_are_those_of_the_in_process_run(in_process, on_ray, paths):
    expected, got = _tables(in_process), _tables(paths["ray"])
    assert sorted(expected) == sorted(got) == sorted(PIPELINE)
    for name, table in expected.items():
        keep = [c for c in table.column_names if c not in TIMING]
        assert got[name].schema.names == table.schema.names, name
        assert got[name].select(keep).to_pylist() == table.select(keep).to_pylist(), name
