"""The image_metadata stage on the ``llama_cpp`` backend, in-process, as the pipeline runs it.

    python -m benchmarks.llama_cpp_metadata --gguf FILE [--cpu avx2] [--count 16] [--batch 16]

The metadata workload of ``pixelsift bench`` (realistic captions, documents steered to realistic
lengths: ``benchmarks/stages.py``, ``benchmarks/steering.py``) through the real decode loop with
llama.cpp as its engine (``resources/llama_cpp_engine.py``): prompts, grammar masks, prefix cache
and jump-forward included. A GGUF with random weights (``benchmarks/gguf_shapes.py``) gives the
full-size cost without the trained model. ``--cpu avx2`` runs in a child on the AVX2-only build of
llama.cpp (``benchmarks/llama_cpp_build.py``) with torch capped to AVX2 too (the grammar masks
and argmax run in torch): the emulation of an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def measure(gguf: Path, count: int, batch: int, threads: int) -> dict:
    import resource

    from assets.image_metadata import MetadataConfig
    from assets.llm_schemas import ImageMetadataOutput
    from benchmarks.stages import metadata_workload
    from benchmarks.steering import DocumentSteering
    from resources.constrained_decoding import decode_constrained
    from resources.llama_cpp_engine import LlamaCppEngine
    from resources.llama_cpp_llm import load_gguf_chat
    from resources.metadata_llm import prompt_ids

    started = time.perf_counter()
    chat = load_gguf_chat(gguf, threads)
    load_seconds = time.perf_counter() - started
    inputs, targets = metadata_workload(count)
    prefix_ids, prompts = prompt_ids(chat.tokenizer, inputs)
    grammar = chat.grammars.compile(ImageMetadataOutput)
    # The pipeline's first-attempt budget: it sizes llama.cpp's context (the KV cache every row may
    # fill), and the steered documents (about 108 tokens) end well within it.
    budget = MetadataConfig().max_new_tokens

    def run(engine, rows: list[int]):
        return decode_constrained(engine, chat.grammars, grammar, [prompts[i] for i in rows],
                                  max_new_tokens=budget, batch_size=batch, prefix_ids=prefix_ids,
                                  jump_forward=True, choose=DocumentSteering(chat.grammars, [targets[i] for i in rows]))

    run(chat.engine, [0])  # warm-up: the weights paged in
    chat.engine.close()
    engine = LlamaCppEngine(gguf, threads)  # as a new step's: its prefix not yet prefilled
    started = time.perf_counter()
    decoded, stats = run(engine, list(range(count)))
    seconds = time.perf_counter() - started
    if [d.text for d in decoded] != targets:
        raise RuntimeError("steering did not reproduce the target documents")
    import llama_cpp

    return {
        "gguf": str(gguf), "gguf_gib": round(gguf.stat().st_size / 2**30, 2), "images": count, "batch": batch,
        "threads": threads, "s_per_image": seconds / count, "seconds": seconds, "load_seconds": load_seconds,
        "generated_tokens_per_image": (stats.decode_tokens + stats.jump_forward_tokens) / count,
        "sampled_tokens": stats.decode_tokens, "jump_forward_tokens": stats.jump_forward_tokens,
        "prompt_tokens_prefilled": stats.prefill_tokens, "shared_prefix_tokens": len(prefix_ids),
        "forward_calls": stats.forward_calls, "model_seconds": stats.model_seconds,
        "grammar_seconds": stats.grammar_seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--cpu", choices=["native", "avx2"], default="native")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--in-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu == "avx2" and not args.in_child:
        from benchmarks.cpu_emulation import emulated_env
        from benchmarks.llama_cpp_build import check_features

        check_features("avx2")  # the build is there and has AVX2 and nothing newer
        child = subprocess.run([sys.executable, "-m", "benchmarks.llama_cpp_metadata", *sys.argv[1:], "--in-child"],
                               env=emulated_env("avx2"))
        sys.exit(child.returncode)
    row = measure(args.gguf, args.count, args.batch, args.threads) | {"cpu": args.cpu}
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
