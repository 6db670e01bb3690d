"""One large model at a time on this machine, whatever the pool's bookkeeping does.

The large-model pool (``resources/concurrency.py``) is a claim in the Dagster instance's database.
On the default SQLite instance two runs claiming its one slot at the same moment can both get it:
the claim reads a free slot row, then updates that row by id alone, and SQLite ignores the
``FOR UPDATE SKIP LOCKED`` that makes this safe on Postgres (dagster 1.13,
``SqlEventLogStorage._claim_concurrency_slot``; Dagster stopped testing pools on SQLite for such
flakes, dagster PR #14644). tests/test_run_limits.py once saw two runs' model steps overlap 0.9 s:
two 7-14 GiB models at once. So each step of the pool also holds an exclusive ``flock``
(``resources/file_locks.py``) for the whole of its compute, model load included: the kernel
serialises the steps even when the pool lets two through, and frees the lock when a step's process
dies, however it dies. The lock is taken after the pool's slot and given back before it, so a step
never holds it while waiting for the slot: the two cannot deadlock.

There are as many lock files as the pool has slots (its limit, read from the instance as the step
starts): a pool raised to 2 on a bigger machine still runs two steps at once, and a pool with no
limit (``materialize()`` on an ephemeral instance) takes no lock.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from resources.concurrency import LARGE_MODEL_POOL
from resources.file_locks import Claim, release, wait_for_claim

# Beside the instance (its root, DAGSTER_HOME), because the pool the lock backs is the instance's:
# every run of one install (the UI's, the sensor's, backfills, `pixelsift run`: all on one
# DAGSTER_HOME) contends for the same files, while a second install with a home of its own, and so
# a pool of its own, never waits for the first. On a cluster (resources/distributed.py) each
# machine has its own root and so its own lock: correct per machine, while the pool, in the shared
# Postgres, counts across machines.
LOCK_FOLDER = "locks"

_guard = threading.RLock()  # other threads of this process wait here; the holding thread may nest
_depth = 0
_claim: Claim | None = None


def lock_paths(instance_root: Path, slots: int) -> list[Path]:
    return [instance_root / LOCK_FOLDER / f"large_model{index}.lock" for index in range(slots)]


def pool_slots(instance: Any) -> int:
    """How many large-model steps the instance lets run at once; 0 where its pool has no limit."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return 0
    return max(0, storage.get_concurrency_info(LARGE_MODEL_POOL).limit or 0)


@contextmanager
def large_model_slot(context: Any) -> Iterator[None]:
    """Hold one of this machine's large-model lock files while the block runs, waiting (and saying
    so once in the step's log) while other runs' steps hold them all. Re-entrant within a process:
    a step that nests (a range run's batches) takes it once."""
    global _depth, _claim
    with _guard:
        if _depth == 0:
            _claim = _wait_for_slot(context)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0 and _claim is not None:
                release(_claim)
                _claim = None


def _wait_for_slot(context: Any) -> Claim | None:
    slots = pool_slots(context.instance)
    if not slots:
        return None
    paths = lock_paths(Path(context.instance.root_directory), slots)
    started = time.monotonic()
    waited = []

    def say_waiting() -> None:
        waited.append(True)
        names = ", ".join(str(path) for path in paths)
        context.log.info(f"Waiting for another run's large-model step to finish: it holds the lock on {names} "
                         f"(one large model at a time on this machine; the pool {LARGE_MODEL_POOL} has {slots} slot(s)).")

    try:
        claim = wait_for_claim(paths, on_wait=say_waiting)
    except OSError as exc:  # BlockingIOError (held) is waited on; this is a folder that cannot hold the files
        # Only where the instance's folder is not writable, so its storage is not SQLite (which
        # writes there) but Postgres, whose pool claim does not race: the pool alone keeps the limit.
        context.log.warning(f"Could not take the large-model lock {paths[0]} ({exc}); this step runs with the "
                            f"limit of the pool {LARGE_MODEL_POOL} alone.")
        return None
    if waited:
        context.log.info(f"Took the large-model lock {paths[claim.index]} after {time.monotonic() - started:.1f} s.")
    return claim


def holds_large_model_slot(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, a step's compute function taking ``context`` first, run holding ``large_model_slot``.
    Its signature (which Dagster reads) is ``fn``'s."""
    if inspect.isgeneratorfunction(fn):  # its body would run after the wrapper returned, unlocked
        raise TypeError(f"{fn.__name__} yields its outputs; a large-model step must return them")

    @functools.wraps(fn)
    def compute(context: Any, *args: Any, **kwargs: Any) -> Any:
        with large_model_slot(context):
            return fn(context, *args, **kwargs)

    return compute
