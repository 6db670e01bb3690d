"""Claims that every process of this machine sees: an exclusive ``flock`` on one of a few lock files.

The kernel drops a claim with the last descriptor of its holder, however the holder ends (SIGKILL,
out of memory), so a claim never outlives its process and nothing needs cleaning up. The descriptor
is close-on-exec (Python's default), so a helper the holder spawns does not inherit the claim.
GPUs (``resources/gpu_slots.py``) and the large-model slots (``resources/large_model_lock.py``)
are claimed this way.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

# How often a step waiting for a slot tries again: negligible next to a model step (minutes), and
# a step waits at most this long after the slot is freed.
POLL_SECONDS = 0.1


class Claim(NamedTuple):
    index: int  # which of the lock files
    fd: int  # the open, locked file: closing it (or the process ending) frees the claim


def try_claim(paths: Sequence[Path]) -> Claim | None:
    """The first of ``paths`` that no other process holds, now held by this one; None when all are."""
    for index, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Claim(index, fd)
    return None


def wait_for_claim(paths: Sequence[Path], on_wait: Callable[[], None] = lambda: None) -> Claim:
    """One of ``paths``, waiting as long as every one is held; ``on_wait`` is called once, when the
    first try finds them all held. Polled rather than a blocking ``flock``: it waits on any of several
    files, and a run's termination (a signal) interrupts the sleep."""
    claim = try_claim(paths)
    if claim is None:
        on_wait()
    while claim is None:
        time.sleep(POLL_SECONDS)
        claim = try_claim(paths)
    return claim


def release(claim: Claim) -> None:
    os.close(claim.fd)
