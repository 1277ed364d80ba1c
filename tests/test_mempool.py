"""The sequencer's mempool index (candidate order) and admission policy, without a network."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import genesis as genesis_tool
from mpsnode.consensus.errors import FeeUnpayable, NonceMismatch
from mpsnode.consensus.state import Account
from mpsnode.consensus.tx import SignedTx, Transfer, Tx
from mpsnode.node.errors import AlreadyKnown, MempoolFull, NonceConflict, NonceTooFarAhead, SenderLimit
from mpsnode.node.store import MemoryStore
from sequencer.admission import AdmissionPolicy, check_admission
from sequencer.daemon import GRACE_OF_BLOCK_TIME, Sequencer, SequencerConfig
from sequencer.mempool import Entry, MempoolIndex

G, KEYS = genesis_tool.devnet(clients=4)
A, B, C = KEYS["client-0"], KEYS["client-1"], KEYS["client-2"]


def stx(key, nonce: int, amount: int = 1, fee: int = 1) -> SignedTx:
    return Tx(G.chain_id, key.address, nonce, fee, Transfer(KEYS["user"].address, amount)).sign(key)


def entry(key, nonce: int, amount: int = 1) -> Entry:
    s = stx(key, nonce, amount)
    return Entry(s, s.encode())


def pool(*entries: Entry) -> MempoolIndex:
    index = MempoolIndex()
    for e in entries:
        index.reserve(e)
    index.make_durable(entries)
    return index


def order(selection) -> list[tuple[str, int]]:
    names = {A.address: "A", B.address: "B", C.address: "C"}
    return [(names[e.sender], e.nonce) for e in selection.candidates]


def test_fifo_with_each_senders_txs_in_nonce_order() -> None:
    index = pool(entry(A, 1), entry(B, 0), entry(A, 0), entry(C, 5), entry(A, 2), entry(B, 1), entry(C, 3))
    nonces = {A.address: 0, B.address: 0, C.address: 3}
    sel = index.select(lambda s: nonces[s], max_txs=100, max_bytes=10**9)
    # A's nonce 1 arrived first but waits for nonce 0, which then pulls it along; C's 5 waits for 4
    assert order(sel) == [("B", 0), ("A", 0), ("A", 1), ("A", 2), ("B", 1), ("C", 3)]
    assert sel.waiting == 1 and sel.stale == []
    again = index.select(lambda s: nonces[s], max_txs=100, max_bytes=10**9)
    assert order(again) == order(sel)  # the same pool and state give the same block


def test_stale_budget_and_count_limits() -> None:
    entries = [entry(A, 0), entry(B, 0), entry(B, 1), entry(C, 0)]
    index = pool(*entries)
    sel = index.select(lambda s: 1 if s == A.address else 0, max_txs=100, max_bytes=10**9)
    assert [(e.sender, e.nonce) for e in sel.stale] == [(A.address, 0)]
    size = entries[1].size
    sel = index.select(lambda s: 0, max_txs=100, max_bytes=2 * size + size // 2)
    assert order(sel) == [("A", 0), ("B", 0)]  # B's nonce 1 does not fit, and C's 0 ...
    sel = index.select(lambda s: 0, max_txs=3, max_bytes=10**9)
    assert order(sel) == [("A", 0), ("B", 0), ("B", 1)]


def test_release_and_counters() -> None:
    e1, e2 = entry(A, 0), entry(A, 1)
    index = pool(e1, e2)
    assert (index.count, index.bytes, index.sender_count(A.address)) == (2, e1.size + e2.size, 2)
    assert index.next_nonce(A.address, 0) == 2
    index.release([e1.tx_id, b"\x00" * 32])
    assert (index.count, index.bytes) == (1, e2.size) and e1.tx_id not in index
    assert index.next_nonce(A.address, 0) == 0 and index.durable_count == 1
    index.release([e2.tx_id])
    assert index.count == 0 and index.sender_bytes(A.address) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.integers(0, 5), st.integers(0, 3)), max_size=24),
       st.lists(st.integers(0, 23), max_size=24))  # fmt: skip
def test_a_senders_pending_fees_and_bytes_are_the_sums_over_its_pending_txs(
    adds: list[tuple[int, int, int]], drops: list[int]
) -> None:
    # kept as running totals (admission reads them per tx): they must equal the sums at every step
    index, made = MempoolIndex(), []

    def check() -> None:
        for key in (A, B, C):
            pending = [e for e in made if e.sender == key.address and e.tx_id in index]
            assert index.sender_fees(key.address) == sum(e.stx.tx.fee for e in pending)
            assert index.sender_bytes(key.address) == sum(e.size for e in pending)
            assert index.sender_count(key.address) == len(pending)

    for who, nonce, fee in adds:
        s = stx((A, B, C)[who], nonce, fee=fee)
        e = Entry(s, s.encode())
        if e.tx_id not in index and index.by_nonce(e.sender, nonce) is None:
            index.reserve(e)
            made.append(e)
            check()
    index.make_durable(made)
    for i in drops:
        if i < len(made):
            index.release([made[i].tx_id])
            check()


def test_admission_rejections() -> None:
    policy = AdmissionPolicy(nonce_window=4, max_sender_txs=3, max_txs=5)
    index = pool(entry(A, 0))
    acct = Account(balance=10, nonce=0)

    def check(s: SignedTx, account: Account = acct, included: int | None = None) -> None:
        check_admission(s, s.size, account, index, policy, lambda _: included)

    with pytest.raises(AlreadyKnown):
        check(index.by_nonce(A.address, 0).stx)
    with pytest.raises(AlreadyKnown, match="included in block 7"):
        check(stx(A, 9), Account(balance=10, nonce=10), included=7)
    with pytest.raises(NonceMismatch):
        check(stx(A, 0, amount=5), Account(balance=10, nonce=1))
    with pytest.raises(NonceTooFarAhead):
        check(stx(A, 4))
    with pytest.raises(NonceConflict):
        check(stx(A, 0, amount=2))
    with pytest.raises(FeeUnpayable):
        check(stx(A, 1), Account(balance=1, nonce=0))  # the pending tx's fee takes the only unit
    check(stx(A, 3))  # ahead within the window: admitted, waits
    for n in (1, 2):
        e = entry(A, n)
        index.reserve(e)
    with pytest.raises(SenderLimit):
        check(stx(A, 3))
    for key in (B, C):
        index.reserve(entry(key, 0))
    with pytest.raises(MempoolFull):
        check(stx(KEYS["client-3"], 0))


def _paced_builder(arrive_at: float | None) -> list[tuple[float, bool]]:
    """The builder's block starts (time, whether durable txs were fresh) when its first block runs
    three slots long and a durable batch arrives at ``arrive_at`` (or never)."""
    seq = Sequencer(MemoryStore(), G, KEYS["sequencer"], SequencerConfig(block_time_ms=100))
    seq._chain_busy = True  # a block every slot, txs or not
    starts: list[tuple[float, bool]] = []

    async def produce() -> None:
        starts.append((round(trio.current_time(), 6), seq._fresh))
        seq._fresh = False
        if len(starts) == 1:
            await trio.sleep(0.3)

    seq._produce_block = produce  # type: ignore[method-assign]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(seq._builder)
            if arrive_at is not None:
                await trio.sleep(arrive_at)
                seq._durable_send.send_nowait([])
            await trio.sleep(0.5 - (arrive_at or 0))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))
    return starts


def test_after_a_block_past_its_slot_the_next_waits_a_moment_for_new_txs() -> None:
    grace = 0.1 * GRACE_OF_BLOCK_TIME
    # txs made durable just after the long block are in the next one, not a slot behind it
    assert _paced_builder(0.31)[:3] == [(0.0, True), (0.31, True), (0.41, False)]
    # with none, the next block comes once the grace is over, and the slots go on from there
    starts = _paced_builder(None)
    assert starts[1] == (round(0.3 + grace, 6), False) and starts[2][0] == round(0.4 + grace, 6)
