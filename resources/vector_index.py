"""The vector index beside the warehouse: what keeps search fast at collection scale.

Per CLIP model, in ``<warehouse>/.cache/vector_index/<hash of the model name>/``:
- one **segment** per batch: the batch's ok vectors of that model (``seg-N.npy``, float32, unit
  length, memory-mapped: scores are the exact cosines the SQL macros compute) and the same images'
  rows of ``search_candidates`` (``seg-N.arrow``: path, caption, category, tags, date...; an
  uncompressed Arrow file, also mapped), so a search reads no Parquet;
- from ``ann_above`` vectors (the ``search_index_above`` setting), a faiss **IVF** index
  (``ivf-*.faiss``) whose ids are ``segment << 32 | row``: one batch's vectors are dropped and added
  again on their own;
- ``manifest.json``: the model, the dimension and, per segment, the size, mtime and inode of the batch's
  files it was made from (clip_embeddings, captions, image_metadata, images).

Every open compares each batch's files with the manifest (a ``stat``, no read): a batch added,
rewritten or removed rebuilds only its segment, and the IVF drops and adds only that batch's ids;
it is trained again when the collection doubled or halved since its training. A manifest, segment
or IVF that does not read back with the shape the manifest says is rebuilt, so a stale or damaged
index never answers. An index holds one model's vectors and refuses a query of another model.

Below ``ann_above`` vectors every vector is scored (numpy over the mapped segments: ~30 ms at
200,000 on two cores); above, the IVF answers (recall@10 measured at 1.000 at 1M, BENCHMARKS.md).
With a filter, the allowed rows are scored exactly when they are fewer than ``ann_above``;
otherwise the IVF is asked for more than k, scaled by how selective the filter is, and when fewer
than k of those pass, the allowed rows are scored exactly: a filter never returns fewer than k
while k images match. Without faiss (it is a dependency, but a platform may lack a wheel) every
search is exact.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from resources.search import INDEX_ROWS_SCHEMA
from resources.warehouse import DATA_FILE, PARTIAL_DIR, connect

logger = logging.getLogger(__name__)

INDEX_DIR = PARTIAL_DIR.parent / "vector_index"
FORMAT = 1  # bump when the files change meaning: an index of another format is rebuilt
SOURCES = ("clip_embeddings", "captions", "image_metadata", "images")  # what a segment is made from
LISTS_PER_SQRT = 4  # IVF lists: 4 * sqrt(n), faiss's rule of thumb (4-16)
TRAIN_PER_LIST = 32  # training vectors per list (faiss asks for 39; 32 trains faster, recall measured)
RETRAIN_FACTOR = 2  # the IVF is trained again when the collection grew or shrank this much since training
OVERFETCH = 2  # with a filter, ask the IVF for k * (all / allowed) * this many
SCAN_CHUNK = 65_536  # rows scored at a time by the exact scan
GATHER_BELOW = 4  # a filter allowing under 1/4 of the rows copies them out; more, and all are scanned
_STORED_ROWS = pa.schema([f for f in INDEX_ROWS_SCHEMA if f.name != "row"])


class IndexRefused(RuntimeError):
    """The index cannot serve this query (another model's vectors, a vector of another length)."""


def index_dir(warehouse_dir: str | Path, model_id: str) -> Path:
    return Path(warehouse_dir) / INDEX_DIR / hashlib.sha256(model_id.encode()).hexdigest()[:16]


def _faiss():
    """faiss, or None when it cannot be imported (then search is exact everywhere)."""
    try:
        import faiss  # imported here: loading it costs a plain SQL query nothing
    except ImportError as exc:
        logger.warning("faiss is not importable (%s): every search scans all vectors", exc)
        return None
    faiss.omp_set_num_threads(max(1, os.cpu_count() or 1))
    return faiss


@dataclass
class Segment:
    batch: str
    uid: int
    rows: int
    sources: dict  # asset -> [size, mtime_ns, inode] of the batch's file, or None where it has none
    vectors: np.ndarray | None = field(default=None, repr=False)  # float32, memory-mapped
    table: pa.Table | None = field(default=None, repr=False)  # its search_candidates rows, mapped

    @property
    def stem(self) -> str:
        return f"seg-{self.uid}"

    def record(self) -> dict:
        return {"batch": self.batch, "uid": self.uid, "rows": self.rows, "sources": self.sources}


@contextmanager
def _locked(folder: Path):
    """One process at a time checks and updates a model's index (the page and a run may both try)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic(path: Path, write) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _sources(warehouse_dir: Path) -> dict[str, dict]:
    """Per batch with embeddings, the stat of each file a segment is made from: what the manifest
    is compared with."""
    found: dict[str, dict] = {}
    for path in sorted((warehouse_dir / SOURCES[0]).glob(f"batch=*/{DATA_FILE}")):
        batch = path.parent.name.removeprefix("batch=")
        stats = {}
        for asset in SOURCES:
            try:
                info = (warehouse_dir / asset / f"batch={batch}" / DATA_FILE).stat()
                stats[asset] = [info.st_size, info.st_mtime_ns, info.st_ino]  # the warehouse replaces files whole
            except OSError:
                stats[asset] = None
        if stats[SOURCES[0]] is not None:
            found[batch] = stats
    return found


class VectorIndex:
    """One model's vectors across the warehouse, with the rows that describe them."""

    def __init__(self, folder: Path, model_id: str, dim: int, segments: list[Segment], ann_above: int) -> None:
        self.folder, self.model_id, self.dim, self.segments = folder, model_id, dim, segments
        self.ann_above, self.ivf = ann_above, None
        self.offsets = np.cumsum([0] + [s.rows for s in segments])
        self.size = int(self.offsets[-1])
        self._offset_of_uid = {s.uid: int(o) for s, o in zip(segments, self.offsets)}
        tables = [s.table for s in segments] or [_STORED_ROWS.empty_table()]
        rows = pa.concat_tables(tables)
        self.rows = rows.append_column("row", pa.array(np.arange(self.size, dtype=np.int64)))

    # --- search ----------------------------------------------------------------------------------

    def search(self, query: np.ndarray, model_id: str, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosines) of the k rows nearest the unit vector ``query``, best first; ``allowed``: a
        boolean mask over the rows (a filter), None for all. Fewer than k only when fewer are allowed."""
        if model_id != self.model_id:
            raise IndexRefused(f"this index holds vectors of {self.model_id}, not of {model_id}: never mixed")
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise IndexRefused(f"a {query.shape[0]}-float query against the index's {self.dim}-float vectors")
        if allowed is None:
            if self.ivf is not None:
                return self._ivf_search(query, min(k, self.size))
            return self._exact(query, k)
        chosen = np.flatnonzero(allowed)
        if self.ivf is not None and len(chosen) >= self.ann_above:
            fetch = min(self.size, math.ceil(k * self.size / len(chosen) * OVERFETCH))
            rows, scores = self._ivf_search(query, fetch, widen=fetch / k)
            keep = allowed[rows]
            if keep.sum() >= min(k, len(chosen)):
                return rows[keep][:k], scores[keep][:k]
        return self._exact(query, k, chosen)

    def _ivf_search(self, query: np.ndarray, k: int, widen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        nprobe = min(self.ivf.nlist, math.ceil(default_nprobe(self.ivf.nlist) * max(1.0, widen)))
        scores, ids = self.ivf.search(query[None, :], k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        found = ids[0] >= 0
        ids, scores = ids[0][found], scores[0][found]
        base = np.array([self._offset_of_uid[int(u)] for u in (ids >> 32)], dtype=np.int64)
        return base + (ids & 0xFFFFFFFF), scores

    def _exact(self, query: np.ndarray, k: int, chosen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every (allowed) vector scored, straight from the mapped segments: all of them in one pass
        when many are allowed, else only the allowed rows, copied out first."""
        if chosen is None or len(chosen) * GATHER_BELOW > self.size:
            scores = np.empty(self.size, dtype=np.float32)
            for segment, offset in zip(self.segments, self.offsets):
                for start in range(0, segment.rows, SCAN_CHUNK):
                    block = segment.vectors[start:start + SCAN_CHUNK]
                    scores[offset + start:offset + start + len(block)] = block @ query
            rows = np.arange(self.size) if chosen is None else chosen.astype(np.int64)
            scores = scores if chosen is None else scores[rows]
        else:
            rows, scores = chosen.astype(np.int64), self._gather(chosen) @ query
        k = min(k, len(rows))
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.lexsort((rows[best], -scores[best]))]
        return rows[best], scores[best]

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        segment = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for s in np.unique(segment):
            where = segment == s
            out[where] = self.segments[s].vectors[rows[where] - self.offsets[s]]
        return out

    def describe(self, rows: np.ndarray) -> list[dict]:
        """The stored search_candidates row of each index row, in order (taken from each segment's
        own table: a take over the whole chunked table would copy a million rows per query)."""
        rows = np.asarray(rows, dtype=np.int64)
        segment = np.searchsorted(self.offsets, rows, side="right") - 1
        found: list[dict | None] = [None] * len(rows)
        for s in np.unique(segment):
            where = np.flatnonzero(segment == s)
            taken = self.segments[s].table.take(pa.array(rows[where] - self.offsets[s])).to_pylist()
            for position, record in zip(where, taken):
                found[position] = record | {"batch": self.segments[s].batch}
        return found

    def vector_of(self, image_id: str) -> np.ndarray | None:
        """The stored vector of an image (its first copy), or None when the index does not hold it."""
        import pyarrow.compute as pc

        found = pc.index(self.rows.column("image_id"), image_id).as_py()
        return None if found < 0 else self._gather(np.array([found]))[0]


