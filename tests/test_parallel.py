"""The node's helpers for large memory-bound steps give what the plain steps give."""

from __future__ import annotations

import numpy as np

from mpsnode.consensus.hashing import SMT_VAL, UPDATE, H
from mpsnode.node import parallel


def test_copy_all_copies_every_part_on_the_threads_or_not() -> None:
    rng = np.random.default_rng(1)
    n = parallel.COPY_SPLIT_BYTES // 3 + 5  # three of them go to the threads
    for count, size in ((1, 100), (3, n), (5, 17)):
        srcs = [rng.bytes(size + 32) for _ in range(count)]
        out = np.zeros((count, size), dtype=np.uint8)
        parallel.copy_all([(s, 32, out[i]) for i, s in enumerate(srcs)])
        assert [bytes(row) for row in out] == [s[32:] for s in srcs]


def test_value_hashes_take_what_was_hashed_ahead_only_for_the_same_bytes() -> None:
    """An update's tree value hashed ahead is taken for exactly that value and no other: not for a
    value that starts with the same delta hash and differs after it, nor twice."""
    rng = np.random.default_rng(2)
    n = parallel.HASH_MIN_BYTES
    delta, other = rng.bytes(n), rng.bytes(n)
    dh = H(UPDATE, delta)
    value = dh + delta
    forged = dh + other  # same first 32 bytes, other delta: must be hashed for itself
    small = b"s" * 100
    expected = [H(SMT_VAL, v) for v in (value, forged, small, value)]
    parallel.hash_update_value_ahead(dh, delta)
    assert parallel.smt_value_hashes([value, forged, small, value]) == expected
    marker = b"m" * 32  # a digest no value has: where it comes back, the one hashed ahead was taken
    parallel._ahead[dh] = (delta, marker)
    parallel._ahead_bytes += n
    assert parallel.smt_value_hashes([forged]) == [H(SMT_VAL, forged)]  # taken, and refused
    assert parallel.smt_value_hashes([value]) == [H(SMT_VAL, value)]  # so hashed here again
    parallel._ahead[dh] = (delta, marker)
    parallel._ahead_bytes += n
    assert parallel.smt_value_hashes([value, value]) == [marker, H(SMT_VAL, value)]  # once only
    assert not parallel._ahead and parallel._ahead_bytes == 0


def test_values_hashed_ahead_are_forgotten_past_their_bound(monkeypatch) -> None:
    monkeypatch.setattr(parallel, "AHEAD_BYTES", 3 * parallel.HASH_MIN_BYTES)
    rng = np.random.default_rng(3)
    deltas = [rng.bytes(parallel.HASH_MIN_BYTES) for _ in range(5)]
    for d in deltas:
        parallel.hash_update_value_ahead(H(UPDATE, d), d)
    assert len(parallel._ahead) == 3 and parallel._ahead_bytes == 3 * parallel.HASH_MIN_BYTES
    values = [H(UPDATE, d) + d for d in deltas]
    assert parallel.smt_value_hashes(values) == [H(SMT_VAL, v) for v in values]
    assert not parallel._ahead and parallel._ahead_bytes == 0
