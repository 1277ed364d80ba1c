"""Audit replay: re-execute a whole chain from genesis in a fresh temporary state, checking every root.

The blocks come from a node's home (its LMDB store, opened read-only) or from an export file. The
state is this module's own: the state map and the sparse-Merkle node records in memory, started
from the genesis and never shared with the chain being audited. Each block goes through
``verifier.checks.verify_block`` (the verifier daemon's own check, that is the state transition
itself), and its receipts are folded into the ``Audit``.

Each small batch of blocks is decoded on this thread, and its signatures are checked in two halves
on two worker threads (the batch kernel runs outside the GIL), up to ``READ_AHEAD`` batches ahead
of the one this thread re-executes. Checking signatures costs about as much as executing, and
executing (which holds the GIL) is the critical path, so the two checking threads run at a lower
priority (``VERIFY_NICE``): this thread keeps a core whenever it can run, and both cores check
signatures whenever it waits (3 alternating runs: 7.4-7.6 s instead of 8.1-8.4 s with one
checking thread).
Node records no longer reachable from the current root are dropped every ``PRUNE_EVERY`` blocks,
so memory follows the live state, not the chain's length.

On the first failed check the replay stops and returns the divergence report, built exactly as
the daemon builds it (``verifier.divergence.Investigation``). After every block the supply
equation is checked (``consensus.invariants.SupplyTracker``: every unit held, burned or withdrawn,
against the genesis supply and the deposits); a break is a ``supply`` divergence.

On a chain that settles on L1 the replay reads the L1 itself (an ``L1Follower``): each block is
judged with the deposits L1 holds, every output posted to the oracle is compared with the output
root of the replayed block at its height, and at the end the portal's balance is set against
what the L2 holds (``ReplayOutcome.settlement``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from mpsnode.consensus.block import Block, Header, decode_header
from mpsnode.consensus.errors import MpsError
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.hashing import ZERO32
from mpsnode.consensus.invariants import SupplyTracker
from mpsnode.consensus.receipt import decode_receipts, receipts_root
from mpsnode.consensus.settlement import WEI_PER_UNIT, L1Facts, output_root
from mpsnode.consensus.smt import NODE_TAG, SparseMerkleTree
from mpsnode.consensus.state import Account, Config, State, Task, task_key
from mpsnode.consensus.stf.transition import BlockResult
from mpsnode.node import parallel
from mpsnode.node.chain import GENESIS_HASH_META
from mpsnode.node.errors import ExportError, StoreError, WrongGenesis
from mpsnode.node.export import ExportReader
from mpsnode.node.home import Home
from mpsnode.node.store import LmdbStore
from verifier.checks import (
    BATCH_MIN,
    Decoded,
    Divergence,
    Prechecked,
    assemble,
    decode_many,
    hash_deltas,
    verify_block,
    verify_unsplit,
)
from verifier.divergence import ClaimedProofs, Investigation, proofs_from_store
from verifier.replay.audit import Audit

if TYPE_CHECKING:  # the caller makes the follower; importing web3 and eth-account costs a second
    from mpsnode.node.l1.follower import L1Follower

PRUNE_EVERY = 512
BATCH_BLOCKS = 16  # small batches: the executing thread starts early and never waits long
BATCH_BYTES = 256 << 10
READ_AHEAD = 3  # batches decoded and being checked beyond the one executing
VERIFY_THREADS = 2


class ReplayState:
    """A fresh, temporary state: the key-value map and the tree's node records, in memory."""

    def __init__(self, genesis: Genesis) -> None:
        self.items: dict[bytes, bytes] = {}
        self.nodes: dict[bytes, bytes] = {}
        # the tree reads a node record per level of every path it updates: ``dict.get`` itself, bound
        # (rebound when ``prune`` replaces the dict), costs no Python frame per read
        self.get_node: Callable[[bytes], bytes | None] = self.nodes.get
        tree = SparseMerkleTree(self, ZERO32)
        items = genesis.state_items()
        root = tree.update(items)
        if root != genesis.header().state_root:
            raise StoreError("the genesis state root does not match the genesis header")
        self.items.update(items)
        self.nodes.update(tree.pending_nodes())
        self.root = root

    def get_state(self, key: bytes) -> bytes | None:
        return self.items.get(key)

    def apply(
        self, writes: dict[bytes, bytes | None], nodes: dict[bytes, bytes], root: bytes
    ) -> dict[bytes, bytes | None]:
        """Apply a block's writes; the written keys' values before them."""
        old = {key: self.items.get(key) for key in writes}
        for key, value in writes.items():
            if value is None:
                self.items.pop(key, None)
            else:
                self.items[key] = value
        self.nodes.update(nodes)
        self.root = root
        return old

    def prune(self) -> None:
        """Keep only the node records reachable from the current root."""
        live: dict[bytes, bytes] = {}
        stack = [self.root] if self.root != ZERO32 else []
        while stack:
            h = stack.pop()
            rec = self.nodes[h]
            live[h] = rec
            if rec[0] == NODE_TAG:
                for child in (rec[1:33], rec[33:65]):
                    if child != ZERO32 and child not in live:
                        stack.append(child)
        self.nodes = live
        self.get_node = live.get


