"""The cluster deployments, checked as far as this machine allows without a cluster: the Kubernetes
files parse, the instance's dagster.yaml and each executor's configuration pass the config schemas
of dagster-k8s, dagster-postgres and dagster-ray themselves, and the pipeline's own step tags give
the pods and Ray jobs intended (a GPU for each large-model step, the shared volume for every step).
Nothing here reaches a Kubernetes API server or Postgres: none exists here; the Ray path runs for
real in tests/test_distributed_ray.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from resources.distributed import GPU_RESOURCE, ExecutionSettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        message = f"{module} is not installed (pip install -e '.[dev]'): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _valid(schema, value, env: dict | None = None):
    """The config with defaults filled in, as Dagster processes it, or the schema's own errors."""
    from dagster._config import process_config, resolve_to_config_type

    previous = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        result = process_config(resolve_to_config_type(schema), value)
    finally:
        for key, old in previous.items():
            os.environ.pop(key) if old is None else os.environ.__setitem__(key, old)
    assert result.success, [e.message for e in result.errors]
    return result.value


@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return yaml.safe_load((K8S / "dagster.yaml").read_text())


def test_every_kubernetes_file_parses_and_the_manifests_are_what_the_instance_names():
    documents = {p.name: list(yaml.safe_load_all(p.read_text())) for p in K8S.glob("*.yaml")}
    assert set(documents) == {"dagster.yaml", "pixelsift.yaml", "values.yaml"}
    manifests = {(d["kind"], d["metadata"]["name"]): d for d in documents["pixelsift.yaml"]}
    assert manifests[("ConfigMap", "pixelsift-env")]["data"]["PIXELSIFT_EXECUTOR"] == "k8s"
    assert manifests[("PersistentVolumeClaim", "pixelsift-data")]["spec"]["accessModes"] == ["ReadWriteMany"]
    launcher = yaml.safe_load((K8S / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert launcher["env_config_maps"] == ["pixelsift-env"]
    assert launcher["volumes"][0]["persistentVolumeClaim"]["claimName"] == "pixelsift-data"
    # Every PIXELSIFT_ variable the ConfigMap sets is a setting pixelsift has.
    data = manifests[("ConfigMap", "pixelsift-env")]["data"]
    settings_text = (ROOT / "docs" / "configuration.md").read_text()
    assert all(name in settings_text for name in data if name.startswith("PIXELSIFT_")), sorted(data)


def test_the_instance_passes_dagsters_own_schemas(instance_yaml, tmp_path):
    _require("dagster_k8s")
    _require("dagster_postgres")
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    (tmp_path / "dagster.yaml").write_text((K8S / "dagster.yaml").read_text())
    dagster_instance_config(str(tmp_path))  # the top level: raises on an unknown or misspelt section
    password = {"DAGSTER_PG_PASSWORD": "not-a-secret"}
    storage = _valid(DagsterPostgresStorage.config_type(), instance_yaml["storage"]["postgres"], password)
    assert storage["postgres_db"]["hostname"] == "pixelsift-postgres"
    assert instance_yaml["run_launcher"]["module"] == "dagster_k8s"
    launcher = _valid(K8sRunLauncher.config_type(), instance_yaml["run_launcher"]["config"])
    assert launcher["volume_mounts"] == [{"name": "pixelsift-data", "mountPath": "/data"}]
    assert instance_yaml["concurrency"]["pools"]["default_limit"] == 1  # the large-model pool, across every pod


def test_the_ray_instance_passes_dagsters_own_schemas(tmp_path):
    _require("dagster_ray")
    _require("dagster_postgres")
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres import DagsterPostgresStorage
    from dagster_ray import RayRunLauncher

    text = (ROOT / "deploy" / "ray" / "dagster.yaml").read_text()
    (tmp_path / "dagster.yaml").write_text(text)
    dagster_instance_config(str(tmp_path))
    config = yaml.safe_load(text)
    _valid(DagsterPostgresStorage.config_type(), config["storage"]["postgres"], {"DAGSTER_PG_PASSWORD": "x"})
    assert (config["run_launcher"]["module"], config["run_launcher"]["class"]) == ("dagster_ray", "RayRunLauncher")
    launcher = _valid(RayRunLauncher.config_type(), config["run_launcher"]["config"])
    # Every setting a step needs travels with the run (the names the executor forwards are PIXELSIFT_*).
    assert {"PIXELSIFT_EXECUTOR", "PIXELSIFT_WAREHOUSE_DIR", "PIXELSIFT_IMAGES_ROOT"} <= set(launcher["ray"]["env_vars"])


@pytest.mark.parametrize("kind", ["multiprocess", "ray", "k8s"])
def test_each_executor_configuration_passes_its_packages_schema(kind, monkeypatch):
    if kind != "multiprocess":
        _require({"ray": "dagster_ray", "k8s": "dagster_k8s"}[kind])
    from dagster_project.execution import build_executor

    monkeypatch.setenv("PIXELSIFT_IMAGES_ROOT", "/data/images")
    executor = build_executor(ExecutionSettings(executor=kind, ray_address="http://head:8265", step_cpus=2))
    resolved = executor.config_schema.resolve_config({})  # the configured values against the package's schema
    assert resolved.success, [e.message for e in resolved.errors]
    config = resolved.value["config"]
    assert config["tag_concurrency_limits"] == [{"key": "pixelsift/large_model", "limit": 1}]
    if kind == "ray":
        assert config["ray"]["num_cpus"] == 2 and config["ray"]["address"] == "http://head:8265"
        assert "PIXELSIFT_IMAGES_ROOT" in config["ray"]["env_vars"]  # steps elsewhere see the run's settings
        assert config["ray"]["num_gpus"] is None  # else it would override each step's own (resources/distributed.py)
    if kind == "k8s":
        assert "PIXELSIFT_IMAGES_ROOT" in config["env_vars"]


def test_a_missing_cluster_package_names_the_extra_to_install(monkeypatch):
    import builtins

    from dagster_project.execution import build_executor

    real_import = builtins.__import__

    def without_dagster_ray(name, *args, **kwargs):  # stands in for an install without the extra
        if name.startswith("dagster_ray"):
            raise ImportError("No module named 'dagster_ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_dagster_ray)
    with pytest.raises(ImportError, match=r"pixelsift\[ray\]"):
        build_executor(ExecutionSettings(executor="ray"))


def test_a_wrong_executor_name_is_refused_plainly(monkeypatch):
    monkeypatch.setenv("PIXELSIFT_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match="multiprocess.*ray.*k8s"):
        ExecutionSettings()


def _step_tags(monkeypatch, gpus: int) -> dict[str, dict]:
    from assets import build_pipeline_assets

    monkeypatch.setenv("PIXELSIFT_MODEL_STEP_GPUS", str(gpus))
    every = build_pipeline_assets({"captioner": True, "metadata_llm": True})
    return {asset.key.to_user_string(): dict(asset.op.tags) for asset in every}


def test_large_model_steps_get_a_gpu_on_kubernetes_and_ray(monkeypatch, instance_yaml):
    _require("dagster_k8s")
    _require("dagster_ray")
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job,
                                 get_user_defined_k8s_config)
    from dagster_ray.configs import RayExecutionConfig

    launcher = instance_yaml["run_launcher"]["config"]
    run_context = K8sContainerContext(
        env_config_maps=launcher["env_config_maps"], volumes=launcher["volumes"],
        volume_mounts=launcher["volume_mounts"],
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(launcher["run_k8s_config"]))

    def pod(tags: dict):
        # As k8s_job_executor builds a step's pod: the run's context merged with the step's own tag.
        context = run_context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
        job_config = DagsterK8sJobConfig(
            job_image=launcher["job_image"], dagster_home=launcher["dagster_home"],
            instance_config_map=launcher["instance_config_map"],
            postgres_password_secret=launcher["postgres_password_secret"])  # volumes, env: in the context
        job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "dagster-step-test",
                                        user_defined_k8s_config=context.run_k8s_config)
        return job.spec.template.spec

    tags = _step_tags(monkeypatch, gpus=1)
    for step in ("captions", "image_metadata", "cluster_labels"):
        spec = pod(tags[step])
        resources = spec.containers[0].resources
        assert resources.limits[GPU_RESOURCE] == "1" and resources.requests[GPU_RESOURCE] == "1", step
        assert resources.limits["memory"] == "24Gi", step  # the launcher's own limits are kept, not replaced
        assert RayExecutionConfig.from_tags(tags[step]).num_gpus == 1, step
    for step in ("images", "clip_embeddings", "color_palettes", "clusters"):
        spec = pod(tags[step])
        assert GPU_RESOURCE not in (spec.containers[0].resources.limits or {}), step
        assert spec.containers[0].resources.requests == {"cpu": "1", "memory": "4Gi"}, step
        assert RayExecutionConfig.from_tags(tags[step]).num_gpus is None, step
    # Every step's pod mounts the shared volume and reads the settings ConfigMap.
    spec = pod(tags["images"])
    assert [(m.name, m.mount_path) for m in spec.containers[0].volume_mounts if m.name == "pixelsift-data"] == \
        [("pixelsift-data", "/data")]
    assert spec.volumes[-1].persistent_volume_claim.claim_name == "pixelsift-data"
    assert any(e.config_map_ref and e.config_map_ref.name == "pixelsift-env" for e in spec.containers[0].env_from)


def test_without_gpus_no_step_asks_for_one(monkeypatch):
    tags = _step_tags(monkeypatch, gpus=0)
    assert not any(key.startswith(("dagster-k8s/", "dagster-ray/")) for step in tags.values() for key in step)
