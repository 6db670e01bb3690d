"""``near_duplicates``: groups of copies of one photo across the whole collection, best copy first.

Not partitioned: a copy in one batch of a photo in another is what users want found, so the asset
reads every batch's ``images`` and ``clip_embeddings`` from the warehouse and is written whole
(``<warehouse>/near_duplicates/data.parquet``). The ``refresh_collection`` job materializes it;
``pixelsift run`` does after its batches, and the ``collection_automation`` sensor (on by
default, with ``pixelsift ui``) does when any batch's images or embeddings change.

Two images are copies when they have the same sha256 (exact), or when their perceptual hashes
(``assets.perceptual_hash``) are within ``max_hash_distance`` bits, or within ``max_hash_distance_with_clip``
bits while their CLIP vectors are at least ``min_cosine`` alike (near: resized, re-encoded, slightly
cropped). The hash alone misses crops of textured photos; CLIP alone joins different photos of
one scene (and a random-weight test model joins everything). Copies group transitively.

The best copy of a group: most pixels, then sharpest (Laplacian variance), then taken earliest,
then its batch and path (so the choice is stable). Hashes are kept by sha256 in
``<warehouse>/.cache/perceptual_hashes.parquet``, so only new images are decoded again.
"""


import itertools
from datetime import datetime
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetExecutionContext, AutomationCondition, Config, asset
from pydantic import Field

from assets.clip_embeddings import clip_embeddings
from assets.image_files import ImageDecodeError, open_image
from assets.images import images
from assets.parquet_schemas import NEAR_DUPLICATES, PERCEPTUAL_HASHES
from assets.perceptual_hash import hamming, phash, sharpness
from resources.parallel import thread_map, worker_count
from resources.settings import PixelsiftSettings
from resources.warehouse import PARTIAL_DIR, connect, read_table, write_table

HASH_CACHE = PARTIAL_DIR.parent / "perceptual_hashes.parquet"
BLOCK = 256  # rows of the pairwise comparison held at once: a few BLOCK x N arrays (100 MB each at 100k)
EXACT_BELOW = 5_000  # images from which only candidate pairs are compared (every pair below: 1.2e7 pairs)
CLIP_CLUSTERS_PER_IMAGE = 3  # clusters (of sqrt(n)) each vector joins for CLIP candidates (2 missed 2 of 400 groups at 20k)


class NearDuplicatesConfig(Config):
    """When two different files count as copies of one photo."""

    max_hash_distance: int = Field(
        default=6, ge=0, le=64,
        description="Perceptual-hash bits (of 64) two copies may differ by on their own. Resized and re-encoded "
        "copies differ by 0-2, 4% crops by 8-26, different photos of the samples by 24 or more. Unrelated "
        "hashes come this close by chance once in 2e11 pairs (at 12 bits: once in 4e6, 100,000 false pairs "
        "among a million photos).")
    max_hash_distance_with_clip: int = Field(
        default=20, ge=0, le=64, description="Bits two copies may differ by when their CLIP vectors also agree.")
    min_cosine: float = Field(
        default=0.95, ge=-1, le=1, description="CLIP cosine similarity at which vectors agree (with the bits above).")


def _hashes(settings: PixelsiftSettings, members: list[dict], log) -> dict[str, tuple[int, float] | None]:
    """image_id -> (pHash, sharpness), or None when the file cannot be read as hashed now."""
    cache_path = Path(settings.warehouse_dir) / HASH_CACHE
    known: dict[str, tuple[int, float]] = {}
    if cache_path.exists():
        try:
            for row in read_table(cache_path).to_pylist():
                known[row["image_id"]] = (int(row["phash"], 16), row["sharpness"])
        except (OSError, pa.ArrowException) as exc:  # a cache: rebuilt, never fatal
            log.warning(f"perceptual hash cache {cache_path} unreadable ({exc}); hashing again")
    first = {}
    for m in members:
        first.setdefault(m["image_id"], m)
    todo = [m for image_id, m in first.items() if image_id not in known]

    def measure(m: dict) -> tuple[int, float] | None:
        try:
            image = open_image(Path(settings.images_root) / m["batch"], m["path"], settings.max_image_pixels,
                               sha256=m["image_id"], max_bytes=settings.max_file_bytes)
        except ImageDecodeError as exc:
            log.warning(f"{m['batch']}/{m['path']}: left out of near-duplicate groups: {exc}")
            return None
        return phash(image), sharpness(image)

    for m, measured in zip(todo, thread_map(measure, todo, worker_count(settings.cpu_workers))):
        if measured is not None:
            known[m["image_id"]] = measured
    if todo:
        write_table(pa.Table.from_pylist(
            [{"image_id": i, "phash": f"{h:016x}", "sharpness": s}
             for i, (h, s) in sorted(known.items())], schema=PERCEPTUAL_HASHES), cache_path)
    return {image_id: known.get(image_id) for image_id in first}


