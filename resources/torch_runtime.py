"""Device and dtype choice, and the once-per-process model cache, shared by all model resources.

torch is imported by the functions that use it, not here: the model resources import this module,
and the code location loads them, so a module-level import would cost every process that loads the
definitions (the UI's run worker, every `pixelsift` command) seconds for a library only model
steps use (tests/test_architecture.py).
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from resources.allocator import keep_freed_memory, return_freed_memory
from resources.backends import ModelLoadError
from resources.concurrency import MAX_CONCURRENT_STEPS, gpu_count
from resources.gpu_slots import claim_gpu
from resources.memory_budget import HOST_MEMORY_SHARE
from resources.precision import cpu_class
from resources.settings import env_default

if TYPE_CHECKING:
    import torch

_DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(device: str) -> str:
    """'auto' picks CUDA when present, else CPU; anything else is passed through."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX) and torch may use them."""
    return cpu_class() in ("amx", "avx512_bf16")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' is bf16 on CUDA and on CPUs with native bf16, float32 elsewhere."""
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") or cpu_supports_bf16() else "float32"
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(_DTYPES)}")
    import torch

    return getattr(torch, dtype)


def large_model_device(device: str) -> str:
    """Where a large model loads: ``device`` resolved, and on a machine with several GPUs
    (PIXELSIFT_GPUS > 1) a GPU no other step holds, claimed for this process (resources/gpu_slots.py)."""
    resolved = resolve_device(device)
    if resolved != "cuda" or gpu_count() < 2:
        return resolved
    index = claim_gpu(gpu_count())
    return resolved if index is None else f"cuda:{index}"


# The share of a device's memory a model step may plan to use: a GPU is the step's alone, while
# RAM also holds the OS, Dagster and the step's other work (resources/memory_budget.py).
GPU_MEMORY_SHARE = 0.9


def batch_for_device(configured: int, device: str, *, cpu_peak_gib: dict[int, float],
                     gpu_peak_gib: dict[int, float]) -> int:
    """The configured batch size; for 0 the fastest measured on this kind of device (BENCHMARKS.md).

    Larger batches were faster up to the largest measured, on a CPU as on a GPU, so it is the
    largest batch whose measured peak memory (batch -> GiB) fits in this device's share: 90% of
    the card, 80% of the machine's RAM. Where none fits: the smallest CPU batch on a CPU (the
    model itself is most of it), the largest on a GPU too small for every measured GPU batch.
    """
    if configured:
        return configured
    resolved = resolve_device(device)
    if device_type(resolved) == "cuda":
        room = GPU_MEMORY_SHARE * gpu_memory_gib(resolved)
        return max((b for b, peak in gpu_peak_gib.items() if peak <= room), default=max(cpu_peak_gib))
    room = HOST_MEMORY_SHARE * host_memory_gib()
    return max((b for b, peak in cpu_peak_gib.items() if peak <= room), default=min(cpu_peak_gib))


def host_memory_gib(cgroup_limit: Path = Path("/sys/fs/cgroup/memory.max")) -> float:
    """The machine's RAM in GiB, or the container's memory limit where that is lower (cgroup v2)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = cgroup_limit.read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit():
        total = min(total, int(limit))
    return total / 2**30


def device_type(device: str) -> str:
    """'cuda' for 'cuda:1', as ``torch.device(device).type`` says, without importing torch."""
    return device.partition(":")[0]


def gpu_memory_gib(device: str) -> float:
    """Total memory of a CUDA device in GiB; 0 where CUDA is not available."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may run on: its CPU affinity, or the container's CPU quota where lower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def steps_at_once() -> int:
    """Model steps that may run side by side on this machine: the multiprocess executor's limit,
    or ``PIXELSIFT_STEPS_AT_ONCE`` (``pixelsift run`` executes one step at a time and sets 1)."""
    value = env_default("STEPS_AT_ONCE", str(MAX_CONCURRENT_STEPS))
    return max(1, int(value)) if value.isdigit() else MAX_CONCURRENT_STEPS


def threads_per_step() -> int:
    """Intra-op threads for a model step: the cores shared among the steps that run at once.

    torch's default (every core, in every step process) oversubscribes the CPU when two steps run
    together: on 2 shared cores one SmolLM2 decode step took 8x longer with 2 threads than with 1
    (BENCHMARKS.md, "Threads per step").
    """
    return max(1, available_cores() // steps_at_once())


def apply_thread_budget() -> int:
    import torch

    threads = threads_per_step()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


class ModelDirMissing(ModelLoadError, FileNotFoundError):
    pass


OFFLINE_HINT = (
    "if this machine cannot reach the Hugging Face Hub, point the resource's `model` at a local directory, "
    "or check the install with the offline profile (`--models tiny`)"
)


def local_model_dir(model: str, hint: str) -> Path | None:
    """The local directory ``model`` names, or None for a hub id (``name`` or ``org/name``).

    Anything clearly meant as a path that is not a directory fails here, with ``hint`` saying
    what to give instead, rather than later as a confusing hub lookup error.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_like_path = path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path or path.exists():
        raise ModelDirMissing(f"model directory {model!r} does not exist (or is not a directory); {hint}")
    return None


_cache: dict[tuple, Any] = {}
_large: set[tuple] = set()
_lock = threading.Lock()


def load_once(key: tuple, loader: Callable[[], Any], *, large: bool = False) -> Any:
    """Load a model at most once per process for a given key (model, device, dtype, ...).

    A failure is remembered too: a hub download that cannot succeed (offline, wrong id) takes
    minutes of retries in the hub client, and must not be repeated for every image.

    A ``large`` model (BLIP-2, Phi-3.5-mini: 7-8 GB each in bf16) first releases the other large
    ones. Batch sizes are chosen for one large model per device, and with two resident a 16-24 GiB
    machine or card has no room left for the batch. Dagster's multiprocess executor frees a step's
    models with its process; this is what keeps ``pixelsift run``, which runs every step in one
    process, within the same memory. The resources hold no reference between calls.
    """
    apply_thread_budget()  # every model step loads its model first, in the step's own process
    keep_freed_memory()
    with _lock:
        if key not in _cache:
            if large:
                _release_large()
                _large.add(key)
            try:
                _cache[key] = loader()
            except ModelLoadError as exc:
                _cache[key] = exc
            except Exception as exc:  # noqa: BLE001 - every loading failure is reported the same way
                _cache[key] = ModelLoadError(f"could not load model {key}: {type(exc).__name__}: {exc}; {OFFLINE_HINT}")
                _cache[key].__cause__ = exc
        if isinstance(_cache[key], ModelLoadError):
            raise _cache[key]
        return _cache[key]


def _release_large() -> None:
    for key in _large:
        _cache.pop(key, None)
    _large.clear()
    gc.collect()
    return_freed_memory()  # the released model's weights were heap blocks (allocator.py)
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def clear_model_cache() -> None:
    with _lock:
        _cache.clear()
        _large.clear()
