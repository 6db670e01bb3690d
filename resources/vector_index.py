"""The vector index beside the warehouse: what keeps search fast at collection scale.

Per CLIP model, in ``<warehouse>/.cache/vector_index/<hash of the model name>/``:
- one **segment** per batch: the batch's ok vectors of that model as float16 (``seg-N.npy``, half
  the bytes of float32; scores move by under 1e-3) and their keys (``seg-N.parquet``: path, image_id),
  read from the batch's ``clip_embeddings`` file;
- at ``ann_above`` vectors or more (the ``search_index_above`` setting), a faiss **IVF** index (``ivf.faiss``) whose ids are
  ``segment << 32 | row``, so one batch's vectors can be dropped and added again on their own;
- ``manifest.json``: the model, the dimension and, per segment, the source file's size, mtime and rows.

Every open compares each batch's ``clip_embeddings`` file with the manifest (a ``stat``, no read):
a batch added, rewritten or removed rebuilds only its segment, and the IVF drops and adds only that
batch's ids; it is trained again when the collection doubled or halved since its training. A
manifest, segment or IVF that does not read back with the shape the manifest says is rebuilt, so a
stale or damaged index never answers. An index holds one model's vectors only and refuses a query
said to come from another model.

Search below ``ann_above`` vectors is exact (a scan of every float16 vector: ~25 ms at 200,000 on
two cores); above, the IVF answers (measured recall@10 of 1.000 at 1M, BENCHMARKS.md). With a filter,
the allowed rows are ranked exactly when they are fewer than ``ann_above``; otherwise the IVF is
asked for more than k, scaled by how selective the filter is, and when fewer than k of those pass,
the allowed rows are ranked exactly: a filter never returns fewer than k while k match.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from resources.warehouse import DATA_FILE, PARTIAL_DIR

logger = logging.getLogger(__name__)

INDEX_DIR = PARTIAL_DIR.parent / "vector_index"
EMBEDDINGS = "clip_embeddings"
FORMAT = 1  # bump when the files change meaning: an index of another format is rebuilt
LISTS_PER_SQRT = 4  # IVF lists: 4 * sqrt(n), faiss's rule of thumb (4-16)
TRAIN_PER_LIST = 32  # training vectors per list (faiss warns under 39; 32 trains twice as fast, same recall here)
RETRAIN_FACTOR = 2  # the IVF is trained again when the collection grew or shrank this much since training
OVERFETCH = 2  # with a filter, ask the IVF for k * (all / allowed) * this many
_KEYS = pa.schema([pa.field("path", pa.string()), pa.field("image_id", pa.string())])


class IndexRefused(RuntimeError):
    """The index cannot serve this query (another model's index, a vector of another length)."""


def index_dir(warehouse_dir: str | Path, model_id: str) -> Path:
    return Path(warehouse_dir) / INDEX_DIR / hashlib.sha256(model_id.encode()).hexdigest()[:16]


def _faiss():
    import faiss  # a runtime dependency; imported here so that importing search loads nothing heavy

    faiss.omp_set_num_threads(max(1, os.cpu_count() or 1))
    return faiss


@dataclass
class Segment:
    batch: str
    uid: int
    rows: int
    source_size: int
    source_mtime_ns: int
    vectors: np.ndarray | None = field(default=None, repr=False)  # float16, memory-mapped
    _keys: pa.Table | None = field(default=None, repr=False)

    @property
    def stem(self) -> str:
        return f"seg-{self.uid}"

    def record(self) -> dict:
        return {"batch": self.batch, "uid": self.uid, "rows": self.rows, "source_size": self.source_size,
                "source_mtime_ns": self.source_mtime_ns}


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


def _sources(warehouse_dir: Path) -> dict[str, os.stat_result]:
    """Each batch's clip_embeddings file and its stat: what the manifest is compared with."""
    found = {}
    for path in sorted((warehouse_dir / EMBEDDINGS).glob(f"batch=*/{DATA_FILE}")):
        try:
            found[path.parent.name.removeprefix("batch=")] = path.stat()
        except OSError:
            continue
    return found


def _read_batch(warehouse_dir: Path, batch: str, model_id: str) -> tuple[pa.Table, np.ndarray]:
    """(keys, float16 vectors) of one batch's ok rows made by ``model_id``."""
    path = warehouse_dir / EMBEDDINGS / f"batch={batch}" / DATA_FILE
    table = pq.read_table(path, columns=["path", "image_id", "status", "model_id", "embedding"])
    table = table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.equal(table["model_id"], model_id)))
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), dim)
    # scores are inner products: unit length makes them the cosines the SQL macros compute
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return table.select(["path", "image_id"]).cast(_KEYS), vectors.astype(np.float16)


