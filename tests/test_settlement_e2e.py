"""Settlement end to end on a real anvil and real daemons, all on 127.0.0.1: `mpsnode init --l1`
deploys, deposits are credited and verified, a withdrawal is proven and paid once, and a sequencer
that ignores a deposit makes blocks every verifier rejects."""

from __future__ import annotations

import json
import os
import signal
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
from mpsnode.node.l1.devnet import dev_account

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


def init(home: Path, url: str, clients: int = 2, *extra: str) -> None:
    """``mpsnode init --l1`` on the devnet L1 (``extra``: more init flags), listening on a free port."""
    cli("init", "--home", str(home), "--l1", url, "--devnet", "--clients", str(clients),
        "--deposit-window", str(WINDOW), *extra)  # fmt: skip
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


def start_verifier(
    tmp_path: Path, home: Path, seq: Daemon, anvil: Anvil, daemons: list
) -> tuple[Path, Daemon]:
    """A verifier following ``seq`` that reads L1 itself, and exits at a divergence."""
    vhome = tmp_path / "verifier"
    vhome.mkdir()
    genesis = str(home / "genesis.json")
    ver = verifier(vhome, seq.address, "--genesis", genesis, "--l1", anvil.url, "--exit-on-divergence")
    daemons.append(ver.start())
    return vhome, ver


def node_args(home: Path, seq: Daemon) -> list[str]:
    return ["--home", str(home), "--node", f"127.0.0.1:{seq.port}"]


def test_deposit_withdraw_and_prove_on_a_real_l1(tmp_path: Path, anvil: Anvil, daemons: list) -> None:
    home = tmp_path / "net"
    init(home, anvil.url)
    genesis = load_genesis(home / "genesis.json")
    assert genesis.l1 is not None and genesis.allocations == ()
    seq = Daemon(home, ["--output-blocks", "2", "--output-seconds", "1"], name="sequencer")
    daemons.append(seq.start())
    _, ver = start_verifier(tmp_path, home, seq, anvil, daemons)
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
    vhome, ver = start_verifier(tmp_path, home, seq, anvil, daemons)
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


def transfer_load(home: Path, seq: Daemon, n: int) -> None:
    for _ in range(n):
        cli(
            "tx",
            "transfer",
            *node_args(home, seq),
            "--from",
            "user",
            "--to",
            "client-0",
            "--amount",
            "1",
            "--no-wait",
        )


def test_kill_9_between_a_deposit_and_its_inclusion_and_around_output_posts(
    tmp_path: Path, anvil: Anvil, daemons: list
) -> None:
    home = tmp_path / "net"
    init(home, anvil.url)
    genesis = load_genesis(home / "genesis.json")
    seq = Daemon(home, ["--output-blocks", "1", "--output-seconds", "0.2"], name="sequencer")
    daemons.append(seq.start())
    cli("l1", "deposit", *node_args(home, seq), "--l1-from", "user", "--to", "user", "--amount", "3000000")
    # the sequencer dies; a deposit is made while it is down, another just as it dies
    seq.kill()
    l1 = L1(anvil.url, genesis.l1)
    user_l1 = account(load_l1_key(home / "keys" / "l1" / "user.json"))
    client_l1 = account(load_l1_key(home / "keys" / "l1" / "client-0.json"))
    keys = genesis_keys(home)
    l1.deposit(user_l1, keys["client-0"], 4444)
    seq.start()
    l1.deposit(client_l1, keys["client-1"], 5555)
    seq.kill()
    seq.start()
    # kill -9 again and again while blocks are made and outputs posted (some with a post in flight)
    for delay in (0.3, 0.9, 1.4, 0.6, 1.1):
        transfer_load(home, seq, 2)
        time.sleep(delay)
        seq.kill()
        seq.start()
    transfer_load(home, seq, 1)
    at = node_args(home, seq)
    status = wait_for(
        lambda: (
            (s := json.loads(cli("l1", "status", *at, "--json").stdout))["l2"]["deposits_pending"] == 0
            and s["outputs"]["last_l2_height"] == s["l2"]["height"]
            and s
        ),
        what="every deposit credited and the head posted",
    )
    assert status["l2"]["deposits_credited"] == 3 and status["l2"]["portal_equals_l2"] is True
    accounts = {
        n: json.loads(cli("query", "account", n, *at, "--json").stdout)["balance"]
        for n in ("client-0", "client-1")
    }
    assert (
        accounts["client-1"] == 5555 and accounts["client-0"] >= 4444
    )  # credited exactly once (+ transfers)
    # a replay against L1: every block's deposits, the supply after every block, every posted output
    seq.stop()
    done = cli("replay", "--home", str(home), "--json", check=False)
    replayed = json.loads(done.stdout)
    assert done.returncode == 0, replayed
    s = replayed["settlement"]
    assert s["ok"] and s["outputs_match"] and s["deposits_match_l1"] and s["portal_equals_l2"]
    assert s["outputs_checked"] == l1.output_count() >= 2
    heights = [l1.output(i).l2_height for i in range(l1.output_count())]
    assert heights == sorted(set(heights))  # no height posted twice