def default_nprobe(nlist: int) -> int:
    """IVF lists searched per query: 1/16 of them, at least 16 (recall@10 of 1.000 at 1M, BENCHMARKS.md)."""
    return min(nlist, max(16, nlist // 16))


# --- building and keeping up to date ---------------------------------------------------------------


def open_index(warehouse_dir: str | Path, model_id: str, ann_above: int) -> VectorIndex:
    """The model's index, brought up to date with the warehouse first (only what changed is rebuilt)."""
    root, folder = Path(warehouse_dir), index_dir(warehouse_dir, model_id)
    with _locked(folder):
        manifest = _manifest(folder, model_id)
        sources = _sources(root)
        dim = manifest.get("dim")
        kept: dict[str, Segment] = {}
        for record in manifest.get("segments", []):
            segment = Segment(**record)
            if sources.get(segment.batch) == segment.sources and (segment.rows == 0 or _load(folder, segment, dim)):
                kept[segment.batch] = segment
        next_uid = manifest.get("next_uid", 0)
        added: list[Segment] = []
        con = None
        for batch, stats in sources.items():
            if batch in kept:
                continue
            con = con or connect(root)
            table, vectors = _read_batch(con, batch, model_id)
            if dim is not None and len(table) and vectors.shape[1] != dim:
                # another length can only be another model under this name: never mixed in
                raise IndexRefused(f"batch {batch}: {vectors.shape[1]}-float vectors of {model_id}, the index "
                                   f"has {dim}-float ones")
            segment = Segment(batch, next_uid, len(table), stats)
            next_uid += 1
            if len(table):  # else remembered empty (no vectors of this model), so not read again
                dim = vectors.shape[1]
                _atomic(folder / f"{segment.stem}.npy", lambda p, v=vectors: _save_npy(p, v))
                _atomic(folder / f"{segment.stem}.arrow", lambda p, t=table: _save_arrow(p, t))
                _load(folder, segment, dim)
            added.append(segment)
        listed = sorted([*kept.values(), *added], key=lambda s: s.batch)
        dropped = [Segment(**r) for r in manifest.get("segments", []) if r["batch"] not in kept and r["rows"]]
        added = [s for s in added if s.rows]
        index = VectorIndex(folder, model_id, dim or 0, [s for s in listed if s.rows], ann_above)
        ivf_info = _update_ivf(index, manifest.get("ivf"), dropped, added)
        if added or dropped or [s.record() for s in listed] != manifest.get("segments") \
                or ivf_info != manifest.get("ivf"):
            record = {"format": FORMAT, "model_id": model_id, "dim": dim, "next_uid": next_uid,
                      "segments": [s.record() for s in listed], "ivf": ivf_info}
            _atomic(folder / "manifest.json", lambda p: p.write_text(json.dumps(record, indent=1)))
            _remove_unlisted(folder, listed, ivf_info)
        return index


def _read_batch(con, batch: str, model_id: str) -> tuple[pa.Table, np.ndarray]:
    """(rows, unit float32 vectors) of one batch's ok images of ``model_id``, as search_candidates
    describes them: the index stores the very rows the exact macros rank."""
    table = con.sql("SELECT * FROM search_candidates(query_model := ?, batch_key := ?) ORDER BY path",
                    params=[model_id, batch]).to_arrow_table()
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), dim)
    # scores are inner products: unit length makes them the cosines the SQL macros compute
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return table.drop_columns(["embedding"]).select(_STORED_ROWS.names).cast(_STORED_ROWS), vectors


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def _save_arrow(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _manifest(folder: Path, model_id: str) -> dict:
    """The manifest, or an empty one (everything rebuilt) when it is missing, unreadable, of
    another format, or another model's (never mixed: its files are replaced)."""
    path = folder / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("segments"), list):
            raise ValueError(f"format {manifest.get('format')!r}")
        for record in manifest["segments"]:
            Segment(**record)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("vector index %s unreadable (%s): rebuilding it", folder, exc)
        return {}
    if manifest.get("model_id") != model_id:
        logger.warning("vector index %s holds %s's vectors, not %s's: rebuilding it", folder,
                       manifest.get("model_id"), model_id)
        return {}
    return manifest


