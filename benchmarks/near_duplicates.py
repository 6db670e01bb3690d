"""near_duplicates' pair finding at collection scale, on synthetic hashes and CLIP-like vectors.

    python -m benchmarks.near_duplicates --sizes 20000,100000 --all-pairs-below 30000

Per size: the candidate search that ships (multi-index hashing over the pHash, k-means clusters
over the vectors) and, below ``--all-pairs-below``, the comparison of every pair; the groups each
finds, and whether they are the same. The collection: random 64-bit hashes and clustered unit
vectors (``benchmarks.vector_search.synthetic``: cosine ~0.7 within a cluster, so CLIP alone joins
nothing), and 1 image in 50 copied: half resized or re-encoded (0-6 hash bits flipped, cosine
~0.99), half cropped (8-18 bits flipped, cosine ~0.97), as measured on the sample photos.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from assets.near_duplicates import NearDuplicatesConfig, find_groups
from benchmarks.vector_search import DIM, synthetic


def collection(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, vectors) of n images, the last n/50 of them copies of others."""
    rng = np.random.default_rng(seed)
    copies = n // 50
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(np.uint64)
    vectors = synthetic(n, seed=seed)
    originals = rng.choice(n - copies, copies, replace=False)
    for k, (copy, original) in enumerate(zip(range(n - copies, n), originals)):
        cropped = k % 2 == 1
        flips = rng.choice(64, rng.integers(8, 19) if cropped else rng.integers(0, 7), replace=False)
        hashes[copy] = hashes[original] ^ np.uint64(sum(1 << int(b) for b in flips))
        noise = rng.normal(size=DIM).astype(np.float32)
        noise -= noise @ vectors[original] * vectors[original]
        noise /= np.linalg.norm(noise)
        cosine = 0.97 if cropped else 0.99
        vectors[copy] = cosine * vectors[original] + np.sqrt(1 - cosine**2) * noise
    return hashes, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--all-pairs-below", type=int, default=30_000,
                        help="also compare every pair at sizes under this (quadratic: minutes at 100,000)")
    args = parser.parse_args()
    config = NearDuplicatesConfig()
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    print("| images | how | seconds | groups | same groups as every pair |\n|---|---|---:|---:|---|")
    for n in [int(v) for v in args.sizes.split(",")]:
        hashes, vectors = collection(n)
        models = ["m"] * n
        found = {}
        for how, exact_below in [("candidates (shipped)", 0), ("every pair", n + 1)]:
            if how == "every pair" and n >= args.all_pairs_below:
                continue
            started = time.perf_counter()
            found[how] = sorted(find_groups(hashes, vectors, models, config, exact_below=exact_below))
            seconds = time.perf_counter() - started
            same = "" if len(found) == 1 else str(found[how] == found["candidates (shipped)"]).lower()
            print(f"| {n:,} | {how} | {seconds:.1f} | {len(found[how]):,} | {same} |", flush=True)
        print(f"# n={n}: planted copies {n // 50:,}")
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
