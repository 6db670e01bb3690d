"""`pixelsift query` against hostile SQL: it reads the warehouse's views and nothing else.

Each attack runs against a real warehouse (Parquet written by the IO manager's own write path)
next to a folder of secrets outside it, from a working directory inside the test's folder, and
afterwards every file there must be byte-for-byte what it was: nothing written, overwritten or
created, whatever the statement said.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from resources.warehouse import ReadOnlyQueryError, connect, partition_file, query, write_table

SECRET = "hunter2-not-in-any-view"


@pytest.fixture
def place(tmp_path, monkeypatch):
    """The warehouse (two assets, two batches), secrets outside it, and a working directory that a
    relative path in a COPY or ATTACH would land in."""
    wh = tmp_path / "warehouse"
    for batch, year in [("sample", 2021), ("trip", 2023)]:
        write_table(pa.table({
            "path": [f"{batch}/a.jpg", f"{batch}/b.jpg"],
            "taken_at": pa.array([datetime.datetime(year, 5, 1, 12), None], pa.timestamp("us")),
            "tags": pa.array([["cat", "sofa"], ["beach"]], pa.list_(pa.string())),
        }), partition_file(wh, "image_metadata", batch))
        write_table(pa.table({"path": [f"{batch}/a.jpg", f"{batch}/b.jpg"], "cluster_id": [0, 1]}),
                    partition_file(wh, "clusters", batch))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text(f"name,password\nroot,{SECRET}\n")
    pq.write_table(pa.table({"path": ["stolen"], "secret": [SECRET]}), outside / "secret.parquet")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return {"wh": wh, "outside": outside, "part": partition_file(wh, "image_metadata", "sample"), "tmp": tmp_path}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file, folder and link under ``folder``, with its bytes' sha256 (or the link's target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = f"link to {os.readlink(path)}"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "folder"
    return found


WRITES = "only read-only queries are allowed here"
OUTSIDE = "refused: a query reads the warehouse's views and nothing else"
ATTACKS = {
    # EXPLAIN ANALYZE runs the statement it explains: each of these ran before.
    "explain-analyze-copy-over-a-partition":
        ("EXPLAIN ANALYZE COPY (SELECT 'x' AS path) TO '{part}' (FORMAT parquet)", WRITES),
    "explain-analyze-copy-in-place":
        ("EXPLAIN ANALYZE COPY (SELECT 'x' AS path) TO '{part}' (USE_TMP_FILE false)", WRITES),
    "explain-options-analyze-copy": ("EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{wh}/new.csv'", WRITES),
    "explain-analyze-create": ("EXPLAIN ANALYZE CREATE TABLE stolen AS SELECT 1", WRITES),
    "explain-analyze-drop": ("EXPLAIN ANALYZE DROP VIEW clusters", WRITES),
    "explain-analyze-set": ("EXPLAIN ANALYZE SET enable_external_access = true", WRITES),
    "explain-analyze-install": ("EXPLAIN ANALYZE INSTALL httpfs", WRITES),
    # Statements that write, load code or change settings.
    "copy-to-a-partition": ("COPY clusters TO '{part}' (FORMAT parquet)", WRITES),
    "copy-relative-path": ("COPY clusters TO 'dump.csv'", WRITES),
    "copy-from-outside": ("COPY clusters FROM '{outside}/secret.csv'", WRITES),
    "attach-a-file": ("ATTACH '{wh}/evil.db' AS evil", WRITES),
    "attach-in-memory": ("ATTACH ':memory:' AS scratch", WRITES),
    "install": ("INSTALL httpfs", WRITES),
    "load": ("LOAD httpfs", WRITES),
    "force-install": ("FORCE INSTALL httpfs", WRITES),
    "update-extensions": ("UPDATE EXTENSIONS", WRITES),
    "set-external-access": ("SET enable_external_access = true", WRITES),
    "set-memory": ("SET memory_limit = '1TB'", WRITES),
    "reset-lock": ("RESET lock_configuration", WRITES),
    "pragma": ("PRAGMA enable_profiling", WRITES),
    "call": ("CALL pragma_version()", WRITES),
    "export-database": ("EXPORT DATABASE '{wh}/export'", WRITES),
    "create-view": ("CREATE VIEW v AS SELECT 1", WRITES),
    "two-statements": ("SELECT 1; COPY clusters TO '{part}' (FORMAT parquet)", "give exactly one SQL statement"),
    # Reads of files outside the warehouse, however they are spelled.
    "read-csv-etc-passwd": ("SELECT * FROM read_csv('/etc/passwd', sep = ':')", OUTSIDE),
    "read-csv-outside": ("SELECT * FROM read_csv('{outside}/secret.csv')", OUTSIDE),
    "read-csv-auto-replacement-scan": ("SELECT * FROM '{outside}/secret.csv'", OUTSIDE),
    "read-text-environ": ("SELECT * FROM read_text('/proc/self/environ')", OUTSIDE),
    "read-blob-glob": ("SELECT * FROM read_blob('{outside}/*')", OUTSIDE),
    "read-blob-root": ("SELECT * FROM read_blob('/root/.*')", OUTSIDE),
    "read-parquet-outside": ("SELECT * FROM read_parquet('{outside}/secret.parquet')", OUTSIDE),
    "glob-root": ("SELECT * FROM glob('/*')", OUTSIDE),
    "read-in-a-cte": ("WITH x AS (SELECT * FROM read_text('/etc/passwd')) SELECT * FROM x", OUTSIDE),
    "read-in-a-query-string": ("SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')", OUTSIDE),
}
# What the engine itself lets through touches only the throwaway in-memory catalog.
IN_MEMORY_ONLY = {"explain-analyze-create", "explain-analyze-drop", "attach-in-memory", "call", "create-view",
                  "copy-from-outside"}


@pytest.mark.parametrize("sql, message", list(ATTACKS.values()), ids=list(ATTACKS))
def test_attack_is_refused_and_changes_nothing(place, sql, message):
    before = snapshot(place["tmp"])
    with pytest.raises(ReadOnlyQueryError, match=message):
        query(place["wh"], sql.format(**place)).fetchall()
    assert snapshot(place["tmp"]) == before


@pytest.mark.parametrize("name", [name for name in ATTACKS if name not in IN_MEMORY_ONLY])
def test_the_engine_refuses_it_even_without_the_statement_check(place, name):
    # The statement check is a courtesy; the sandboxed connection is the guarantee.
    before = snapshot(place["tmp"])
    with pytest.raises(duckdb.Error, match="Permission Error|the configuration has been locked"):
        connect(place["wh"]).execute(ATTACKS[name][0].format(**place)).fetchall()
    assert snapshot(place["tmp"]) == before


def test_a_link_in_the_warehouse_to_a_file_outside_is_not_read(place):
    # Planted where a partition would be: it must not join the view, nor be readable by name.
    link = place["wh"] / "clusters" / "batch=planted" / "data.parquet"
    link.parent.mkdir()
    link.symlink_to(place["outside"] / "secret.parquet")
    before = snapshot(place["tmp"])
    left_out = []
    assert query(place["wh"], "SELECT DISTINCT batch FROM clusters ORDER BY 1", left_out).fetchall() == [
        ("sample",), ("trip",)]
    assert [p.path for p in left_out] == [link]
    assert "outside the warehouse" in left_out[0].what
    with pytest.raises(ReadOnlyQueryError, match=OUTSIDE):
        query(place["wh"], f"SELECT * FROM read_parquet('{link}')")
    assert snapshot(place["tmp"]) == before


def test_legitimate_queries_still_work(place):
    wh = place["wh"]
    joined = query(wh, """
        SELECT m.batch, year(m.taken_at) AS year, c.cluster_id, list_contains(m.tags, 'cat') AS cat
        FROM image_metadata m JOIN clusters c USING (batch, path) ORDER BY m.batch, m.path""").fetchall()
    assert joined == [("sample", 2021, 0, True), ("sample", None, 1, False),
                      ("trip", 2023, 0, True), ("trip", None, 1, False)]
    tags = query(wh, "SELECT tag, count(*) FROM (SELECT unnest(tags) AS tag FROM image_metadata) GROUP BY 1 ORDER BY 1")
    assert tags.fetchall() == [("beach", 2), ("cat", 2), ("sofa", 2)]
    assert query(wh, "SELECT count(*) FROM image_metadata WHERE batch = 'trip'").fetchall() == [(2,)]
    assert query(wh, "SHOW TABLES").fetchall() == [("clusters",), ("image_metadata",)]
    assert ("taken_at", "TIMESTAMP") in [row[:2] for row in query(wh, "DESCRIBE image_metadata").fetchall()]
    assert len(query(wh, "SUMMARIZE clusters").fetchall()) == 3
    for explain in ["EXPLAIN SELECT * FROM clusters", "EXPLAIN ANALYZE SELECT count(*) FROM clusters"]:
        assert "plan" in query(wh, explain).fetchall()[0][0]


def test_the_sandbox_is_locked(place):
    con = connect(place["wh"])
    settings = dict(con.sql("SELECT name, value FROM duckdb_settings()").fetchall())
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["autoinstall_known_extensions"] == settings["autoload_known_extensions"] == "false"
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")  # even a caller that skips the statement check
    process_memory = pa.table({"secret": [SECRET]})  # noqa: F841 - what a replacement scan would find by name
    with pytest.raises(duckdb.CatalogException):
        con.sql("SELECT * FROM process_memory")


def test_a_query_that_outgrows_its_memory_fails_without_spilling_to_disk(place):
    before = snapshot(place["tmp"])
    con = connect(place["wh"], memory_limit="64MB", threads=1)
    with pytest.raises(duckdb.OutOfMemoryException):
        con.sql("SELECT r FROM range(20000000) t(r) ORDER BY hash(r)").fetchall()
    assert snapshot(place["tmp"]) == before  # no temporary files, in the warehouse or the working directory


def test_cli_refuses_with_a_message_and_a_failing_exit_code(place):
    from dagster_project.cli import main

    runner, env = CliRunner(), {"PIXELSIFT_WAREHOUSE_DIR": str(place["wh"])}
    before = snapshot(place["tmp"])
    attack = ATTACKS["explain-analyze-copy-over-a-partition"][0].format(**place)
    overwrite = runner.invoke(main, ["query", attack], env=env)
    assert overwrite.exit_code == 1
    assert "only read-only queries are allowed here, not COPY" in overwrite.stderr
    passwd = runner.invoke(main, ["query", "SELECT * FROM read_csv('/etc/passwd')"], env=env)
    assert passwd.exit_code == 1
    assert OUTSIDE in passwd.stderr and "root:" not in passwd.output
    assert snapshot(place["tmp"]) == before
    fine = runner.invoke(main, ["query", "SELECT count(*) AS n FROM clusters", "--format", "csv"], env=env)
    assert (fine.exit_code, fine.stdout) == (0, "n\n4\n")
