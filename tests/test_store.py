"""Storage contract tests: written once, run against every backend (MemoryStore, LmdbStore).

LMDB-only behaviour (reopen, read-only handles, a full map, one handle per process) follows the
contract tests.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import lmdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsnode.consensus.errors import DecodeError
from mpsnode.consensus.events import RoundClosed
from mpsnode.consensus.model import param_count
from mpsnode.consensus.state import RoundPhase, State, update_key
from mpsnode.consensus.tx import JoinTask, Stake, Transfer
from mpsnode.node.chain import NodeCache
from mpsnode.node.errors import StoreError, StoreFull
from mpsnode.node.store import (
    APART_MIN_BYTES,
    MAX_KEY_SIZE,
    BlockCommit,
    Head,
    LmdbStore,
    MemoryStore,
    Store,
)

from chainkit import Kit, random_delta, small_task

REPO = Path(__file__).resolve().parent.parent


def h32(tag: str) -> bytes:
    return hashlib.blake2b(tag.encode(), digest_size=32).digest()


def make_commit(
    height: int,
    *,
    state: Mapping[bytes, bytes | None] | None = None,
    nodes: Mapping[bytes, bytes] | None = None,
    tx_ids: tuple[bytes, ...] = (),
    task_events: Mapping[int, bytes] | None = None,
    mempool_remove: tuple[bytes, ...] = (),
    meta: Mapping[bytes, bytes] | None = None,
    root: bytes | None = None,
) -> BlockCommit:
    return BlockCommit(
        head=Head(height, h32(f"block {height}"), root or h32(f"root {height}"), 1000 + height),
        block=b"" if height == 0 else f"block bytes {height}".encode(),
        header=f"header bytes {height}".encode(),
        tx_ids=tx_ids,
        receipts=f"receipts {height}".encode(),
        events=f"events {height}".encode(),
        state_writes=dict(state or {}),
        node_writes=dict(nodes or {}),
        task_events=dict(task_events or {}),
        mempool_remove=mempool_remove,
        meta=dict(meta or {}),
    )


def contents(store: Store) -> dict[str, object]:
    """Everything a reader can see, to compare a store before and after a refused write."""
    head = store.head()
    top = -1 if head is None else head.height
    return {
        "head": head,
        "state": list(store.iter_state()),
        "mempool": store.mempool_items(),
        "mempool_size": store.mempool_size(),
        "blocks": [
            (store.get_block(i), store.get_header(i), store.get_receipts(i), store.get_events(i))
            for i in range(top + 3)
        ],
    }


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "chain")
    with s:
        yield s


# ---------------------------------------------------------------------------------------------
# Contract


def test_empty_store(store: Store) -> None:
    assert store.head() is None
    assert store.get_state(b"k") is None
    assert list(store.iter_state()) == []
    assert store.get_block(0) is None and store.get_header(0) is None
    assert store.get_receipts(0) is None and store.get_events(0) is None
    assert store.get_height(h32("block 0")) is None
    assert store.get_tx_location(b"tx") is None
    assert store.get_node(h32("n")) is None
    assert store.get_task_events(1) == []
    assert store.get_meta(b"genesis") is None
    assert store.mempool_items() == [] and store.mempool_size() == (0, 0)
    assert store.mempool_get(b"tx") is None
    # Keys no backend can hold are simply absent (LMDB would refuse them outright).
    too_long = b"k" * (MAX_KEY_SIZE + 1)
    assert store.get_state(too_long) is None and store.get_state(b"") is None
    assert list(store.iter_state(too_long)) == []
    assert store.get_node(too_long) is None and store.get_meta(too_long) is None


def test_genesis_then_blocks_every_read(store: Store) -> None:
    g = make_commit(
        0,
        state={b"acct/a": b"100", b"acct/b": b"200"},
        nodes={h32("n0"): b"node0"},
        meta={b"genesis": b"genesis bytes"},
    )
    store.commit(g)
    assert store.head() == g.head
    assert store.get_block(0) == b""  # genesis has an empty block, which is not "missing"
    assert store.get_meta(b"genesis") == b"genesis bytes"

    txs1 = (h32("tx a"), h32("tx b"), h32("tx c"))
    b1 = make_commit(
        1,
        state={b"acct/a": b"90", b"acct/c": b"10"},
        nodes={h32("n1"): b"node1"},
        tx_ids=txs1,
        task_events={7: b"t7 at 1"},
    )
    store.commit(b1)
    txs2 = (h32("tx d"),)
    b2 = make_commit(2, state={b"acct/b": b"150"}, nodes={h32("n2"): b"node2"}, tx_ids=txs2)
    store.commit(b2)

    assert store.head() == b2.head
    for height in (0, 1, 2):
        block = store.get_block(height)
        assert block is not None and store.get_block_tail(height, 66) == block[-66:]
        assert store.get_block_tail(height, 5) == block[-5:]
    assert store.get_block_tail(3, 66) is None and store.get_block_tail(-1, 66) is None
    for c in (g, b1, b2):
        n = c.head.height
        assert store.get_block(n) == c.block
        assert store.get_header(n) == c.header
        assert store.get_receipts(n) == c.receipts
        assert store.get_events(n) == c.events
        assert store.get_height(c.head.block_hash) == n
    assert store.get_block(3) is None and store.get_header(3) is None
    for i, tx in enumerate(txs1):
        assert store.get_tx_location(tx) == (1, i)
    assert store.get_tx_location(txs2[0]) == (2, 0)
    assert store.get_state(b"acct/a") == b"90"
    assert store.get_state(b"acct/b") == b"150"
    assert store.get_state(b"acct/c") == b"10"
    for tag, rec in (("n0", b"node0"), ("n1", b"node1"), ("n2", b"node2")):
        assert store.get_node(h32(tag)) == rec
    assert store.get_task_events(7) == [(1, b"t7 at 1")]
    assert store.get_meta(b"genesis") == b"genesis bytes"


def test_state_deletes(store: Store) -> None:
    store.commit(make_commit(0, state={b"a": b"1", b"b": b"2", b"c": b"3"}))
    store.commit(make_commit(1, state={b"b": None, b"never-existed": None, b"d": b"4"}))
    assert store.get_state(b"b") is None
    assert list(store.iter_state()) == [(b"a", b"1"), (b"c", b"3"), (b"d", b"4")]
    store.commit(make_commit(2, state={b"b": b"again"}))
    assert store.get_state(b"b") == b"again"


def test_iter_state_sorted_with_prefix(store: Store) -> None:
    keys = [
        b"acct/\xff",
        b"acct/",
        b"acct/\x00",
        b"acct/b",
        b"acct/a",
        b"acc",
        b"task/1",
        b"acctx",
        b"b",
        b"\x00",
        b"\xff\xff",
    ]
    store.commit(make_commit(0, state={k: b"v" + k for k in keys}))
    assert [k for k, _ in store.iter_state()] == sorted(keys)
    assert list(store.iter_state(b"acct/")) == [(k, b"v" + k) for k in sorted(keys) if k.startswith(b"acct/")]
    assert [k for k, _ in store.iter_state(b"acc")] == [
        b"acc",
        b"acct/",
        b"acct/\x00",
        b"acct/a",
        b"acct/b",
        b"acct/\xff",
        b"acctx",
    ]
    assert list(store.iter_state(b"zz")) == []
    assert [k for k, _ in store.iter_state(b"\xff")] == [b"\xff\xff"]


def test_iter_state_is_one_view(store: Store) -> None:
    store.commit(make_commit(0, state={bytes([i]) + b"k": b"old" for i in range(10)}))
    it = store.iter_state()
    first = next(it)
    store.commit(make_commit(1, state={bytes([i]) + b"k": b"new" for i in range(10)}))
    rest = list(it)
    assert [v for _, v in [first, *rest]] == [b"old"] * 10
    assert {v for _, v in store.iter_state()} == {b"new"}


def test_partial_reads(store: Store) -> None:
    big = np.arange(3 << 20, dtype=np.int32).view(np.uint8)  # 12 MiB together: the threaded copies
    values = {b"u1": b"h" * 32 + big[: 6 << 20].tobytes(), b"u2": b"g" * 32 + big[6 << 20 :].tobytes()}
    store.commit(make_commit(0, state={**values, b"short": b"0123456789"}))
    assert store.get_state_range(b"short", 2, 5) == b"234"
    assert store.get_state_range(b"u1", 0, 32) == b"h" * 32
    assert store.get_state_range(b"absent", 0, 32) is None
    rows = np.full((4, 6 << 20), 7, dtype=np.uint8)
    lengths = store.read_states_into(
        [(b"u1", 32, rows[0]), (b"u2", 32, rows[1]), (b"absent", 32, rows[2]), (b"short", 0, rows[3])]
    )
    assert lengths == [32 + (6 << 20), 32 + (6 << 20), None, 10]
    assert rows[0].tobytes() == values[b"u1"][32:] and rows[1].tobytes() == values[b"u2"][32:]
    assert (rows[2] == 7).all() and (rows[3] == 7).all()  # absent, and the wrong length: untouched
    small = np.zeros(8, dtype=np.uint8)
    assert store.read_states_into([(b"short", 2, small)]) == [10]
    assert small.tobytes() == b"23456789"
    with store.snapshot() as view:  # a view reads the same way, from its own moment
        store.commit(make_commit(1, state={b"short": b"changed"}))
        assert view.get_state_range(b"short", 0, 4) == b"0123"
        assert view.read_states_into([(b"short", 2, small)]) == [10]


@pytest.mark.parametrize("parts", [True, False])
def test_state_partial_reads_see_the_block_layers(store: Store, parts: bool) -> None:
    store.commit(make_commit(0, state={b"a": b"stored-a", b"b": b"stored-b", b"c": b"stored-c"}))
    state = State(store.get_state, parts=store if parts else None)
    state.set(b"a", b"block-a!")
    state.begin()
    state.delete(b"b")
    state.set(b"new", b"tx-new..")
    out = np.zeros((5, 6), dtype=np.uint8)
    keys = [b"a", b"b", b"c", b"new", b"absent"]
    assert state.read_many_into([(k, 2, out[i]) for i, k in enumerate(keys)]) == [8, None, 8, 8, None]
    assert [bytes(r) for r in out] == [b"ock-a!", bytes(6), b"ored-c", b"-new..", bytes(6)]
    assert [state.get_range(k, 1, 3) for k in keys] == [b"lo", None, b"to", b"x-", None]


def _tailed(
    height: int, txs: list[bytes], state: Mapping[bytes, bytes | None], tails: dict, **kw: object
) -> BlockCommit:
    """A commit of a block of ``txs`` (ids ``tx <height> <i>``), stored apart, with state tails."""
    c = make_commit(height, state=state, tx_ids=tuple(h32(f"tx {height} {i}") for i in range(len(txs))), **kw)
    fields = {f: getattr(c, f) for f in c.__dataclass_fields__}
    return BlockCommit(
        **{**fields, "block": b"head.", "tx_bytes": tuple(txs), "block_tail": b".tail", "state_tails": tails}
    )


def test_state_tails_are_stored_once_and_read_whole(store: Store) -> None:
    """A state value that ends with bytes of a tx of its block keeps only its head; every read
    joins the two, an overwrite or a delete drops the reference, and an older view still sees the
    old value."""
    store.commit(make_commit(0, state={b"plain": b"p"}))
    delta = bytes(range(256)) * 300
    tx = b"tx." + delta + b".signature" * 7
    value = b"H" * 32 + delta
    other = b"x" + delta[-100:]
    store.commit(
        _tailed(1, [b"first tx" * 9, tx], {b"u": value, b"v": other}, {b"u": (1, 3, 3 + len(delta))})
    )
    assert store.get_block(1) == b"head." + b"first tx" * 9 + tx + b".tail"
    if isinstance(store, LmdbStore):
        assert store.stat()["state_tails"] == 1 and store.stat()["tx_bytes"] == 1  # the small tx: inline
    assert store.get_state(b"u") == value and store.get_state(b"v") == other
    assert dict(store.iter_state()) == {b"plain": b"p", b"u": value, b"v": other}
    for start, stop in ((0, 32), (0, 40), (30, 40), (32, 99), (100, len(value)), (5, len(value) + 9)):
        assert store.get_state_range(b"u", start, stop) == value[start:stop]
    rows = np.zeros((2, len(delta)), dtype=np.uint8)
    whole = np.zeros(len(value) - 3, dtype=np.uint8)
    lengths = store.read_states_into([(b"u", 32, rows[0]), (b"u", 3, whole), (b"u", 31, rows[1])])
    assert lengths == [len(value)] * 3
    assert rows[0].tobytes() == delta and whole.tobytes() == value[3:] and not rows[1].any()
    with store.snapshot() as view:
        store.commit(make_commit(2, state={b"u": b"raw now", b"v": None}))
        assert view.get_state(b"u") == value and dict(view.iter_state())[b"u"] == value
        assert store.get_state(b"u") == b"raw now" and store.get_state(b"v") is None
    store.commit(_tailed(3, [tx], {b"u": value}, {b"u": (0, 3, 3 + len(delta))}))
    store.commit(make_commit(4, state={b"u": None}))
    assert store.get_state(b"u") is None and list(store.iter_state()) == [(b"plain", b"p")]
    if isinstance(store, LmdbStore):
        assert store.stat()["state_tails"] == 0


@pytest.mark.parametrize(
    "tails",
    [
        {b"u": (0, 0, 20)},  # the value does not end with those bytes
        {b"u": (0, 7, 10_000_000)},  # past the tx
        {b"u": (2, 0, 5)},  # no such tx
        {b"w": (0, 7, 20)},  # no such write
        {b"u": (0, 9, 7)},
        {b"u": (1, 0, 5)},  # a tx kept in the block's record, not apart
        {b"u": (7, 20)},
    ],
)
def test_bad_state_tails_refused_before_writing(store: Store, tails: dict) -> None:
    store.commit(make_commit(0, state={b"a": b"0"}))
    before = contents(store)
    big = b"d" * APART_MIN_BYTES
    with pytest.raises(StoreError, match=r"state tail|does not end"):
        store.commit(_tailed(1, [b"tx." + big, b"small tx"], {b"u": b"h" + big}, tails))
    assert contents(store) == before


def test_a_large_tx_is_stored_once_from_the_mempool_to_its_block(store: Store) -> None:
    """A pending large tx's bytes stay where the mempool put them when its block commits (the same
    length and signature bytes), are written by the block when they differ or were never pending,
    and go when the tx is dropped, not when it is included; small txs stay in their entries and
    their block's record. Every read puts the block back together in order."""
    store.commit(make_commit(0))
    big = APART_MIN_BYTES
    txs = [b"0" * big, b"small one", b"2" * (big + 1), b"small three", b"4" * big, b"small five"]
    ids = [h32(f"tx 1 {i}") for i in range(len(txs))]
    pending = [(ids[0], txs[0]), (ids[1], txs[1]), (ids[2], b"x" + txs[2]), (h32("drop"), b"d" * big)]
    store.mempool_put(pending)
    assert store.mempool_size() == (4, sum(len(tx) for _, tx in pending))
    assert store.mempool_items() == pending and store.mempool_get(ids[2]) == b"x" + txs[2]
    if isinstance(store, LmdbStore):
        assert store.stat()["tx_bytes"] == 3
    store.commit(_tailed(1, txs, {}, {}, mempool_remove=(*ids[:3], h32("drop"))))
    block = b"head." + b"".join(txs) + b".tail"
    assert store.get_block(1) == block
    for n in (1, 5, 11, 12, 100, len(block)):
        assert store.get_block_tail(1, n) == block[-n:]
    assert store.mempool_items() == [] and store.mempool_size() == (0, 0)
    if isinstance(store, LmdbStore):
        assert store.stat()["tx_bytes"] == 3  # the block's three large txs; the dropped one went
    assert store.mempool_put([(ids[2], txs[2]), (ids[3], txs[3])]) == 0  # in a block: not pending again
    assert store.get_block(1) == block


