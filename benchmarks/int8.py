"""Int8 weight-only quantisation for CPU decode, measured where it acts: Phi-3.5-mini's linear layers.

Weights are quantised per output channel (symmetric, scale = max |w| / 127) and multiplied with
PyTorch's int8 weight-only kernel (``aten._weight_int8pack_mm``, what torchao uses on CPU).
For each number of tokens per forward call the result gives the time of bf16 and int8 layers
and how far int8 outputs are from bf16 ones on the same inputs (relative L2 error).
Halving the bytes read helps only while a call is memory-bound (a few tokens per call); the
batched decoder runs 32-64 tokens per call, where bf16 uses the CPU's AMX units and int8 does not.
"""

from __future__ import annotations

import time

import torch

# (out_features, in_features) of each linear layer in a Phi-3.5-mini decoder layer.
PHI35_LINEARS = {"qkv_proj": (9216, 3072), "o_proj": (3072, 3072), "gate_up_proj": (16384, 3072), "down_proj": (3072, 8192)}


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(weight.float() / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.to(weight.dtype)


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def measure_int8_linears(tokens_per_call=(1, 16, 32, 64), repeats: int = 10, seed: int = 0) -> list[dict]:
    """One decoder layer's linears (x 32 layers = the model's) in bf16 and int8, per tokens per call."""
    gen = torch.Generator().manual_seed(seed)
    layers = {
        name: (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16) for name, shape in PHI35_LINEARS.items()
    }
    quantized = {name: quantize_int8(w) for name, w in layers.items()}
    rows = []
    for tokens in tokens_per_call:
        inputs = {n: torch.randn(tokens, w.shape[1], generator=gen).to(torch.bfloat16) for n, w in layers.items()}
        bf16 = _median_seconds(lambda: [torch.nn.functional.linear(inputs[n], w) for n, w in layers.items()], repeats)
        int8 = _median_seconds(
            lambda: [torch.ops.aten._weight_int8pack_mm(inputs[n], q, s) for n, (q, s) in quantized.items()], repeats
        )
        errors = []
        for n, w in layers.items():
            ref = torch.nn.functional.linear(inputs[n], w).float()
            got = torch.ops.aten._weight_int8pack_mm(inputs[n], *quantized[n]).float()
            errors.append(float((got - ref).norm() / ref.norm()))
        rows.append({
            "tokens_per_call": tokens,
            "bf16_ms_per_layer": 1000 * bf16,
            "int8_ms_per_layer": 1000 * int8,
            "int8_speedup": bf16 / int8,
            "max_relative_error_vs_bf16": max(errors),
        })
    return rows
