"""How long a model takes to load with ``dtype = "int8"``: quantised (first load), then from the
int8 layer cache (``resources/int8_cache.py``), each in a fresh process as a run's step would.

    python -m benchmarks.int8_load --captioner DIR --metadata-llm DIR [--cpu avx2] [--loads 3]

Each model is loaded ``--loads`` times by the pipeline's own loader, the first with an empty cache
(a temporary ``PIXELSIFT_INT8_CACHE``, removed after; ``--cache DIR`` keeps the layers in DIR, for
the runs that follow, and refuses a DIR that holds layers already). Seconds are the loader's wall time (the
model's identity comes from the file-hash cache, so a first use's hashing is not in them); peak RSS
is the process's.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _load_once(task: str, model: str) -> dict:
    started = time.perf_counter()
    if task == "captioner":
        from resources.captioner import _load

        _load(model, "cpu", "int8")
    else:
        from resources.metadata_llm import load_chat_model

        load_chat_model(model, "cpu", "int8")
    from resources.int8_linear import kernel

    return {"load_s": round(time.perf_counter() - started, 1), "kernel": kernel(),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captioner", help="a BLIP-2 directory")
    parser.add_argument("--metadata-llm", help="a causal LM directory or GGUF file")
    parser.add_argument("--cpu", choices=["native", "avx2"], default="native")
    parser.add_argument("--loads", type=int, default=2)
    parser.add_argument("--cache", help="keep the int8 layers in this empty directory (default: a temporary one)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # in the child: TASK MODEL
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_load_once(*args.one)))
        return
    from benchmarks.cpu_emulation import emulated_env

    if args.cache and any(Path(args.cache).glob("*.safetensors")):
        sys.exit(f"{args.cache} holds int8 layers already: the first load would not quantise")
    rows = []
    for task, model in (("captioner", args.captioner), ("metadata_llm", args.metadata_llm)):
        if not model:
            continue
        cache = args.cache or tempfile.mkdtemp(prefix="pixelsift-int8-")
        try:
            for load in range(args.loads):
                child = subprocess.run([sys.executable, "-m", "benchmarks.int8_load", "--one", task, model],
                                       env=emulated_env(args.cpu) | {"PIXELSIFT_INT8_CACHE": cache},
                                       capture_output=True, text=True)
                if child.returncode:
                    sys.exit(child.stderr)
                row = {"task": task, "load": "quantised" if load == 0 else "cached"}
                rows.append(row | json.loads(child.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            if not args.cache:
                shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps({"cpu": args.cpu, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
