"""The two integer GEMMs ``dtype = "int8"`` can multiply with, side by side: FBGEMM's packed kernel
and oneDNN's ``torch._int_mm`` (``resources/int8_linear.py``, ``kernel()``).

    python -m benchmarks.int8_kernels --cpu avx2 layers                  # Phi-3.5-mini's linear shapes
    python -m benchmarks.int8_kernels --cpu avx2 model --model data/models/bench/phi35
    python -m benchmarks.int8_kernels --cpu avx2 groups                  # FBGEMM, a call per group

``layers``: for each of Phi-3.5-mini's four linear shapes, ``--copies`` layers of the same int8
weights (so the weights come from memory, as in a model, not from the cache), each called in
turn at every rows-per-call, the kernels interleaved round by round; milliseconds per layer call,
medians. ``model``: the full-size model loaded by the pipeline's loader in int8, both layouts kept,
one forward of the whole model at a decode step's shapes (rows x 1 token) and a prefill's, per
kernel. ``groups``: FBGEMM on Phi-3.5-mini's shapes with one call per group of input channels,
what a scale per group (``benchmarks/int8_variants.py``, ``groups-N``) would cost on this kernel:
the calls and the sum of their outputs only (the rows' scaling per group would come on top), group
sizes interleaved, ms per layer call. ``--cpu avx2`` runs it in a child process capped to AVX2 (``benchmarks/cpu_emulation.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

KERNELS = ("fbgemm", "onednn")


def _use(layers: list, name: str) -> None:
    """Every layer multiplies with kernel ``name`` (forward uses whichever layout it holds); each
    keeps both layouts once made, so switching costs nothing."""
    for layer in layers:
        saved = layer.__dict__.setdefault("_layouts", {})
        if name not in saved:
            layer.kernel, layer._packed, layer.weight_int8 = name, None, None
            layer.prepare()
            saved[name] = layer._packed if name == "fbgemm" else layer.weight_int8
        layer.kernel = name
        layer._packed = saved[name] if name == "fbgemm" else None
        layer.weight_int8 = saved[name] if name == "onednn" else None


def _timed(run, rounds: int) -> dict[str, float]:
    times = {k: [] for k in KERNELS}
    for _ in range(rounds):
        for name in KERNELS:
            started = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - started)
    return {k: statistics.median(v) for k, v in times.items()}


def measure_layers(rows_per_call=(1, 2, 16, 32, 64, 1024), copies: int = 12, rounds: int = 3) -> list[dict]:
    import torch

    from benchmarks.int8 import PHI35_LINEARS
    from resources.int8_linear import Int8Linear

    torch.manual_seed(0)
    results = []
    for shape_name, (out_features, in_features) in PHI35_LINEARS.items():
        linear = torch.nn.Linear(in_features, out_features, bias=False)
        linear.weight.data.normal_(0, 0.02)
        first = Int8Linear(linear)
        layers = [Int8Linear(linear, stored=(first.weight_int8_by_input, first.weight_scale)) for _ in range(copies)]
        with torch.inference_mode():
            for rows in rows_per_call:
                x = torch.randn(rows, in_features)

                def run(name):
                    _use(layers, name)
                    for layer in layers:
                        layer(x)

                run("fbgemm"), run("onednn")  # warm-up: both layouts made before timing
                ms = {k: round(v / copies * 1000, 2) for k, v in _timed(run, rounds).items()}
                results.append({"shape": shape_name, "rows": rows, **{f"{k}_ms": v for k, v in ms.items()}})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def measure_model(model_dir: str, rounds: int = 3) -> list[dict]:
    import torch

    from resources.int8_linear import Int8Linear
    from resources.metadata_llm import load_chat_model

    model = load_chat_model(model_dir, "cpu", "int8").model
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    results = []
    with torch.inference_mode():
        for rows, tokens in ((32, 1), (16, 1), (2, 1), (4, 64)):
            ids = torch.randint(0, model.config.vocab_size, (rows, tokens))

            def run(name):
                _use(layers, name)
                model(input_ids=ids, use_cache=False)

            run("fbgemm"), run("onednn")
            seconds = _timed(run, rounds)
            results.append({"rows": rows, "tokens": tokens, **{f"{k}_s": round(v, 3) for k, v in seconds.items()}})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def measure_groups(rows_per_call=(2, 32, 1024), sizes=(None, 512, 256, 128), copies: int = 4,
                   rounds: int = 3) -> list[dict]:
    import torch

    from benchmarks.int8 import PHI35_LINEARS
    from resources.int8_linear import _fbgemm_pack

    torch.manual_seed(0)
    results = []
    for shape_name, (out_features, in_features) in PHI35_LINEARS.items():
        weight = torch.randint(-64, 64, (out_features, in_features), dtype=torch.int8)
        packed = {size: [[_fbgemm_pack(weight[:, i : i + size]) for i in range(0, in_features, size)]
                         for _ in range(copies)]
                  for size in (s or in_features for s in sizes)}  # None: one call for the whole layer
        with torch.inference_mode():
            for rows in rows_per_call:
                x = torch.randn(rows, in_features)

                def run(size):
                    for layer in packed[size]:
                        out = torch.ops.quantized.linear_dynamic(x[:, :size], layer[0], False)
                        for j, group in enumerate(layer[1:], 1):
                            out.add_(torch.ops.quantized.linear_dynamic(x[:, j * size : (j + 1) * size], group, False))

                times = {size: [] for size in packed}
                for _ in range(rounds + 1):  # the first round warms up
                    for size in packed:
                        started = time.perf_counter()
                        run(size)
                        times[size].append(time.perf_counter() - started)
                whole = statistics.median(times[in_features][1:])
                for size, seconds in times.items():
                    ms = statistics.median(seconds[1:])
                    results.append({"shape": shape_name, "rows": rows, "group": size,
                                    "ms": round(ms / copies * 1000, 2), "vs_one_call": round(ms / whole, 2)})
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["layers", "model", "groups"])
    parser.add_argument("--cpu", choices=["native", "avx2"], default="native")
    parser.add_argument("--model", help="model: a Phi-3-architecture directory (benchmarks/full_size.py)")
    parser.add_argument("--in-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.in_child:
        from benchmarks.cpu_emulation import measure_in_child

        measure_in_child("benchmarks.int8_kernels", args.cpu)
        return
    warnings.simplefilter("ignore")
    os.environ.setdefault("PIXELSIFT_STEPS_AT_ONCE", "1")  # every core for the one measurement
    rows = {"model": lambda: measure_model(args.model), "groups": measure_groups, "layers": measure_layers}[args.part]()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
