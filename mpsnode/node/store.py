"""The chain store: blocks, state, Merkle nodes, indexes and the mempool, behind one contract.

Two backends keep the same contract (``tests/test_store.py`` runs every test against both):

* ``MemoryStore``: dicts, for tests and tools.
* ``LmdbStore``: one LMDB environment with a named database per table. Durable: a ``commit`` that
  returned is on disk (``sync=True, metasync=True``), and a crash at any moment leaves the store as
  it was after the last commit that returned.

Everything one block changes (block, header, hash and tx indexes, receipts, events, task events,
state writes and deletes, sparse-Merkle nodes, meta, mempool removals and the new head) is a
``BlockCommit`` written in ONE write transaction: readers see all of it or none of it.

The store logic (key layouts, height check, mempool bookkeeping) is written once over a small
transaction interface (``_Txn``); each backend only supplies transactions. Key layouts:

=============  ===================================  ==========================================
table          key                                  value
=============  ===================================  ==========================================
headers        height u64 BE                        canonical header bytes
blocks         height u64 BE                        n u32 BE, n x (offset u64 BE, tx id length
                                                    u16 BE, tx id), then the block's bytes (empty
                                                    at genesis) without the n txs kept apart;
                                                    each goes back in at its offset
hashes         block hash                           height u64 BE
txs            tx id                                height u64 BE || index u32 BE
tx_bytes       tx id                                a signed tx of ``APART_MIN_BYTES`` (64 KiB)
                                                    or more: pending or included, written once
receipts       height u64 BE                        encoded receipts (opaque)
events         height u64 BE                        encoded events (opaque)
task_events    task id u64 BE || height u64 BE      encoded events of that task (opaque)
state          state key                            value, or its head when it has a tail
state_tails    state key                            start u64 BE || stop u64 BE || tx id: the
                                                    value ends with those bytes of that tx
nodes          node hash                            node record (never deleted)
meta           key                                  value; ``store:*`` keys are the store's own
mempool        insertion seq u64 BE                 tx id length u16 BE || tx id || 0 || tx
                                                    bytes, or for a tx kept apart || 1 || tx
                                                    length u64 BE || its last 66 bytes
mempool_idx    tx id                                insertion seq u64 BE
=============  ===================================  ==========================================

A block's bytes are put back together on read (``get_block``), a tailed state value too (every
state read): a revealed update's 2 MB are written to disk once, when the mempool takes the tx,
and neither its block nor the state copies them again (docs/ARCHITECTURE.md). Layout version 3;
a store of another layout is refused with a message saying so.

Threads: an LMDB write transaction is bound to the thread that began it, so ``commit``,
``mempool_put`` and ``mempool_remove`` each run whole inside the calling thread (call each one
whole inside one ``trio.to_thread.run_sync``). Writers are serialized: a second writer blocks
until the first returns. Reads may come from any thread. Never open the same LMDB path twice in
one process (LMDB's locking is per process); ``LmdbStore`` refuses to, use ``snapshot()`` instead.
"""

from __future__ import annotations

import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

import lmdb

from mpsnode.consensus.encoding import decode, encode, expect_bytes, expect_list, expect_uint, u64be
from mpsnode.consensus.errors import DecodeError
from mpsnode.node.errors import StoreCorrupt, StoreError, StoreFull

if TYPE_CHECKING:  # annotations only: `inspect` opens a store without loading numpy
    import numpy as np

_T = TypeVar("_T")  # what a retried LMDB call returns

GIB = 1 << 30
DEFAULT_MAP_SIZE = 64 * GIB

#: LMDB's largest key (compile-time default); empty keys are refused as well. Both backends enforce it.
MAX_KEY_SIZE = 511
U64_MAX = 2**64 - 1
HASH_SIZE = 32

#: Layout version written at creation; a store with another version is refused.
SCHEMA_VERSION = 3

HEADERS = "headers"
BLOCKS = "blocks"
HASHES = "hashes"
TXS = "txs"
TX_BYTES = "tx_bytes"
RECEIPTS = "receipts"
EVENTS = "events"
TASK_EVENTS = "task_events"
STATE = "state"
STATE_TAILS = "state_tails"
NODES = "nodes"
META = "meta"
MEMPOOL = "mempool"
MEMPOOL_IDX = "mempool_idx"
TABLES: tuple[str, ...] = (
    HEADERS,
    BLOCKS,
    HASHES,
    TXS,
    TX_BYTES,
    RECEIPTS,
    EVENTS,
    TASK_EVENTS,
    STATE,
    STATE_TAILS,
    NODES,
    META,
    MEMPOOL,
    MEMPOOL_IDX,
)

#: Meta keys under this prefix belong to the store; a ``BlockCommit`` may not write them.
RESERVED_META_PREFIX = b"store:"
META_HEAD = b"store:head"
META_SCHEMA = b"store:schema"
META_MEMPOOL_SEQ = b"store:mempool-seq"  # next insertion sequence number, u64 BE
META_MEMPOOL_SIZE = b"store:mempool-size"  # count u64 BE || total tx bytes u64 BE


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Head:
    """The tip of the chain: the last committed block and the state root after it."""

    height: int
    block_hash: bytes
    state_root: bytes
    timestamp_ms: int

    def encode(self) -> bytes:
        """Canonical msgpack ``[height, block_hash, state_root, timestamp_ms]``."""
        return encode([self.height, self.block_hash, self.state_root, self.timestamp_ms])

    @classmethod
    def decode(cls, data: bytes) -> Head:
        """Inverse of ``encode``; raises ``DecodeError`` on anything else."""
        obj = expect_list(decode(data, max_bytes=256), 4, "head")
        return cls(
            height=expect_uint(obj[0], "head.height"),
            block_hash=expect_bytes(obj[1], "head.block_hash", HASH_SIZE),
            state_root=expect_bytes(obj[2], "head.state_root", HASH_SIZE),
            timestamp_ms=expect_uint(obj[3], "head.timestamp_ms"),
        )


