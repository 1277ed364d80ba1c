"""Settlement end to end on a real anvil and real daemons, all on 127.0.0.1: `mpsnode init --l1`
deploys, deposits are credited and verified, a withdrawal is proven and paid once, and a sequencer
that ignores a deposit makes blocks every verifier rejects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpsnode.consensus.settlement import WEI_PER_UNIT
from mpsnode.node.files import load_genesis, load_l1_key
from mpsnode.node.l1.anvil import Anvil, rpc
from mpsnode.node.l1.client import L1, account

from nodekit import REPO, Daemon, verifier

WINDOW = 8
TIMEOUT = 60


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    """An L1 that makes a block every second, as a real one does (time moves on L1 by itself)."""
    with Anvil(block_time=1).start(tmp_path / "anvil") as node:
        yield node


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-m", "mpsnode.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"mpsnode {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def init(home: Path, url: str, clients: int = 2) -> None:
    cli(
        "init",
        "--home",
        str(home),
        "--l1",
        url,
        "--devnet",
        "--clients",
        str(clients),
        "--deposit-window",
        str(WINDOW),
    )
    text = (home / "config.toml").read_text().replace('listen = "127.0.0.1:7070"', 'listen = "127.0.0.1:0"')
    (home / "config.toml").write_text(text)


def wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def node_args(home: Path, seq: Daemon) -> list[str]:
    return ["--home", str(home), "--node", f"127.0.0.1:{seq.port}"]


def test_deposit_withdraw_and_prove_on_a_real_l1(tmp_path: Path, anvil: Anvil, daemons: list) -> None:
    home = tmp_path / "net"
    init(home, anvil.url)
    genesis = load_genesis(home / "genesis.json")
    assert genesis.l1 is not None and genesis.allocations == ()
    seq = Daemon(home, ["--output-blocks", "2", "--output-seconds", "1"], name="sequencer")
    daemons.append(seq.start())
    vhome = tmp_path / "verifier"
    vhome.mkdir()
    ver = verifier(
        vhome, seq.address, "--genesis", str(home / "genesis.json"), "--l1", anvil.url, "--exit-on-divergence"
    )
    daemons.append(ver.start())
    at = node_args(home, seq)

    # deposit on L1: credited on L2, in a block the verifier re-executes against its own L1 reads
    done = cli("l1", "deposit", *at, "--l1-from", "user", "--to", "user", "--amount", "5000000", "--json")
    deposit = json.loads(done.stdout)
    assert deposit["index"] == 0 and deposit["credited_at_height"] >= 1
    # a withdrawal to the user's own L1 account, proven by someone else (client-0 pays the gas)
    user_l1 = account(load_l1_key(home / "keys" / "l1" / "user.json"))
    l1 = L1(anvil.url, genesis.l1)
    before = l1.balance(user_l1.address)
    done = cli("tx", "withdraw", *at, "--from", "user", "--to", user_l1.address, "--amount", "1234", "--json")
    withdraw = json.loads(done.stdout)
    assert withdraw["state"] == "included" and withdraw["status"] == "ok", withdraw
    too_early = cli("l1", "prove-withdrawal", *at, "--l1-from", "client-0", withdraw["tx_id"], check=False)
    assert too_early.returncode == 2 and too_early.stderr.count("\n") == 1, too_early.stderr
    assert "finalizes at" in too_early.stderr or "no posted output yet" in too_early.stderr
    done = cli(
        "l1", "prove-withdrawal", *at, "--l1-from", "client-0", withdraw["tx_id"], "--wait", "60", "--json"
    )
    paid = json.loads(done.stdout)
    assert paid["units"] == 1234 and paid["paid_to"].lower() == user_l1.address.lower()
    assert l1.balance(user_l1.address) - before == 1234 * WEI_PER_UNIT
    again = cli("l1", "prove-withdrawal", *at, "--l1-from", "client-0", withdraw["tx_id"], check=False)
    assert again.returncode == 2 and "paid already" in again.stderr and again.stderr.count("\n") == 1

    status = json.loads(cli("l1", "status", *at, "--json").stdout)
    assert status["l2"]["portal_equals_l2"] is True
    assert status["portal"]["deposited_units"] == 5_000_000 and status["portal"]["paid_units"] == 1234
    assert status["outputs"]["finalized"] >= 1 and status["l2"]["deposits_pending"] == 0
    # the verifier agrees with every block, deposits included
    head = json.loads(cli("query", "status", "--node", f"127.0.0.1:{seq.port}", "--json").stdout)["height"]
    wait_for(
        lambda: (
            json.loads(cli("query", "status", "--node", f"127.0.0.1:{ver.port}", "--json").stdout)["height"]
            >= head
        ),
        what="the verifier to catch up",
    )
    assert ver.proc.poll() is None, ver.log_text()[-2000:]
    assert "divergence" not in ver.log_text()


def test_a_sequencer_that_ignores_a_deposit_makes_blocks_verifiers_reject(
    tmp_path: Path, anvil: Anvil, daemons: list
) -> None:
    home = tmp_path / "net"
    init(home, anvil.url)
    seq = Daemon(
        home,
        ["--output-seconds", "0.5"],
        command=("tests/sabotage.py", "ignore_deposits", "sequencer"),
        name="sabotaged",
    )
    daemons.append(seq.start())
    vhome = tmp_path / "verifier"
    vhome.mkdir()
    ver = verifier(
        vhome, seq.address, "--genesis", str(home / "genesis.json"), "--l1", anvil.url, "--exit-on-divergence"
    )
    daemons.append(ver.start())
    made = json.loads(
        cli(
            "l1",
            "deposit",
            *node_args(home, seq),
            "--l1-from",
            "user",
            "--to",
            "user",
            "--amount",
            "777",
            "--no-wait",
            "--json",
        ).stdout
    )
    for _ in range(WINDOW + 2):  # L1 moves on; the sequencer names each new origin, without the deposit
        rpc(anvil.url, "evm_mine")
        time.sleep(0.3)
    assert ver.proc.wait(TIMEOUT) == 3, ver.log_text()[-3000:]
    reports = sorted((vhome / "reports").glob("*.json"))
    report = json.loads(reports[0].read_text())
    assert report["check"] == "deposits"
    assert f"deposit {made['index']}" in report["reason"] and "without crediting it" in report["reason"]
    # and L1 refuses its outputs past the window
    wait_for(
        lambda: "an overdue deposit is left out" in seq.log_text(), what="the oracle to refuse an output"
    )
