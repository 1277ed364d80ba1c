"""The sequencer daemon: admits txs, acks them once durable, builds a block every block_time_ms.

The service is one nursery tree (``Sequencer.run``)::

    server (mpsnode.server.NodeServer)          one task per connection
      SUBMIT_TX -> submit(): decode, stateless checks            (the connection's task)
    verify workers (2)   batches of signatures on worker threads, outside the GIL (mpsnode.sigverify),
                         then admission of the batch: checks against the latest state and the
                         pending txs, reserving each admitted tx's id and nonce
    group commit         writes a batch of admitted txs to the LMDB mempool table in ONE write
                         transaction, then acks each (the ack means: on disk)
    block builder        the one task that builds blocks; receives durable txs through a channel

Blocks follow each other ``block_time_ms`` apart, start to start. A block that takes longer than
that is followed at once if durable txs are waiting, and otherwise up to a quarter of a slot later
(``GRACE_OF_BLOCK_TIME``), as soon as one arrives: its receipts have just gone out, and the txs
they prompt (a round's reveals after its commitments) should not wait a whole slot behind an
empty block.

Block order never depends on which task ran first: a block's candidates are the durable
mempool in table order (``MempoolIndex.select``), and every block is committed with
its mempool removals (included txs, and the admitted txs that can never be included, recorded
as dropped in the same transaction) in ONE LMDB write transaction (``Chain.commit_prepared``).

Every store write (a group commit, a block) runs whole in one worker thread through
``sequencer.writes.run_write``, one at a time (``_write_lock``): the loop is held only while the
worker writes its keys (py-lmdb retakes the GIL around every put, which a worker thread cannot do
quickly against a busy loop), and is free during the fsync. Signature checks run on worker threads
too, as a numba kernel that releases the GIL once per batch. Block building (the STF) runs on the
loop thread, reading from one LMDB snapshot; its time and the commit's are exported as metrics.

Restart resumes from the store: the chain from its head, the mempool from its table (decoded
and re-verified; entries already included or invalid are removed). SIGINT/SIGTERM cancel the
tree; a write in progress completes first (its wait is shielded), so the store is always whole.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from mpsnode.consensus import crypto
from mpsnode.consensus.encoding import decode, encode, expect_list
from mpsnode.consensus.errors import (
    BadSignature,
    InvalidTransaction,
    MpsError,
    NonceMismatch,
    SystemTxRefused,
    TxTooLarge,
)
from mpsnode.consensus.events import RoundClosed, Slashed
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.settlement import output_root
from mpsnode.consensus.sigverify import verify_batch, warm_up
from mpsnode.consensus.state import ACCOUNT, EMPTY_ACCOUNT, UNBONDING_QUEUE, Account, State
from mpsnode.consensus.tx import Kind, RevealUpdate, SignedTx, decode_signed_tx, hash_ahead
from mpsnode.consensus.validation import validate_transaction
from mpsnode.node import collector, parallel
from mpsnode.node.chain import Chain
from mpsnode.node.errors import BadRequest, NotFound, ShuttingDown, VerificationFailed
from mpsnode.node.explorer.app import Explorer, serve_explorer
from mpsnode.node.files import load_key, load_l1_key
from mpsnode.node.home import Home
from mpsnode.node.l1.client import account
from mpsnode.node.lock import home_lock
from mpsnode.node.log import event, setup_logging
from mpsnode.node.messages import SEQUENCER, PendingTx, drop_pending_message
from mpsnode.node.metrics import serve_metrics
from mpsnode.node.server import HeadWatch, NodeServer, ServerConfig, apply_node_options
from mpsnode.node.store import LmdbStore, Store, StoreView
from mpsnode.node.wire import parse_hostport
from mpsnode.node.writes import run_write
from sequencer.admission import AdmissionPolicy, check_admission
from sequencer.evaluation import forge_output
from sequencer.mempool import Entry, MempoolIndex
from sequencer.metrics import Metrics
from sequencer.settlement import OutputAt, SequencerHooks, SettlementConfig, Settler

log = logging.getLogger("sequencer")

DROPPED_PREFIX = b"seq/dropped/"  # meta: tx id -> [height, code, reason] of an admitted tx left out for good
MIB = 1 << 20
ACCOUNT_CACHE = 1 << 16  # head accounts kept decoded for admission and selection, emptied beyond


@dataclass
class SequencerConfig:
    host: str = "127.0.0.1"
    port: int = 7070
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # the explorer (--http); None: not served
    block_time_ms: int | None = None  # None: the genesis parameter
    max_block_txs: int = 20_000
    policy: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    server: ServerConfig = field(default_factory=ServerConfig)
    verify_workers: int = 2
    verify_batch: int = 1024
    group_commit_txs: int = 8192
    group_commit_bytes: int = 256 * MIB
    group_commit_interval_ms: float = 0.0  # gather admitted txs this long after a write before the next
    settlement: SettlementConfig | None = None  # required on a chain that settles on L1


@dataclass(slots=True)
class _Submission:
    stx: SignedTx
    raw: bytes
    done: Callable[[bytes | MpsError], None]


class Sequencer:
    def __init__(
        self,
        store: Store,
        genesis: Genesis,
        key: crypto.Keypair,
        config: SequencerConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if key.address != genesis.sequencer:
            raise ValueError(
                f"key {key.address.hex()} is not the genesis sequencer {genesis.sequencer.hex()}"
            )
        self.store = store
        self.genesis = genesis
        self.key = key
        self.config = config or SequencerConfig()
        self.metrics = metrics or Metrics()
        self.chain = Chain(store, genesis)
        self.params = genesis.params
        self.chain_id = genesis.chain_id
        self.block_time = (self.config.block_time_ms or self.params.block_time_ms) / 1000
        self.index = MempoolIndex()
        self.watch = HeadWatch(self.chain.head.height)
        self.server = NodeServer(
            store,
            genesis,
            self.watch,
            kind=SEQUENCER,
            gateway=self,
            config=self.config.server,
            stats=self.metrics,
        )
        self._reader = State(store.get_state, self.chain.decoded_accounts)
        self._accounts: dict[bytes, Account] = {}  # accounts at the head, read once per block
        self._committing = False
        self._write_lock = (
            trio.Lock()
        )  # one store write at a time: none waits for LMDB's lock holding the loop
        self._verify_send, self._verify_recv = trio.open_memory_channel[_Submission](8192)
        self._commit_send, self._commit_recv = trio.open_memory_channel[
            list[tuple[Entry, Callable[..., None]]]
        ](64)
        self._durable_send, self._durable_recv = trio.open_memory_channel[list[Entry]](1024)
        self._stopping = False
        self._chain_busy = self._compute_chain_busy()
        self._fresh = True  # durable txs arrived since the last selection
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self.metrics.height.set(self.chain.head.height)  # from the store: right at once after a restart
        self.settler: Settler | None = None
        if genesis.l1 is not None:
            if self.config.settlement is None:
                raise ValueError("this chain settles on L1: the sequencer needs --l1 URL and its L1 key")
            forge = self.forge_at_head if self.config.settlement.dishonest_material is not None else None
            hooks = SequencerHooks(
                lambda: self.chain.head_header, self.credited_deposits, self.wake, self.output_at_head, forge
            )
            self.settler = Settler(genesis.l1, self.config.settlement, hooks, self.metrics)

    # settlement --------------------------------------------------------------------------------
    def credited_deposits(self) -> int:
        """Deposits the head state has credited."""
        return self._reader.get_settlement().deposits if self.genesis.l1 is not None else 0

    def wake(self) -> None:
        """Have the builder make a block soon (deposits wait, or the L1 origin grows old)."""
        with contextlib.suppress(trio.WouldBlock):  # full: the builder has plenty to wake it already
            self._durable_send.send_nowait([])

    async def forge_at_head(self) -> tuple[OutputAt, dict[str, Any]]:
        """EVALUATION ONLY (``sequencer.evaluation``): the head's output, forged."""
        assert self.config.settlement is not None
        async with self._write_lock:
            header = self.chain.head_header
            deposits = State(self.store.get_state).get_settlement().deposits
            l1_address = bytes.fromhex(self.config.settlement.key.address[2:])
            root, material = forge_output(self.store, header, self.genesis.fee_recipient, l1_address)
        return OutputAt(header.height, root, header.l1_origin or 0, deposits), material

    async def output_at_head(self) -> OutputAt:
        """The head block's output, read with no block committing meanwhile."""
        async with self._write_lock:
            header = self.chain.head_header
            record = State(self.store.get_state).get_settlement()
        root = output_root(header.state_root, record.withdrawals_root(), header.hash())
        return OutputAt(header.height, root, header.l1_origin or 0, record.deposits)

    # TxGateway (called by the server) ------------------------------------------------------------
    async def submit(self, raw: bytes, done: Callable[[bytes | MpsError], None]) -> None:
        if self._stopping:
            raise ShuttingDown("the sequencer is stopping")
        t0 = trio.current_time()
        metrics = self.metrics

        def finish(result: bytes | MpsError) -> None:
            if isinstance(result, MpsError):
                metrics.rejected.labels(str(result.code)).inc()
            else:  # admitted: counted once per group commit (its one success path)
                metrics.ack_seconds.observe(trio.current_time() - t0)
            done(result)

        try:
            if len(raw) > self.params.max_tx_bytes:
                raise TxTooLarge(len(raw), self.params.max_tx_bytes)
            # a large tx's id (a hash of all of it) is hashed on a verify thread, not on the loop
            stx = decode_signed_tx(
                raw, max_bytes=self.params.max_tx_bytes, hash_id=len(raw) < ID_ON_THREAD_BYTES
            )
            validate_transaction(stx, self.chain_id, self.params, check_signature=False)
            if stx.tx.kind == Kind.DEPOSIT:
                raise SystemTxRefused()
        except MpsError as exc:
            finish(exc)
            return
        submission = _Submission(stx, raw, finish)
        try:  # no yield while the verify queue has room (the server's reader yields once per burst)
            self._verify_send.send_nowait(submission)
        except trio.WouldBlock:
            await self._verify_send.send(submission)

    def pending(self, tx_id: bytes) -> bool:
        return tx_id in self.index

    def dropped(self, tx_id: bytes) -> tuple[int, int, str] | None:
        raw = self.store.get_meta(DROPPED_PREFIX + tx_id)
        if raw is None:
            return None
        height, code, reason = expect_list(
            decode(raw, max_bytes=len(raw), max_str_len=4096), 3, "dropped record"
        )
        return height, code, reason

    def next_nonce(self, address: bytes, state_nonce: int) -> tuple[int, int]:
        return self.index.next_nonce(address, state_nonce), self.index.sender_count(address)

    def mempool_size(self) -> tuple[int, int]:
        return self.index.count, self.index.bytes

    def pending_of(self, address: bytes, state_nonce: int) -> list[PendingTx]:
        return [
            PendingTx(e.tx_id, e.nonce, e.stx.tx.fee, waiting)
            for e, waiting in self.index.of_sender(address, state_nonce)
        ]

    async def drop_pending(self, tx_id: bytes, signature: bytes) -> None:
        entry = self.index.get(tx_id)
        if entry is None or not self.index.is_durable(tx_id):
            raise NotFound(f"tx {tx_id.hex()} is not pending here")
        if not crypto.verify(entry.sender, drop_pending_message(tx_id), signature):
            raise VerificationFailed("the drop request is not signed by the tx's sender")
        waiting = dict(
            (e.tx_id, w) for e, w in self.index.of_sender(entry.sender, self._account(entry.sender).nonce)
        )
        if not waiting.get(tx_id):
            raise BadRequest(
                f"tx {tx_id.hex()} (nonce {entry.nonce}) is next in line, not waiting behind a nonce gap: it may "
                "be in the next block, so it cannot be dropped"
            )
        async with self._write_lock:
            await run_write(self.store.mempool_remove, [tx_id])
        self.index.release([tx_id])
        self._update_gauges()
        event(log, "dropped by its sender", tx_id=tx_id.hex(), nonce=entry.nonce)

    # the service ---------------------------------------------------------------------------------
    def explorer(self) -> Explorer:
        """The explorer over this sequencer's store (``--http``), with its L1 view when it settles."""

        def extra() -> dict[str, Any]:
            settler = self.settler
            if settler is None:
                return {}
            credited = self.chain.state().get_settlement().deposits
            return {
                "settlement": {
                    "l1_head": settler.follower.head,
                    "deposits_read": settler.follower.pending(credited) + credited,
                    "deposits_pending": settler.follower.pending(credited),
                    "last_output_l2_height": settler.last_posted_height,
                }
            }

        return Explorer(self.server, block_time_ms=int(self.block_time * 1000), node_extra=extra)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port once listening."""
        kernel = await trio.to_thread.run_sync(warm_up)
        self._load_mempool()
        cfg = self.config
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(cfg.verify_workers):
                    nursery.start_soon(self._verify_worker, self._verify_recv.clone())
                nursery.start_soon(self._group_commit)
                nursery.start_soon(self._builder)
                if self.settler is not None:
                    nursery.start_soon(self.settler.run)
                if cfg.metrics_port is not None:
                    self.metrics_port = await nursery.start(
                        serve_metrics, self.metrics, cfg.metrics_host, cfg.metrics_port
                    )
                if cfg.http_port is not None:
                    self.http_port = await nursery.start(
                        serve_explorer, self.explorer(), cfg.http_host, cfg.http_port
                    )
                self.port = await nursery.start(self.server.serve, cfg.host, cfg.port)
                head = self.chain.head
                event(
                    log,
                    "listening",
                    host=cfg.host,
                    port=self.port,
                    metrics_port=self.metrics_port,
                    height=head.height,
                    head=head.block_hash.hex(),
                    mempool=self.index.count,
                    chain_id=self.chain_id,
                    sigverify=kernel,
                    block_time_ms=int(self.block_time * 1000),
                )
                task_status.started(self.port)
        finally:
            self._stopping = True

    def _load_mempool(self) -> None:
        items = self.store.mempool_items()
        bad: list[bytes] = []
        loaded: list[Entry] = []
        for tx_id, raw in items:
            try:
                stx = decode_signed_tx(raw, max_bytes=self.params.max_tx_bytes)
                validate_transaction(stx, self.chain_id, self.params, check_signature=False)
            except InvalidTransaction:
                bad.append(tx_id)
                continue
            if stx.tx_id != tx_id or self.store.get_tx_location(tx_id) is not None:
                bad.append(tx_id)
                continue
            loaded.append(Entry(stx, raw))
        oks = verify_batch([(e.sender, e.tx_id, e.stx.signature) for e in loaded])
        good = []
        for entry, ok in zip(loaded, oks, strict=True):
            if not ok or self.index.by_nonce(entry.sender, entry.nonce) is not None:
                bad.append(entry.tx_id)
                continue
            self.index.reserve(entry)
            good.append(entry)
        self.index.make_durable(good)
        if bad:
            self.store.mempool_remove(bad)
        self._update_gauges()
        event(log, "mempool loaded", pending=len(good), removed=len(bad))

    async def _verify_worker(self, recv: trio.MemoryReceiveChannel[_Submission]) -> None:
        """Verify a batch of signatures on a worker thread, then admit the batch (see ``_admit``)."""
        limit = self.config.verify_batch
        async with recv:
            while True:
                batch = [await recv.receive()]
                while len(batch) < limit:
                    try:
                        batch.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                self.metrics.verify_batch_txs.observe(len(batch))
                oks, stxs = await trio.to_thread.run_sync(_verify_and_hash, [s.stx for s in batch])
                for sub, stx in zip(batch, stxs, strict=True):
                    sub.stx = stx
                admitted = self._admit(batch, oks)
                if admitted:
                    await self._commit_send.send(admitted)

    def _admit(self, batch: list[_Submission], oks: list[bool]) -> list[tuple[Entry, Callable[..., None]]]:
        """Check each verified tx against the latest state and the pending txs; reserve the admitted.

        Runs without a checkpoint, so each reservation sees every one made before it.
        """
        index, policy, included_at = self.index, self.config.policy, self._included_height
        admitted = []
        # the accounts the cache misses, read in one LMDB snapshot for the batch (taken now, without
        # a checkpoint until the end: a block committing meanwhile is as if it came after the batch)
        view = self._snapshot()
        reader = self._reader if view is None else State(view.get_state, self.chain.decoded_accounts)
        try:
            for sub, ok in zip(batch, oks, strict=True):
                if not ok:
                    sub.done(BadSignature("signature does not verify for the sender's key"))
                    continue
                stx = sub.stx
                try:
                    account = self._account(stx.tx.sender, reader)
                    check_admission(stx, len(sub.raw), account, index, policy, included_at)
                except MpsError as exc:
                    sub.done(exc)
                    continue
                entry = Entry(stx, sub.raw)
                index.reserve(entry)
                admitted.append((entry, sub.done))
        finally:
            if view is not None:
                view.close()
        return admitted

    def _snapshot(self) -> StoreView | None:
        """One LMDB read view of the head for a batch of reads (None on a memory store, where a
        snapshot copies every table and a direct read is as cheap)."""
        return self.store.snapshot() if isinstance(self.store, LmdbStore) else None

    def _account(self, address: bytes, reader: State | None = None) -> Account:
        """The account at the head, cached between blocks (bypassed while a block commits)."""
        account = self._accounts.get(address)
        if account is None:
            account = (reader or self._reader).get_account(address)
            if not self._committing:
                self._accounts[address] = account
        return account

    def _remember_accounts(self, writes: Mapping[bytes, bytes | None]) -> None:
        """Cache the accounts a block just committed wrote, as the head now holds them (this task
        is the only block writer): the admissions and the selection after it read none of them
        from the store, and decode none the block's build decoded already."""
        if len(self._accounts) > ACCOUNT_CACHE:
            self._accounts.clear()
        for key, value in writes.items():
            if key[:1] == ACCOUNT:
                self._accounts[key[1:]] = (
                    EMPTY_ACCOUNT if value is None else self._reader.decode_account(key, value)
                )

    def _included_height(self, tx_id: bytes) -> int | None:
        location = self.store.get_tx_location(tx_id)
        return None if location is None else location[0]

    async def _group_commit(self) -> None:
        recv = self._commit_recv
        max_txs, max_bytes = self.config.group_commit_txs, self.config.group_commit_bytes
        interval = self.config.group_commit_interval_ms / 1000
        last_end = trio.current_time()
        while True:
            batch = list(await recv.receive())
            size = sum(entry.size for entry, _ in batch)
            # optionally gather for up to ``interval`` after the previous write, then write all at once
            if interval:
                with trio.move_on_at(last_end + interval):
                    while len(batch) < max_txs and size < max_bytes:
                        items = await recv.receive()
                        batch += items
                        size += sum(entry.size for entry, _ in items)
            while len(batch) < max_txs and size < max_bytes:
                try:
                    items = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                batch += items
                size += sum(entry.size for entry, _ in items)
            t0 = time.perf_counter()
            try:
                async with self._write_lock:
                    await run_write(self.store.mempool_put, [(entry.tx_id, entry.raw) for entry, _ in batch])
            except MpsError as exc:
                self.index.release([entry.tx_id for entry, _ in batch])
                event(log, "mempool write failed", logging.ERROR, error=exc.reason, txs=len(batch))
                for _, done in batch:
                    done(exc)
                continue
            self.metrics.group_commit_seconds.observe(time.perf_counter() - t0)
            self.metrics.group_commit_txs.observe(len(batch))
            for entry, done in batch:
                done(entry.tx_id)
            self.metrics.admitted.inc(len(batch))
            last_end = trio.current_time()
            await self._durable_send.send([entry for entry, _ in batch])
            self._update_gauges()

    # blocks ----------------------------------------------------------------------------------------
    def _compute_chain_busy(self) -> bool:
        """Whether the chain needs blocks without txs: open tasks (joining or running) or unbonding."""
        if self._reader.get_globals().open_tasks:
            return True
        for _ in self.store.iter_state(UNBONDING_QUEUE):
            return True
        return False

    def _take_durable(self, entries: list[Entry]) -> None:
        self.index.make_durable(entries)
        self._fresh = True

    def _has_work(self) -> bool:
        if self._chain_busy or (self.index.durable_count > 0 and self._fresh):
            return True
        return self.settler is not None and self.settler.has_work(self.credited_deposits())

    async def _builder(self) -> None:
        recv = self._durable_recv
        next_at = finished = trio.current_time()
        grace = self.block_time * GRACE_OF_BLOCK_TIME
        while True:
            while True:  # absorb what is durable already
                try:
                    self._take_durable(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            if not self._has_work():
                self._take_durable(await recv.receive())
                continue
            if trio.current_time() < next_at:
                with trio.move_on_at(next_at):
                    async for entries in recv:
                        self._take_durable(entries)
                continue
            if not (self._fresh or self.index.durable_count) and trio.current_time() < finished + grace:
                # The last block ran past its slot and nothing new is durable: its receipts just
                # went out, so wait a moment for the txs they prompt rather than build an empty
                # block now and make those txs wait a whole slot for the next.
                with trio.move_on_at(finished + grace):
                    self._take_durable(await recv.receive())
                continue
            started = trio.current_time()
            await self._produce_block()
            finished = trio.current_time()
            next_at = started + self.block_time

    async def _produce_block(self) -> None:
        chain, index, metrics = self.chain, self.index, self.metrics
        t0 = time.perf_counter()
        selection = index.select(
            lambda sender: self._account(sender).nonce,
            max_txs=self.config.max_block_txs,
            max_bytes=self.params.max_block_bytes,
        )
        self._fresh = False
        l1 = None
        if self.settler is not None:
            credited = self.credited_deposits()
            l1 = self.settler.facts(credited)
            settle = self.settler.has_work(credited)
        else:
            settle = False
        if not (selection.candidates or selection.stale or self._chain_busy or settle):
            return  # only txs waiting for a nonce gap: no block until something changes
        head = chain.head
        timestamp = max(int(time.time() * 1000), head.timestamp_ms + 1)
        view = self._snapshot()
        try:
            # Built on a worker thread: nothing commits meanwhile (this task is the only block
            # writer), and the loop goes on reading, verifying and acknowledging submissions.
            block, result, rejected = await trio.to_thread.run_sync(
                functools.partial(
                    chain.prepare,
                    [e.stx for e in selection.candidates],
                    timestamp,
                    self.key,
                    signatures_checked=True,
                    reader=view,
                    l1=l1,
                )
            )
        finally:
            if view is not None:
                view.close()
        t1 = time.perf_counter()
        dropped: list[tuple[bytes, MpsError]] = []
        for stx, exc in rejected:
            if isinstance(exc, NonceMismatch) and exc.got > exc.expected:
                continue  # ahead: waits for the gap to fill
            dropped.append((stx.tx_id, exc))
        for entry in selection.stale:
            account_nonce = self._account(entry.sender).nonce
            dropped.append((entry.tx_id, NonceMismatch(account_nonce, entry.nonce)))
        included = [stx.tx_id for stx in block.txs]
        meta = {
            DROPPED_PREFIX + tx_id: encode([block.height, exc.code, exc.reason[:1000]])
            for tx_id, exc in dropped
        }
        # Readers see the block the moment its commit lands, before this task resumes: forget the
        # accounts it changes now, and cache none while it commits.
        for key in result.state_writes:
            if key[:1] == ACCOUNT:
                self._accounts.pop(key[1:], None)
        self._committing = True
        try:
            async with self._write_lock:
                await run_write(
                    chain.commit_prepared,
                    block,
                    result,
                    mempool_remove=included + [tx_id for tx_id, _ in dropped],
                    meta=meta,
                )
        finally:
            self._committing = False
        t2 = time.perf_counter()
        self._remember_accounts(result.state_writes)
        index.release(included)
        index.release(tx_id for tx_id, _ in dropped)
        self.watch.advance(block.height)
        self._chain_busy = self._compute_chain_busy()
        if dropped:
            self._fresh = True  # a drop may unblock nothing, but re-selecting is cheap and safe
        rounds = slashes = void = 0
        for ev in result.events:
            if isinstance(ev, RoundClosed):
                rounds += 1
                void += bool(ev.void)
            elif isinstance(ev, Slashed):
                slashes += 1
        metrics.height.set(block.height)
        metrics.blocks.inc()
        metrics.included.inc(len(included))
        metrics.build_seconds.observe(t1 - t0)
        metrics.commit_seconds.observe(t2 - t1)
        metrics.rounds_closed.inc(rounds)
        metrics.rounds_void.inc(void)
        metrics.slashes.inc(slashes)
        for _, err in dropped:
            metrics.dropped.labels(str(err.code)).inc()
        self._update_gauges()
        event(
            log,
            "block",
            height=block.height,
            hash=block.hash().hex(),
            txs=len(included),
            dropped=len(dropped),
            waiting=selection.waiting,
            mempool=index.count,
            build_ms=round((t1 - t0) * 1000, 2),
            commit_ms=round((t2 - t1) * 1000, 2),
            state_root=result.state_root.hex(),
            rounds_closed=rounds,
            slashes=slashes,
        )

    def _update_gauges(self) -> None:
        self.metrics.mempool_txs.set(self.index.count)
        self.metrics.mempool_bytes.set(self.index.bytes)


#: A submitted tx this long or longer has its id hashed on a verify thread instead of the loop.
ID_ON_THREAD_BYTES = 1 << 16

#: After a block that ran past its slot, the next waits up to this part of a slot after it for
#: new durable txs, unless some are waiting already (``Sequencer._builder``).
GRACE_OF_BLOCK_TIME = 0.25


# ---------------------------------------------------------------------------------------------
# The process


def _verify_and_hash(stxs: list[SignedTx]) -> tuple[list[bool], list[SignedTx]]:
    """The signatures of a batch, checked on a worker thread (with the ids ``submit`` left to hash),
    and the txs with their ids; its deltas hashed there too, and the tree values they will be, so
    the block builder does not hash them again (``hash_ahead``, ``parallel.hash_update_value_ahead``)."""
    stxs = [stx.with_id() for stx in stxs]
    oks = verify_batch([(stx.tx.sender, stx.tx_id, stx.signature) for stx in stxs])
    good = [stx for stx, ok in zip(stxs, oks, strict=True) if ok]
    hash_ahead(good)
    for stx in good:
        body = stx.tx.body
        if type(body) is RevealUpdate:
            parallel.hash_update_value_ahead(body.delta_hash(), body.delta)
    return oks, stxs


async def serve(sequencer: Sequencer, on_ready: Callable[[Sequencer], None] | None = None) -> None:
    """Run ``sequencer`` until SIGINT or SIGTERM, then stop cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(sequencer.run)
            if on_ready is not None:
                on_ready(sequencer)
            async for signum in signals:
                event(log, "stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


@dataclass(frozen=True, slots=True)
class L1Options:
    """The sequencer's settlement options as given on the command line (None: the home's)."""

    url: str | None = None
    key_file: str | None = None
    confirmations: int = 0
    output_blocks: int = 20
    output_seconds: float = 5.0
    evaluation_dishonest: bool = False  # EVALUATION ONLY: sequencer.evaluation

    def config(self, home: Home) -> SettlementConfig:
        url = self.url or home.l1
        if not url:
            raise ValueError('this chain settles on L1: give --l1 URL (or l1 = "URL" in config.toml)')
        if self.output_blocks < 1 or self.output_seconds <= 0:
            raise ValueError("--output-blocks and --output-seconds must be positive")
        key = account(load_l1_key(self.key_file or home.l1_key_path("sequencer")))
        return SettlementConfig(
            url,
            key,
            self.confirmations,
            output_blocks=self.output_blocks,
            output_s=self.output_seconds,
            dishonest_material=home.path / "evaluation" / "forged-output.json"
            if self.evaluation_dishonest
            else None,
        )


def run_daemon(
    home_path: str,
    *,
    listen: str | None = None,
    metrics: str | None = None,
    http: str | None = None,
    block_time_ms: int | None = None,
    server: dict[str, Any] | None = None,
    l1: L1Options | None = None,
) -> int:
    """``mpsnode sequencer``: open the home's store and serve until a signal. Prints one ready line."""

    setup_logging()
    home = Home.open(home_path)
    genesis = home.genesis()
    key = load_key(home.key_path("sequencer"))
    host, port = parse_hostport(listen or home.listen)
    settlement = (l1 or L1Options()).config(home) if genesis.l1 is not None else None
    config = SequencerConfig(host=host, port=port, block_time_ms=block_time_ms, settlement=settlement)
    apply_node_options(config, metrics or home.metrics, server, http)
    lock = home_lock(home.path, "sequencer").acquire()
    store = LmdbStore(home.data_path, map_size=home.map_size)
    try:
        sequencer = Sequencer(store, genesis, key, config)
        collector.tune_sequencer()

        def ready(seq: Sequencer) -> None:
            print(
                json.dumps(
                    {
                        "ready": True,
                        "host": host,
                        "port": seq.port,
                        "metrics_port": seq.metrics_port,
                        "http_port": seq.http_port,
                        "height": seq.chain.head.height,
                    }
                ),
                flush=True,
            )

        trio.run(serve, sequencer, ready)
    finally:
        store.close()
        lock.release()
    event(log, "stopped")
    sys.stdout.flush()
    return 0
