"""int8 linear layers: activations quantised per token, their widest channels kept in float32.

PyTorch's dynamic int8 linear layers (FBGEMM) quantise a whole call's activations with one
scale, on CPUs without VNNI to 7 bits (``reduce_range``): one large activation anywhere in the
call coarsens every other token. On SmolLM2 that flipped one next token in five against
float32 (BENCHMARKS.md, "int8 per token"). Here, as in LLM.int8() (Dettmers et al., 2022):

- every input row (one token) gets its own scale, every output channel of the weight its own;
- the input channels with the largest values in the call (``OUTLIER_SHARE`` of them: the
  "outlier features" that per-token scales handle worst) are multiplied in float32, by the
  same int8 weights dequantised, and added to the int8 product.

The integer product is one of two kernels (``kernel()``), whichever is faster on the CPU found:

- ``fbgemm`` where the CPU has no VNNI (AVX2-only CPUs): FBGEMM's dynamic int8 linear layer, its
  weights packed once at load. Under AVX2, a Phi-3.5-mini decode step took 1.6x less time with it
  at 32 rows and 2.9x at 2, a prefill 10% more (BENCHMARKS.md, "int8 on FBGEMM's kernels"):
  oneDNN's call of 1 row costs about what one of 16 does there. FBGEMM quantises a call's
  activations with one scale, so each row is divided by its own largest value first and the
  output multiplied back: per-token scales through a per-call kernel (the product is linear in
  each row);
- ``onednn`` elsewhere (VNNI, AMX): ``torch._int_mm``, as fast as FBGEMM or faster there from 16 rows.

A fixed share of wide channels, rather than LLM.int8()'s magnitude threshold, keeps the cost the
same for every input and every model (random weights included). Where the CPU has no VNNI, the
weights' scales leave room for its 16-bit sums (``pairs_saturate``).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch

from resources.settings import env_default

OUTLIER_SHARE = 1 / 64  # of a layer's input channels, per call (BENCHMARKS.md: 1/128 and 0 measured too)
_TINY = 1e-12  # the scale of an all-zero row: anything but 0


def _saturates(product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """True where ``product(a, w)`` (int8 rows times int8 weights (out, in), 64 input channels)
    adds two int8 products in 16 bits and saturates: the exact answer is 64 x 127 x 127."""
    high = torch.full((32, 64), 127, dtype=torch.int8)
    return not bool((product(high, high).round() == 64 * 127 * 127).all())


@contextlib.contextmanager
def _fbgemm_engine() -> Iterator[None]:
    # Which kernels torch's quantised ops pack for is a process-wide setting, not a thread's;
    # packed weights keep theirs, so it is needed only while packing. Where it is FBGEMM already
    # (prepare_all's threads) it is left alone: threads switching it back and forth would race.
    before = torch.backends.quantized.engine
    if before == "fbgemm":
        yield
        return
    torch.backends.quantized.engine = "fbgemm"
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _fbgemm_pack(weight_int8: torch.Tensor) -> torch.ScriptObject:
    """``weight_int8`` (out, in) packed for FBGEMM, as integers with scale 1: the float scales are
    applied outside, as for oneDNN's product."""
    rows = weight_int8.shape[0]
    with warnings.catch_warnings():
        # torch 2.14 deprecates quantised tensors (torchao's are to replace them); the pinned torch
        # has them, and FBGEMM's packing takes nothing else.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions", category=UserWarning)
        quantised = torch._make_per_channel_quantized_tensor(
            weight_int8.contiguous(), torch.ones(rows, dtype=torch.double), torch.zeros(rows, dtype=torch.long), 0)
    with _fbgemm_engine():
        return torch.ops.quantized.linear_prepack(quantised, None)


def _fbgemm_product(a: torch.Tensor, weight_int8: torch.Tensor) -> torch.Tensor:
    # The probe's rows are all 127 (one sign): FBGEMM's own quantisation takes them to 255, and
    # 255 x 127 x 2 saturates 16 bits as 127 x 127 x 2 x 2 does in oneDNN's shifted form.
    return torch.ops.quantized.linear_dynamic(a.float() / 127, _fbgemm_pack(weight_int8), False) * 127


KERNELS = ("fbgemm", "onednn")


