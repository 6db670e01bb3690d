"""Row accounting shared by every per-image asset.

Each per-image asset has exactly one row per row of ``images``, in the same order and
keyed by ``path``. An image that failed to decode is carried as an error; an image whose
model call failed is an error with the model's reason. Identical files (same sha256)
are computed once. Earlier results for the same sha256 and fingerprint are reused, and
finished chunks are saved as the step goes (``Progress``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import pyarrow as pa
from PIL import Image

from assets.image_files import DECODING, open_image
from assets.model_stage import describe_failure, run_in_chunks
from assets.reuse import Progress, previous_results
from assets.parquet_schemas import ERROR, KEY_FIELDS, OK
from resources.parallel import thread_map, worker_count
from resources.settings import PixelsiftSettings
from resources.backends import fingerprint as hash_settings

R = TypeVar("R")
KEY_NAMES = [f.name for f in KEY_FIELDS]


@dataclass(frozen=True)
class Failed:
    reason: str


def batch_dir(settings: PixelsiftSettings, batch: str) -> Path:
    return Path(settings.images_root) / batch


def unique_ok_images(images: pa.Table) -> dict[str, str]:
    """image_id -> the first path holding those bytes, for decodable images."""
    first: dict[str, str] = {}
    for row in images.select(["image_id", "path", "status"]).to_pylist():
        if row["status"] == OK:
            first.setdefault(row["image_id"], row["path"])
    return first


def assemble(images: pa.Table, results: dict[str, dict | Failed], schema: pa.Schema) -> pa.Table:
    """One row per image row: key columns plus the stage's fields, or an error."""
    rows = []
    for image in images.select(KEY_NAMES).to_pylist():
        key = {"image_id": image["image_id"], "path": image["path"]}
        if image["status"] != OK:
            rows.append({**key, "status": ERROR, "error": image["error"]})
            continue
        result = results.get(image["image_id"])
        if result is None:
            raise RuntimeError(f"no result for {image['path']}: row accounting broken")
        if isinstance(result, Failed):
            rows.append({**key, "status": ERROR, "error": result.reason})
        else:
            rows.append({**key, "status": OK, "error": None, **result})
    return pa.Table.from_pylist(rows, schema=schema)


def run_image_model(
    images: pa.Table,
    *,
    settings: PixelsiftSettings,
    batch: str,
    asset: str,
    fingerprint: str,
    infer: Callable[[list[Image.Image]], Sequence[R]],
    to_fields: Callable[[R], dict],
    chunk_size: int,
    schema: pa.Schema,
    logger: logging.Logger,
) -> tuple[dict[str, dict | Failed], int]:
    """Run ``infer`` on every decodable image not already done; returns (results by image_id, reused count).

    Result fields always include ``fingerprint`` and ``reused``. Each finished chunk is saved in
    ``schema`` (the asset's) so that a stopped step resumes from it.
    """
    # The model's fingerprint, and how its input pixels were decoded (this function decodes them).
    fingerprint = hash_settings(model=fingerprint, decoding=DECODING)
    todo = unique_ok_images(images)
    results: dict[str, dict | Failed] = {}
    if settings.reuse_results:
        for image_id, row in previous_results(settings.warehouse_dir, asset, fingerprint, list(todo)).items():
            results[image_id] = {k: v for k, v in row.items() if k not in KEY_NAMES} | {"reused": True}
            del todo[image_id]
    reused = len(results)
    folder = batch_dir(settings, batch)

    workers = worker_count(settings.cpu_workers)

    def infer_chunk(ids: Sequence[str]) -> Sequence[R]:
        # Decoding releases the GIL: a chunk's images are opened on several threads.
        return infer(thread_map(lambda i: open_image(folder, todo[i], settings.max_image_pixels, sha256=i,
                                                     max_bytes=settings.max_file_bytes), ids, workers))

    progress = Progress(settings.warehouse_dir, asset, batch, schema, logger, total=len(todo))

    def record(chunk: Sequence[str], outcomes: list[R | Exception]) -> None:
        finished = []
        for image_id, outcome in zip(chunk, outcomes):
            if isinstance(outcome, Exception):
                results[image_id] = Failed(describe_failure(outcome))
            else:
                results[image_id] = to_fields(outcome) | {"fingerprint": fingerprint, "reused": False}
                finished.append({"image_id": image_id, "path": todo[image_id], "status": OK, "error": None,
                                 **results[image_id]})
        progress.save(finished)

    ids = list(todo)
    run_in_chunks(ids, infer_chunk, chunk_size=chunk_size, retries=settings.model_retries, logger=logger,
                  on_chunk=record)
    logger.info("%s: %d computed, %d reused from the warehouse", asset, len(ids), reused)
    return results, reused
