"""``mpsnode export`` and ``mpsnode replay``: a chain re-executed from genesis, every root checked, audited.

The chains are built in process on a home's LMDB store (tests/chainkit.py), then the CLI runs on
them as a user would (``mpsnode.cli.main``): two tasks, one with an outlier that is slashed and
rounds that run out (refund), one that reaches its target (billing and payments).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import genesis as genesis_tool
import mpsnode.consensus.stf.round as round_rules
from mpsnode.cli.main import main
from mpsnode.consensus import model
from mpsnode.consensus.block import Header, decode_block, sign_header
from mpsnode.consensus.encoding import decode
from mpsnode.consensus.events import Event, Rewarded, RoundClosed, Slashed, decode_event
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.hashing import H
from mpsnode.consensus.receipt import Receipt, decode_receipts, encode_receipts
from mpsnode.consensus.smt import SparseMerkleTree, verify_proof
from mpsnode.consensus.tx import CreateTask, JoinTask, Stake, Transfer
from mpsnode.node import collector
from mpsnode.node.export import BLOCK, LENGTH, MAGIC, RECEIPTS
from mpsnode.node.store import LmdbStore
from verifier import checks
from verifier.replay import engine

from chainkit import Kit

ARCH = (4, 5, 3)
N_PARAMS = model.param_count(ARCH)


def create_task(target_bps: int, max_rounds: int, max_clients: int) -> CreateTask:
    rng = np.random.default_rng(5)
    weights = rng.integers(-1000, 1000, N_PARAMS, dtype=np.int32).astype("<i4").tobytes()
    x = np.tile(rng.integers(-500, 500, ARCH[0], dtype=np.int16), 3).astype("<i2").tobytes()
    # one input under all three labels: the model is 33.33% accurate, whatever its weights
    return CreateTask(
        ARCH, 8, weights, target_bps, max_rounds, 5, max_clients, 1, 50, 5, 100, 1, x, bytes([0, 1, 2])
    )


def updates(rng: np.random.Generator, n: int, outlier: int | None) -> list[bytes]:
    base = rng.integers(-40, 40, N_PARAMS)
    out = []
    for i in range(n):
        d = base + rng.integers(-5, 5, N_PARAMS)
        if i == outlier:
            d = d * 60
        out.append(np.clip(d, -32768, 32767).astype("<i2").tobytes())
    return out


def build_home(path: Path) -> tuple[Path, int]:
    """A home whose store holds a chain with two tasks; returns (home, height of the first slash)."""
    genesis_tool.make_network(path, clients=6, devnet_keys=True)
    store = LmdbStore(path / "data")
    try:
        kit = Kit(store, clients=6)
        clients = kit.clients
        kit.block([kit.tx(kit.user, create_task(10_000, 3, 6))] + [kit.tx(c, Stake(2000)) for c in clients])
        kit.block([kit.tx(c, JoinTask(1)) for c in clients])
        rng = np.random.default_rng(1)
        slash_height = 0
        for round_ in (1, 2, 3):
            active = kit.chain.state().get_task(1).participants
            ds = updates(rng, 6, outlier=5 if round_ == 1 else None)
            block, _ = kit.submit(
                1, round_, [(c, d) for c, d in zip(clients, ds, strict=True) if c.address in active]
            )
            slash_height = slash_height or block.height
        kit.block(
            [kit.tx(kit.user, create_task(3000, 2, 5)), kit.tx(kit.user, Transfer(clients[0].address, 7))]
        )
        kit.block([kit.tx(c, JoinTask(2)) for c in clients[:5]])
        kit.submit(2, 1, list(zip(clients[:5], updates(rng, 5, None), strict=True)))
        kit.block([kit.tx(kit.user, Transfer(clients[1].address, 9))])
    finally:
        store.close()
    return path, slash_height


@pytest.fixture(scope="module")
def chain_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return build_home(tmp_path_factory.mktemp("replay") / "home")


def stored_events(home: Path) -> list[tuple[int, Event]]:
    """Every event the node stored, straight from its store (the claimed side)."""
    store = LmdbStore(home / "data", readonly=True)
    try:
        head = store.head()
        assert head is not None
        out = []
        for height in range(1, head.height + 1):
            blob = store.get_events(height) or b""
            objs = decode(blob, max_bytes=len(blob), max_array_len=1 << 20)
            out += [(height, decode_event(e)) for e in objs]
        return out
    finally:
        store.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_collector_is_set_for_a_replay_and_put_back_after_it() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with collector.tuned():
        assert gc.get_threshold() == (collector.YOUNG, collector.MIDDLE, collector.OLD)
        assert gc.get_freeze_count() > frozen  # what was alive is out of every collection
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # and collectable again after


def test_the_sequencer_hands_the_gil_over_every_millisecond_and_replay_keeps_the_default() -> None:
    # in a process of its own: tune_sequencer freezes the collector and sets the interval for good
    code = (
        "import sys; from mpsnode.node import collector; default = sys.getswitchinterval()\n"
        "with collector.tuned(): assert sys.getswitchinterval() == default\n"
        "collector.tune_sequencer(); print(sys.getswitchinterval(), default)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert float(out[0]) == collector.SEQUENCER_SWITCH_S < float(out[1])


def test_replay_of_a_home_checks_every_root_and_audits_every_task(chain_home, capsys, tmp_path: Path) -> None:
    home, slash_height = chain_home
    plot = tmp_path / "audit.png"
    code, out, _ = run_cli(capsys, "replay", "--home", str(home), "--json", "--plot", str(plot))
    assert code == 0, out
    result = json.loads(out)
    events = stored_events(home)
    assert result["ok"] and result["divergence"] is None and result["blocks"] == max(h for h, _ in events)
    tasks = {t["task_id"]: t for t in result["audit"]["tasks"]}

    closed = [(h, e) for h, e in events if isinstance(e, RoundClosed)]
    audited = [(r["height"], r) for t in tasks.values() for r in t["rounds"]]
    assert len(audited) == len(closed) == 4
    for (h, event), (audited_h, r) in zip(
        sorted(closed, key=lambda x: (x[1].task_id, x[0])), audited, strict=True
    ):
        assert (audited_h, r["round"], r["accuracy_bps"]) == (h, event.round, event.accuracy_bps)
        assert r["scores"] == list(event.scores)
        for name in ("participants", "selected", "flagged"):
            assert r[name] == [a.hex() for a in getattr(event, name)]
        assert r["contributions"] == {
            a.hex(): u for a, u in zip(event.participants, event.contributions, strict=True)
        }
    (slash,) = [(h, e) for h, e in events if isinstance(e, Slashed)]
    assert slash[0] == slash_height
    slashed = [{"address": slash[1].address.hex(), "amount": slash[1].amount, "reason": "krum_score"}]
    assert tasks[1]["rounds"][0]["slashed"] == slashed
    assert tasks[1]["status"] == "expired" and tasks[1]["refunded"] > 0
    assert tasks[2]["status"] == "completed" and tasks[2]["final_accuracy_bps"] == 3333
    assert tasks[2]["payments"] == {e.address.hex(): e.amount for _, e in events if isinstance(e, Rewarded)}
    paid = sum(tasks[2]["payments"].values())
    assert tasks[2]["charged"] == 5 + paid and tasks[2]["target_accuracy_bps"] == 3000  # fee + earned
    assert (
        tasks[2]["payments_match_contributions"] is True and tasks[1]["payments_match_contributions"] is None
    )
    units = tasks[2]["contribution_units"]
    assert units and set(tasks[2]["payments"]) <= set(units)

    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000

    code, out, _ = run_cli(capsys, "replay", "--home", str(home))
    assert code == 0 and "every root matches" in out
    assert (
        f"{slash[1].address.hex()[:8]}(-{slash[1].amount}, krum_score)" in out
    )  # the slash in the round table
    assert "payments:" in out and "krum scores" in out and "refunded to the creator" in out
    assert "contribution (share of the round's pay)" in out
    assert "payments match the contribution events: yes" in out


def test_export_replays_to_the_same_head_and_audit(chain_home, capsys, tmp_path: Path) -> None:
    home, _ = chain_home
    out_file = tmp_path / "chain.mps"
    code, out, _ = run_cli(capsys, "export", "--home", str(home), "--out", str(out_file), "--json")
    assert code == 0
    summary = json.loads(out)
    assert out_file.read_bytes()[:8] == MAGIC and summary["bytes"] == out_file.stat().st_size
    code, from_file, err = run_cli(capsys, "replay", str(out_file), "--json", "--progress")
    assert code == 0
    code, from_home, _ = run_cli(capsys, "replay", "--home", str(home), "--json")
    a, b = json.loads(from_file), json.loads(from_home)
    assert a["head"] == b["head"] and a["audit"] == b["audit"] and a["head"]["hash"] == summary["head_hash"]
    assert "replay" in err and "blk" in err  # the progress bar

    truncated = tmp_path / "short.mps"
    truncated.write_bytes(out_file.read_bytes()[:-20])
    code, _, err = run_cli(capsys, "replay", str(truncated))
    assert code == 2 and ("truncated" in err or "runs past the end" in err)

    code, _, err = run_cli(capsys, "replay", str(out_file), "--home", str(home))
    assert code == 2 and "both given" in err
    code, _, err = run_cli(capsys, "replay")
    assert code == 2 and "neither given" in err
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x93\x01\x02\x03")
    code, _, err = run_cli(capsys, "replay", str(garbage))
    assert code == 2 and "neither an export" in err and "not a replay bundle" in err
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "missing.mps"))
    assert code == 2 and "missing.mps" in err


def tamper(export: Path, out: Path, height: int, **header_changes: bytes) -> None:
    """Copy ``export`` with block ``height``'s header changed and re-signed by the devnet sequencer."""
    data = export.read_bytes()
    pos, parts = len(MAGIC), [MAGIC]
    blocks = 0
    while pos < len(data):
        tag, (n,) = data[pos : pos + 1], LENGTH.unpack(data[pos + 1 : pos + 5])
        payload = data[pos + 5 : pos + 5 + n]
        if tag == BLOCK:
            blocks += 1
            if blocks == height:
                block = decode_block(payload)
                fields = {f: getattr(block.header, f) for f in Header.__dataclass_fields__}
                fields.update(header_changes)
                key = genesis_tool.devnet_key("sequencer")
                payload = sign_header(Header(**fields), key, block.txs).encode()
        parts.append(tag + LENGTH.pack(len(payload)) + payload)
        pos += 5 + n
    out.write_bytes(b"".join(parts))


