"""Where BLIP-2's caption time goes, per precision: vision tower, Q-Former, OPT prefill, OPT decode.

    python -m benchmarks.caption_parts --cpu avx2 --precisions float32,int8 --batch 16

The full-size BLIP-2 OPT-2.7B with random weights (``benchmarks/full_size.py``, built once into
``~/.cache/pixelsift/full``), loaded by the pipeline's ``CaptionerResource`` in each precision in
turn, captions ``--batch`` images in one call (20 tokens each, as ``pixelsift bench`` pins them),
after a one-image warm-up. Each part's forward is timed in place. ``--cpu avx2`` runs every
precision in a child process capped to AVX2 (``benchmarks/cpu_emulation.py``); precisions run one
after another, so compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

CACHE = Path.home() / ".cache" / "pixelsift" / "full" / "blip2-opt-2.7b"


def _timed(times: dict, counts: dict, name: str, module, by_length: bool = False) -> None:
    forward = module.forward

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        out = forward(*args, **kwargs)
        key = name
        if by_length:  # one call with the query tokens and prompt, then one per generated token
            embeds, ids = kwargs.get("inputs_embeds"), kwargs.get("input_ids")
            key = f"{name}_{'prefill' if (embeds if embeds is not None else ids).shape[1] > 1 else 'decode'}"
        times[key] += time.perf_counter() - started
        counts[key] += 1
        return out

    module.forward = wrapper


def measure(precision: str, batch: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from assets.prompts import CAPTION_PROMPT
    from benchmarks.full_size import build_blip2_opt_27b
    from benchmarks.workload import CAPTION_TOKENS
    from resources.captioner import CaptionerResource

    captioner = CaptionerResource(model=str(build_blip2_opt_27b(CACHE)), device="cpu", dtype=precision,
                                  batch_size=batch, max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)) for _ in range(batch)]
    started = time.perf_counter()
    model, _ = captioner._loaded()
    load_s = time.perf_counter() - started
    times, counts = defaultdict(float), defaultdict(int)
    _timed(times, counts, "vision", model.vision_model)
    _timed(times, counts, "qformer", model.qformer)
    _timed(times, counts, "opt", model.language_model, by_length=True)
    captioner.caption(images[:1], CAPTION_PROMPT)
    times.clear()
    counts.clear()
    started = time.perf_counter()
    captions = captioner.caption(images, CAPTION_PROMPT)
    wall = time.perf_counter() - started
    return {"precision": precision, "batch": batch, "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "load_s": load_s, "s_per_image": wall / batch, "tokens_per_caption": captions[0].new_tokens,
            "parts_s_per_image": {k: v / batch for k, v in times.items()}, "calls": dict(counts),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", choices=["native", "avx2"], default="native")
    parser.add_argument("--precisions", default="float32,int8")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # in the child: this precision only
    args = parser.parse_args()
    if args.one:
        os.environ.setdefault("PIXELSIFT_STEPS_AT_ONCE", "1")  # every core for the one measurement
        print(json.dumps(measure(args.one, args.batch)))
        return
    from benchmarks.cpu_emulation import check_emulation, emulated_env

    rows = []
    for precision in args.precisions.split(","):
        child = subprocess.run([sys.executable, "-m", "benchmarks.caption_parts", "--batch", str(args.batch),
                                "--one", precision], env=emulated_env(args.cpu), capture_output=True, text=True)
        if child.returncode:
            sys.exit(child.stderr)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(json.dumps({"emulation": check_emulation(args.cpu), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
