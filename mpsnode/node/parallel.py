"""A few threads for the node's large memory-bound steps, which one core does at a fraction of the
machine's speed: copying a round's updates out of LMDB's map and hashing large tree values (a
round's new model, 4 MB at 10^6 parameters, and its global change, 2 MB). numpy's copies and
hashlib's blake2b release the GIL on inputs this large; the results do not depend on the threads.
The consensus code stays single-threaded in Python (its kernels are numba's): the node hands it
these as callables."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from mpsnode.consensus.hashing import SMT_VAL, H, prepared

THREADS = min(4, os.cpu_count() or 1)
COPY_SPLIT_BYTES = 8 << 20  # copies adding up to less than this run in the calling thread
HASH_MIN_BYTES = 1 << 20  # values shorter than this are hashed in the calling thread

_T = TypeVar("_T")
_R = TypeVar("_R")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _map(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[fn(x) for x in items]`` on the shared threads; raises the first error."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="node-parallel")
    return list(_pool.map(fn, items))


Copy = tuple[bytes | memoryview, int, np.ndarray]


def _copy(copies: Sequence[Copy]) -> None:
    for src, start, out in copies:
        np.copyto(out, np.frombuffer(src, np.uint8, offset=start))


def copy_all(copies: Sequence[Copy]) -> None:
    """For each ``(src, start, out)``: copy ``src[start:]`` (bytes or a buffer, exactly ``out``'s
    length) into the uint8 array ``out``, dealt over the threads when large; returns when every
    copy is done."""
    if THREADS < 2 or len(copies) < 2 or sum(out.nbytes for _, _, out in copies) < COPY_SPLIT_BYTES:
        _copy(copies)
        return
    n = min(THREADS, len(copies))
    _map(_copy, [copies[i::n] for i in range(n)])


# Tree values hashed ahead: a pending update's state value is its delta's hash, then the delta
# (``State.set_update``), so a thread that has the revealed delta can hash that value before the
# block that stores it is built. delta hash -> (delta, H(SMT_VAL, delta hash || delta)).
# The deltas of reveals hashed ahead and not (yet) in a block, at most this many bytes of them
# (the mempool holds them anyway until then): the oldest are forgotten first.
AHEAD_BYTES = 256 << 20
_ahead: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
_ahead_bytes = 0
_ahead_lock = threading.Lock()


def hash_update_value_ahead(delta_hash: bytes, delta: bytes) -> None:
    """Hash, on the calling thread, the tree value ``delta_hash || delta`` of a revealed update, for
    ``smt_value_hashes`` to take instead of hashing it on the block's critical path."""
    if 32 + len(delta) < HASH_MIN_BYTES:
        return
    h = prepared(SMT_VAL).copy()
    h.update(delta_hash)
    h.update(delta)
    global _ahead_bytes
    with _ahead_lock:
        old = _ahead.pop(delta_hash, None)
        _ahead[delta_hash] = (delta, h.digest())
        _ahead_bytes += len(delta) - (0 if old is None else len(old[0]))
        while _ahead_bytes > AHEAD_BYTES:
            _, (dropped, _) = _ahead.popitem(last=False)
            _ahead_bytes -= len(dropped)


def _hashed_ahead(value: bytes) -> bytes | None:
    """The hash of ``value`` if it was hashed ahead and is, byte for byte, the value hashed."""
    global _ahead_bytes
    with _ahead_lock:
        entry = _ahead.pop(bytes(value[:32]), None)
        if entry is None:
            return None
        _ahead_bytes -= len(entry[0])
    delta, digest = entry
    return digest if len(value) == 32 + len(delta) and value.endswith(delta) else None


def _value_hash(value: bytes) -> bytes:
    return H(SMT_VAL, value)


def smt_value_hashes(values: Sequence[bytes]) -> list[bytes]:
    """``[H(SMT_VAL, v) for v in values]`` (``SparseMerkleTree``'s ``value_hashes``): values hashed
    ahead taken (``hash_update_value_ahead``), two or more others of at least ``HASH_MIN_BYTES``
    hashed side by side."""
    out = [b""] * len(values)
    large = []
    for i, v in enumerate(values):
        if len(v) < HASH_MIN_BYTES:
            out[i] = H(SMT_VAL, v)
        elif (digest := _hashed_ahead(v)) is not None:
            out[i] = digest
        else:
            large.append(i)
    if THREADS < 2 or len(large) < 2:
        for i in large:
            out[i] = H(SMT_VAL, values[i])
        return out
    large.sort(key=lambda i: -len(values[i]))  # the largest first: the threads finish close together
    for i, digest in zip(large, _map(_value_hash, [values[i] for i in large]), strict=True):
        out[i] = digest
    return out
