"""Nearest-neighbour search at collection scale, on synthetic CLIP-like embeddings.

    python -m benchmarks.vector_search --sizes 100000,1000000

For each collection size: brute force over an in-memory matrix (float32, float16, int8 with numpy,
bfloat16 with torch), DuckDB's ``array_cosine_similarity`` (what ``resources.search``'s SQL macros
run, here over an in-memory Arrow table) and, when faiss is installed, an IVF index. Per method: index build time, the
memory its vectors take, query latency p50/p95 (one query at a time, as a user types them) and
recall@10 against exact float32 search.

The vectors are unit-length mixtures of 10,000 random directions plus noise (norm ~0.68: cosine ~0.7
within a group, ~0 across), so they cluster as real
CLIP embeddings do (uniform random vectors have no neighbourhoods, which flatters no index and
makes every approximate method look worse than on photos). Queries come from the same
distribution but are not in the collection.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

DIM = 512  # ViT-B-32
K = 10
RERANK = 100  # candidates the two-stage brute force scores exactly
CHUNK = 131_072  # rows converted to float32 at a time: bounded extra memory for the compressed matrices


def synthetic(n: int, dim: int = DIM, seed: int = 0, centres: int = 10_000, spread: float = 0.03) -> np.ndarray:
    rng = np.random.default_rng(1234)  # the same centres for the collection and the queries
    directions = rng.normal(size=(centres, dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        block = directions[rng.integers(0, centres, stop - start)]
        block += rng.normal(scale=spread, size=block.shape).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def top_k(scores: np.ndarray, k: int = K) -> np.ndarray:
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best])]


@dataclass
class Method:
    name: str
    build: Callable[[np.ndarray], object]
    search: Callable[[object, np.ndarray], np.ndarray]
    memory: Callable[[object], int]


def _chunked(matrix: np.ndarray, query: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    scores = np.empty(len(matrix), dtype=np.float32)
    q = query if scale is None else query * scale
    for start in range(0, len(matrix), CHUNK):
        scores[start:start + CHUNK] = matrix[start:start + CHUNK].astype(np.float32) @ q
    return scores


def _int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(vectors).max(axis=0) / 127  # one scale per dimension
    return np.round(vectors / scale).astype(np.int8), scale.astype(np.float32)


class _DuckDB:
    def __init__(self, vectors: np.ndarray) -> None:
        import duckdb
        import pyarrow as pa

        self.dim, self.nbytes = vectors.shape[1], vectors.nbytes
        self.con = duckdb.connect(":memory:")
        flat = pa.array(vectors.reshape(-1))
        self.con.register("e", pa.table({"id": np.arange(len(vectors)),
                                          "embedding": pa.FixedSizeListArray.from_arrays(flat, self.dim)}))


def _duckdb(vectors: np.ndarray) -> _DuckDB:
    return _DuckDB(vectors)


def _duckdb_search(db: _DuckDB, q: np.ndarray) -> np.ndarray:
    rows = db.con.execute(f"SELECT id FROM e ORDER BY array_cosine_similarity(embedding, ?::FLOAT[{db.dim}]) DESC "
                          f"LIMIT {K}", [q.tolist()]).fetchall()
    return np.array([r[0] for r in rows])


def methods(faiss_nprobes: list[int]) -> list[Method]:
    found = [
        Method("numpy float32", lambda v: v, lambda m, q: top_k(m @ q), lambda m: m.nbytes),
        Method("numpy float16", lambda v: v.astype(np.float16), lambda m, q: top_k(_chunked(m, q)), lambda m: m.nbytes),
        Method("numpy int8", _int8, lambda m, q: top_k(_chunked(m[0], q, m[1])), lambda m: m[0].nbytes + m[1].nbytes),
    ]
    found.append(Method("duckdb array_cosine_similarity", _duckdb, _duckdb_search, lambda con: con.nbytes))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        def torch_search(m, q):
            scores = torch.mv(m, torch.from_numpy(q).to(torch.bfloat16))
            return torch.topk(scores, K).indices.numpy()

        found.append(Method("torch bfloat16", lambda v: torch.from_numpy(v).to(torch.bfloat16), torch_search,
                            lambda m: m.numel() * 2))

        def two_stage(m, q):
            # bfloat16 halves the bytes each query streams, but its 8-bit mantissa ties close scores:
            # the best RERANK by bfloat16 are scored again exactly, from a float16 copy.
            scan, exact = m
            candidates = torch.topk(torch.mv(scan, torch.from_numpy(q).to(torch.bfloat16)), RERANK).indices.numpy()
            scores = exact[candidates].astype(np.float32) @ q
            return candidates[np.argsort(-scores)[:K]]

        found.append(Method(f"torch bfloat16 + float16 rerank of {RERANK}",
                            lambda v: (torch.from_numpy(v).to(torch.bfloat16), v.astype(np.float16)), two_stage,
                            lambda m: m[0].numel() * 2 + m[1].nbytes))
    try:
        import faiss
    except ImportError:
        return found
    faiss.omp_set_num_threads(os.cpu_count() or 1)

    # Brute force over compressed vectors with faiss's SIMD scan (no float32 copy), and the int8 one
    # with its best RERANK scored again from float32: what the index was chosen against.
    def scalar_quantized(kind):
        def build(vectors):
            index = faiss.IndexScalarQuantizer(vectors.shape[1], kind, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors[:20_000])
            index.add(vectors)
            return index, vectors
        return build

    def rerank(pair, q):
        index, vectors = pair
        candidates = index.search(q[None, :], RERANK)[1][0]
        return candidates[np.argsort(-(vectors[candidates] @ q))[:K]]

    for name, kind in [("float16", faiss.ScalarQuantizer.QT_fp16), ("int8", faiss.ScalarQuantizer.QT_8bit)]:
        found.append(Method(f"faiss SQ {name} scan", scalar_quantized(kind),
                            lambda pair, q: pair[0].search(q[None, :], K)[1][0],
                            lambda pair: pair[0].sa_code_size() * pair[0].ntotal))
    found.append(Method(f"faiss SQ int8 scan + float32 rerank of {RERANK}", scalar_quantized(faiss.ScalarQuantizer.QT_8bit),
                        rerank, lambda pair: pair[0].sa_code_size() * pair[0].ntotal + pair[1].nbytes))

    def ivf(vectors: np.ndarray):
        nlist = int(4 * np.sqrt(len(vectors)))  # faiss's rule of thumb: 4-16 x sqrt(n) lists
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist,
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), nlist * 64), replace=False)])
        index.add(vectors)
        return index

    def ivf_search(nprobe):
        def search(index, q):
            index.nprobe = nprobe
            return index.search(q[None, :], K)[1][0]
        return search

    built = {}

    def shared_ivf(vectors):  # one index, searched with several nprobe values
        key = id(vectors)
        if key not in built:
            built.clear()
            built[key] = ivf(vectors)
        return built[key]

    for nprobe in faiss_nprobes:
        found.append(Method(f"faiss IVF-flat nprobe={nprobe}", shared_ivf, ivf_search(nprobe),
                            lambda index: index.ntotal * index.d * 4 + index.nlist * index.d * 4))
    return found


def measure(n: int, n_queries: int, nprobes: list[int], only: set[str] | None) -> list[dict]:
    started = time.perf_counter()
    vectors = synthetic(n)
    queries = synthetic(n_queries, seed=1)
    print(f"# n={n}: generated in {time.perf_counter() - started:.1f} s", flush=True)
    exact = [top_k(vectors @ q) for q in queries]
    rows = []
    for method in methods(nprobes):
        if only and not any(word in method.name for word in only):
            continue
        started = time.perf_counter()
        index = method.build(vectors)
        build_s = time.perf_counter() - started
        method.search(index, queries[0])  # warm up (page in, thread pools)
        times, recall = [], []
        for q, truth in zip(queries, exact):
            started = time.perf_counter()
            found = method.search(index, q)
            times.append((time.perf_counter() - started) * 1000)
            recall.append(len(set(found.tolist()) & set(truth.tolist())) / K)
        row = {"n": n, "method": method.name, "build_s": build_s, "memory_mb": method.memory(index) / 2**20,
               "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
               "recall_at_10": float(np.mean(recall))}
        rows.append(row)
        print(f"| {n:,} | {row['method']} | {row['build_s']:.1f} | {row['memory_mb']:.0f} | {row['p50_ms']:.1f} | "
              f"{row['p95_ms']:.1f} | {row['recall_at_10']:.3f} |", flush=True)
        del index
    return rows


def _write_warehouse(root: str, vectors: np.ndarray, per_batch: int = 100_000, seed: int = 0) -> None:
    """A warehouse of the vectors in batches of a realistic size, in the pipeline's own schemas; a
    category on each image, "animal" on one in ten (a filter's selectivity)."""
    import pyarrow as pa

    from assets.parquet_schemas import IMAGE_METADATA, clip_embeddings_schema
    from resources.warehouse import partition_file, write_table

    n = len(vectors)
    for b, start in enumerate(range(0, n, per_batch)):
        block = vectors[start:start + per_batch]
        keys = {"image_id": [f"{seed:08x}{i:056x}" for i in range(start, start + len(block))],
                "path": [f"{i}.jpg" for i in range(start, start + len(block))],
                "status": ["ok"] * len(block), "error": [None] * len(block)}
        write_table(pa.table({**keys, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), DIM),
                              "model_id": ["m"] * len(block), "ms": [1.0] * len(block),
                              "fingerprint": ["f"] * len(block), "reused": [False] * len(block)},
                             schema=clip_embeddings_schema(DIM)), partition_file(root, "clip_embeddings", f"b{b}"))
        write_table(pa.table({**keys, "primary_category": ["animal" if i % 10 == 0 else "nature"
                                                           for i in range(start, start + len(block))]},
                             schema=pa.schema([IMAGE_METADATA.field(c) for c in
                                               ["image_id", "path", "status", "error", "primary_category"]])),
                    partition_file(root, "image_metadata", f"b{b}"))


