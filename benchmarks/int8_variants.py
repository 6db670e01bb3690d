"""Where int8's change to a trained model comes from, and what finer roundings would buy.

Measured before building a kernel for any of them:

    python -m benchmarks.int8_variants --captions 18
    python -m benchmarks.int8_variants --captions 18 --variants now,down-float32

Each variant rounds SmolLM2-135M-Instruct's linear layers (all but ``lm_head``, as ``dtype = "int8"``
does) the way a scheme would, in float32 arithmetic: the same rounded values as an integer kernel
would multiply, without one ("fake quantisation"; ``now`` is what resources/int8_linear.py computes,
so its row checks the method against the real layers' figures in BENCHMARKS.md). The measure is
``benchmarks/precision.py forced``'s: float32's metadata documents fed back, and at every document
token the share whose most likely next token is float32's, and the mean KL divergence.

Weights are rounded per output channel, pair-safe (``int8_linear._pair_safe_scale``, what CPUs
without VNNI need) unless a variant says ``vnni``; activations per token, except those of the
widest 1/64 of a call's input channels (``int8_linear.OUTLIER_SHARE``). ``groups-N``: weights and
activations get a scale per N input channels (what llama.cpp's Q8_0 does with N = 32; an integer
kernel would need a call per group). ``smooth``: SmoothQuant's per-channel scales (alpha 0.5),
calibrated on the workload's ten documents (benchmarks/workload.py), which are not the measured captions;
``fixed-wide``: the channels whose activations are kept unrounded are the ones widest in that calibration, the same for
every call, instead of each call's widest (int8 could then drop its second copy of the weights).
Weights are rounded to bf16 first, as the int8 load reads them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import warnings

import torch

from resources.int8_linear import OUTLIER_SHARE, _pair_safe_scale, _scale, _to_int8, replace_linears

ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
# name: (settings for every layer, {layer type: settings that replace them for that type}); a type
# mapped to None stays float32.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "now": ({}, {}),
    "vnni": ({"pair_safe": False}, {}),
    "weights-only": ({"activations": False, "wide": 0}, {}),
    "activations-only": ({"weights": False}, {}),
    "no-wide-channels": ({"wide": 0}, {}),
    "qkv-float32": ({}, dict.fromkeys(ATTENTION_INPUTS)),
    "o-float32": ({}, {"o_proj": None}),
    "gate-up-float32": ({}, {"gate_proj": None, "up_proj": None}),
    "down-float32": ({}, {"down_proj": None}),
    "down-groups-192": ({}, {"down_proj": {"group": 192}}),
    "down-wide-1/8": ({}, {"down_proj": {"wide": 1 / 8}}),
    "groups-192": ({"group": 192}, {}),
    "groups-96": ({"group": 96}, {}),
    "groups-32-no-wide": ({"group": 32, "wide": 0}, {}),
    "smooth": ({"smooth": True}, {}),
    "fixed-wide": ({"fixed_wide": True}, {}),
}


class RoundedLinear(torch.nn.Module):
    """A linear layer whose weights and inputs are rounded as a variant says (see the module doc)."""

    def __init__(self, linear: torch.nn.Linear, group: int | None = None, wide: float = OUTLIER_SHARE,
                 pair_safe: bool = True, weights: bool = True, activations: bool = True,
                 smooth: torch.Tensor | None = None, fixed_wide: torch.Tensor | None = None):
        super().__init__()
        weight = linear.weight.detach().float()
        self.k = weight.shape[1]
        self.group = group or self.k
        self.wide = max(1, round(self.k * wide)) if wide else 0
        self.activations = activations
        self.smooth = smooth
        self.fixed_wide = fixed_wide
        if smooth is not None:  # x @ W.T == (x / s) @ (W * s).T
            weight = weight * smooth
        if weights:
            blocks = weight.reshape(weight.shape[0], self.k // self.group, self.group)
            rounded = []
            for i in range(blocks.shape[1]):
                block = blocks[:, i]
                scale = _pair_safe_scale(block) if pair_safe else _scale(block.abs(), dim=1)
                rounded.append(_to_int8(block, scale).float() * scale)
            weight = torch.stack(rounded, 1).reshape(weight.shape)
        self.weight = weight
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.k).float()
        if self.smooth is not None:
            rows = rows / self.smooth
        out = 0
        if self.wide:
            wide = self.fixed_wide if self.fixed_wide is not None else rows.abs().amax(0).topk(self.wide).indices
            out = rows[:, wide] @ self.weight[:, wide].t()
            rows = rows.index_fill(1, wide, 0.0)
        if self.activations:
            groups = rows.reshape(rows.shape[0], -1, self.group)
            scale = _scale(groups.abs(), dim=2)
            rows = (_to_int8(groups, scale).float() * scale).reshape(rows.shape)
        out = out + rows @ self.weight.t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], -1)


def calibration_maxima(model: torch.nn.Module, tokenizer) -> dict[str, torch.Tensor]:
    """Each linear layer's largest |input| per channel over the workload's prompts and documents."""
    from assets.prompts import metadata_chat
    from benchmarks.workload import EXAMPLES, document
    from resources.metadata_llm import _render

    maxima: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_, inputs, __):
            seen = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(0).float()
            maxima[name] = torch.maximum(maxima[name], seen) if name in maxima else seen
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    with torch.inference_mode():
        for example in EXAMPLES:
            prompt = _render(tokenizer, metadata_chat(example.caption))  # as the pipeline renders it
            ids = tokenizer(prompt + document(example.metadata), add_special_tokens=False)["input_ids"]
            model(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    return maxima


def rounded_model(model: torch.nn.Module, variant: str, maxima: dict[str, torch.Tensor]) -> torch.nn.Module:
    settings, by_type = VARIANTS[variant]

    def make(name: str, layer: torch.nn.Linear) -> torch.nn.Module:
        kind = name.rsplit(".", 1)[-1]
        chosen = dict(settings)
        if kind in by_type:
            if by_type[kind] is None:
                return layer
            chosen |= by_type[kind]
        if chosen.pop("smooth", False):  # SmoothQuant, alpha 0.5
            weight_max = layer.weight.detach().float().abs().amax(0).clamp_min(1e-5)
            chosen["smooth"] = (maxima[name].clamp_min(1e-5) / weight_max).sqrt().clamp_min(1e-5)
        if chosen.pop("fixed_wide", False):  # the channels widest in calibration, the same for every call
            chosen["fixed_wide"] = maxima[name].topk(max(1, round(layer.in_features * OUTLIER_SHARE))).indices
        return RoundedLinear(layer, **chosen)

    return replace_linears(copy.deepcopy(model), make, keep=("lm_head",))


def measure(model_dir: str, captions: list[str], variants: list[str]) -> list[dict]:
    from benchmarks.precision import _forced_logits, _next_token_agreement, forced_reference

    loaded, sequences, base = forced_reference(model_dir, captions)
    as_loaded = copy.deepcopy(loaded.model).bfloat16().float()  # the weights int8 is rounded from
    calibrated = any(VARIANTS[v][0].get("smooth") or VARIANTS[v][0].get("fixed_wide") for v in variants)
    maxima = calibration_maxima(as_loaded, loaded.tokenizer) if calibrated else {}
    return [{"variant": v} | _next_token_agreement(base, _forced_logits(rounded_model(as_loaded, v, maxima), sequences))
            for v in variants]


def main() -> None:
    from benchmarks.precision import benchmark_captions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=18, help="8 are benchmarks/precision.py's, 9-18 the workload's")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--model", help="a saved copy of SmolLM2 (tests' cache) instead of unpacking the GGUF")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("PIXELSIFT_STEPS_AT_ONCE", "1")  # every core for the one measurement
    from resources.smollm2 import smollm2_gguf_path

    print(json.dumps(measure(args.model or str(smollm2_gguf_path()), benchmark_captions(args.captions),
                             args.variants.split(",")), indent=1))


if __name__ == "__main__":
    main()
