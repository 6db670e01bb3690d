"""Which GPU a large-model step uses on a machine with several: the first one no other step holds.

The Dagster pool ``pixelsift/gpu`` (one slot per GPU: ``PIXELSIFT_GPUS``, resources/concurrency.py)
bounds how many large-model steps run at once across every run of the instance; this picks their
devices, so two large models never share one. A claim is an exclusive lock on one file per device
(``resources/file_locks.py``), held by the step's process until it exits: the kernel drops it with
the process, so a crashed or killed step's GPU is free again at once, with no daemon and no clean-up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from resources.file_locks import try_claim
from resources.settings import env_default

_held: dict[int, int] = {}  # device index -> the open lock file of this process


def lock_dir() -> Path:
    """Where the per-device lock files are: shared by every pixelsift process of this machine."""
    return Path(env_default("GPU_LOCK_DIR", str(Path(tempfile.gettempdir()) / "pixelsift-gpus")))


def claim_gpu(count: int, where: Path | None = None) -> int | None:
    """The index of a GPU (0..count-1) this process now holds; the one it already holds, if any;
    None when every one is held by another process (the pool should have prevented that)."""
    if _held:
        return next(iter(_held))
    where = where or lock_dir()
    claim = try_claim([where / f"gpu{index}.lock" for index in range(count)])
    if claim is None:
        return None
    _held[claim.index] = claim.fd
    return claim.index


def release_gpus() -> None:
    """Give back this process's claim (``pixelsift run`` between runs; a step's process just exits)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()