def _load(folder: Path, segment: Segment, dim: int | None) -> bool:
    """Maps the segment's files; False when one is missing, unreadable or of the wrong shape (rebuilt)."""
    try:
        vectors = np.load(folder / f"{segment.stem}.npy", mmap_mode="r")
        table = pa.ipc.open_file(pa.memory_map(str(folder / f"{segment.stem}.arrow"))).read_all()
    except (OSError, ValueError, pa.ArrowException) as exc:
        logger.warning("vector index segment of batch %s unreadable (%s): rebuilding it", segment.batch, exc)
        return False
    if vectors.shape != (segment.rows, dim) or vectors.dtype != np.float32 or table.num_rows != segment.rows \
            or table.schema != _STORED_ROWS:
        logger.warning("vector index segment of batch %s does not match its manifest (%s vectors, %d rows, "
                       "%d expected): rebuilding it", segment.batch, vectors.shape, table.num_rows, segment.rows)
        return False
    segment.vectors, segment.table = vectors, table
    return True


def _update_ivf(index: VectorIndex, info: dict | None, dropped: list[Segment], added: list[Segment]) -> dict | None:
    """Sets ``index.ivf`` (None below ``ann_above``, or without faiss) and returns its manifest entry."""
    if index.size < index.ann_above:
        return None
    faiss = _faiss()
    if faiss is None:
        return info
    ivf = None
    if info and (index.folder / info["file"]).exists() \
            and info["trained_on"] * RETRAIN_FACTOR >= index.size >= info["trained_on"] / RETRAIN_FACTOR:
        # unchanged: mapped, not read (a one-shot search opens a 2 GB index at 1M in milliseconds)
        flags = faiss.IO_FLAG_MMAP if not dropped and not added else 0
        try:
            ivf = faiss.read_index(str(index.folder / info["file"]), flags)
        except RuntimeError as exc:
            logger.warning("vector index IVF unreadable (%s): training it again", exc)
    if ivf is not None:
        for segment in dropped:
            ivf.remove_ids(faiss.IDSelectorRange(segment.uid << 32, (segment.uid + 1) << 32))
        for segment in added:
            _add(ivf, segment)
        if ivf.ntotal != index.size or ivf.d != index.dim:
            logger.warning("vector index IVF holds %d vectors, the segments %d: training it again", ivf.ntotal,
                           index.size)
            ivf = None
        elif not dropped and not added:
            index.ivf = ivf
            return info
        else:
            info = {**info, "file": f"ivf-{uuid.uuid4().hex[:8]}.faiss"}
    if ivf is None:
        ivf = _train(faiss, index)
        for segment in index.segments:
            _add(ivf, segment)
        info = {"file": f"ivf-{uuid.uuid4().hex[:8]}.faiss", "trained_on": index.size, "nlist": int(ivf.nlist)}
    _atomic(index.folder / info["file"], lambda p: faiss.write_index(ivf, str(p)))
    index.ivf = ivf
    return info


