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



RELEASE_PROBE = """
import os, sys
import numpy as np
from resources import torch_runtime

def rss_gib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

pins = []
def weights():  # a large model's weights: 2 GiB in 100 MiB tensors, as heap blocks under the raised limits
    blocks = [np.ones(100 * 2**17) for _ in range(20)]
    pins.append(np.ones(2**17))  # something allocated after them that lives on: the heap's top stays used
    return blocks

torch_runtime.load_once(("first",), weights, large=True)
before = rss_gib()
torch_runtime.load_once(("second",), lambda: None, large=True)  # releases the first
print(before, rss_gib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_a_released_large_model_gives_its_memory_back_to_the_os():
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, check=True)
    loaded, released = map(float, out.stdout.split())
    assert loaded > 2.0
    assert released < loaded - 1.8  # the weights' 2 GiB, though they sat below a live block
