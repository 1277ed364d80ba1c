"""The client half of the wire protocol (trio): talk to a sequencer or verifier.

::

    async with connect("127.0.0.1:7070", genesis=g) as node:
        tx_id = await node.submit(stx)                  # returns once the tx is on the node's disk
        outcome = await node.wait_receipt(tx_id)        # included (with its receipt) or dropped
        acct = await node.account(address)              # proven against a sequencer-signed header
        async with node.subscribe(from_height=1) as blocks:
            async for pushed in blocks: ...

Every state answer (account, task, model) comes with a sparse-Merkle proof against the state root
of a header, and the header's signature is checked against the genesis sequencer key (height 0:
against the genesis hash); a receipt comes with its path to the header's receipts root. Anything
that does not check out raises ``VerificationFailed``. The genesis is given (a home's
genesis.json) or, if not, fetched from the node and pinned by hash: pass ``genesis_hash`` to be
sure it is the chain you mean.

Requests are pipelined: many may be in flight on one connection (``submit_many``). The verifier
follows its upstream with this library; clients sign with ``mpsnode.client.wallet.Wallet``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio

from mpsnode.consensus import crypto
from mpsnode.consensus.block import Block, Header, decode_block, decode_header
from mpsnode.consensus.encoding import decode
from mpsnode.consensus.errors import BlockDecodeError, DecodeError, MpsError
from mpsnode.consensus.events import Event, decode_event
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.hashing import RECEIPT, ZERO32, H
from mpsnode.consensus.merkle import verify_list_proof
from mpsnode.consensus.params import Params
from mpsnode.consensus.receipt import Receipt, decode_receipts
from mpsnode.consensus.settlement import TREE_DEPTH, WithdrawalRecord, output_root, verify_branch
from mpsnode.consensus.smt import Proof, verify_proof
from mpsnode.consensus.state import EMPTY_ACCOUNT, Account, Task, account_key, model_key, task_key
from mpsnode.consensus.tx import SignedTx, decode_signed_tx
from mpsnode.node.errors import (
    AlreadyKnown,
    ConnectionLost,
    NotFound,
    ProtocolViolation,
    VerificationFailed,
    WrongNetwork,
)
from mpsnode.node.messages import (
    BLOCK_PUSH,
    EVENTS_BY_HEIGHT,
    EVENTS_BY_TASK,
    REPLIES,
    REPLY,
    BlockPush,
    BlockReply,
    BlocksReply,
    DropPending,
    EventsReply,
    GenesisReply,
    GetBlock,
    GetBlocks,
    GetEvents,
    GetGenesis,
    GetHeader,
    GetModel,
    GetNonce,
    GetPending,
    GetProofs,
    GetReceipt,
    GetState,
    GetStatus,
    GetWithdrawal,
    HeaderReply,
    Hello,
    HelloRequest,
    Message,
    ModelReply,
    Msg,
    NonceInfo,
    PendingReply,
    PendingTx,
    Ping,
    ProofsReply,
    ReceiptReply,
    StateReply,
    Status,
    Submitted,
    SubmitTx,
    Subscribe,
    TxState,
    Unsubscribe,
    WithdrawalReply,
    drop_pending_message,
)
from mpsnode.node.wire import (
    ERROR,
    PROTOCOL_VERSION,
    FrameReader,
    Outbox,
    decode_message,
    encode_frame,
    max_reply_frame,
    parse_error,
    parse_hostport,
    write_loop,
)

# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class WithdrawalProof:
    """A withdrawal with what the portal's ``prove_withdrawal`` takes against block ``header``'s output."""

    index: int
    record: WithdrawalRecord
    header: Header
    withdrawals_root: bytes
    proof: tuple[bytes, ...]

    @property
    def output_root(self) -> bytes:
        """The output root of the block, as the oracle must hold it."""
        return output_root(self.header.state_root, self.withdrawals_root, self.header.hash())


@dataclass(frozen=True, slots=True)
class Proven:
    """A value read from state, with the signed header whose state root proved it."""

    value: Any
    height: int
    header: Header


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """Where a tx stands: ``state`` is unknown, pending, included or dropped."""

    tx_id: bytes
    state: str
    height: int = 0
    index: int = 0
    receipt: Receipt | None = None
    code: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "included" and self.receipt is not None and self.receipt.ok

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tx_id": self.tx_id.hex(), "state": self.state}
        if self.state == "included" and self.receipt is not None:
            out.update(height=self.height, index=self.index, receipt=self.receipt.to_json())
        if self.state == "dropped":
            out.update(height=self.height, code=self.code, reason=self.reason)
        return out


@dataclass(frozen=True, slots=True)
class PushedBlock:
    height: int
    data: bytes
    receipts: bytes

    def block(self) -> Block:
        return decode_block(self.data)

    def receipt_list(self) -> list[Receipt]:
        return decode_receipts(self.receipts) if self.receipts else []


class _Waiter:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: list[Any] | None = None
        self.error: BaseException | None = None


class Client:
    """One connection to a node. Create it with ``connect``."""

    def __init__(self, stream: trio.SocketStream, genesis: Genesis | None, *, max_frame: int) -> None:
        self._stream = stream
        self.genesis = genesis
        self._reader = FrameReader(stream, max_frame, frame_timeout=120.0)
        self._outbox = Outbox(1 << 62, 1e9)  # the caller's own requests: bounded by the caller
        self._waiters: dict[int, _Waiter] = {}
        self._subs: dict[int, trio.MemorySendChannel[PushedBlock]] = {}
        self._lossy: set[int] = set()  # subscriptions whose pushes are dropped rather than waited for
        self._next_id = 1
        self._closed: BaseException | None = None
        self.hello: Hello | None = None

    # plumbing ----------------------------------------------------------------------------------
    def _new_id(self) -> int:
        req_id = self._next_id
        self._next_id += 1
        return req_id

    def _send(self, msg_type: int, req_id: int, fields: Sequence[Any]) -> None:
        if self._closed is not None:
            raise ConnectionLost(f"connection is closed: {self._closed}")
        self._outbox.put_nowait(encode_frame([int(msg_type), req_id, *fields]))

    async def call(self, request: Message) -> Any:
        """Send ``request`` and wait for its typed reply (``messages.REPLIES``); raises its error.

        A reply that is not a well-formed message of the expected kind is a ``ProtocolViolation``.
        """
        fields = await self.request(request.TYPE, *request.to_obj())
        return REPLIES[request.TYPE].from_fields(fields)

    async def request(self, msg_type: int, *fields: Any) -> list[Any]:
        """The raw form of ``call`` (for tools and tests): send one request's fields and wait for its
        reply's fields (after type and id); raises its error."""
        req_id = self._new_id()
        waiter = self._waiters[req_id] = _Waiter()
        try:
            self._send(msg_type, req_id, fields)
            await waiter.event.wait()
        finally:
            self._waiters.pop(req_id, None)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        if waiter.result[0] != msg_type | REPLY:
            raise ProtocolViolation(f"reply of type {waiter.result[0]} to a request of type {msg_type}")
        return waiter.result[2:]

    async def _read_loop(self) -> None:
        try:
            while True:
                body = await self._reader.read_frame()
                if body is None:
                    raise ConnectionLost("the node closed the connection")
                msg = decode_message(body, self._reader.max_frame)
                kind, req_id = msg[0], msg[1]
                if kind == BLOCK_PUSH:
                    channel = self._subs.get(req_id)
                    if channel is not None:
                        push = BlockPush.from_wire(msg)
                        pushed = PushedBlock(push.height, push.block, push.receipts)
                        try:
                            if req_id in self._lossy:
                                with suppress(trio.WouldBlock):  # full: the consumer has a block to wake it
                                    channel.send_nowait(pushed)
                            else:
                                await channel.send(pushed)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            self._subs.pop(req_id, None)
                    continue
                if kind == ERROR and req_id == 0:
                    raise parse_error(msg)  # the node is closing the connection, and says why
                waiter = self._waiters.get(req_id)
                if waiter is None:
                    continue  # a reply to a request whose caller gave up
                if kind == ERROR:
                    waiter.error = parse_error(msg)
                else:
                    waiter.result = msg
                waiter.event.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionLost, MpsError) as exc:
            self._fail(
                exc if isinstance(exc, (MpsError, ConnectionLost)) else ConnectionLost(str(exc) or "reset")
            )

    def _fail(self, exc: BaseException) -> None:
        self._closed = exc
        for waiter in list(self._waiters.values()):
            if not waiter.event.is_set():
                waiter.error = exc if isinstance(exc, MpsError) else ConnectionLost(str(exc))
                waiter.event.set()
        for channel in list(self._subs.values()):
            channel.close()
        self._subs.clear()

    async def _write_loop(self) -> None:
        try:
            await write_loop(self._stream, self._outbox)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(ConnectionLost(f"cannot write: {exc}"))

    async def _handshake(self) -> None:
        genesis_hash = self.genesis.hash() if self.genesis is not None else ZERO32
        chain_id = self.genesis.chain_id if self.genesis is not None else ""
        self.hello = await self.call(HelloRequest(PROTOCOL_VERSION, chain_id, genesis_hash, 0))

    async def _adopt_genesis(self, genesis_hash: bytes | None) -> None:
        reply: GenesisReply = await self.call(GetGenesis())
        try:
            genesis = Genesis.from_json(json.loads(reply.genesis_json))
        except (ValueError, MpsError) as exc:
            raise VerificationFailed(f"the node's genesis does not read: {exc}") from None
        assert self.hello is not None
        if genesis.hash() != self.hello.genesis_hash:
            raise VerificationFailed("the node's genesis does not hash to the genesis hash it announced")
        if genesis_hash is not None and genesis.hash() != genesis_hash:
            raise WrongNetwork(
                f"the node is on genesis {genesis.hash().hex()}, your home on {genesis_hash.hex()}"
            )
        self.genesis = genesis

    @property
    def params(self) -> Params:
        assert self.genesis is not None
        return self.genesis.params

    @property
    def chain_id(self) -> str:
        assert self.genesis is not None
        return self.genesis.chain_id

    # verification -----------------------------------------------------------------------------------
    def verify_header(self, header_bytes: bytes, signature: bytes) -> Header:
        """The header, once its signature (or, at height 0, its hash) checks out against genesis."""
        assert self.genesis is not None
        try:
            header = decode_header(header_bytes)
        except BlockDecodeError as exc:
            raise VerificationFailed(f"header does not decode: {exc.reason}") from None
        if header.chain_id != self.genesis.chain_id:
            raise VerificationFailed(f"header is for chain {header.chain_id!r}")
        if header.height == 0:
            if header.hash() != self.genesis.hash():
                raise VerificationFailed("height-0 header is not the genesis header")
        elif not crypto.verify(self.genesis.sequencer, header.hash(), signature):
            raise VerificationFailed(f"header {header.height} is not signed by the genesis sequencer key")
        return header

    def _proven_values(
        self, reply: StateReply | ModelReply, keys: Sequence[bytes]
    ) -> tuple[Header, list[bytes | None]]:
        if len(reply.entries) != len(keys):
            raise ProtocolViolation(f"state reply has {len(reply.entries)} entries for {len(keys)} keys")
        header = self.verify_header(reply.header, reply.signature)
        if header.height != reply.height:
            raise VerificationFailed("state reply names another height than its header")
        values: list[bytes | None] = []
        for entry, key in zip(reply.entries, keys, strict=True):
            value = entry.value if entry.present else None
            try:
                proof = Proof.decode(entry.proof)
            except ValueError as exc:
                raise VerificationFailed(f"malformed proof: {exc}") from None
            if not verify_proof(header.state_root, key, value, proof):
                raise VerificationFailed(
                    f"proof of state key {key.hex()} does not match state root "
                    f"{header.state_root.hex()} at height {header.height}"
                )
            values.append(value)
        return header, values

    # requests -------------------------------------------------------------------------------------------
    async def ping(self) -> None:
        await self.call(Ping())

    async def status(self) -> Status:
        status: Status = await self.call(GetStatus())
        return status

    async def submit(self, tx: SignedTx | bytes) -> bytes:
        """Submit a tx; returns its id once the node holds it durably. Raises the rejection.

        Submitting a tx the node already holds (pending or included) returns its id too, so a
        submit can be retried safely after a lost connection.
        """
        raw = tx.encode() if isinstance(tx, SignedTx) else tx
        try:
            reply: Submitted = await self.call(SubmitTx(raw))
        except AlreadyKnown:
            if isinstance(tx, SignedTx):
                return tx.tx_id
            return decode_signed_tx(raw).tx_id
        return reply.tx_id

    async def submit_many(self, txs: Iterable[SignedTx | bytes]) -> list[bytes | MpsError]:
        """Submit many txs pipelined; per tx, its id (durable) or the error that refused it."""
        txs = list(txs)
        results: list[bytes | MpsError] = [b""] * len(txs)

        async def one(i: int, tx: SignedTx | bytes) -> None:
            try:
                results[i] = await self.submit(tx)
            except MpsError as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i, tx in enumerate(txs):
                nursery.start_soon(one, i, tx)
        return results

    async def receipt(self, tx_id: bytes, wait_ms: int = 0) -> TxOutcome:
        """Where ``tx_id`` stands; if included, its receipt proven against the block's signed header."""
        r: ReceiptReply = await self.call(GetReceipt(tx_id, wait_ms))
        height, index, receipt_bytes = r.height, r.index, r.receipt
        if r.state == TxState.INCLUDED:
            header = self.verify_header(r.header, r.signature)
            if header.height != height:
                raise VerificationFailed("receipt reply names another height than its header")
            if not verify_list_proof(
                header.receipts_root, H(RECEIPT, receipt_bytes), index, r.count, list(r.path)
            ):
                raise VerificationFailed(f"receipt of {tx_id.hex()} is not in block {height}'s receipts root")
            try:
                receipt = Receipt.decode_obj(decode(receipt_bytes, max_bytes=len(receipt_bytes)))
            except DecodeError as exc:
                raise VerificationFailed(f"receipt does not decode: {exc.reason}") from None
            if receipt.tx_id != tx_id:
                raise VerificationFailed("the proven receipt is another tx's")
            return TxOutcome(tx_id, "included", height, index, receipt)
        if r.state == TxState.DROPPED:
            return TxOutcome(tx_id, "dropped", height, code=r.code, reason=r.reason)
        return TxOutcome(tx_id, r.state.name.lower())

    async def wait_receipt(self, tx_id: bytes, timeout: float = 60.0) -> TxOutcome:
        """Wait until ``tx_id`` is included or dropped; ``trio.TooSlowError`` after ``timeout`` s."""
        with trio.fail_after(timeout):
            while True:
                outcome = await self.receipt(tx_id, wait_ms=10_000)
                if outcome.state in ("included", "dropped"):
                    return outcome

    async def nonce(self, address: bytes) -> NonceInfo:
        info: NonceInfo = await self.call(GetNonce(address))
        return info

    async def pending(self, address: bytes) -> tuple[PendingTx, ...]:
        """``address``'s txs pending on a sequencer, by nonce, each saying whether it waits behind a gap."""
        reply: PendingReply = await self.call(GetPending(address))
        return reply.txs

    async def drop_pending(self, tx_id: bytes, key: crypto.Keypair) -> None:
        """Drop ``key``'s pending tx ``tx_id``, which waits behind a nonce gap (signed by ``key``)."""
        await self.call(DropPending(tx_id, key.sign(drop_pending_message(tx_id))))

    async def get_state(self, key: bytes) -> Proven:
        """The raw value of a state key (``None``: absent), proven."""
        header, (value,) = self._proven_values(await self.call(GetState(key)), [key])
        return Proven(value, header.height, header)

    async def account(self, address: bytes) -> Proven:
        """The account (``Proven.value`` is an ``Account``; the empty account if absent)."""
        proven = await self.get_state(account_key(address))
        account = EMPTY_ACCOUNT if proven.value is None else Account.decode(proven.value)
        return Proven(account, proven.height, proven.header)

    async def task(self, task_id: int) -> Proven:
        """The task record (``Proven.value`` is a ``Task``, or ``None`` if there is no such task)."""
        proven = await self.get_state(task_key(task_id))
        return Proven(
            None if proven.value is None else Task.decode(proven.value), proven.height, proven.header
        )

    async def model(self, task_id: int) -> Proven:
        """``Proven.value`` is ``(Task, model bytes)`` (int32 little-endian), both proven at one header."""
        keys = [task_key(task_id), model_key(task_id)]
        header, (task_raw, model) = self._proven_values(await self.call(GetModel(task_id)), keys)
        if task_raw is None or model is None:
            raise NotFound(f"task {task_id} has no model at height {header.height}")
        return Proven((Task.decode(task_raw), model), header.height, header)

    async def header(self, height: int) -> Header:
        reply: HeaderReply = await self.call(GetHeader(height))
        return self.verify_header(reply.header, reply.signature)

    async def withdrawal(self, index: int, height: int) -> WithdrawalProof:
        """Withdrawal ``index`` and its branch in the tree of block ``height``'s output, checked
        here as L1 will check it: the branch takes the record's leaf to the tree root."""
        r: WithdrawalReply = await self.call(GetWithdrawal(index, height))
        header = self.verify_header(r.header, r.signature)
        if header.height != height:
            raise VerificationFailed(f"asked for block {height}'s output, got a header of {header.height}")
        record = WithdrawalRecord(r.sender, r.l1_address, r.amount, r.recorded_at)
        if len(r.proof) != TREE_DEPTH or not verify_branch(
            record.leaf(index), index, r.proof, r.withdrawals_root
        ):
            raise VerificationFailed(
                f"the branch of withdrawal {index} does not lead to the tree root it came with"
            )
        return WithdrawalProof(index, record, header, r.withdrawals_root, r.proof)

    async def state_proofs(self, height: int, keys: Sequence[bytes]) -> tuple[Header, list[Proof]]:
        """Proofs of ``keys`` against the state root of block ``height`` (header signature checked).

        Each proof shows the key's value hash at that height (or its absence); check it against
        a root you trust, e.g. with ``verifier.divergence.claimed_value_hash``.
        """
        r: ProofsReply = await self.call(GetProofs(height, tuple(keys)))
        if len(r.proofs) != len(keys):
            raise ProtocolViolation(f"proofs reply has {len(r.proofs)} proofs for {len(keys)} keys")
        header = self.verify_header(r.header, r.signature)
        if header.height != height:
            raise VerificationFailed(f"asked for proofs at height {height}, got a header of {header.height}")
        try:
            return header, [Proof.decode(p) for p in r.proofs]
        except ValueError as exc:
            raise VerificationFailed(f"malformed proof: {exc}") from None

    async def block(self, height: int) -> tuple[Header, Block | None, list[Receipt]]:
        """Block ``height`` (``None`` at genesis) and its receipts, signature checked."""
        reply: BlockReply = await self.call(GetBlock(height))
        if height == 0:
            return self.verify_header(reply.header, b""), None, []
        try:
            block = decode_block(reply.block)
        except BlockDecodeError as exc:
            raise VerificationFailed(f"block {height} does not decode: {exc.reason}") from None
        header = self.verify_header(block.header.encode(), block.signature)
        if header.height != height:
            raise VerificationFailed(f"asked for block {height}, got {header.height}")
        return header, block, decode_receipts(reply.receipts)

    async def blocks(self, start: int, count: int) -> list[tuple[int, bytes]]:
        """Raw blocks from ``start`` (at most ``count``, fewer if large or past the head)."""
        reply: BlocksReply = await self.call(GetBlocks(start, count))
        return [(item.height, item.data) for item in reply.blocks]

    async def events(
        self, *, height: int | None = None, task_id: int | None = None, start: int = 0, count: int = 100
    ) -> list[tuple[int, list[Event]]]:
        """Events of blocks ``height ..`` (``count`` blocks) or of task ``task_id`` from ``start``."""
        if (height is None) == (task_id is None):
            raise ValueError("give height or task_id")
        if height is not None:
            request = GetEvents(EVENTS_BY_HEIGHT, height, 0, count)
        else:
            assert task_id is not None
            request = GetEvents(EVENTS_BY_TASK, task_id, start, count)
        reply: EventsReply = await self.call(request)
        out = []
        for item in reply.blocks:
            objs = decode(item.events, max_bytes=len(item.events), max_array_len=1 << 24)
            out.append((item.height, [decode_event(e) for e in objs]))
        return out

    @asynccontextmanager
    async def subscribe(
        self, from_height: int = 1, *, with_receipts: bool = False, buffer: int = 64, lossy: bool = False
    ) -> AsyncIterator[trio.MemoryReceiveChannel[PushedBlock]]:
        """Blocks from ``from_height`` on, then each new one as it is made.

        If this consumer falls behind, the connection stalls (every other reply on it waits too)
        and the node eventually drops it: right for a follower that needs every block. ``lossy``
        is for a consumer that only needs to know the chain moved on while it makes requests of
        its own on the same connection (the client daemon, which may train for longer than
        ``buffer`` blocks): a push that finds the buffer full is dropped, never waited for.
        """
        send, recv = trio.open_memory_channel[PushedBlock](buffer)
        req_id = self._new_id()
        waiter = self._waiters[req_id] = _Waiter()
        self._subs[req_id] = send
        if lossy:
            self._lossy.add(req_id)
        try:
            self._send(Msg.SUBSCRIBE, req_id, Subscribe(from_height, with_receipts).to_obj())
            await waiter.event.wait()
            self._waiters.pop(req_id, None)
            if waiter.error is not None:
                raise waiter.error
            async with recv:
                yield recv
        finally:
            self._waiters.pop(req_id, None)
            self._subs.pop(req_id, None)
            self._lossy.discard(req_id)
            send.close()
            if self._closed is None:
                with suppress(ConnectionLost):
                    self._send(Msg.UNSUBSCRIBE, self._new_id(), Unsubscribe(req_id).to_obj())

    async def aclose(self) -> None:
        self._fail(ConnectionLost("closed by the client"))
        await trio.aclose_forcefully(self._stream)


@asynccontextmanager
async def connect(
    address: str | tuple[str, int],
    *,
    genesis: Genesis | None = None,
    genesis_hash: bytes | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Open a connection, say HELLO (refused if the node is on another chain) and yield the client.

    Without ``genesis`` the node's genesis is fetched and checked against the hash it announces
    (and against ``genesis_hash`` if given).
    """
    host, port = parse_hostport(address) if isinstance(address, str) else address
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
    params = genesis.params if genesis is not None else Params()
    client = Client(stream, genesis, max_frame=max_reply_frame(params))
    try:
        async with _unwrapped(), trio.open_nursery() as nursery:
            nursery.start_soon(client._read_loop)
            nursery.start_soon(client._write_loop)
            with trio.fail_after(timeout):
                await client._handshake()
                if client.genesis is None:
                    await client._adopt_genesis(genesis_hash)
                    client._reader.max_frame = max_reply_frame(client.params)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        client._fail(ConnectionLost("closed by the client"))
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def _unwrapped() -> AsyncIterator[None]:
    """Raise a lone error out of the connection's nursery as itself, not in an exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        errors = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        if len(errors) == 1:
            raise errors[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