def genesis_keys(home: Path) -> dict[str, bytes]:
    from mpsnode.node.files import load_key

    return {p.stem: load_key(p).address for p in (home / "keys").glob("*.json")}


def test_settlement_commands_refuse_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "net"
    with Anvil(block_time=1).start(tmp_path / "anvil") as node:
        init(home, node.url)
    # the L1 is gone now
    for args in (
        ["l1", "status", "--home", str(home)],
        ["l1", "deposit", "--home", str(home), "--l1-from", "user", "--to", "user", "--amount", "5"],
        ["replay", "--home", str(home)],
    ):
        done = cli(*args, check=False)
        assert done.returncode in (2, 3) and done.stderr.count("\n") == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr
    bad = [
        (
            ["tx", "withdraw", "--home", str(home), "--from", "user", "--to", "0x12", "--amount", "5"],
            "not an L1 address",
        ),
        (["l1", "deposit", "--home", str(home), "--to", "user", "--amount", "5"], "who pays on L1"),
        (["l1", "prove-withdrawal", "--home", str(home), "--l1-from", "user", "zz"], "64 hex digits"),
        (
            [
                "verifier",
                "--home",
                str(tmp_path / "v"),
                "--genesis",
                str(home / "genesis.json"),
                "--upstream",
                "127.0.0.1:1",
            ],
            "give --l1 URL",
        ),
    ]
    for args, why in bad:
        done = cli(*args, check=False)
        assert done.returncode == 2 and why in done.stderr and done.stderr.count("\n") == 1, (
            args,
            done.stderr,
        )
    plain = tmp_path / "plain"
    cli("init", "--home", str(plain), "--devnet", "--clients", "1")
    done = cli("l1", "status", "--home", str(plain), check=False)
    assert done.returncode == 2 and "settles on no L1" in done.stderr


def test_the_daemons_ride_out_an_l1_restart_from_its_state_dump(tmp_path: Path, daemons: list) -> None:
    """anvil stops (writing its state dump) and comes back on the same port from it: the sequencer
    and the verifier log the L1 errors, retry, and go on crediting deposits and posting outputs."""
    dump = tmp_path / "l1-state.json"
    node = Anvil(block_time=1, state=dump).start(tmp_path / "anvil")
    try:
        home = tmp_path / "net"
        init(home, node.url)
        seq = Daemon(home, ["--output-blocks", "1", "--output-seconds", "0.5", "--metrics", "127.0.0.1:0"])
        daemons.append(seq.start())
        _, ver = start_verifier(tmp_path, home, seq, node, daemons)
        at = node_args(home, seq)
        cli("l1", "deposit", *at, "--l1-from", "user", "--to", "user", "--amount", "1000000")
        node.stop()
        assert dump.exists()
        wait_for(
            lambda: seq.metrics().get('mps_l1_errors_total{loop="follow"}', 0) > 0, what="an L1 error counted"
        )
        node = Anvil(block_time=1, state=dump, port=node.port).start(tmp_path / "anvil")
        cli("l1", "deposit", *at, "--l1-from", "client-0", "--to", "client-0", "--amount", "2000000")
        status = wait_for(
            lambda: (
                (s := json.loads(cli("l1", "status", *at, "--json").stdout))["outputs"]["last_l2_height"]
                == s["l2"]["height"]
                and s
            ),
            what="the head posted after the restart",
        )
        assert status["l2"]["deposits_credited"] == 2 and status["l2"]["portal_equals_l2"] is True
        metrics = seq.metrics()
        assert metrics["mps_l1_deposits_pending"] == 0 and metrics["mps_l1_outputs_posted_total"] >= 2
        assert metrics["mps_l1_output_height"] >= 2 and metrics["mps_l1_head"] > 0
        assert ver.proc.poll() is None and "divergence" not in ver.log_text()
    finally:
        node.stop()


