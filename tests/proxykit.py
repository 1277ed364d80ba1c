"""An altering proxy for divergence tests: between a real sequencer and a real verifier.

It speaks the wire protocol to both sides: requests from the verifier pass through untouched;
replies and pushed blocks from the sequencer are decoded, and the first block that an
``Alteration`` applies to is replaced, on every path the verifier can see it (GET_BLOCKS,
GET_BLOCK, subscription pushes, and the header in GET_HEADER / GET_STATE / GET_PROOFS replies),
by the same altered bytes every time. Where the alteration keeps the header valid on purpose, the
proxy re-signs it with the devnet sequencer key (public by design, so a test holds it); where a
tx must be re-signed, with the devnet key of its sender.

Run as a process, one listener per alteration::

    python tests/proxykit.py --upstream 127.0.0.1:PORT --targets DIR --alter wrong_state_root ...

It prints ``{"ready": true, "ports": {name: port}}`` and writes ``DIR/<name>.json`` =
``{"height": H, "tx_index": I}`` when it picks its target block. ``none`` passes everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

import genesis as genesis_tool
from mpsnode.consensus import crypto
from mpsnode.consensus.block import Block, Header, compute_tx_root, decode_block, decode_header, sign_header
from mpsnode.consensus.hashing import H
from mpsnode.consensus.params import Params
from mpsnode.consensus.tx import Kind, RevealUpdate, SignedTx
from mpsnode.node.messages import BLOCK_PUSH, REPLY, Msg
from mpsnode.node.wire import FrameReader, decode_message, encode_frame, max_reply_frame
from verifier import checks

OTHER_CHAIN = "mps-othernet"


@dataclass(frozen=True)
class Keys:
    sequencer: crypto.Keypair
    by_address: dict[bytes, crypto.Keypair]

    @classmethod
    def devnet(cls, clients: int) -> Keys:
        names = genesis_tool.key_names(clients)
        keys = {genesis_tool.devnet_key(n).address: genesis_tool.devnet_key(n) for n in names}
        return cls(genesis_tool.devnet_key("sequencer"), keys)


def _resign(header: Header, txs: tuple[SignedTx, ...], keys: Keys) -> Block:
    return sign_header(header, keys.sequencer, txs)


def _with_txs(block: Block, txs: list[SignedTx], keys: Keys) -> Block:
    """The block with ``txs``, its tx_root recomputed and the header re-signed (a well-formed lie)."""
    return _resign(replace(block.header, tx_root=compute_tx_root(txs)), tuple(txs), keys)


def _flip(data: bytes, at: int = -1) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def _unique_senders(block: Block) -> list[int]:
    senders = [t.tx.sender for t in block.txs]
    return [i for i, s in enumerate(senders) if senders.count(s) == 1]


# Each alteration: (applies to this block?, alter it -> (new bytes, tx index or None), expected check)
Applies = Callable[[Block, "Header | None"], bool]
Alter = Callable[[Block, "Header | None", bytes, Keys], "tuple[bytes, int | None]"]


def _header_change(**kw: Callable[[Header], Any]) -> Alter:
    def alter(block: Block, parent: Header | None, data: bytes, keys: Keys) -> tuple[bytes, int | None]:
        header = replace(block.header, **{k: f(block.header) for k, f in kw.items()})
        return _resign(header, block.txs, keys).encode(), None

    return alter


def _reorder(block: Block, parent: Header | None, data: bytes, keys: Keys) -> tuple[bytes, int | None]:
    txs = list(block.txs)
    txs[0], txs[1] = txs[1], txs[0]
    return Block(block.header, tuple(txs), block.signature).encode(), 0  # header and signature untouched


def _reorder_resigned(
    block: Block, parent: Header | None, data: bytes, keys: Keys
) -> tuple[bytes, int | None]:
    i, j = _unique_senders(block)[:2]
    txs = list(block.txs)
    txs[i], txs[j] = txs[j], txs[i]
    return _with_txs(block, txs, keys).encode(), i


def _bad_tx_signature(
    block: Block, parent: Header | None, data: bytes, keys: Keys
) -> tuple[bytes, int | None]:
    stx = block.txs[0]
    bad = SignedTx(stx.tx, _flip(stx.signature), stx.tx_id, stx.size)
    return _with_txs(block, [bad, *block.txs[1:]], keys).encode(), 0


def _other_chain(block: Block, parent: Header | None, data: bytes, keys: Keys) -> tuple[bytes, int | None]:
    stx = block.txs[0]
    moved = replace(stx.tx, chain_id=OTHER_CHAIN).sign(keys.by_address[stx.tx.sender])
    return _with_txs(block, [moved, *block.txs[1:]], keys).encode(), 0


def _update_index(block: Block) -> int | None:
    return next((i for i, t in enumerate(block.txs) if t.tx.kind == Kind.REVEAL_UPDATE), None)


def _altered_update(block: Block, parent: Header | None, data: bytes, keys: Keys) -> tuple[bytes, int | None]:
    i = _update_index(block)
    assert i is not None
    stx = block.txs[i]
    body = stx.tx.body
    assert isinstance(body, RevealUpdate)
    tx = replace(stx.tx, body=RevealUpdate(body.task_id, body.round, _flip(body.delta, 0), body.salt))
    altered = SignedTx(tx, stx.signature, tx.signing_hash(), stx.size)  # the client's signature, other bytes
    return _with_txs(block, [*block.txs[:i], altered, *block.txs[i + 1 :]], keys).encode(), i


def _bad_signature(block: Block, parent: Header | None, data: bytes, keys: Keys) -> tuple[bytes, int | None]:
    return Block(block.header, block.txs, _flip(block.signature)).encode(), None


def _non_canonical(block: Block, parent: Header | None, data: bytes, keys: Keys) -> tuple[bytes, int | None]:
    # [header, txs, signature] -> header [version=1, ...]: the version as uint8 (0xcc 0x01) is not minimal
    assert data[:3] == b"\x93\x98\x01"
    return data[:2] + b"\xcc\x01" + data[3:], None


def _same_timestamp(block: Block, parent: Header | None, data: bytes, keys: Keys) -> tuple[bytes, int | None]:
    assert parent is not None
    return _resign(replace(block.header, timestamp_ms=parent.timestamp_ms), block.txs, keys).encode(), None


def _salt(name: str) -> Callable[[Header], bytes]:
    return lambda h: H(b"mps-test-salt", name.encode() + h.encode())


ALTERATIONS: dict[str, tuple[Applies, Alter, str | None]] = {
    "none": (lambda b, p: False, _bad_signature, None),
    "wrong_state_root": (
        lambda b, p: len(b.txs) >= 1,
        _header_change(state_root=_salt("state")),
        checks.STATE_ROOT,
    ),
    "wrong_receipts_root": (
        lambda b, p: len(b.txs) >= 1,
        _header_change(receipts_root=_salt("receipts")),
        checks.RECEIPTS_ROOT,
    ),
    "wrong_tx_root": (lambda b, p: len(b.txs) >= 1, _header_change(tx_root=_salt("tx")), checks.TX_ROOT),
    "reordered_txs": (lambda b, p: len(b.txs) >= 2, _reorder, checks.TX_ROOT),
    "reordered_txs_resigned": (
        lambda b, p: len(_unique_senders(b)) >= 2,
        _reorder_resigned,
        checks.RECEIPTS_ROOT,
    ),
    "bad_tx_signature": (lambda b, p: len(b.txs) >= 1, _bad_tx_signature, checks.TX_SIGNATURE),
    "tx_for_other_chain": (lambda b, p: len(b.txs) >= 1, _other_chain, checks.TX_CHAIN_ID),
    "altered_update_bytes": (lambda b, p: _update_index(b) is not None, _altered_update, checks.TX_SIGNATURE),
    "wrong_parent_hash": (lambda b, p: True, _header_change(parent_hash=_salt("parent")), checks.PARENT_HASH),
    "non_increasing_timestamp": (
        lambda b, p: p is not None and len(b.txs) >= 1,
        _same_timestamp,
        checks.TIMESTAMP,
    ),
    "bad_sequencer_signature": (lambda b, p: len(b.txs) >= 1, _bad_signature, checks.SEQUENCER_SIGNATURE),
    "non_canonical_encoding": (lambda b, p: len(b.txs) >= 1, _non_canonical, checks.CANONICAL_ENCODING),
}


class Alterer:
    """One alteration's state, shared by every connection through its listener."""

    def __init__(self, name: str, keys: Keys, targets: Path) -> None:
        self.name = name
        self.applies, self.alter, self.expect = ALTERATIONS[name]
        self.keys = keys
        self.targets = targets
        self.headers: dict[int, Header] = {}  # original headers seen
        self.target: int | None = None
        self.altered: bytes | None = None

    def block(self, height: int, data: bytes) -> bytes:
        """The bytes the verifier gets for block ``height``."""
        if self.target is not None:
            return self.altered if height == self.target else data  # type: ignore[return-value]
        try:
            block = decode_block(data)
        except Exception:  # noqa: BLE001 - not ours to judge
            return data
        self.headers[height] = block.header
        parent = self.headers.get(height - 1)
        if height < 2 or not self.applies(block, parent):
            return data
        self.altered, tx_index = self.alter(block, parent, data, self.keys)
        self.target = height
        (self.targets / f"{self.name}.json").write_text(
            json.dumps({"height": height, "tx_index": tx_index, "expect": self.expect})
        )
        return self.altered

    def header(self, header_bytes: bytes, signature: bytes) -> tuple[bytes, bytes]:
        """Header and signature as the verifier should see them in a header-carrying reply."""
        try:
            header = decode_header(header_bytes)
        except Exception:  # noqa: BLE001 - a non-canonical alteration: keep the original header
            return header_bytes, signature
        if header.height != self.target or self.altered is None:
            return header_bytes, signature
        try:
            altered = decode_block(self.altered)
        except Exception:  # noqa: BLE001 - a non-canonical alteration: keep the original header
            return header_bytes, signature
        return altered.header.encode(), altered.signature

    def rewrite(self, msg: list[Any]) -> list[Any]:
        kind = msg[0]
        if kind == BLOCK_PUSH and len(msg) == 5:
            msg[3] = self.block(msg[2], msg[3])
        elif kind == Msg.GET_BLOCKS | REPLY and len(msg) == 3:
            msg[2] = [[h, self.block(h, b)] for h, b in msg[2]]
        elif kind == Msg.GET_BLOCK | REPLY and len(msg) == 6 and msg[4]:
            msg[4] = self.block(msg[2], msg[4])
            with contextlib.suppress(Exception):
                msg[3] = decode_block(msg[4]).header.encode()
        elif kind == Msg.GET_HEADER | REPLY and len(msg) == 4:
            msg[2], msg[3] = self.header(msg[2], msg[3])
        elif kind in (Msg.GET_PROOFS | REPLY, Msg.GET_STATE | REPLY, Msg.GET_MODEL | REPLY) and len(msg) >= 5:
            msg[3], msg[4] = self.header(msg[3], msg[4])
        return msg


