"""int8 linear layers: activations quantised per token, their widest channels kept in float32.

PyTorch's dynamic int8 linear layers (FBGEMM) quantise a whole call's activations with one
scale, on CPUs without VNNI to 7 bits (``reduce_range``): one large activation anywhere in the
call coarsens every other token. On SmolLM2 that flipped one next token in five against
float32 (BENCHMARKS.md, "int8 per token"). Here, as in LLM.int8() (Dettmers et al., 2022):

- every input row (one token) gets its own scale, every output channel of the weight its own;
- the input channels with the largest values in the call (``OUTLIER_SHARE`` of them: the
  "outlier features" that per-token scales handle worst) are multiplied in float32, by the
  same int8 weights dequantised, and added to the int8 product.

The int8 x int8 -> int32 product is ``torch._int_mm``: oneDNN's integer GEMM, with whatever the
CPU has (AVX2, AVX-512 VNNI, AMX). A fixed share, rather than LLM.int8()'s magnitude threshold,
keeps the cost the same for every input and every model (random weights included). Where the
CPU has no VNNI, the weights' scales leave room for its 16-bit sums (``pairs_saturate``).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

OUTLIER_SHARE = 1 / 64  # of a layer's input channels, per call (BENCHMARKS.md: 1/128 and 0 measured too)
_TINY = 1e-12  # the scale of an all-zero row: anything but 0


@functools.cache
def pairs_saturate() -> bool:
    """True where this CPU's integer GEMM adds two int8 products in 16 bits and saturates.

    Without VNNI (AVX2-only CPUs, AVX-512 before Cascade Lake) oneDNN multiplies with
    ``vpmaddubsw``: activations shifted to 1..255 times the weights at input channels k and k+1
    (k even), summed in 16 bits. Two weights of one sign whose magnitudes add up to more than 128
    overflow it: random int8 matrices came out 18% off under ONEDNN_MAX_CPU_ISA=AVX2
    (BENCHMARKS.md, "int8 without VNNI"). Probed, not read from the CPU's flags, because oneDNN's
    choice also follows ``ONEDNN_MAX_CPU_ISA``: the exact answer is 64 x 127 x 127.
    """
    high = torch.full((32, 64), 127, dtype=torch.int8)
    return not bool((torch._int_mm(high, high.t().contiguous()) == 64 * 127 * 127).all())


def _scale(magnitude: torch.Tensor, dim: int) -> torch.Tensor:
    """The int8 scale along ``dim`` of values whose absolute values are ``magnitude``."""
    return magnitude.amax(dim=dim, keepdim=True).clamp_min(_TINY) / 127.0


def _pair_safe_scale(weight: torch.Tensor) -> torch.Tensor:
    """Each output channel's scale such that its int8 weights at k and k+1 (k even), where they
    share a sign, add up to at most 128 in magnitude: what ``vpmaddubsw`` sums without saturating.
    Coarser than ``_scale`` only as far as the channel's largest such pair needs (see ``pairs_saturate``)."""
    if weight.shape[1] % 2:
        weight = torch.nn.functional.pad(weight, (0, 1))
    even, odd = weight[:, 0::2], weight[:, 1::2]
    # Rounding adds at most 0.5 to each, so pairs scaled to 127 stay within 128.
    need = torch.where(even * odd > 0, even.abs() + odd.abs(), torch.maximum(even.abs(), odd.abs()))
    return _scale(need, dim=1)


def _to_int8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # Times the reciprocal: torch's broadcast division is 20x slower here (5.4 ms against 0.26 ms
    # for one ViT-g call's activations); the two differ only on exact halves.
    return values.mul(scale.reciprocal()).round_().to(torch.int8)


class Int8Linear(torch.nn.Module):
    """``torch.nn.Linear``'s forward in int8 (see the module doc), built from a float linear layer."""

    def __init__(self, linear: torch.nn.Linear, stored: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``stored``: this layer's ``weight_int8`` and ``weight_scale`` as an earlier quantisation
        of the same weights made them (``resources/int8_cache.py``), instead of quantising again."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.outliers = max(1, round(self.in_features * OUTLIER_SHARE))
        if stored is None:
            weight = linear.weight.detach().float()
            scale = _pair_safe_scale(weight) if pairs_saturate() else _scale(weight.abs(), dim=1)
            weight_int8 = _to_int8(weight, scale)
        else:
            weight_int8, scale = stored
            if (weight_int8.dtype, tuple(weight_int8.shape), scale.numel()) != (
                    torch.int8, (self.out_features, self.in_features), self.out_features):
                raise ValueError(f"stored int8 weights {tuple(weight_int8.shape)} do not fit a layer of "
                                 f"{self.in_features} -> {self.out_features}")
        # (out, in) row-major, multiplied transposed: the layout oneDNN's integer GEMM is fastest with.
        self.register_buffer("weight_int8", weight_int8)
        # The same, (in, out): a call's wide channels are then contiguous rows to gather, not
        # columns strided across the whole matrix (8 of a decode step's 15 ms at OPT's sizes).
        self.register_buffer("weight_int8_by_input", self.weight_int8.t().contiguous())
        self.register_buffer("weight_scale", scale.flatten().float())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        magnitude = rows.abs()  # one pass serves both the wide channels and the rows' scales
        wide = magnitude.amax(dim=0).topk(self.outliers).indices
        wide_part = rows[:, wide]
        rows = rows.index_fill(1, wide, 0.0)
        scale = _scale(magnitude.index_fill_(1, wide, 0.0), dim=1)
        out = torch._int_mm(_to_int8(rows, scale), self.weight_int8.t()).float()
        out.mul_(scale).mul_(self.weight_scale)
        out.addmm_(wide_part, self.weight_int8_by_input[wide].float().mul_(self.weight_scale))
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, float32_channels={self.outliers}")


def replace_linears(model: torch.nn.Module, make: Callable[[str, torch.nn.Linear], torch.nn.Module],
                    keep: tuple[str, ...] = ()) -> torch.nn.Module:
    """Replace every ``torch.nn.Linear`` whose name does not end with one of ``keep`` by
    ``make(name, layer)``, one at a time: the peak is the model as loaded plus one layer in float32."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is torch.nn.Linear and not full.endswith(keep):
                setattr(module, child_name, make(full, child))
    return model


def quantise_linears(model: torch.nn.Module, keep: tuple[str, ...] = ()) -> torch.nn.Module:
    """Every linear layer not named in ``keep`` as an ``Int8Linear`` (see ``replace_linears``)."""
    return replace_linears(model, lambda _, layer: Int8Linear(layer), keep)
