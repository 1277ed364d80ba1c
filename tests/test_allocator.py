"""glibc's allocator thresholds, as the nodes set them (mpsnode.node.allocator)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpsnode.node import allocator

# Allocates six 8 MiB buffers (10^6-parameter int64 arrays), frees them, and counts the minor page
# faults of 20 more such rounds: by default glibc gives the freed heap top back to the kernel (it is
# above twice the largest chunk freed), so each round's pages are faulted in and zeroed again.
_PROBE = """
import ctypes, sys
from mpsnode.node import allocator, collector
if sys.argv[1] == "tuned":
    collector.tune()
    assert allocator.tune()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 8 << 20
def faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
def cycle():  # a close: several d-length temporaries alive at once, then all freed
    ps = [libc.malloc(size) for _ in range(6)]
    for p in ps:
        ctypes.memset(p, 1, size)
    for p in ps:
        libc.free(p)
cycle()
before = faults()
for _ in range(20):
    cycle()
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not allocator.glibc(), reason="the thresholds are glibc's")
def test_tuned_allocator_reuses_large_buffers() -> None:
    assert allocator.tune() and allocator.tune()  # idempotent
    pages = 20 * 6 * (8 << 20) // 4096
    assert _faults("default") > pages // 2  # each buffer's pages faulted in again
    assert _faults("tuned") < pages // 20  # the same memory, kept in the heap
