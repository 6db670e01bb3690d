"""Simulated scale: a synthetic collection in the warehouse's real layout, and the real code paths timed on it.

    python -m benchmarks.scale --images 100000 --batches 1000 [--dir DIR] [--keep]

No model runs. Synthetic rows of every pipeline table (images, captions, image_metadata,
color_palettes, clip_embeddings, clusters) are written batch by batch through the warehouse's own
writer (``resources.warehouse.write_table``: zstd Parquet, atomic rename) under a temporary folder,
deleted afterwards unless ``--keep``. The CLIP vectors are ``benchmarks.vector_search.synthetic``
(10,000 directions plus noise: neighbourhoods like real embeddings). Then, on that warehouse:

- its size on disk, per table;
- ``pixelsift query`` latency (``resources.warehouse.query``: the sandboxed views the command opens,
  once per query): by category, by date taken, and joins of metadata with clusters and embeddings;
- the reuse lookup a model step makes before computing a new batch (``ModelStep.split_reusable``,
  for clip_embeddings and captions);
- ``collection_clusters`` through Dagster (``materialize``): the first clustering of everything,
  then the update after one more batch arrives; each in its own process, for its peak memory;
- the batch sensor's tick (``batch_folder_sensor``) over one folder per batch holding one empty
  file per image: the first tick (registers every batch) and a tick with nothing changed.

Figures print as JSON lines; ``--out`` also writes them to a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from assets import parquet_schemas as schemas
from assets.llm_schemas import CATEGORIES, SCENE_TYPES
from benchmarks.vector_search import synthetic
from resources.warehouse import partition_file, write_table

DIM = 512  # ViT-B-32
CLIP_MODEL, CLIP_FP, CAPTION_FP, LLM_FP = "ViT-B-32/laion2b_s34b_b79k", "clip-fp", "caption-fp", "llm-fp"
WORDS = ["cat", "dog", "beach", "mountain", "car", "bicycle", "street", "house", "tree", "flower", "cake", "coffee",
         "child", "family", "boat", "river", "bridge", "snow", "sunset", "garden", "kitchen", "table", "window", "bird"]
FIRST_DAY, DAYS = datetime(2015, 1, 1), 3650  # batches arrive over ten years, in order
QUERIES = {
    "by category": "SELECT primary_category, count(*) FROM image_metadata GROUP BY 1 ORDER BY 2 DESC",
    "one category, newest 100": "SELECT m.batch, m.path, i.taken_at FROM image_metadata m JOIN images i "
                                "USING (batch, path) WHERE m.primary_category = 'animals' ORDER BY i.taken_at DESC "
                                "LIMIT 100",
    "by date taken (one month)": "SELECT batch, path, taken_at FROM images WHERE taken_at >= '2019-06-01' AND "
                                 "taken_at < '2019-07-01' ORDER BY taken_at",
    "photos per year": "SELECT year(taken_at) AS year, count(*) FROM images GROUP BY 1 ORDER BY 1",
    "metadata x collection clusters": "SELECT c.cluster_id, m.primary_category, count(*) AS n FROM collection_clusters c "
                                      "JOIN image_metadata m USING (batch, path) WHERE c.cluster_id >= 0 "
                                      "GROUP BY ALL ORDER BY n DESC LIMIT 20",
    "metadata x embeddings (one tag)": "SELECT m.batch, m.path, e.model_id FROM image_metadata m JOIN clip_embeddings e "
                                       "USING (batch, path) WHERE list_contains(m.tags, 'sunset') LIMIT 100",
}


def batch_key(b: int) -> str:
    return f"b{b:05d}"


def _ids(start: int, stop: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, stop)]


def _lists(values: list[str], picks: np.ndarray, width: int) -> pa.ListArray:
    """Rows of ``width`` strings each, ``picks`` (rows x width) indexing ``values``."""
    offsets = pa.array(np.arange(0, picks.size + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values).take(pa.array(picks.ravel())))


def batch_tables(start: int, stop: int, vectors: np.ndarray, rng: np.random.Generator, total: int) -> dict[str, pa.Table]:
    """Every pipeline table of one batch (images ``start``..``stop`` of ``total``), in the real schemas."""
    n = stop - start
    ids, paths = _ids(start, stop), [f"IMG_{i:07d}.jpg" for i in range(start, stop)]
    keys = {"image_id": ids, "path": paths, "status": ["ok"] * n, "error": [None] * n}
    days = (np.arange(start, stop) * DAYS / total + rng.uniform(0, 3, n)).astype(float)
    taken = [FIRST_DAY + timedelta(days=d) for d in days]
    category = np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), n)]
    tags = rng.integers(0, len(WORDS), (n, 5))
    caption = [f"a photo of a {WORDS[t[0]]} and a {WORDS[t[1]]}" for t in tags]
    objects = pa.ListArray.from_arrays(pa.array(np.arange(0, n + 1, dtype=np.int32)), pa.StructArray.from_arrays(
        [pa.array(WORDS).take(pa.array(tags[:, 0])), pa.array(rng.uniform(0.3, 1, n), pa.float32())],
        fields=list(schemas.DETECTED_OBJECT)))
    colours = [f"#{c:06x}" for c in range(0, 2**24, 2**24 // 64)]
    palette = _lists(colours, rng.integers(0, len(colours), (n, 3)), 3)
    provenance = {"fallback_used": [False] * n, "fallback_reason": [None] * n, "attempts": [1] * n,
                  "json_valid": [True] * n, "llm_ms": rng.uniform(2000, 9000, n), "new_tokens": [120] * n,
                  "duplicates_removed": [0] * n}
    flat = pa.array(vectors.ravel(), pa.float32())
    return {
        "images": pa.table(keys | {"format": ["JPEG"] * n, "width": [4032] * n, "height": [3024] * n,
                                   "mode": ["RGB"] * n, "taken_at": taken,
                                   "bytes": rng.integers(1_500_000, 5_000_000, n), "ms": rng.uniform(20, 80, n)},
                          schema=schemas.IMAGES),
        "captions": pa.table(keys | {"caption": caption, "model_id": ["Salesforce/blip2-opt-2.7b"] * n,
                                     "ms": rng.uniform(900, 3000, n), "new_tokens": [14] * n,
                                     "fingerprint": [CAPTION_FP] * n, "reused": [False] * n}, schema=schemas.CAPTIONS),
        "image_metadata": pa.table(keys | {
            "primary_category": category, "tags": _lists(WORDS, tags, 5), "description": caption,
            "detected_objects": objects, "scene_type": np.array(SCENE_TYPES)[rng.integers(0, len(SCENE_TYPES), n)],
            "color_palette": palette, "suggested_cluster_name": [f"{WORDS[t[0]]} photos" for t in tags],
            "vlm_model": ["blip2 + phi-3.5"] * n, **provenance, "processing_time_ms": rng.uniform(4000, 12000, n),
            "fingerprint": [LLM_FP] * n, "reused": [False] * n}, schema=schemas.IMAGE_METADATA),
        "color_palettes": pa.table(keys | {"colors": palette, "shares": _lists(
            ["0.5", "0.3", "0.2"], np.tile([0, 1, 2], (n, 1)), 3).cast(pa.list_(pa.float32())),
            "ms": rng.uniform(5, 20, n)}, schema=schemas.COLOR_PALETTES),
        "clip_embeddings": pa.table(keys | {
            "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM), "model_id": [CLIP_MODEL] * n,
            "ms": rng.uniform(30, 90, n), "fingerprint": [CLIP_FP] * n, "reused": [False] * n},
            schema=schemas.clip_embeddings_schema(DIM)),
        "clusters": pa.table(keys | {"cluster_id": rng.integers(-1, max(2, n // 10), n).astype(np.int32),
                                     "distance": rng.uniform(0, 0.3, n).astype(np.float32),
                                     "is_representative": rng.uniform(0, 1, n) < 0.05}, schema=schemas.CLUSTERS),
    }


def write_warehouse(warehouse: Path, images: int, batches: int, seed: int = 0) -> float:
    """The synthetic collection, batch by batch, through the real writer; seconds taken."""
    started = time.perf_counter()
    vectors = synthetic(images, DIM, seed=seed)
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, images, batches + 1).astype(int)
    for b in range(batches):
        for asset, table in batch_tables(bounds[b], bounds[b + 1], vectors[bounds[b]:bounds[b + 1]], rng, images).items():
            write_table(table, partition_file(warehouse, asset, batch_key(b)))
    return time.perf_counter() - started


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _timed(call, repeat: int = 1) -> tuple[float, object]:
    """(median seconds over ``repeat`` calls, the last result)."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), result


