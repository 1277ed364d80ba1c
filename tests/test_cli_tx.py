"""`mpsnode tx`: one rule for every command. A tx that would fail on the node's state is not sent
(exit 2, one line saying why, nothing spent) unless ``--force``; a tx included with a failed effect
exits 1; a nonce gap is refused before it can sit pending for ever."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpsnode.consensus.params import Params

from nodekit import LOCALHOST, REPO, Daemon, make_home

PARAMS = Params(
    block_time_ms=50, reveal_blocks=2000
)  # a reveal phase of 100 s: time for CLI calls on a loaded machine


@pytest.fixture
def node(tmp_path: Path, daemons: list[Daemon]) -> Daemon:
    make_home(tmp_path, clients=3, params=PARAMS)
    daemon = Daemon(tmp_path)
    daemons.append(daemon)
    daemon.start()
    return daemon


def cli(node: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mpsnode.cli",
            *args,
            "--home",
            str(node.home),
            "--node",
            f"{LOCALHOST}:{node.port}",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tx(node: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(node, "tx", *args)


def account(node: Daemon, name: str) -> dict:
    done = cli(node, "query", "account", name)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_tx_that_would_fail_is_not_sent_and_force_sends_it(node: Daemon) -> None:
    before = account(node, "client-0")
    too_much = str(before["balance"] + 1)
    refused = tx(node, "transfer", "--to", "client-1", "--amount", too_much, "--from", "client-0")
    assert refused.returncode == 2, refused.stderr
    assert "would fail: InsufficientBalance" in refused.stderr and "nothing was sent" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert account(node, "client-0") == before  # no fee, no nonce spent

    forced = tx(node, "transfer", "--to", "client-1", "--amount", too_much, "--from", "client-0", "--force")
    assert forced.returncode == 1, forced.stderr
    out = json.loads(forced.stdout)
    assert out["state"] == "included" and out["status"] == "InsufficientBalance"
    assert "failed (InsufficientBalance)" in forced.stderr
    after = account(node, "client-0")
    assert after["balance"] == before["balance"] - out["fee_paid"] and after["nonce"] == before["nonce"] + 1


def test_a_tx_that_works_exits_0_and_waits_by_default(node: Daemon) -> None:
    done = tx(node, "transfer", "--to", "client-1", "--amount", "5", "--from", "client-0")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["state"] == "included" and out["status"] == "ok"
    quick = tx(node, "transfer", "--to", "client-1", "--amount", "5", "--from", "client-0", "--no-wait")
    assert quick.returncode == 0 and json.loads(quick.stdout)["state"] == "accepted", quick.stderr


def test_unstake_below_the_minimum_while_in_a_task_is_foreseen(node: Daemon) -> None:
    params = PARAMS
    assert tx(node, "stake", "--amount", str(params.min_stake), "--from", "client-2").returncode == 0
    created = tx(
        node,
        "create-task",
        "--arch",
        "4,3",
        "--from",
        "user",
        "--min-clients",
        "5",
        "--max-clients",
        "5",
        "--byzantine-f",
        "1",
        "--join-blocks",
        "1000",
    )
    assert created.returncode == 0, created.stderr
    task_id = next(e["task_id"] for e in json.loads(created.stdout)["events"] if e["event"] == "TaskCreated")
    assert tx(node, "join", "--task", str(task_id), "--from", "client-2").returncode == 0
    refused = tx(node, "unstake", "--amount", "1", "--from", "client-2")
    assert refused.returncode == 2 and "would fail: StakeLocked" in refused.stderr, refused.stderr
    again = tx(node, "join", "--task", str(task_id), "--from", "client-2")
    assert again.returncode == 2 and "would fail: AlreadyJoined" in again.stderr, again.stderr


def test_a_nonce_gap_is_refused(node: Daemon) -> None:
    next_nonce = account(node, "client-0")["next_nonce"]
    gap = tx(
        node,
        "transfer",
        "--to",
        "client-1",
        "--amount",
        "1",
        "--from",
        "client-0",
        "--nonce",
        str(next_nonce + 3),
    )
    assert gap.returncode == 2 and "leaves a gap" in gap.stderr, gap.stderr
    assert account(node, "client-0")["pending_txs"] == 0


def test_create_task_follows_digits_clients_and_refuses_what_cannot_start(node: Daemon) -> None:
    ok = cli(node, "client", "create-task", "--from", "user", "--digits-clients", "6", "--join-blocks", "4")
    assert ok.returncode == 0, ok.stderr
    created = json.loads(ok.stdout)
    assert (created["min_clients"], created["max_clients"], created["byzantine_f"]) == (6, 6, 1)
    never = cli(
        node, "client", "create-task", "--from", "user", "--digits-clients", "6", "--min-clients", "10"
    )
    assert never.returncode == 2 and "could never start" in never.stderr, never.stderr
    too_many_f = cli(
        node, "client", "create-task", "--from", "user", "--digits-clients", "6", "--byzantine-f", "2"
    )
    assert too_many_f.returncode == 2 and "2f + 3 = 7" in too_many_f.stderr, too_many_f.stderr

    # nobody joins: the task expires, and `query task` says why
    deadline = time.monotonic() + 60
    while True:
        task = json.loads(cli(node, "query", "task", str(created["task_id"])).stdout)
        if task["status"] == "EXPIRED" or time.monotonic() > deadline:
            break
        assert "blocks left to join" in task["waiting"]
        time.sleep(0.2)
    assert task["status"] == "EXPIRED"
    assert task["expired"].startswith("only 0 of min 6 clients joined by block"), task


def test_a_tx_stuck_behind_a_nonce_gap_is_shown_and_dropped_for_good(node: Daemon) -> None:
    next_nonce = account(node, "client-0")["next_nonce"]
    stuck = tx(
        node,
        "transfer",
        "--to",
        "client-1",
        "--amount",
        "1",
        "--from",
        "client-0",
        "--nonce",
        str(next_nonce + 2),
        "--force",
        "--no-wait",
    )
    assert stuck.returncode == 0, stuck.stderr
    tx_id = json.loads(stuck.stdout)["tx_id"]
    shown = json.loads(tx(node, "pending", "--from", "client-0").stdout)["pending"]
    assert [(p["tx_id"], p["state"]) for p in shown] == [(tx_id, "waiting behind a nonce gap")]
    not_mine = tx(node, "pending", "--from", "client-1", "--drop", tx_id)
    assert not_mine.returncode == 2 and "not signed by the tx's sender" in not_mine.stderr, not_mine.stderr
    dropped = tx(node, "pending", "--from", "client-0", "--drop", tx_id)
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout)["pending"] == []
    assert node.stop() == 0
    node.start()  # the drop is durable: the mempool does not bring it back
    assert json.loads(tx(node, "pending", "--from", "client-0").stdout)["pending"] == []
    assert account(node, "client-0")["pending_txs"] == 0


def test_commit_then_reveal_an_update_from_the_cli(node: Daemon) -> None:
    """`tx commit-update` prints the salt; `tx reveal-update` with it opens the commitment once the
    reveal phase is open; a reveal too early, or with another salt, is refused before it is sent."""
    created = tx(
        node,
        "create-task",
        "--arch",
        "4,3",
        "--from",
        "user",
        "--min-clients",
        "3",
        "--max-clients",
        "3",
        "--byzantine-f",
        "0",
        "--round-blocks",
        "1000",
        "--join-blocks",
        "1000",
    )
    assert created.returncode == 0, created.stderr
    task_id = str(
        next(e["task_id"] for e in json.loads(created.stdout)["events"] if e["event"] == "TaskCreated")
    )
    for i in range(3):
        assert tx(node, "stake", "--amount", str(PARAMS.min_stake), "--from", f"client-{i}").returncode == 0
        assert tx(node, "join", "--task", task_id, "--from", f"client-{i}").returncode == 0
    update = ("--task", task_id, "--round", "1", "--params", "15")
    salts = []
    for i in range(3):
        committed = tx(node, "commit-update", *update, "--random-delta", str(i), "--from", f"client-{i}")
        assert committed.returncode == 0, committed.stderr
        out = json.loads(committed.stdout)
        assert out["kind"] == "COMMIT_UPDATE" and len(bytes.fromhex(out["salt"])) == 32
        salts.append(out["salt"])
        if i == 0:  # the others have not committed yet: still the commit phase
            early = tx(
                node,
                "reveal-update",
                *update,
                "--random-delta",
                "0",
                "--salt",
                salts[0],
                "--from",
                "client-0",
            )
            assert early.returncode == 2 and "would fail: WrongPhase" in early.stderr, early.stderr
    deadline = time.monotonic() + 30
    while (task := json.loads(cli(node, "query", "task", task_id).stdout))["phase"] != "reveal":
        assert time.monotonic() < deadline, (task["committed"], task["participants"], task["waiting"])
        time.sleep(0.1)
    wrong = tx(
        node, "reveal-update", *update, "--random-delta", "0", "--salt", salts[1], "--from", "client-0"
    )
    assert wrong.returncode == 2 and "would fail: CommitmentMismatch" in wrong.stderr, wrong.stderr
    bad = tx(node, "reveal-update", *update, "--random-delta", "0", "--salt", "zz", "--from", "client-0")
    assert bad.returncode == 2 and "--salt must be 32 bytes" in bad.stderr and "Traceback" not in bad.stderr
    revealed = tx(
        node, "reveal-update", *update, "--random-delta", "0", "--salt", salts[0], "--from", "client-0"
    )
    assert revealed.returncode == 0, revealed.stderr
    assert [e["event"] for e in json.loads(revealed.stdout)["events"]] == ["UpdateRevealed"]
    task = json.loads(cli(node, "query", "task", task_id).stdout)
    assert task["submitted"] == [account(node, "client-0")["address"]] and "reveal phase" in task["waiting"]