def test_wrong_height_changes_nothing(store: Store) -> None:
    store.mempool_put([(b"m1", b"tx1")])
    with pytest.raises(StoreError, match="next height is 0"):
        store.commit(make_commit(1, state={b"a": b"1"}, mempool_remove=(b"m1",)))
    assert store.head() is None and store.get_block(1) is None

    store.commit(make_commit(0, state={b"a": b"0"}))
    before = contents(store)
    for bad in (0, 2, 5):
        with pytest.raises(StoreError, match="next height is 1"):
            store.commit(
                make_commit(
                    bad,
                    state={b"a": b"X", b"b": b"Y"},
                    nodes={h32("bad"): b"bad"},
                    tx_ids=(b"txbad",),
                    task_events={1: b"bad"},
                    mempool_remove=(b"m1",),
                    meta={b"genesis": b"bad"},
                )
            )
        assert contents(store) == before
        assert store.get_node(h32("bad")) is None
        assert store.get_tx_location(b"txbad") is None
        assert store.get_task_events(1) == []
        assert store.get_meta(b"genesis") is None
        assert store.mempool_get(b"m1") == b"tx1"
    store.commit(make_commit(1, state={b"a": b"1"}))
    assert store.head() is not None and store.head().height == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad",
    [
        {"state": {b"": b"v"}},
        {"state": {b"k" * (MAX_KEY_SIZE + 1): b"v"}},
        {"state": {b"k": "not bytes"}},
        {"nodes": {b"": b"rec"}},
        {"tx_ids": (b"",)},
        {"meta": {b"store:head": b"forged"}},
        {"task_events": {-1: b"e"}},
    ],
)
def test_malformed_commit_refused_before_writing(store: Store, bad: dict[str, object]) -> None:
    store.commit(make_commit(0, state={b"a": b"0"}))
    before = contents(store)
    with pytest.raises(StoreError):
        store.commit(make_commit(1, **bad))  # type: ignore[arg-type]
    assert contents(store) == before


