"""Stage 4, ``color_palettes``: 3-5 dominant colours per image (no model; never waits for one)."""

from functools import partial

import pyarrow as pa
from dagster import AssetExecutionContext, asset

from assets.batch_range import per_batch
from assets.palette import palette_of_file
from assets.per_image import Failed, assemble, batch_dir, failure, unique_ok_images
from assets.parquet_schemas import COLOR_PALETTES
from resources.partitions import batch_partitions
from resources.parallel import process_map, worker_count
from resources.settings import PixelsiftSettings


@asset(partitions_def=batch_partitions, group_name="pipeline", kinds={"parquet"})
@per_batch
def color_palettes(context: AssetExecutionContext, images: pa.Table, settings: PixelsiftSettings) -> pa.Table:
    """Dominant colours as #RRGGBB with pixel shares: k-means in Lab on a 64 px copy, fixed seed."""
    folder = batch_dir(settings, context.partition_key)
    todo = unique_ok_images(images)
    outcomes = process_map(partial(palette_of_file, folder=folder, max_pixels=settings.max_image_pixels,
                                   max_bytes=settings.max_file_bytes), todo.items(), worker_count(settings.cpu_workers))
    results: dict[str, dict | Failed] = {}
    for image_id, (palette, ms) in zip(todo, outcomes):
        if isinstance(palette, Exception):
            results[image_id] = failure(palette)
        else:
            results[image_id] = {"colors": palette.colors, "shares": palette.shares, "ms": ms}
    return assemble(images, results, COLOR_PALETTES)
