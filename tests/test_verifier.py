"""The verifier daemon end to end: real ``mpsnode sequencer`` and ``mpsnode verifier`` processes on 127.0.0.1.

A verifier catches up in batches, follows the subscription, serves what it verified onward (a
second verifier follows the first), reports head, upstream head, lag, blocks verified and
divergence state in STATUS and metrics, survives its own SIGKILL and its upstream's restart, and
refuses an upstream on another chain.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import trio

import genesis as genesis_tool
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.params import Params
from mpsnode.consensus.state import account_key
from mpsnode.consensus.tx import Transfer
from mpsnode.node.connection import connect
from mpsnode.node.errors import NotSupported
from verifier.divergence import claimed_value_hash

from nodekit import LOCALHOST, Daemon, make_home, verifier

PARAMS = Params(block_time_ms=50)
TIMEOUT = 60.0


def new_home(root: Path, name: str, seq_home: Path) -> Path:
    home = root / name
    home.mkdir()
    shutil.copy(seq_home / "genesis.json", home / "genesis.json")
    return home


def start_sequencer(tmp_path: Path, daemons: list) -> tuple[Path, Genesis, Daemon]:
    """A devnet home under ``tmp_path/seq`` and its sequencer, running (killed at teardown)."""
    seq_home = tmp_path / "seq"
    g = make_home(seq_home, clients=4, params=PARAMS).genesis
    seq = Daemon(seq_home)
    daemons.append(seq)
    seq.start()
    return seq_home, g, seq


async def transfers(address: tuple[str, int], g: Genesis, n: int, sender: str = "user") -> int:
    """Send ``n`` transfers (in a few blocks); returns the height holding the last one."""
    async with connect(address, genesis=g) as client:
        wallet = Wallet(genesis_tool.devnet_key(sender), g.chain_id, g.params)
        await wallet.recover(client)
        to = genesis_tool.devnet_key("treasury").address
        last = None
        for i in range(n):
            last = await wallet.send(client, Transfer(to, 1 + i))
            if i % 4 == 3:
                await client.wait_receipt(last.tx_id, timeout=TIMEOUT)
        assert last is not None
        return (await client.wait_receipt(last.tx_id, timeout=TIMEOUT)).height


async def status(address: tuple[str, int], g: Genesis):
    async with connect(address, genesis=g) as client:
        return await client.status()


def wait_status(address: tuple[str, int], g: Genesis, ok, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = trio.run(status, address, g)
            if ok(st):
                return st
        except OSError:
            st = None
        assert time.monotonic() < deadline, f"status never satisfied the condition: {st}"
        time.sleep(0.05)


def log_events(daemon: Daemon) -> list[dict]:
    return [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]


def test_verifiers_catch_up_follow_and_serve_onward(tmp_path: Path, daemons: list) -> None:
    seq_home, g, seq = start_sequencer(tmp_path, daemons)
    before = trio.run(transfers, seq.address, g, 24)  # blocks a late verifier catches up on

    a = verifier(new_home(tmp_path, "a", seq_home), seq.address, "--metrics", f"{LOCALHOST}:0")
    daemons.append(a)
    a.start()
    b = verifier(new_home(tmp_path, "b", seq_home), a.address)  # sequencer -> A -> B
    daemons.append(b)
    b.start()
    wait_status(b.address, g, lambda st: st.height >= before)
    after = trio.run(transfers, seq.address, g, 8, "client-0")  # followed by subscription
    head = wait_status(seq.address, g, lambda st: st.height >= after)

    for v, upstream in ((a, seq), (b, a)):
        st = wait_status(v.address, g, lambda st: st.height >= head.height)
        assert st.kind == "verifier" and st.head_hash == head.head_hash and st.state_root == head.state_root
        assert st.verifier is not None
        assert st.verifier.upstream == f"{LOCALHOST}:{upstream.port}" and st.verifier.connected
        assert st.verifier.blocks_verified == st.height and not st.verifier.diverged
        assert st.verifier.check == "" and st.verifier.divergence_height == 0
    wait_status(a.address, g, lambda st: st.verifier.lag == 0 and st.verifier.upstream_height == head.height)
    assert not (tmp_path / "a" / "reports").exists() and not (tmp_path / "b" / "reports").exists()

    caught = [e for e in log_events(a) if e["event"] == "caught up"]
    assert caught and caught[0]["blocks"] >= before and caught[0]["batches"] >= 1
    m = a.metrics()
    assert m["mps_verifier_height"] == head.height and m["mps_verifier_diverged"] == 0
    assert m["mps_verifier_blocks_verified_total"] == head.height and m["mps_verifier_connected"] == 1
    assert m["mps_verifier_txs_verified_total"] == 32

    async def served_by_verifier() -> None:
        async with connect(b.address, genesis=g) as client:
            assert client.hello is not None and client.hello.kind == "verifier"
            # proven state, checked against the sequencer-signed header, served by B
            account = await client.account(genesis_tool.devnet_key("treasury").address)
            assert account.height == head.height and account.value.balance > 0
            # proofs against an older block's root (what a divergence report asks its upstream for)
            key = account_key(genesis_tool.devnet_key("user").address)
            header, (proof,) = await client.state_proofs(before, [key])
            valid, value_hash = claimed_value_hash(header.state_root, key, proof)
            assert header.height == before and valid and value_hash is not None
            wallet = Wallet(genesis_tool.devnet_key("client-1"), g.chain_id, g.params)
            await wallet.recover(client)
            with pytest.raises(NotSupported):
                await wallet.send(client, Transfer(genesis_tool.devnet_key("user").address, 1))

    trio.run(served_by_verifier)


def test_verifier_resumes_after_kill_and_upstream_restart(tmp_path: Path, daemons: list) -> None:
    seq_home, g, seq = start_sequencer(tmp_path, daemons)
    seq.args += ["--listen", f"{LOCALHOST}:{seq.port}"]  # restarts keep the port the verifier follows
    v = verifier(new_home(tmp_path, "v", seq_home), seq.address)
    daemons.append(v)
    v.start()
    first = trio.run(transfers, seq.address, g, 12)
    wait_status(v.address, g, lambda st: st.height >= first)

    v.kill()  # SIGKILL: no chance to clean up
    second = trio.run(transfers, seq.address, g, 8)
    v.start()
    st = wait_status(v.address, g, lambda st: st.height >= second)
    resumed = [e for e in log_events(v) if e["event"] == "resuming"]
    assert resumed and resumed[0]["height"] >= first  # from its own store, not from genesis

    assert seq.stop() == 0  # the upstream goes away ...
    wait_status(v.address, g, lambda st: not st.verifier.connected)
    seq.start()  # ... and comes back on the same port
    third = trio.run(transfers, seq.address, g, 8)
    st = wait_status(v.address, g, lambda st: st.height >= third and st.verifier.connected)
    head = trio.run(status, seq.address, g)
    assert st.head_hash == head.head_hash and not st.verifier.diverged
    warnings = [e for e in log_events(v) if e["event"] == "upstream unavailable"]
    assert warnings and all(e["level"] == "warning" for e in warnings)


def test_verifier_refuses_an_upstream_on_another_chain(tmp_path: Path, daemons: list) -> None:
    _, _, seq = start_sequencer(tmp_path, daemons)
    other = tmp_path / "other"
    genesis_tool.make_network(other, clients=4, devnet_keys=True, chain_id="mps-othernet")
    v = verifier(other, seq.address)
    daemons.append(v)
    v.start()
    assert v.proc is not None and v.proc.wait(TIMEOUT) == 2
    text = v.log_text()
    assert "upstream is on another chain" in text and "WrongNetwork" in text
    assert not (other / "reports").exists()
