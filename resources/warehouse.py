"""The Parquet warehouse: one IO manager for every asset, and read-only DuckDB views over it.

Layout (hive): ``<root>/<asset>/batch=<key>/data.parquet``; an asset of the whole collection (not
partitioned: ``near_duplicates``) is ``<root>/<asset>/data.parquet``. A write goes to a temporary
file in the same folder and is renamed into place, so a reader never sees half a file
and a crashed run leaves the previous partition intact.

While a model step runs, it saves each finished chunk under ``<root>/.cache/partial/<asset>/
batch=<key>/``, in the asset's own schema; the partition's write removes them. A step that was
stopped (killed, cancelled, out of memory) thus leaves its finished work where reuse finds it.
Hidden folders are not SQL views.

A damaged file (truncated, overwritten) is never fatal to the rest: reuse and the SQL views leave
it out with a warning naming it, and ``warehouse_problems`` lists it with what to do (``pixelsift
doctor``). Writing the partition again replaces it, since nothing on the write path reads the old file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import field_validator
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableSchema,
)

from resources.batch_keys import validate_batch_key
from resources.search import TextEmbedder
from resources.search import install as install_search

DATA_FILE = "data.parquet"
PARTIAL_DIR = Path(".cache") / "partial"
_DESCRIPTION = b"description"  # key of a column's meaning in its pyarrow field metadata
_PREVIEW = b"preview"  # b"no" in a column's field metadata keeps it out of the preview table
PREVIEW_ROWS = 5
PREVIEW_COLUMNS = 6  # what fits the UI's metadata panel without scrolling sideways
PREVIEW_CELL_CHARS = 40
PREVIEW_LIST_ITEMS = 3
_TEMP_NAME = re.compile(r"\..+\.parquet\.[0-9a-f]{32}\.tmp")  # what _write_atomic writes before its rename

logger = logging.getLogger(__name__)


def partition_dir(root: str | Path, asset: str, batch: str) -> Path:
    return Path(root) / asset / f"batch={validate_batch_key(batch)}"


def partition_file(root: str | Path, asset: str, batch: str) -> Path:
    return partition_dir(root, asset, batch) / DATA_FILE


def collection_file(root: str | Path, asset: str) -> Path:
    """Where an asset of the whole collection (not partitioned by batch) is stored."""
    return Path(root) / asset / DATA_FILE


def partial_dir(root: str | Path, asset: str, batch: str) -> Path:
    """Where a running step of ``asset`` saves finished chunks of ``batch`` until its partition is written."""
    return Path(root) / PARTIAL_DIR / asset / f"batch={validate_batch_key(batch)}"


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Temporary file beside the target, flushed to disk, then renamed over it. Within one folder of
    one filesystem the rename is atomic, on a local disk and on NFS alike, so a reader on any machine
    sees the old file or the new one. The fsync before it keeps a writer's crash from leaving a
    renamed but empty file (filesystems may persist the rename before the data); the folder's
    fsync keeps the rename itself. The temporary name is unique, so writers on several machines
    never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # matches _TEMP_NAME
    try:
        with open(tmp, "wb") as out:
            pq.write_table(table, out, compression="zstd")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a filesystem that cannot open folders: the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:  # some network filesystems refuse fsync on a folder; their rename is already on the server
        pass
    finally:
        os.close(fd)


def save_partial(table: pa.Table, root: str | Path, asset: str, batch: str) -> Path:
    """One more finished chunk of a running step, as its own file (concurrent runs never collide)."""
    path = partial_dir(root, asset, batch) / f"part-{uuid.uuid4().hex}.parquet"
    _write_atomic(table, path)
    return path


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
        shown = ", ".join(_preview_cell(v) for v in value[:PREVIEW_LIST_ITEMS])
        return _clip(f"[{shown}{', …' if len(value) > PREVIEW_LIST_ITEMS else ''}]")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return _clip("{" + ", ".join(f"{k}: {_preview_cell(v)}" for k, v in value.items()) + "}")
    text = "" if value is None else str(value)
    return _clip(text.replace("|", "\\|").replace("\n", " "))


def _clip(text: str) -> str:
    return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"


def markdown_preview(table: pa.Table, rows: int = PREVIEW_ROWS) -> str:
    """The first rows, in at most PREVIEW_COLUMNS columns of short cells, so the UI shows them
    without scrolling sideways; columns marked ``preview=False`` (hashes, timings, model ids) are left out."""
    shown = [f.name for f in table.schema if _in_preview(f)][:PREVIEW_COLUMNS]
    head = table.select(shown).slice(0, rows).to_pylist()
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_preview_cell(r[n]) for n in shown) + " |" for r in head]
    if len(shown) < table.num_columns:
        lines.append(f"\n{len(shown)} of {table.num_columns} columns; the column schema lists them all, and "
                     "`pixelsift query` returns them.")
    return "\n".join(lines)


def column(name: str, kind: pa.DataType, description: str, nullable: bool = True, preview: bool = True) -> pa.Field:
    """A column that says what it means; the Dagster UI shows it with every materialization.
    ``preview=False``: bookkeeping (hashes, timings, model ids), left out of the preview table."""
    metadata = {_DESCRIPTION: description.encode()}
    if not preview:
        metadata[_PREVIEW] = b"no"
    return pa.field(name, kind, nullable=nullable, metadata=metadata)


def _in_preview(field: pa.Field) -> bool:
    return (field.metadata or {}).get(_PREVIEW) != b"no"


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


def local_root(root: str) -> str:
    """``root`` if it is a folder path; a URL (s3://, gs://, file://...) is refused plainly rather than
    taken for a local folder named ``s3:``. Object storage is not supported yet (docs/deployment.md)."""
    if "://" in root:
        raise ValueError(f"warehouse_dir {root!r} is a URL: the warehouse must be a folder every machine mounts "
                         "(a local disk, or a shared filesystem such as NFS); object storage is not supported yet")
    return root


class BatchTables(dict):
    """batch key -> that batch's table: what a step over several batches (a run over a range of
    partitions, as a single-run backfill launches) reads and returns. A step of one batch uses a
    plain ``pa.Table`` instead (assets/batch_range.py)."""


class ParquetWarehouse(ConfigurableIOManager):
    """Stores each batch partition of each asset as one Parquet file with the table's own schema.

    A step over several batches hands over a `BatchTables`: each batch is written to its own
    partition, as a run of that batch alone would have written it."""

    root: str

    @field_validator("root")
    @classmethod
    def _folder(cls, root: str) -> str:
        return local_root(root)

    @staticmethod
    def _batches(context: InputContext | OutputContext) -> list[str] | None:
        """The batch partitions the step reads or writes; None for an asset of the whole collection."""
        return list(context.asset_partition_keys) if context.has_asset_partitions else None

    def handle_output(self, context: OutputContext, obj: pa.Table | BatchTables) -> None:
        asset = "/".join(context.asset_key.path)
        batches = self._batches(context)
        if batches is None:  # an asset of the whole collection (near_duplicates)
            self._check_table(obj)
            write_table(obj, collection_file(self.root, asset))
            shutil.rmtree(Path(self.root) / PARTIAL_DIR / asset, ignore_errors=True)
            context.add_output_metadata({**table_metadata(obj),
                                         "path": MetadataValue.path(str(collection_file(self.root, asset)))})
            return
        tables = BatchTables({batches[0]: obj}) if len(batches) == 1 and isinstance(obj, pa.Table) else obj
        if not isinstance(tables, BatchTables) or sorted(tables) != sorted(batches):
            raise TypeError(f"{asset}: a step over the batches {batches} must return a BatchTables with exactly "
                            f"those keys, got {type(obj).__name__}")
        for batch in batches:
            self._check_table(tables[batch])
            write_table(tables[batch], partition_file(self.root, asset, batch))
            # The partition now holds everything the step's saved chunks did.
            shutil.rmtree(partial_dir(self.root, asset, batch), ignore_errors=True)
        if len(batches) == 1:  # several batches: each one's metadata is added by the asset (batch_range.py)
            path = partition_file(self.root, asset, batches[0])
            context.add_output_metadata({**table_metadata(tables[batches[0]]), "path": MetadataValue.path(str(path))})

    @staticmethod
    def _check_table(obj: object) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(f"assets stored in the warehouse return a pyarrow.Table, got {type(obj).__name__}")

    def load_input(self, context: InputContext) -> pa.Table | BatchTables:
        asset = "/".join(context.asset_key.path)
        batches = self._batches(context)
        if batches is None:
            return read_table(collection_file(self.root, asset))
        if len(batches) == 1:
            return read_table(partition_file(self.root, asset, batches[0]))
        return BatchTables({batch: read_table(partition_file(self.root, asset, batch)) for batch in batches})


# --- Damage: a file that cannot be read is left out and named, never fatal to the rest ---------


@dataclass(frozen=True)
class Problem:
    """Something in the warehouse that pixelsift leaves alone until a person acts on it."""

    path: Path
    what: str
    fix: str


def _footer(path: Path) -> pa.Schema | str:
    """The file's schema, or why it is not a readable Parquet file. Reads only the footer: a
    truncated or overwritten file fails there, and it is cheap enough to check before every use."""
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable Parquet ({exc})"


def damage(path: Path) -> str | None:
    """Why ``path`` is not a readable Parquet file, or None."""
    footer = _footer(path)
    return footer if isinstance(footer, str) else None


def _damaged(path: Path, root: Path, reason: str) -> Problem:
    relative = path.relative_to(root)
    if relative.parts[:len(PARTIAL_DIR.parts)] == PARTIAL_DIR.parts:
        return Problem(path, f"damaged saved chunk: {reason}",
                       "delete it; re-running its batch computes those rows again")
    if relative.parent.name and relative == Path(relative.parent.name) / DATA_FILE:
        return Problem(path, f"damaged {relative.parent.name} (whole collection): {reason}",
                       f"delete it and materialize it again: pixelsift run (or the {relative.parent.name} asset in the UI)")
    if not path.parent.name.startswith("batch="):
        return Problem(path, f"damaged Parquet file: {reason}", "delete it; pixelsift writes no file there")
    batch = path.parent.name.removeprefix("batch=")
    asset = relative.parent.parent.as_posix()
    return Problem(path, f"damaged partition of {asset}, batch {batch!r}: {reason}",
                   f"re-run the batch to write it again: pixelsift run --batch {batch}")


def _outside(path: Path, root: Path) -> Problem | None:
    target = path.resolve()
    if target.is_relative_to(root.resolve()):
        return None
    return Problem(path, f"link to {target}, outside the warehouse: not read",
                   "replace the link with the file itself, or delete it and re-run its batch")


def _usable_schema(path: Path, root: Path) -> pa.Schema | Problem:
    """The schema of the file at ``path``, or why it must not be read as part of the warehouse."""
    if problem := _outside(path, root):
        return problem
    footer = _footer(path)
    return _damaged(path, root, footer) if isinstance(footer, str) else footer


def reusable_files(root: str | Path, asset: str) -> list[Path]:
    """Every readable stored row set of ``asset``: its partitions (or its one file, for an asset of the
    whole collection), and chunks saved by steps that did not finish. A damaged file is skipped with a warning, so one bad batch does not stop the others."""
    root = Path(root)
    found = (sorted((root / asset).glob(f"batch=*/{DATA_FILE}"))
             + [f for f in [collection_file(root, asset)] if f.is_file()]  # an asset of the whole collection
             + sorted((root / PARTIAL_DIR / asset).glob("batch=*/part-*.parquet")))
    readable = []
    for path in found:
        checked = _usable_schema(path, root)
        if isinstance(checked, Problem):
            logger.warning("not reused: %s: %s; %s", path, checked.what, checked.fix)
        else:
            readable.append(path)
    return readable


def warehouse_problems(root: str | Path) -> list[Problem]:
    """Every damaged Parquet file (partitions and saved chunks), link out of the warehouse, and
    temporary file an interrupted write left behind, with what to do about each."""
    root = Path(root)
    problems: list[Problem] = []
    for folder, dirs, names in os.walk(root):  # links to folders are reported, not followed
        dirs.sort()
        for name in sorted(dirs + names):
            path = Path(folder) / name
            if path.is_symlink() and (problem := _outside(path, root)):
                problems.append(problem)
            elif _TEMP_NAME.fullmatch(name):
                problems.append(Problem(path, "temporary file of a write that did not finish",
                                        "delete it, unless a run is writing that partition right now"))
            elif name.endswith(".parquet") and path.is_file() and (reason := damage(path)):
                problems.append(_damaged(path, root, reason))
    return problems


# --- SQL over the warehouse, in a sandbox ---------------------------------------------------------
#
# The views are Arrow datasets handed to DuckDB, so DuckDB itself needs no file access at all and
# gets none: with external access off, nothing in a query can read, write or list a file, load an
# extension or reach the network, and the locked configuration cannot be changed back. DuckDB's
# allowed_directories/allowed_paths were not enough: they let COPY overwrite the allowed files.

QUERY_MEMORY_LIMIT = "50%"  # of the machine's RAM
QUERY_THREADS = max(1, (os.cpu_count() or 2) // 2)
_SANDBOX = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_extension_repositories": "forbidden",
    "allow_persistent_secrets": False,
    "python_enable_replacements": False,  # a query cannot scan this process's Python objects by name
    "temp_directory": "",  # nothing spills to disk: a query that outgrows memory fails instead
}
_PARTITION_COLUMN = pa.schema([pa.field("batch", pa.string())])


def _dataset(asset_dir: Path, files: list[Path], schemas: list[pa.Schema]) -> ds.Dataset:
    """All batches of one asset as one table; batches written with older columns get nulls."""
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if "batch" not in schema.names:
        schema = schema.append(_PARTITION_COLUMN.field("batch"))
    return ds.dataset([str(f) for f in files], schema=schema, format="parquet",
                      partitioning=ds.partitioning(_PARTITION_COLUMN, flavor="hive"),
                      partition_base_dir=str(asset_dir))


def _views(root: Path, problems: list[Problem]) -> dict[str, ds.Dataset]:
    views = {}
    if not root.is_dir():
        return views
    for asset_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files, schemas = [], []
        for path in sorted(asset_dir.glob(f"batch=*/{DATA_FILE}")):
            checked = _usable_schema(path, root)
            if isinstance(checked, Problem):
                problems.append(checked)
            else:
                files.append(path)
                schemas.append(checked)
        whole = asset_dir / DATA_FILE  # an asset of the whole collection: its own batch column, if any
        if not files and whole.is_file():
            checked = _usable_schema(whole, root)
            if isinstance(checked, Problem):
                problems.append(checked)
            else:
                views[asset_dir.name] = ds.dataset(str(whole), schema=checked, format="parquet")
            continue
        if not files:
            continue
        try:
            views[asset_dir.name] = _dataset(asset_dir, files, schemas)
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            problems.append(Problem(asset_dir, f"batches of {asset_dir.name} disagree on column types ({exc})",
                                    "re-run the older batches with the current pipeline"))
    return views


def connect(root: str | Path, problems: list[Problem] | None = None, *,
            memory_limit: str = QUERY_MEMORY_LIMIT, threads: int = QUERY_THREADS,
            text_embedder: TextEmbedder | None = None, resident: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per asset over all its readable batches (``batch`` is a
    column) that can reach nothing else, and the search macros (``resources.search``; text search
    with ``text_embedder``). Files left out (damaged, or links out of the warehouse) are appended to
    ``problems`` when it is given, else logged as warnings. ``resident``: the tables are read into
    memory once (for a long-lived process: a query then decodes no Parquet), else on every query."""
    skipped: list[Problem] = []
    views = _views(Path(root), skipped)
    if problems is not None:
        problems.extend(skipped)
    else:
        for problem in skipped:
            logger.warning("left out of the views: %s: %s; %s", problem.path, problem.what, problem.fix)
    con = duckdb.connect(":memory:", config={**_SANDBOX, "memory_limit": memory_limit, "threads": threads})
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")  # only settable once started
    con.execute("SET lock_configuration = true")
    for name, dataset in views.items():
        con.register(name, dataset.to_table() if resident else dataset)
    try:
        install_search(con, views, text_embedder)
    except duckdb.Error as exc:  # the views still answer plain SQL; only search is missing
        logger.warning("search is unavailable on this warehouse: %s", exc)
    return con


