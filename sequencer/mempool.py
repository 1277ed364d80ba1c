"""The sequencer's in-memory view of the mempool: what is pending, per sender, in admission order.

The durable mempool is the store's ``mempool`` table (insertion sequence -> tx); this index
mirrors it for fast admission checks and block candidate selection. An entry is *reserved* when
admission accepts it (so a second tx with the same nonce is refused at once) and becomes
*durable* when the group commit that wrote it returned; only durable entries are block
candidates, in the order they were made durable (the table's insertion order).

Candidate order for a block (``select``): FIFO by admission sequence, except that a sender's txs
always go in nonce order; a tx whose nonce is ahead of the sender's next nonce waits until the
gap is filled. Given the same durable order and the same state, the selection is the same: no
task scheduling enters into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mpsnode.consensus.tx import SignedTx


@dataclass(slots=True, eq=False)
class Entry:
    stx: SignedTx
    raw: bytes

    @property
    def tx_id(self) -> bytes:
        return self.stx.tx_id

    @property
    def sender(self) -> bytes:
        return self.stx.tx.sender

    @property
    def nonce(self) -> int:
        return self.stx.tx.nonce

    @property
    def size(self) -> int:
        return len(self.raw)


@dataclass(slots=True)
class Selection:
    candidates: list[Entry] = field(default_factory=list)
    stale: list[Entry] = field(default_factory=list)  # nonce below the account's: can never be included
    waiting: int = 0  # durable txs left for later (nonce gap, block budget)


def _add(totals: dict[bytes, int], sender: bytes, amount: int) -> None:
    """Add ``amount`` to ``sender``'s running total; a total that reaches 0 is dropped."""
    left = totals.get(sender, 0) + amount
    if left > 0:
        totals[sender] = left
    else:
        totals.pop(sender, None)


class MempoolIndex:
    def __init__(self) -> None:
        self._by_id: dict[bytes, Entry] = {}
        self._by_sender: dict[bytes, dict[int, Entry]] = {}
        self._sender_bytes: dict[bytes, int] = {}
        self._sender_fees: dict[bytes, int] = {}  # kept as txs come and go: admission reads it per tx
        self._durable: dict[bytes, Entry] = {}  # tx id -> entry, in durable (table) order
        self.count = 0
        self.bytes = 0

    # reads -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._by_id

    def get(self, tx_id: bytes) -> Entry | None:
        return self._by_id.get(tx_id)

    def by_nonce(self, sender: bytes, nonce: int) -> Entry | None:
        nonces = self._by_sender.get(sender)
        return None if nonces is None else nonces.get(nonce)

    def sender_count(self, sender: bytes) -> int:
        nonces = self._by_sender.get(sender)
        return 0 if nonces is None else len(nonces)

    def sender_bytes(self, sender: bytes) -> int:
        return self._sender_bytes.get(sender, 0)

    def sender_fees(self, sender: bytes) -> int:
        """The fees of ``sender``'s pending txs, summed."""
        return self._sender_fees.get(sender, 0)

    def next_nonce(self, sender: bytes, state_nonce: int) -> int:
        """The first nonce at or after ``state_nonce`` that no pending tx of ``sender`` holds."""
        nonces = self._by_sender.get(sender)
        n = state_nonce
        if nonces:
            while n in nonces:
                n += 1
        return n

    def of_sender(self, sender: bytes, state_nonce: int) -> list[tuple[Entry, bool]]:
        """``sender``'s pending txs by nonce, each with whether it waits behind a nonce gap."""
        nonces = self._by_sender.get(sender, {})
        ready = self.next_nonce(sender, state_nonce)
        return [(nonces[n], n > ready) for n in sorted(nonces)]

    def is_durable(self, tx_id: bytes) -> bool:
        return tx_id in self._durable

    @property
    def durable_count(self) -> int:
        return len(self._durable)

    # writes ----------------------------------------------------------------------------------
    def reserve(self, entry: Entry) -> None:
        """Admission accepted ``entry``: hold its id and nonce until it is durable or released."""
        self._by_id[entry.tx_id] = entry
        self._by_sender.setdefault(entry.sender, {})[entry.nonce] = entry
        _add(self._sender_bytes, entry.sender, entry.size)
        _add(self._sender_fees, entry.sender, entry.stx.tx.fee)
        self.count += 1
        self.bytes += entry.size

    def make_durable(self, entries: Iterable[Entry]) -> None:
        """The group commit holding ``entries`` returned: they are block candidates now, in this order."""
        for entry in entries:
            if self._by_id.get(entry.tx_id) is entry:
                self._durable[entry.tx_id] = entry

    def release(self, tx_ids: Iterable[bytes]) -> list[Entry]:
        """Forget txs (included in a block, dropped, or not written); returns those that were here."""
        out = []
        for tx_id in tx_ids:
            entry = self._by_id.pop(tx_id, None)
            if entry is None:
                continue
            out.append(entry)
            self._durable.pop(tx_id, None)
            nonces = self._by_sender.get(entry.sender)
            if nonces is not None and nonces.get(entry.nonce) is entry:
                del nonces[entry.nonce]
                if not nonces:
                    del self._by_sender[entry.sender]
            _add(self._sender_bytes, entry.sender, -entry.size)
            _add(self._sender_fees, entry.sender, -entry.stx.tx.fee)
            self.count -= 1
            self.bytes -= entry.size
        return out

    # block candidates --------------------------------------------------------------------------
    def select(self, state_nonce: Callable[[bytes], int], *, max_txs: int, max_bytes: int) -> Selection:
        """Candidates for the next block, in order, within ``max_txs`` and ``max_bytes``.

        Walks durable txs in admission order. A tx at its sender's next nonce goes in, followed by
        any of the sender's later txs it unblocks; one ahead waits; one below is stale. Once a
        sender's next tx does not fit the byte budget, the sender's later txs wait too.
        """
        sel = Selection()
        expected: dict[bytes, int] = {}
        held: dict[bytes, dict[int, Entry]] = {}
        blocked: set[bytes] = set()
        budget = max_bytes
        for entry in self._durable.values():
            if len(sel.candidates) >= max_txs:
                break
            sender = entry.sender
            if sender in blocked:
                continue
            want = expected.get(sender)
            if want is None:
                want = state_nonce(sender)
            nonce = entry.nonce
            if nonce < want:
                sel.stale.append(entry)
                expected[sender] = want
                continue
            if nonce > want:
                held.setdefault(sender, {})[nonce] = entry
                expected[sender] = want
                continue
            chain = [entry]
            waiting = held.get(sender)
            n = nonce + 1
            while waiting and n in waiting:
                chain.append(waiting.pop(n))
                n += 1
            for item in chain:
                if item.size > budget or len(sel.candidates) >= max_txs:
                    blocked.add(sender)
                    break
                sel.candidates.append(item)
                budget -= item.size
                want = item.nonce + 1
            expected[sender] = want
        sel.waiting = len(self._durable) - len(sel.candidates) - len(sel.stale)
        return sel
