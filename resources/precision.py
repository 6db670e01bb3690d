"""Numeric precision of a model step, chosen for the CPU class it runs on.

A precision is a model resource's ``dtype`` setting: ``float32``, ``bfloat16``, ``float16`` or
``int8`` (every linear layer's weights int8 per output channel, its activations int8 per token
with the widest channels in float32: resources/int8_linear.py; everything else float32; CPU
only). ``auto`` is the fastest measured option whose outputs stay within the measured agreement
with float32 (BENCHMARKS.md, "CPU classes").

The CPU class comes from /proc/cpuinfo, capped by the vector capability torch itself uses, so
``ATEN_CPU_CAPABILITY=avx2`` (how this project emulates an AVX2-only CPU) makes ``auto`` choose
what it would choose there.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is built: the code location loads this module
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16", "float16", "int8")
_TORCH_DTYPES = ("float32", "bfloat16", "float16")

# Most capable first: the class is the first whose flags the CPU has.
CPU_CLASSES = {
    "amx": ("amx_bf16",),
    "avx512_bf16": ("avx512_bf16",),
    "avx512": ("avx512f",),
    "avx2": ("avx2", "fma"),
}

# What ``auto`` picks per CPU class and stage (BENCHMARKS.md, "CPU classes"). bf16 where the CPU
# multiplies bf16 natively. Without that, bf16 is converted in software and slower than float32.
# int8 (per token, resources/int8_linear.py) captions 1.73x faster than float32 under AVX2, but on
# SmolLM2 it changes the most likely next token at 1.5% of positions where bf16 and llama.cpp's
# Q8_0 change 1.0-1.1% (18 captions, under AVX2), and moves MiniLM's embeddings 16-22x as far as
# bf16 does (BENCHMARKS.md, "int8 against the accepted precisions on 18 captions", "int8 without
# VNNI"): more change than the default accepts. It is opt-in, and the fallback where float32 does
# not fit in memory (resources/memory_budget.py). On the classes without bf16 the metadata LLM's
# default is not torch at all but llama.cpp's Q8_0 kernels (dagster_project/profiles.py, LLAMA_CPP_CLASSES).
AUTO_CPU = {
    "metadata_llm": {"amx": "bfloat16", "avx512_bf16": "bfloat16", "avx512": "float32", "avx2": "float32",
                     "other": "float32"},
    "captioner": {"amx": "bfloat16", "avx512_bf16": "bfloat16", "avx512": "float32", "avx2": "float32",
                  "other": "float32"},
}


def help_text() -> str:
    """The ``dtype`` setting's description, from the same table ``resolve_precision`` reads."""
    return ("'auto', " + ", ".join(repr(p) for p in PRECISIONS) + ". 'int8' quantises every linear layer "
            "(int8 weights, activations int8 per token; CPU only; quantised at the first load, then read "
            "from PIXELSIFT_INT8_CACHE); 'auto' is bf16 on CUDA, and on a CPU the "
            "measured choice for its class (BENCHMARKS.md, 'CPU classes'): bf16 with AMX or AVX512-BF16, else float32.")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


# The classes torch's own capability allows: under ATEN_CPU_CAPABILITY=avx2 nothing above avx2.
_CAPABILITY_CEILING = {"AVX512": ("amx", "avx512_bf16", "avx512", "avx2"), "AVX2": ("avx2",)}


@lru_cache(maxsize=1)
def cpu_class() -> str:
    """'amx', 'avx512_bf16', 'avx512', 'avx2' or 'other' for this machine (see the module doc)."""
    return classify(cpu_flags(), torch_capability())


def torch_capability() -> str:
    """The vector capability torch's kernels use, as ``torch.backends.cpu.get_cpu_capability()``
    says, without importing torch: the CPU's own, unless ATEN_CPU_CAPABILITY caps it."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().upper()
    return forced or "AVX512"  # no cap: classify() takes the class from the CPU's flags


def classify(flags: frozenset[str], capability: str) -> str:
    allowed = _CAPABILITY_CEILING.get(capability, ())
    for name, needed in CPU_CLASSES.items():
        if name in allowed and all(flag in flags for flag in needed):
            return name
    return "other"


def resolve_precision(dtype: str, device: str, stage: str) -> str:
    """The precision a ``dtype`` setting means on ``device`` ('cpu', 'cuda', 'cuda:1') for ``stage``."""
    if dtype == "auto":
        if device.partition(":")[0] == "cuda":
            return "bfloat16"
        return AUTO_CPU[stage][cpu_class()]
    if dtype not in PRECISIONS:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(PRECISIONS)}")
    if dtype == "int8" and device.partition(":")[0] != "cpu":
        raise ValueError("dtype 'int8' (int8 linear layers) runs on CPU only; use bfloat16 on a GPU")
    return dtype


def fingerprint_value(precision: str) -> str:
    """How a precision enters a reuse fingerprint: the plain dtypes as fingerprints held them
    before int8 existed (``torch.float32``), so results stored then are still reused."""
    if precision == "int8":
        return "int8-per-token"  # was "int8-dynamic" (FBGEMM, one scale per call): other outputs
    if precision not in _TORCH_DTYPES:
        raise ValueError(f"unknown precision {precision!r}")
    return f"torch.{precision}"  # str(torch.float32), as fingerprints held it


def load_dtype(precision: str) -> torch.dtype:
    """The dtype weights are loaded in: int8 loads bf16 (half the memory of float32 while quantising)."""
    import torch

    return torch.bfloat16 if precision == "int8" else getattr(torch, precision)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of activations, and of the layers int8 leaves unquantised."""
    import torch

    return torch.float32 if precision == "int8" else getattr(torch, precision)


def apply_precision(model: torch.nn.Module, precision: str, keep: tuple[str, ...] = (),
                    source: str | None = None) -> torch.nn.Module:
    """``model`` (loaded in ``load_dtype(precision)``) in ``precision``: for int8 each linear layer
    is quantised one at a time (resources/int8_linear.py), so the peak is the bf16 model plus one
    layer in float32, not a whole float32 copy; the int8 layers of the weights ``source`` names are
    kept on disk and read back on later loads (resources/int8_cache.py). Linear layers whose name
    ends with one of ``keep`` stay float32."""
    if precision != "int8":
        return model
    from resources.int8_cache import quantise_cached, weights_identity
    from resources.int8_linear import prepare_all

    identity = weights_identity(source) if source else None
    # .float(): embeddings, norms and kept layers compute in float32
    return prepare_all(quantise_cached(model, identity, keep).float())