def _collection(settings: PixelsiftSettings) -> tuple[list[dict], np.ndarray]:
    """Every decodable, embedded image of every batch (size, date, model; ``row``: its vector's row),
    and the vectors as one float32 matrix (read through Arrow: no Python float per number)."""
    con = connect(settings.warehouse_dir)
    tables = {name for (name,) in con.sql("show tables").fetchall()}
    if not {"images", "clip_embeddings"} <= tables:
        return [], np.zeros((0, 0), dtype=np.float32)
    table = con.sql("""
        SELECT i.batch, i.path, i.image_id, i.width, i.height, i.bytes, i.taken_at, e.model_id, e.embedding
        FROM images i JOIN clip_embeddings e ON e.batch = i.batch AND e.path = i.path AND e.image_id = i.image_id
        WHERE i.status = 'ok' AND e.status = 'ok'
        ORDER BY i.batch, i.path""").arrow()
    if hasattr(table, "read_all"):  # newer DuckDB hands back a record batch reader
        table = table.read_all()
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), dim)
    members = [row | {"row": n} for n, row in enumerate(table.drop_columns(["embedding"]).to_pylist())]
    return members, vectors


class _Groups:
    """Union-find over image indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_groups(hashes: np.ndarray, vectors: np.ndarray, models: list[str], config: NearDuplicatesConfig,
                exact_below: int = EXACT_BELOW) -> list[list[int]]:
    """Groups (of 2 or more indices) of distinct images that are copies: ``hashes`` uint64 pHashes,
    ``vectors`` unit CLIP vectors (one row per image), compared only within one CLIP model.

    Under ``exact_below`` images every pair is compared. From there only candidate pairs are: hashes
    that agree exactly on one of ``max_hash_distance + 1`` slices of their bits (any two within that
    many bits do, by pigeonhole: no pair is missed), and vectors that share one of their three nearest
    k-means clusters (approximate: copies whose vectors share none are missed)."""
    n = len(hashes)
    groups = _Groups(n)
    model_index = np.unique(np.array(models, dtype=object), return_inverse=True)[1] if n else np.zeros(0, int)
    faiss = _faiss() if n >= exact_below else None
    if faiss is None:
        pairs = _all_pairs(hashes, vectors, model_index, config)
    else:
        pairs = itertools.chain(_hash_pairs(hashes, config.max_hash_distance),
                                _clip_pairs(faiss, hashes, vectors, model_index, config))
    for a, b in pairs:
        for i, j in zip(a.tolist(), b.tolist()):
            groups.join(i, j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(groups.find(i), []).append(i)
    return [m for m in members.values() if len(m) > 1]


def _copies(bits: np.ndarray, cosine: np.ndarray, same_model: np.ndarray, config: NearDuplicatesConfig) -> np.ndarray:
    """The one rule, for any set of compared pairs."""
    return (bits <= config.max_hash_distance) | (
        (bits <= config.max_hash_distance_with_clip) & (cosine >= config.min_cosine) & same_model)


def _all_pairs(hashes, vectors, model_index, config) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(hashes)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        copies = _copies(hamming(hashes[start:stop, None], hashes[None, :]), vectors[start:stop] @ vectors.T,
                         model_index[start:stop, None] == model_index[None, :], config)
        a, b = np.nonzero(copies)
        a += start
        yield a[a < b], b[a < b]  # each pair once, never an image with itself


def _hash_pairs(hashes: np.ndarray, max_distance: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs within ``max_distance`` bits, found by multi-index hashing: split the 64 bits into
    ``max_distance + 1`` slices; two hashes that close agree on at least one slice, so only hashes
    sharing a slice value are compared (about n^2 / 2^slice_bits pairs per slice, not n^2)."""
    n, slices = len(hashes), max_distance + 1
    bounds = np.linspace(0, 64, slices + 1).astype(np.uint64)
    for low, high in zip(bounds[:-1], bounds[1:]):
        key = (hashes >> low) & np.uint64((1 << int(high - low)) - 1)
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        for step in range(1, n):  # equal keys are adjacent once sorted: pair each with the ones `step` further
            same = ordered[:-step] == ordered[step:]
            if not same.any():
                break
            a, b = order[:-step][same], order[step:][same]
            close = hamming(hashes[a], hashes[b]) <= max_distance
            yield a[close], b[close]