def _train(faiss, index: VectorIndex):
    nlist = max(1, int(LISTS_PER_SQRT * math.sqrt(index.size)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(index.dim), index.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 1  # fewer than faiss's 39 per list on purpose (TRAIN_PER_LIST): quiet
    sample = np.sort(np.random.default_rng(0).choice(index.size, min(index.size, nlist * TRAIN_PER_LIST),
                                                     replace=False))
    ivf.train(index._gather(sample))
    return ivf


def _add(ivf, segment: Segment) -> None:
    for start in range(0, segment.rows, SCAN_CHUNK):
        block = np.ascontiguousarray(segment.vectors[start:start + SCAN_CHUNK])
        ids = (np.int64(segment.uid) << 32) + np.arange(start, start + len(block), dtype=np.int64)
        ivf.add_with_ids(block, ids)


def _remove_unlisted(folder: Path, segments: list[Segment], ivf_info: dict | None) -> None:
    """Files of segments and IVFs the manifest no longer names (a process that has one mapped keeps
    reading it: unlinking does not pull it from under a running search)."""
    keep = {f"{s.stem}.{ext}" for s in segments for ext in ("npy", "arrow")} | {"manifest.json", "lock"}
    if ivf_info:
        keep.add(ivf_info["file"])
    for path in folder.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink(missing_ok=True)
