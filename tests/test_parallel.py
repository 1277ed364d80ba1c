"""The node's helpers for large memory-bound steps give what the plain steps give."""

from __future__ import annotations

import numpy as np

from mpsnode.node import parallel


def test_copy_all_copies_every_part_on_the_threads_or_not() -> None:
    rng = np.random.default_rng(1)
    n = parallel.COPY_SPLIT_BYTES // 3 + 5  # three of them go to the threads
    for count, size in ((1, 100), (3, n), (5, 17)):
        srcs = [rng.bytes(size + 32) for _ in range(count)]
        out = np.zeros((count, size), dtype=np.uint8)
        parallel.copy_all([(s, 32, out[i]) for i, s in enumerate(srcs)])
        assert [bytes(row) for row in out] == [s[32:] for s in srcs]
