"""Keep a model step's freed memory for its next layer, instead of handing it back to the OS.

glibc's malloc serves a large block (from 128 KiB, the limit rising to at most 32 MiB as such
blocks are freed) with fresh pages from ``mmap`` and unmaps it on ``free``; it also returns the
heap's free top above 128 KiB. A model step allocates activations of tens to hundreds of MB per
layer, so every layer's were fresh pages the kernel had to fault in and zero: BLIP-2's ViT-g at
16 images took 9.2 million page faults per forward in int8 (37 GB zeroed) and 2.5 million in
float32. With the limits raised they took none, and the vision tower ran 1.45x (int8) and 1.2x
(float32) faster for 0.4 GiB more peak memory (BENCHMARKS.md, "Page faults").

The other side: with the mmap limit raised, a model's weights are heap blocks too, and freeing
the model handed back only the heap's top. Full-size BLIP-2 in float32 (14.7 GiB resident) still
held 4.8 GiB after it was released, there beside the next large model; ``return_freed_memory``
after a release brought it to 0.9 (BENCHMARKS.md, "Freed weights").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
# Blocks up to this size come from the heap and are reused there; larger ones are still mapped.
# Above the largest activation of the default models' batches (ViT-g's MLP at 32 images: 200 MB).
MMAP_THRESHOLD = 512 * 2**20
# Free memory kept at the heap's top: one large layer's activations, not the whole model's.
TRIM_THRESHOLD = 1024 * 2**20

_applied: bool | None = None


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c"))


def keep_freed_memory() -> bool:
    """Raise glibc's limits, once per process. False where malloc is not glibc's (musl, macOS)."""
    global _applied
    if _applied is None:
        _applied = False
        if platform.libc_ver()[0] == "glibc":
            libc = _libc()
            # mallopt returns 1 on success; each setting also stops glibc adjusting the limits itself.
            _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            if not _applied:
                log.warning("could not raise malloc's mmap and trim thresholds; model steps run as before")
    return _applied


def return_freed_memory() -> bool:
    """Hand every free page of malloc's heaps back to the OS (glibc's ``malloc_trim``, which also
    releases whole free pages inside the heap, not only at its top). False where malloc is not glibc's."""
    if platform.libc_ver()[0] != "glibc":
        return False
    _libc().malloc_trim(0)
    return True
