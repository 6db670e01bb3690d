"""How long clustering takes at scale, and whether the micro-cluster approximation finds the groups.

    python -m benchmarks.clustering [--n 100000] [--dim 512] [--groups 300]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from assets.clustering import cluster_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--spread", type=float, default=0.3, help="Noise around each group centre (per dim).")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    truth = rng.integers(0, args.groups, args.n)
    centres = rng.normal(size=(args.groups, args.dim))
    vectors = (centres[truth] + args.spread * rng.normal(size=(args.n, args.dim))).astype(np.float32)
    keys = [f"{i:09d}" for i in range(args.n)]
    start = time.perf_counter()
    result = cluster_embeddings(vectors, keys)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "n": args.n, "dim": args.dim, "groups": args.groups, "seconds": round(seconds, 2),
        "clusters": int(result.labels.max() + 1), "noise": int((result.labels == -1).sum()),
        "ari": round(float(adjusted_rand_score(truth, result.labels)), 4),
    }))


if __name__ == "__main__":
    main()
