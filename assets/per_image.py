"""Row accounting shared by every per-image asset.

Each per-image asset has exactly one row per row of ``images``, in the same order and
keyed by ``path``. An image that failed to decode is carried as an error; an image whose
model call failed is an error with the model's reason. Identical files (same sha256)
are computed once. Earlier results for the same sha256 and fingerprint are reused, and
finished chunks are saved as the step goes (``Progress``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import pyarrow as pa
from PIL import Image

from assets.image_files import DECODING, ImageDecodeError, open_image
from assets.model_stage import describe_failure, run_in_chunks
from assets.reuse import ModelStep
from assets.parquet_schemas import ERROR, KEY_FIELDS, OK
from resources.parallel import thread_map, worker_count
from resources.settings import PixelsiftSettings
from resources.backends import fingerprint as hash_settings

R = TypeVar("R")
KEY_NAMES = [f.name for f in KEY_FIELDS]


@dataclass(frozen=True)
class Failed:
    reason: str


def failure(exc: Exception) -> Failed:
    """An image's error row reason: a file that cannot be read gives its own reason (e.g. "changed
    during the run: …"), anything else is the model's failure."""
    return Failed(str(exc) if isinstance(exc, ImageDecodeError) else describe_failure(exc))


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


def _decode(folder: Path, path: str, image_id: str, settings: PixelsiftSettings) -> Image.Image | ImageDecodeError:
    """The image as the models see it, checked to be the bytes that were hashed; or why not."""
    try:
        return open_image(folder, path, settings.max_image_pixels, sha256=image_id, max_bytes=settings.max_file_bytes)
    except ImageDecodeError as exc:
        return exc


def image_step_fingerprint(model_fingerprint: str) -> str:
    """What a per-image model step's rows are stamped with: its model's fingerprint, and how its
    input pixels were decoded (``run_image_model`` decodes them)."""
    return hash_settings(model=model_fingerprint, decoding=DECODING)


def run_image_model(
    images: pa.Table,
    step: ModelStep,
    *,
    fingerprint: str,
    infer: Callable[[list[Image.Image]], Sequence[R]],
    to_fields: Callable[[R], dict],
    chunk_size: int,
) -> tuple[dict[str, dict | Failed], int]:
    """Run ``infer`` on every decodable image not already done; returns (results by image_id, reused count).

    ``fingerprint`` is the step's (``image_step_fingerprint``). Result fields always include
    ``fingerprint`` and ``reused``. Each finished chunk is saved in the asset's schema so that a
    stopped step resumes from it.
    """
    paths = unique_ok_images(images)
    earlier, todo = step.split_reusable({image_id: fingerprint for image_id in paths}, key_column="image_id")
    results: dict[str, dict | Failed] = {
        image_id: {k: v for k, v in row.items() if k not in KEY_NAMES} | {"reused": True}
        for image_id, row in earlier.items()
    }
    folder = batch_dir(step.settings, step.batch)
    workers = worker_count(step.settings.cpu_workers)

    def infer_chunk(ids: Sequence[str]) -> list[R | ImageDecodeError]:
        # Decoding releases the GIL: a chunk's images are opened on several threads.
        # Decoding releases the GIL: a chunk's images are opened on several threads. A file that cannot
        # be read now (changed since it was hashed) is that image's own error, not the model's.
        decoded = thread_map(lambda i: _decode(folder, paths[i], i, step.settings), ids, workers)
        readable = [image for image in decoded if not isinstance(image, ImageDecodeError)]
        outputs = list(infer(readable)) if readable else []
        if len(outputs) != len(readable):
            raise RuntimeError(f"model returned {len(outputs)} results for {len(readable)} inputs")
        returned = iter(outputs)
        return [image if isinstance(image, ImageDecodeError) else next(returned) for image in decoded]

    progress = step.progress(total=len(todo))

    def record(chunk: Sequence[str], outcomes: list[R | Exception]) -> None:
        finished = []
        for image_id, outcome in zip(chunk, outcomes):
            if isinstance(outcome, Exception):
                results[image_id] = failure(outcome)
            else:
                results[image_id] = to_fields(outcome) | {"fingerprint": fingerprint, "reused": False}
                finished.append({"image_id": image_id, "path": paths[image_id], "status": OK, "error": None,
                                 **results[image_id]})
        progress.save(finished)

    run_in_chunks(todo, infer_chunk, chunk_size=chunk_size, retries=step.settings.model_retries, logger=step.logger,
                  on_chunk=record)
    step.logger.info("%s: %d computed, %d reused from the warehouse", step.asset, len(todo), len(earlier))
    return results, len(earlier)
