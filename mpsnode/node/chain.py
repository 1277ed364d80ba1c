"""The chain engine: a store, a genesis and the STF, tied together.

``Chain`` is what the sequencer, verifiers, replay, tests and benchmarks drive: it commits the
genesis into an empty store, applies or builds blocks through the STF, and commits each block's
results (block, receipts, events, state writes, tree nodes, head) in one store transaction.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from itertools import islice

from mpsnode.consensus import crypto
from mpsnode.consensus.block import Block, Header, decode_header
from mpsnode.consensus.encoding import encode
from mpsnode.consensus.errors import InvalidTransaction
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.receipt import encode_receipts
from mpsnode.consensus.settlement import L1Facts
from mpsnode.consensus.smt import SparseMerkleTree
from mpsnode.consensus.state import Account, State
from mpsnode.consensus.stf.transition import BlockResult, Verdicts, build_block, state_transition
from mpsnode.consensus.tx import SignedTx
from mpsnode.node import parallel
from mpsnode.node.errors import StoreError
from mpsnode.node.store import APART_MIN_BYTES, BlockCommit, Head, Store, StoreReader

GENESIS_META = b"genesis"
GENESIS_HASH_META = b"genesis_hash"
NODE_CACHE_RECORDS = 1 << 17  # about 20 MB of tree records
DECODED_ACCOUNTS = 1 << 16  # decoded accounts kept between blocks (a few hundred bytes each)


class NodeCache:
    """Sparse-Merkle records by hash, kept between the blocks a chain builds.

    A record is the preimage of the hash it is stored under, so a kept one can never be stale, and
    a block's new records (every node on every path it changed, the ones the next block reads
    first) go in as it commits. A build then reads a store only for the records it has never seen,
    instead of every node on every path it changes. When full, the oldest quarter is dropped.
    """

    def __init__(self, limit: int = NODE_CACHE_RECORDS) -> None:
        self._records: dict[bytes, bytes] = {}
        self._limit = limit
        self._lock = threading.Lock()  # builds and commits run on worker threads

    def __len__(self) -> int:
        return len(self._records)

    def get(self, node_hash: bytes) -> bytes | None:
        return self._records.get(node_hash)

    def add(self, records: Mapping[bytes, bytes]) -> None:
        """Keep a block's new records."""
        with self._lock:
            self._records.update(records)
            self._trim()

    def keep(self, node_hash: bytes, record: bytes) -> None:
        """Keep one record read from a store."""
        with self._lock:
            self._records[node_hash] = record
            self._trim()

    def _trim(self) -> None:
        if len(self._records) > self._limit:
            for old in list(islice(self._records, len(self._records) - self._limit * 3 // 4)):
                del self._records[old]


class _CachedNodes:
    """The tree's node reads through a ``NodeCache`` first, then ``reader`` (whose finds it keeps)."""

    def __init__(self, reader: StoreReader, cache: NodeCache) -> None:
        self._reader, self._cache = reader, cache

    def get_node(self, node_hash: bytes) -> bytes | None:
        record = self._cache.get(node_hash)
        if record is None:
            record = self._reader.get_node(node_hash)
            if record is not None:
                self._cache.keep(node_hash, record)
        return record


class Chain:
    def __init__(self, store: Store, genesis: Genesis) -> None:
        self.store = store
        self.genesis = genesis
        self.config = genesis.config()
        self.genesis_hash = genesis.hash()
        head = store.head()
        if head is None:
            self._commit_genesis()
        else:
            stored = store.get_meta(GENESIS_HASH_META)
            if stored != self.genesis_hash:
                raise StoreError(
                    f"the store at hand belongs to genesis {stored.hex() if stored else '?'}, "
                    f"not {self.genesis_hash.hex()}"
                )
        self._head_header = decode_header(self._header_bytes(self.head.height))
        self._nodes = NodeCache()
        # accounts decoded by this chain's States, by key with their bytes (``State.decoded``): a
        # build or an apply decodes only the accounts the last block did not write. Emptied when
        # it outgrows ``DECODED_ACCOUNTS``.
        self.decoded_accounts: dict[bytes, tuple[bytes, Account]] = {}

    def _header_bytes(self, height: int) -> bytes:
        data = self.store.get_header(height)
        if data is None:
            raise StoreError(f"store has no header at height {height}")
        return data

    def _commit_genesis(self) -> None:
        items = self.genesis.state_items()
        tree = SparseMerkleTree(self.store)
        root = tree.update(items)
        header = self.genesis.header()
        if root != header.state_root:  # the incremental tree and the reference must agree
            raise StoreError("genesis state root mismatch between tree and reference")
        self.store.commit(
            BlockCommit(
                head=Head(0, header.hash(), root, header.timestamp_ms),
                block=b"",
                header=header.encode(),
                tx_ids=(),
                receipts=encode_receipts([]),
                events=encode([]),
                state_writes=items,
                node_writes=tree.pending_nodes(),
                meta={
                    GENESIS_META: json.dumps(self.genesis.to_json(), sort_keys=True).encode(),
                    GENESIS_HASH_META: header.hash(),
                },
            )
        )

    # reads -----------------------------------------------------------------------------------
    @property
    def head(self) -> Head:
        head = self.store.head()
        if head is None:
            raise StoreError("store is empty")
        return head

    @property
    def head_header(self) -> Header:
        return self._head_header

    def state(self) -> State:
        return State(self.store.get_state, self.decoded_accounts, self.store)

    def tree(self) -> SparseMerkleTree:
        """The state tree at the head, its records read through the chain's ``NodeCache``."""
        return SparseMerkleTree(
            _CachedNodes(self.store, self._nodes), self.head.state_root, parallel.smt_value_hashes
        )

    # writes ----------------------------------------------------------------------------------
    def apply(
        self, block: Block, *, verdicts: Verdicts | None = None, l1: L1Facts | None = None
    ) -> BlockResult:
        """Verify ``block`` on top of the head with ``state_transition`` and commit it; ``InvalidBlock``
        commits nothing. ``verdicts``: the block's signatures checked ahead (``compute_verdicts``);
        ``l1``: settlement mode, the L1 facts of the block's origin."""
        result = state_transition(
            self.state(), self.tree(), block, self._head_header, self.config, verdicts=verdicts, l1=l1
        )
        self._commit(block, result)
        return result

    def build(
        self,
        candidates: Iterable[SignedTx],
        timestamp_ms: int,
        key: crypto.Keypair,
        *,
        signatures_checked: bool = False,
        mempool_remove: Iterable[bytes] = (),
        l1: L1Facts | None = None,
    ) -> tuple[Block, BlockResult, list[tuple[SignedTx, InvalidTransaction]]]:
        """Build, sign and commit the next block from ``candidates`` (the sequencer's path)."""
        block, result, rejected = self.prepare(
            candidates, timestamp_ms, key, signatures_checked=signatures_checked, l1=l1
        )
        self._commit(block, result, mempool_remove)
        return block, result, rejected

    def prepare(
        self,
        candidates: Iterable[SignedTx],
        timestamp_ms: int,
        key: crypto.Keypair,
        *,
        signatures_checked: bool = False,
        reader: StoreReader | None = None,
        l1: L1Facts | None = None,
    ) -> tuple[Block, BlockResult, list[tuple[SignedTx, InvalidTransaction]]]:
        """Build and sign the next block without committing it; ``commit_prepared`` commits it.

        Nothing may commit in between (the block is built on the current head). ``reader`` (a
        ``store.snapshot()`` at the head, say) serves the state and tree reads instead of the store.
        ``l1``: settlement mode, the L1 facts of the origin the block names.
        """
        source = self.store if reader is None else reader
        state = State(source.get_state, self.decoded_accounts, source)
        tree = SparseMerkleTree(
            _CachedNodes(source, self._nodes), self.head.state_root, parallel.smt_value_hashes
        )
        return build_block(
            state,
            tree,
            self._head_header,
            self.config,
            candidates,
            timestamp_ms,
            key,
            signatures_checked=signatures_checked,
            l1=l1,
        )

    def commit_prepared(
        self,
        block: Block,
        result: BlockResult,
        *,
        mempool_remove: Iterable[bytes] = (),
        meta: Mapping[bytes, bytes] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Commit a block from ``prepare`` with the mempool removals and meta records that go with it.

        ``before_commit`` is passed to ``Store.commit``.
        """
        if block.header.parent_hash != self._head_header.hash():
            raise StoreError(f"block {block.height} was prepared on another head")
        self._commit(block, result, mempool_remove, meta, before_commit)

    def _commit(
        self,
        block: Block,
        result: BlockResult,
        mempool_remove: Iterable[bytes] = (),
        meta: Mapping[bytes, bytes] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        by_task: dict[int, list[list]] = defaultdict(list)
        for event in result.events:
            task_id = getattr(event, "task_id", None)
            if task_id is not None:
                by_task[task_id].append(event.encode_obj())
        head, tx_bytes, tail = block.encode_parts()
        self.store.commit(
            BlockCommit(
                head=Head(block.height, block.hash(), result.state_root, block.header.timestamp_ms),
                block=head,
                tx_bytes=tuple(tx_bytes),
                block_tail=tail,
                header=block.header.encode(),
                tx_ids=tuple(t.tx_id for t in block.txs),
                receipts=result.receipts_encoded,
                events=encode([e.encode_obj() for e in result.events]),
                state_writes=result.state_writes,
                node_writes=result.node_writes,
                task_events={t: encode(evs) for t, evs in by_task.items()},
                mempool_remove=tuple(mempool_remove),
                meta=dict(meta or {}),
                state_tails=_state_tails(block.txs, result.state_writes),
            ),
            before_commit=before_commit,
        )
        if len(self.decoded_accounts) > DECODED_ACCOUNTS:
            self.decoded_accounts.clear()
        self._nodes.add(result.node_writes)
        self._head_header = block.header


#: A state value ending with a delta this long is stored once (in its tx, which is longer, so
#: the store keeps it apart: the tail can point there).
TAIL_MIN_BYTES = APART_MIN_BYTES
_EDGE = 16  # bytes at each end of a delta that pick the candidate to compare in full


def _state_tails(
    txs: tuple[SignedTx, ...], writes: Mapping[bytes, bytes | None]
) -> dict[bytes, tuple[int, int, int]]:
    """``BlockCommit.state_tails`` of a block's txs: the state writes that end with one of its
    revealed deltas (a pending update is its delta's hash, then the delta). Each candidate is
    picked by its length and edges, then compared in full."""
    spans: dict[tuple[int, bytes, bytes], tuple[int, int, int]] = {}
    for index, stx in enumerate(txs):
        span = stx.delta_span()
        if span is not None and span[1] - span[0] >= TAIL_MIN_BYTES:
            delta = stx.tx.body.delta  # type: ignore[union-attr]  # delta_span: a RevealUpdate
            spans.setdefault((len(delta), delta[:_EDGE], delta[-_EDGE:]), (index, *span))
    if not spans:
        return {}
    lengths = sorted({n for n, _, _ in spans})
    tails: dict[bytes, tuple[int, int, int]] = {}
    for key, value in writes.items():
        if value is None or len(value) < TAIL_MIN_BYTES:
            continue
        for n in lengths:
            if n > len(value):
                break
            found = spans.get((n, value[len(value) - n : len(value) - n + _EDGE], value[-_EDGE:]))
            if found is not None:
                index, start, stop = found
                if value.endswith(memoryview(txs[index].encode())[start:stop]):
                    tails[key] = found
                    break
    return tails
