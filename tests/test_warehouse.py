"""The Parquet IO manager through real Dagster materializations, and the DuckDB views over it."""

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, asset, materialize

from assets.reuse import ModelStep
from resources.partitions import batch_partitions
from resources.settings import PixelsiftSettings
from resources.warehouse import (
    PREVIEW_CELL_CHARS, PREVIEW_COLUMNS, ParquetWarehouse, ReadOnlyQueryError, column, column_description,
    markdown_preview, partial_dir, partition_file, query, reusable_files, save_partial, write_table,
)

SCHEMA = pa.schema([column("n", pa.int64(), "a counter"), pa.field("vec", pa.list_(pa.float32(), 2))])


@asset(partitions_def=batch_partitions)
def numbers(context) -> pa.Table:
    count = int(context.partition_key.split("-")[1])
    return pa.table({"n": list(range(count)), "vec": [[float(i), 0.0] for i in range(count)]}, schema=SCHEMA)


@asset(partitions_def=batch_partitions)
def doubled(numbers: pa.Table) -> pa.Table:
    return pa.table({"n": [2 * v for v in numbers.column("n").to_pylist()]})


def run(tmp_path, key, instance):
    return materialize([numbers, doubled], partition_key=key, instance=instance,
                       resources={"io_manager": ParquetWarehouse(root=str(tmp_path))})


def test_round_trip_schema_metadata_and_views(tmp_path):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["b-3", "b-5"])
    result = run(tmp_path, "b-3", instance)
    assert result.success
    run(tmp_path, "b-5", instance)

    table = pq.read_table(partition_file(tmp_path, "numbers", "b-3"))
    assert table.schema.field("vec").type == pa.list_(pa.float32(), 2)  # fixed-size list survives
    meta = result.asset_materializations_for_node("numbers")[0].metadata
    assert meta["dagster/row_count"].value == 3
    columns = meta["dagster/column_schema"].schema.columns
    assert [(c.name, c.description) for c in columns] == [("n", "a counter"), ("vec", None)]
    assert "| n | vec |" in meta["preview"].value

    assert query(tmp_path, "select batch, sum(n) from doubled group by 1 order by 1").fetchall() == [
        ("b-3", 6), ("b-5", 20)
    ]


def test_the_preview_stays_narrow_enough_to_read():
    # The image_metadata schema: 22 columns, a 64-character sha256 first and long captions.
    from assets.parquet_schemas import IMAGE_METADATA

    row = {f.name: None for f in IMAGE_METADATA}
    row.update(image_id="f" * 64, path="holiday/IMG_0001.jpg", status="ok", primary_category="landscape",
               tags=["beach", "sunset", "sea", "sand", "palm"], description="a long sandy beach at sunset " * 4,
               detected_objects=[{"name": "palm tree", "confidence": 0.9}], scene_type="outdoor",
               fingerprint="a" * 64, vlm_model="/home/me/models/blip2 + /home/me/models/phi3")
    preview = markdown_preview(pa.Table.from_pylist([row] * 8, schema=IMAGE_METADATA))
    header, _, *rows, _, note = preview.splitlines()
    # The record's own columns, not its hashes, timings and model ids (all still in the column schema).
    assert header == "| path | error | primary_category | tags | description | detected_objects |"
    assert len(header.split(" | ")) == PREVIEW_COLUMNS and len(rows) == 5
    assert all(len(cell.strip()) <= PREVIEW_CELL_CHARS for cell in rows[0].strip("|").split(" | "))
    assert "[beach, sunset, sea, …]" in rows[0] and "| a long sandy beach at sunset a long san… |" in rows[0]
    assert note == "6 of 22 columns; the column schema lists them all, and `pixelsift query` returns them."


def test_rematerializing_replaces_the_partition(tmp_path):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["b-4"])
    run(tmp_path, "b-4", instance)
    stray = partition_file(tmp_path, "numbers", "b-4").with_name("old.parquet")
    pq.write_table(pa.table({"n": [99]}), stray)
    run(tmp_path, "b-4", instance)
    assert not stray.exists()
    assert query(tmp_path, "select count(*) from numbers").fetchall() == [(4,)]


def test_saved_chunks_are_reusable_hidden_from_sql_and_gone_once_the_partition_is_written(tmp_path):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["b-2", "b-3"])
    chunk = pa.table({"n": [7], "vec": [[7.0, 0.0]]}, schema=SCHEMA)
    saved = [save_partial(chunk, tmp_path, "numbers", key) for key in ("b-2", "b-3")]
    run(tmp_path, "b-2", instance)
    assert reusable_files(tmp_path, "numbers") == [partition_file(tmp_path, "numbers", "b-2"), saved[1]]
    assert not partial_dir(tmp_path, "numbers", "b-2").exists()
    assert query(tmp_path, "select count(*) from numbers").fetchall() == [(2,)]  # not the saved 7s


def test_progress_that_cannot_be_saved_is_a_warning_not_a_failure(tmp_path, caplog):
    (tmp_path / ".cache").write_text("a file where the folder would go")
    chunk = [{"n": 1, "vec": [1.0, 0.0]}]
    with caplog.at_level(logging.INFO):
        step = ModelStep(PixelsiftSettings(warehouse_dir=str(tmp_path)), "numbers", "b-1", SCHEMA, logging.getLogger("t"))
        step.progress(total=3).save(chunk)
    assert "numbers: 1 of 3 done" in caplog.text
    assert "could not save a finished chunk of numbers" in caplog.text


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = partition_file(tmp_path, "t", "k")
    write_table(pa.table({"n": [1]}), path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)  # simulates a crash mid-write
    with pytest.raises(OSError):
        write_table(pa.table({"n": [2]}), path)
    assert pq.read_table(path).column("n").to_pylist() == [1]
    assert [p.name for p in path.parent.iterdir()] == ["data.parquet"]


@pytest.mark.parametrize("sql", ["create table x as select 1", "copy (select 1) to 'x.csv'", "select 1; select 2",
                                 "attach 'x.db'", "install httpfs"])
def test_only_read_only_queries(tmp_path, sql):
    with pytest.raises(ReadOnlyQueryError):
        query(tmp_path, sql)


def test_partition_keys_cannot_escape_the_warehouse(tmp_path):
    with pytest.raises(ValueError):
        partition_file(tmp_path, "t", "../../etc")


def test_every_pipeline_column_says_what_it_means():
    from assets import parquet_schemas as tables

    schemas = [tables.IMAGES, tables.CAPTIONS, tables.IMAGE_METADATA, tables.COLOR_PALETTES,
               tables.clip_embeddings_schema(512), tables.CLUSTERS, tables.CLUSTER_LABELS]
    undescribed = [f.name for schema in schemas for f in schema if not column_description(f)]
    assert undescribed == []


def test_a_write_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    """Spies on os.fsync and os.replace (they still run): the file is synced, then renamed, then its folder synced."""
    import os

    calls, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = partition_file(tmp_path, "t", "k")
    write_table(pa.table({"n": [1, 2]}), path)
    assert calls == [("fsync", "file"), ("replace", "data.parquet"), ("fsync", "folder")]
    assert pq.read_table(path).column("n").to_pylist() == [1, 2]


@pytest.mark.parametrize("url", ["s3://bucket/warehouse", "gs://bucket/w", "file:///data/warehouse"])
def test_a_url_warehouse_is_refused_not_created_as_a_local_folder(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="is a URL.*not supported yet"):
        ParquetWarehouse(root=url)
    assert not any(tmp_path.iterdir())