def _clip_pairs(faiss, hashes, vectors, model_index, config) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of one model's vectors at least ``min_cosine`` alike, then held to the hash rule. The
    vectors are clustered (spherical k-means, sqrt(n) clusters) and each is put in its
    ``CLIP_CLUSTERS_PER_IMAGE`` nearest clusters; only images sharing a cluster are compared, with
    one matrix product per cluster (about 4 n^1.5 products instead of n^2 / 2)."""
    for model in np.unique(model_index):
        members = np.flatnonzero(model_index == model)
        subset = np.ascontiguousarray(vectors[members], dtype=np.float32)
        clusters = max(1, int(np.sqrt(len(members))))
        kmeans = faiss.Kmeans(subset.shape[1], clusters, niter=10, spherical=True, seed=0,
                              min_points_per_centroid=1, max_points_per_centroid=32)
        kmeans.train(subset)
        _, nearest = kmeans.index.search(subset, min(clusters, CLIP_CLUSTERS_PER_IMAGE))
        image = np.repeat(np.arange(len(members)), nearest.shape[1])
        order = np.argsort(nearest.ravel(), kind="stable")
        bounds = np.searchsorted(nearest.ravel()[order], np.arange(clusters + 1))
        for c in range(clusters):
            inside = image[order[bounds[c]:bounds[c + 1]]]
            for start in range(0, len(inside), BLOCK * 8):
                a, b = np.nonzero(subset[inside[start:start + BLOCK * 8]] @ subset[inside].T >= config.min_cosine)
                a, b = members[inside[start + a]], members[inside[b]]
                keep = (a < b) & (hamming(hashes[a], hashes[b]) <= config.max_hash_distance_with_clip)
                yield a[keep], b[keep]


def _faiss():
    try:
        import faiss  # a runtime dependency (search's index); imported only for large collections
    except ImportError:
        return None
    return faiss


def _refresh_search_index(settings: PixelsiftSettings, models: set[str], log) -> None:
    """Brings search's vector index (resources/vector_index.py) up to date after batches changed, so
    the first search after a run does not build it (minutes at a million images). Search checks it
    again itself, so a failure here costs time, never a wrong answer."""
    from resources.vector_index import IndexRefused, open_index

    for model in sorted(models):
        try:
            open_index(settings.warehouse_dir, model, settings.search_index_above)
        except (OSError, IndexRefused, pa.ArrowException, duckdb.Error) as exc:
            log.warning(f"search index of {model} not refreshed: {exc}")


def _best_first(rows: list[dict]) -> list[dict]:
    latest = datetime.max
    return sorted(rows, key=lambda r: (-(r["width"] or 0) * (r["height"] or 0), -r["sharpness"],
                                       r["taken_at"] or latest, r["batch"], r["path"]))


# Dagster's eager() waits until no dependency partition is missing, and batches the folder sensor
# registered without running them stay missing: this one refreshes after any batch updates.
AFTER_ANY_BATCH = (
    (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()).since_last_handled()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("after any batch's images or embeddings update")


@asset(group_name="collection", kinds={"parquet"}, deps=[images, clip_embeddings],
       io_manager_key="io_manager", automation_condition=AFTER_ANY_BATCH)
def near_duplicates(context: AssetExecutionContext, config: NearDuplicatesConfig,
                    settings: PixelsiftSettings) -> pa.Table:
    """Copies of one photo across all batches (same sha256, or resized/re-encoded/cropped), one row
    per copy, groups numbered largest first, the suggested copy to keep first in each group."""
    members, vectors = _collection(settings)
    measured = _hashes(settings, members, context.log)
    members = [m | {"phash": measured[m["image_id"]][0], "sharpness": measured[m["image_id"]][1]}
               for m in members if measured[m["image_id"]] is not None]
    # One entry per distinct file content: exact copies share everything but their path.
    distinct = list({m["image_id"]: m for m in reversed(members)}.values())[::-1]
    found = find_groups(np.array([m["phash"] for m in distinct], dtype=np.uint64),
                        vectors[[m["row"] for m in distinct]].reshape(len(distinct), vectors.shape[1]),
                        [m["model_id"] for m in distinct], config)
    group_of = {distinct[i]["image_id"]: g for g, group in enumerate(found) for i in group}
    exact = {}
    for m in members:
        exact.setdefault(m["image_id"], []).append(m)
    groups = [[m for i in group for m in exact[distinct[i]["image_id"]]] for group in found]
    groups += [rows for image_id, rows in exact.items() if len(rows) > 1 and image_id not in group_of]
    groups = sorted((_best_first(g) for g in groups), key=lambda g: (-len(g), g[0]["batch"], g[0]["path"]))
    rows = []
    for group_id, group in enumerate(groups):
        best = group[0]
        best_vector = vectors[best["row"]]
        for rank, m in enumerate(group):
            rows.append({
                "group_id": group_id, "batch": m["batch"], "path": m["path"], "image_id": m["image_id"],
                "match": "best" if rank == 0 else "exact" if m["image_id"] == best["image_id"] else "near",
                "is_best": rank == 0, "width": m["width"], "height": m["height"], "bytes": m["bytes"],
                "taken_at": m["taken_at"], "sharpness": m["sharpness"],
                "phash": f"{m['phash']:016x}",
                "hash_distance": int(hamming(np.uint64(m["phash"]), np.uint64(best["phash"]))),
                "cosine": float(vectors[m["row"]] @ best_vector),
            })
    _refresh_search_index(settings, {m["model_id"] for m in members}, context.log)
    context.add_output_metadata({"groups": len(groups), "images_compared": len(members),
                                 "copies_beyond_best": len(rows) - len(groups)})
    return pa.Table.from_pylist(rows, schema=NEAR_DUPLICATES)
