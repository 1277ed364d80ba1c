"""The cyclic garbage collector, set for a node's long-running processes.

CPython collects its youngest generation every 700 container allocations, and each collection
rescans everything that survived the last one. A node allocates tens of thousands of containers
a second (decoded frames and txs, receipts, state overlays), almost all freed by reference
counting, while it keeps tens of thousands alive for seconds (the mempool's entries, its caches):
the collector rescans those again and again and finds next to nothing to free. On
``bench/ingest.py`` the sequencer spent 3.4 s of its 20 s of CPU in the collector (17 %), and a
full collection paused it for up to 190 ms, which every ack in flight then waits out.

The sequencer also hands the GIL between threads more often (``tune_sequencer``). Its event loop,
block builder, verify threads and LMDB writer share the interpreter; a thread coming back from C
(a signature batch, an LMDB put, a commit's fsync) waits for the GIL up to the switch interval
while another runs Python, 5 ms by default. At 1 ms, ``bench/ingest.py`` included more txs in 6
of 7 alternating pairs of runs, 4 % more on average, with an ack p99 3 % lower (README); 0.2 ms
was slower than 5 ms, and replay (one busy thread and two signature threads; 3 runs each,
interleaved) showed no clear difference, so the rest keep CPython's interval.

Both also fix glibc's allocator thresholds (``mpsnode.node.allocator``), which, unlike the
collector, stay set after a ``tuned`` block.

``tune`` (called once by each daemon when it starts, after the imports and the store are loaded):
one full collection, then ``gc.freeze`` moves every object alive (the modules' functions and
classes, about 200,000) out of all later collections, and the young generation is collected every
``YOUNG`` allocations. Reference cycles are still collected, at most ``YOUNG`` allocations late,
so garbage held that way stays a few megabytes. ``tuned`` does the same for the length of a
``with`` block (``mpsnode replay``, which may run inside another program), then puts the
collector back as it was.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mpsnode.node import allocator

YOUNG = 50_000  # container allocations between collections of the youngest generation (CPython: 700)
MIDDLE = 20  # young collections between collections of the middle one (CPython: 10)
OLD = 100  # middle collections between full ones, which CPython also defers while they would be costly
SEQUENCER_SWITCH_S = 0.001  # the sequencer's GIL switch interval (CPython: 0.005)


def tune() -> None:
    """Set this process's collector and allocator for a node (see the module's docstring)."""
    allocator.tune()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)


def tune_sequencer() -> None:
    """``tune``, and the GIL switch interval set to ``SEQUENCER_SWITCH_S`` (the module's docstring)."""
    tune()
    sys.setswitchinterval(SEQUENCER_SWITCH_S)


@contextmanager
def tuned() -> Iterator[None]:
    """``tune`` inside the block; after it, the previous thresholds, and every object frozen by it
    collectable again."""
    before = gc.get_threshold()
    tune()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
