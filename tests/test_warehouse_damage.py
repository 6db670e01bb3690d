"""One damaged file in the warehouse is named and routed around, never fatal to the rest.

The damage is real: a partition written by the IO manager's write path, then cut in half the way
a full disk or a killed copy leaves it.
"""

from __future__ import annotations

import logging

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from dagster import DagsterInstance, asset, materialize

from resources.partitions import batch_partitions
from resources.warehouse import (
    ParquetWarehouse, partition_file, query, reusable_files, save_partial, warehouse_problems, write_table,
)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def captions(batch: str, n: int = 2) -> pa.Table:
    return pa.table({"path": [f"{batch}/{i}.jpg" for i in range(n)], "caption": [f"photo {i}" for i in range(n)]})


def damaged_warehouse(root):
    """captions and images for batches 'sample' and 'aug'; captions of 'aug' truncated."""
    for batch in ("sample", "aug"):
        write_table(captions(batch), partition_file(root, "captions", batch))
        write_table(pa.table({"path": [f"{batch}/0.jpg", f"{batch}/1.jpg"]}), partition_file(root, "images", batch))
    truncate(partition_file(root, "captions", "aug"))
    return partition_file(root, "captions", "aug")


def test_reuse_skips_a_damaged_file_with_a_warning(tmp_path, caplog):
    bad = damaged_warehouse(tmp_path)
    chunk = save_partial(captions("trip", 1), tmp_path, "captions", "trip")
    bad_chunk = save_partial(captions("late", 1), tmp_path, "captions", "late")
    truncate(bad_chunk)
    with caplog.at_level(logging.WARNING):
        files = reusable_files(tmp_path, "captions")
    assert files == [partition_file(tmp_path, "captions", "sample"), chunk]
    assert str(bad) in caplog.text and str(bad_chunk) in caplog.text
    # What the reuse lookup does with them (assets/reuse.py) now reads every row that survived.
    rows = duckdb.sql("SELECT count(*) FROM read_parquet($files, union_by_name = true)",
                      params={"files": [str(f) for f in files]}).fetchall()
    assert rows == [(3,)]


def test_query_answers_over_the_rest_and_names_the_damage(tmp_path):
    bad = damaged_warehouse(tmp_path)
    left_out = []
    assert query(tmp_path, "SELECT batch, count(*) FROM captions GROUP BY 1", left_out).fetchall() == [("sample", 2)]
    assert query(tmp_path, "SELECT count(*) FROM images").fetchall() == [(4,)]  # an unrelated view is untouched
    assert [p.path for p in left_out] == [bad]
    assert "captions" in left_out[0].what and "'aug'" in left_out[0].what
    assert left_out[0].fix.endswith("pixelsift run --batch aug")


def test_batches_that_disagree_on_a_column_type_are_named_not_fatal(tmp_path):
    write_table(pa.table({"n": [1]}), partition_file(tmp_path, "scores", "old"))
    write_table(pa.table({"n": ["one"]}), partition_file(tmp_path, "scores", "new"))
    write_table(captions("sample"), partition_file(tmp_path, "captions", "sample"))
    left_out = []
    assert query(tmp_path, "SELECT count(*) FROM captions", left_out).fetchall() == [(2,)]
    assert [p.path for p in left_out] == [tmp_path / "scores"]
    assert "disagree on column types" in left_out[0].what


def test_cli_query_warns_on_stderr_and_still_answers(tmp_path):
    from dagster_project.cli import main

    bad = damaged_warehouse(tmp_path)
    result = CliRunner().invoke(main, ["query", "SELECT count(*) AS n FROM captions", "--format", "csv"],
                                env={"PIXELSIFT_WAREHOUSE_DIR": str(tmp_path)})
    assert (result.exit_code, result.stdout) == (0, "n\n2\n")
    assert f"warning: left out: {bad}" in result.stderr
    assert "pixelsift run --batch aug" in result.stderr


def test_doctor_lists_each_problem_with_its_fix(tmp_path):
    from dagster_project.cli import main

    bad = damaged_warehouse(tmp_path)
    bad_chunk = save_partial(captions("late", 1), tmp_path, "captions", "late")
    truncate(bad_chunk)
    leftover = partition_file(tmp_path, "images", "sample").with_name(f".data.parquet.{'0' * 32}.tmp")
    leftover.write_bytes(b"half a file")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.parquet"
    pq.write_table(captions("x"), outside)
    link = partition_file(tmp_path, "captions", "planted")
    link.parent.mkdir()
    link.symlink_to(outside)

    problems = {p.path: p for p in warehouse_problems(tmp_path)}
    assert set(problems) == {bad, bad_chunk, leftover, link}
    assert problems[bad].fix == "re-run the batch to write it again: pixelsift run --batch aug"
    assert "saved chunk" in problems[bad_chunk].what
    assert "did not finish" in problems[leftover].what
    assert "outside the warehouse" in problems[link].what

    runner, env = CliRunner(), {"PIXELSIFT_WAREHOUSE_DIR": str(tmp_path)}
    result = runner.invoke(main, ["doctor"], env=env)
    assert result.exit_code == 1
    for path in (bad, bad_chunk, leftover, link):
        assert str(path) in result.stdout
    assert "fix: re-run the batch to write it again: pixelsift run --batch aug" in result.stdout
    assert "4 problem(s)" in result.stderr
    assert "Example: pixelsift doctor" in runner.invoke(main, ["doctor", "--help"]).stdout


def test_doctor_on_a_sound_warehouse_exits_zero(tmp_path):
    from dagster_project.cli import main

    write_table(captions("sample"), partition_file(tmp_path, "captions", "sample"))
    result = CliRunner().invoke(main, ["doctor"], env={"PIXELSIFT_WAREHOUSE_DIR": str(tmp_path)})
    assert result.exit_code == 0
    assert "No problems found" in result.stdout


@asset(partitions_def=batch_partitions)
def described(context) -> pa.Table:
    """Like a model step: looks up every stored batch for reusable rows before writing its own."""
    files = reusable_files(context.resources.io_manager.root, "described")
    if files:
        duckdb.sql("SELECT * FROM read_parquet($files)", params={"files": [str(f) for f in files]}).fetchall()
    return captions(context.partition_key, n=3)


def test_rematerializing_the_damaged_partition_repairs_it(tmp_path):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["sample", "aug"])
    resources = {"io_manager": ParquetWarehouse(root=str(tmp_path))}
    for key in ("sample", "aug"):
        assert materialize([described], partition_key=key, instance=instance, resources=resources).success
    bad = partition_file(tmp_path, "described", "aug")
    truncate(bad)

    assert materialize([described], partition_key="aug", instance=instance, resources=resources).success
    assert pq.read_table(bad).num_rows == 3
    assert warehouse_problems(tmp_path) == []
    assert query(tmp_path, "SELECT batch, count(*) FROM described GROUP BY 1 ORDER BY 1").fetchall() == [
        ("aug", 3), ("sample", 3)]