@dataclass(frozen=True, slots=True)
class BlockCommit:
    """Everything one block changes, written atomically by ``Store.commit``.

    The block's bytes are ``block``, then ``tx_bytes`` (each tx's, in ``tx_ids`` order), then
    ``block_tail``; with ``tx_bytes`` empty, ``block`` is all of them. Each tx's bytes are stored
    once, under its id: a tx the mempool holds is not written again (a tx id names one tx: bytes
    of the same length that end in the same 66 bytes, its signature, are taken to be the same).
    """

    head: Head
    block: bytes
    header: bytes
    tx_ids: tuple[bytes, ...]
    receipts: bytes
    events: bytes
    state_writes: Mapping[bytes, bytes | None]  # None deletes the key
    node_writes: Mapping[bytes, bytes]
    task_events: Mapping[int, bytes] = field(default_factory=dict)
    mempool_remove: tuple[bytes, ...] = ()
    meta: Mapping[bytes, bytes] = field(default_factory=dict)
    tx_bytes: tuple[bytes, ...] = ()
    block_tail: bytes = b""
    # A state write whose value ends with bytes of one of the block's txs: key -> (index in
    # ``tx_bytes``, start, stop). The store keeps only the value's head and a reference to those
    # bytes; reads put the value back together. A revealed update is in its tx and in the state
    # until the next round closes: this way its megabytes are written once.
    state_tails: Mapping[bytes, tuple[int, int, int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The transaction interface both backends implement


class _Txn(Protocol):
    def get(self, table: str, key: bytes) -> bytes | None: ...

    def view(self, table: str, key: bytes) -> bytes | memoryview | None:
        """The value without a copy where the backend can (LMDB's map): valid until the
        transaction ends, so read what is needed of it inside."""
        ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def put_new(self, table: str, key: bytes, value: bytes) -> None:
        """Put unless the key exists (content-addressed records: skip the rewrite)."""

    def delete(self, table: str, key: bytes) -> None: ...

    def empty(self, table: str) -> bool:
        """Whether ``table`` holds no entries."""
        ...

    def scan(self, table: str, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with ``prefix`` and is >= ``start``, in key order."""
        ...


# ---------------------------------------------------------------------------------------------
# Store logic, written once


def _u64(data: bytes, what: str) -> int:
    if len(data) != 8:
        raise StoreCorrupt(f"{what}: expected 8 bytes, found {len(data)}")
    return int.from_bytes(data, "big")


def _read_head(t: _Txn) -> Head | None:
    raw = t.get(META, META_HEAD)
    if raw is None:
        return None
    try:
        return Head.decode(raw)
    except DecodeError as exc:
        raise StoreCorrupt(f"stored head is unreadable: {exc.reason}") from None


def _is_key(key: bytes) -> bool:
    """Whether ``key`` could be stored at all (reads of impossible keys find nothing)."""
    return 1 <= len(key) <= MAX_KEY_SIZE


def _tail(t: _Txn, key: bytes) -> memoryview | None:
    """The tx bytes the state value of ``key`` ends with (``BlockCommit.state_tails``), or None."""
    raw = t.get(STATE_TAILS, key)
    if raw is None:
        return None
    if len(raw) <= 16:
        raise StoreCorrupt(f"state tail of {key.hex()}: {len(raw)} bytes, too short")
    start, stop, tx_id = int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:16], "big"), raw[16:]
    tx = t.view(TX_BYTES, tx_id)
    if tx is None or not start <= stop <= len(tx):
        raise StoreCorrupt(f"state tail of {key.hex()} points past the bytes of tx {tx_id.hex()}")
    return memoryview(tx)[start:stop]


#: A tx of at least this many bytes is stored apart, under its id (``tx_bytes``), once for the
#: mempool and its block; a smaller one is kept in its mempool entry and in its block's record.
APART_MIN_BYTES = 1 << 16


def _apart(tx: bytes) -> bool:
    return len(tx) >= APART_MIN_BYTES


def _block_record(c: BlockCommit) -> bytes:
    """What ``blocks`` holds for a block: the number of txs stored apart, then for each where its
    bytes go (u64 BE) and its id (u16 BE length first), then the block's bytes without them."""
    holes: list[bytes] = []
    body: list[bytes] = [c.block]
    at = len(c.block)
    for tx_id, raw in zip(c.tx_ids, c.tx_bytes, strict=False):
        if _apart(raw):
            holes.append(u64be(at) + len(tx_id).to_bytes(2, "big") + tx_id)
        else:
            body.append(raw)
            at += len(raw)
    body.append(c.block_tail)
    return b"".join([len(holes).to_bytes(4, "big"), *holes, *body])


def _read_block_record(record: bytes | memoryview, height: int) -> tuple[list[tuple[int, bytes]], int]:
    """The txs stored apart (where in the body, id) and where the body starts."""
    try:
        at, holes = 4, []
        for _ in range(int.from_bytes(record[:4], "big")):
            n = int.from_bytes(record[at + 8 : at + 10], "big")
            holes.append((int.from_bytes(record[at : at + 8], "big"), bytes(record[at + 10 : at + 10 + n])))
            at += 10 + n
        if at > len(record) or any(not 0 <= where <= len(record) - at for where, _ in holes):
            raise ValueError
        return holes, at
    except (ValueError, IndexError):
        raise StoreCorrupt(f"block record {height} is malformed") from None


def _block_bytes(t: _Txn, record: bytes | memoryview, height: int) -> bytes:
    holes, start = _read_block_record(record, height)
    if not holes:
        return bytes(record[start:])
    pieces: list[bytes | memoryview] = []
    last = 0
    body = memoryview(record)[start:]
    for where, tx_id in holes:
        pieces.append(body[last:where])
        tx = t.view(TX_BYTES, tx_id)
        if tx is None:
            raise StoreCorrupt(f"block {height} names tx {tx_id.hex()}, whose bytes are missing")
        pieces.append(tx)
        last = where
    pieces.append(body[last:])
    return b"".join(pieces)


def _joined(t: _Txn, key: bytes, head: bytes) -> bytes:
    """The whole state value of ``key`` whose stored part is ``head``."""
    tail = _tail(t, key)
    return head if tail is None else b"".join((head, tail))


def _state_items(t: _Txn, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    tails = not t.empty(STATE_TAILS)
    for key, head in t.scan(STATE, prefix):
        yield key, (_joined(t, key, head) if tails else head)


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, bytes):
        raise StoreError(f"{what} must be bytes, got {type(key).__name__}")
    if not 1 <= len(key) <= MAX_KEY_SIZE:
        raise StoreError(f"{what} must be 1..{MAX_KEY_SIZE} bytes, got {len(key)}")


def _check_value(value: object, what: str) -> None:
    if not isinstance(value, bytes):
        raise StoreError(f"{what} must be bytes, got {type(value).__name__}")


def _check_uint(n: object, what: str) -> None:
    if type(n) is not int or not 0 <= n <= U64_MAX:
        raise StoreError(f"{what} must be an integer in 0..2^64-1, got {n!r}")


def _check_commit(c: BlockCommit) -> None:
    """Refuse a malformed commit before any write starts."""
    if not isinstance(c, BlockCommit):
        raise StoreError(f"commit takes a BlockCommit, got {type(c).__name__}")
    h = c.head
    if not isinstance(h, Head):
        raise StoreError(f"head must be a Head, got {type(h).__name__}")
    _check_uint(h.height, "head.height")
    _check_uint(h.timestamp_ms, "head.timestamp_ms")
    for name, value in (("head.block_hash", h.block_hash), ("head.state_root", h.state_root)):
        _check_value(value, name)
        if len(value) != HASH_SIZE:
            raise StoreError(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")
    for name, blob in (
        ("block", c.block),
        ("header", c.header),
        ("receipts", c.receipts),
        ("events", c.events),
    ):
        _check_value(blob, name)
    for tx_id in c.tx_ids:
        _check_key(tx_id, "tx id")
    for key, state_value in c.state_writes.items():
        _check_key(key, "state key")
        if state_value is not None:
            _check_value(state_value, f"state value of {key.hex()}")
    _check_value(c.block_tail, "block tail")
    if c.tx_bytes and len(c.tx_bytes) != len(c.tx_ids):
        raise StoreError(f"{len(c.tx_bytes)} tx byte strings for {len(c.tx_ids)} tx ids")
    for raw in c.tx_bytes:
        _check_value(raw, "tx bytes")
    for key, ref in c.state_tails.items():
        if type(ref) is not tuple or len(ref) != 3:
            raise StoreError(f"state tail of {key.hex()} must be (tx index, start, stop)")
        index, start, stop = ref
        tailed = c.state_writes.get(key)
        if tailed is None:
            raise StoreError(f"state tail of {key.hex()} without a state value")
        for n, what in ((index, "tx index"), (start, "start"), (stop, "stop")):
            _check_uint(n, f"state tail {what}")
        if (
            index >= len(c.tx_bytes)
            or not _apart(c.tx_bytes[index])
            or not start < stop <= len(c.tx_bytes[index])
            or stop - start > len(tailed)
        ):
            raise StoreError(f"state tail of {key.hex()} is not within a tx stored apart and the value")
        if not tailed.endswith(memoryview(c.tx_bytes[index])[start:stop]):
            raise StoreError(f"state value of {key.hex()} does not end with its tail in the block")
    for key, value in c.node_writes.items():
        _check_key(key, "node hash")
        _check_value(value, f"node record of {key.hex()}")
    for task_id, blob in c.task_events.items():
        _check_uint(task_id, "task id")
        _check_value(blob, f"events of task {task_id}")
    for tx_id in c.mempool_remove:
        _check_key(tx_id, "mempool tx id")
    for key, value in c.meta.items():
        _check_key(key, "meta key")
        if key.startswith(RESERVED_META_PREFIX):
            raise StoreError(f"meta key {key!r} is reserved for the store (prefix {RESERVED_META_PREFIX!r})")
        _check_value(value, f"meta value of {key!r}")


def _apply_commit(t: _Txn, c: BlockCommit) -> None:
    head = _read_head(t)
    expected = 0 if head is None else head.height + 1
    if c.head.height != expected:
        now = "the store is empty" if head is None else f"the head is at height {head.height}"
        raise StoreError(f"cannot commit height {c.head.height}: {now}, the next height is {expected}")
    h = u64be(c.head.height)
    t.put(BLOCKS, h, _block_record(c))
    t.put(HEADERS, h, c.header)
    t.put(HASHES, c.head.block_hash, h)
    for index, tx_id in enumerate(c.tx_ids):
        t.put(TXS, tx_id, h + index.to_bytes(4, "big"))
    for tx_id, raw in zip(c.tx_ids, c.tx_bytes, strict=False):
        if _apart(raw) and not _pending_as(t, tx_id, raw):  # a pending tx's are stored already
            t.put(TX_BYTES, tx_id, raw)
    t.put(RECEIPTS, h, c.receipts)
    t.put(EVENTS, h, c.events)
    for task_id in sorted(c.task_events):
        t.put(TASK_EVENTS, u64be(task_id) + h, c.task_events[task_id])
    # Key order keeps LMDB's page touches local. A key's old tail goes with its old value.
    tails, old_tails = c.state_tails, not t.empty(STATE_TAILS)
    for key in sorted(c.state_writes):
        value = c.state_writes[key]
        if value is None:
            t.delete(STATE, key)
        elif key in tails:
            index, start, stop = tails[key]
            t.put(STATE, key, value[: len(value) - (stop - start)])
            t.put(STATE_TAILS, key, u64be(start) + u64be(stop) + c.tx_ids[index])
            continue
        else:
            t.put(STATE, key, value)
        if old_tails:
            t.delete(STATE_TAILS, key)
    for key in sorted(c.node_writes):
        t.put_new(NODES, key, c.node_writes[key])
    for key in sorted(c.meta):
        t.put(META, key, c.meta[key])
    _mempool_remove(t, c.mempool_remove)
    t.put(META, META_HEAD, c.head.encode())


SIGNED_TAIL = 66  # a signed tx's last bytes: its 64-byte signature and the signature's header


def _pack_entry(tx_id: bytes, tx: bytes) -> bytes:
    """A mempool entry: the tx id, then the tx's bytes, or for a tx stored apart (``tx_bytes``)
    its length and last bytes."""
    head = len(tx_id).to_bytes(2, "big") + tx_id
    if _apart(tx):
        return head + b"\x01" + u64be(len(tx)) + tx[-SIGNED_TAIL:]
    return head + b"\x00" + tx


def _unpack_entry(entry: bytes) -> tuple[bytes, bytes | None, int, bytes]:
    """(tx id, the tx's bytes or None when stored apart, its length, its last bytes)."""
    n = int.from_bytes(entry[:2], "big")
    if len(entry) < 3 + n or entry[2 + n] not in (0, 1) or (entry[2 + n] == 1 and len(entry) < 11 + n):
        raise StoreCorrupt("mempool entry is malformed")
    tx_id = entry[2 : 2 + n]
    if entry[2 + n] == 0:
        tx = entry[3 + n :]
        return tx_id, tx, len(tx), tx[-SIGNED_TAIL:]
    return tx_id, None, int.from_bytes(entry[3 + n : 11 + n], "big"), entry[11 + n :]


def _pending_as(t: _Txn, tx_id: bytes, tx: bytes) -> bool:
    """Whether the mempool holds ``tx_id`` with these bytes (the same length and last bytes)."""
    seq = t.get(MEMPOOL_IDX, tx_id)
    entry = None if seq is None else t.get(MEMPOOL, seq)
    if entry is None:
        return False
    _, _, size, tail = _unpack_entry(entry)
    return size == len(tx) and tail == tx[-SIGNED_TAIL:]


def _entry_bytes(t: _Txn, entry: bytes) -> tuple[bytes, bytes]:
    """(tx id, tx bytes) of a mempool entry."""
    tx_id, tx, _, _ = _unpack_entry(entry)
    if tx is None:
        tx = t.get(TX_BYTES, tx_id)
        if tx is None:
            raise StoreCorrupt(f"mempool holds tx {tx_id.hex()}, whose bytes are missing")
    return tx_id, tx


def _mempool_counters(t: _Txn) -> tuple[int, int, int]:
    """(next seq, count, total tx bytes)."""
    raw_seq = t.get(META, META_MEMPOOL_SEQ)
    seq = 0 if raw_seq is None else _u64(raw_seq, "mempool seq")
    raw_size = t.get(META, META_MEMPOOL_SIZE)
    if raw_size is None:
        return seq, 0, 0
    if len(raw_size) != 16:
        raise StoreCorrupt(f"mempool size: expected 16 bytes, found {len(raw_size)}")
    return seq, _u64(raw_size[:8], "mempool count"), _u64(raw_size[8:], "mempool bytes")


def _set_mempool_counters(t: _Txn, seq: int, count: int, size: int) -> None:
    t.put(META, META_MEMPOOL_SEQ, u64be(seq))
    t.put(META, META_MEMPOOL_SIZE, u64be(count) + u64be(size))


def _mempool_put(t: _Txn, items: Sequence[tuple[bytes, bytes]]) -> int:
    seq, count, size = _mempool_counters(t)
    added = 0
    for tx_id, tx in items:
        if t.get(MEMPOOL_IDX, tx_id) is not None or t.get(TXS, tx_id) is not None:
            continue  # already pending (keep its place and bytes) or already in a block
        t.put(MEMPOOL, u64be(seq), _pack_entry(tx_id, tx))
        t.put(MEMPOOL_IDX, tx_id, u64be(seq))
        if _apart(tx):
            t.put(TX_BYTES, tx_id, tx)
        seq += 1
        count += 1
        size += len(tx)
        added += 1
    if added:
        _set_mempool_counters(t, seq, count, size)
    return added


def _mempool_remove(t: _Txn, ids: Iterable[bytes]) -> int:
    seq, count, size = _mempool_counters(t)
    removed = 0
    for tx_id in ids:
        raw_seq = t.get(MEMPOOL_IDX, tx_id)
        if raw_seq is None:
            continue
        entry = t.get(MEMPOOL, raw_seq)
        if entry is None:
            raise StoreCorrupt(f"mempool index names tx {tx_id.hex()} but its entry is missing")
        t.delete(MEMPOOL, raw_seq)
        t.delete(MEMPOOL_IDX, tx_id)
        _, inline, n, _ = _unpack_entry(entry)
        if inline is None and t.get(TXS, tx_id) is None:  # dropped, not included: its bytes go
            t.delete(TX_BYTES, tx_id)
        count -= 1
        size -= n
        removed += 1
    if removed:
        if count < 0 or size < 0:
            raise StoreCorrupt("mempool counters went negative")
        _set_mempool_counters(t, seq, count, size)
    return removed


def _check_mempool_items(items: Sequence[tuple[bytes, bytes]]) -> None:
    for pair in items:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise StoreError("mempool_put takes (tx_id, tx_bytes) pairs")
        _check_key(pair[0], "mempool tx id")
        _check_value(pair[1], "mempool tx bytes")


# ---------------------------------------------------------------------------------------------
# The public contract


class StoreReader(ABC):
    """Every read of the store. ``Store`` reads through short transactions; a ``StoreView`` through one."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[_Txn]:
        """A transaction to read from, released on exit."""

    def head(self) -> Head | None:
        with self._reading() as t:
            return _read_head(t)

    def get_state(self, key: bytes) -> bytes | None:
        if not _is_key(key):
            return None
        with self._reading() as t:
            head = t.get(STATE, key)
            return None if head is None else _joined(t, key, head)

    def iter_state(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """State items whose key starts with ``prefix``, in key order, from one consistent view.

        The view opens at the first ``next()``; an LMDB reader stays open until the iterator is
        exhausted or dropped, so consume it promptly.
        """
        if len(prefix) > MAX_KEY_SIZE:
            return
        with self._reading() as t:
            yield from _state_items(t, prefix)

    def get_state_range(self, key: bytes, start: int, stop: int) -> bytes | None:
        """``value[start:stop]`` of a state key, only that part copied out."""
        with self._reading() as t:
            head = t.view(STATE, key) if _is_key(key) else None
            if head is None:
                return None
            tail = _tail(t, key)
            n = len(head)
            if tail is None or 0 <= start <= stop <= n:
                return bytes(head[start:stop])
            if 0 <= n <= start <= stop:
                return bytes(tail[start - n : stop - n])
            return b"".join((head, tail))[start:stop]

    def read_states_into(self, reads: Sequence[tuple[bytes, int, np.ndarray]]) -> list[int | None]:
        """For each ``(key, start, out)``: copy ``value[start:]`` of the state key into ``out`` (a
        writable uint8 array) when it is exactly ``out``'s length; the values' lengths (None:
        absent) in order. All from one view, straight from LMDB's pages, the large copies spread
        over a few threads (one core's memory bandwidth is a fraction of the machine's)."""
        # numpy and the threads: only a round close's batch read needs them, `inspect` starts without
        from mpsnode.node import parallel  # noqa: PLC0415

        with self._reading() as t:
            lengths: list[int | None] = []
            copies = []
            for key, start, out in reads:
                head = t.view(STATE, key) if _is_key(key) else None
                if head is None:
                    lengths.append(None)
                    continue
                tail = _tail(t, key)
                n = len(head) + (0 if tail is None else len(tail))
                lengths.append(n)
                if n - start != out.nbytes:
                    continue
                if tail is None:
                    copies.append((head, start, out))
                elif start >= len(head):
                    copies.append((tail, start - len(head), out))
                else:
                    copies.append((b"".join((head, tail)), start, out))
            parallel.copy_all(copies)
            return lengths

    def get_node(self, node_hash: bytes) -> bytes | None:
        """Sparse-Merkle node record by hash: the store is the tree's NodeStore."""
        with self._reading() as t:
            return t.get(NODES, node_hash) if _is_key(node_hash) else None

    def get_block(self, height: int) -> bytes | None:
        if not 0 <= height <= U64_MAX:
            return None
        with self._reading() as t:
            record = t.view(BLOCKS, u64be(height))
            return None if record is None else _block_bytes(t, record, height)

    def get_block_tail(self, height: int, n: int) -> bytes | None:
        """The last ``n`` bytes of block ``height`` (where its signature is), or None if there is no
        such block; the block's txs are read only when the tail is shorter than ``n``."""
        if not 0 <= height <= U64_MAX:
            return None
        with self._reading() as t:
            record = t.view(BLOCKS, u64be(height))
            if record is None:
                return None
            holes, start = _read_block_record(record, height)
            after = len(record) - start - (holes[-1][0] if holes else 0)  # body bytes after the last tx apart
            if 0 < n <= after:
                return bytes(record[len(record) - n :])
            return _block_bytes(t, record, height)[-n:]

    def get_header(self, height: int) -> bytes | None:
        with self._reading() as t:
            return t.get(HEADERS, u64be(height)) if 0 <= height <= U64_MAX else None

    def get_height(self, block_hash: bytes) -> int | None:
        with self._reading() as t:
            raw = t.get(HASHES, block_hash) if _is_key(block_hash) else None
        return None if raw is None else _u64(raw, "block height")

    def get_tx_location(self, tx_id: bytes) -> tuple[int, int] | None:
        """(height, index in the block) of an included tx."""
        with self._reading() as t:
            raw = t.get(TXS, tx_id) if _is_key(tx_id) else None
        if raw is None:
            return None
        if len(raw) != 12:
            raise StoreCorrupt(f"tx location of {tx_id.hex()}: expected 12 bytes, found {len(raw)}")
        return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big")

    def get_receipts(self, height: int) -> bytes | None:
        with self._reading() as t:
            return t.get(RECEIPTS, u64be(height)) if 0 <= height <= U64_MAX else None

    def get_events(self, height: int) -> bytes | None:
        with self._reading() as t:
            return t.get(EVENTS, u64be(height)) if 0 <= height <= U64_MAX else None

    def get_task_events(self, task_id: int, start_height: int = 0) -> list[tuple[int, bytes]]:
        """(height, events blob) of every block with events for ``task_id``, from ``start_height`` up."""
        if not 0 <= task_id <= U64_MAX or not 0 <= start_height <= U64_MAX:
            return []
        prefix = u64be(task_id)
        with self._reading() as t:
            return [
                (_u64(k[8:], "task event height"), v)
                for k, v in t.scan(TASK_EVENTS, prefix, prefix + u64be(start_height))
            ]

    def get_meta(self, key: bytes) -> bytes | None:
        with self._reading() as t:
            return t.get(META, key) if _is_key(key) else None

    def mempool_get(self, tx_id: bytes) -> bytes | None:
        with self._reading() as t:
            raw_seq = t.get(MEMPOOL_IDX, tx_id) if _is_key(tx_id) else None
            entry = None if raw_seq is None else t.get(MEMPOOL, raw_seq)
            return None if entry is None else _entry_bytes(t, entry)[1]

    def mempool_items(self, limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """(tx id, tx bytes) pairs in insertion order, the first ``limit`` of them if given."""
        out: list[tuple[bytes, bytes]] = []
        if limit is not None and limit <= 0:
            return out
        with self._reading() as t:
            for _, entry in t.scan(MEMPOOL):
                out.append(_entry_bytes(t, entry))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def mempool_size(self) -> tuple[int, int]:
        """(number of pending txs, their total bytes)."""
        with self._reading() as t:
            _, count, size = _mempool_counters(t)
        return count, size


class StoreView(StoreReader):
    """A consistent read view: every read sees the store as of ``Store.snapshot()``. Close it."""

    def __init__(
        self,
        txn: _Txn,
        release: Callable[[], None],
        errors: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self._txn: _Txn | None = txn
        self._release = release
        self._errors = errors
        self._tails: bool | None = None  # whether the view holds state tails, once asked

    # the STF's reads, without a context manager each (the block builder makes one per account)
    def get_state(self, key: bytes) -> bytes | None:
        head = self._get(STATE, key)
        if head is None:
            return None
        if self._tails is None:
            with self._reading() as t:
                self._tails = not t.empty(STATE_TAILS)
        if not self._tails:  # the common case: no context manager for it
            return head
        with self._reading() as t:
            return _joined(t, key, head)

    def get_node(self, node_hash: bytes) -> bytes | None:
        return self._get(NODES, node_hash)

    def _get(self, table: str, key: bytes) -> bytes | None:
        txn = self._txn
        if txn is None:
            raise StoreError("snapshot is closed")
        if not _is_key(key):
            return None
        try:
            return txn.get(table, key)
        except lmdb.Error:  # read again where the error is turned into the store's
            with self._reading() as t:
                return t.get(table, key)

    @contextmanager
    def _reading(self) -> Iterator[_Txn]:
        if self._txn is None:
            raise StoreError("snapshot is closed")
        if self._errors is None:
            yield self._txn
        else:
            with self._errors():
                yield self._txn

    def close(self) -> None:
        if self._txn is not None:
            self._txn = None
            with suppress(lmdb.Error):  # the store closed first, which already ended the transaction
                self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Store(StoreReader):
    """The chain store contract: reads, atomic block commits, the durable mempool."""

    @property
    def readonly(self) -> bool:
        return False

    @abstractmethod
    def _writing(self) -> AbstractContextManager[_Txn]:
        """A write transaction: committed on normal exit, aborted (nothing written) on error."""

    @abstractmethod
    def snapshot(self) -> StoreView:
        """A read view consistent across calls; close it when done."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; idempotent. Later calls raise ``StoreError``."""

    def commit(self, c: BlockCommit, *, before_commit: Callable[[], None] | None = None) -> None:
        """Write everything ``c`` changes in ONE write transaction, or nothing.

        ``c.head.height`` must be the current head's height + 1 (0 on an empty store), else
        ``StoreError``. Runs whole in the calling thread. ``before_commit`` is called in that
        thread after the last write and before the commit (the fsync) starts; a caller can use
        it to tell when the writing part is over.
        """
        _check_commit(c)
        with self._writing() as t:
            _apply_commit(t, c)
            if before_commit is not None:
                before_commit()

    def mempool_put(
        self, items: Sequence[tuple[bytes, bytes]], *, before_commit: Callable[[], None] | None = None
    ) -> int:
        """Add (tx id, signed tx bytes) pairs in ONE write transaction (the group commit).

        A tx id already pending is left where it is. Returns how many were added. Durable on return.
        ``before_commit`` as in ``commit``.
        """
        items = list(items)
        _check_mempool_items(items)
        if not items:
            return 0
        with self._writing() as t:
            added = _mempool_put(t, items)
            if before_commit is not None:
                before_commit()
            return added

    def mempool_remove(self, ids: Iterable[bytes], *, before_commit: Callable[[], None] | None = None) -> int:
        """Drop pending txs by id (unknown ids are ignored); returns how many were removed. Durable on
        return; ``before_commit`` as in ``commit``."""
        ids = list(ids)
        for tx_id in ids:
            _check_key(tx_id, "mempool tx id")
        if not ids:
            return 0
        with self._writing() as t:
            removed = _mempool_remove(t, ids)
            if before_commit is not None:
                before_commit()
            return removed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Memory backend


class _MemTxn:
    """Reads over the tables; when ``pending`` is given, writes are buffered there until applied."""

    __slots__ = ("_lock", "_pending", "_tables")

    def __init__(
        self,
        tables: dict[str, dict[bytes, bytes]],
        lock: threading.RLock,
        pending: dict[str, dict[bytes, bytes | None]] | None = None,
    ) -> None:
        self._tables = tables
        self._pending = pending
        self._lock = lock

    def get(self, table: str, key: bytes) -> bytes | None:
        if self._pending is not None:
            pend = self._pending[table]
            if key in pend:
                return pend[key]
        return self._tables[table].get(key)

    def view(self, table: str, key: bytes) -> bytes | None:
        return self.get(table, key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        if self._pending is None:
            raise StoreError("write in a read transaction")
        self._pending[table][key] = value

    def put_new(self, table: str, key: bytes, value: bytes) -> None:
        if self.get(table, key) is None:
            self.put(table, key, value)

    def delete(self, table: str, key: bytes) -> None:
        if self._pending is None:
            raise StoreError("write in a read transaction")
        self._pending[table][key] = None

    def empty(self, table: str) -> bool:
        # True only when sure: a pending delete may empty the table, and False is always safe
        with self._lock:
            pending = () if self._pending is None else self._pending[table].values()
            return not self._tables[table] and all(v is None for v in pending)

    def scan(self, table: str, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        # Materialized under the lock: a concurrent commit cannot change the dict mid-iteration.
        with self._lock:
            base = self._tables[table]
            keys = set(base)
            if self._pending is not None:
                keys |= set(self._pending[table])
            chosen = sorted(k for k in keys if k.startswith(prefix) and k >= start)
            items = [(k, v) for k in chosen if (v := self.get(table, k)) is not None]
        return iter(items)


class MemoryStore(Store):
    """The store in dicts. Same contract as ``LmdbStore``, no durability.

    Writes buffer in a transaction and apply under a lock only when the whole write succeeded;
    each read call holds the same lock, so it never sees half a commit. ``snapshot()`` copies
    every table except the content-addressed nodes (which only ever grow, so sharing them is
    safe): O(state size), fine for tests and small chains.
    """

    def __init__(self) -> None:
        self._tables: dict[str, dict[bytes, bytes]] = {name: {} for name in TABLES}
        self._lock = threading.RLock()
        self._closed = False
        self._tables[META][META_SCHEMA] = encode([SCHEMA_VERSION])

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    @contextmanager
    def _reading(self) -> Iterator[_Txn]:
        self._check_open()
        with self._lock:
            yield _MemTxn(self._tables, self._lock)

    def iter_state(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        # Copy out under the lock, then release it: a consumer may commit while iterating.
        with self._reading() as t:
            items = list(_state_items(t, prefix))
        yield from items

    @contextmanager
    def _writing(self) -> Iterator[_Txn]:
        self._check_open()
        with self._lock:  # one writer at a time, as in LMDB
            pending: dict[str, dict[bytes, bytes | None]] = {name: {} for name in TABLES}
            yield _MemTxn(self._tables, self._lock, pending)
            for name, changes in pending.items():
                table = self._tables[name]
                for key, value in changes.items():
                    if value is None:
                        table.pop(key, None)
                    else:
                        table[key] = value

    def snapshot(self) -> StoreView:
        self._check_open()
        with self._lock:
            copy = {name: (t if name == NODES else dict(t)) for name, t in self._tables.items()}
        return StoreView(_MemTxn(copy, threading.RLock()), lambda: None)

    def close(self) -> None:
        self._closed = True


# ---------------------------------------------------------------------------------------------
# LMDB backend


class _LmdbTxn:
    __slots__ = ("_dbs", "_txn")

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._dbs[table])
        return None if value is None else bytes(value)

    def view(self, table: str, key: bytes) -> bytes | memoryview | None:
        value: bytes | memoryview | None = self._txn.get(key, db=self._dbs[table])
        return value

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[table])

    def put_new(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[table], overwrite=False)

    def delete(self, table: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[table])

    def empty(self, table: str) -> bool:
        return int(self._txn.stat(self._dbs[table])["entries"]) == 0

    def scan(self, table: str, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            if not cursor.set_range(max(prefix, start)):
                return
            for key, value in cursor.iternext():
                if not bytes(key).startswith(prefix):
                    return
                yield bytes(key), bytes(value)


# LMDB must not be opened twice in one process: its fcntl locks are per process, so a second
# open would believe it is alone and reset the shared lock table under the first.
_OPEN_PATHS: set[str] = set()
_OPEN_PATHS_LOCK = threading.Lock()


def _release(path: str, env: lmdb.Environment) -> None:
    env.close()
    with _OPEN_PATHS_LOCK:
        _OPEN_PATHS.discard(path)


class LmdbStore(Store):
    """The store in one LMDB environment (a directory holding ``data.mdb`` and ``lock.mdb``).

    ``map_size`` is the most the data file may grow to; the file is sparse and grows only as it
    is used, so a large value costs nothing. When it is reached, the write raises ``StoreFull``
    and nothing of it is stored; reopen with a larger ``map_size``. ``readonly=True`` opens with
    LMDB's locking on, so it can read a store another process is writing; its writes raise
    ``StoreError``. Every ``commit`` and mempool write is on disk when it returns.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False
    ) -> None:
        self._path = os.path.realpath(os.fspath(path))
        self._map_size = map_size
        self._readonly = readonly
        self._closed = True
        with _OPEN_PATHS_LOCK:
            if self._path in _OPEN_PATHS:
                raise StoreError(
                    f"store {self._path} is already open in this process: share that handle "
                    "(or its snapshot()); LMDB must not be opened twice in one process"
                )
            _OPEN_PATHS.add(self._path)
        try:
            self._env = self._open_env()
            self._dbs = self._open_dbs()
        except BaseException:
            with _OPEN_PATHS_LOCK:
                _OPEN_PATHS.discard(self._path)
            env = getattr(self, "_env", None)
            if env is not None:
                env.close()
            raise
        self._closed = False
        self._finalizer = weakref.finalize(self, _release, self._path, self._env)

    @property
    def path(self) -> str:
        return self._path

    @property
    def map_size(self) -> int:
        return self._map_size

    @property
    def readonly(self) -> bool:
        return self._readonly

    def _open_env(self) -> lmdb.Environment:
        if self._readonly and not os.path.isdir(self._path):
            raise StoreError(f"no store at {self._path} (read-only open does not create one)")
        try:
            env = lmdb.open(
                self._path,
                map_size=self._map_size,
                subdir=True,
                readonly=self._readonly,
                lock=True,
                create=not self._readonly,
                max_dbs=len(TABLES) + 4,
                sync=True,
                metasync=True,
                writemap=False,
                map_async=False,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open LMDB store at {self._path}: {exc}") from None
        if not self._readonly:
            with suppress(lmdb.Error):
                env.reader_check()  # free reader slots of killed processes, or they pin old pages
        return env

    def _open_dbs(self) -> dict[str, lmdb._Database]:
        dbs: dict[str, lmdb._Database] = {}
        try:
            if self._readonly:
                dbs[META] = self._env.open_db(META.encode(), create=False)
                self._check_schema(dbs[META])  # an older layout lacks tables: say so first
                for name in TABLES:
                    dbs[name] = self._env.open_db(name.encode(), create=False)
            else:
                names = {name.encode() for name in TABLES}
                with self._env.begin() as txn:  # the main database holds only our table names
                    existing = [bytes(k) for k in txn.cursor().iternext(values=False)]
                foreign = [k for k in existing if k not in names]
                if foreign:
                    raise StoreError(f"{self._path} is not an mpsnode store (holds the key {foreign[0]!r})")
                if META.encode() in existing:  # another layout is refused before anything is added
                    self._check_schema(self._env.open_db(META.encode(), create=False))
                with self._env.begin(write=True) as txn:
                    for name in TABLES:
                        dbs[name] = self._env.open_db(name.encode(), txn=txn, create=True)
                    meta = dbs[META]
                    if txn.get(META_SCHEMA, db=meta) is None and txn.get(META_HEAD, db=meta) is None:
                        txn.put(META_SCHEMA, encode([SCHEMA_VERSION]), db=meta)
                self._check_schema(dbs[META])
        except lmdb.NotFoundError:
            raise StoreError(f"{self._path} is not an mpsnode store (a table is missing)") from None
        except lmdb.MapFullError:
            raise StoreFull(self._full_message()) from None
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the tables of {self._path}: {exc}") from None
        return dbs

    def _check_schema(self, meta: lmdb._Database) -> None:
        with self._env.begin(db=meta) as txn:
            schema = txn.get(META_SCHEMA, db=meta)
        if schema != encode([SCHEMA_VERSION]):
            try:
                layout = str(decode(schema or b"", max_bytes=64)[0])
            except (DecodeError, IndexError, KeyError, TypeError):
                layout = repr(schema)
            raise StoreCorrupt(
                f"{self._path} has store layout {layout}, this build reads layout {SCHEMA_VERSION}: "
                "it was written by another version of mpsnode; start a new home (a verifier syncs "
                "again from its upstream)"
            )

    def _full_message(self) -> str:
        return (
            f"LMDB store {self._path} is full (map_size={self._map_size} bytes); nothing of this "
            f"write was stored. Reopen the store with a larger map_size."
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except lmdb.MapFullError:
            raise StoreFull(self._full_message()) from None
        except lmdb.CorruptedError as exc:
            raise StoreCorrupt(f"LMDB store {self._path} is corrupt: {exc}") from None
        except lmdb.Error as exc:
            raise StoreError(f"LMDB error in {self._path}: {exc}") from None

    def _begin(self, write: bool) -> lmdb.Transaction:
        return self._adopting_resize(lambda: self._env.begin(write=write))

    def _begin_buffered(self) -> lmdb.Transaction[memoryview]:
        """A read transaction whose gets return buffers into the map instead of copies."""
        return self._adopting_resize(lambda: self._env.begin(buffers=True))

    def _adopting_resize(self, begin: Callable[[], _T]) -> _T:
        """``begin()``, once more if another process grew the map: its size adopted first."""
        try:
            return begin()
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return begin()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self._path} is closed")

    @contextmanager
    def _reading(self) -> Iterator[_Txn]:
        self._check_open()
        with self._errors():
            txn = self._begin_buffered()  # gets copy out (``_LmdbTxn.get``); views read the map
            try:
                yield _LmdbTxn(txn, self._dbs)
            finally:
                txn.abort()

    @contextmanager
    def _writing(self) -> Iterator[_Txn]:
        self._check_open()
        if self._readonly:
            raise StoreError(f"store {self._path} is open read-only: open it without readonly=True to write")
        # Transaction.__exit__ commits on success and aborts on any exception.
        with self._errors(), self._begin(write=True) as txn:
            yield _LmdbTxn(txn, self._dbs)

    def snapshot(self) -> StoreView:
        """One LMDB read transaction held until ``close()``.

        Usable from any thread, one at a time. A long-lived snapshot keeps the pages it sees from
        being reused, so the file grows while it is open: close it after each block.
        """
        self._check_open()
        with self._errors():
            txn = self._begin_buffered()
        return StoreView(_LmdbTxn(txn, self._dbs), txn.abort, self._errors)

    def sync(self) -> None:
        """Flush to disk (commits already do; kept for callers that change the defaults)."""
        self._check_open()
        if not self._readonly:
            with self._errors():
                self._env.sync(True)

    def stat(self) -> dict[str, int]:
        """Entries per table, and the bytes of the data file in use."""
        self._check_open()
        with self._errors(), self._env.begin() as txn:
            out = {name: int(txn.stat(db)["entries"]) for name, db in self._dbs.items()}
            info = self._env.info()
            out["used_bytes"] = (int(info["last_pgno"]) + 1) * int(self._env.stat()["psize"])
        return out

    def close(self) -> None:
        """Close the environment; open snapshots and iterators become invalid. Idempotent."""
        if not self._closed:
            self._closed = True
            self._finalizer()