def measure_queries(warehouse: Path, repeat: int = 3) -> dict[str, float]:
    from resources.warehouse import query

    return {name: round(_timed(lambda: query(warehouse, sql).fetchall(), repeat)[0], 3) for name, sql in QUERIES.items()}


def measure_reuse(warehouse: Path, images: int, batch_size: int) -> dict[str, float]:
    """A new batch of ``batch_size`` images, half of them copies of photos already in the warehouse."""
    from assets.reuse import ModelStep
    from resources.settings import PixelsiftSettings

    settings = PixelsiftSettings(warehouse_dir=str(warehouse), images_root=str(warehouse.parent / "images"))
    half = batch_size // 2
    ids = _ids(0, half) + _ids(2 * images, 2 * images + batch_size - half)  # known ones, then new ones
    out = {}
    for asset, fp, schema in [("clip_embeddings", CLIP_FP, schemas.clip_embeddings_schema(DIM)),
                              ("captions", CAPTION_FP, schemas.CAPTIONS)]:
        step = ModelStep(settings, asset, "new_batch", schema, logging.getLogger("scale"))
        seconds, (reused, todo) = _timed(lambda: step.split_reusable({i: fp for i in ids}, key_column="image_id"))
        assert len(reused) == half and len(todo) == batch_size - half, (len(reused), len(todo))
        out[asset] = round(seconds, 3)
    return out


