"""Golden vectors: one runner, two paths. The verifier path decodes and applies every block; the
sequencer path rebuilds every valid block from its txs and must produce the same bytes. A case
ending in a bad block must raise exactly the recorded error and leave the head unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import genesis as genesis_tool
from mpsnode.consensus import errors
from mpsnode.consensus import krum, model
from mpsnode.consensus.block import decode_block
from mpsnode.node.chain import Chain
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.events import RoundClosed
from mpsnode.node.store import MemoryStore
from mpsnode.consensus.tx import SubmitUpdate
from vectors.generate import model_hashes

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
        assert [e.to_json() for r in result.receipts for e in r.events] == exp["events"]
        assert model_hashes(chain) == exp["models"]
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


def test_round_vectors_agree_with_the_reference_twins() -> None:
    """The pinned round closes, recomputed from the blocks' update bytes with the plain reference
    Krum and aggregation: the golden values are Krum's, not just whatever the kernels returned."""
    genesis, blocks, expected = load("rounds")
    chain = Chain(MemoryStore(), genesis)
    updates: dict[tuple[int, int], list[tuple[bytes, bytes]]] = {}
    closes = 0
    for data in blocks:
        block = decode_block(data)
        before = chain.state()
        tasks = {t: before.get_task(t) for t in range(1, before.get_globals().next_task_id)}
        models = {t: before.get_model(t) for t in tasks}
        for stx in block.txs:
            if isinstance(stx.tx.body, SubmitUpdate):
                body = stx.tx.body
                updates.setdefault((body.task_id, body.round), []).append((stx.tx.sender, body.delta))
        result = chain.apply(block)
        for event in (e for r in result.receipts for e in r.events):
            if not isinstance(event, RoundClosed) or event.void:
                continue
            closes += 1
            task = tasks[event.task_id]
            rows = updates[(event.task_id, event.round)]
            assert tuple(a for a, _ in rows) == event.participants
            Q = np.stack([np.frombuffer(d, dtype="<i2") for _, d in rows]).astype(np.int16)
            scores = krum.krum_scores_reference(krum.distance_matrix_reference(Q), task.byzantine_f)
            assert tuple(int(s) for s in scores) == event.scores
            ranked = sorted(range(len(rows)), key=lambda i: (int(scores[i]), rows[i][0]))
            chosen = ranked[: len(rows) - task.byzantine_f]
            assert event.selected == tuple(rows[i][0] for i in chosen)
            new = model.aggregate_reference(np.frombuffer(models[event.task_id], dtype="<i4"), Q[chosen])
            after = np.frombuffer(chain.state().get_model(event.task_id), dtype="<i4")
            assert np.array_equal(np.asarray(new, dtype=np.int64), after.astype(np.int64))
            x, y = chain.state().get_valset(event.task_id)
            acc = model.accuracy_bps_reference(after, task.arch, task.scale_bits,
                                               np.frombuffer(x, dtype="<i2").reshape(-1, task.arch[0]),
                                               np.frombuffer(y, dtype=np.uint8))
            assert acc == event.accuracy_bps
    assert closes == 3


def test_regenerating_reproduces_the_vectors(tmp_path: Path) -> None:
    from vectors.generate import generate

    for case in generate(tmp_path):
        for name in ("genesis.json", "blocks.hex", "expected.json"):
            assert (tmp_path / case / name).read_bytes() == (VECTORS / case / name).read_bytes(), (case, name)
