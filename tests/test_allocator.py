"""A model step keeps its freed memory for the next layer (resources/allocator.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from resources.allocator import keep_freed_memory
    assert keep_freed_memory()
np.ones(2**23).sum()  # 64 MB, allocated and freed once before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(2**23).sum()  # one layer's activations: allocated, used, freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the limits are glibc's malloc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = page_faults("default"), page_faults("keep")
    # Mapped afresh every time: up to 16,000 faults per block (fewer where huge pages serve some).
    assert default > 10 * 100
    assert kept < default / 20