class ReadOnlyQueryError(ValueError):
    pass


def _statement_kind(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.StatementType:
    """The type DuckDB's parser gives the one statement in ``sql``; an EXPLAIN counts as the
    statement it explains, since EXPLAIN ANALYZE runs it."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise ReadOnlyQueryError("give exactly one SQL statement")
    try:
        kind = statements[0].type
    except ValueError:  # a statement type the Python client has no name for (UPDATE EXTENSIONS)
        raise ReadOnlyQueryError("only read-only queries are allowed here, not this statement") from None
    if kind != duckdb.StatementType.EXPLAIN:
        return kind
    return _statement_kind(con, _explained(statements[0].query))


def _explained(sql: str) -> str:
    """The statement after ``EXPLAIN [ANALYZE] [(options)]``, found with DuckDB's own tokenizer."""
    tokens = duckdb.tokenize(sql)
    texts = [sql[pos:end].strip() for (pos, _), end in zip(tokens, [p for p, _ in tokens[1:]] + [len(sql)])]
    words = [(pos, text.lower()) for (pos, kind), text in zip(tokens, texts) if kind != duckdb.token_type.comment]
    depth = 0
    for pos, word in words[1:]:  # words[0] is EXPLAIN
        depth += (word == "(") - (word == ")")
        if depth == 0 and word not in {"analyze", "analyse", ")"}:
            return sql[pos:]
    raise ReadOnlyQueryError("EXPLAIN needs a query to explain")


def query(root: str | Path, sql: str, problems: list[Problem] | None = None, *,
          text_embedder: TextEmbedder | None = None) -> duckdb.DuckDBPyRelation:
    """Run one read-only statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN...) against the views.

    The statement-type check gives a plain refusal; the sandboxed connection is what guarantees it."""
    con = connect(root, problems, text_embedder=text_embedder)
    kind = _statement_kind(con, sql)
    if kind != duckdb.StatementType.SELECT:
        raise ReadOnlyQueryError(f"only read-only queries are allowed here, not {kind.name}")
    try:
        return con.sql(sql)
    except duckdb.PermissionException as exc:
        raise ReadOnlyQueryError(f"refused: a query reads the warehouse's views and nothing else ({exc})") from None
