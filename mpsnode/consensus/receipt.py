"""Receipts: the outcome of each tx (and of the end-of-block step), committed in receipts_root.

``Receipt = [tx_id, status, fee_paid, [event...]]``; ``status`` is 0 for success or the stable
code of the ``TxFailure`` leaf (mpsnode.errors). The end-of-block receipt has tx_id = 32 zero bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpsnode.consensus.encoding import decode, encode, encode_array, expect_bytes, expect_list, expect_uint
from mpsnode.consensus.errors import describe_code
from mpsnode.consensus.events import Event, decode_event
from mpsnode.consensus.hashing import RECEIPT, ZERO32, H
from mpsnode.consensus.merkle import list_root

END_OF_BLOCK_ID = ZERO32


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_id: bytes
    status: int
    fee_paid: int
    events: tuple[Event, ...]

    @property
    def ok(self) -> bool:
        """Whether the tx's effect succeeded (status 0)."""
        return self.status == 0

    @property
    def status_name(self) -> str:
        """The status's name (``ok`` or the failure's class name)."""
        return describe_code(self.status)

    def encode_obj(self) -> list[Any]:
        """The receipt as ``[tx_id, status, fee_paid, [event...]]``."""
        return [self.tx_id, self.status, self.fee_paid, [e.encode_obj() for e in self.events]]

    def hash(self) -> bytes:
        """``H(mps-receipt, encode(receipt))``: the receipts root's leaf."""
        return H(RECEIPT, encode(self.encode_obj()))

    @classmethod
    def decode_obj(cls, obj: Any) -> Receipt:
        """A receipt from its decoded array; ``DecodeError`` for a malformed field."""
        tx_id, status, fee, events = expect_list(obj, 4, "receipt")
        return cls(
            expect_bytes(tx_id, "tx_id", 32),
            expect_uint(status, "status"),
            expect_uint(fee, "fee_paid"),
            tuple(decode_event(e) for e in expect_list(events, None, "events")),
        )

    def to_json(self) -> dict[str, Any]:
        """The receipt as JSON-able fields, with the status's name."""
        return {
            "tx_id": self.tx_id.hex(),
            "status": self.status,
            "status_name": self.status_name,
            "fee_paid": self.fee_paid,
            "events": [e.to_json() for e in self.events],
        }


def receipts_root(receipts: list[Receipt]) -> bytes:
    """The list root of the receipts' hashes, in order."""
    return list_root([r.hash() for r in receipts])


def encode_receipts(receipts: list[Receipt]) -> bytes:
    """A block's receipts as one canonical list (how the store keeps them)."""
    return encode([r.encode_obj() for r in receipts])


def root_and_encoding(receipts: list[Receipt]) -> tuple[bytes, bytes]:
    """``(receipts_root(receipts), encode_receipts(receipts))``, each receipt encoded once."""
    each = [encode(r.encode_obj()) for r in receipts]
    return list_root([H(RECEIPT, e) for e in each]), encode_array(each)


def decode_receipts(data: bytes) -> list[Receipt]:
    """The receipts of ``encode_receipts``; ``DecodeError`` for anything else."""
    obj = decode(data, max_bytes=len(data) + 1, max_array_len=1 << 24)
    return [Receipt.decode_obj(r) for r in expect_list(obj, None, "receipts")]
