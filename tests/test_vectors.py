"""Golden vectors: one runner, three paths. ``state_transition`` itself (through ``Chain.apply``);
the verifier daemon's own steps on an LMDB store; and the sequencer daemon's own build-and-commit
calls, which must rebuild every valid block to the same bytes. A case ending in a bad block must
fail with exactly the recorded error and leave the head unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import genesis as genesis_tool
from mpsnode.consensus import contribution, errors, krum, model, robust
from mpsnode.consensus.block import decode_block
from mpsnode.consensus.events import RevealOpened, RoundClosed
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.settlement import Deposit, L1Facts, facts_for
from mpsnode.consensus.stf.transition import BlockResult
from mpsnode.consensus.tx import Kind, RevealUpdate
from mpsnode.node.chain import Chain
from mpsnode.node.files import load_genesis
from mpsnode.node.store import LmdbStore, MemoryStore
from verifier.checks import Divergence, precheck_many
from verifier.daemon import Verifier, VerifierConfig

from nodekit import LOCALHOST
from vectors.generate import model_hashes

VECTORS = Path(__file__).parent / "vectors"
CASES = sorted(p.name for p in VECTORS.iterdir() if (p / "expected.json").exists())


def load(case: str) -> tuple[Genesis, list[bytes], dict]:
    folder = VECTORS / case
    blocks = [bytes.fromhex(line) for line in (folder / "blocks.hex").read_text().split()]
    return load_genesis(folder / "genesis.json"), blocks, json.loads((folder / "expected.json").read_text())


class RecordedL1:
    """A settlement case's L1, as the vector records it: the portal's deposits (data, not a fake
    node: a block's facts are ``facts_for`` of them at its origin, what a follower computes)."""

    def __init__(self, expected: dict) -> None:
        self.deposits = [Deposit(i, b, bytes.fromhex(r), a) for i, b, r, a in expected.get("l1_deposits", [])]
        self.scanned_to = max((d.l1_block for d in self.deposits), default=0) + 10**6

    def facts(self, origin: int, credited: int) -> L1Facts:
        return facts_for(origin, credited, self.deposits)

    def of(self, chain: Chain, block_bytes: bytes) -> L1Facts | None:
        if chain.genesis.l1 is None:
            return None
        origin = decode_block(block_bytes).header.l1_origin
        return None if origin is None else self.facts(origin, chain.state().get_settlement().deposits)


def test_there_are_vectors() -> None:
    assert len(CASES) >= 8
    assert any(json.loads((VECTORS / c / "expected.json").read_text())["error"] for c in CASES)


def _check_block(chain: Chain, result: BlockResult, exp: dict) -> None:
    assert chain.head.block_hash.hex() == exp["hash"]
    assert chain.head.state_root.hex() == exp["state_root"]
    assert [r.status for r in result.receipts] == exp["statuses"]
    assert [e.to_json() for r in result.receipts for e in r.events] == exp["events"]
    assert model_hashes(chain) == exp["models"]


@pytest.mark.parametrize("case", CASES)
def test_state_transition(case: str) -> None:
    """The spec's entry point itself: ``Chain.apply`` is ``state_transition`` on the head."""
    genesis, blocks, expected = load(case)
    chain = Chain(MemoryStore(), genesis)
    l1 = RecordedL1(expected)
    valid = expected["blocks"]
    for data, exp in zip(blocks, valid, strict=False):
        _check_block(chain, chain.apply(decode_block(data), l1=l1.of(chain, data)), exp)
    err = expected["error"]
    assert len(blocks) == len(valid) + (1 if err else 0)
    if err:
        head = chain.head
        with pytest.raises(getattr(errors, err["type"]), match=err["match"]):
            chain.apply(decode_block(blocks[-1]), l1=l1.of(chain, blocks[-1]))
        assert chain.head == head


@pytest.mark.parametrize("case", CASES)
def test_verifier_path(case: str, tmp_path: Path) -> None:
    """The verifier daemon's own steps, on its own LMDB store: ``precheck_many`` (decoding and the
    batched signatures), ``Verifier.execute`` (``verify_block``: the state transition through the
    daemon's read overlay), the commit and ``Verifier.committed``; a bad block is a ``Divergence``
    whose cause is exactly the recorded error, and nothing is committed."""
    genesis, blocks, expected = load(case)
    store = LmdbStore(tmp_path / "data", map_size=1 << 28)
    try:
        l1_url = "http://127.0.0.1:1" if genesis.l1 is not None else None  # never called: replaced below
        verifier = Verifier(store, genesis, VerifierConfig(upstream=(LOCALHOST, 1), l1_url=l1_url))
        if genesis.l1 is not None:
            verifier.l1 = RecordedL1(expected)  # type: ignore[assignment]
        config = genesis.config()
        valid = expected["blocks"]
        for height, (data, exp) in enumerate(zip(blocks, valid, strict=False), start=1):
            block, result = verifier.execute(precheck_many([(height, data)], config)[0])
            verifier.chain.commit_prepared(block, result)
            verifier.committed(block)
            _check_block(verifier.chain, result, exp)
        err = expected["error"]
        if err:
            head = verifier.chain.head
            with pytest.raises(Divergence) as failure:
                verifier.execute(precheck_many([(len(valid) + 1, blocks[-1])], config)[0])
            cause = failure.value.cause
            assert type(cause).__name__ == err["type"] and re.search(err["match"], cause.reason)
            assert failure.value.check == cause.check
            assert verifier.chain.head == head
    finally:
        store.close()


@pytest.mark.parametrize("case", CASES)
def test_sequencer_path(case: str, tmp_path: Path) -> None:
    """The sequencer daemon's own calls: ``Chain.prepare`` on an LMDB snapshot, then
    ``Chain.commit_prepared``; every valid block is rebuilt to the same bytes, and the txs of an
    invalid one are never included."""
    genesis, blocks, expected = load(case)
    assert expected["sequencer_key"] == "devnet:sequencer"
    key = genesis_tool.devnet_key("sequencer")
    store = LmdbStore(tmp_path / "data", map_size=1 << 28)
    try:
        chain = Chain(store, genesis)

        l1 = RecordedL1(expected)

        def build(txs: tuple, timestamp_ms: int, data: bytes) -> tuple:
            view = store.snapshot()
            try:
                candidates = [t for t in txs if t.tx.kind != Kind.DEPOSIT]  # the sequencer adds these from L1
                return chain.prepare(candidates, timestamp_ms, key, reader=view, l1=l1.of(chain, data))
            finally:
                view.close()

        for data, exp in zip(blocks, expected["blocks"], strict=False):
            original = decode_block(data)
            block, result, rejected = build(original.txs, original.header.timestamp_ms, data)
            assert not rejected
            assert block.encode() == data
            chain.commit_prepared(block, result)
            _check_block(chain, result, exp)
        if expected["error"] and expected["error"]["type"] == "BlockHasInvalidTx":
            bad = decode_block(blocks[-1])
            block, _, rejected = build(bad.txs, bad.header.timestamp_ms, blocks[-1])
            user_txs = [t for t in bad.txs if t.tx.kind != Kind.DEPOSIT]
            assert not any(t in block.txs for t in bad.txs)  # the sequencer never includes a bad tx
            assert len(rejected) == len(user_txs)
    finally:
        store.close()


@pytest.mark.parametrize(("case", "scored"), [("rounds", 3), ("liveness", 4)])
def test_round_vectors_agree_with_the_reference_twins(case: str, scored: int) -> None:
    """The pinned round closes, recomputed from the blocks' update bytes with the plain reference
    round rule, aggregation and contribution (margin gradient, projection off the last round's
    updates, gains, units): the golden values are the rules', not just whatever the kernels
    returned."""
    genesis, blocks, _expected = load(case)
    chain = Chain(MemoryStore(), genesis)
    updates: dict[tuple[int, int], list[tuple[bytes, bytes]]] = {}
    basis: dict[int, list[bytes]] = {}  # task -> the last closed round's revealed deltas
    directions: dict[tuple[int, int], np.ndarray] = {}
    closes = 0
    for data in blocks:
        block = decode_block(data)
        before = chain.state()
        tasks = {t: before.get_task(t) for t in range(1, before.get_globals().next_task_id)}
        models = {t: before.get_model(t) for t in tasks}
        result = chain.apply(block)
        for stx, receipt in zip(block.txs, result.receipts, strict=False):
            if isinstance(stx.tx.body, RevealUpdate) and receipt.status == 0:
                body = stx.tx.body
                updates.setdefault((body.task_id, body.round), []).append((stx.tx.sender, body.delta))
        for event in result.receipts[-1].events:
            if isinstance(event, RevealOpened):
                task = tasks[event.task_id]
                x, y = before.get_valset(event.task_id)
                g = contribution.margin_gradient_reference(
                    np.frombuffer(models[event.task_id], dtype="<i4"),
                    task.arch,
                    task.scale_bits,
                    np.frombuffer(x, dtype="<i2").reshape(-1, task.arch[0]),
                    np.frombuffer(y, dtype=np.uint8),
                )
                n = model.param_count(task.arch)
                P = np.stack(
                    [np.frombuffer(d, dtype="<i2") for d in basis.get(event.task_id, [])]
                    or [np.zeros((0, n), np.int16)]
                ).reshape(-1, n)
                directions[(event.task_id, event.round)] = contribution.orthogonal_direction_reference(
                    contribution.to_direction(g), P.astype(np.int16)
                )
                stored = np.frombuffer(chain.state().get_direction(event.task_id), dtype="<i4")
                assert np.array_equal(stored.astype(np.int64), directions[(event.task_id, event.round)])
            if not isinstance(event, RoundClosed):
                continue
            rows = updates.get((event.task_id, event.round), [])
            assert tuple(a for a, _ in rows) == event.participants
            if (event.task_id, event.round) in directions:
                basis[event.task_id] = [d for _, d in rows]
            if event.void:
                continue
            change = np.frombuffer(chain.state().get_model(event.task_id), dtype="<i4").astype(np.int64)
            change -= np.frombuffer(models[event.task_id], dtype="<i4").astype(np.int64)
            basis[event.task_id].append(change.astype("<i2").tobytes())
            closes += 1
            task = tasks[event.task_id]
            Q = np.stack([np.frombuffer(d, dtype="<i2") for _, d in rows]).astype(np.int16)
            f = robust.flag_f(task.byzantine_f, len(rows))
            keep = robust.tolerated_f(task.byzantine_f, task.removed, len(rows))
            assert keep == event.tolerated_f
            decision = robust.decide_round_reference(
                Q, f, [a for a, _ in rows], robust.round_rules(genesis.params), task.aggregator, keep
            )
            scores = krum.krum_scores_reference(krum.distance_matrix_reference(Q), f)
            assert tuple(int(s) for s in scores) == event.scores == decision.scores
            assert event.selected == tuple(rows[i][0] for i in decision.selected)
            assert event.flagged == tuple(rows[i][0] for i in decision.flagged)
            direction = directions[(event.task_id, event.round)]
            gains = contribution.gains_reference(direction, Q).tolist()
            norm = sum(int(v) * int(v) for v in direction)
            left_out = set(decision.flagged) | set(decision.excluded)
            eligible = [i not in left_out for i in range(len(rows))]
            G = krum.gram_matrix_reference(Q).tolist()
            units = contribution.round_contributions(
                gains, G, norm, decision.weights, eligible, genesis.params
            )
            assert event.contributions == units
            new = model.aggregate_reference(
                np.frombuffer(models[event.task_id], dtype="<i4"), Q, decision.weights
            )
            after = np.frombuffer(chain.state().get_model(event.task_id), dtype="<i4")
            assert np.array_equal(np.asarray(new, dtype=np.int64), after.astype(np.int64))
            x, y = chain.state().get_valset(event.task_id)
            acc = model.accuracy_bps_reference(
                after,
                task.arch,
                task.scale_bits,
                np.frombuffer(x, dtype="<i2").reshape(-1, task.arch[0]),
                np.frombuffer(y, dtype=np.uint8),
            )
            assert acc == event.accuracy_bps
    assert closes == scored


def test_regenerating_reproduces_the_vectors(tmp_path: Path) -> None:
    from vectors.generate import generate

    for case in generate(tmp_path):
        for name in ("genesis.json", "blocks.hex", "expected.json"):
            assert (tmp_path / case / name).read_bytes() == (VECTORS / case / name).read_bytes(), (case, name)
