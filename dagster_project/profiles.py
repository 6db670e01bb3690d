"""Which model backs each task, from one configuration surface shared by the CLI, the UI and the sensor.

Three tasks: ``captioner``, ``metadata_llm`` (image metadata and cluster labels) and
``clip_embedder``. Each gets a backend (``transformers``: in-process, the default; ``openai``: an
OpenAI-compatible model server, captions and the LLM only; ``llama_cpp``: the LLM as a GGUF file
on llama.cpp's kernels, in-process) and settings (any field of that backend's resource,
docs/configuration.md). Where a setting comes from, strongest first:

1. ``pixelsift run`` / ``pixelsift ui`` options: they set the variables of 2, so that the UI's code
   server and the sensor's runs, which load the definitions in other processes, see them too;
2. ``PIXELSIFT_<TASK>_BACKEND``, ``PIXELSIFT_<TASK>_MODEL``, ``PIXELSIFT_<TASK>_BASE_URLS``
   (comma-separated), TASK being CAPTIONER, METADATA_LLM or CLIP;
3. the ``[captioner]``, ``[metadata_llm]``, ``[clip_embedder]`` tables of ``pixelsift.toml`` (in the
   working directory, or the file ``PIXELSIFT_CONFIG`` names);
4. the preset, ``PIXELSIFT_MODELS`` or ``models = "..."`` at the top of the file: ``hub`` (the real
   models, default) or ``tiny`` (random weights, built locally; outputs are MEANINGLESS). A preset
   only fills tasks that 1-3 do not name: ``--models tiny --metadata-llm DIR`` runs your LLM.

The model name ``tiny`` picks the task's random-weight model. Any task on random weights is said
in the log, in the run's tags and in the eval report (``assets/random_weights.py``).
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from resources.model_names import RANDOM_WEIGHTS_MARKER

PRESETS = ("hub", "tiny")
TINY = "tiny"
CONFIG_FILE = "pixelsift.toml"
TINY_WARNING = "random weights, outputs are MEANINGLESS (for checking an install offline only)"

# Task (resource key) -> the PIXELSIFT_<NAME>_* variables' NAME, and the backends it may use.
ENV_NAMES = {"captioner": "CAPTIONER", "metadata_llm": "METADATA_LLM", "clip_embedder": "CLIP"}
BACKENDS = {"captioner": ("transformers", "openai"), "metadata_llm": ("transformers", "openai", "llama_cpp"),
            "clip_embedder": ("transformers",)}
_TINY_BUILDERS = {"captioner": "blip2", "metadata_llm": "phi3", "clip_embedder": "clip"}


class ConfigError(ValueError):
    """The model configuration cannot be used; the message names the source and the setting."""


@dataclass(frozen=True)
class TaskChoice:
    task: str
    backend: str
    settings: dict[str, Any]
    sources: tuple[str, ...]  # where the choice was made (variables, file, preset)
    why: str = ""  # why this backend, when no setting named it

    @property
    def random_weights(self) -> bool:
        return self.settings.get("model") == TINY

    def describe(self) -> str:
        model = self.settings.get("model") or "(default)"
        where = ", ".join(self.sources)
        urls = f" at {', '.join(self.settings['base_urls'])}" if "base_urls" in self.settings else ""
        warning = f": {TINY_WARNING}" if self.random_weights else ""
        why = f" ({self.why})" if self.why else ""
        return f"{self.task}: {self.backend}{why} {model}{urls} [{where}]{warning}"


@dataclass(frozen=True)
class ModelChoice:
    tasks: dict[str, TaskChoice] = field(default_factory=dict)

    def random_weight_tasks(self) -> list[str]:
        return [task for task, choice in self.tasks.items() if choice.random_weights]


def config_file(environ: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """The configuration file in use: ``PIXELSIFT_CONFIG`` (which must exist), else ./pixelsift.toml if any."""
    named = environ.get("PIXELSIFT_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"PIXELSIFT_CONFIG={named}: no such file")
        return path
    local = (cwd or Path.cwd()) / CONFIG_FILE
    return local if local.is_file() else None


def _read_file(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(data) - {"models", *ENV_NAMES}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; "
                          f"known: models, {', '.join(ENV_NAMES)}")
    return data


def resolve_choice(environ: Mapping[str, str] | None = None, cwd: Path | None = None,
                   preset: str | None = None) -> ModelChoice:
    """Each task's backend and settings from the variables, the file and the preset (see the module doc).

    ``preset`` given: that preset alone, ignoring variables and file (tests, benchmarks)."""
    environ = os.environ if environ is None else environ
    path = None if preset else config_file(environ, cwd)
    data = _read_file(path)
    if preset is None:
        preset = environ.get("PIXELSIFT_MODELS") or data.get("models") or "hub"
        preset_source = "PIXELSIFT_MODELS" if environ.get("PIXELSIFT_MODELS") else (
            f"{path.name} models" if data.get("models") else "default")
        environ_used = environ
    else:
        preset_source, environ_used = f"preset {preset}", {}
    if preset not in PRESETS:
        raise ConfigError(f"{preset_source}={preset!r}: choose one of {', '.join(PRESETS)}")
    tasks = {}
    for task, env_name in ENV_NAMES.items():
        table = data.get(task, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{task}] must be a table")
        settings = dict(table)
        sources = [f"{path.name} [{task}]"] if table else []
        for suffix, key in (("BACKEND", "backend"), ("MODEL", "model"), ("BASE_URLS", "base_urls")):
            variable = f"PIXELSIFT_{env_name}_{suffix}"
            value = environ_used.get(variable)
            if value:
                settings[key] = [u.strip() for u in value.split(",") if u.strip()] if key == "base_urls" else value
                sources.append(variable)
        if not sources:  # not named anywhere: the preset decides
            sources = [f"{preset_source} {preset}" if preset_source != "default" else "default"]
            if preset == TINY:
                settings["model"] = TINY
        backend, why = settings.pop("backend", None), ""
        if backend is None:  # the default depends on the model (a tiny one is a transformers checkpoint)
            backend, why = ("openai", "") if "base_urls" in settings else default_backend(task, settings)
        if backend not in BACKENDS[task]:
            raise ConfigError(f"{task}: backend {backend!r} ({', '.join(sources)}): choose one of "
                              f"{', '.join(BACKENDS[task])}")
        if backend == "openai" and settings.get("model") == TINY:
            raise ConfigError(f"{task}: the tiny models run in-process; give a served model name for the "
                              "openai backend")
        if backend == "llama_cpp" and settings.get("model") == TINY:
            raise ConfigError(f"{task}: the tiny models are transformers checkpoints; give the llama_cpp "
                              "backend a GGUF file")
        tasks[task] = TaskChoice(task, backend, settings, tuple(sources), why)
    return ModelChoice(tasks)


# CPU classes (resources/precision.py) without bf16 matrix units, where the metadata LLM runs several
# times faster on llama.cpp's quantised kernels than on torch's float32 (BENCHMARKS.md, "CPU classes").
LLAMA_CPP_CLASSES = ("avx512", "avx2", "other")


def default_backend(task: str, settings: Mapping[str, Any], cpu: str | None = None,
                    llama_cpp_installed: bool | None = None, gpu: bool | None = None) -> tuple[str, str]:
    """The backend of a task no setting names, and why: ``transformers``, except the metadata LLM on
    a CPU of ``LLAMA_CPP_CLASSES`` with no GPU and llama-cpp-python installed, when its model is the
    default or a GGUF file and no transformers-only setting (``dtype``, ``device``) is given:
    ``llama_cpp`` there. (The arguments after the first two are this machine's facts, for tests.)"""
    model = settings.get("model")
    if task != "metadata_llm" or model == TINY or set(settings) - _SHARED_LLM_SETTINGS:
        return "transformers", ""
    if model is not None and not _is_gguf(str(model)):
        return "transformers", ""  # a saved model or a hub id: llama.cpp needs a GGUF file
    if cpu is None:
        from resources.precision import cpu_class

        cpu = cpu_class()
    if cpu not in LLAMA_CPP_CLASSES or (_has_gpu() if gpu is None else gpu):
        return "transformers", ""
    if llama_cpp_installed is None:
        llama_cpp_installed = importlib.util.find_spec("llama_cpp") is not None
    if not llama_cpp_installed:
        return "transformers", (f"{cpu} CPU: pip install -e '.[llama-cpp]' for llama.cpp's kernels, about 4x "
                                "faster here")
    return "llama_cpp", f"auto: {cpu} CPU, no bf16 units"


# Settings both LLM backends take: with any other (dtype, device) the choice stays transformers.
_SHARED_LLM_SETTINGS = {"model", "batch_size", "prefix_cache", "jump_forward"}


def _is_gguf(model: str) -> bool:
    from resources.backends import ModelLoadError
    from resources.metadata_llm import gguf_checkpoint

    try:
        return gguf_checkpoint(model) is not None
    except ModelLoadError:  # a .gguf that is not there (the step says so) or a folder of several
        return True


def _has_gpu() -> bool:
    """An NVIDIA or AMD GPU driver is loaded (checked without importing torch)."""
    return any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/kfd"))


def tiny_models_dir() -> Path:
    return Path(os.environ.get("PIXELSIFT_TINY_MODELS_DIR", "data/models/tiny"))


def ensure_tiny_model(root: Path, name: str) -> Path:
    """Build one tiny model (``blip2``, ``phi3`` or ``clip``) under ``root`` unless already there
    (seeded: same weights every time); marked as random weights for every later reader."""
    target = root / name
    if not (target / ".complete").exists():
        # Imported only to build: the builders need torch, which loading the definitions must not.
        from resources.tiny.blip2 import build_tiny_blip2
        from resources.tiny.clip import build_tiny_clip
        from resources.tiny.phi3 import build_tiny_phi3

        {"blip2": build_tiny_blip2, "phi3": build_tiny_phi3, "clip": build_tiny_clip}[name](target)
        (target / ".complete").write_text("built by pixelsift\n")
    marker = target / RANDOM_WEIGHTS_MARKER
    if not marker.exists():
        marker.write_text("random weights built by pixelsift: outputs are meaningless\n")
    return target


def ensure_tiny_models(root: Path) -> dict[str, Path]:
    """All three tiny models under ``root``."""
    return {name: ensure_tiny_model(root, name) for name in _TINY_BUILDERS.values()}


def task_resource(choice: TaskChoice):
    """The resource that implements one task's choice."""
    settings = dict(choice.settings)
    if choice.random_weights:
        path = ensure_tiny_model(tiny_models_dir(), _TINY_BUILDERS[choice.task]).resolve()
        settings = {"device": "cpu", "dtype": "float32", **settings, "model": str(path)}
    if choice.backend == "openai":
        from resources.openai_backends import OpenAICaptionerResource, OpenAIStructuredResource

        cls = {"captioner": OpenAICaptionerResource, "metadata_llm": OpenAIStructuredResource}[choice.task]
    # Imported here, not at the top: the `pixelsift` command loads this module, and torch with it
    # would cost every command (and every worker process it starts) seconds.
    elif choice.task == "captioner":
        from resources.captioner import CaptionerResource as cls
    elif choice.backend == "llama_cpp":
        from resources.llama_cpp_llm import LlamaCppLLMResource as cls
    elif choice.task == "metadata_llm":
        from resources.metadata_llm import MetadataLLMResource as cls
    else:
        from resources.clip_embedder import ClipEmbedderResource as cls
    where = f"{choice.task} ({choice.backend}; set in {', '.join(choice.sources)})"
    unknown = sorted(set(settings) - set(cls.model_fields))
    if unknown:  # a resource would ignore them silently
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(cls.model_fields)}")
    try:
        return cls(**settings)
    except Exception as exc:  # pydantic's message names the field; say which task and where it was set
        raise ConfigError(f"{where}: {exc}") from None


def model_resources(choice: ModelChoice | str | None = None) -> dict:
    """The captioner, metadata LLM and CLIP embedder resources: for ``choice``, a preset name, or
    (None) the configuration of this process (variables and file)."""
    if not isinstance(choice, ModelChoice):
        choice = resolve_choice(preset=choice)
    return {task: task_resource(task_choice) for task, task_choice in choice.tasks.items()}
