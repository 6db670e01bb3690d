"""The simulated-scale benchmark at a few hundred images, so it cannot rot: every stage runs on the real
writer, views, reuse lookup, collection clustering (through Dagster, in a child process) and sensor."""

from __future__ import annotations

import pyarrow.parquet as pq

from benchmarks import scale
from resources.warehouse import partition_file, query


def test_the_synthetic_warehouse_is_the_real_layout_and_every_figure_is_measured(tmp_path):
    figures = scale.main(["--images", "300", "--batches", "3", "--repeat", "1", "--dir", str(tmp_path / "run"),
                          "--out", str(tmp_path / "figures.json")])
    warehouse = tmp_path / "run" / "warehouse"
    # What the pipeline writes, read back as `pixelsift query` reads it.
    for asset in ["images", "captions", "image_metadata", "color_palettes", "clip_embeddings", "clusters"]:
        assert pq.read_table(partition_file(warehouse, asset, "b00000")).num_rows == 100
    assert query(warehouse, "select count(*) from images").fetchall() == [(400,)]  # 3 batches + one more
    assert query(warehouse, "select count(*) from collection_clusters").fetchall() == [(400,)]
    assert set(figures["query_seconds"]) == set(scale.QUERIES)
    assert all(seconds > 0 for seconds in figures["query_seconds"].values())
    first, update = figures["collection_clusters"]["first"], figures["collection_clusters"]["after_one_more_batch"]
    assert first["images_kept"] == 0 and update["images_kept"] == first["images_new"] and first["peak_rss_mib"] > 0
    assert figures["warehouse_mib"]["total"] > figures["warehouse_mib"]["clip_embeddings"] > 0
    assert set(figures["sensor_seconds"]) == {"first_tick", "tick_nothing_changed", "tick_one_folder_changed"}
    assert (tmp_path / "figures.json").is_file()
