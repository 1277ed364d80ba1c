"""The node server: the wire protocol over TCP, serving any chain store to clients and followers.

One server for the sequencer and for verifiers serving blocks onward: it reads blocks, headers,
receipts, events and state (with sparse-Merkle proofs) from a ``Store`` and learns of new blocks
through a ``HeadWatch``. What only a sequencer can do (take txs, tell what is pending) comes
through an optional ``TxGateway``; without one, SUBMIT_TX is refused with ``NotSupported``.

Each connection is a small nursery: a reader that handles requests in order, a writer that
drains a byte-bounded ``Outbox``, and one task per subscription or waiting receipt query. The
reader handles the frames already in its buffer without yielding (up to ``BURST_FRAMES``, then
one checkpoint), so a client that pipelines submits costs the loop one task switch per burst,
not per tx. The
first message must be HELLO (within ``handshake_timeout``); a frame must complete within
``frame_timeout`` once started; a length prefix above the limit, bytes that are not a message,
or a peer that leaves ``outbox_bytes`` unread for ``slow_peer_timeout`` seconds end the
connection. Connections beyond ``max_connections`` get an ``Overloaded`` error and are closed.
Nothing a peer does outlives its connection.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from mpsnode.consensus.block import decode_header
from mpsnode.consensus.encoding import decode, encode, expect_list
from mpsnode.consensus.errors import MpsError
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.hashing import ZERO32
from mpsnode.consensus.merkle import list_proof
from mpsnode.consensus.receipt import Receipt
from mpsnode.consensus.settlement import tree_proof, tree_root_reference
from mpsnode.consensus.smt import SparseMerkleTree, TreeNodeError
from mpsnode.consensus.state import Account, account_key, model_key, task_key
from mpsnode.node.errors import (
    BadRequest,
    NotFound,
    NotSupported,
    Overloaded,
    ProtocolViolation,
    SlowPeer,
    UnknownMessage,
    WrongNetwork,
)
from mpsnode.node.messages import (
    EVENTS_BY_HEIGHT,
    EVENTS_BY_TASK,
    MAX_KEY,
    REQUESTS,
    BlockPush,
    BlockReply,
    BlocksReply,
    Dropped,
    DropPending,
    EventsReply,
    GenesisReply,
    GetBlock,
    GetBlocks,
    GetEvents,
    GetHeader,
    GetModel,
    GetNonce,
    GetPending,
    GetProofs,
    GetReceipt,
    GetState,
    GetWithdrawal,
    HeaderReply,
    HeightBlock,
    HeightEvents,
    Hello,
    HelloRequest,
    Message,
    ModelReply,
    Msg,
    NonceInfo,
    PendingReply,
    PendingTx,
    Pong,
    ProofsReply,
    ReceiptReply,
    StateEntry,
    StateReply,
    Status,
    Submitted,
    SubmitTx,
    Subscribe,
    Subscribed,
    TxState,
    Unsubscribe,
    Unsubscribed,
    VerifierStatus,
    WithdrawalReply,
)
from mpsnode.node.outputs import leaves_of, withdrawals_at
from mpsnode.node.store import Store, StoreReader
from mpsnode.node.wire import (
    PROTOCOL_VERSION,
    FrameReader,
    Outbox,
    decode_message,
    encode_frame,
    error_message,
    max_request_frame,
    open_listeners,
    parse_hostport,
    write_loop,
)

log = logging.getLogger("mpsnode.server")

MAX_RANGE_BLOCKS = 1000
RANGE_BUDGET = 8 << 20  # bytes of blocks per GET_BLOCKS reply (at least one block is always sent)
MAX_WAIT_MS = 60_000
MAX_EVENTS = 1000
MAX_PROOF_KEYS = 256  # keys per GET_PROOFS request
SIGNATURE_TRAILER = b"\xc4\x40"  # msgpack bin8 of 64 bytes: a block ends with its signature


class HeadWatch:
    """The height of the newest committed block, and a way to wait for the next one."""

    def __init__(self, height: int) -> None:
        self.height = height
        self._event = trio.Event()

    def advance(self, height: int) -> None:
        self.height = height
        self._event.set()
        self._event = trio.Event()

    async def wait_above(self, height: int) -> None:
        while self.height <= height:
            await self._event.wait()

    async def wait_change(self) -> None:
        await self._event.wait()


class TxGateway(Protocol):
    """What a sequencer adds to the server: taking txs and telling what is pending."""

    async def submit(self, raw: bytes, done: Callable[[bytes | MpsError], None]) -> None:
        """Start admitting ``raw``; ``done`` is called once with the tx id (durable) or the error.

        May raise ``MpsError`` at once for a tx refused before any queueing.
        """

    def pending(self, tx_id: bytes) -> bool: ...

    def dropped(self, tx_id: bytes) -> tuple[int, int, str] | None:
        """(height, code, reason) of a tx that was admitted and later left out for good."""

    def next_nonce(self, address: bytes, state_nonce: int) -> tuple[int, int]:
        """(next free nonce counting pending txs, number of pending txs of ``address``)."""

    def mempool_size(self) -> tuple[int, int]: ...

    def pending_of(self, address: bytes, state_nonce: int) -> list[PendingTx]:
        """``address``'s pending txs by nonce."""

    async def drop_pending(self, tx_id: bytes, signature: bytes) -> None:
        """Drop a durable pending tx that waits behind a nonce gap, on its sender's signature; raises
        ``NotFound`` (no such pending tx), ``BadRequest`` (not waiting: it may be in the next block) or
        ``VerificationFailed`` (not the sender's signature)."""