def test_a_tampered_export_fails_at_its_height_with_the_daemons_report(
    chain_home, capsys, tmp_path: Path
) -> None:
    home, _ = chain_home
    good = tmp_path / "chain.mps"
    assert run_cli(capsys, "export", "--home", str(home), "--out", str(good))[0] == 0
    bad = tmp_path / "bad.mps"
    tamper(good, bad, 4, state_root=H(b"mps-test-salt", b"x"))
    reports = tmp_path / "reports"
    code, out, _ = run_cli(capsys, "replay", str(bad), "--json", "--reports", str(reports))
    assert code == 1
    result = json.loads(out)
    report = result["divergence"]
    assert not result["ok"] and result["blocks"] == 3 and report["height"] == 4
    assert report["check"] == checks.STATE_ROOT and report["roots"]["receipts_root"]["match"]
    assert report["state"]["note"].startswith("an export holds blocks")
    assert json.loads((reports / "4.json").read_text()) == report

    code, out, _ = run_cli(capsys, "replay", str(reports / "4.bundle"), "--json")
    assert code == 1
    again = json.loads(out)["divergence"]
    assert {**again, "source": None} == {**report, "source": None}

    code, out, _ = run_cli(capsys, "replay", str(bad))
    assert code == 1 and "DIVERGENCE at height 4" in out and "state_root" in out


