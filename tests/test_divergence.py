"""Divergence: every way a served block can lie is caught at its height, with its named reason.

Two set-ups, both with the real ``mpsnode sequencer`` and real ``mpsnode verifier`` processes:

* An altering proxy (``tests/proxykit.py``, its own process) between the sequencer and one
  verifier per alteration: wrong state / receipts / tx root, reordered txs (header untouched, and
  re-committed and re-signed), a tx with a bad signature, a tx for another chain, altered update
  bytes, a wrong parent hash, a non-increasing timestamp, a bad sequencer signature, a
  non-canonical encoding; plus a verifier through the same proxy with nothing altered, which must
  verify the whole chain without a report.
* Sequencers built with a sabotaged rule (``tests/sabotage.py``): a round closed without the
  slash the rules demand, and a payment to the wrong client. Their blocks are honestly signed and
  self-consistent; only re-execution shows the lie.

Each verifier writes ``reports/<height>.json``; the tests read the reports and the proxy's record
of which block (and tx) it altered. All verifiers of a set-up run at once, so the module costs
a few daemon starts' worth of time, not one per case.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import trio

import genesis as genesis_tool
from mpsnode.client.wallet import Wallet
from mpsnode.consensus import model
from mpsnode.consensus.events import RoundClosed
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.params import Params
from mpsnode.consensus.smt import MemoryNodeStore, SparseMerkleTree, compute_value_hash, verify_proof
from mpsnode.consensus.state import RoundPhase
from mpsnode.consensus.tx import CreateTask, JoinTask, Stake, Transfer, commit_reveal
from mpsnode.node.connection import Client, connect
from mpsnode.node.messages import Status
from verifier import checks
from verifier.daemon import EXIT_DIVERGED
from verifier.divergence import claimed_value_hash

from nodekit import LOCALHOST, REPO, Daemon, make_home, verifier
from proxykit import ALTERATIONS

PARAMS = Params(block_time_ms=50)
ARCH = (4, 5, 3)
N_PARAMS = model.param_count(ARCH)
CLIENTS = 6
TIMEOUT = 90.0


# ---------------------------------------------------------------------------------------------
# The workload: transfers from distinct senders in waves, then a task with one round of updates


def make_task(target_bps: int) -> CreateTask:
    """A 4-5-3 task, f = 1, 5 clients. The validation set is one input under all three labels, so
    the model is exactly 33.33% accurate whatever its weights: a target <= 3333 completes at round 1."""
    rng = np.random.default_rng(5)
    weights = rng.integers(-1000, 1000, N_PARAMS, dtype=np.int32).astype("<i4").tobytes()
    x = np.tile(rng.integers(-500, 500, ARCH[0], dtype=np.int16), 3).astype("<i2").tobytes()
    return CreateTask(ARCH, 8, weights, target_bps, 3, 5, 5, 1, 200, 50, 100, 1, x, bytes([0, 1, 2]))


def deltas(outlier: bool) -> list[bytes]:
    rng = np.random.default_rng(11)
    base = rng.integers(-40, 40, N_PARAMS)
    out = []
    for i in range(5):
        d = base + rng.integers(-5, 5, N_PARAMS)
        if outlier and i == 4:
            d = d * 60
        out.append(np.clip(d, -32768, 32767).astype("<i2").tobytes())
    return out


async def _send_all(client: Client, stxs: list) -> None:
    results = await client.submit_many(stxs)
    bad = [r for r in results if not isinstance(r, bytes)]
    assert not bad, bad
    for stx in stxs:
        outcome = await client.wait_receipt(stx.tx_id, timeout=TIMEOUT)
        assert outcome.ok, outcome


async def drive(
    address: tuple[str, int], g: Genesis, *, outlier: bool, target_bps: int, waves: int = 3
) -> int:
    """Run the workload; returns the height of the block that closed round 1."""
    names = ["user", *(f"client-{i}" for i in range(CLIENTS))]
    async with connect(address, genesis=g) as client:
        wallets = {}
        for name in names:
            wallets[name] = Wallet(genesis_tool.devnet_key(name), g.chain_id, g.params)
            await wallets[name].recover(client)
        sink = genesis_tool.devnet_key("treasury").address
        for _ in range(waves):
            await _send_all(client, [w.sign(Transfer(sink, 1)) for w in wallets.values()])
        clients = [wallets[f"client-{i}"] for i in range(5)]
        create = wallets["user"].sign(make_task(target_bps))
        await _send_all(client, [create] + [c.sign(Stake(2000)) for c in clients])
        await _send_all(client, [c.sign(JoinTask(1)) for c in clients])
        with trio.fail_after(TIMEOUT):
            while (await client.task(1)).value.round != 1:
                await trio.sleep(0.05)
        pairs = [
            commit_reveal(g.chain_id, 1, 1, c.address, d, bytes(32))
            for c, d in zip(clients, deltas(outlier), strict=True)
        ]
        await _send_all(client, [c.sign(commit) for c, (commit, _) in zip(clients, pairs, strict=True)])
        with trio.fail_after(TIMEOUT):
            while (await client.task(1)).value.phase != RoundPhase.REVEAL:
                await trio.sleep(0.05)
        await _send_all(client, [c.sign(reveal) for c, (_, reveal) in zip(clients, pairs, strict=True)])
        for height, events in await client.events(task_id=1):
            if any(isinstance(e, RoundClosed) and e.round == 1 for e in events):
                return height
    raise AssertionError("round 1 did not close")


# ---------------------------------------------------------------------------------------------
# Processes


def verifier_home(root: Path, name: str, source: Path) -> Path:
    home = root / name
    home.mkdir()
    shutil.copy(source / "genesis.json", home / "genesis.json")
    return home


def start_all(daemons: list[Daemon]) -> None:
    with ThreadPoolExecutor(len(daemons)) as pool:
        list(pool.map(lambda d: d.start(), daemons))


def report_of(home: Path, height: int) -> dict:
    return json.loads((home / "reports" / f"{height}.json").read_text())


def wait_for(path: Path, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


async def header_at(address: tuple[str, int], g: Genesis, height: int):
    async with connect(address, genesis=g) as client:
        return await client.header(height)


async def status_of(address: tuple[str, int], g: Genesis):
    async with connect(address, genesis=g) as client:
        return await client.status()


# ---------------------------------------------------------------------------------------------
# The altering proxy


def test_every_altered_block_is_caught_at_its_height_with_its_reason(tmp_path: Path, daemons: list) -> None:
    seq_home = tmp_path / "seq"
    net = make_home(seq_home, clients=CLIENTS, params=PARAMS)
    g = net.genesis
    sequencer = Daemon(seq_home)
    daemons.append(sequencer)
    sequencer.start()
    targets = tmp_path / "targets"
    targets.mkdir()
    names = sorted(ALTERATIONS)
    with open(tmp_path / "proxy.log", "w") as log:
        proxy = subprocess.Popen(
            [
                sys.executable,
                "tests/proxykit.py",
                "--upstream",
                f"{LOCALHOST}:{sequencer.port}",
                "--targets",
                str(targets),
                "--clients",
                str(CLIENTS),
                *[a for n in names for a in ("--alter", n)],
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    daemons.append(proxy)
    ports = json.loads(proxy.stdout.readline())["ports"]
    homes = {name: verifier_home(tmp_path, f"v-{name}", seq_home) for name in names}
    verifiers = {}
    for name in names:
        # "wrong_state_root" stays up after its report, to show it keeps serving its status
        flags = [] if name in ("none", "wrong_state_root") else ["--exit-on-divergence"]
        verifiers[name] = verifier(homes[name], (LOCALHOST, ports[name]), *flags)
    daemons.extend(verifiers.values())
    start_all(list(verifiers.values()))

    trio.run(lambda: drive(sequencer.address, g, outlier=False, target_bps=10_000))
    head = trio.run(status_of, sequencer.address, g)

    problems = []
    for name in names:
        if name == "none":
            continue
        expect = ALTERATIONS[name][2]
        target_file = targets / f"{name}.json"
        wait_for(target_file)
        target = json.loads(target_file.read_text())
        wait_for(homes[name] / "reports" / f"{target['height']}.json")
        report = report_of(homes[name], target["height"])
        got = (report["check"], report["height"], report["tx_index"])
        names_a_tx = expect.startswith("tx_") and expect != checks.TX_ROOT
        want = (expect, target["height"], target["tx_index"] if names_a_tx else None)
        if got != want:
            problems.append(f"{name}: report says {got}, expected {want}: {report['reason']}")
        reports = sorted(p.name for p in (homes[name] / "reports").glob("*.json"))
        if reports != [f"{target['height']}.json"]:
            problems.append(f"{name}: reports {reports}")
        if name != "wrong_state_root":
            assert verifiers[name].proc.wait(TIMEOUT) == EXIT_DIVERGED, verifiers[name].log_text()[-2000:]
            errors = [line for line in verifiers[name].log_text().splitlines() if '"level":"error"' in line]
            if len(errors) != 1 or '"event":"divergence"' not in errors[0]:
                problems.append(f"{name}: expected one divergence error line, got {errors}")
    assert not problems, "\n".join(problems)

    # the one left running stopped applying, and says so in STATUS while serving what it verified
    stuck = trio.run(status_of, verifiers["wrong_state_root"].address, g)
    target = json.loads((targets / "wrong_state_root.json").read_text())["height"]
    assert stuck.kind == "verifier" and stuck.height == target - 1
    assert stuck.verifier is not None and stuck.verifier.diverged
    assert stuck.verifier.divergence_height == target
    assert stuck.verifier.check == checks.STATE_ROOT
    report = report_of(homes["wrong_state_root"], target)
    assert report["roots"]["state_root"]["match"] is False
    assert report["roots"]["receipts_root"]["match"] is True
    assert report["computed"] == report["roots"]["state_root"]["computed"] != report["claimed"]
    # the sequencer never signed the altered root: its proofs cannot back it
    assert "do not verify against the claimed state root" in report["state"]["note"]
    assert (homes["wrong_state_root"] / "reports" / f"{target}.bundle").stat().st_size > 0

    # re-committed reorder: the same receipts, in another order
    target = json.loads((targets / "reordered_txs_resigned.json").read_text())
    differ = report_of(homes["reordered_txs_resigned"], target["height"])["receipts"]["differ"]
    assert len(differ) == 2 and differ[0]["computed"]["tx_id"] == differ[1]["claimed"]["tx_id"]

    # nothing altered: the whole chain verified, no report, no false alarm
    # the sequencer goes on making blocks while the task is open: wait until the verifier is close behind
    honest = _wait_until(
        verifiers["none"].address, g, lambda st: st.height >= head.height and st.verifier.lag <= 2
    )
    upstream_header = trio.run(header_at, sequencer.address, g, honest.height)
    assert honest.head_hash == upstream_header.hash() and honest.state_root == upstream_header.state_root
    assert honest.verifier is not None and not honest.verifier.diverged
    assert not (homes["none"] / "reports").exists()


def _wait_until(address: tuple[str, int], g: Genesis, ok: Callable[[Status], bool]) -> Status:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = trio.run(status_of, address, g)
        if ok(status):
            return status
        assert time.monotonic() < deadline, f"the verifier never got there: {status}"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Sequencers with a sabotaged rule


def test_sabotaged_round_rules_are_caught(tmp_path: Path, daemons: list) -> None:
    runs = {}
    for rule in ("no_slash", "pay_wrong_client"):
        home = tmp_path / rule
        net = make_home(home, clients=CLIENTS, params=PARAMS)
        seq = Daemon(home, command=("tests/sabotage.py", rule, "sequencer"), name="sabotaged")
        daemons.append(seq)
        runs[rule] = (net.genesis, seq, verifier_home(tmp_path, f"v-{rule}", home))
    start_all([seq for _, seq, _ in runs.values()])
    verifiers = {
        rule: verifier(vhome, seq.address, "--exit-on-divergence") for rule, (_, seq, vhome) in runs.items()
    }
    daemons.extend(verifiers.values())
    start_all(list(verifiers.values()))

    async def both() -> dict[str, int]:
        closed: dict[str, int] = {}

        async def one(rule: str, outlier: bool, target: int) -> None:
            g, seq, _ = runs[rule]
            closed[rule] = await drive(seq.address, g, outlier=outlier, target_bps=target, waves=1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "no_slash", True, 10_000)  # an outlier the rules must slash
            nursery.start_soon(one, "pay_wrong_client", False, 3000)  # round 1 completes the task
        return closed

    closed = trio.run(both)
    for v in verifiers.values():
        assert v.proc.wait(TIMEOUT) == EXIT_DIVERGED, v.log_text()[-2000:]
    outlier = genesis_tool.devnet_key("client-4").address.hex()

    report = report_of(runs["no_slash"][2], closed["no_slash"])
    assert report["check"] == checks.RECEIPTS_ROOT and report["height"] == closed["no_slash"]
    (receipt,) = report["receipts"]["differ"]
    assert report["receipts"]["claimed_match_header"] is True
    missing = {(e["event"], e.get("address")) for e in receipt["events_only_computed"]}
    assert ("Slashed", outlier) in missing and ("Jailed", outlier) in missing
    assert not receipt["events_only_claimed"]
    diverging = {d["what"]: d for d in report["state"]["diverging"]}
    assert diverging[f"account {outlier}"]["computed_value"]["jailed"] is True
    assert "globals" in diverging and "task 1" in diverging  # burned total, and the participant list
    assert report["state"]["note"] is None and report["state"]["keys_compared"] >= len(diverging)

    report = report_of(runs["pay_wrong_client"][2], closed["pay_wrong_client"])
    assert report["check"] == checks.RECEIPTS_ROOT and report["height"] == closed["pay_wrong_client"]
    (receipt,) = report["receipts"]["differ"]
    paid = {e["address"]: e["amount"] for e in receipt["events_only_computed"] if e["event"] == "Rewarded"}
    wrong = {e["address"]: e["amount"] for e in receipt["events_only_claimed"] if e["event"] == "Rewarded"}
    assert len(paid) == 1 and len(wrong) == 1 and list(paid.values()) == list(wrong.values())
    assert set(paid) != set(wrong)
    accounts = {d["what"] for d in report["state"]["diverging"]}
    assert {f"account {a}" for a in (*paid, *wrong)} <= accounts


# ---------------------------------------------------------------------------------------------
# Reading a claimed proof without the value


def test_claimed_value_hash_agrees_with_verify_proof() -> None:
    rng = np.random.default_rng(3)
    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    items = {rng.bytes(int(rng.integers(1, 12))): rng.bytes(8) for _ in range(300)}
    root = tree.update(items)
    store.put_nodes(tree.pending_nodes())
    other_root = SparseMerkleTree(MemoryNodeStore()).update({b"x": b"y"})
    probes = list(items)[:60] + [bytes([i]) * 13 for i in range(40)]
    for key in probes:
        proof = tree.prove(key)
        value = items.get(key)
        valid, value_hash = claimed_value_hash(root, key, proof)
        assert valid
        assert verify_proof(root, key, value, proof)
        assert (value_hash is None) == (value is None)
        if value is not None:
            assert value_hash == compute_value_hash(value)
        assert claimed_value_hash(other_root, key, proof)[0] is False
        if proof.siblings:  # tampering with any sibling breaks both
            bad = type(proof)((proof.siblings[0][::-1], *proof.siblings[1:]), proof.leaf)
            assert claimed_value_hash(root, key, bad)[0] is verify_proof(root, key, value, bad) is False
