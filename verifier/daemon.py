"""The verifier daemon: follow an upstream, re-execute and check every block, serve blocks onward.

The service is one nursery tree (``Verifier.run``)::

    server (mpsnode.server.NodeServer, kind "verifier")   blocks, receipts, proofs, STATUS
    follower        connect to the upstream (sequencer or another verifier), say HELLO with this
                    node's genesis (another chain is refused: WrongNetwork, fatal), then
                      catch up    GET_BLOCKS in batches from its own head + 1 up to the upstream head
                      follow      SUBSCRIBE from its own head + 1; pushed blocks are taken in batches
                    and a side task polls the upstream's STATUS for its head (the lag).
                    On a lost connection: reconnect with exponential backoff (0.1 s .. 5 s).
    metrics         Prometheus, when ``--metrics`` is given

Blocks flow through a pipeline (``Verifier._sync``): each fetched batch is decoded and its
signatures checked in one worker-thread call (``verifier.checks.precheck_many``; the batch kernel
runs outside the GIL); then each block is checked against its parent and re-executed with the STF
on the event-loop thread, reading an LMDB snapshot (as the sequencer builds blocks) under the
writes of blocks still being committed; and committed in ONE LMDB write transaction
(``Chain.commit_prepared`` through ``sequencer.writes.run_write``), in order, while the next block
executes. Only verified blocks ever enter the store, so its head is the number of blocks verified,
and a restart (even after kill -9) resumes from it.

On the first failed check the follower stops applying for good, logs one error line, writes
``reports/<height>.json`` and ``reports/<height>.bundle`` (``verifier.divergence``), and the
server keeps serving the verified chain and the divergence in STATUS; with
``exit_on_divergence`` the process then exits with code 3.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
from eth_account.signers.local import LocalAccount

from mpsnode.consensus.block import Block
from mpsnode.consensus.errors import MpsError
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.settlement import L1Facts
from mpsnode.consensus.smt import Proof, SparseMerkleTree
from mpsnode.consensus.state import State
from mpsnode.consensus.stf.transition import BlockResult
from mpsnode.node import collector, parallel
from mpsnode.node.chain import Chain
from mpsnode.node.connection import Client, ConnectionLost, connect
from mpsnode.node.errors import ProtocolViolation, VerificationFailed, WrongNetwork
from mpsnode.node.explorer.app import Explorer, serve_explorer
from mpsnode.node.files import load_genesis, load_l1_key, save_genesis
from mpsnode.node.home import Home
from mpsnode.node.l1.client import L1, L1Error, account
from mpsnode.node.l1.follower import L1Follower
from mpsnode.node.lock import home_lock
from mpsnode.node.log import event, setup_logging
from mpsnode.node.messages import VERIFIER, GetBlock, VerifierStatus
from mpsnode.node.metrics import serve_metrics
from mpsnode.node.server import HeadWatch, NodeServer, ServerConfig, apply_node_options
from mpsnode.node.store import LmdbStore, StoreView
from mpsnode.node.wire import parse_hostport
from mpsnode.node.writes import run_write
from verifier.challenger import Challenger
from verifier.checks import Divergence, Prechecked, precheck_many, verify_block
from verifier.divergence import ClaimedProofs, Investigation, write_report
from verifier.metrics import VerifierMetrics

log = logging.getLogger("mpsnode.verifier")

EXIT_DIVERGED = 3
MAX_PROOF_KEYS = 256  # per GET_PROOFS request (the server's limit)
PRECHECK_CHUNK_BYTES = 256 << 10  # about 2000 transfers: the signature batch still pays, the pipeline flows


@dataclass
class VerifierConfig:
    upstream: tuple[str, int]
    host: str = "127.0.0.1"
    port: int = 7071
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # the explorer (--http); None: not served
    reports_dir: Path = Path("reports")
    exit_on_divergence: bool = False
    server: ServerConfig = field(default_factory=ServerConfig)
    batch_blocks: int = 1000  # blocks asked for per GET_BLOCKS, and taken per batch from the subscription
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    poll_interval: float = 0.5  # seconds between STATUS polls of the upstream head
    connect_timeout: float = 10.0
    l1_url: str | None = None  # settlement mode: the L1 endpoint this verifier reads deposits from
    l1_confirmations: int = 0
    l1_poll: float = 0.25  # seconds between L1 reads while a block waits for its L1 origin
    l1_key: LocalAccount | None = None  # settlement part 2: compare posted outputs, challenge wrong ones


class _Stopped(Exception):
    """The follower found a divergence and stops for good."""


def _chunks(
    items: list[tuple[int, bytes]], max_bytes: int = PRECHECK_CHUNK_BYTES, max_blocks: int = 64
) -> list[list[tuple[int, bytes]]]:
    out: list[list[tuple[int, bytes]]] = [[]]
    size = 0
    for item in items:
        if out[-1] and (size + len(item[1]) > max_bytes or len(out[-1]) >= max_blocks):
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item[1])
    return out


class _Overlay:
    """State and tree-node reads through the writes of executed blocks not yet committed, then a snapshot."""

    def __init__(
        self, layers: list[tuple[dict[bytes, bytes | None], dict[bytes, bytes]]], view: StoreView
    ) -> None:
        self._layers = layers
        self._view = view

    def get_state(self, key: bytes) -> bytes | None:
        found, value = self._layered(key)
        return value if found else self._view.get_state(key)

    def _layered(self, key: bytes) -> tuple[bool, bytes | None]:
        for writes, _ in reversed(self._layers):
            if key in writes:
                return True, writes[key]
        return False, None

    # the state's reads of part of a value (``PartReader``): a round's updates straight from the map
    def get_state_range(self, key: bytes, start: int, stop: int) -> bytes | None:
        found, value = self._layered(key)
        if not found:
            return self._view.get_state_range(key, start, stop)
        return None if value is None else value[start:stop]

    def read_states_into(self, reads: Sequence[tuple[bytes, int, np.ndarray]]) -> list[int | None]:
        lengths: list[int | None] = [None] * len(reads)
        from_view = []
        copies = []
        for i, (key, start, out) in enumerate(reads):
            found, value = self._layered(key)
            if not found:
                from_view.append(i)
            elif value is not None:
                if len(value) - start == out.nbytes:
                    copies.append((value, start, out))
                lengths[i] = len(value)
        parallel.copy_all(copies)  # the unflushed blocks' updates in one batch, as the view's
        for i, n in zip(from_view, self._view.read_states_into([reads[i] for i in from_view]), strict=True):
            lengths[i] = n
        return lengths

    def get_node(self, node_hash: bytes) -> bytes | None:
        for _, nodes in self._layers:
            record = nodes.get(node_hash)
            if record is not None:
                return record
        return self._view.get_node(node_hash)


class Verifier:
    """One verifier: its own store and chain, the server it serves them with, and the follower."""

    def __init__(
        self,
        store: LmdbStore,
        genesis: Genesis,
        config: VerifierConfig,
        metrics: VerifierMetrics | None = None,
    ) -> None:
        self.store = store
        self.genesis = genesis
        self.config = config
        self.metrics = metrics or VerifierMetrics()
        self.chain = Chain(store, genesis)
        self.chain_config = genesis.config()
        self.watch = HeadWatch(self.chain.head.height)
        self.server = NodeServer(
            store,
            genesis,
            self.watch,
            kind=VERIFIER,
            config=config.server,
            stats=self.metrics,
            status_extra=self.status_fields,
        )
        self.upstream = f"{config.upstream[0]}:{config.upstream[1]}"
        self.upstream_height = 0
        self.connected = False
        self.divergence: Divergence | None = None
        self.report_path: Path | None = None
        self.diverged = trio.Event()
        self.fatal: MpsError | None = None  # why the follower gave up for good (another chain upstream)
        self.fatal_event = trio.Event()
        self._tip = self.chain.head_header  # the last block executed (its commit may still be running)
        self._inflight: deque[tuple[dict[bytes, bytes | None], dict[bytes, bytes]]] = deque()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self.metrics.height.set(self.chain.head.height)
        self.l1: L1Follower | None = None
        if genesis.l1 is not None:
            if not config.l1_url:
                raise ValueError(
                    "this chain settles on L1: a verifier reads the deposits from L1 itself; give --l1 URL"
                )
            self.l1 = L1Follower(config.l1_url, genesis.l1, config.l1_confirmations)
        self.waiting_for_l1: int | None = None  # the L1 block the next block names and L1 has not shown yet

    # status ------------------------------------------------------------------------------------
    @property
    def head(self) -> int:
        return self.watch.height

    def explorer(self) -> Explorer:
        """The explorer over this verifier's verified store (``--http``), its reports linked."""
        return Explorer(
            self.server,
            block_time_ms=self.genesis.params.block_time_ms,
            node_extra=lambda: {"l1": self.config.l1_url} if self.config.l1_url else {},
            reports_dir=self.config.reports_dir,
        )

    @property
    def lag(self) -> int:
        return max(0, self.upstream_height - self.head)

    def status_fields(self, height: int) -> VerifierStatus:
        """The verifier part of a STATUS reply whose head is at ``height``: the store holds verified
        blocks only, so that is also the count verified (the same read as the reply's head, never a
        moment behind it while a commit finishes)."""
        d = self.divergence
        lag = max(0, self.upstream_height - height)
        return VerifierStatus(
            self.upstream,
            self.upstream_height,
            lag,
            height,
            self.connected,
            d is not None,
            d.height if d else 0,
            d.check if d else "",
            d.detail[:200] if d else "",
        )

    def _saw_upstream(self, height: int) -> None:
        self.upstream_height = max(self.upstream_height, height)
        self.metrics.upstream_height.set(self.upstream_height)
        self.metrics.lag.set(self.lag)

    # the service ---------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve and follow until cancelled; reports the bound port once listening."""
        cfg = self.config
        async with trio.open_nursery() as nursery:
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
                upstream=self.upstream,
                chain_id=self.genesis.chain_id,
            )
            if self.l1 is not None:
                await trio.to_thread.run_sync(self._check_l1)
                if cfg.l1_key is not None:
                    assert cfg.l1_url is not None and self.genesis.l1 is not None
                    challenger = Challenger(
                        L1(cfg.l1_url, self.genesis.l1),
                        cfg.l1_key,
                        self.store,
                        cfg.reports_dir,
                        self.metrics,
                        lambda: self.head,
                    )
                    nursery.start_soon(challenger.run)
            nursery.start_soon(self._follow)
            task_status.started(self.port)

    def _check_l1(self) -> None:
        assert self.l1 is not None
        try:
            self.l1.check_chain()
        except L1Error as exc:  # unreachable now: blocks wait for it; the wrong chain never catches up
            event(log, "l1_unavailable", logging.WARNING, error=str(exc))

    async def _reach_l1(self, pre: Prechecked) -> None:
        """Wait until this node's L1 view reaches the block's L1 origin (a block is never judged
        on an L1 the node has not seen; the wait shows in STATUS and the metrics)."""
        follower, block = self.l1, pre.block
        if follower is None or block is None or block.header.l1_origin is None:
            return
        origin = block.header.l1_origin
        while origin > follower.scanned_to:
            try:
                await trio.to_thread.run_sync(follower.refresh)
            except L1Error as exc:
                self.metrics.l1_errors.inc()
                event(log, "l1_error", logging.WARNING, error=str(exc), waiting_for=origin)
            self.metrics.l1_head.set(follower.head)
            if origin <= follower.scanned_to:
                break
            if self.waiting_for_l1 != origin:
                event(log, "waiting_for_l1", height=block.height, l1_origin=origin, l1_head=follower.head)
            self.waiting_for_l1 = origin
            self.metrics.l1_waiting.set(origin)
            await trio.sleep(self.config.l1_poll)
        self.waiting_for_l1 = None
        self.metrics.l1_waiting.set(0)

    async def _follow(self) -> None:
        cfg = self.config
        delay = cfg.backoff_min
        event(log, "resuming", height=self.head, upstream=self.upstream)
        while True:
            try:
                async with connect(cfg.upstream, genesis=self.genesis, timeout=cfg.connect_timeout) as client:
                    assert client.hello is not None
                    self.connected = True
                    self.metrics.connected.set(1)
                    delay = cfg.backoff_min
                    self._saw_upstream(client.hello.height)
                    event(
                        log,
                        "connected",
                        upstream=self.upstream,
                        upstream_kind=client.hello.kind,
                        upstream_height=client.hello.height,
                        height=self.head,
                    )
                    await self._sync(client)
            except _Stopped:
                return
            except WrongNetwork as exc:
                event(
                    log,
                    "upstream is on another chain",
                    logging.ERROR,
                    upstream=self.upstream,
                    error=exc.reason,
                )
                self.fatal = exc
                self.fatal_event.set()
                return
            except (
                ConnectionLost,
                OSError,
                trio.TooSlowError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                trio.EndOfChannel,
                MpsError,
            ) as exc:  # whatever the upstream did: reconnect
                self.metrics.reconnects.inc()
                event(
                    log,
                    "upstream unavailable",
                    logging.WARNING,
                    upstream=self.upstream,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                    height=self.head,
                )
            finally:
                self.connected = False
                self.metrics.connected.set(0)
            await trio.sleep(delay)
            delay = min(delay * 2, cfg.backoff_max)

    async def _sync(self, client: Client) -> None:
        """Fetch, precheck, execute and commit blocks as a pipeline, until the connection or a check fails.

        Four stages joined by small bounded channels: the fetcher (GET_BLOCKS batches up to the
        upstream head, then the subscription), the prechecker (decoding and every signature, on a
        worker thread), the executor (every check in order and the re-execution) and the committer
        (one LMDB transaction per block, in order). So batch k + 1 is fetched and its signatures
        checked while batch k executes, and block k + 1 executes while block k's commit is being
        written to disk: it reads block k's writes from ``_inflight`` (``_Overlay``). The first
        failure ends the other stages; a divergence wins over the connection errors it may cause.
        """
        raw_send, raw_recv = trio.open_memory_channel[list[tuple[int, bytes]]](2)
        pre_send, pre_recv = trio.open_memory_channel[list[Prechecked]](2)
        done_send, done_recv = trio.open_memory_channel[tuple[Block, BlockResult]](1)
        failures: list[Exception] = []
        self._tip = self.chain.head_header
        self._inflight.clear()

        async with trio.open_nursery() as nursery:

            async def stage(fn: Callable[..., Any], *args: Any) -> None:
                try:
                    await fn(*args)
                except Exception as exc:  # noqa: BLE001 - re-raised below, outside the nursery's group
                    failures.append(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(self._poll_upstream, client)
            nursery.start_soon(stage, self._fetch, client, raw_send)
            nursery.start_soon(stage, self._precheck, raw_recv, pre_send)
            nursery.start_soon(stage, self._execute, client, pre_recv, done_send)
            nursery.start_soon(stage, self._commit, done_recv)
        for failure in failures:
            if isinstance(failure, _Stopped):
                raise failure
        if failures:
            raise failures[0]
        raise ConnectionLost("the block pipeline ended")

    async def _poll_upstream(self, client: Client) -> None:
        try:
            while True:
                await trio.sleep(self.config.poll_interval)
                self._saw_upstream((await client.status()).height)
        except (ConnectionLost, MpsError, trio.BrokenResourceError):
            return

    async def _fetch(self, client: Client, out: trio.MemorySendChannel[list[tuple[int, bytes]]]) -> None:
        """Catch up in GET_BLOCKS batches, then follow the subscription; hands on consecutive heights."""
        batch = self.config.batch_blocks
        start = next_height = self.head + 1
        batches = 0

        async def hand_on(items: list[tuple[int, bytes]]) -> None:
            nonlocal next_height
            for offset, (height, _) in enumerate(items):
                if height != next_height + offset:  # the upstream's bookkeeping, not the block: reconnect
                    raise ProtocolViolation(
                        f"upstream served height {height} where {next_height + offset} was due"
                    )
            next_height += len(items)
            await out.send(items)

        async with out:
            while next_height <= self.upstream_height:
                items = await client.blocks(next_height, batch)
                if not items:
                    break
                await hand_on(items)
                batches += 1
            if batches:
                event(
                    log,
                    "caught up",
                    blocks=next_height - start,
                    batches=batches,
                    height=next_height - 1,
                    upstream_height=self.upstream_height,
                )
            async with client.subscribe(next_height) as pushes:
                ended = False
                async for pushed in pushes:
                    items = [(pushed.height, pushed.data)]
                    while len(items) < batch and not ended:
                        try:
                            more = pushes.receive_nowait()
                        except trio.WouldBlock:
                            break
                        except (trio.EndOfChannel, trio.ClosedResourceError):
                            ended = True  # the connection closed behind the blocks still buffered
                            break
                        items.append((more.height, more.data))
                    self._saw_upstream(items[-1][0])
                    await hand_on(items)
                    if ended:
                        break
        raise ConnectionLost("the upstream ended the subscription")

    async def _precheck(
        self,
        raw: trio.MemoryReceiveChannel[list[tuple[int, bytes]]],
        out: trio.MemorySendChannel[list[Prechecked]],
    ) -> None:
        async with raw, out:
            async for items in raw:
                for chunk in _chunks(items):  # small chunks: the executor starts on the first at once
                    t0 = time.perf_counter()
                    pres = await trio.to_thread.run_sync(precheck_many, chunk, self.chain_config)
                    self.metrics.precheck_seconds.observe(time.perf_counter() - t0)
                    await out.send(pres)

    # verifying ------------------------------------------------------------------------------------
    async def _execute(
        self,
        client: Client,
        prechecked: trio.MemoryReceiveChannel[list[Prechecked]],
        done: trio.MemorySendChannel[tuple[Block, BlockResult]],
    ) -> None:
        """Check and re-execute blocks in order; on a failed check, report and stop (``_Stopped``)."""
        async with prechecked, done:
            async for pres in prechecked:
                for pre in pres:
                    await self._reach_l1(pre)
                    try:
                        block, result = self.execute(pre)
                    except Divergence as failure:
                        await self.watch.wait_above(self._tip.height - 1)  # the blocks before it are stored
                        with trio.CancelScope(shield=True):  # the report is written whatever else fails
                            await self._diverge(failure, pre, client)
                        raise _Stopped() from None
                    await done.send((block, result))

    def execute(self, pre: Prechecked) -> tuple[Block, BlockResult]:
        """Check and re-execute the block after the last one executed (``verify_block``, that is the
        state transition), reading the store through the writes of blocks still being committed.
        ``Divergence`` on a failed check; else the block and result to commit, in order, then
        ``committed``."""
        t0 = time.perf_counter()
        parent = self._tip
        layers = list(self._inflight)  # before the snapshot: whatever lands in between is in both, equal
        view = self.store.snapshot()
        try:
            reads = _Overlay(layers, view)
            tree = SparseMerkleTree(reads, parent.state_root, parallel.smt_value_hashes)
            state = State(reads.get_state, parts=reads)
            block, result = verify_block(pre, parent, state, tree, self.chain_config, self._facts(pre, state))
        finally:
            view.close()
        self._inflight.append((result.state_writes, result.node_writes))
        self._tip = block.header
        self.metrics.execute_seconds.observe(time.perf_counter() - t0)
        return block, result

    def _facts(self, pre: Prechecked, state: State) -> L1Facts | None:
        """The L1 facts of ``pre``'s block from this node's own L1 view (no L1 call: ``_reach_l1`` read it)."""
        if self.l1 is None or pre.block is None or pre.block.header.l1_origin is None:
            return None
        return self.l1.facts(pre.block.header.l1_origin, state.get_settlement().deposits)

    async def _commit(self, executed: trio.MemoryReceiveChannel[tuple[Block, BlockResult]]) -> None:
        async with executed:
            async for block, result in executed:
                t0 = time.perf_counter()
                await run_write(self.chain.commit_prepared, block, result)
                self.committed(block)
                self.metrics.commit_seconds.observe(time.perf_counter() - t0)

    def committed(self, block: Block) -> None:
        """``block``, the oldest executed, is in the store: serve it and stop overlaying its writes."""
        self._inflight.popleft()
        self.watch.advance(block.height)
        m = self.metrics
        m.blocks.inc()
        m.txs.inc(len(block.txs))
        m.height.set(block.height)
        m.lag.set(self.lag)

    async def _diverge(self, failure: Divergence, pre: Prechecked, client: Client) -> None:
        """Stop for good: gather what the upstream claims, write the report, log one error."""
        self.divergence = failure
        self.metrics.diverged.set(1)
        self.metrics.divergence_height.set(failure.height)
        source = f"upstream {self.upstream}"
        claimed_receipts: bytes | None = None
        with trio.move_on_after(30), contextlib.suppress(MpsError, ConnectionLost):  # the report says so
            claimed_receipts = (await client.call(GetBlock(failure.height))).receipts
        inv = Investigation.start(
            failure,
            genesis=self.genesis,
            parent=self.chain.head_header,
            data=pre.data,
            claimed_receipts=claimed_receipts,
            get_state=self.store.get_state,
            get_node=self.store.get_node,
            source=source,
        )
        claimed = await self._claimed_proofs(client, inv, source)
        report = inv.report(claimed)
        bundle = inv.bundle(claimed)
        path = await trio.to_thread.run_sync(write_report, self.config.reports_dir, report, bundle)
        self.report_path = path
        event(
            log,
            "divergence",
            logging.ERROR,
            height=failure.height,
            check=failure.check,
            reason=failure.detail,
            block_hash=report["block_hash"],
            report=str(path),
            diverging_keys=len((report.get("state") or {}).get("diverging") or []),
        )
        self.diverged.set()

    async def _claimed_proofs(self, client: Client, inv: Investigation, source: str) -> ClaimedProofs | None:
        keys = inv.state_keys()
        block = inv.block
        if not keys or block is None:
            return None
        proofs: dict[bytes, Proof] = {}
        try:
            with trio.fail_after(60):
                for at in range(0, len(keys), MAX_PROOF_KEYS):
                    chunk = keys[at : at + MAX_PROOF_KEYS]
                    header, got = await client.state_proofs(inv.height, chunk)
                    if header.hash() != block.header.hash():
                        note = f"the upstream proves against another header at height {inv.height}"
                        return ClaimedProofs(source, note=f"{note} ({header.hash().hex()})")
                    proofs.update(zip(chunk, got, strict=True))
        except (MpsError, ConnectionLost, trio.TooSlowError) as exc:
            kind = "proofs that do not check out" if isinstance(exc, VerificationFailed) else "no proofs"
            return ClaimedProofs(source, note=f"the upstream gave {kind}: {type(exc).__name__}: {exc}")
        return ClaimedProofs(source, proofs)


# ---------------------------------------------------------------------------------------------
# The process


async def serve(verifier: Verifier, on_ready: Callable[[Verifier], None] | None = None) -> int:
    """Run ``verifier`` until SIGINT/SIGTERM (exit 0) or, with ``exit_on_divergence``, a divergence (exit 3).

    An upstream on another chain is fatal: its ``WrongNetwork`` is raised once the service stopped.
    """
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run)
            if on_ready is not None:
                on_ready(verifier)

            async def on_signal() -> None:
                async for signum in signals:
                    event(log, "stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            async def on_divergence() -> None:
                nonlocal code
                await verifier.diverged.wait()
                if verifier.config.exit_on_divergence:
                    code = EXIT_DIVERGED
                    event(log, "stopping", reason="divergence", report=str(verifier.report_path))
                    nursery.cancel_scope.cancel()

            async def on_fatal() -> None:
                await verifier.fatal_event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(on_divergence)
            nursery.start_soon(on_fatal)
    if verifier.fatal is not None:
        raise verifier.fatal
    return code


def prepare_home(home_path: str, genesis_file: str | None) -> None:
    """Give a new verifier home the chain's genesis.json (refusing to replace a different one)."""
    home = Path(home_path)
    target = home / "genesis.json"
    if genesis_file is None:
        return
    source = load_genesis(genesis_file)
    if target.exists():
        if load_genesis(target).hash() != source.hash():
            raise ValueError(
                f"{target} is another chain's genesis than {genesis_file}: choose another --home"
            )
        return
    home.mkdir(parents=True, exist_ok=True)
    save_genesis(source, target)


def run_daemon(
    home_path: str,
    *,
    upstream: str,
    genesis_file: str | None = None,
    listen: str | None = None,
    metrics: str | None = None,
    http: str | None = None,
    exit_on_divergence: bool = False,
    server: dict[str, Any] | None = None,
    l1: str | None = None,
    l1_confirmations: int = 0,
    l1_key: str | None = None,
) -> int:
    """``mpsnode verifier``: open the home's store and verify until a signal. Prints one ready line."""

    setup_logging()
    prepare_home(home_path, genesis_file)
    if not (Path(home_path) / "genesis.json").is_file():
        raise FileNotFoundError(
            f"{home_path} has no genesis.json: give the chain's genesis with --genesis FILE (the sequencer "
            "home's genesis.json); `mpsnode init` would make another chain, which the upstream refuses"
        )
    home = Home.open(home_path)
    genesis = home.genesis()
    default_listen = home.listen if (home.path / "config.toml").is_file() else "127.0.0.1:7071"
    host, port = parse_hostport(listen or default_listen)
    config = VerifierConfig(
        upstream=parse_hostport(upstream),
        host=host,
        port=port,
        reports_dir=home.path / "reports",
        exit_on_divergence=exit_on_divergence,
        l1_url=l1 or home.l1 or None,
        l1_confirmations=l1_confirmations,
        l1_key=account(load_l1_key(l1_key)) if l1_key else None,
    )
    apply_node_options(config, metrics or home.metrics, server, http)
    lock = home_lock(home.path, "verifier").acquire()
    store = LmdbStore(home.data_path, map_size=home.map_size)
    try:
        verifier = Verifier(store, genesis, config)
        collector.tune()

        def ready(v: Verifier) -> None:
            print(
                json.dumps(
                    {
                        "ready": True,
                        "host": host,
                        "port": v.port,
                        "metrics_port": v.metrics_port,
                        "http_port": v.http_port,
                        "height": v.head,
                        "upstream": v.upstream,
                    }
                ),
                flush=True,
            )

        code = trio.run(serve, verifier, ready)
    finally:
        store.close()
        lock.release()
    event(log, "stopped", code=code)
    sys.stdout.flush()
    return code