async def relay(downstream: trio.SocketStream, upstream_addr: tuple[str, int], alterer: Alterer) -> None:
    try:
        upstream = await trio.open_tcp_stream(*upstream_addr)
    except OSError:
        await downstream.aclose()
        return
    max_frame = max_reply_frame(Params())

    async def up() -> None:
        while True:
            data = await downstream.receive_some(1 << 16)
            if not data:
                return
            await upstream.send_all(data)

    async def down() -> None:
        reader = FrameReader(upstream, max_frame, frame_timeout=120.0)
        while True:
            body = await reader.read_frame()
            if body is None:
                return
            msg = alterer.rewrite(decode_message(body, max_frame))
            await downstream.send_all(encode_frame(msg))

    try:
        async with trio.open_nursery() as nursery:

            async def run(fn: Callable[[], Any]) -> None:
                try:
                    await fn()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                except Exception as exc:  # noqa: BLE001 - a proxy bug must show in its log
                    print(f"proxy {alterer.name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run, up)
            nursery.start_soon(run, down)
    finally:
        await trio.aclose_forcefully(upstream)
        await trio.aclose_forcefully(downstream)


async def main(upstream: tuple[str, int], names: list[str], targets: Path, clients: int) -> None:
    keys = Keys.devnet(clients)
    ports: dict[str, int] = {}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for name in names:
                alterer = Alterer(name, keys, targets)
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                ports[name] = listeners[0].socket.getsockname()[1]

                async def handler(stream: trio.SocketStream, alterer: Alterer = alterer) -> None:
                    await relay(stream, upstream, alterer)

                nursery.start_soon(trio.serve_listeners, handler, listeners)
            print(json.dumps({"ready": True, "ports": ports}), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--targets", required=True, help="directory for <alteration>.json target records")
    ap.add_argument("--alter", action="append", required=True, choices=sorted(ALTERATIONS))
    ap.add_argument("--clients", type=int, default=10, help="devnet clients whose keys may re-sign txs")
    a = ap.parse_args()
    host, _, port = a.upstream.rpartition(":")
    trio.run(main, (host, int(port)), a.alter, Path(a.targets), a.clients)