@dataclass
class ServerConfig:
    max_connections: int = 1024
    handshake_timeout: float = 10.0
    frame_timeout: float = 30.0
    slow_peer_timeout: float = 10.0
    outbox_bytes: int = 4 << 20
    max_inflight: int = 4096  # submits awaiting their ack, per connection
    max_waiters: int = 64  # GET_RECEIPT waits and subscriptions, per connection


#: Frames a connection's reader handles from its buffer before it yields to the other tasks.
BURST_FRAMES = 64


def apply_node_options(
    config: Any, metrics: str | None, server: dict[str, Any] | None, http: str | None = None
) -> None:
    """Into a daemon's config (``metrics_host``, ``metrics_port``, ``http_host``, ``http_port``,
    ``server``): the metrics and explorer addresses ``HOST:PORT`` if any, and ``ServerConfig``
    overrides by field name."""
    if metrics:
        config.metrics_host, config.metrics_port = parse_hostport(metrics)
    if http:
        config.http_host, config.http_port = parse_hostport(http)
    for name, value in (server or {}).items():
        setattr(config.server, name, value)


class ServerStats(Protocol):
    def connection_opened(self) -> None: ...

    def connection_closed(self, reason: str) -> None: ...


class _NoStats:
    def connection_opened(self) -> None:
        pass

    def connection_closed(self, reason: str) -> None:
        pass