def measure_warehouse(n: int, n_queries: int) -> dict:
    """What the SQL macros run: the search macro over a real warehouse (Parquet on disk, read
    by DuckDB through the sandboxed views), with a filter, after the connection is made."""
    import tempfile

    from resources.search import Filters, similar_to_vector
    from resources.warehouse import connect

    vectors, queries = synthetic(n), synthetic(n_queries, seed=1)
    with tempfile.TemporaryDirectory() as root:
        _write_warehouse(root, vectors)
        row = {"n": n}
        for how, resident in [("Parquet, read per query", False), ("resident (pixelsift browse)", True)]:
            started = time.perf_counter()
            con = connect(root, resident=resident)
            setup_ms = (time.perf_counter() - started) * 1000
            times = []
            for q in queries:
                started = time.perf_counter()
                hits = similar_to_vector(con, q, "m", K, Filters(category="animal"))
                times.append((time.perf_counter() - started) * 1000)
                assert len(hits) == K
            row[how] = (setup_ms, float(np.percentile(times, 50)), float(np.percentile(times, 95)))
            print(f"| {n:,} | search macro, {how}, category filter (1 in 10) | connect {setup_ms:.0f} ms | "
                  f"{row[how][1]:.1f} | {row[how][2]:.1f} |", flush=True)
            del con
    return row


