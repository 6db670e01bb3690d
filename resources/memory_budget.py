"""How many rows a model step may run at once on a CPU without running out of memory.

A step's peak RSS is modelled as ``overhead + max(weights + rows x per_row, load)``: the weights
in the chosen precision, the key/value cache and activations of each row, and, for int8, the bf16
copy held while its layers are quantised one by one. ``MemoryModel`` holds these figures for the
default models (measured or derived in BENCHMARKS.md, "Peak memory by precision"); another model
is scaled by its parameter count, read from its checkpoint's headers without loading it.

The room is 80% of the machine's or container's memory (``host_memory_gib``: MemTotal and cgroup
``memory.max``), and no more than the address space this process has left under ``RLIMIT_AS``.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from resources.backends import ModelLoadError

log = logging.getLogger(__name__)

HOST_MEMORY_SHARE = 0.8  # the rest holds the OS, Dagster and the step's other work
# Batch sizes a default may take: on a CPU each doubling was faster up to 64 (BENCHMARKS.md).
CPU_BATCHES = (1, 2, 4, 8, 16, 32, 64)


class MemoryBudgetError(ModelLoadError):
    """Even one row would not fit in this machine's memory share: the step fails before loading."""


@dataclass(frozen=True)
class MemoryModel:
    what: str
    params_billion: float
    weights_gib: Mapping[str, float]  # resident weights, per precision
    per_row_gib: Mapping[str, float]  # key/value cache and activations of one row, per precision
    overhead_gib: float  # Python, torch, tokenizer, buffers: what a step holds besides the model
    load_gib: Mapping[str, float] | None = None  # a higher peak while loading (int8), per precision
    batches: tuple[int, ...] = CPU_BATCHES  # the sizes a default may take (up to the largest measured)

    def peak_gib(self, precision: str, rows: int) -> float:
        running = self.weights_gib[precision] + rows * self.per_row_gib[precision]
        return self.overhead_gib + max(running, (self.load_gib or {}).get(precision, 0.0))

    def scaled(self, params_billion: float) -> MemoryModel:
        """The same model family at another size: weights and rows in proportion, overhead kept."""
        f = params_billion / self.params_billion
        return MemoryModel(
            f"{params_billion:.2f}B-parameter model", params_billion,
            {p: w * f for p, w in self.weights_gib.items()}, {p: r * f for p, r in self.per_row_gib.items()},
            self.overhead_gib, {p: g * f for p, g in (self.load_gib or {}).items()}, self.batches,
        )

    def table(self, batches=(1, 16, 32, 64)) -> dict[str, dict[int, float]]:
        """Peak GiB by precision and batch (for the docs and ``pixelsift bench``)."""
        return {p: {b: round(self.peak_gib(p, b), 1) for b in batches} for p in self.weights_gib}


def memory_room_gib() -> float:
    """GiB a model step may plan to use in this process (see the module doc)."""
    from resources import torch_runtime

    room = HOST_MEMORY_SHARE * torch_runtime.host_memory_gib()
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        room = min(room, (soft - _address_space_used()) / 2**30)
    return room


def _address_space_used() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_batch(configured: int, precision: str, memory: MemoryModel, room_gib: float | None = None) -> int:
    """The rows per call for a CPU step: for 0 the largest of ``CPU_BATCHES`` that fits ``room_gib``;
    an explicit size that would not fit is lowered to the largest that does, with a warning."""
    room = memory_room_gib() if room_gib is None else room_gib
    per_row = memory.per_row_gib[precision]
    fits = math.floor((room - memory.overhead_gib - memory.weights_gib[precision]) / per_row) if per_row else 10**9
    if memory.peak_gib(precision, 1) > room or fits < 1:
        raise MemoryBudgetError(
            f"{memory.what} in {precision} needs about {memory.peak_gib(precision, 1):.1f} GiB for one row; this "
            f"machine allows a model step {room:.1f} GiB ({HOST_MEMORY_SHARE:.0%} of its memory or container limit)"
            + ("; dtype 'int8' needs about half of float32's" if precision == "float32" else ""))
    if configured:
        if configured <= fits:
            return configured
        log.warning("batch_size %d would need about %.1f GiB (%s, %s) of the %.1f GiB this machine allows; "
                    "running %d rows at a time instead", configured, memory.peak_gib(precision, configured),
                    memory.what, precision, room, fits)
        return fits
    return max((b for b in memory.batches if b <= fits), default=1)


def for_checkpoint(default: MemoryModel, model_ref: str) -> MemoryModel:
    """``default`` for the default model and for anything unreadable here (a hub id); a local
    checkpoint scaled by its own parameter count."""
    params = checkpoint_params_billion(model_ref)
    return default if params is None else default.scaled(params)


@lru_cache(maxsize=32)
def checkpoint_params_billion(model_ref: str) -> float | None:
    """Parameters of a local safetensors directory or GGUF file, from headers only; None otherwise."""
    path = Path(model_ref).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if files:
        return sum(_safetensors_params(f) for f in files) / 1e9
    ggufs = [path] if path.suffix.lower() == ".gguf" else (sorted(path.glob("*.gguf")) if path.is_dir() else [])
    if len(ggufs) == 1 and ggufs[0].is_file():
        from gguf import GGUFReader

        return sum(int(t.n_elements) for t in GGUFReader(ggufs[0]).tensors) / 1e9
    return None


def _safetensors_params(file: Path) -> int:
    with file.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def step_batch(configured: int, device: str, precision: str, memory: MemoryModel,
               gpu_peak_gib: Mapping[int, float]) -> int:
    """Rows per call of a model step: by memory model on a CPU, by measured peaks on a GPU."""
    if device.startswith("cuda"):
        from resources.torch_runtime import batch_for_device

        return batch_for_device(configured, device, cpu_peak_gib=memory.table(memory.batches)[precision],
                                gpu_peak_gib=dict(gpu_peak_gib))
    return cpu_batch(configured, precision, memory)


def fitting_precision(chosen: str, memory: MemoryModel, fallback: str = "int8") -> str:
    """``chosen``, or ``fallback`` where one row of ``chosen`` would not fit this machine's memory share
    and one of ``fallback`` would (what ``dtype='auto'`` does on a CPU: float32 Phi-3.5 needs ~15.5 GiB)."""
    room = memory_room_gib()
    if memory.peak_gib(chosen, 1) > room and memory.peak_gib(fallback, 1) <= room:
        log.warning("%s in %s does not fit the %.1f GiB this machine allows a step; using %s",
                    memory.what, chosen, room, fallback)
        return fallback
    return chosen


def batch_help(what: str, memory: MemoryModel, gpu_peak_gib: Mapping[int, float]) -> str:
    """The ``batch_size`` setting's description, from the figures ``step_batch`` uses."""
    table = memory.table()
    peaks = "; ".join(f"{p} " + ", ".join(f"{b}: {g}" for b, g in rows.items()) for p, rows in table.items())
    return (f"{what}; 0 = by device: on a CPU the largest of {', '.join(map(str, memory.batches))} whose estimated "
            f"peak fits {HOST_MEMORY_SHARE:.0%} of RAM or the container limit (and RLIMIT_AS); an explicit size that "
            f"would not fit is lowered, with a warning. Peak GiB of {memory.what} by precision and batch: {peaks}. "
            f"On a GPU the fastest measured that fits, up to {max(gpu_peak_gib)}.")
