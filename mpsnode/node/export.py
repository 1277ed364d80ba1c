"""Chain export files: the genesis and every canonical block, as one stream (``mpsnode export``).

Layout: the 8 bytes ``MPSCHAIN``, then records, each a tag byte, a 4-byte big-endian length and
the payload:

====  =========================================================================================
tag   payload
====  =========================================================================================
G     canonical msgpack ``[1, genesis_json, head_height, head_hash]`` (first record; the genesis
      as UTF-8 JSON with sorted keys, the head the export ends at)
B     one canonical block (heights 1, 2, ... in order)
R     the receipts the node stored for the block just before (canonical msgpack list); these
      are the node's claim, checked only through the header's receipts root
E     canonical msgpack ``[blocks]``: the export is complete (last record)
====  =========================================================================================

A reader refuses anything else with ``ExportError``: another magic, a record out of order, a
length past the end of the file, or a missing ``E`` (a truncated export).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mpsnode.consensus.encoding import decode, encode, expect_bytes, expect_list, expect_uint
from mpsnode.consensus.errors import DecodeError, GenesisError
from mpsnode.consensus.genesis import Genesis
from mpsnode.node.chain import GENESIS_HASH_META
from mpsnode.node.errors import ExportError
from mpsnode.node.store import Store

MAGIC = b"MPSCHAIN"
VERSION = 1
LENGTH = struct.Struct(">I")
MAX_RECORD = 1 << 31  # a block is at most max_block_bytes (<= 1 GiB hard limit)
GENESIS, BLOCK, RECEIPTS, END = b"G", b"B", b"R", b"E"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: Path
    blocks: int
    head_height: int
    head_hash: bytes
    bytes: int


def _record(tag: bytes, payload: bytes) -> bytes:
    return tag + LENGTH.pack(len(payload)) + payload


def export_store(store: Store, genesis: Genesis, out: str | Path) -> ExportSummary:
    """Write every block of ``store`` (this genesis' chain) up to its head into ``out``, from one snapshot.

    Written to ``out.tmp`` and renamed, so ``out`` is either absent or a complete export.
    """

    view = store.snapshot()
    try:
        head = view.head()
        if head is None:
            raise ExportError("the store is empty: nothing to export")
        stored = view.get_meta(GENESIS_HASH_META)
        if stored != genesis.hash():
            held = stored.hex() if stored else "?"
            raise ExportError(f"the store holds genesis {held}, not {genesis.hash().hex()}")
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        genesis_json = json.dumps(genesis.to_json(), sort_keys=True).encode()
        with open(tmp, "wb") as fh:
            fh.write(MAGIC)
            fh.write(_record(GENESIS, encode([VERSION, genesis_json, head.height, head.block_hash])))
            for height in range(1, head.height + 1):
                block = view.get_block(height)
                if not block:
                    raise ExportError(f"the store has no block at height {height}")
                fh.write(_record(BLOCK, block))
                fh.write(_record(RECEIPTS, view.get_receipts(height) or encode([])))
            fh.write(_record(END, encode([head.height])))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        return ExportSummary(out, head.height, head.height, head.block_hash, out.stat().st_size)
    finally:
        view.close()


class ExportReader:
    """Reads an export file: ``genesis`` and ``head_height`` up front, then ``blocks()`` in order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._size = os.fstat(self._fh.fileno()).st_size
            if self._fh.read(len(MAGIC)) != MAGIC:
                raise ExportError(f"{self.path} is not an mpsnode chain export (no {MAGIC!r} magic)")
            tag, payload = self._read()
            if tag != GENESIS:
                raise ExportError(f"{self.path}: the first record must be the genesis, found {tag!r}")
            try:
                version, genesis_json, head, head_hash = expect_list(
                    decode(payload, max_bytes=len(payload), max_bin_len=len(payload)), 4, "export header"
                )
                if expect_uint(version, "version") != VERSION:
                    raise ExportError(f"{self.path}: export version {version}, this build reads {VERSION}")
                self.genesis = Genesis.from_json(json.loads(expect_bytes(genesis_json, "genesis")))
                self.head_height = expect_uint(head, "head height")
                self.head_hash = expect_bytes(head_hash, "head hash", 32)
            except (DecodeError, GenesisError, ValueError) as exc:
                raise ExportError(f"{self.path}: unreadable export header: {exc}") from None
        except BaseException:
            self._fh.close()
            raise

    def _read(self) -> tuple[bytes, bytes]:
        head = self._fh.read(5)
        if len(head) < 5:
            raise ExportError(f"{self.path} is truncated at byte {self._fh.tell()} (no end record)")
        tag, (n,) = head[:1], LENGTH.unpack(head[1:])
        if n > MAX_RECORD or self._fh.tell() + n > self._size:
            at = self._fh.tell() - 5
            raise ExportError(f"{self.path}: a {n}-byte record at byte {at} runs past the end")
        return tag, self._fh.read(n)

    def blocks(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """``(height, block bytes, claimed receipts)`` for heights 1..head, then checks the end record."""
        height = 0
        pending: bytes | None = None
        while True:
            tag, payload = self._read()
            if tag == RECEIPTS and pending is not None:
                yield height, pending, payload
                pending = None
                continue
            if pending is not None:
                yield height, pending, None
                pending = None
            if tag == BLOCK:
                height += 1
                if height > self.head_height:
                    raise ExportError(f"{self.path}: more blocks than the {self.head_height} announced")
                pending = payload
            elif tag == END:
                try:
                    (count,) = expect_list(decode(payload, max_bytes=64), 1, "end record")
                except DecodeError as exc:
                    raise ExportError(f"{self.path}: bad end record: {exc.reason}") from None
                if count != height or height != self.head_height:
                    raise ExportError(
                        f"{self.path}: {height} blocks, the end record says {count} and the "
                        f"header {self.head_height}"
                    )
                return
            else:
                raise ExportError(f"{self.path}: unexpected record {tag!r} after block {height}")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ExportReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_export(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC
