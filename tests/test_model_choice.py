"""Choosing each task's backend and model: options, variables, pixelsift.toml and the tiny preset."""

import signal
import subprocess

import pytest
from click.testing import CliRunner

from benchmarks.ports import free_port
from dagster_project.definitions import build_definitions
from dagster_project.profiles import ConfigError, model_resources, resolve_choice
from resources.concurrency import LARGE_MODEL_POOL
from resources.openai_backends import OpenAICaptionerResource, OpenAIStructuredResource


def test_tiny_preset_never_overrides_a_named_task(tmp_path):
    # The bug of issue 10.1: `--models tiny` silently replaced the LLM the user named.
    choice = resolve_choice({"PIXELSIFT_MODELS": "tiny", "PIXELSIFT_METADATA_LLM_MODEL": "/models/mine"}, tmp_path)
    assert choice.tasks["metadata_llm"].settings["model"] == "/models/mine"
    assert choice.random_weight_tasks() == ["captioner", "clip_embedder"]
    assert "PIXELSIFT_METADATA_LLM_MODEL" in choice.tasks["metadata_llm"].describe()
    assert "MEANINGLESS" in choice.tasks["captioner"].describe()


def test_file_then_variables_then_preset(tmp_path):
    (tmp_path / "pixelsift.toml").write_text(
        'models = "tiny"\n'
        '[metadata_llm]\nbackend = "openai"\nbase_urls = ["http://127.0.0.1:8080/v1"]\nmodel = "smollm2"\n'
        'dialect = "llama_cpp"\n'
        '[captioner]\nmodel = "Salesforce/blip2-opt-2.7b"\n'
    )
    choice = resolve_choice({}, tmp_path)
    llm = choice.tasks["metadata_llm"]
    assert (llm.backend, llm.settings["model"], llm.settings["dialect"]) == ("openai", "smollm2", "llama_cpp")
    assert choice.tasks["captioner"].settings["model"] == "Salesforce/blip2-opt-2.7b"
    assert choice.random_weight_tasks() == ["clip_embedder"]
    # A variable beats the file, field by field.
    choice = resolve_choice({"PIXELSIFT_METADATA_LLM_MODEL": "other"}, tmp_path)
    assert choice.tasks["metadata_llm"].settings["model"] == "other"
    assert choice.tasks["metadata_llm"].settings["dialect"] == "llama_cpp"
    resources = model_resources(resolve_choice({"PIXELSIFT_MODELS": "hub"}, tmp_path))
    assert isinstance(resources["metadata_llm"], OpenAIStructuredResource)


@pytest.mark.parametrize("text, environ, message", [
    ('[metadata_llm]\nbackend = "vllm"\n', {}, "backend 'vllm'.*choose one of transformers, openai"),
    ('[clip_embedder]\nbackend = "openai"\n', {}, "clip_embedder: backend 'openai'"),
    ('[captionr]\nmodel = "x"\n', {}, "unknown section.*captionr"),
    ('models = "huge"\n', {}, "choose one of hub, tiny"),
    ("", {"PIXELSIFT_CAPTIONER_BASE_URLS": "http://127.0.0.1:1", "PIXELSIFT_CAPTIONER_MODEL": "tiny"},
     "tiny models run in-process"),
])
def test_bad_configuration_says_where(tmp_path, text, environ, message):
    (tmp_path / "pixelsift.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve_choice(environ, tmp_path)


def test_unknown_setting_names_task_and_source(tmp_path):
    (tmp_path / "pixelsift.toml").write_text('[metadata_llm]\nbackend = "openai"\nconcurrancy = 3\n')
    where = r"metadata_llm \(openai; set in pixelsift.toml \[metadata_llm\]\)"
    with pytest.raises(ConfigError, match=where + ".*concurrancy"):
        model_resources(resolve_choice({}, tmp_path))


def test_steps_on_a_server_leave_the_large_model_pool():
    models = model_resources("hub")  # builds resources only; loads nothing
    models["captioner"] = OpenAICaptionerResource()
    models["metadata_llm"] = OpenAIStructuredResource()
    graph = build_definitions(models=models).resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).assets_def.op.pool
             for key in graph.get_all_asset_keys() if graph.get(key).assets_def.is_executable}
    assert {name for name, pool in pools.items() if pool == LARGE_MODEL_POOL} == set()
    models["metadata_llm"] = model_resources("hub")["metadata_llm"]
    graph = build_definitions(models=models).resolve_asset_graph()
    pooled = {k.to_user_string() for k in graph.get_all_asset_keys()
              if graph.get(k).assets_def.is_executable and graph.get(k).assets_def.op.pool == LARGE_MODEL_POOL}
    assert pooled == {"image_metadata", "cluster_labels", "collection_cluster_labels"}


def test_cli_options_become_the_variables_every_process_reads(model_env, tmp_path):
    from dagster_project import cli

    monkeypatch = model_env
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIXELSIFT_REPORTS_URL", f"http://127.0.0.1:{free_port()}")
    started = []

    class NoDagsterDev:
        """Stands in for the `dagster dev` process `pixelsift ui` starts (a UI left running by a test
        would never end): this test is about the variables that process inherits."""

        def __init__(self, argv, **kwargs):
            started.append(argv)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", NoDagsterDev)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # ui forwards SIGTERM to its child
    result = CliRunner().invoke(cli.main, ["ui", "--models", "tiny", "--metadata-llm", "smollm2",
                                           "--metadata-llm-server", "http://127.0.0.1:8080/v1"])
    assert result.exit_code == 0, result.output
    assert started and started[0][:2] == cli.ui_argv("127.0.0.1", 3000)[:2]
    choice = resolve_choice()  # what the UI's code server will resolve from the inherited variables
    assert choice.tasks["metadata_llm"].backend == "openai"
    assert choice.tasks["metadata_llm"].settings == {"model": "smollm2", "base_urls": ["http://127.0.0.1:8080/v1"]}
    assert choice.random_weight_tasks() == ["captioner", "clip_embedder"]
    assert "warning: model captioner: transformers tiny" in result.output


def test_the_llm_runs_on_llama_cpp_by_default_only_where_it_is_the_fast_path(tmp_path):
    from dagster_project.profiles import default_backend

    gguf = tmp_path / "phi.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text("{}")

    def backend(settings=None, task="metadata_llm", cpu="avx2", installed=True, gpu=False):
        return default_backend(task, settings or {}, cpu=cpu, llama_cpp_installed=installed, gpu=gpu)[0]

    # CPUs without bf16 units, no GPU: the default model and GGUF files run on llama.cpp's kernels.
    assert backend() == backend({"model": str(gguf)}) == backend(cpu="avx512") == "llama_cpp"
    assert backend({"model": str(gguf), "batch_size": 8}) == "llama_cpp"
    # Everywhere else, or where llama.cpp cannot take the model or a setting, transformers.
    assert backend(cpu="amx") == backend(cpu="avx512_bf16") == backend(gpu=True) == "transformers"
    assert backend({"model": str(saved)}) == backend({"model": "microsoft/Phi-3.5-mini-instruct"}) == "transformers"
    assert backend({"model": "tiny"}) == backend({"dtype": "int8"}) == backend(task="captioner") == "transformers"
    fallback, why = default_backend("metadata_llm", {}, cpu="avx2", llama_cpp_installed=False, gpu=False)
    assert fallback == "transformers" and "pip install -e '.[llama-cpp]'" in why
    # A backend named anywhere wins over the default.
    named = resolve_choice({"PIXELSIFT_METADATA_LLM_BACKEND": "transformers", "PIXELSIFT_METADATA_LLM_MODEL": str(gguf)},
                           tmp_path)
    assert named.tasks["metadata_llm"].backend == "transformers" and not named.tasks["metadata_llm"].why


def test_on_a_cpu_without_bf16_units_the_presets_still_choose_as_before(monkeypatch, tmp_path):
    # This machine's facts replaced by an AVX2-only one's: the hub preset's LLM goes to llama.cpp,
    # the tiny preset's stays the tiny transformers model (a CI machine may be either class).
    import resources.precision

    from dagster_project import profiles

    monkeypatch.setattr(resources.precision, "cpu_class", lambda: "avx2")
    monkeypatch.setattr(profiles, "_has_gpu", lambda: False)
    monkeypatch.setattr(profiles.importlib.util, "find_spec", lambda name: object())
    tiny = resolve_choice({"PIXELSIFT_MODELS": "tiny"}, tmp_path).tasks["metadata_llm"]
    assert (tiny.backend, tiny.settings["model"]) == ("transformers", "tiny")
    hub = resolve_choice({}, tmp_path).tasks["metadata_llm"]
    assert hub.backend == "llama_cpp" and "avx2" in hub.describe()
    assert model_resources("tiny")["metadata_llm"].model.endswith("phi3")