def test_bad_head_refused(store: Store) -> None:
    c = make_commit(0)
    for head in (
        Head(0, b"short", c.head.state_root, 0),
        Head(0, c.head.block_hash, b"", 0),
        Head(-1, c.head.block_hash, c.head.state_root, 0),
    ):
        with pytest.raises(StoreError):
            store.commit(BlockCommit(head, b"", b"h", (), b"", b"", {}, {}))
    assert store.head() is None


class ExplodingMapping(Mapping[bytes, bytes | None]):
    """Passes validation, then fails on its second read of the given key: mid-transaction."""

    def __init__(self, items: dict[bytes, bytes | None], bomb: bytes) -> None:
        self._items, self._bomb, self._reads = items, bomb, 0

    def __getitem__(self, key: bytes) -> bytes | None:
        if key == self._bomb:
            self._reads += 1
            if self._reads == 2:
                raise RuntimeError("failure in the middle of the write")
        return self._items[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_failure_mid_transaction_writes_nothing(store: Store) -> None:
    store.commit(make_commit(0, state={b"a": b"0"}))
    store.mempool_put([(b"m1", b"tx1")])
    before = contents(store)
    state = ExplodingMapping({b"a": b"new", b"b": b"new", b"c": b"new"}, bomb=b"c")
    c = make_commit(1, tx_ids=(b"tx",), mempool_remove=(b"m1",), task_events={1: b"e"})
    c = BlockCommit(
        c.head,
        c.block,
        c.header,
        c.tx_ids,
        c.receipts,
        c.events,
        state,
        {h32("n"): b"n"},
        c.task_events,
        c.mempool_remove,
        {b"k": b"v"},
    )
    with pytest.raises(RuntimeError, match="middle"):
        store.commit(c)
    assert contents(store) == before
    assert store.get_state(b"b") is None and store.get_node(h32("n")) is None
    assert store.get_tx_location(b"tx") is None and store.get_meta(b"k") is None
    assert store.get_height(c.head.block_hash) is None and store.get_task_events(1) == []


def test_mempool(store: Store) -> None:
    ids = [h32(f"tx{i}") for i in (5, 3, 9, 1, 7)]  # not sorted: order is insertion, not id
    txs = [f"signed tx {i}".encode() * (i + 1) for i in range(5)]
    assert store.mempool_put(list(zip(ids[:3], txs[:3], strict=True))) == 3
    assert store.mempool_put(list(zip(ids[3:], txs[3:], strict=True))) == 2
    assert store.mempool_items() == list(zip(ids, txs, strict=True))
    assert store.mempool_items(limit=2) == list(zip(ids[:2], txs[:2], strict=True))
    assert store.mempool_size() == (5, sum(map(len, txs)))
    assert store.mempool_get(ids[2]) == txs[2]

    # Re-putting a pending id keeps its place and its bytes; duplicates within a batch count once.
    assert store.mempool_put([(ids[0], b"other bytes"), (b"new", b"n"), (b"new", b"n2")]) == 1
    assert store.mempool_items()[0] == (ids[0], txs[0])
    assert store.mempool_items()[-1] == (b"new", b"n")

    assert store.mempool_remove([ids[1], ids[3], b"unknown"]) == 2
    assert store.mempool_get(ids[1]) is None
    expected = [(ids[0], txs[0]), (ids[2], txs[2]), (ids[4], txs[4]), (b"new", b"n")]
    assert store.mempool_items() == expected
    assert store.mempool_size() == (4, sum(len(t) for _, t in expected))

    # A removed id can come back; it goes to the end.
    store.mempool_put([(ids[1], txs[1])])
    assert store.mempool_items()[-1] == (ids[1], txs[1])
    store.mempool_remove([i for i, _ in store.mempool_items()])
    assert store.mempool_items() == [] and store.mempool_size() == (0, 0)
    assert store.mempool_put([]) == 0 and store.mempool_remove([]) == 0
    with pytest.raises(StoreError):
        store.mempool_put([(b"", b"tx")])


def test_mempool_removal_inside_commit(store: Store) -> None:
    store.commit(make_commit(0))
    store.mempool_put([(b"a", b"AA"), (b"b", b"BBB"), (b"c", b"C")])
    store.commit(make_commit(1, tx_ids=(b"a", b"c"), mempool_remove=(b"a", b"c", b"gone")))
    assert store.mempool_items() == [(b"b", b"BBB")]
    assert store.mempool_size() == (1, 3)
    assert store.get_tx_location(b"c") == (1, 1)


def test_task_events_in_height_order(store: Store) -> None:
    store.commit(make_commit(0))
    # Task ids whose big-endian bytes share prefixes with each other and with heights.
    for height in range(1, 6):
        events = {256: f"t256@{height}".encode()}
        if height % 2:
            events[1] = f"t1@{height}".encode()
        store.commit(make_commit(height, task_events=events))
    assert store.get_task_events(1) == [(1, b"t1@1"), (3, b"t1@3"), (5, b"t1@5")]
    assert store.get_task_events(256) == [(h, f"t256@{h}".encode()) for h in range(1, 6)]
    assert store.get_task_events(256, start_height=4) == [(4, b"t256@4"), (5, b"t256@5")]
    assert store.get_task_events(0) == [] and store.get_task_events(2) == []


def test_snapshot_is_consistent(store: Store) -> None:
    store.commit(make_commit(0, state={b"a": b"0", b"b": b"0"}))
    store.mempool_put([(b"m", b"tx")])
    with store.snapshot() as view:
        store.commit(make_commit(1, state={b"a": b"1", b"b": None, b"c": b"1"}, mempool_remove=(b"m",)))
        head = view.head()
        assert head is not None and head.height == 0
        assert view.get_state(b"a") == b"0" and view.get_state(b"c") is None
        assert list(view.iter_state()) == [(b"a", b"0"), (b"b", b"0")]
        assert view.get_block(1) is None
        assert view.mempool_items() == [(b"m", b"tx")]
        assert store.get_state(b"a") == b"1" and store.mempool_items() == []
    with pytest.raises(StoreError, match="closed"):
        view.head()


def test_writes_from_many_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def put(t: int) -> None:
        try:
            for i in range(20):
                store.mempool_put([(f"{t}/{i}/{j}".encode(), b"x" * 10) for j in range(3)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert store.mempool_size() == (240, 2400)
    items = store.mempool_items()
    assert len({i for i, _ in items}) == 240
    for t in range(4):  # each thread's txs keep their own order
        mine = [i for i, _ in items if i.startswith(f"{t}/".encode())]
        assert mine == [f"{t}/{i}/{j}".encode() for i in range(20) for j in range(3)]


def test_closed_store_refuses(store: Store) -> None:
    store.commit(make_commit(0))
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.head()
    with pytest.raises(StoreError, match="closed"):
        store.commit(make_commit(1))
    with pytest.raises(StoreError, match="closed"):
        store.mempool_put([(b"a", b"b")])


def test_head_encoding_round_trip() -> None:
    head = Head(2**64 - 1, h32("a"), h32("b"), 1_700_000_000_000)
    assert Head.decode(head.encode()) == head
    with pytest.raises(DecodeError):
        Head.decode(Head(1, b"short", h32("b"), 0).encode())
    with pytest.raises(DecodeError):
        Head.decode(head.encode() + b"\x00")


# ---------------------------------------------------------------------------------------------
# LMDB only


def test_lmdb_reopen_sees_everything(tmp_path: Path) -> None:
    path = tmp_path / "chain"
    with LmdbStore(path) as s:
        s.commit(make_commit(0, state={b"a": b"0"}, nodes={h32("n"): b"rec"}, meta={b"genesis": b"G"}))
        s.commit(make_commit(1, state={b"a": None, b"b": b"1"}, tx_ids=(b"t",), task_events={3: b"e"}))
        s.mempool_put([(b"m1", b"one"), (b"m2", b"two")])
        s.mempool_remove([b"m1"])
        before = contents(s)
    with LmdbStore(path) as s:
        assert contents(s) == before
        assert s.get_node(h32("n")) == b"rec" and s.get_meta(b"genesis") == b"G"
        assert s.get_tx_location(b"t") == (1, 0) and s.get_task_events(3) == [(1, b"e")]
        s.mempool_put([(b"m3", b"three")])  # the insertion sequence survives the reopen
        assert [i for i, _ in s.mempool_items()] == [b"m2", b"m3"]
        s.commit(make_commit(2))


def test_lmdb_one_handle_per_process(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "chain"), pytest.raises(StoreError, match="already open in this process"):
        LmdbStore(tmp_path / "chain", readonly=True)
    with LmdbStore(tmp_path / "chain", readonly=True):
        pass


def test_lmdb_readonly_refuses_writes(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        LmdbStore(tmp_path / "missing", readonly=True)
    with LmdbStore(tmp_path / "chain") as s:
        s.commit(make_commit(0))
    with LmdbStore(tmp_path / "chain", readonly=True) as ro:
        assert ro.readonly
        assert ro.head() == make_commit(0).head
        for write in (
            lambda: ro.commit(make_commit(1)),
            lambda: ro.mempool_put([(b"a", b"b")]),
            lambda: ro.mempool_remove([b"a"]),
        ):
            with pytest.raises(StoreError, match="read-only"):
                write()
        assert ro.head() == make_commit(0).head


READER = textwrap.dedent("""
    import sys
    from mpsnode.node.store import LmdbStore, BlockCommit, Head
    with LmdbStore(sys.argv[1], readonly=True) as ro:
        view = ro.snapshot()
        print("ready", ro.head().height, flush=True)
        sys.stdin.readline()
        print("head", ro.head().height, ro.get_state(b"k").decode(), flush=True)
        print("view", view.head().height, view.get_state(b"k").decode(), flush=True)
        view.close()
        try:
            ro.mempool_put([(b"a", b"b")])
        except Exception as exc:
            print("refused", type(exc).__name__, exc, flush=True)
""")


def test_lmdb_readonly_reads_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "chain"
    with LmdbStore(path) as writer:
        writer.commit(make_commit(0, state={b"k": b"v0"}))
        child = subprocess.Popen(
            [sys.executable, "-c", READER, str(path)],
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().split() == ["ready", "0"]
            writer.commit(make_commit(1, state={b"k": b"v1"}))  # while the reader holds a snapshot
            child.stdin.write("go\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == 0, err
        lines = out.splitlines()
        assert lines[0] == "head 1 v1"
        assert lines[1] == "view 0 v0"
        assert lines[2].startswith("refused StoreError") and "read-only" in lines[2]
        writer.commit(make_commit(2))


def test_lmdb_full_map(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "chain", map_size=1 << 20) as s:
        s.commit(make_commit(0, state={b"a": b"0"}))
        s.mempool_put([(b"m", b"tx")])
        before = contents(s)
        big = {f"big{i}".encode(): bytes(100_000) for i in range(20)}  # 2 MB into a 1 MiB map
        with pytest.raises(StoreFull, match="larger map_size") as info:
            s.commit(make_commit(1, state=big, nodes={h32("n"): b"rec"}, mempool_remove=(b"m",)))
        assert "1048576" in str(info.value)
        assert contents(s) == before
        assert s.get_node(h32("n")) is None and s.get_state(b"big0") is None
        with pytest.raises(StoreFull):
            s.mempool_put([(b"huge", bytes(2 << 20))])
        assert contents(s) == before
        # Still usable for writes that fit.
        s.commit(make_commit(1, state={b"a": b"1"}, mempool_remove=(b"m",)))
        s.mempool_put([(b"small", b"tx")])
        assert s.get_state(b"a") == b"1" and s.mempool_items() == [(b"small", b"tx")]
    with LmdbStore(tmp_path / "chain", map_size=64 << 20) as s:  # a larger map_size fixes it
        s.commit(make_commit(2, state={f"big{i}".encode(): bytes(100_000) for i in range(20)}))
        assert s.get_state(b"big19") == bytes(100_000)


def test_lmdb_refuses_another_layout(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "chain") as s:
        s.commit(make_commit(0, state={b"a": b"0"}))
    env = lmdb.open(str(tmp_path / "chain"), max_dbs=20)
    with env.begin(write=True) as txn:  # an older layout: its schema record, a table it lacked
        txn.put(b"store:schema", b"\x91\x01", db=env.open_db(b"meta", txn=txn))
        txn.drop(env.open_db(b"state_tails", txn=txn), delete=True)
    env.close()
    before = (tmp_path / "chain" / "data.mdb").read_bytes()
    for readonly in (True, False):
        with pytest.raises(StoreError, match=r"layout .* another version of mpsnode; start a new home"):
            LmdbStore(tmp_path / "chain", readonly=readonly)
    assert (tmp_path / "chain" / "data.mdb").read_bytes() == before  # refused, and left as it was


def test_lmdb_refuses_foreign_environment(tmp_path: Path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "other"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.close()
    with pytest.raises(StoreError, match="not an mpsnode store"):
        LmdbStore(tmp_path / "other", readonly=True)


def test_lmdb_writable_open_refuses_foreign_environment(tmp_path: Path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "other"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.close()
    with pytest.raises(StoreError, match="not an mpsnode store"):
        LmdbStore(tmp_path / "other")


def test_a_node_cache_drops_its_oldest_records_when_full() -> None:
    cache = NodeCache(limit=8)
    cache.add({bytes([i]) * 32: bytes([i]) for i in range(6)})
    cache.add({bytes([i]) * 32: bytes([i]) for i in range(6, 10)})
    assert len(cache) <= 8
    assert cache.get(bytes([9]) * 32) == bytes([9])  # the newest stay
    assert cache.get(bytes([0]) * 32) is None  # the oldest went first


def test_a_chain_reads_a_tree_record_from_its_store_once() -> None:
    kit = Kit(MemoryStore(), clients=2)
    client = kit.clients[0]
    kit.block([kit.tx(kit.user, Transfer(client.address, 5))])
    reads: list[bytes] = []
    plain = kit.store.get_node

    def counting(node_hash: bytes) -> bytes | None:
        reads.append(node_hash)
        return plain(node_hash)

    kit.store.get_node = counting  # type: ignore[method-assign]
    _, first = kit.block([kit.tx(kit.user, Transfer(client.address, 5))])
    # the paths this block changes are the last block's: every record on them is kept
    assert reads == []
    _, second = kit.block([kit.tx(kit.user, Transfer(kit.clients[1].address, 5))])
    assert reads and len(reads) == len(set(reads))  # a new path: read once each
    assert first.state_root != second.state_root
    kit.check_invariants()  # the roots equal the reference root of the whole state


GROWER = textwrap.dedent("""
    import sys
    from mpsnode.node.store import LmdbStore
    from test_store import make_commit
    with LmdbStore(sys.argv[1], map_size=64 << 20) as s:
        s.commit(make_commit(1, state={f"big{i}".encode(): bytes(100_000) for i in range(20)}))
""")


def test_lmdb_reads_adopt_a_map_another_process_grew(tmp_path: Path) -> None:
    path = tmp_path / "chain"
    with LmdbStore(path, map_size=1 << 20) as small:
        small.commit(make_commit(0, state={b"a": b"0"}))
        grower = subprocess.run(
            [sys.executable, "-c", GROWER, str(path)],
            cwd=REPO / "tests",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert grower.returncode == 0, grower.stderr
        # 2 MB now lie past this handle's 1 MiB map: its reads grow the map and see them
        assert small.get_state(b"big19") == bytes(100_000)
        assert small.get_block_tail(1, 10) is not None  # the buffered read path too


def test_a_chain_stores_a_revealed_update_once(tmp_path: Path) -> None:
    """A pending update of 64 KiB or more is kept as its hash and a reference into its reveal's
    block: the chain reads it whole (every block, the kit checks the root against the reference
    over ``iter_state``), drops the reference when the round closes, and agrees at every height
    with a chain in memory."""
    arch = (256, 130)  # 33,410 parameters: a 66,820-byte delta
    n = param_count(arch)
    roots: list[list[bytes]] = []
    for kit in (Kit(LmdbStore(tmp_path / "chain"), clients=4), Kit(clients=4)):
        body = small_task(arch=arch, samples=4, min_clients=4, max_clients=4, join_blocks=1, round_blocks=5)
        _, res = kit.block([kit.tx(kit.user, body)] + [kit.tx(c, Stake(2000)) for c in kit.clients])
        task_id = res.receipts[0].events[0].task_id
        kit.block([kit.tx(c, JoinTask(task_id)) for c in kit.clients])
        pairs = [kit.pair(c, task_id, 1, random_delta(n, i)) for i, c in enumerate(kit.clients)]
        kit.block([c for c, _ in pairs])
        while kit.chain.state().get_task(task_id).phase == RoundPhase.COMMIT:
            kit.block()
        kit.block([r for _, r in pairs[:3]])
        for client, (_, reveal) in zip(kit.clients[:3], pairs, strict=False):
            delta = reveal.tx.body.delta
            assert (
                kit.store.get_state(update_key(task_id, client.address))
                == reveal.tx.body.delta_hash() + delta
            )
        if isinstance(kit.store, LmdbStore):
            assert kit.store.stat()["state_tails"] == 3
        kit.block([pairs[3][1]])  # the last reveal: the round closes, its updates are the basis
        assert kit.chain.state().get_task(task_id).round == 2
        if isinstance(kit.store, LmdbStore):
            assert kit.store.stat()["state_tails"] == 4
        deltas = [random_delta(n, 10 + i) for i in range(4)]
        _, res = kit.submit(task_id, 2, list(zip(kit.clients, deltas, strict=True)))
        assert any(isinstance(e, RoundClosed) for e in res.receipts[-1].events)
        for client, delta in zip(kit.clients, deltas, strict=True):  # round 1's basis gave way
            assert kit.store.get_state(update_key(task_id, client.address))[32:] == delta
        if isinstance(kit.store, LmdbStore):
            assert kit.store.stat()["state_tails"] == 4
        roots.append([kit.store.get_header(h) for h in range(kit.chain.head.height + 1)])
    assert roots[0] == roots[1]


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_blocks_and_tailed_values_read_back_whatever_the_mix(backend: str, data: st.DataObject) -> None:
    """Blocks of small and large txs, some pending first (with the same bytes or other ones),
    some dropped, and state values tailed on some of them, read back byte for byte at every
    height and after every commit; each commit applies on top of whatever the last left."""
    with tempfile.TemporaryDirectory() as tmp:
        store: Store = MemoryStore() if backend == "memory" else LmdbStore(Path(tmp) / "chain")
        with store:
            _mixed_blocks(store, data)


def _mixed_blocks(store: Store, data: st.DataObject) -> None:
    sizes = st.sampled_from([1, 70, APART_MIN_BYTES - 1, APART_MIN_BYTES, APART_MIN_BYTES + 7])
    store.commit(make_commit(0))
    blocks: dict[int, bytes] = {}
    state: dict[bytes, bytes] = {}
    for height in range(1, data.draw(st.integers(1, 4)) + 1):
        txs = [
            bytes([height, i]) * (n // 2) + bytes(n % 2)
            for i, n in enumerate(data.draw(st.lists(sizes, min_size=0, max_size=4)))
        ]
        ids = [h32(f"tx {height} {i}") for i in range(len(txs))]
        pending = [
            (tx_id, tx if data.draw(st.booleans()) else b"other " + tx)
            for tx_id, tx in zip(ids, txs, strict=True)
            if data.draw(st.booleans())
        ]
        dropped = [(h32(f"drop {height} {n}"), b"z" * n) for n in data.draw(st.lists(sizes, max_size=2))]
        store.mempool_put(pending + dropped)
        writes: dict[bytes, bytes | None] = {}
        tails: dict[bytes, tuple[int, int, int]] = {}
        for i, tx in enumerate(txs):
            key = b"u%d" % data.draw(st.integers(0, 3))
            if len(tx) >= APART_MIN_BYTES and data.draw(st.booleans()):
                start = data.draw(st.integers(0, len(tx) - 1))
                writes[key] = b"head%d" % height + tx[start:]
                tails[key] = (i, start, len(tx))
            else:
                tails.pop(key, None)
                writes[key] = None if data.draw(st.booleans()) else b"raw %d" % height
        remove = tuple(tx_id for tx_id, _ in pending + dropped)
        store.commit(_tailed(height, txs, writes, tails, mempool_remove=remove))
        blocks[height] = b"head." + b"".join(txs) + b".tail"
        for key, value in writes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        assert store.mempool_items() == [] and store.mempool_size() == (0, 0)
        for h, block in blocks.items():
            assert store.get_block(h) == block
            assert store.get_block_tail(h, 66) == block[-66:]
        assert dict(store.iter_state()) == state
        for key, value in state.items():
            assert store.get_state(key) == value
            assert store.get_state_range(key, 2, 70_000) == value[2:70_000]