def test_l1_devnet_runs_anvil_keeps_its_state_and_refuses_a_busy_port(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    state = tmp_path / "l1.json"
    cmd = [sys.executable, "-m", "mpsnode.cli", "l1", "devnet", "--port", "0", "--state", str(state)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] and ready["url"].startswith("http://127.0.0.1:")
        home = tmp_path / "net"
        init(home, ready["url"], clients=1)
        port = ready["url"].rsplit(":", 1)[1]
        busy = cli("l1", "devnet", "--port", port, check=False)
        assert busy.returncode == 2 and "is in use" in busy.stderr and busy.stderr.count("\n") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert state.exists() and state.stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Settlement part 2: verifiers contest wrong output roots on L1


def committee_verifier(tmp_path: Path, home: Path, seq: Daemon, anvil: Anvil, n: int) -> Daemon:
    vhome = tmp_path / f"verifier-{n}"
    vhome.mkdir()
    key = str(home / "keys" / "l1" / f"verifier-{n}.json")
    return Daemon(
        vhome,
        ["--upstream", f"127.0.0.1:{seq.port}", "--genesis", str(home / "genesis.json"), "--l1", anvil.url,
         "--l1-key", key, "--metrics", "127.0.0.1:0"],
        command=("-m", "mpsnode.cli", "verifier"),
        name="verifier",
    )  # fmt: skip


def test_verifiers_contest_a_wrong_output_and_the_bond_pays_the_challenger(
    tmp_path: Path, anvil: Anvil, daemons: list
) -> None:
    home = tmp_path / "net"
    init(home, anvil.url, 1, "--challenge-period", "30", "--quorum", "2")
    genesis = load_genesis(home / "genesis.json")
    l1 = L1(anvil.url, genesis.l1)
    seq = Daemon(home, ["--output-seconds", "0.5"], command=("tests/sabotage.py", "wrong_output", "sequencer"),
                 name="sabotaged")  # fmt: skip
    daemons.append(seq.start())
    v0, v1 = (committee_verifier(tmp_path, home, seq, anvil, n) for n in (0, 1))
    daemons.extend([v0.start(), v1.start()])
    challengers = {account(load_l1_key(home / "keys" / "l1" / f"verifier-{n}.json")).address for n in (0, 1)}
    before = {a: l1.balance(a) for a in challengers}
    cli("l1", "deposit", *node_args(home, seq), "--l1-from", "user", "--to", "user", "--amount", "1000000")
    # verifier 0 dies -9 the moment it sees the mismatch, and comes back
    wait_for(lambda: "output_mismatch" in v0.log_text(), what="verifier 0 to see the wrong root")
    v0.kill()
    v0.start()
    status = wait_for(lambda: l1.challenge_of(0)[3] == 2 and l1.challenge_of(0), what="the challenge upheld")
    challenger = status[0]
    assert challenger in challengers
    oracle = l1.contract("OutputOracle").functions
    assert oracle.halted().call() is True and int(oracle.bond().call()) == 0
    # the committee's root is the chain's own: a replay against L1 agrees with every output now
    paid = l1.balance(challenger) - before[challenger]
    assert paid > 10**18 - 10**16  # the sequencer's 1 ETH bond, less the challenger's gas
    wait_for(lambda: "the sequencer is halted" in seq.log_text(), what="the halted sequencer to be refused")
    shown = json.loads(cli("l1", "status", *node_args(home, seq), "--json").stdout)
    assert shown["sequencer_halted"] is True and shown["challenges"]["upheld"] >= 1
    assert shown["outputs"]["last_age_s"] >= 0
    seq.stop()
    for v in (v0, v1):
        v.stop()
    replayed = json.loads(cli("replay", "--home", str(home), "--json").stdout)
    assert replayed["settlement"]["outputs_match"] is True
    assert any((tmp_path / f"verifier-{n}" / "reports" / "output-0.json").exists() for n in (0, 1))


def test_a_frivolous_challenge_through_the_daemons_loses_its_bond(
    tmp_path: Path, anvil: Anvil, daemons: list
) -> None:
    """The sequencer is honest; a committee member (driven by the test, not a daemon) challenges a
    correct output; the honest verifier daemons attest the posted root and the quorum rejects it."""
    home = tmp_path / "net"
    init(home, anvil.url, 1, "--challenge-period", "60", "--quorum", "2")
    genesis = load_genesis(home / "genesis.json")
    l1 = L1(anvil.url, genesis.l1)
    deployer = dev_account(0)
    liar = dev_account(30)  # admitted and bonded by the test itself
    l1.admit(deployer, liar.address)
    l1.register_verifier(liar)
    seq = Daemon(home, ["--output-seconds", "0.5"])
    daemons.append(seq.start())
    v0, v1 = (committee_verifier(tmp_path, home, seq, anvil, n) for n in (0, 1))
    daemons.extend([v0.start(), v1.start()])
    cli("l1", "deposit", *node_args(home, seq), "--l1-from", "user", "--to", "user", "--amount", "1000000")
    wait_for(lambda: l1.output_count() >= 1, what="an output")
    sequencer_l1 = account(load_l1_key(home / "keys" / "l1" / "sequencer.json")).address
    before = l1.balance(sequencer_l1)
    l1.challenge(liar, 0, b"\x66" * 32, b"\x01" * 32)
    wait_for(lambda: l1.challenge_of(0)[3] == 3, what="the frivolous challenge rejected")
    oracle = l1.contract("OutputOracle").functions
    assert int(oracle.verifier_bond(liar.address).call()) == 0
    assert l1.balance(sequencer_l1) > before  # the liar's bond, less the sequencer's gas meanwhile
    assert oracle.halted().call() is False
    assert "attested" in v0.log_text() + v1.log_text()


def test_a_challenge_after_the_period_is_too_late(tmp_path: Path, anvil: Anvil, daemons: list) -> None:
    """What the committee must be: online. A wrong root nobody contested in time finalizes; a
    verifier that starts afterwards sees it, cannot challenge, and says so."""
    home = tmp_path / "net"
    init(home, anvil.url, 1, "--challenge-period", "2")
    genesis = load_genesis(home / "genesis.json")
    l1 = L1(anvil.url, genesis.l1)
    seq = Daemon(home, ["--output-seconds", "0.5"], command=("tests/sabotage.py", "wrong_output", "sequencer"),
                 name="sabotaged")  # fmt: skip
    daemons.append(seq.start())
    cli("l1", "deposit", *node_args(home, seq), "--l1-from", "user", "--to", "user", "--amount", "1000000")
    wait_for(lambda: l1.output_count() >= 1 and l1.is_finalized(0), what="the wrong output to finalize")
    v0 = committee_verifier(tmp_path, home, seq, anvil, 0)
    daemons.append(v0.start())
    wait_for(lambda: "challenge_too_late" in v0.log_text(), what="the verifier to say it is too late")
    assert l1.challenge_of(0)[3] == 0