def _timed(function, queries) -> tuple[list, float, float]:
    function(queries[0])  # warm up
    results, times = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(function(q))
        times.append((time.perf_counter() - started) * 1000)
    return results, float(np.percentile(times, 50)), float(np.percentile(times, 95))


def measure_index(n: int, n_queries: int, ann_above: int) -> None:
    """What ``pixelsift search``/``similar``/``browse`` run: ``resources.vector_index`` over a Parquet
    warehouse of n vectors. Build from nothing, reopen unchanged (what each one-shot command pays),
    reopen after one batch was rewritten (incremental), the index's own query, and the whole search
    (filters asked of DuckDB, hits described by it) unfiltered and with a filter keeping 1 in 10."""
    import resource
    import shutil
    import tempfile

    from resources.search import Filters, similar_to_vector
    from resources.vector_index import index_dir, open_index
    from resources.warehouse import connect

    vectors, queries = synthetic(n), synthetic(n_queries, seed=1)
    exact = [top_k(vectors @ q) for q in queries]
    animals = np.arange(n) % 10 == 0
    exact_animals = [np.flatnonzero(animals)[top_k(vectors[animals] @ q)] for q in queries]
    root = tempfile.mkdtemp(prefix="pixelsift-index-bench-")
    try:
        _write_warehouse(root, vectors)
        del vectors
        started = time.perf_counter()
        index = open_index(root, "m", ann_above)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        index = open_index(root, "m", ann_above)
        reopen_ms = (time.perf_counter() - started) * 1000
        disk_mb = sum(f.stat().st_size for f in index_dir(root, "m").iterdir()) / 2**20
        how = "IVF" if index.ivf is not None else "exact scan"

        def recall(found, truth) -> float:
            return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)]))

        rows_of = {f"{i}.jpg": i for i in range(n)}  # the index orders a batch by path: back to generation order
        generated = np.array([rows_of[p] for p in index.rows.column("path").to_pylist()])
        found, p50, p95 = _timed(lambda q: index.search(q, "m", K)[0], queries)
        print(f"| {n:,} | {how}: index.search | {build_s:.1f} | {reopen_ms:.0f} | {disk_mb:.0f} | {p50:.1f} | "
              f"{p95:.1f} | {recall([generated[f].tolist() for f in found], exact):.3f} |", flush=True)
        con = connect(root)
        for label, filters, truth in [("whole search (similar_to_vector)", Filters(), exact),
                                      ("whole search, category filter (1 in 10)", Filters(category="animal"),
                                       exact_animals)]:
            hits, p50, p95 = _timed(lambda q: similar_to_vector(con, q, "m", K, filters, index=index), queries)
            assert all(len(h) == K for h in hits)
            print(f"| {n:,} | {how}: {label} | | | | {p50:.1f} | {p95:.1f} | "
                  f"{recall([[rows_of[x.path] for x in h] for h in hits], truth):.3f} |", flush=True)
        # one batch rewritten (new vectors, same paths): its segment is rebuilt, its ids replaced in the IVF
        _write_warehouse(root, synthetic(min(n, 100_000), seed=7), per_batch=100_000, seed=7)
        started = time.perf_counter()
        open_index(root, "m", ann_above)
        print(f"# n={n}: reopen after batch b0 rewritten: {time.perf_counter() - started:.1f} s; "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_existing(root: str, n_queries: int, ann_above: int) -> None:
    """The query side only, over a warehouse whose index is already built (``--index-sizes`` builds
    one; a copy of it can be timed again on a quieter machine): reopen, then the index's query and
    the whole search against exact scores of every vector (the index's own exact scan)."""
    import resource

    from resources.search import Filters, similar_to_vector
    from resources.vector_index import open_index
    from resources.warehouse import connect

    started = time.perf_counter()
    index = open_index(root, "m", ann_above)
    reopen_ms = (time.perf_counter() - started) * 1000
    n, how = index.size, "IVF" if index.ivf is not None else "exact scan"
    queries = synthetic(n_queries, seed=1)
    exact = [index._exact(q, K)[0] for q in queries]
    animal = np.asarray(index.rows.column("category").to_numpy(zero_copy_only=False) == "animal")
    exact_animals = [index._exact(q, K, np.flatnonzero(animal))[0] for q in queries]

    def recall(found, truth) -> float:
        return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)]))

    found, p50, p95 = _timed(lambda q: index.search(q, "m", K)[0], queries)
    print(f"| {n:,} | {how}: index.search (reopened: {reopen_ms:.0f} ms) | {p50:.1f} | {p95:.1f} | "
          f"{recall([f.tolist() for f in found], exact):.3f} |", flush=True)
    con = connect(root)
    row_of = {(b, p): r for b, p, r in zip(*(index.rows.column(c).to_pylist() for c in ("batch", "path", "row")))}
    for label, filters, truth in [("whole search", Filters(), exact),
                                  ("whole search, category filter (1 in 10)", Filters(category="animal"),
                                   exact_animals)]:
        hits, p50, p95 = _timed(lambda q: similar_to_vector(con, q, "m", K, filters, index=index), queries)
        print(f"| {n:,} | {how}: {label} | {p50:.1f} | {p95:.1f} | "
              f"{recall([[row_of[(h.batch, h.path)] for h in hit] for hit in hits], truth):.3f} |", flush=True)
    print(f"# peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="collection sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=100, help="queries per method (latency percentiles, recall)")
    parser.add_argument("--nprobe", default="16,64,256", help="faiss IVF lists searched per query, comma-separated")
    parser.add_argument("--only", default="", help="comma-separated words: run only methods whose name has one")
    parser.add_argument("--warehouse-sizes", default="",
                        help="instead: time the search macro over a Parquet warehouse of these sizes")
    parser.add_argument("--index-sizes", default="",
                        help="instead: time the shipped search (resources.vector_index) over warehouses of these sizes")
    parser.add_argument("--index-above", type=int, default=200_000,
                        help="with --index-sizes: the search_index_above setting (IVF from this many vectors)")
    parser.add_argument("--index-warehouse", default="",
                        help="instead: time queries over this warehouse, its index already built")
    args = parser.parse_args()
    if args.index_warehouse:
        print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
        print("| vectors | what | p50 ms | p95 ms | recall@10 |\n|---|---|---:|---:|---:|")
        measure_existing(args.index_warehouse, args.queries, args.index_above)
        print(f"# load average {os.getloadavg()[0]:.2f} at end")
        return
    if args.index_sizes:
        print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, IVF from "
              f"{args.index_above:,} vectors")
        print("| vectors | what | build s | reopen ms | index MB on disk | p50 ms | p95 ms | recall@10 |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|")
        for n in [int(v) for v in args.index_sizes.split(",")]:
            measure_index(n, args.queries, args.index_above)
        print(f"# load average {os.getloadavg()[0]:.2f} at end")
        return
    if args.warehouse_sizes:
        print("| vectors | what | setup | p50 ms | p95 ms |\n|---|---|---|---|---|")
        for n in [int(v) for v in args.warehouse_sizes.split(",")]:
            measure_warehouse(n, args.queries)
        print(f"# load average {os.getloadavg()[0]:.2f} at end")
        return
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, dim {DIM}, k {K}")
    print("| vectors | method | build s | vectors MB | p50 ms | p95 ms | recall@10 |\n|---|---|---|---|---|---|---|")
    for n in [int(s) for s in args.sizes.split(",")]:
        measure(n, args.queries, [int(p) for p in args.nprobe.split(",")], set(filter(None, args.only.split(","))))
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
