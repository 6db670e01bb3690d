"""Search the warehouse's CLIP embeddings: by text, by an image, with metadata filters.

One implementation, in SQL: table macros installed on every warehouse connection, so ``pixelsift
search``, ``pixelsift similar``, ``pixelsift browse`` and a user's own ``pixelsift query`` rank and
filter the same way. Filters are WHERE clauses applied before the ``LIMIT k``: a filter narrows the
candidates, it never cuts the k results short while more images match.

In SQL (the text needs the query command's CLIP model; the others need no model):

    select * from search_images('dog on a beach', k := 10, category := 'animal')
    select * from similar_images('<sha256>', k := 10)
    select * from search_vector([0.1, ...]::FLOAT[512], k := 10)

Every macro takes ``k`` and the filters ``batch_key``, ``category``, ``tag``, ``scene``,
``taken_after`` and ``taken_before`` as named arguments. Vectors are unit length, so cosine is the
score (1 = the same direction). Only vectors of the query's model are compared: vectors of two
models live in different spaces, whatever their length.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from functools import lru_cache
from typing import Protocol, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from resources.model_names import portable_model_name

logger = logging.getLogger(__name__)

EMBEDDINGS = "clip_embeddings"
FILTERS = ("batch_key", "category", "tag", "scene", "taken_after", "taken_before")

# The optional views a hit's description comes from, and what stands in for a missing one (a batch
# whose metadata step failed still has embeddings, so it is still searchable).
_DESCRIBED_BY = {
    "captions": ["caption"],
    "image_metadata": ["primary_category", "scene_type", "tags"],
    "images": ["taken_at", "width", "height", "bytes"],
}
_STAND_IN_TYPES = {"caption": "VARCHAR", "primary_category": "VARCHAR", "scene_type": "VARCHAR",
                   "tags": "VARCHAR[]", "taken_at": "TIMESTAMP", "width": "INTEGER", "height": "INTEGER",
                   "bytes": "BIGINT"}


class SearchError(ValueError):
    """A search that cannot run as asked (no embeddings, another model's vectors, unknown image)."""


class TextEmbedder(Protocol):
    """What text search needs of a CLIP model (``resources.clip_embedder.ClipEmbedderResource``)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed_text(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Filters:
    """Metadata an image must have to be a result; None: any. ``tag`` is one of its tags."""

    batch_key: str | None = None
    category: str | None = None
    tag: str | None = None
    scene: str | None = None
    taken_after: datetime | None = None
    taken_before: datetime | None = None


@dataclass(frozen=True)
class Hit:
    batch: str
    path: str
    image_id: str
    score: float
    caption: str | None
    category: str | None
    scene: str | None
    tags: list[str] | None
    taken_at: datetime | None
    width: int | None
    height: int | None
    bytes: int | None


HIT_COLUMNS = [f.name for f in fields(Hit)]

# What the vector index stores per image (search_candidates' columns but the vector), and ``row``,
# the image's row in the index.
INDEX_ROWS = "__pixelsift_index_rows"
INDEX_ROWS_SCHEMA = pa.schema([
    ("batch", pa.string()), ("path", pa.string()), ("image_id", pa.string()), ("model_id", pa.string()),
    ("caption", pa.string()), ("category", pa.string()), ("scene", pa.string()), ("tags", pa.list_(pa.string())),
    ("taken_at", pa.timestamp("us")), ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64()),
    ("row", pa.int64())])
# Parameters have names no column has: inside a macro a parameter hides a column of its name (a
# qualified name, s.category, is the column).
_PARAMETERS = ("query_model := NULL, exclude_image := NULL, batch_key := NULL, category := NULL, tag := NULL, "
               "scene := NULL, taken_after := NULL, taken_before := NULL")
_CONDITION = """(query_model IS NULL OR s.model_id = query_model)
          AND (exclude_image IS NULL OR s.image_id <> exclude_image)
          AND (batch_key IS NULL OR s.batch = batch_key)
          AND (category IS NULL OR s.category = category)
          AND (tag IS NULL OR list_contains(s.tags, lower(tag)))
          AND (scene IS NULL OR s.scene = scene)
          AND (taken_after IS NULL OR s.taken_at >= taken_after::TIMESTAMP)
          AND (taken_before IS NULL OR s.taken_at < taken_before::TIMESTAMP)"""


def _source(views: dict[str, ds.Dataset], name: str) -> str:
    """The view, or a stand-in with the columns a hit needs (nulls) for a view or column not there."""
    if name not in views:
        columns = ", ".join(f"NULL::{_STAND_IN_TYPES[c]} AS {c}" for c in _DESCRIBED_BY[name])
        return f"(SELECT NULL::VARCHAR AS batch, NULL::VARCHAR AS path, {columns} WHERE false)"
    present = set(views[name].schema.names)
    if set(_DESCRIBED_BY[name]) <= present:
        return name
    columns = ", ".join(c if c in present else f"NULL::{_STAND_IN_TYPES[c]} AS {c}" for c in _DESCRIBED_BY[name])
    return f"(SELECT batch, path, {columns} FROM {name})"


def install(con: duckdb.DuckDBPyConnection, views: dict[str, ds.Dataset],
            text_embedder: TextEmbedder | None = None) -> None:
    """The search macros, on a connection holding the warehouse's ``views``; nothing when there are
    no embeddings. ``search_images`` (text) only with a ``text_embedder``."""
    if EMBEDDINGS not in views:
        return
    dim = views[EMBEDDINGS].schema.field("embedding").type.list_size
    captions, metadata, images = (_source(views, name) for name in _DESCRIBED_BY)
    # search_candidates is the one place an image's description and the filters are written: the
    # exact macros rank its rows, and the vector index (resources.vector_index) stores its rows per
    # batch and filters them with the same condition (index_candidates, in _indexed).
    con.execute(f"""
        CREATE MACRO search_candidates({_PARAMETERS}) AS TABLE
        SELECT s.* FROM (
            SELECT e.batch, e.path, e.image_id, e.model_id, e.embedding,
                   c.caption, m.primary_category AS category, m.scene_type AS scene, m.tags,
                   i.taken_at, i.width, i.height, i.bytes
            FROM {EMBEDDINGS} e
            LEFT JOIN {captions} c ON c.batch = e.batch AND c.path = e.path
            LEFT JOIN {metadata} m ON m.batch = e.batch AND m.path = e.path
            LEFT JOIN {images} i ON i.batch = e.batch AND i.path = e.path
            WHERE e.status = 'ok') s
        WHERE {_CONDITION}
    """)
    con.execute(f"""
        CREATE MACRO search_vector(query_vector, query_model := NULL, k := 20, exclude_image := NULL,
                                   batch_key := NULL, category := NULL, tag := NULL, scene := NULL,
                                   taken_after := NULL, taken_before := NULL) AS TABLE
        SELECT s.batch, s.path, s.image_id, array_cosine_similarity(s.embedding, query_vector::FLOAT[{dim}]) AS score,
               s.caption, s.category, s.scene, s.tags, s.taken_at, s.width, s.height, s.bytes
        FROM search_candidates(query_model := query_model, exclude_image := exclude_image,
                               batch_key := batch_key, category := category, tag := tag, scene := scene,
                               taken_after := taken_after, taken_before := taken_before) s
        WHERE query_vector IS NOT NULL
        ORDER BY score DESC, s.batch, s.path
        LIMIT k
    """)
    # The query image's own vector and model; its copies (same sha256) are not "similar", they are it.
    con.execute(f"""
        CREATE MACRO similar_images(sha256, k := 20, batch_key := NULL, category := NULL, tag := NULL,
                                    scene := NULL, taken_after := NULL, taken_before := NULL) AS TABLE
        SELECT * FROM search_vector(
            (SELECT embedding FROM {EMBEDDINGS} WHERE image_id = sha256 AND status = 'ok'
             ORDER BY batch, path LIMIT 1),
            query_model := (SELECT model_id FROM {EMBEDDINGS} WHERE image_id = sha256 AND status = 'ok'
                            ORDER BY batch, path LIMIT 1),
            k := k, exclude_image := sha256, batch_key := batch_key, category := category, tag := tag,
            scene := scene, taken_after := taken_after, taken_before := taken_before)
    """)
    if text_embedder is None:
        return
    con.create_function("clip_text", _text_function(text_embedder, dim), ["VARCHAR"], f"FLOAT[{dim}]",
                        side_effects=False)
    con.create_function("clip_model_id", lambda: portable_model_name(text_embedder.model_id), [], "VARCHAR",
                        side_effects=False)
    con.execute("""
        CREATE MACRO search_images(query_text, k := 20, batch_key := NULL, category := NULL, tag := NULL,
                                   scene := NULL, taken_after := NULL, taken_before := NULL) AS TABLE
        SELECT * FROM search_vector(clip_text(query_text), query_model := clip_model_id(), k := k,
            batch_key := batch_key, category := category, tag := tag, scene := scene,
            taken_after := taken_after, taken_before := taken_before)
    """)


def _text_function(embedder: TextEmbedder, dim: int):
    if embedder.dim != dim:
        def mismatched(_: str) -> list[float]:
            raise SearchError(f"the query model {embedder.model_id} makes {embedder.dim}-float vectors, the "
                              f"warehouse's embeddings have {dim}: search with the model that made them")
        return mismatched

    @lru_cache(maxsize=64)  # DuckDB calls it once per chunk of rows, with the same text
    def clip_text(text: str) -> list[float]:
        return embedder.embed_text([text])[0].tolist()

    return clip_text


def _hits(rel: duckdb.DuckDBPyRelation) -> list[Hit]:
    return [Hit(**dict(zip(HIT_COLUMNS, row))) for row in rel.fetchall()]


def _filter_args(filters: Filters) -> tuple[str, list]:
    given = {name: value for name, value in asdict(filters).items() if value is not None}
    return "".join(f", {name} := ?" for name in given), list(given.values())


def _models(con: duckdb.DuckDBPyConnection) -> list[str]:
    if EMBEDDINGS not in {name for (name,) in con.sql("show tables").fetchall()}:
        raise SearchError("the warehouse has no clip_embeddings yet: run the pipeline first (pixelsift run)")
    return [m for (m,) in con.sql(f"SELECT DISTINCT model_id FROM {EMBEDDINGS} WHERE status = 'ok' "
                                   "ORDER BY 1").fetchall()]


def _stored_model_id(con: duckdb.DuckDBPyConnection, model_id: str, index=None) -> str:
    """The query model as the clip_embeddings asset names it (``portable_model_name``: a local folder
    without the machine's path), checked against the models whose vectors the warehouse holds (the
    index's, when it has that model's vectors: no scan of the warehouse)."""
    stored = portable_model_name(model_id)
    if index is not None and index.size and index.model_id == stored:
        return stored
    models = _models(con)
    if stored not in models:
        raise SearchError(f"the embeddings were made by {', '.join(models) or 'no model'}, not by the query's "
                          f"model {stored}: search with the same CLIP model as the run")
    return stored


def open_search_index(warehouse_dir, model_id: str, ann_above: int):
    """The vector index of ``model_id``'s vectors (``resources.vector_index``), brought up to date;
    None, with a warning, when it cannot be used (then the exact SQL macros answer, slower).
    ``ann_above``: the ``search_index_above`` setting."""
    from resources.vector_index import IndexRefused, open_index

    try:
        return open_index(warehouse_dir, portable_model_name(model_id), ann_above)
    except (ImportError, OSError, IndexRefused, pa.ArrowException, duckdb.Error) as exc:
        logger.warning("vector index unavailable (%s): searching exactly in SQL instead", exc)
        return None


def search_text(con: duckdb.DuckDBPyConnection, text: str, model_id: str, k: int = 20,
                filters: Filters = Filters(), index=None) -> list[Hit]:
    """The k images whose vectors are nearest the text's (``install`` with a text embedder first);
    through ``index`` (``open_search_index``) when given."""
    if not text.strip():
        raise SearchError("give some text to search for")
    stored = _stored_model_id(con, model_id, index)
    if index is not None:
        vector = np.asarray(con.execute("SELECT clip_text(?)", [text]).fetchall()[0][0], dtype=np.float32)
        return _indexed(con, index, vector, stored, k, filters)
    args, values = _filter_args(filters)
    return _hits(con.execute(f"SELECT * FROM search_images(?, k := ?{args})", [text, k, *values]))


def similar_to_image(con: duckdb.DuckDBPyConnection, image_id: str, k: int = 20,
                     filters: Filters = Filters(), index=None) -> list[Hit]:
    """The k images nearest an image of the warehouse (its copies with the same sha256 left out);
    through ``index`` when given and it holds the image."""
    if index is not None:
        vector = index.vector_of(image_id)
        if vector is not None:
            return _indexed(con, index, vector, index.model_id, k, filters, exclude_image=image_id)
    _models(con)
    known = con.execute(f"SELECT count(*) FROM {EMBEDDINGS} WHERE image_id = ? AND status = 'ok'",
                        [image_id]).fetchall()[0][0]
    if not known:
        raise SearchError(f"no embedded image with sha256 {image_id} in the warehouse")
    args, values = _filter_args(filters)
    return _hits(con.execute(f"SELECT * FROM similar_images(?, k := ?{args})", [image_id, k, *values]))


def similar_to_vector(con: duckdb.DuckDBPyConnection, vector: np.ndarray, model_id: str, k: int = 20,
                      filters: Filters = Filters(), index=None) -> list[Hit]:
    """The k images nearest a vector made by ``model_id`` (a file embedded on the fly)."""
    stored = _stored_model_id(con, model_id, index)
    if index is not None:
        return _indexed(con, index, np.asarray(vector, dtype=np.float32), stored, k, filters)
    args, values = _filter_args(filters)
    return _hits(con.execute(f"SELECT * FROM search_vector(?, query_model := ?, k := ?{args})",
                             [np.asarray(vector, dtype=np.float32).tolist(), stored, k, *values]))


def _indexed(con: duckdb.DuckDBPyConnection, index, vector: np.ndarray, model: str, k: int, filters: Filters,
             exclude_image: str | None = None) -> list[Hit]:
    """The index's k nearest rows that pass the filters (``index_candidates``: the condition of the
    exact macros, over the index's own copy of the rows), best first."""
    vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    args, values = _filter_args(filters)
    allowed = None
    if args:
        # registered only while it is asked (a macro's table must exist when the macro is made), so
        # that SHOW TABLES lists the warehouse's tables and nothing else
        con.register(INDEX_ROWS, index.rows)
        try:
            con.execute(f"CREATE OR REPLACE TEMP MACRO index_candidates({_PARAMETERS}) AS TABLE "
                        f"SELECT s.row FROM {INDEX_ROWS} s WHERE {_CONDITION}")
            chosen = con.execute(f"SELECT row FROM index_candidates(exclude_image := ?{args})",
                                 [exclude_image, *values]).fetchnumpy()["row"]
        finally:
            con.unregister(INDEX_ROWS)
        allowed = np.zeros(index.size, dtype=bool)
        allowed[np.asarray(chosen, dtype=np.int64)] = True
    fetch = k
    while True:  # copies of the query image (same sha256) are not results: ask for more until k remain
        rows, scores = index.search(vector, model, fetch, allowed)
        described = index.describe(rows)
        hits = [Hit(**{c: d[c] for c in HIT_COLUMNS if c != "score"}, score=float(score))
                for d, score in zip(described, scores) if d["image_id"] != exclude_image]
        if len(hits) >= k or len(rows) < fetch:
            return sorted(hits, key=lambda h: (-h.score, h.batch, h.path))[:k]
        fetch *= 2