class ChainSource(Protocol):
    """Where replayed blocks come from."""

    genesis: Genesis
    head_height: int
    description: str

    def blocks(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """``(height, block bytes, claimed receipts or None)`` from height 1, in order."""

    def claimed_proofs(self, header: Header, keys: list[bytes]) -> ClaimedProofs | None:
        """Proofs of ``keys`` against ``header``'s state root from the claimed side, if it has any."""

    def close(self) -> None: ...


class HomeSource:
    """The blocks of a node's home, read from its LMDB store opened read-only (safe while it runs)."""

    def __init__(self, home_path: str | Path) -> None:

        home = Home.open(home_path)
        if not home.data_path.exists():
            raise FileNotFoundError(f"{home.data_path} holds no chain yet: start a node on this home first")
        self.genesis = home.genesis()
        self.store = LmdbStore(home.data_path, map_size=home.map_size, readonly=True)
        try:
            head = self.store.head()
            if head is None:
                raise StoreError(f"the store in {home.data_path} is empty")
            if self.store.get_meta(GENESIS_HASH_META) != self.genesis.hash():
                raise StoreError(f"the store in {home.data_path} is not of {home.path}/genesis.json")
        except BaseException:
            self.store.close()
            raise
        self.head_height = head.height
        self.description = f"home {home.path}"

    def blocks(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        for height in range(1, self.head_height + 1):
            data = self.store.get_block(height)
            if not data:
                raise StoreError(f"the store has no block at height {height}")
            yield height, data, self.store.get_receipts(height)

    def claimed_proofs(self, header: Header, keys: list[bytes]) -> ClaimedProofs | None:
        stored = self.store.get_header(header.height)
        if stored is None or decode_header(stored) != header:
            return ClaimedProofs(self.description, note="the home stores another header at this height")
        return proofs_from_store(self.store, header.state_root, keys, self.description)

    def close(self) -> None:
        self.store.close()


class ExportSource:
    """The blocks of an export file (``mpsnode export``); it holds no state to prove keys with."""

    def __init__(self, path: str | Path) -> None:
        self.reader = ExportReader(path)
        self.genesis = self.reader.genesis
        self.head_height = self.reader.head_height
        self.description = f"export {path}"

    def blocks(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        return self.reader.blocks()

    def claimed_proofs(self, header: Header, keys: list[bytes]) -> ClaimedProofs | None:
        note = (
            "an export holds blocks and receipts, not state: replay the node's --home to compare state "
            "keys with its claimed root"
        )
        return ClaimedProofs(self.description, note=note)

    def close(self) -> None:
        self.reader.close()


@dataclass
class ReplayOutcome:
    ok: bool
    blocks: int  # blocks that passed every check
    txs: int
    seconds: float
    head: Header
    audit: Audit
    genesis: Genesis
    genesis_pinned: bool
    report: dict[str, Any] | None = None
    investigation: Investigation | None = None
    claimed: ClaimedProofs | None = None
    settlement: dict[str, Any] | None = None  # settlement mode: outputs and the portal against L2

    @property
    def settled(self) -> bool:
        """No settlement check failed (always true on a chain without L1)."""
        return self.settlement is None or bool(self.settlement.get("ok"))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chain_id": self.genesis.chain_id,
            "genesis_hash": self.genesis.hash().hex(),
            "genesis_pinned": self.genesis_pinned,
            "params": self.genesis.params.to_json(),
            "blocks": self.blocks,
            "txs": self.txs,
            "seconds": round(self.seconds, 3),
            "blocks_per_s": round(self.blocks / self.seconds, 1) if self.seconds else None,
            "txs_per_s": round(self.txs / self.seconds, 1) if self.seconds else None,
            "head": {
                "height": self.head.height,
                "hash": self.head.hash().hex(),
                "state_root": self.head.state_root.hex(),
            },
            "audit": self.audit.to_json(),
            "divergence": self.report,
            **({} if self.settlement is None else {"settlement": self.settlement}),
        }


def _batches(source: ChainSource) -> Iterator[list[tuple[int, bytes, bytes | None]]]:
    """The source's blocks in small batches (about ``BATCH_BYTES``, at most ``BATCH_BLOCKS``)."""
    batch: list[tuple[int, bytes, bytes | None]] = []
    size = 0
    for item in source.blocks():
        batch.append(item)
        size += len(item[1])
        if len(batch) >= BATCH_BLOCKS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


CLAIMED_RECEIPTS = "claimed_receipts"


def check_claimed_receipts(block: Block, result: BlockResult, claimed: bytes | None) -> None:
    """The receipts stored with ``block`` are the ones it produced (so they hash to its header's
    receipts root); else a ``claimed_receipts`` ``Divergence``: the file or store was altered."""
    if claimed is None or claimed == result.receipts_encoded:
        return
    try:
        root = receipts_root(decode_receipts(claimed)).hex()
    except MpsError:
        root = "(they do not decode)"
    raise Divergence(
        CLAIMED_RECEIPTS,
        block.height,
        "the receipts stored with this block are not the ones it produced: they do not hash to the "
        "header's receipts_root, so the source was altered after the block was made",
        computed=result.receipts_root.hex(),
        claimed=root,
        block=block,
        result=result,
    )


def _prechecked(
    source: ChainSource, config: Config, pool: ThreadPoolExecutor
) -> Iterator[tuple[Prechecked, bytes | None]]:
    """Decoded and signature-checked blocks, the signatures of the next ``READ_AHEAD`` batches
    checked on ``pool`` while this thread executes.

    Decoding holds the GIL, so it stays on this thread; the signature batch kernel does not, so a
    batch's signatures are checked in two halves on ``pool``'s threads, and its revealed deltas
    hashed there too (``hash_deltas``).
    """
    pending: deque[tuple[list[Decoded], list[bytes | None], list[Future[list[bool]]]]] = deque()

    def ready() -> Iterator[tuple[Prechecked, bytes | None]]:
        decoded, receipts, parts = pending.popleft()
        oks = [ok for part in parts for ok in part.result()]
        return zip(assemble(decoded, oks), receipts, strict=True)

    for batch in _batches(source):
        decoded, triples = decode_many([(h, data) for h, data, _ in batch], config)
        half = len(triples) // 2 if len(triples) >= 2 * BATCH_MIN else 0
        parts = [pool.submit(verify_unsplit, triples[:half])] if half else []
        parts.append(pool.submit(_verify_and_hash, triples[half:], decoded))
        pending.append((decoded, [r for _, _, r in batch], parts))
        if len(pending) > READ_AHEAD:
            yield from ready()
    while pending:
        yield from ready()


VERIFY_NICE = 10


def _yield_to_executor() -> None:
    """A pool thread's start: a lower scheduling priority (a higher nice) for this thread alone, so
    that the executing thread, the replay's critical path, always has a core when it can run; the
    pool takes the other core and whatever time the executing thread waits. Best effort."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), VERIFY_NICE)


def _verify_and_hash(triples: list[tuple[bytes, bytes, bytes]], decoded: list[Decoded]) -> list[bool]:
    """On a pool thread: half a batch's signatures, and its deltas hashed ahead (``hash_deltas``)."""
    oks = verify_unsplit(triples)
    hash_deltas(decoded)
    return oks


SUPPLY = "supply"


def _supply_divergence(block: Block, result: BlockResult, tracker: SupplyTracker) -> Divergence:
    breakdown, supply = tracker.breakdown()
    return Divergence(
        SUPPLY,
        block.height,
        "the supply equation breaks after this block: balances + bonded + unbonding + escrows + burned "
        "+ withdrawn differ from the genesis supply plus the deposits",
        computed={"held_and_withdrawn": breakdown.total},
        claimed={"supply": supply},
        block=block,
        result=result,
    )


class _Settlement:
    """What a replay checks against L1: the facts of each block, the posted outputs, the portal."""

    def __init__(self, follower: L1Follower) -> None:
        self.follower = follower
        follower.refresh()
        count = follower.l1.output_count()
        self.posted = {o.l2_height: o for o in (follower.l1.output(i) for i in range(count))}
        self.checked: list[int] = []
        self.mismatched: list[dict[str, Any]] = []

    def facts(self, pre: Prechecked, state: State) -> L1Facts | None:
        if pre.block is None or pre.block.header.l1_origin is None:
            return None
        # the follower reads L1 on by itself when the origin is past what it has read
        return self.follower.facts(pre.block.header.l1_origin, state.get_settlement().deposits)

    def check_output(self, header: Header, state: State) -> None:
        posted = self.posted.get(header.height)
        if posted is None:
            return
        record = state.get_settlement()
        root = output_root(header.state_root, record.withdrawals_root(), header.hash())
        self.checked.append(header.height)
        if root != posted.root:
            self.mismatched.append(
                {
                    "output": posted.index,
                    "l2_height": header.height,
                    "posted": posted.root.hex(),
                    "replayed": root.hex(),
                }
            )

    def summary(self, state: State, tracker: SupplyTracker) -> dict[str, Any]:
        l1 = self.follower.l1
        totals = l1.portal_totals()
        record = state.get_settlement()
        breakdown, _ = tracker.breakdown()
        credited = self.follower.deposits[: record.deposits]
        pending = record.withdrawn - totals["paid"]
        in_flight = totals["deposited"] - record.deposited
        backing = (breakdown.held + pending + in_flight) * WEI_PER_UNIT
        checks = {
            "outputs_match": not self.mismatched,
            "deposits_match_l1": sum(d.amount for d in credited) == record.deposited
            and len(credited) == record.deposits,
            "portal_equals_l2": backing == totals["balance_wei"],
        }
        return {
            "ok": all(checks.values()),
            **checks,
            "portal_balance_wei": totals["balance_wei"],
            "l2_held_units": breakdown.held,
            "withdrawals_pending_units": pending,
            "deposits_in_flight_units": in_flight,
            "outputs_checked": len(self.checked),
            "outputs_mismatched": self.mismatched,
        }


def replay(
    source: ChainSource,
    *,
    progress: bool | None = None,
    on_block: Callable[[Header], None] | None = None,
    genesis_hash: bytes | None = None,
    l1: L1Follower | None = None,
) -> ReplayOutcome:
    """Re-execute every block of ``source`` from genesis; stops at the first failed check.

    ``genesis_hash``: the genesis the auditor expects (pinned); a source of another genesis is refused
    (``WrongGenesis``) before anything runs. Every block's stored receipts (the "claimed" ones a reader
    of the source would trust) must be exactly those the block produced, else the replay stops with a
    ``claimed_receipts`` divergence. ``progress``: a progress bar on stderr (None: only on a terminal,
    for chains over 200 blocks). ``l1``: the L1 a settlement-mode chain settles on (required there).
    """
    if genesis_hash is not None and source.genesis.hash() != genesis_hash:
        raise WrongGenesis(
            f"{source.description} is a chain of genesis {source.genesis.hash().hex()}, not of the pinned "
            f"{genesis_hash.hex()}"
        )

    genesis = source.genesis
    if genesis.l1 is not None and l1 is None:
        raise ValueError(
            "this chain settles on L1: a replay reads the deposits and the posted outputs there; give --l1 URL"
        )
    config = genesis.config()
    state = ReplayState(genesis)
    tracker = SupplyTracker(state.items.items())
    accounts: dict[bytes, tuple[bytes, Account]] = {}  # decoded accounts, shared by every block's State
    settlement = _Settlement(l1) if l1 is not None and genesis.l1 is not None else None
    audit = Audit()
    parent = genesis.header()
    t0 = time.perf_counter()
    txs = 0
    disable: bool | None = (None if source.head_height > 200 else True) if progress is None else not progress
    bar = tqdm(
        total=source.head_height, unit="blk", desc="replay", disable=disable, mininterval=0.5, smoothing=0.1
    )
    try:
        with ThreadPoolExecutor(
            VERIFY_THREADS, thread_name_prefix="replay-signatures", initializer=_yield_to_executor
        ) as pool:
            for pre, claimed_receipts in _prechecked(source, config, pool):
                try:
                    tree = SparseMerkleTree(state, state.root, parallel.smt_value_hashes)
                    view = State(state.get_state, accounts)
                    facts = settlement.facts(pre, view) if settlement is not None else None
                    block, result = verify_block(pre, parent, view, tree, config, facts)
                    check_claimed_receipts(block, result, claimed_receipts)
                    tracker.apply(
                        {k: state.items.get(k) for k in result.state_writes},
                        result.state_writes,
                        view.written_accounts(),
                    )
                    breakdown, supply = tracker.breakdown()
                    if breakdown.total != supply:
                        raise _supply_divergence(block, result, tracker)
                except Divergence as failure:
                    return _diverged(
                        source,
                        failure,
                        pre,
                        claimed_receipts,
                        parent,
                        state,
                        audit,
                        txs,
                        time.perf_counter() - t0,
                        genesis_hash is not None,
                    )
                state.apply(result.state_writes, result.node_writes, result.state_root)
                if settlement is not None:
                    settlement.check_output(block.header, State(state.get_state))
                audit.fold_block(block.height, result.receipts)
                while audit.undescribed:
                    task_id = audit.undescribed.pop()
                    record = state.get_state(task_key(task_id))
                    if record is not None:
                        audit.describe(task_id, Task.decode(record))
                txs += len(block.txs)
                parent = block.header
                if block.height % PRUNE_EVERY == 0:
                    state.prune()
                if on_block is not None:
                    on_block(parent)
                bar.update(1)
    finally:
        bar.close()
    if parent.height != source.head_height:
        raise ExportError(
            f"{source.description} announced head {source.head_height}, replay ended at {parent.height}"
        )
    return ReplayOutcome(
        True,
        parent.height,
        txs,
        time.perf_counter() - t0,
        parent,
        audit,
        genesis,
        genesis_hash is not None,
        settlement=None if settlement is None else settlement.summary(State(state.get_state), tracker),
    )


def _diverged(
    source: ChainSource,
    failure: Divergence,
    pre: Prechecked,
    claimed_receipts: bytes | None,
    parent: Header,
    state: ReplayState,
    audit: Audit,
    txs: int,
    seconds: float,
    pinned: bool,
) -> ReplayOutcome:
    inv = Investigation.start(
        failure,
        genesis=source.genesis,
        parent=parent,
        data=pre.data,
        claimed_receipts=claimed_receipts,
        get_state=state.get_state,
        get_node=state.get_node,
        source=source.description,
    )
    keys = inv.state_keys()
    claimed = source.claimed_proofs(inv.block.header, keys) if keys and inv.block is not None else None
    return ReplayOutcome(
        False,
        parent.height,
        txs,
        seconds,
        parent,
        audit,
        source.genesis,
        pinned,
        inv.report(claimed),
        inv,
        claimed,
    )
