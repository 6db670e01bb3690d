"""Stage 4, ``color_palettes``: 3-5 dominant colours per image (no model; never waits for one)."""

import time

import pyarrow as pa
from dagster import AssetExecutionContext, asset

from assets.image_files import open_image
from assets.model_stage import describe_failure
from assets.palette import extract_palette
from assets.per_image import Failed, assemble, batch_dir, unique_ok_images
from assets.tables import COLOR_PALETTES
from dagster_project.partitions import batch_partitions
from resources.settings import PixelsiftSettings


@asset(partitions_def=batch_partitions, group_name="pipeline", kinds={"parquet"})
def color_palettes(context: AssetExecutionContext, images: pa.Table, settings: PixelsiftSettings) -> pa.Table:
    """Dominant colours as #RRGGBB with pixel shares: k-means in Lab on a 64 px copy, fixed seed."""
    folder = batch_dir(settings, context.partition_key)
    results: dict[str, dict | Failed] = {}
    for image_id, path in unique_ok_images(images).items():
        start = time.perf_counter()
        try:
            palette = extract_palette(open_image(folder, path, settings.max_image_pixels))
        except Exception as exc:  # noqa: BLE001 - recorded as this image's error
            results[image_id] = Failed(describe_failure(exc))
            continue
        results[image_id] = {"colors": palette.colors, "shares": palette.shares,
                             "ms": (time.perf_counter() - start) * 1000}
    return assemble(images, results, COLOR_PALETTES)
