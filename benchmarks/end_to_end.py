"""What a user waits for: wall time of `pixelsift run` per image, against the stage times it records.

    python -m benchmarks.end_to_end [--batch sample] [--llm MODEL] [--images-root data/images] [--breakdown]
    python -m benchmarks.end_to_end --config full-avx2.toml --steer --cpu avx2 --count 32 --output F.json

Runs ``python -m dagster_project.cli run`` (this tree's code) in a fresh process with a fresh
warehouse and Dagster home, so nothing is reused and every model is loaded inside the timing.
It runs with ``--models tiny``, and with ``--llm`` the tiny captioner and CLIP model and MODEL as
the metadata LLM (``--metadata-llm MODEL``: a saved directory or a GGUF file); ``--config`` names
a ``pixelsift.toml`` for the tasks it names (the full-size random models of ``benchmarks/full_size.py``,
a dtype, a backend). ``--steer`` steers random-weight LLMs to the workload's documents
(``benchmarks/steered_run.py``: without it they write to their token budget); ``--cpu avx2`` runs
the command capped to AVX2 (``benchmarks/cpu_emulation.py``); ``--count N`` makes the batch N
distinct images from the batch's own (mirrored and turned, so none is reused from another).

Then it reads the run's Parquet: the stage sum per image is the mean of
``image_metadata.processing_time_ms`` (decode + caption + palette + LLM) plus CLIP's ms, plus the
cluster labels' LLM time spread over the images. What the wall time adds beyond the sum is model
loading, Dagster's own work, the evals and the report: ``--breakdown`` prints where it goes, phase by
phase (process start, imports, definitions, each step and model load, exit; benchmarks/run_timeline.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from benchmarks.run_timeline import format_timeline, run_spans, timed_command, timeline

def make_batch(source: Path, out: Path, count: int) -> None:
    """``count`` distinct image files in ``out`` from ``source``'s decodable images."""
    from assets.batch_files import list_batch_files
    from benchmarks.image_copies import distinct_copies, most_distinct

    images = []
    for path in list_batch_files(source):
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError:
            continue
    if count > most_distinct(images):
        raise SystemExit(f"--count {count}: {source} gives at most {most_distinct(images)} distinct images")
    out.mkdir(parents=True)
    for i, image in enumerate(distinct_copies(images, count)):
        image.save(out / f"{i:04d}.jpg", quality=92)


def run(batch: str, images_root: str, llm: str | None, breakdown: bool = False, *, config: str | None = None,
        steer: bool = False, cpu: str = "native", count: int = 0, scratch: Path | None = None) -> dict:
    """The figures of one run; its warehouse, Dagster home and images are left in ``scratch``
    (default: a new temporary folder)."""
    from benchmarks.cpu_emulation import emulated_env, float32_gflops

    scratch = Path(tempfile.mkdtemp(prefix="pixelsift-e2e-")) if scratch is None else scratch
    if count:
        make_batch(Path(images_root) / batch, scratch / "images" / batch, count)
        images_root = str(scratch / "images")
    env = emulated_env(cpu) | {"DAGSTER_HOME": str(scratch / "home"), "PIXELSIFT_WAREHOUSE_DIR": str(scratch / "warehouse"),
                               "PIXELSIFT_IMAGES_ROOT": images_root, "PIXELSIFT_REPORTS_DIR": str(scratch / "reports")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(Path.cwd())) if p)
    speed_before = float32_gflops(cpu)
    arguments = (["run", "--batch", batch, "--models", "tiny"] + (["--metadata-llm", llm] if llm else [])
                 + (["--config", config] if config else []))
    if breakdown:
        spawned, exited, marks = timed_command(arguments, env, scratch, steer)
        print(format_timeline(timeline(spawned, exited, marks, run_spans(scratch / "home")), spawned,
                              marks["collections"]))
        wall = exited - spawned
    else:
        start = time.perf_counter()
        command = "benchmarks.steered_run" if steer else "dagster_project.cli"
        subprocess.run([sys.executable, "-m", command, *arguments], env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    speed = (speed_before, float32_gflops(cpu))
    part = lambda asset: pq.read_table(scratch / "warehouse" / asset / f"batch={batch}").to_pylist()  # noqa: E731
    rows = part("image_metadata")
    metadata = [r for r in rows if r["status"] == "ok"]
    clip = {r["path"]: r["ms"] for r in part("clip_embeddings") if r["status"] == "ok"}
    labels_ms = sum(r["llm_ms"] or 0.0 for r in part("cluster_labels"))
    n = len(metadata)
    if n < len(rows):
        print(f"warning: {len(rows) - n} of {len(rows)} images have no metadata (error rows)", file=sys.stderr)
    fallbacks = sum(bool(r["fallback_used"]) for r in metadata)  # rows whose LLM call was skipped or failed
    if steer and fallbacks:
        raise SystemExit(f"{fallbacks} of {n} steered rows fell back: the LLM did not write them, the timing is not the workload's")
    stage_sum = (sum(r["processing_time_ms"] + clip.get(r["path"], 0.0) for r in metadata) + labels_ms) / n / 1000
    steps = {label.removeprefix("step "): round(end - start, 2) for label, start, end in run_spans(scratch / "home")
             if label.startswith("step ")}
    return {"images": n, "fallback_rows": fallbacks, "wall_s_per_image": wall / n, "stage_sum_s_per_image": stage_sum, "wall_s": wall,
            "llm_s_per_image": sum(r["llm_ms"] for r in metadata) / n / 1000,
            # the largest child this process waited for: the command (a file's mapped pages included)
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, "step_s": steps,
            # how fast the (shared) machine was just before and after: float32 GFLOP/s under the same caps
            "float32_gflops_before_after": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="sample")
    parser.add_argument("--images-root", default="data/images")
    parser.add_argument("--llm", help="the metadata LLM (default: the tiny profile's)")
    parser.add_argument("--config", help="a pixelsift.toml for the tasks it names (others: tiny)")
    parser.add_argument("--steer", action="store_true", help="random-weight LLMs write the workload's documents")
    parser.add_argument("--cpu", default="native", choices=("native", "avx2"))
    parser.add_argument("--count", type=int, default=0, help="images in the batch (default: the folder's own)")
    parser.add_argument("--output", type=Path, help="also write the figures and the command here (JSON)")
    parser.add_argument("--breakdown", action="store_true", help="also print where the wall time goes, phase by phase")
    args = parser.parse_args()
    config = str(Path(args.config).resolve()) if args.config else None
    figures = run(args.batch, str(Path(args.images_root).resolve()), args.llm, args.breakdown, config=config,
                  steer=args.steer, cpu=args.cpu, count=args.count)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    if args.output:
        from benchmarks.runner import machine_description

        record = {"command": "python -m benchmarks.end_to_end " + " ".join(sys.argv[1:]), "figures": figures,
                  "config": Path(config).read_text() if config else None, "machine": machine_description("cpu")}
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