def _cluster_once(warehouse: Path) -> dict:
    """One ``collection_clusters`` update through Dagster (run in a child process by ``measure_clustering``)."""
    from dagster import materialize

    from assets.collection_clusters import collection_clusters
    from resources.settings import PixelsiftSettings
    from resources.warehouse import ParquetWarehouse

    settings = PixelsiftSettings(warehouse_dir=str(warehouse), images_root=str(warehouse.parent / "images"))
    started = time.perf_counter()
    result = materialize([collection_clusters], resources={"settings": settings,
                                                           "io_manager": ParquetWarehouse(root=str(warehouse))})
    seconds = time.perf_counter() - started
    assert result.success
    made = result.asset_materializations_for_node("collection_clusters")[0].metadata
    return {"seconds": round(seconds, 2), **{k: v.value for k, v in made.items() if k.startswith(("clusters", "images_"))}}


def _in_child(stage: str, warehouse: Path) -> dict:
    """Run a stage of this module in its own process; its figures plus the process's peak memory."""
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--dir", str(warehouse)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"stage {stage} failed ({process.returncode}); run it alone to see why: "
                           f"python -m benchmarks.scale --stage {stage} --dir {warehouse}")
    return json.loads(output.decode().strip().splitlines()[-1]) | {"peak_rss_mib": round(usage.ru_maxrss / 1024)}


def measure_clustering(warehouse: Path, images: int, batches: int) -> dict:
    first = _in_child("cluster", warehouse)
    rng = np.random.default_rng(99)
    size = images // batches
    extra = synthetic(size, DIM, seed=99)
    for asset, table in batch_tables(images, images + size, extra, rng, images + size).items():
        write_table(table, partition_file(warehouse, asset, batch_key(batches)))
    return {"first": first, "after_one_more_batch": _in_child("cluster", warehouse)}


def measure_sensor(root: Path, images: int, batches: int) -> dict:
    """Ticks of the real batch sensor over ``batches`` folders holding ``images`` empty files in all."""
    from dagster import DagsterInstance, build_sensor_context

    from dagster_project.sensors import batch_folder_sensor
    from resources.partitions import batch_partitions
    from resources.settings import PixelsiftSettings

    bounds = np.linspace(0, images, batches + 1).astype(int)
    for b in range(batches):
        folder = root / batch_key(b)
        folder.mkdir(parents=True)
        for i in range(bounds[b], bounds[b + 1]):
            (folder / f"IMG_{i:07d}.jpg").touch()
    settings = PixelsiftSettings(images_root=str(root), warehouse_dir=str(root.parent / "warehouse"),
                                 baselines_dir=str(root.parent / "baselines"))
    with DagsterInstance.ephemeral() as instance:
        def tick(cursor):
            return batch_folder_sensor(build_sensor_context(instance=instance, cursor=cursor,
                                                            resources={"settings": settings}))

        first_s, first = _timed(lambda: tick(None))
        instance.add_dynamic_partitions(batch_partitions.name, [batch_key(b) for b in range(batches)])
        idle_s, idle = _timed(lambda: tick(first.cursor), repeat=3)
        assert not idle.run_requests
        (root / batch_key(0) / "new.jpg").touch()
        changed_s, changed = _timed(lambda: tick(first.cursor))
        assert len(changed.run_requests) == 1
    return {"first_tick": round(first_s, 2), "tick_nothing_changed": round(idle_s, 2),
            "tick_one_folder_changed": round(changed_s, 2)}


def run(images: int, batches: int, folder: Path, sensor: bool = True, repeat: int = 3) -> dict:
    warehouse = folder / "warehouse"
    figures: dict = {"images": images, "batches": batches, "cpus": os.cpu_count()}
    figures["write_seconds"] = round(write_warehouse(warehouse, images, batches), 1)
    figures["warehouse_mib"] = {p.name: round(tree_bytes(p) / 2**20, 1) for p in sorted(warehouse.iterdir())}
    figures["warehouse_mib"]["total"] = round(tree_bytes(warehouse) / 2**20, 1)
    figures["collection_clusters"] = measure_clustering(warehouse, images, batches)
    figures["query_seconds"] = measure_queries(warehouse, repeat)
    figures["reuse_lookup_seconds"] = measure_reuse(warehouse, images, max(2, images // batches))
    if sensor:
        figures["sensor_seconds"] = measure_sensor(folder / "images", images, batches)
    return figures


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=1_000)
    parser.add_argument("--dir", type=Path, default=None, help="An empty folder to write in, kept afterwards "
                        "(default: a temporary folder, deleted afterwards unless --keep).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    parser.add_argument("--no-sensor", action="store_true", help="Skip the sensor ticks (one file per image).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each query (the median is reported).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures to this JSON file.")
    parser.add_argument("--stage", choices=["cluster"], help=argparse.SUPPRESS)  # a child process's one stage
    args = parser.parse_args(argv)
    if args.stage == "cluster":
        print(json.dumps(_cluster_once(args.dir)))
        return None
    if args.dir and args.dir.exists() and any(args.dir.iterdir()):
        parser.error(f"--dir {args.dir} is not empty: give a new or empty folder")
    folder = args.dir or Path(tempfile.mkdtemp(prefix="pixelsift-scale-"))
    try:
        figures = run(args.images, args.batches, folder, sensor=not args.no_sensor, repeat=args.repeat)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
