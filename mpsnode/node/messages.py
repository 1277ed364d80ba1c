"""Typed wire messages: one frozen dataclass per request and per reply, encoded from its fields.

A message on the wire is ``[type, request id, field...]`` (``docs/WIRE.md``). Each class here
lists its fields in wire order, each with its kind (``mpsnode.consensus.records``: ``UINT``,
``BLOB``, ``TEXT``, ``FLAG``, a list of a kind, a nested record, or ``RAW`` for a canonical
object another module decodes), and the codec is written once for all of them, as for events
and state records: ``to_wire`` lays the fields out, ``from_wire`` checks every one. A field
that is missing, extra or of the wrong kind is the peer's ``ProtocolViolation`` (the
connection is closed), never an ``IndexError`` or a ``TypeError``; a value of the right kind but
out of range is the handler's to refuse (``BadRequest``). The server and the client library
share these classes, so neither side indexes a reply by hand.

Two layouts are not a fixed list of fields: the trailing ``verifier`` of a STATUS reply is
present only from a verifier (``optional=True``), and the ``(present, value, proof)`` triples of a
state reply follow its header inline (``inline=StateEntry``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, Self

from mpsnode.consensus.errors import DecodeError
from mpsnode.consensus.hashing import H
from mpsnode.consensus.records import (
    BLOB,
    FLAG,
    HASH,
    NAME,
    RAW,
    TEXT,
    UINT,
    Record,
    enum_of,
    list_of,
    record,
    wire,
)
from mpsnode.node.errors import ProtocolViolation

REPLY = 0x80
BLOCK_PUSH = 0x40
MAX_KEY = 511  # bytes of a state key
DROP_PENDING_DOMAIN = b"mps-drop-pending"  # personalization of what DROP_PENDING's signature is over


@dataclass(frozen=True, slots=True)
class Message(Record):
    """A request or a reply: ``[TYPE, request id, field...]``."""

    TYPE: ClassVar[int]

    def to_wire(self, req_id: int) -> list[Any]:
        return [int(self.TYPE), req_id, *self.to_obj()]

    @classmethod
    def from_wire(cls, msg: Sequence[Any]) -> Self:
        """From a whole message (``wire.decode_message``'s array) of this type."""
        if not msg or msg[0] != cls.TYPE:
            raise ProtocolViolation(f"{cls.__name__}: message of type {msg[0] if msg else '?'}")
        return cls.from_fields(list(msg[2:]))

    @classmethod
    def from_fields(cls, items: list[Any]) -> Self:
        """From the fields after type and request id; ``ProtocolViolation`` naming a malformed field."""
        try:
            return cls.decode_items(items, cls.__name__)
        except DecodeError as exc:
            raise ProtocolViolation(f"{cls.__name__}: {exc.reason}") from None


# ---------------------------------------------------------------------------------------------
# Requests (client -> node)


class Msg(IntEnum):
    """Request types; the reply to request ``t`` has type ``t | REPLY``."""

    HELLO = 1
    SUBMIT_TX = 2
    STATUS = 3
    GET_BLOCK = 4
    GET_BLOCKS = 5
    SUBSCRIBE = 6
    UNSUBSCRIBE = 7
    GET_STATE = 8
    GET_RECEIPT = 9
    GET_EVENTS = 10
    GET_MODEL = 11
    GET_GENESIS = 12
    GET_NONCE = 13
    PING = 14
    GET_HEADER = 15
    GET_PROOFS = 16  # sparse-Merkle proofs of keys against the state root of a past block
    GET_PENDING = 17  # an account's pending txs (sequencer only)
    DROP_PENDING = 18  # drop one's own pending tx that waits behind a nonce gap (sequencer only)
    GET_WITHDRAWAL = 19  # a withdrawal's record and its proof in the tree of a block's output


@dataclass(frozen=True, slots=True)
class HelloRequest(Message):
    TYPE = Msg.HELLO
    version: int = wire(UINT)
    chain_id: str = wire(TEXT)  # "" with an all-zero genesis hash: "tell me your chain"
    genesis_hash: bytes = wire(HASH)
    height: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class SubmitTx(Message):
    TYPE = Msg.SUBMIT_TX
    tx: bytes = wire(BLOB)


@dataclass(frozen=True, slots=True)
class GetStatus(Message):
    TYPE = Msg.STATUS


@dataclass(frozen=True, slots=True)
class GetBlock(Message):
    TYPE = Msg.GET_BLOCK
    height: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class GetBlocks(Message):
    TYPE = Msg.GET_BLOCKS
    start: int = wire(UINT)
    count: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    TYPE = Msg.SUBSCRIBE
    from_height: int = wire(UINT)
    with_receipts: bool = wire(FLAG)


@dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    TYPE = Msg.UNSUBSCRIBE
    subscription: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class GetState(Message):
    TYPE = Msg.GET_STATE
    key: bytes = wire(BLOB)


@dataclass(frozen=True, slots=True)
class GetReceipt(Message):
    TYPE = Msg.GET_RECEIPT
    tx_id: bytes = wire(HASH)
    wait_ms: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class GetEvents(Message):
    TYPE = Msg.GET_EVENTS
    selector: int = wire(UINT)  # EVENTS_BY_HEIGHT or EVENTS_BY_TASK
    value: int = wire(UINT)  # the first height, or the task id
    start: int = wire(UINT)  # by task: from this height
    count: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class GetModel(Message):
    TYPE = Msg.GET_MODEL
    task_id: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class GetGenesis(Message):
    TYPE = Msg.GET_GENESIS


@dataclass(frozen=True, slots=True)
class GetNonce(Message):
    TYPE = Msg.GET_NONCE
    address: bytes = wire(HASH)


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE = Msg.PING


@dataclass(frozen=True, slots=True)
class GetHeader(Message):
    TYPE = Msg.GET_HEADER
    height: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class GetProofs(Message):
    TYPE = Msg.GET_PROOFS
    height: int = wire(UINT)
    keys: tuple[bytes, ...] = wire(list_of(BLOB))


@dataclass(frozen=True, slots=True)
class GetWithdrawal(Message):
    TYPE = Msg.GET_WITHDRAWAL
    index: int = wire(UINT)
    height: int = wire(UINT)  # the block whose output the proof is against


@dataclass(frozen=True, slots=True)
class GetPending(Message):
    TYPE = Msg.GET_PENDING
    address: bytes = wire(HASH)


@dataclass(frozen=True, slots=True)
class DropPending(Message):
    """Drop a pending tx: ``signature`` is its sender's over ``drop_pending_message(tx_id)``."""

    TYPE = Msg.DROP_PENDING
    tx_id: bytes = wire(HASH)
    signature: bytes = wire(BLOB)


def drop_pending_message(tx_id: bytes) -> bytes:
    """What a sender signs to drop its pending tx ``tx_id``: ``H(mps-drop-pending, tx_id)``."""
    return H(DROP_PENDING_DOMAIN, tx_id)


# ---------------------------------------------------------------------------------------------
# Replies (node -> client) and pushes


class TxState(IntEnum):
    """Where a tx stands (GET_RECEIPT); ``name.lower()`` is how the client and the CLI call it."""

    UNKNOWN = 0
    PENDING = 1
    INCLUDED = 2
    DROPPED = 3


# GET_EVENTS selectors
EVENTS_BY_HEIGHT, EVENTS_BY_TASK = 0, 1

# Node kinds (HELLO, STATUS)
SEQUENCER, VERIFIER = "sequencer", "verifier"


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE = Msg.HELLO | REPLY
    version: int = wire(UINT)
    chain_id: str = wire(NAME)
    genesis_hash: bytes = wire(HASH)
    height: int = wire(UINT)
    head_hash: bytes = wire(HASH)
    kind: str = wire(NAME)  # "sequencer" or "verifier"
    sequencer: bytes = wire(HASH)


@dataclass(frozen=True, slots=True)
class Submitted(Message):
    TYPE = Msg.SUBMIT_TX | REPLY
    tx_id: bytes = wire(HASH)


@dataclass(frozen=True, slots=True)
class VerifierStatus(Record):
    """What a verifier adds to STATUS: how far it has verified, and whether it found a divergence."""

    upstream: str = wire(TEXT)
    upstream_height: int = wire(UINT)
    lag: int = wire(UINT)  # upstream_height - the verifier's head
    blocks_verified: int = wire(UINT)  # every block in the verifier's store passed every check
    connected: bool = wire(FLAG)
    diverged: bool = wire(FLAG)
    divergence_height: int = wire(UINT)  # 0 when not diverged
    check: str = wire(TEXT)  # the failed check's name ("" when not diverged)
    reason: str = wire(TEXT)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Status(Message):
    TYPE = Msg.STATUS | REPLY
    chain_id: str = wire(NAME)
    genesis_hash: bytes = wire(HASH)
    height: int = wire(UINT)
    head_hash: bytes = wire(HASH)
    state_root: bytes = wire(HASH)
    timestamp_ms: int = wire(UINT)
    mempool_txs: int = wire(UINT)
    mempool_bytes: int = wire(UINT)
    kind: str = wire(NAME)
    verifier: VerifierStatus | None = wire(
        record(VerifierStatus), None, optional=True
    )  # only from a verifier

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "verifier":
                if value is not None:
                    out["verifier"] = value.to_json()
            else:
                out[f.name] = value.hex() if isinstance(value, bytes) else value
        return out


@dataclass(frozen=True, slots=True)
class BlockReply(Message):
    TYPE = Msg.GET_BLOCK | REPLY
    height: int = wire(UINT)
    header: bytes = wire(BLOB)
    block: bytes = wire(BLOB)  # empty at height 0
    receipts: bytes = wire(BLOB)  # the encoded receipt list


@dataclass(frozen=True, slots=True)
class HeightBlock(Record):
    height: int = wire(UINT)
    data: bytes = wire(BLOB)


@dataclass(frozen=True, slots=True)
class BlocksReply(Message):
    TYPE = Msg.GET_BLOCKS | REPLY
    blocks: tuple[HeightBlock, ...] = wire(list_of(record(HeightBlock)))


@dataclass(frozen=True, slots=True)
class Subscribed(Message):
    TYPE = Msg.SUBSCRIBE | REPLY
    height: int = wire(UINT)  # the node's head when the subscription started


@dataclass(frozen=True, slots=True)
class Unsubscribed(Message):
    TYPE = Msg.UNSUBSCRIBE | REPLY


@dataclass(frozen=True, slots=True)
class BlockPush(Message):
    """A block pushed to a subscription (``req id`` = the SUBSCRIBE request's id)."""

    TYPE = BLOCK_PUSH
    height: int = wire(UINT)
    block: bytes = wire(BLOB)
    receipts: bytes = wire(BLOB)  # empty unless the subscription asked for receipts


@dataclass(frozen=True, slots=True)
class StateEntry(Record):
    """One key's answer: whether it is present, its value, and its proof (``smt.Proof``'s object)."""

    present: bool = wire(FLAG)
    value: bytes = wire(BLOB)
    proof: Any = wire(RAW)


@dataclass(frozen=True, slots=True)
class StateReply(Message):
    """GET_STATE and GET_MODEL: the head's signed header and each key's entry, from one snapshot."""

    TYPE = Msg.GET_STATE | REPLY
    height: int = wire(UINT)
    header: bytes = wire(BLOB)
    signature: bytes = wire(BLOB)
    entries: tuple[StateEntry, ...] = wire(inline=StateEntry)


@dataclass(frozen=True, slots=True)
class ModelReply(Message):
    """GET_MODEL: the task's and the model's entries (in that order), like ``StateReply``."""

    TYPE = Msg.GET_MODEL | REPLY
    height: int = wire(UINT)
    header: bytes = wire(BLOB)
    signature: bytes = wire(BLOB)
    entries: tuple[StateEntry, ...] = wire(inline=StateEntry)


@dataclass(frozen=True, slots=True)
class ReceiptReply(Message):
    """Where a tx stands; the receipt fields are filled when included, ``code``/``reason`` when dropped."""

    TYPE = Msg.GET_RECEIPT | REPLY
    state: TxState = wire(enum_of(TxState))
    height: int = wire(UINT, 0)
    index: int = wire(UINT, 0)
    receipt: bytes = wire(BLOB, b"")
    header: bytes = wire(BLOB, b"")
    signature: bytes = wire(BLOB, b"")
    path: tuple[bytes, ...] = wire(list_of(HASH), ())
    count: int = wire(UINT, 0)
    code: int = wire(UINT, 0)
    reason: str = wire(TEXT, "")


@dataclass(frozen=True, slots=True)
class HeightEvents(Record):
    height: int = wire(UINT)
    events: bytes = wire(BLOB)  # the block's encoded event list


@dataclass(frozen=True, slots=True)
class EventsReply(Message):
    TYPE = Msg.GET_EVENTS | REPLY
    blocks: tuple[HeightEvents, ...] = wire(list_of(record(HeightEvents)))


@dataclass(frozen=True, slots=True)
class GenesisReply(Message):
    TYPE = Msg.GET_GENESIS | REPLY
    genesis_json: bytes = wire(BLOB)  # utf-8 JSON, sorted keys


@dataclass(frozen=True, slots=True)
class NonceInfo(Message):
    TYPE = Msg.GET_NONCE | REPLY
    state_nonce: int = wire(UINT)  # the account's nonce at the head
    next_nonce: int = wire(UINT)  # the first nonce no pending tx holds
    pending: int = wire(UINT)


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TYPE = Msg.PING | REPLY


@dataclass(frozen=True, slots=True)
class HeaderReply(Message):
    TYPE = Msg.GET_HEADER | REPLY
    header: bytes = wire(BLOB)
    signature: bytes = wire(BLOB)  # empty at height 0


@dataclass(frozen=True, slots=True)
class ProofsReply(Message):
    TYPE = Msg.GET_PROOFS | REPLY
    height: int = wire(UINT)
    header: bytes = wire(BLOB)
    signature: bytes = wire(BLOB)
    proofs: tuple[Any, ...] = wire(list_of(RAW))  # smt.Proof objects, one per key


@dataclass(frozen=True, slots=True)
class WithdrawalReply(Message):
    """GET_WITHDRAWAL: the record (``settlement.WithdrawalRecord``'s fields), the block's signed
    header, the tree of the withdrawals recorded by then and the record's branch in it: what the
    portal's ``prove_withdrawal`` takes. L1 checks all of it against the posted output root."""

    TYPE = Msg.GET_WITHDRAWAL | REPLY
    height: int = wire(UINT)
    header: bytes = wire(BLOB)
    signature: bytes = wire(BLOB)
    sender: bytes = wire(HASH)
    l1_address: bytes = wire(HASH)
    amount: int = wire(UINT)
    recorded_at: int = wire(UINT)
    count: int = wire(UINT)  # withdrawals in the tree at ``height``
    withdrawals_root: bytes = wire(HASH)
    proof: tuple[bytes, ...] = wire(list_of(HASH))


@dataclass(frozen=True, slots=True)
class PendingTx(Record):
    tx_id: bytes = wire(HASH)
    nonce: int = wire(UINT)
    fee: int = wire(UINT)
    waiting: bool = wire(FLAG)  # behind a nonce gap: it waits until the missing nonces are used


@dataclass(frozen=True, slots=True)
class PendingReply(Message):
    TYPE = Msg.GET_PENDING | REPLY
    txs: tuple[PendingTx, ...] = wire(list_of(record(PendingTx)))


@dataclass(frozen=True, slots=True)
class Dropped(Message):
    TYPE = Msg.DROP_PENDING | REPLY


#: Request type -> its class, and request type -> the class of its reply.
REQUESTS: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        HelloRequest,
        SubmitTx,
        GetStatus,
        GetBlock,
        GetBlocks,
        Subscribe,
        Unsubscribe,
        GetState,
        GetReceipt,
        GetEvents,
        GetModel,
        GetGenesis,
        GetNonce,
        Ping,
        GetHeader,
        GetProofs,
        GetPending,
        DropPending,
        GetWithdrawal,
    )
}
REPLIES: dict[int, type[Message]] = {
    cls.TYPE & ~REPLY: cls
    for cls in (
        Hello,
        Submitted,
        Status,
        BlockReply,
        BlocksReply,
        Subscribed,
        Unsubscribed,
        StateReply,
        ReceiptReply,
        EventsReply,
        ModelReply,
        GenesisReply,
        NonceInfo,
        Pong,
        HeaderReply,
        ProofsReply,
        PendingReply,
        Dropped,
        WithdrawalReply,
    )
}
