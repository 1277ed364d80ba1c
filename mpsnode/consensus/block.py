"""Blocks: header, body of signed txs, sequencer signature; canonical encoding and decoding.

``Header = [version, chain_id, height, parent_hash, timestamp_ms, tx_root, receipts_root,
state_root]``, followed on a chain that settles on L1 by ``l1_origin`` (the L1 block the sequencer
had seen when it built the block; docs/SETTLEMENT.md) and absent otherwise.
``Block = [Header, [SignedTx...], sequencer_signature]``. The block hash is
``H(mps-header, encode(Header))``; the sequencer signs the block hash.
``decode_block`` raises ``InvalidBlock`` with a reason for any bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from mpsnode.consensus import crypto
from mpsnode.consensus.encoding import (
    array_header,
    decode,
    encode,
    expect_bytes,
    expect_list,
    expect_str,
    expect_uint,
)
from mpsnode.consensus.errors import BlockDecodeError, InvalidBlock, MpsError
from mpsnode.consensus.hashing import HEADER, H
from mpsnode.consensus.merkle import list_root
from mpsnode.consensus.tx import SignedTx

BLOCK_VERSION = 1
MAX_BLOCK_BYTES_HARD = 1 << 30
MAX_TXS_PER_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Header:
    chain_id: str
    height: int
    parent_hash: bytes
    timestamp_ms: int
    tx_root: bytes
    receipts_root: bytes
    state_root: bytes
    version: int = BLOCK_VERSION
    l1_origin: int | None = None  # settlement mode only

    def encode_obj(self) -> list[Any]:
        """The header as its canonical array ``[version, chain_id, height, ...]`` (and ``l1_origin``
        last on a chain that settles on L1)."""
        tail = [] if self.l1_origin is None else [self.l1_origin]
        return [
            self.version,
            self.chain_id,
            self.height,
            self.parent_hash,
            self.timestamp_ms,
            self.tx_root,
            self.receipts_root,
            self.state_root,
            *tail,
        ]

    def encode(self) -> bytes:
        """The header's canonical bytes (what the block hash is taken over)."""
        return encode(self.encode_obj())

    def hash(self) -> bytes:
        """The block hash: ``H(mps-header, encode(header))``."""
        return H(HEADER, self.encode())

    @classmethod
    def decode_obj(cls, obj: Any) -> Header:
        """A header from its decoded array; ``BlockDecodeError`` for a malformed field or an unknown version."""
        items = expect_list(obj, None, "header")
        if len(items) not in (8, 9):
            raise BlockDecodeError(f"header: expected 8 or 9 fields, got {len(items)}")
        version, chain_id, height, parent, ts, tx_root, receipts_root, state_root = items[:8]
        if expect_uint(version, "header version") != BLOCK_VERSION:
            raise BlockDecodeError(f"unknown block version {version}")
        return cls(
            expect_str(chain_id, "chain_id"),
            expect_uint(height, "height"),
            expect_bytes(parent, "parent_hash", 32),
            expect_uint(ts, "timestamp_ms"),
            expect_bytes(tx_root, "tx_root", 32),
            expect_bytes(receipts_root, "receipts_root", 32),
            expect_bytes(state_root, "state_root", 32),
            version,
            expect_uint(items[8], "l1_origin") if len(items) == 9 else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The header as JSON-able fields (bytes as hex)."""
        return {
            "version": self.version,
            "chain_id": self.chain_id,
            "height": self.height,
            "hash": self.hash().hex(),
            "parent_hash": self.parent_hash.hex(),
            "timestamp_ms": self.timestamp_ms,
            "tx_root": self.tx_root.hex(),
            "receipts_root": self.receipts_root.hex(),
            "state_root": self.state_root.hex(),
            **({} if self.l1_origin is None else {"l1_origin": self.l1_origin}),
        }


def decode_header(data: bytes) -> Header:
    """A header from canonical bytes; raises only ``BlockDecodeError``."""
    try:
        return Header.decode_obj(decode(data, max_bytes=1024))
    except InvalidBlock:
        raise
    except MpsError as exc:
        raise BlockDecodeError(f"malformed header: {exc.reason}") from None


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    txs: tuple[SignedTx, ...]
    signature: bytes

    @property
    def height(self) -> int:
        """The block's height (its header's)."""
        return self.header.height

    def hash(self) -> bytes:
        """The block hash (its header's)."""
        return self.header.hash()

    def encode_obj(self) -> list[Any]:
        """The block as ``[header, [signed tx...], signature]``."""
        return [self.header.encode_obj(), [t.encode_obj() for t in self.txs], self.signature]

    def encode(self) -> bytes:
        """The block's canonical bytes (the txs' own bytes spliced in where they have them)."""
        head, txs, tail = self.encode_parts()
        return b"".join([head, *txs, tail])

    def encode_parts(self) -> tuple[bytes, list[bytes], bytes]:
        """The block's canonical bytes in three parts: those before its txs, each tx's, those after."""
        head = array_header(3) + encode(self.header.encode_obj()) + array_header(len(self.txs))
        return head, [t.encode() for t in self.txs], encode(self.signature)

    def verify_signature(self, sequencer: bytes) -> bool:
        """Whether ``signature`` is ``sequencer``'s signature of the block hash."""
        return crypto.verify(sequencer, self.hash(), self.signature)


def compute_tx_root(txs: tuple[SignedTx, ...] | list[SignedTx]) -> bytes:
    """The list root of ``H(mps-tx-leaf, tx_id || signature)`` over ``txs`` in order."""
    return list_root([t.leaf() for t in txs])


def sign_header(header: Header, key: crypto.Keypair, txs: tuple[SignedTx, ...]) -> Block:
    """The block of ``header`` and ``txs``, signed by ``key`` (the sequencer)."""
    return Block(header, tuple(txs), key.sign(header.hash()))


def _tx_spans(data: bytes, n: int) -> list[tuple[int, int]]:
    """Where each of the ``n`` txs of a canonical block (already decoded) lies in ``data``: so that
    each tx keeps its own bytes and its id hashes them, instead of being encoded again."""
    walker = msgpack.Unpacker(max_buffer_size=len(data))
    walker.feed(data)
    walker.read_array_header()
    walker.skip()  # the header
    if walker.read_array_header() != n:  # cannot happen: the same bytes were just decoded
        raise BlockDecodeError("malformed block: its txs moved")
    spans = []
    for _ in range(n):
        start = walker.tell()
        walker.skip()
        spans.append((start, walker.tell()))
    return spans


def decode_block(data: bytes, max_bytes: int = MAX_BLOCK_BYTES_HARD) -> Block:
    """Decode a canonical block; ``InvalidBlock`` with a reason for any bad input."""
    try:
        obj = decode(data, max_bytes=max_bytes, max_array_len=MAX_TXS_PER_BLOCK)
        header_obj, txs_obj, signature = expect_list(obj, 3, "block")
        header = Header.decode_obj(header_obj)
        tx_objs = expect_list(txs_obj, None, "block txs")
        raw = bytes(data)
        spans = _tx_spans(raw, len(tx_objs))
        txs = tuple(SignedTx.from_obj(t, e - s, raw[s:e]) for t, (s, e) in zip(tx_objs, spans, strict=True))
        return Block(header, txs, expect_bytes(signature, "sequencer signature", crypto.SIGNATURE_LEN))
    except InvalidBlock:
        raise
    except MpsError as exc:
        raise BlockDecodeError(f"malformed block: {exc.reason}") from None
    except Exception as exc:  # noqa: BLE001 - the contract is: never another exception type
        raise BlockDecodeError(f"malformed block: {type(exc).__name__}: {exc}") from None
