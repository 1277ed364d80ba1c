"""Typed wire messages: every request and reply round-trips, keeps the documented layout, and a
malformed field is the peer's ProtocolViolation (never an IndexError or TypeError)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from mpsnode.consensus.records import BLOB, FLAG, HASH, NAME, RAW, TEXT, UINT, Record
from mpsnode.node.errors import ProtocolViolation
from mpsnode.node.messages import (
    REPLIES,
    REQUESTS,
    Message,
    Msg,
    ReceiptReply,
    StateEntry,
    StateReply,
    Status,
    TxState,
    VerifierStatus,
)
from mpsnode.node.wire import decode_message, encode_frame

SAMPLES: dict[int, Any] = {
    id(UINT): 7,
    id(FLAG): True,
    id(BLOB): b"\x01\x02",
    id(HASH): b"\x05" * 32,
    id(TEXT): "a reason",
    id(NAME): "mps-devnet",
    id(RAW): [1, b"x"],
}


def sample(cls: type[Record]) -> Record:
    """An instance of ``cls`` with a sample value of each field's kind."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        kind, inline = f.metadata["wire"], f.metadata["inline"]
        if inline is not None:
            values[f.name] = (sample(inline), sample(inline))
        elif f.name == "state":  # ReceiptReply's TxState
            values[f.name] = TxState.INCLUDED
        elif id(kind) in SAMPLES:
            values[f.name] = SAMPLES[id(kind)]
        elif f.name == "verifier":
            values[f.name] = sample(VerifierStatus)
        else:  # a list of a kind or of records: one element from the round trip of an empty list
            values[f.name] = ()
    return cls(**values)


ALL = sorted({*REQUESTS.values(), *REPLIES.values()}, key=lambda c: (c.TYPE, c.__name__))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_message_round_trips_through_a_frame(cls: type[Message]) -> None:
    msg = sample(cls)
    frame = encode_frame(msg.to_wire(42))
    decoded = decode_message(frame[4:], 1 << 20)
    assert decoded[:2] == [cls.TYPE, 42]
    assert cls.from_wire(decoded) == msg


@pytest.mark.parametrize("cls", [c for c in ALL if fields(c)], ids=lambda c: c.__name__)
def test_a_missing_extra_or_mistyped_field_is_a_protocol_violation(cls: type[Message]) -> None:
    wire = sample(cls).to_wire(1)
    with pytest.raises(ProtocolViolation):
        cls.from_wire(wire + [b"extra", 9])
    if not any(f.metadata["optional"] or f.metadata["inline"] for f in fields(cls)):
        with pytest.raises(ProtocolViolation):
            cls.from_wire(wire[:-1])
    with pytest.raises(ProtocolViolation):
        cls.from_wire([wire[0], 1, *([{"a map": 1}] * (len(wire) - 2))])


def test_layouts_are_the_documented_ones() -> None:
    """docs/WIRE.md: positional fields, a pending receipt padded with empty values, a verifier's
    STATUS one array longer, state entries inline after the header."""
    assert ReceiptReply(TxState.PENDING).to_wire(3) == [
        Msg.GET_RECEIPT | 0x80,
        3,
        1,
        0,
        0,
        b"",
        b"",
        b"",
        [],
        0,
        0,
        "",
    ]
    plain = Status("c", b"g" * 32, 5, b"h" * 32, b"s" * 32, 99, 1, 2, "sequencer")
    assert plain.to_wire(1)[2:] == ["c", b"g" * 32, 5, b"h" * 32, b"s" * 32, 99, 1, 2, "sequencer"]
    v = VerifierStatus("127.0.0.1:1", 9, 1, 8, True, False, 0, "", "")
    from_verifier = replace(plain, kind="verifier", verifier=v).to_wire(1)
    assert len(from_verifier) == len(plain.to_wire(1)) + 1
    assert from_verifier[-1] == ["127.0.0.1:1", 9, 1, 8, 1, 0, 0, "", ""]
    reply = StateReply(4, b"H", b"S", (StateEntry(True, b"v", [1]), StateEntry(False, b"", [])))
    assert reply.to_wire(2)[2:] == [4, b"H", b"S", 1, b"v", [1], 0, b"", []]
    with pytest.raises(ProtocolViolation):  # not a whole number of entries
        StateReply.from_wire(reply.to_wire(2)[:-1])


def test_a_reply_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ProtocolViolation):
        Status.from_wire(ReceiptReply(TxState.PENDING).to_wire(1))