def test_a_home_built_without_the_slash_diverges_where_it_was_due(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(round_rules, "slash_participant", lambda *a, **k: [])
    home, slash_height = build_home(tmp_path / "home")
    monkeypatch.undo()
    code, out, _ = run_cli(capsys, "replay", "--home", str(home), "--json")
    assert code == 1
    report = json.loads(out)["divergence"]
    assert report["check"] == checks.RECEIPTS_ROOT and report["height"] == slash_height
    (differ,) = report["receipts"]["differ"]
    assert [e["event"] for e in differ["events_only_computed"]] == ["Slashed", "Jailed", "ParticipantRemoved"]
    state = report["state"]
    assert state["note"] is None and state["source"].startswith("home ")  # proofs from the home's own tree
    outlier = genesis_tool.devnet_key("client-5").address.hex()
    assert {d["what"] for d in state["diverging"]} == {f"account {outlier}", "globals", "task 1"}


def test_pruned_replay_state_still_proves_every_root(chain_home, monkeypatch: pytest.MonkeyPatch) -> None:
    home, _ = chain_home
    monkeypatch.setattr(engine, "PRUNE_EVERY", 2)  # prune after every other block: the replay still holds
    source = engine.HomeSource(home)
    try:
        assert engine.replay(source, progress=False).ok
    finally:
        source.close()

    state = engine.ReplayState(source.genesis)
    for i in range(50):  # rewrite the same keys: each update leaves the old path's nodes unreachable
        writes: dict[bytes, bytes | None] = {b"A" + bytes([k]) * 32: bytes([i, k]) for k in range(8)}
        tree = SparseMerkleTree(state, state.root)
        root = tree.update(writes)
        state.apply(writes, tree.pending_nodes(), root)
    before = len(state.nodes)
    state.prune()
    assert len(state.nodes) < before / 5
    tree = SparseMerkleTree(state, state.root)
    for key, value in state.items.items():
        assert verify_proof(state.root, key, value, tree.prove(key))


def _records(export: Path) -> list[tuple[bytes, bytes]]:
    data = export.read_bytes()
    pos, out = len(MAGIC), []
    while pos < len(data):
        tag, (n,) = data[pos : pos + 1], LENGTH.unpack(data[pos + 1 : pos + 5])
        out.append((tag, data[pos + 5 : pos + 5 + n]))
        pos += 5 + n
    return out


def _write(out: Path, records: list[tuple[bytes, bytes]]) -> None:
    out.write_bytes(MAGIC + b"".join(tag + LENGTH.pack(len(p)) + p for tag, p in records))


def test_replay_pins_the_expected_genesis(chain_home, capsys, tmp_path: Path) -> None:
    home, _ = chain_home
    good = tmp_path / "chain.mps"
    assert run_cli(capsys, "export", "--home", str(home), "--out", str(good))[0] == 0
    expected = Genesis.from_json(json.loads((home / "genesis.json").read_text())).hash().hex()
    code, out, err = run_cli(capsys, "replay", str(good), "--json")
    result = json.loads(out)
    assert code == 0 and result["genesis_hash"] == expected and result["genesis_pinned"] is False
    assert "params" in result and "not pinned" in err
    code, out, _ = run_cli(capsys, "replay", str(good), "--genesis", str(home / "genesis.json"))
    assert code == 0 and f"genesis {expected} (pinned)" in out
    code, _, err = run_cli(capsys, "replay", str(good), "--genesis-hash", "00" * 32)
    assert code == 2 and "WrongGenesis" in err and "not of the pinned" in err
    code, _, err = run_cli(capsys, "replay", "--home", str(home), "--genesis-hash", "ab" * 32)
    assert code == 2 and "WrongGenesis" in err
    code, _, err = run_cli(capsys, "replay", str(good), "--genesis-hash", "xyz")
    assert code == 2 and "64 hex digits" in err


def test_replay_checks_every_claimed_receipt(chain_home, capsys, tmp_path: Path) -> None:
    """An export whose stored receipts were edited (the slash taken out) while the blocks stayed intact."""
    home, slash_height = chain_home
    good = tmp_path / "chain.mps"
    assert run_cli(capsys, "export", "--home", str(home), "--out", str(good))[0] == 0
    records = _records(good)
    blocks = 0
    for i, (tag, payload) in enumerate(records):
        blocks += tag == BLOCK
        if tag == RECEIPTS and blocks == slash_height:
            receipts = decode_receipts(payload)
            assert any(isinstance(e, Slashed) for r in receipts for e in r.events)
            cut = [
                Receipt(
                    r.tx_id, r.status, r.fee_paid, tuple(e for e in r.events if not isinstance(e, Slashed))
                )
                for r in receipts
            ]
            records[i] = (tag, encode_receipts(cut))
    bad = tmp_path / "edited.mps"
    _write(bad, records)
    code, out, _ = run_cli(capsys, "replay", str(bad), "--json")
    result = json.loads(out)
    assert code == 1 and not result["ok"] and result["blocks"] == slash_height - 1
    assert (
        result["divergence"]["check"] == "claimed_receipts" and result["divergence"]["height"] == slash_height
    )
    assert result["divergence"]["receipts"]["differ"]  # the report shows which receipts were edited