class NodeServer:
    def __init__(
        self,
        store: Store,
        genesis: Genesis,
        watch: HeadWatch,
        *,
        kind: str,
        gateway: TxGateway | None = None,
        config: ServerConfig | None = None,
        stats: ServerStats | None = None,
        status_extra: Callable[[int], VerifierStatus] | None = None,
    ) -> None:
        self.store = store
        self.genesis = genesis
        self.genesis_hash = genesis.hash()
        self.chain_id = genesis.chain_id
        self.watch = watch
        self.kind = kind
        self.gateway = gateway
        self.config = config or ServerConfig()
        self.stats = stats or _NoStats()
        self.status_extra = status_extra  # a verifier appends its own status, given the reply's head height
        self.max_frame = max_request_frame(genesis.params)
        self.connections = 0
        self.genesis_json = json.dumps(genesis.to_json(), sort_keys=True).encode()
        # blocks never change once committed: remember what is costly to re-derive from them
        self._signatures: OrderedDict[int, bytes] = OrderedDict()
        self._receipt_leaves: OrderedDict[int, tuple[list[Any], list[bytes]]] = OrderedDict()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (port 0 picks a free one); reports the bound port when ready."""
        listeners = await open_listeners(host, port, f"the {self.kind}'s wire protocol (--listen)")
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.handle, listeners)
            task_status.started(bound)

    # one connection ------------------------------------------------------------------------------
    async def handle(self, stream: trio.SocketStream) -> None:
        if self.connections >= self.config.max_connections:
            with trio.move_on_after(1):
                await stream.send_all(
                    encode_frame(
                        error_message(
                            0, Overloaded(f"node has {self.connections} connections, the limit; retry later")
                        )
                    )
                )
            await trio.aclose_forcefully(stream)
            self.stats.connection_closed("overloaded")
            return
        self.connections += 1
        self.stats.connection_opened()
        conn = _Connection(self, stream)
        reason = "closed"
        try:
            reason = await conn.run()
        except Exception:  # a bug in one connection must not take the server down
            reason = "error"
            log.exception("connection handler failed")
        finally:
            self.connections -= 1
            self.stats.connection_closed(reason)
            await trio.aclose_forcefully(stream)

    # reads ------------------------------------------------------------------------------------------
    def header_and_signature(self, view: StoreReader, height: int) -> tuple[bytes, bytes]:
        header = view.get_header(height)
        if header is None:
            raise NotFound(f"no block at height {height}")
        if height == 0:
            return header, b""
        signature = self._signatures.get(height)
        if signature is None:
            tail = view.get_block_tail(height, 66) or b""
            if len(tail) < 66 or tail[:2] != SIGNATURE_TRAILER:
                raise NotFound(f"block {height} is not readable")
            signature = tail[2:]
            _remember(self._signatures, height, signature, 4096)
        return header, signature

    def withdrawal_reply(self, index: int, height: int) -> WithdrawalReply:
        """Withdrawal ``index`` and its branch in the tree of block ``height``'s output (records are
        written once and never change, so the head's are the ones of every later height)."""
        view = self.store.snapshot()
        try:
            header_bytes, signature = self.header_and_signature(view, height)
            records = withdrawals_at(view, height)
            leaves = leaves_of(records)
        finally:
            view.close()
        if index >= len(leaves):
            raise NotFound(
                f"no withdrawal {index} in block {height}'s output ({len(leaves)} recorded by then)"
            )
        record = records[index]
        return WithdrawalReply(
            height,
            header_bytes,
            signature,
            record.sender,
            record.l1_address,
            record.amount,
            record.height,
            len(leaves),
            tree_root_reference(leaves),
            tree_proof(leaves, index),
        )

    def prove(self, view: StoreReader, state_root: bytes, key: bytes) -> StateEntry:
        value = view.get_state(key)
        proof = SparseMerkleTree(view, state_root).prove(key)
        return StateEntry(value is not None, value or b"", proof.encode())

    def status(self) -> Status:
        head = self.store.head()
        if head is None:
            raise NotFound("the store is empty")
        count, size = self.gateway.mempool_size() if self.gateway else (0, 0)
        extra = self.status_extra(head.height) if self.status_extra is not None else None
        return Status(
            self.chain_id,
            self.genesis_hash,
            head.height,
            head.block_hash,
            head.state_root,
            head.timestamp_ms,
            count,
            size,
            self.kind,
            extra,
        )

    def receipt_status(self, tx_id: bytes) -> ReceiptReply:
        location = self.store.get_tx_location(tx_id)
        if location is not None:
            height, index = location
            blob = None if height in self._receipt_leaves else self.store.get_receipts(height)
            header, signature = self.header_and_signature(self.store, height)
            cached = self._receipt_leaves.get(height)
            if cached is None:
                if blob is None:
                    raise NotFound(f"receipts of block {height} are missing")
                items = expect_list(
                    decode(blob, max_bytes=len(blob), max_array_len=1 << 24), None, "receipts"
                )
                cached = (items, [Receipt.decode_obj(r).hash() for r in items])
                _remember(self._receipt_leaves, height, cached, 16)
            items, leaves = cached
            return ReceiptReply(
                TxState.INCLUDED,
                height,
                index,
                encode(items[index]),
                header,
                signature,
                tuple(list_proof(leaves, index)),
                len(leaves),
            )
        if self.gateway is not None:
            if self.gateway.pending(tx_id):
                return ReceiptReply(TxState.PENDING)
            dropped = self.gateway.dropped(tx_id)
            if dropped is not None:
                height, code, reason = dropped
                return ReceiptReply(TxState.DROPPED, height, code=code, reason=reason)
        return ReceiptReply(TxState.UNKNOWN)

    def block_reply(self, height: int) -> BlockReply:
        header = self.store.get_header(height)
        if header is None:
            raise NotFound(f"no block at height {height} (head is {self.watch.height})")
        block = self.store.get_block(height) or b""
        receipts = self.store.get_receipts(height) or encode([])
        return BlockReply(height, header, block, receipts)

    def blocks_range(self, start: int, count: int) -> tuple[HeightBlock, ...]:
        out: list[HeightBlock] = []
        size = 0
        for height in range(max(start, 1), min(start + count, self.watch.height + 1)):
            block = self.store.get_block(height)
            if block is None:
                break
            if out and size + len(block) > RANGE_BUDGET:
                break
            out.append(HeightBlock(height, block))
            size += len(block)
        return tuple(out)

    def events(self, selector: int, value: int, start: int, count: int) -> tuple[HeightEvents, ...]:
        count = min(count, MAX_EVENTS)
        if selector == EVENTS_BY_HEIGHT:
            out = []
            for height in range(value, min(value + count, self.watch.height + 1)):
                blob = self.store.get_events(height)
                if blob is not None:
                    out.append(HeightEvents(height, blob))
            return tuple(out)
        if selector == EVENTS_BY_TASK:
            return tuple(
                HeightEvents(h, blob) for h, blob in self.store.get_task_events(value, start)[:count]
            )
        raise BadRequest(f"events selector must be {EVENTS_BY_HEIGHT} (height) or {EVENTS_BY_TASK} (task)")

    def proofs_reply(self, height: int, keys: Sequence[bytes]) -> ProofsReply:
        """Proofs of ``keys`` against the state root of block ``height``, with its signed header.

        Tree nodes are never deleted, so any committed root still proves; the values themselves
        are not kept per height, so each proof shows the value's hash (its leaf).
        """
        view = self.store.snapshot()
        try:
            header, signature = self.header_and_signature(view, height)
            tree = SparseMerkleTree(view, decode_header(header).state_root)
            try:
                proofs = [tree.prove(key).encode() for key in keys]
            except TreeNodeError as exc:
                raise NotFound(f"the tree of block {height} is not readable: {exc}") from None
            return ProofsReply(height, header, signature, tuple(proofs))
        finally:
            view.close()

    def state_entries(self, keys: Sequence[bytes]) -> tuple[int, bytes, bytes, tuple[StateEntry, ...]]:
        """The head's height, header and signature, and each key's entry, all from one snapshot."""
        view = self.store.snapshot()
        try:
            head = view.head()
            if head is None:
                raise NotFound("the store is empty")
            header, signature = self.header_and_signature(view, head.height)
            root = decode_header(header).state_root
            return head.height, header, signature, tuple(self.prove(view, root, key) for key in keys)
        finally:
            view.close()


