"""glibc's allocator, set for a node's megabyte-sized buffers.

A round of a task of 10^6 parameters moves buffers of 2 to 8 MB: each revealed update (2 MB, in
the frame that brought it, the tx decoded from it, LMDB's dirty pages for it), each model and
contribution direction (4 MB), each int64 temporary of the close and of the reveal phase's
direction (8 MB). glibc serves an allocation above its mmap threshold with a fresh ``mmap`` and
returns it with ``munmap`` when it is freed, and it gives the free top of a heap back to the
kernel above its trim threshold; either way the next buffer of that size starts on pages the
kernel must fault in and zero, one 4 KiB page at a time. Its dynamic threshold (128 KiB, raised to
the largest chunk freed) helps only once the large chunks have come and gone, and the trim
threshold then follows it at twice that.

On the 2-core VMs this project is measured on, a fresh page costs 4-9 us (on the Xeon, a copy into
fresh memory ran 1.7 x slower than into memory already used), and the sequencer under
``bench/ingest_updates.py`` took 750,000-850,000 minor faults in a 13 s run, with its system time
close to its user time (620,000-660,000 with the thresholds below; most of the rest come from
outside the heaps, presumably LMDB's mapped pages read for the first time and buffers above
32 MiB, since putting every thread on one arena changed nothing).

``tune`` fixes both thresholds (which also turns the dynamic adjustment off): allocations up to
``MMAP_THRESHOLD`` (32 MiB, the most glibc takes on 64-bit systems) come from the heaps, and up to
``TRIM_THRESHOLD`` of free memory at a heap's top stays there for the next round. The measured
effect is in README's performance section. The cost is memory held: a process's resident size stays
near its peak (one block's buffers) instead of falling back between blocks. Allocations above 32
MiB (a whole block of updates, encoded) are mapped and unmapped as before.

Elsewhere than glibc (musl, macOS) nothing is changed and ``tune`` returns False.
"""

from __future__ import annotations

import ctypes
import os

MIB = 1 << 20
MMAP_THRESHOLD = 32 * MIB  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 256 * MIB  # 64 MiB kept some of the faults (bench/round.py's reveal phase)
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3

_done = False


def glibc() -> bool:
    """Whether this process runs on glibc (``os.confstr`` names it; unknown elsewhere)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")  # "glibc 2.36"
    except (ValueError, OSError):
        return False


def tune() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (the module's docstring); idempotent.

    Returns whether they are set: False where the C library is not glibc or refuses a value.
    """
    global _done
    if _done:
        return True
    if not glibc():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    return _done
