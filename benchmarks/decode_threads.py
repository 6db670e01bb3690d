"""One decode step of a causal LM at each intra-op thread count (what a step's thread budget changes).

    python -m benchmarks.decode_threads MODEL_DIR [--threads 1 2] [--rows 2] [--prompt 300] [--steps 10]

Prefills ``rows`` random prompts of ``prompt`` tokens, then times ``steps`` one-token steps with
the KV cache, in float32 and bfloat16. Run it with another process busy on the same cores to see
what two concurrent model steps do to each other.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM


def step_ms(model, threads: int, rows: int, prompt: int, steps: int) -> float:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        out = model(torch.randint(0, 1000, (rows, prompt), generator=generator), use_cache=True)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(torch.randint(0, 1000, (rows, 1), generator=generator), past_key_values=out.past_key_values,
                        use_cache=True)
        return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).eval()
        for threads in args.threads:
            print(f"{str(dtype):15} threads={threads}: {step_ms(model, threads, args.rows, args.prompt, args.steps):7.1f} "
                  "ms per decode step")


if __name__ == "__main__":
    main()