class VectorIndex:
    """One model's vectors across the warehouse: exact or IVF search, and the keys of a row."""

    def __init__(self, folder: Path, model_id: str, dim: int, segments: list[Segment], ivf, ann_above: int) -> None:
        self.folder, self.model_id, self.dim, self.segments, self.ivf = folder, model_id, dim, segments, ivf
        self.ann_above = ann_above
        self.offsets = np.cumsum([0] + [s.rows for s in segments])
        self.size = int(self.offsets[-1])
        self._offset_of_uid = {s.uid: int(o) for s, o in zip(segments, self.offsets)}
        self._by_batch = {s.batch: (s, int(o)) for s, o in zip(segments, self.offsets)}
        self._exact_all = None

    # --- search ----------------------------------------------------------------------------------

    def search(self, query: np.ndarray, model_id: str, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k rows nearest ``query``, best first; ``allowed``: a boolean mask over
        the rows (a filter), None for all. Fewer than k only when fewer than k rows are allowed."""
        if model_id != self.model_id:
            raise IndexRefused(f"this index holds vectors of {self.model_id}, not of {model_id}: never mixed")
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise IndexRefused(f"a {query.shape[0]}-float query against {self.dim}-float vectors")
        k = min(k, self.size)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed is None:
            if self.ivf is not None:
                return self._ivf_search(query, k)
            return self._exact(self._all_codes(), query, k)
        chosen = np.flatnonzero(allowed)
        if len(chosen) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self.ivf is not None and len(chosen) >= self.ann_above:
            fetch = min(self.size, math.ceil(k * self.size / len(chosen) * OVERFETCH))
            rows, scores = self._ivf_search(query, fetch, widen=fetch / k)
            keep = allowed[rows]
            if keep.sum() >= k:
                return rows[keep][:k], scores[keep][:k]
        rows, scores = self._exact(self._gather(chosen), query, min(k, len(chosen)))
        return chosen[rows], scores

    def _ivf_search(self, query: np.ndarray, k: int, widen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        nprobe = min(self.ivf.nlist, math.ceil(default_nprobe(self.ivf.nlist) * max(1.0, widen)))
        scores, ids = self.ivf.search(query[None, :], k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        found = ids[0] >= 0
        ids, scores = ids[0][found], scores[0][found]
        base = np.array([self._offset_of_uid[int(u)] for u in (ids >> 32)], dtype=np.int64)
        return base + (ids & 0xFFFFFFFF), scores

    def _exact(self, codes: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every vector scored: faiss's float16 scan reads the codes as they are stored (no copy to float32)."""
        faiss = _faiss()
        scan = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        scan.add_sa_codes(np.ascontiguousarray(codes).view(np.uint8))
        scores, rows = scan.search(query[None, :], k)
        return rows[0].astype(np.int64), scores[0]

    def _all_codes(self) -> np.ndarray:
        if self._exact_all is None:
            self._exact_all = np.concatenate([s.vectors for s in self.segments]) if self.segments else \
                np.zeros((0, self.dim), np.float16)
        return self._exact_all

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        segment = np.searchsorted(self.offsets, rows, side="right") - 1
        parts = [self.segments[s].vectors[rows[segment == s] - self.offsets[s]] for s in np.unique(segment)]
        return np.concatenate(parts)

    # --- keys ------------------------------------------------------------------------------------

    def _keys(self, segment: Segment) -> pa.Table:
        if segment._keys is None:
            segment._keys = pq.read_table(self.folder / f"{segment.stem}.parquet")
        return segment._keys

    def keys(self, rows: np.ndarray) -> list[tuple[str, str, str]]:
        """(batch, path, image_id) of each row."""
        found = []
        for row in np.asarray(rows, dtype=np.int64):
            s = int(np.searchsorted(self.offsets, row, side="right") - 1)
            keys = self._keys(self.segments[s]).slice(int(row - self.offsets[s]), 1).to_pylist()[0]
            found.append((self.segments[s].batch, keys["path"], keys["image_id"]))
        return found

    def mask(self, batch_paths: pa.Table) -> np.ndarray:
        """The rows of the given (batch, path) pairs, as a mask over all rows."""
        allowed = np.zeros(self.size, dtype=bool)
        batches = batch_paths.column("batch")
        for batch in pc.unique(batches).to_pylist():
            if batch not in self._by_batch:
                continue
            segment, offset = self._by_batch[batch]
            paths = batch_paths.filter(pc.equal(batches, batch)).column("path")
            rows = pc.index_in(paths, value_set=self._keys(segment).column("path")).drop_null().to_numpy()
            allowed[offset + rows.astype(np.int64)] = True
        return allowed


def default_nprobe(nlist: int) -> int:
    """IVF lists searched per query: 1/16 of them (at least 16), for recall@10 >= 0.99 at 1M (BENCHMARKS.md)."""
    return min(nlist, max(16, nlist // 16))


# --- building and keeping up to date ---------------------------------------------------------------


def open_index(warehouse_dir: str | Path, model_id: str, ann_above: int) -> VectorIndex:
    """The model's index, brought up to date with the warehouse first (only what changed is rebuilt)."""
    root, folder = Path(warehouse_dir), index_dir(warehouse_dir, model_id)
    with _locked(folder):
        manifest = _manifest(folder, model_id)
        sources = _sources(root)
        kept: dict[str, Segment] = {}
        for record in manifest.get("segments", []):
            segment = Segment(**record)
            stat = sources.get(segment.batch)
            if stat is not None and (stat.st_size, stat.st_mtime_ns) == (segment.source_size, segment.source_mtime_ns) \
                    and (segment.rows == 0 or _load_segment(folder, segment, manifest["dim"])):
                kept[segment.batch] = segment
        dim = manifest.get("dim")
        next_uid = manifest.get("next_uid", 0)
        added: list[Segment] = []
        for batch, stat in sources.items():
            if batch in kept:
                continue
            keys, vectors = _read_batch(root, batch, model_id)
            if not len(keys):  # no vectors of this model: remembered, so the file is not read again
                kept[batch] = Segment(batch, -1, 0, stat.st_size, stat.st_mtime_ns)
                added.append(kept[batch])
                continue
            if dim is not None and vectors.shape[1] != dim:
                # another dimension can only be another model misnamed: refuse to mix it in
                raise IndexRefused(f"batch {batch}: {vectors.shape[1]}-float vectors of {model_id}, the index "
                                  f"has {dim}-float ones")
            dim = vectors.shape[1]
            segment = Segment(batch, next_uid, len(keys), stat.st_size, stat.st_mtime_ns)
            next_uid += 1
            _atomic(folder / f"{segment.stem}.npy", lambda p, v=vectors: _save_npy(p, v))
            _atomic(folder / f"{segment.stem}.parquet", lambda p, t=keys: pq.write_table(t, p))
            segment.vectors, segment._keys = np.load(folder / f"{segment.stem}.npy", mmap_mode="r"), keys
            added.append(segment)
        listed = sorted({**kept, **{s.batch: s for s in added}}.values(), key=lambda s: s.batch)
        segments = [s for s in listed if s.rows]
        dropped = [Segment(**r) for r in manifest.get("segments", []) if r["batch"] not in kept and r["rows"]]
        added = [s for s in added if s.rows]
        dim = dim or 0
        index = VectorIndex(folder, model_id, dim, segments, None, ann_above)
        ivf_info = _update_ivf(index, manifest, dropped, added)
        if added or dropped or len(listed) != len(manifest.get("segments", [])) or ivf_info != manifest.get("ivf"):
            record = {"format": FORMAT, "model_id": model_id, "dim": dim, "next_uid": next_uid,
                      "segments": [s.record() for s in listed], "ivf": ivf_info}
            _atomic(folder / "manifest.json", lambda p: p.write_text(json.dumps(record, indent=1)))
            _remove_unlisted(folder, segments, ivf_info)
        return index


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


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
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("vector index %s unreadable (%s): rebuilding it", folder, exc)
        return {}
    if manifest.get("model_id") != model_id:
        logger.warning("vector index %s holds %s's vectors, not %s's: rebuilding it", folder,
                       manifest.get("model_id"), model_id)
        return {}
    return manifest


def _load_segment(folder: Path, segment: Segment, dim: int) -> bool:
    """Maps the segment's vectors; False when its files are missing or of the wrong shape (rebuilt)."""
    try:
        vectors = np.load(folder / f"{segment.stem}.npy", mmap_mode="r")
        rows = pq.ParquetFile(folder / f"{segment.stem}.parquet").metadata.num_rows
    except (OSError, ValueError, pa.ArrowException) as exc:
        logger.warning("vector index segment %s of batch %s unreadable (%s): rebuilding it", segment.stem,
                       segment.batch, exc)
        return False
    if vectors.shape != (segment.rows, dim) or vectors.dtype != np.float16 or rows != segment.rows:
        logger.warning("vector index segment %s of batch %s has %s rows, the manifest %d: rebuilding it",
                       segment.stem, segment.batch, vectors.shape, segment.rows)
        return False
    segment.vectors = vectors
    return True


def _update_ivf(index: VectorIndex, manifest: dict, dropped: list[Segment], added: list[Segment]) -> dict | None:
    """Sets ``index.ivf`` (None below ``ann_above``) and returns its manifest entry."""
    if index.size < index.ann_above or index.size == 0:
        return None
    faiss = _faiss()
    info = manifest.get("ivf")
    ivf = None
    if info and info.get("file") and (index.folder / info["file"]).exists():
        trained = info.get("trained_on", 0)
        if trained * RETRAIN_FACTOR >= index.size >= trained / RETRAIN_FACTOR:
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
        if ivf.ntotal != index.size:
            logger.warning("vector index IVF holds %d vectors, the segments %d: training it again", ivf.ntotal,
                           index.size)
            ivf = None
        elif not dropped and not added:
            index.ivf = ivf
            return info
    if ivf is None:
        ivf = _train(index)
        for segment in index.segments:
            _add(ivf, segment)
        info = {"file": f"ivf-{uuid.uuid4().hex[:8]}.faiss", "trained_on": index.size, "nlist": ivf.nlist}
    else:
        info = {**info, "file": f"ivf-{uuid.uuid4().hex[:8]}.faiss"}
    _atomic(index.folder / info["file"], lambda p: faiss.write_index(ivf, str(p)))
    info["ntotal"] = int(ivf.ntotal)
    index.ivf = ivf
    return info


def _train(index: VectorIndex):
    faiss = _faiss()
    nlist = max(1, int(LISTS_PER_SQRT * math.sqrt(index.size)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(index.dim), index.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 1  # fewer than faiss's 39 per list on purpose (TRAIN_PER_LIST); quiet
    sample = np.sort(np.random.default_rng(0).choice(index.size, min(index.size, nlist * TRAIN_PER_LIST),
                                                     replace=False))
    ivf.train(index._gather(sample).astype(np.float32))
    return ivf


def _add(ivf, segment: Segment, chunk: int = 65_536) -> None:
    for start in range(0, segment.rows, chunk):
        block = np.asarray(segment.vectors[start:start + chunk], dtype=np.float32)
        ids = (np.int64(segment.uid) << 32) + np.arange(start, start + len(block), dtype=np.int64)
        ivf.add_with_ids(block, ids)


def _remove_unlisted(folder: Path, segments: list[Segment], ivf_info: dict | None) -> None:
    """Files of segments and IVFs the manifest no longer names (a mapped file stays readable to a
    process that has it open: unlinking does not pull it from under a running search)."""
    keep = {f"{s.stem}.{ext}" for s in segments for ext in ("npy", "parquet")} | {"manifest.json", "lock"}
    if ivf_info:
        keep.add(ivf_info["file"])
    for path in folder.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink(missing_ok=True)
