"""The Parquet warehouse: one IO manager for every asset, and read-only DuckDB views over it.

Layout (hive): ``<root>/<asset>/batch=<key>/data.parquet``. A write goes to a temporary
file in the same folder and is renamed into place, so a reader never sees half a file
and a crashed run leaves the previous partition intact.

While a model step runs, it saves each finished chunk under ``<root>/.cache/partial/<asset>/
batch=<key>/``, in the asset's own schema; the partition's write removes them. A step that was
stopped (killed, cancelled, out of memory) thus leaves its finished work where reuse finds it.
Hidden folders are not SQL views.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableSchema,
)

from resources.batch_keys import validate_batch_key

DATA_FILE = "data.parquet"
PARTIAL_DIR = Path(".cache") / "partial"
_DESCRIPTION = b"description"  # key of a column's meaning in its pyarrow field metadata
PREVIEW_ROWS = 5


def partition_dir(root: str | Path, asset: str, batch: str) -> Path:
    return Path(root) / asset / f"batch={validate_batch_key(batch)}"


def partition_file(root: str | Path, asset: str, batch: str) -> Path:
    return partition_dir(root, asset, batch) / DATA_FILE


def partial_dir(root: str | Path, asset: str, batch: str) -> Path:
    """Where a running step of ``asset`` saves finished chunks of ``batch`` until its partition is written."""
    return Path(root) / PARTIAL_DIR / asset / f"batch={validate_batch_key(batch)}"


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_partial(table: pa.Table, root: str | Path, asset: str, batch: str) -> Path:
    """One more finished chunk of a running step, as its own file (concurrent runs never collide)."""
    path = partial_dir(root, asset, batch) / f"part-{uuid.uuid4().hex}.parquet"
    _write_atomic(table, path)
    return path


def reusable_files(root: str | Path, asset: str) -> list[Path]:
    """Every stored row set of ``asset``: its partitions, and chunks saved by steps that did not finish."""
    root = Path(root)
    return (sorted((root / asset).glob(f"batch=*/{DATA_FILE}"))
            + sorted((root / PARTIAL_DIR / asset).glob("batch=*/part-*.parquet")))


def write_table(table: pa.Table, path: Path) -> None:
    """Write atomically: temporary file, then rename; other files in the partition are removed."""
    _write_atomic(table, path)
    for other in path.parent.iterdir():
        if other != path and other.suffix == ".parquet":
            other.unlink()


def read_table(path: Path) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"no Parquet file at {path}: materialize that asset partition first")
    return pq.read_table(path)


def _preview_cell(value: object) -> str:
    if isinstance(value, list):
        shown = ", ".join(_preview_cell(v) for v in value[:4])
        return f"[{shown}{', …' if len(value) > 4 else ''}]"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_preview_cell(v)}" for k, v in value.items()) + "}"
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "…"


def markdown_preview(table: pa.Table, rows: int = PREVIEW_ROWS) -> str:
    head = table.slice(0, rows).to_pylist()
    names = table.column_names
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_preview_cell(r[n]) for n in names) + " |" for r in head]
    return "\n".join(lines)


def column(name: str, kind: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    """A column that says what it means; the Dagster UI shows it with every materialization."""
    return pa.field(name, kind, nullable=nullable, metadata={_DESCRIPTION: description.encode()})


def column_description(field: pa.Field) -> str | None:
    return (field.metadata or {}).get(_DESCRIPTION, b"").decode() or None


def table_metadata(table: pa.Table) -> dict:
    """Row count, column schema and a short preview, as Dagster shows them on a materialization."""
    return {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(name=f.name, type=str(f.type), description=column_description(f))
                     for f in table.schema]
        ),
        "preview": MetadataValue.md(markdown_preview(table)),
    }


class ParquetWarehouse(ConfigurableIOManager):
    """Stores each batch partition of each asset as one Parquet file with the table's own schema."""

    root: str

    def _path(self, context: InputContext | OutputContext) -> Path:
        if not context.has_asset_partitions:
            raise ValueError(f"{context.asset_key.to_user_string()} is not partitioned; the warehouse stores batches")
        asset = "/".join(context.asset_key.path)
        return partition_file(self.root, asset, context.asset_partition_key)

    def handle_output(self, context: OutputContext, obj: pa.Table) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(f"assets stored in the warehouse return a pyarrow.Table, got {type(obj).__name__}")
        path = self._path(context)
        write_table(obj, path)
        # The partition now holds everything the step's saved chunks did.
        shutil.rmtree(partial_dir(self.root, "/".join(context.asset_key.path), context.asset_partition_key),
                      ignore_errors=True)
        context.add_output_metadata({**table_metadata(obj), "path": MetadataValue.path(str(path))})

    def load_input(self, context: InputContext) -> pa.Table:
        return read_table(self._path(context))


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per asset over all its batches (``batch`` is a column)."""
    con = duckdb.connect(":memory:")
    root = Path(root)
    if root.is_dir():
        for asset_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not any(asset_dir.glob(f"batch=*/{DATA_FILE}")):
                continue
            pattern = str(asset_dir / "batch=*" / DATA_FILE).replace("'", "''")
            con.execute(
                f'CREATE VIEW "{asset_dir.name}" AS SELECT * FROM '
                f"read_parquet('{pattern}', hive_partitioning = true, hive_types_autocast = false, union_by_name = true)"
            )
    return con


class ReadOnlyQueryError(ValueError):
    pass


def query(root: str | Path, sql: str) -> duckdb.DuckDBPyRelation:
    """Run one read-only statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN...) against the views."""
    con = connect(root)
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise ReadOnlyQueryError("give exactly one SQL statement")
    kind = statements[0].type
    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
    if kind not in allowed:
        raise ReadOnlyQueryError(f"only read-only queries are allowed here, not {kind.name}")
    return con.sql(sql)