@functools.cache
def kernel() -> str:
    """The integer GEMM this process multiplies with: 'fbgemm' where FBGEMM is built in and its
    sums saturate (no VNNI: AVX2-only CPUs, AVX-512 before Cascade Lake; FBGEMM follows
    ``FBGEMM_ENABLE_INSTRUCTIONS``), 'onednn' elsewhere. Probed, not read from the CPU's flags,
    because each library's choice also follows its own variable (benchmarks/cpu_emulation.py).
    ``PIXELSIFT_INT8_KERNEL`` (fbgemm or onednn) overrides the choice: for comparing them, or a
    way around one that misbehaves on some CPU."""
    chosen = env_default("INT8_KERNEL", "auto")
    if chosen in KERNELS:
        return chosen
    if chosen != "auto":
        raise ValueError(f"PIXELSIFT_INT8_KERNEL={chosen!r}: choose auto, {' or '.join(KERNELS)}")
    if "fbgemm" in torch.backends.quantized.supported_engines and _saturates(_fbgemm_product):
        return "fbgemm"
    return "onednn"


@functools.cache
def pairs_saturate() -> bool:
    """True where this process's integer GEMM (``kernel()``) adds two int8 products in 16 bits and saturates.

    Without VNNI, oneDNN and FBGEMM multiply with ``vpmaddubsw``: unsigned 8-bit activations (up
    to 255) times the weights at input channels k and k+1 (k even), summed in 16 bits. Two weights
    of one sign whose magnitudes add up to more than 128 overflow it: random int8 matrices came
    out 18% off under ONEDNN_MAX_CPU_ISA=AVX2 (BENCHMARKS.md, "int8 without VNNI").
    """
    if kernel() == "fbgemm":
        return _saturates(_fbgemm_product)
    return _saturates(lambda a, w: torch._int_mm(a, w.t().contiguous()))


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
        """``stored``: this layer's ``weight_int8_by_input`` and ``weight_scale`` as an earlier
        quantisation of the same weights made them (``resources/int8_cache.py``), instead of
        quantising again."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.outliers = max(1, round(self.in_features * OUTLIER_SHARE))
        if stored is None:
            weight = linear.weight.detach().float()
            scale = _pair_safe_scale(weight) if pairs_saturate() else _scale(weight.abs(), dim=1)
            by_input = _to_int8(weight, scale).t().contiguous()
        else:
            by_input, scale = stored
            if (by_input.dtype, tuple(by_input.shape), scale.numel()) != (
                    torch.int8, (self.in_features, self.out_features), self.out_features):
                raise ValueError(f"stored int8 weights {tuple(by_input.shape)} do not fit a layer of "
                                 f"{self.in_features} -> {self.out_features}")
        # (in, out): a call's wide channels are contiguous rows to gather, not columns strided
        # across the whole matrix (8 of a decode step's 15 ms at OPT's sizes).
        self.register_buffer("weight_int8_by_input", by_input)
        self.register_buffer("weight_scale", scale.flatten().float())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.kernel = kernel()
        self._packed: torch.ScriptObject | None = None
        self.register_buffer("weight_int8", None, persistent=False)

    def prepare(self) -> "Int8Linear":
        """Lay the weights out for the product, once: packed for FBGEMM (0.7 s per 50 M weights,
        one core: ``prepare_all`` packs a model's layers on every core at load), or (out, in)
        row-major for oneDNN, multiplied transposed, the layout its integer GEMM is fastest with."""
        if self._packed is None and self.weight_int8 is None:
            if self.kernel == "fbgemm":
                self._packed = _fbgemm_pack(self.weight_int8_by_input.t())
            else:
                self.weight_int8 = self.weight_int8_by_input.t().contiguous()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.prepare()
        rows = x.reshape(-1, self.in_features).float()
        magnitude = rows.abs()  # one pass serves both the wide channels and the rows' scales
        wide = magnitude.amax(dim=0).topk(self.outliers).indices
        wide_part = rows[:, wide]
        rows = rows.index_fill(1, wide, 0.0)
        scale = _scale(magnitude.index_fill_(1, wide, 0.0), dim=1)
        if self._packed is not None:
            # Every row to [-127, 127]: FBGEMM's one scale for the call is then each row's own.
            out = torch.ops.quantized.linear_dynamic(rows.mul_(scale.reciprocal()), self._packed, False)
        else:
            out = torch._int_mm(_to_int8(rows, scale), self.weight_int8.t()).float()
        out.mul_(scale).mul_(self.weight_scale)
        out.addmm_(wide_part, self.weight_int8_by_input[wide].float().mul_(self.weight_scale))
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, float32_channels={self.outliers}, kernel={self.kernel}")


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


def prepare_all(model: torch.nn.Module) -> torch.nn.Module:
    """``Int8Linear.prepare`` for every int8 layer of ``model``, a layer per core at a time: FBGEMM
    packs on one core, so a model's 3.6 billion weights took about 50 s one by one (forward would
    otherwise pack each layer at its first call)."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    engine = _fbgemm_engine() if any(layer.kernel == "fbgemm" for layer in layers) else contextlib.nullcontext()
    with engine, ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(Int8Linear.prepare, layers))
    return model
