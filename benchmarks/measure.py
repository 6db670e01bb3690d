"""Wall time and peak memory of one benchmark step: process RSS, and GPU memory on CUDA."""

from __future__ import annotations

import gc
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its own high-water mark (``clear_refs`` 5); elsewhere it is process-wide."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak resident memory (since the last reset, where Linux allows one)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_gib: float = 0.0
    peak_gpu_gib: float | None = None
    rss_is_per_step: bool = True  # False where the OS cannot reset the peak: then it is the process's peak so far
    extra: dict = field(default_factory=dict)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def measured(device: str) -> Iterator[Measurement]:
    """Time the block and record the peak memory reached inside it."""
    gc.collect()
    m = Measurement(rss_is_per_step=_reset_peak_rss())
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        yield m
    finally:
        synchronize(device)
        m.seconds = time.perf_counter() - started
        m.peak_rss_gib = peak_rss_bytes() / 2**30
        if cuda:
            m.peak_gpu_gib = torch.cuda.max_memory_allocated() / 2**30


def free_memory(device: str) -> None:
    """Give a stage's model back before the next loads (the default models do not fit together everywhere)."""
    from resources.torch_runtime import clear_model_cache

    clear_model_cache()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
