"""Per-image CPU work (hashing, decoding, palettes) spread over worker processes.

Decoding releases the GIL but palette k-means does not, so threads do not scale it:
processes do. They are started with ``spawn`` (forking a process whose torch has started
OpenMP threads can deadlock), and import only the helpers they run (``assets`` imports its
asset modules lazily). Small batches stay in the calling process: starting workers costs
about a tenth of a second each, which a few dozen images do not repay. ``thread_map`` also
serves the model resources' preprocessing.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MIN_ITEMS_PER_WORKER = 16
MAX_DEFAULT_WORKERS = 16


def worker_count(setting: int) -> int:
    """The ``cpu_workers`` setting resolved: 0 means one per CPU core, up to 16."""
    if setting < 0:
        raise ValueError(f"cpu_workers must be 0 (one per core) or positive, got {setting}")
    return setting or min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


def process_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(item) for item in items]``, in order, over up to ``workers`` processes.

    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one) and
    should return failures as values: an exception raised in a worker stops the whole map.
    """
    items = list(items)
    workers = min(workers, len(items) // MIN_ITEMS_PER_WORKER)
    if workers <= 1:
        return [fn(item) for item in items]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (4 * workers))))


def thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(item) for item in items]``, in order, over up to ``workers`` threads: for work that
    releases the GIL (decoding, resizing), where processes would only add copying."""
    items = list(items)
    if min(workers, len(items)) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(fn, items))
