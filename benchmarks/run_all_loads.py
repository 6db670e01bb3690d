"""``pixelsift run --all`` over many batches: wall time and how many times each model is loaded.

    python -m benchmarks.run_all_loads [--batches 10] [--models tiny] [--out results/run_all_loads.json]

Copies data/images/sample into N batch folders under a scratch images root. Each copy is made
distinct (one pixel changed per batch, re-saved), else every batch after the first would reuse the
first one's results and no model would run at all. Then runs the real command in this process
(click's runner) against a scratch warehouse and Dagster home, counting the real model loads:
``resources.torch_runtime.load_once`` calls its loader only when the model is not already loaded
in this process. Works on any checkout, so the same script measures the code before a change.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from resources import torch_runtime

LOADS: Counter = Counter()
LOAD_SECONDS: Counter = Counter()
_load_once = torch_runtime.load_once


def _counting_load_once(key, loader, **kwargs):
    def timed():
        started = time.perf_counter()
        try:
            return loader()
        finally:
            LOADS[key[0]] += 1
            LOAD_SECONDS[key[0]] += time.perf_counter() - started

    return _load_once(key, timed, **kwargs)


# Before any model module binds its own name for it.
torch_runtime.load_once = _counting_load_once


def distinct_copies(source: Path, root: Path, batches: int) -> None:
    for i in range(batches):
        folder = root / f"batch{i:02d}"
        folder.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            with Image.open(path) as image:
                copy = image.convert("RGB")
            copy.putpixel((0, 0), (i * 20 % 256, 7, 11))
            copy.save(folder / path.name)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the images asset's workers): on a machine
    shared with other work it moves far less than the wall time does."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--source", default="data/images/sample")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()

    from click.testing import CliRunner

    from dagster_project.cli import main as pixelsift

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "images"
        distinct_copies(Path(args.source), root, args.batches)
        os.environ.update({"PIXELSIFT_IMAGES_ROOT": str(root), "PIXELSIFT_WAREHOUSE_DIR": f"{scratch}/warehouse",
                           "PIXELSIFT_REPORTS_DIR": f"{scratch}/reports", "DAGSTER_HOME": f"{scratch}/home"})
        os.environ.setdefault("PIXELSIFT_TINY_MODELS_DIR", f"{scratch}/tiny")
        started, cpu_before = time.perf_counter(), _cpu_seconds()
        result = CliRunner().invoke(pixelsift, ["run", "--all", "--models", args.models])
        wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    if result.exit_code != 0:
        raise SystemExit(f"pixelsift run --all failed:\n{result.output[-3000:]}")
    figures = {"batches": args.batches, "models": args.models, "wall_s": round(wall, 1),
               "cpu_s": round(cpu, 1),
               "loads": dict(LOADS), "load_s": {k: round(v, 2) for k, v in LOAD_SECONDS.items()}}
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