def _remember(cache: OrderedDict, key: Any, value: Any, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        cache.popitem(last=False)


class _Connection:
    def __init__(self, server: NodeServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        cfg = server.config
        self.outbox = Outbox(cfg.outbox_bytes, cfg.slow_peer_timeout)
        self.reader = FrameReader(stream, server.max_frame, frame_timeout=cfg.frame_timeout)
        self.inflight = trio.Semaphore(cfg.max_inflight)
        self.waiters = 0
        self.subscriptions: dict[int, trio.CancelScope] = {}
        self.nursery: trio.Nursery | None = None
        self.close_reason = "closed"

    def send_nowait(self, reply: Message, req_id: int) -> None:
        self.outbox.put_nowait(encode_frame(reply.to_wire(req_id)))

    async def send(self, reply: Message, req_id: int) -> None:
        await self.outbox.put(encode_frame(reply.to_wire(req_id)))

    async def run(self) -> str:
        failure: MpsError | None = None
        try:  # every stream error is caught where it happens: none leaves the nursery (strict groups)
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._write)
                try:
                    await self._read()
                except SlowPeer as exc:
                    self.close_reason = "slow"
                    log.info("dropping slow peer: %s", exc.reason)
                except (ProtocolViolation, WrongNetwork) as exc:
                    self.close_reason = "violation" if isinstance(exc, ProtocolViolation) else "wrong-network"
                    failure = exc
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.close_reason = "reset"
                nursery.cancel_scope.cancel()
        finally:
            self.outbox.close()
        if failure is not None:
            await self._goodbye(failure)
        return self.close_reason

    async def _goodbye(self, exc: MpsError) -> None:
        """Tell a misbehaving peer why, briefly, and close without resetting the reply away."""
        with trio.move_on_after(1):
            try:
                await self.stream.send_all(encode_frame(error_message(0, exc)))
                await self.stream.send_eof()
                drained = 0
                while drained < (1 << 20):  # unread input would make close() send a reset
                    data = await self.stream.receive_some(65536)
                    if not data:
                        break
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _write(self) -> None:
        try:
            await write_loop(self.stream, self.outbox)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close_reason = "reset"
            assert self.nursery is not None
            self.nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        srv = self.server
        body = await self.reader.read_frame(idle_timeout=srv.config.handshake_timeout)
        if body is None:
            return
        msg = self._decode(body)
        if msg[0] != Msg.HELLO:
            raise ProtocolViolation("the first message must be HELLO")
        self._hello(HelloRequest.from_wire(msg), msg[1])
        burst = 0
        while True:
            body = self.reader.next_buffered()
            if body is None:  # waits for input (a checkpoint)
                burst = 0
                body = await self.reader.read_frame()
                if body is None:
                    return
            elif burst >= BURST_FRAMES:  # frames already here are handled without yielding, up to a point
                burst = 0
                await trio.lowlevel.checkpoint()
            burst += 1
            await self._dispatch(self._decode(body))

    def _decode(self, body: bytes) -> list[Any]:
        return decode_message(body, self.server.max_frame)

    def _hello(self, hello: HelloRequest, req_id: int) -> None:
        srv = self.server
        if hello.version != PROTOCOL_VERSION:
            raise WrongNetwork(
                f"you speak protocol version {hello.version}, the node speaks {PROTOCOL_VERSION}"
            )
        anonymous = hello.genesis_hash == ZERO32  # "tell me your chain": the client checks GET_GENESIS itself
        if not anonymous and (hello.chain_id != srv.chain_id or hello.genesis_hash != srv.genesis_hash):
            raise WrongNetwork(
                f"your home is on chain {hello.chain_id!r} (genesis {hello.genesis_hash.hex()[:16]}...), the node "
                f"is on {srv.chain_id!r} (genesis {srv.genesis_hash.hex()[:16]}...): point at a node of your "
                "chain, or use that chain's genesis.json"
            )
        head = srv.store.head()
        if head is None:
            raise ProtocolViolation("node has no chain yet")
        reply = Hello(
            PROTOCOL_VERSION,
            srv.chain_id,
            srv.genesis_hash,
            head.height,
            head.block_hash,
            srv.kind,
            srv.genesis.sequencer,
        )
        self.send_nowait(reply, req_id)

    async def _dispatch(self, msg: list[Any]) -> None:
        """Decode the request by its type (a malformed one is a ``ProtocolViolation``) and handle it;
        a refusal (any other ``MpsError``) is the request's error reply."""
        kind, req_id = msg[0], msg[1]
        handler = _HANDLERS.get(kind)
        if handler is None:
            self.send_nowait_error(req_id, UnknownMessage(f"unknown message type {kind}"))
            return
        request = REQUESTS[kind].from_wire(msg)
        try:
            await handler(self, request, req_id)
        except (ProtocolViolation, SlowPeer):
            raise
        except MpsError as exc:
            await self.outbox.put(encode_frame(error_message(req_id, exc)))

    def send_nowait_error(self, req_id: int, exc: MpsError) -> None:
        self.outbox.put_nowait(encode_frame(error_message(req_id, exc)))

    # handlers ---------------------------------------------------------------------------------------
    async def _submit(self, request: SubmitTx, req_id: int) -> None:
        gateway = self.server.gateway
        if gateway is None:
            raise NotSupported(f"this node is a {self.server.kind}: submit txs to the sequencer")
        try:  # no yield while there is room: a burst of submits costs one checkpoint per burst
            self.inflight.acquire_nowait()
        except trio.WouldBlock:
            await self.inflight.acquire()
        released = False

        def done(result: bytes | MpsError) -> None:
            nonlocal released
            if released:
                return
            released = True
            self.inflight.release()
            if isinstance(result, MpsError):
                self.send_nowait_error(req_id, result)
            else:
                self.send_nowait(Submitted(result), req_id)

        try:
            await gateway.submit(request.tx, done)
        except MpsError as exc:
            done(exc)
        except BaseException:
            if not released:
                released = True
                self.inflight.release()
            raise

    async def _status(self, request: Message, req_id: int) -> None:
        await self.send(self.server.status(), req_id)

    async def _get_block(self, request: GetBlock, req_id: int) -> None:
        await self.send(self.server.block_reply(request.height), req_id)

    async def _get_header(self, request: GetHeader, req_id: int) -> None:
        header, signature = self.server.header_and_signature(self.server.store, request.height)
        await self.send(HeaderReply(header, signature), req_id)

    async def _get_blocks(self, request: GetBlocks, req_id: int) -> None:
        count = min(request.count, MAX_RANGE_BLOCKS)
        await self.send(BlocksReply(self.server.blocks_range(request.start, count)), req_id)

    async def _subscribe(self, request: Subscribe, req_id: int) -> None:
        start = max(request.from_height, 1)
        if req_id in self.subscriptions:
            raise BadRequest(f"subscription {req_id} exists")
        self._take_waiter()
        scope = trio.CancelScope()
        self.subscriptions[req_id] = scope
        await self.send(Subscribed(self.server.watch.height), req_id)
        assert self.nursery is not None
        self.nursery.start_soon(self._push_blocks, req_id, start, request.with_receipts, scope)

    def _take_waiter(self) -> None:
        if self.waiters >= self.server.config.max_waiters:
            raise Overloaded(
                f"{self.waiters} subscriptions and receipt waits are open on this connection, the limit"
            )
        self.waiters += 1

    async def _push_blocks(
        self, sub_id: int, start: int, with_receipts: bool, scope: trio.CancelScope
    ) -> None:
        srv = self.server
        try:
            with scope:
                height = start
                while True:
                    while height <= srv.watch.height:
                        block = srv.store.get_block(height)
                        if block is None:
                            break
                        receipts = (srv.store.get_receipts(height) or b"") if with_receipts else b""
                        await self.send(BlockPush(height, block, receipts), sub_id)
                        height += 1
                    await srv.watch.wait_above(height - 1)
        except SlowPeer as exc:
            self.close_reason = "slow"
            log.info("dropping slow subscriber: %s", exc.reason)
            assert self.nursery is not None
            self.nursery.cancel_scope.cancel()
        finally:
            self.waiters -= 1
            self.subscriptions.pop(sub_id, None)

    async def _unsubscribe(self, request: Unsubscribe, req_id: int) -> None:
        scope = self.subscriptions.pop(request.subscription, None)
        if scope is None:
            raise NotFound(f"no subscription {request.subscription}")
        scope.cancel()
        await self.send(Unsubscribed(), req_id)

    async def _get_state(self, request: GetState, req_id: int) -> None:
        _check_key(request.key)
        await self.send(StateReply(*self.server.state_entries([request.key])), req_id)

    async def _get_proofs(self, request: GetProofs, req_id: int) -> None:
        if not 1 <= len(request.keys) <= MAX_PROOF_KEYS:
            raise BadRequest(f"GET_PROOFS takes 1..{MAX_PROOF_KEYS} keys")
        for key in request.keys:
            _check_key(key)
        await self.send(self.server.proofs_reply(request.height, request.keys), req_id)

    async def _get_withdrawal(self, request: GetWithdrawal, req_id: int) -> None:
        reply = await trio.to_thread.run_sync(self.server.withdrawal_reply, request.index, request.height)
        await self.send(reply, req_id)

    async def _get_model(self, request: GetModel, req_id: int) -> None:
        keys = [task_key(request.task_id), model_key(request.task_id)]
        await self.send(ModelReply(*self.server.state_entries(keys)), req_id)

    async def _get_receipt(self, request: GetReceipt, req_id: int) -> None:
        wait_ms = min(request.wait_ms, MAX_WAIT_MS)
        reply = self.server.receipt_status(request.tx_id)
        if reply.state in (TxState.INCLUDED, TxState.DROPPED) or wait_ms == 0:
            await self.send(reply, req_id)
            return
        self._take_waiter()
        assert self.nursery is not None
        self.nursery.start_soon(self._wait_receipt, req_id, request.tx_id, wait_ms)

    async def _wait_receipt(self, req_id: int, tx_id: bytes, wait_ms: int) -> None:
        try:
            reply = self.server.receipt_status(tx_id)
            with trio.move_on_after(wait_ms / 1000):
                while reply.state not in (TxState.INCLUDED, TxState.DROPPED):
                    await self.server.watch.wait_change()
                    reply = self.server.receipt_status(tx_id)
            await self.send(reply, req_id)
        except MpsError as exc:
            if isinstance(exc, SlowPeer):
                assert self.nursery is not None
                self.nursery.cancel_scope.cancel()
                return
            self.send_nowait_error(req_id, exc)
        finally:
            self.waiters -= 1

    async def _get_events(self, request: GetEvents, req_id: int) -> None:
        events = self.server.events(request.selector, request.value, request.start, request.count)
        await self.send(EventsReply(events), req_id)

    async def _get_genesis(self, request: Message, req_id: int) -> None:
        await self.send(GenesisReply(self.server.genesis_json), req_id)

    async def _get_nonce(self, request: GetNonce, req_id: int) -> None:
        raw = self.server.store.get_state(account_key(request.address))
        state_nonce = 0 if raw is None else Account.decode(raw).nonce
        if self.server.gateway is not None:
            next_nonce, pending = self.server.gateway.next_nonce(request.address, state_nonce)
        else:
            next_nonce, pending = state_nonce, 0
        await self.send(NonceInfo(state_nonce, next_nonce, pending), req_id)

    def _gateway(self) -> TxGateway:
        if self.server.gateway is None:
            raise NotSupported(f"this node is a {self.server.kind}: ask the sequencer about pending txs")
        return self.server.gateway

    async def _get_pending(self, request: GetPending, req_id: int) -> None:
        gateway = self._gateway()
        raw = self.server.store.get_state(account_key(request.address))
        state_nonce = 0 if raw is None else Account.decode(raw).nonce
        await self.send(PendingReply(tuple(gateway.pending_of(request.address, state_nonce))), req_id)

    async def _drop_pending(self, request: DropPending, req_id: int) -> None:
        await self._gateway().drop_pending(request.tx_id, request.signature)
        await self.send(Dropped(), req_id)

    async def _ping(self, request: Message, req_id: int) -> None:
        await self.send(Pong(), req_id)

    async def _hello_again(self, request: Message, req_id: int) -> None:
        raise ProtocolViolation("HELLO was already exchanged")


def _check_key(key: bytes) -> None:
    if not 1 <= len(key) <= MAX_KEY:
        raise BadRequest(f"a state key is 1..{MAX_KEY} bytes")


Handler = Callable[["_Connection", Any, int], Awaitable[None]]


_HANDLERS: dict[int, Handler] = {
    Msg.HELLO: _Connection._hello_again,
    Msg.SUBMIT_TX: _Connection._submit,
    Msg.STATUS: _Connection._status,
    Msg.GET_BLOCK: _Connection._get_block,
    Msg.GET_BLOCKS: _Connection._get_blocks,
    Msg.SUBSCRIBE: _Connection._subscribe,
    Msg.UNSUBSCRIBE: _Connection._unsubscribe,
    Msg.GET_STATE: _Connection._get_state,
    Msg.GET_RECEIPT: _Connection._get_receipt,
    Msg.GET_EVENTS: _Connection._get_events,
    Msg.GET_MODEL: _Connection._get_model,
    Msg.GET_GENESIS: _Connection._get_genesis,
    Msg.GET_NONCE: _Connection._get_nonce,
    Msg.PING: _Connection._ping,
    Msg.GET_HEADER: _Connection._get_header,
    Msg.GET_PROOFS: _Connection._get_proofs,
    Msg.GET_WITHDRAWAL: _Connection._get_withdrawal,
    Msg.GET_PENDING: _Connection._get_pending,
    Msg.DROP_PENDING: _Connection._drop_pending,
}
