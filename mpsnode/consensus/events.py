"""Domain events: every change the STF makes, as frozen values (the chain is event-sourced).

An event encodes as ``[kind, field...]`` in declaration order; tuples become arrays. Events are
part of receipts and so of the receipts root: their encoding is consensus.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from mpsnode.consensus.encoding import expect_list, expect_uint
from mpsnode.consensus.errors import DecodeError
from mpsnode.consensus.records import NamedCode


@dataclass(frozen=True, slots=True)
class Event:
    KIND: ClassVar[int] = 0

    def encode_obj(self) -> list[Any]:
        """The event as ``[KIND, field...]`` in declaration order (tuples as arrays)."""
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in fields(self))
        return [self.KIND, *[_to_obj(getattr(self, name)) for name in names]]

    @property
    def name(self) -> str:
        """The event's class name (``Staked``, ``RoundClosed``, ...)."""
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        """The event as JSON-able fields, with its name under ``event``."""
        return {"event": self.name, **{f.name: _to_json(getattr(self, f.name)) for f in fields(self)}}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # an event class's field names, in declaration order


def _to_obj(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_to_obj(x) for x in v]
    return v


def _from_obj(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_from_obj(x) for x in v)
    return v


def _to_json(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, tuple):
        return [_to_json(x) for x in v]
    return v


@dataclass(frozen=True, slots=True)
class Transferred(Event):
    KIND = 1
    sender: bytes
    to: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class Staked(Event):
    KIND = 2
    address: bytes
    amount: int
    bonded: int


@dataclass(frozen=True, slots=True)
class UnstakeStarted(Event):
    KIND = 3
    address: bytes
    amount: int
    release_height: int


@dataclass(frozen=True, slots=True)
class UnbondingReleased(Event):
    KIND = 4
    address: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class Unjailed(Event):
    KIND = 5
    address: bytes


@dataclass(frozen=True, slots=True)
class TaskCreated(Event):
    KIND = 6
    task_id: int
    creator: bytes
    escrow: int
    base_fee: int
    params: int  # parameter count of the model


@dataclass(frozen=True, slots=True)
class TaskJoined(Event):
    KIND = 7
    task_id: int
    address: bytes


@dataclass(frozen=True, slots=True)
class TaskStarted(Event):
    KIND = 8
    task_id: int
    participants: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RoundOpened(Event):
    KIND = 9
    task_id: int
    round: int
    deadline: int


@dataclass(frozen=True, slots=True)
class UpdateRevealed(Event):
    KIND = 10
    task_id: int
    round: int
    address: bytes
    delta_hash: bytes


@dataclass(frozen=True, slots=True)
class TaskExpired(Event):
    KIND = 11
    task_id: int
    reason: int  # see TaskExpired reasons in docs/PROTOCOL.md
    rounds: int


@dataclass(frozen=True, slots=True)
class Refunded(Event):
    KIND = 12
    task_id: int
    to: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class RoundClosed(Event):
    KIND = 13
    task_id: int
    round: int
    participants: tuple[bytes, ...]  # submitters, in the order scores are listed
    scores: tuple[int, ...]
    selected: tuple[bytes, ...]
    flagged: tuple[bytes, ...]
    accuracy_bps: int
    void: int  # 1 when fewer than 3 updates arrived
    tolerated_f: int  # the round's f (robust.tolerated_f); 0 in a void round
    excluded: tuple[bytes, ...]  # left out of the aggregate by direction, not slashed
    contributions: tuple[int, ...]  # reward units of each update, in ``participants`` order


@dataclass(frozen=True, slots=True)
class Slashed(Event):
    KIND = 14
    task_id: int
    address: bytes
    amount: int
    reason: int
    round: int


@dataclass(frozen=True, slots=True)
class Jailed(Event):
    KIND = 15
    address: bytes


@dataclass(frozen=True, slots=True)
class Rewarded(Event):
    KIND = 16
    task_id: int
    address: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class TaskCompleted(Event):
    KIND = 17
    task_id: int
    rounds: int
    accuracy_bps: int
    charged: int
    protocol_fee: int


@dataclass(frozen=True, slots=True)
class ParticipantRemoved(Event):
    KIND = 18
    task_id: int
    address: bytes
    reason: int


@dataclass(frozen=True, slots=True)
class UpdateCommitted(Event):
    KIND = 19
    task_id: int
    round: int
    address: bytes
    commitment: bytes


@dataclass(frozen=True, slots=True)
class RevealOpened(Event):
    KIND = 20
    task_id: int
    round: int
    deadline: int  # last height of the reveal phase
    committed: tuple[bytes, ...]  # the participants that committed, who may now reveal


@dataclass(frozen=True, slots=True)
class Deposited(Event):
    KIND = 21
    index: int  # the portal's deposit index
    recipient: bytes
    amount: int
    l1_block: int


@dataclass(frozen=True, slots=True)
class Withdrawn(Event):
    KIND = 22
    index: int  # the withdrawal's index in the withdrawal tree
    sender: bytes
    l1_address: bytes  # 20 bytes
    amount: int


EVENT_TYPES: dict[int, type[Event]] = {
    cls.KIND: cls
    for cls in (
        Transferred,
        Staked,
        UnstakeStarted,
        UnbondingReleased,
        Unjailed,
        TaskCreated,
        TaskJoined,
        TaskStarted,
        RoundOpened,
        UpdateRevealed,
        TaskExpired,
        Refunded,
        RoundClosed,
        Slashed,
        Jailed,
        Rewarded,
        TaskCompleted,
        ParticipantRemoved,
        UpdateCommitted,
        RevealOpened,
        Deposited,
        Withdrawn,
    )
}


def decode_event(obj: Any) -> Event:
    """The event encoded as ``obj``; ``DecodeError`` for an unknown kind or a malformed field."""
    items = expect_list(obj, None, "event")
    if not items:
        raise DecodeError("event: empty")
    cls = EVENT_TYPES.get(expect_uint(items[0], "event kind"))
    if cls is None:
        raise DecodeError(f"unknown event kind {items[0]}")
    n = len(fields(cls))
    if len(items) != n + 1:
        raise DecodeError(f"{cls.__name__}: expected {n} fields, got {len(items) - 1}")
    return cls(*(_from_obj(v) for v in items[1:]))


class RemovalReason(NamedCode):
    """``ParticipantRemoved.reason`` (and ``Slashed.reason`` for the first two): why a participant left."""

    KRUM_SCORE = 1  # slashed: Krum score above the ratio threshold of the median score
    DIRECTION = 2  # slashed: coherent round, its median cosine with the others below -slash_direction_bps
    SILENT = 3  # removed without a slash: missed max_missed_rounds rounds in a row
