"""What a user waits for: wall time of `pixelsift run` per image, against the stage times it records.

    python -m benchmarks.end_to_end [--batch sample] [--llm MODEL] [--images-root data/images] [--breakdown]

Runs ``python -m dagster_project.cli run`` (this tree's code) in a fresh process with a fresh
warehouse and Dagster home, so nothing is reused and every model is loaded inside the timing.
It runs with ``--models tiny``, and with ``--llm`` the tiny captioner and CLIP model and MODEL as
the metadata LLM (``--metadata-llm MODEL``: a saved directory or a GGUF file). Then it reads the run's Parquet: the stage sum per image is the mean of
``image_metadata.processing_time_ms`` (decode + caption + palette + LLM) plus CLIP's ms, plus the
cluster labels' LLM time spread over the images. What the wall time adds beyond the sum is model
loading, Dagster's own work, the evals and the report: ``--breakdown`` prints where it goes, phase by
phase (process start, imports, definitions, each step and model load, exit; benchmarks/run_timeline.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.run_timeline import format_timeline, run_spans, timed_command, timeline

def run(batch: str, images_root: str, llm: str | None, breakdown: bool = False) -> dict[str, float]:
    scratch = Path(tempfile.mkdtemp(prefix="pixelsift-e2e-"))
    env = os.environ | {"DAGSTER_HOME": str(scratch / "home"), "PIXELSIFT_WAREHOUSE_DIR": str(scratch / "warehouse"),
                        "PIXELSIFT_IMAGES_ROOT": images_root, "PIXELSIFT_REPORTS_DIR": str(scratch / "reports"),
                        "PYTHONPATH": str(Path.cwd())}
    arguments = ["run", "--batch", batch, "--models", "tiny"] + (["--metadata-llm", llm] if llm else [])
    if breakdown:
        spawned, exited, marks = timed_command(arguments, env, scratch)
        print(format_timeline(timeline(spawned, exited, marks, run_spans(scratch / "home")), spawned,
                              marks["collections"]))
        wall = exited - spawned
    else:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dagster_project.cli", *arguments], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    part = lambda asset: pq.read_table(scratch / "warehouse" / asset / f"batch={batch}").to_pylist()  # noqa: E731
    metadata = [r for r in part("image_metadata") if r["status"] == "ok"]
    clip = {r["path"]: r["ms"] for r in part("clip_embeddings") if r["status"] == "ok"}
    labels_ms = sum(r["llm_ms"] or 0.0 for r in part("cluster_labels"))
    n = len(metadata)
    stage_sum = (sum(r["processing_time_ms"] + clip.get(r["path"], 0.0) for r in metadata) + labels_ms) / n / 1000
    return {"images": n, "wall_s_per_image": wall / n, "stage_sum_s_per_image": stage_sum, "wall_s": wall,
            "llm_s_per_image": sum(r["llm_ms"] for r in metadata) / n / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="sample")
    parser.add_argument("--images-root", default="data/images")
    parser.add_argument("--llm", help="the metadata LLM (default: the tiny profile's)")
    parser.add_argument("--breakdown", action="store_true", help="also print where the wall time goes, phase by phase")
    args = parser.parse_args()
    figures = run(args.batch, str(Path(args.images_root).resolve()), args.llm, args.breakdown)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
