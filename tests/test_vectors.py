"""Golden vectors: one runner, two paths. The verifier path decodes and applies every block; the
sequencer path rebuilds every valid block from its txs and must produce the same bytes. A case
ending in a bad block must raise exactly the recorded error and leave the head unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import genesis as genesis_tool
from mpsnode import errors
from mpsnode.block import decode_block
from mpsnode.chain import Chain
from mpsnode.genesis import Genesis
from mpsnode.store import MemoryStore

VECTORS = Path(__file__).parent / "vectors"
CASES = sorted(p.name for p in VECTORS.iterdir() if (p / "expected.json").exists())


def load(case: str) -> tuple[Genesis, list[bytes], dict]:
    folder = VECTORS / case
    blocks = [bytes.fromhex(line) for line in (folder / "blocks.hex").read_text().split()]
    return Genesis.load(folder / "genesis.json"), blocks, json.loads((folder / "expected.json").read_text())


def test_there_are_vectors() -> None:
    assert len(CASES) >= 8
    assert any(json.loads((VECTORS / c / "expected.json").read_text())["error"] for c in CASES)


@pytest.mark.parametrize("case", CASES)
def test_verifier_path(case: str) -> None:
    genesis, blocks, expected = load(case)
    chain = Chain(MemoryStore(), genesis)
    valid = expected["blocks"]
    for data, exp in zip(blocks, valid):
        result = chain.apply(decode_block(data))
        assert chain.head.block_hash.hex() == exp["hash"]
        assert chain.head.state_root.hex() == exp["state_root"]
        assert [r.status for r in result.receipts] == exp["statuses"]
    err = expected["error"]
    assert len(blocks) == len(valid) + (1 if err else 0)
    if err:
        head = chain.head
        with pytest.raises(getattr(errors, err["type"]), match=err["match"]):
            chain.apply(decode_block(blocks[-1]))
        assert chain.head == head


@pytest.mark.parametrize("case", CASES)
def test_sequencer_path(case: str) -> None:
    genesis, blocks, expected = load(case)
    assert expected["sequencer_key"] == "devnet:sequencer"
    key = genesis_tool.devnet_key("sequencer")
    chain = Chain(MemoryStore(), genesis)
    for data, exp in zip(blocks, expected["blocks"]):
        original = decode_block(data)
        block, result, rejected = chain.build(original.txs, original.header.timestamp_ms, key)
        assert not rejected
        assert block.encode() == data
    if expected["error"] and expected["error"]["type"] == "BlockHasInvalidTx":
        bad = decode_block(blocks[-1])
        block, _, rejected = chain.build(bad.txs, bad.header.timestamp_ms, key)
        assert block.txs == () and len(rejected) == len(bad.txs)  # the sequencer never includes it


def test_regenerating_reproduces_the_vectors(tmp_path: Path) -> None:
    from vectors.generate import generate

    for case in generate(tmp_path):
        for name in ("genesis.json", "blocks.hex", "expected.json"):
            assert (tmp_path / case / name).read_bytes() == (VECTORS / case / name).read_bytes(), (case, name)
