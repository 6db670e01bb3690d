"""Where pixelsift reads images and writes results: one resource, one place for every path setting."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field

from resources.concurrency import gpu_count
from resources.file_limits import MAX_FILE_BYTES, MAX_IMAGE_PIXELS


def env_default(name: str, default: str) -> str:
    """``PIXELSIFT_<name>`` if set, else ``default``: for settings a machine, not a run, decides
    (paths, where the model weights are), so the sensor's runs and the CLI's see them too."""
    return os.environ.get(f"PIXELSIFT_{name}", default)


def env_flag(name: str) -> bool:
    """``PIXELSIFT_<name>`` as a yes/no switch: 1, true or yes (any case) is on; unset is off."""
    return env_default(name, "").strip().lower() in ("1", "true", "yes")


class PixelsiftSettings(ConfigurableResource):
    """Paths and pipeline behaviour. Each default can be overridden by a `PIXELSIFT_*` variable."""

    images_root: str = Field(
        default_factory=lambda: env_default("IMAGES_ROOT", "data/images"),
        description="Folder whose immediate subfolders are batches (PIXELSIFT_IMAGES_ROOT).",
    )
    warehouse_dir: str = Field(
        default_factory=lambda: env_default("WAREHOUSE_DIR", "data/warehouse"),
        description="Root of the Parquet warehouse, hive layout <asset>/batch=<key>/ (PIXELSIFT_WAREHOUSE_DIR).",
    )
    baselines_dir: str = Field(
        default_factory=lambda: env_default("BASELINES_DIR", "data/baselines"),
        description="Reference datasets, one <batch>.jsonl or .parquet per batch (PIXELSIFT_BASELINES_DIR).",
    )
    reports_dir: str = Field(
        default_factory=lambda: env_default("REPORTS_DIR", "data/reports"),
        description="Quality-eval HTML reports go to <reports_dir>/<batch>/ (PIXELSIFT_REPORTS_DIR).",
    )
    reports_url: str = Field(
        default_factory=lambda: env_default("REPORTS_URL", "http://127.0.0.1:3001"),
        description="Where `pixelsift ui` serves reports_dir (read-only) and what the `eval_report` asset links to, "
        "so a report written by `pixelsift run` opens in one click once the UI is up (PIXELSIFT_REPORTS_URL; its "
        "host and port are the ones the server binds).",
    )
    run_existing_batches: bool = Field(
        default_factory=lambda: env_flag("RUN_EXISTING_BATCHES"),
        description="Whether the folder sensor's first tick runs the batch folders already there; off, it only "
        "registers them (with the hub models a first run downloads ~24 GB) and runs folders that appear or change "
        "afterwards (PIXELSIFT_RUN_EXISTING_BATCHES=1 turns it on).",
    )
    reuse_results: bool = Field(
        default=True,
        description="Reuse a model's earlier output for an image with the same sha256 and the same model settings.",
    )
    max_image_pixels: int = Field(
        default=MAX_IMAGE_PIXELS,
        description="Images with more pixels are error rows (`too large: …`), checked from the header before "
        "decoding: decompression bombs (Pillow's default limit).",
    )
    max_file_bytes: int = Field(
        default=MAX_FILE_BYTES,
        gt=0,
        description="Files larger than this are error rows (`too large: N bytes, over max_file_bytes`) and are not "
        "read; each worker holds at most one file of this size in memory (512 MiB).",
    )
    cpu_workers: int = Field(
        default=0,
        ge=0,
        description="Processes for per-image CPU work (hashing, decoding, palettes); 0 = one per core, up to 16. "
        "Batches under 32 images stay in one process.",
    )
    search_index_above: int = Field(
        default_factory=lambda: int(env_default("SEARCH_INDEX_ABOVE", "200000")),
        ge=1,
        description="Vectors of one CLIP model from which search answers from an IVF index (faiss) instead of "
        "scanning every vector: exact below (a scan of 200,000 took 32 ms on two cores), recall@10 measured "
        "at 1.000 above (BENCHMARKS.md). PIXELSIFT_SEARCH_INDEX_ABOVE.",
    )
    model_retries: int = Field(
        default=1,
        description="How many times a failed model batch is retried (then item by item) before errors are recorded.",
    )
    batches_per_run: int = Field(
        default_factory=lambda: int(env_default("BATCHES_PER_RUN", "0")),
        ge=0,
        description="Batches in one run of a backfill (UI, schedule, `pixelsift run --all`): each run loads every "
        "model once for all its batches. 0 = all the backfill's batches in one run; a limit bounds the tables held "
        "in memory and what one failure fails (PIXELSIFT_BATCHES_PER_RUN; read when the definitions load).",
    )
    backfill_cron: str = Field(
        default_factory=lambda: env_default("BACKFILL_CRON", "0 3 * * *"),
        description="When the `stale_batches_backfill` schedule (off until turned on in the UI) looks for stale "
        "batches and launches one backfill over them: a cron string, in UTC (PIXELSIFT_BACKFILL_CRON).",
    )
    gpus: int = Field(
        default_factory=gpu_count,
        ge=0,
        description="GPUs on this machine that large-model steps may use (PIXELSIFT_GPUS; read when the definitions "
        "load). 0: none, large-model steps share the `pixelsift/large_model` pool's one slot. N: they take the "
        "`pixelsift/gpu` pool, one slot per GPU across every run, and each step loads its model on a GPU no other "
        "step holds (docs/pipeline.md, \"Several GPUs\").",
    )
