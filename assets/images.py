"""Stage 1, ``images``: one row per file in the batch folder, decodable or not."""

from functools import partial

import pyarrow as pa
from dagster import AssetExecutionContext, asset

from assets.batch_files import FOLDER_SIGNATURE, folder_signature, list_batch_files
from assets.batch_range import per_batch
from assets.image_files import inspect_file
from assets.per_image import batch_dir
from assets.parquet_schemas import ERROR, IMAGES, OK
from resources.batch_keys import validate_batch_key
from resources.partitions import batch_partitions
from resources.parallel import process_map, worker_count
from resources.settings import PixelsiftSettings


@asset(partitions_def=batch_partitions, group_name="pipeline", kinds={"parquet"})
@per_batch
def images(context: AssetExecutionContext, settings: PixelsiftSettings) -> pa.Table:
    """Every file of the batch with its sha256, format and size; files that fail to decode are error rows."""
    batch = validate_batch_key(context.partition_key)
    folder = batch_dir(settings, batch)
    # A batch folder that links out of the images root is refused here, before anything is read.
    files = list_batch_files(folder)
    # Taken before reading: a file changed during the read makes the batch stale, never missed.
    signature = folder_signature(folder, files)
    records = process_map(partial(inspect_file, batch_dir=folder, max_pixels=settings.max_image_pixels,
                                  max_bytes=settings.max_file_bytes), files, worker_count(settings.cpu_workers))
    rows = [
        {
            "image_id": r.image_id,
            "path": r.path,
            "status": OK if r.ok else ERROR,
            "error": r.error,
            "format": r.format,
            "width": r.width,
            "height": r.height,
            "mode": r.mode,
            "taken_at": r.taken_at,
            "bytes": r.bytes,
            "ms": r.ms,
        }
        for r in records
    ]
    errors = [r for r in records if not r.ok]
    for r in errors:
        context.log.warning(f"{r.path}: {r.error}")
    context.add_output_metadata({"ok_images": len(records) - len(errors), "error_images": len(errors),
                                 FOLDER_SIGNATURE: signature})
    return pa.Table.from_pylist(rows, schema=IMAGES)
