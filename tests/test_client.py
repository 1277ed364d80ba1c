"""The client daemon against the real ``mpsnode sequencer`` process on 127.0.0.1.

Clients run ``mpsnode.clientd.run_client`` as trio tasks in the test process (the demo does the
same) and, once, as the ``mpsnode client run`` command. Each test checks on the chain itself, block
by block, that every client committed to and revealed exactly one update per round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trio

from mpsnode import fl
from mpsnode.client.daemon import (
    ClientConfig,
    ClientEvent,
    ClientResult,
    Journal,
    RoundRecord,
    run_client,
    signed_commitment,
    signed_update,
)
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.events import TaskCreated
from mpsnode.consensus.hashing import MODEL, H
from mpsnode.consensus.params import Params
from mpsnode.consensus.state import TaskStatus
from mpsnode.consensus.tx import JoinTask, Kind, Stake, commit_reveal
from mpsnode.fl.data import digits_split, learner_seed
from mpsnode.node.connection import Client, connect
from mpsnode.node.errors import WrongNetwork

from nodekit import LOCALHOST, REPO, Daemon, make_home

PARAMS = Params(block_time_ms=50)
N_CLIENTS = 5


@pytest.fixture(scope="module")
def split() -> fl.FederatedSplit:
    return digits_split(N_CLIENTS, None, 0)


def _start(tmp_path: Path, daemons: list[Daemon]) -> tuple[Daemon, object]:
    net = make_home(tmp_path, clients=N_CLIENTS, params=PARAMS)
    daemon = Daemon(tmp_path)
    daemons.append(daemon)
    daemon.start()
    return daemon, net


async def _create_task(client: Client, net, split: fl.FederatedSplit, rounds: int) -> tuple[int, bytes]:
    """A task that cannot reach its target (100%), so it runs exactly ``rounds`` rounds and expires."""
    body = fl.create_task_body(
        split.validation,
        target_accuracy_bps=10000,
        max_rounds=rounds,
        min_clients=N_CLIENTS,
        max_clients=N_CLIENTS,
        byzantine_f=1,
        join_blocks=400,
        round_blocks=200,
        fee_per_round=100,
        local_epochs=1,
        seed=0,
    )
    wallet = Wallet(net.keys["user"], client.chain_id, client.params)
    await wallet.recover(client)
    stx = await wallet.send(client, body)
    outcome = await client.wait_receipt(stx.tx_id, timeout=30)
    assert outcome.ok and outcome.receipt is not None
    task_id = next(e.task_id for e in outcome.receipt.events if isinstance(e, TaskCreated))
    return task_id, body.init_weights


def _config(
    net, daemon: Daemon, split: fl.FederatedSplit, i: int, task_id: int, state_dir: Path
) -> ClientConfig:
    return ClientConfig(
        node=f"{LOCALHOST}:{daemon.port}",
        key=net.keys[f"client-{i}"],
        task_id=task_id,
        data=split.clients[i],
        genesis=net.genesis,
        state_dir=state_dir,
        seed=learner_seed(0, i),
        reconnect_for=60.0,
        timeout=30.0,
    )


async def _submissions(client: Client, task_id: int) -> Counter[tuple[bytes, int]]:
    """(sender, round, kind) -> how many COMMIT_UPDATE / REVEAL_UPDATE txs of that pair are in the
    chain, read block by block."""
    head = (await client.status()).height
    seen: Counter[tuple[bytes, int, Kind]] = Counter()
    for h in range(1, head + 1):
        _, block, _ = await client.block(h)
        assert block is not None
        for stx in block.txs:
            if stx.tx.kind in (Kind.COMMIT_UPDATE, Kind.REVEAL_UPDATE) and stx.tx.body.task_id == task_id:
                seen[(stx.tx.sender, stx.tx.body.round, stx.tx.kind)] += 1
    return seen


def _assert_one_per_round(
    seen: Counter[tuple[bytes, int, Kind]], addresses: list[bytes], rounds: int
) -> None:
    kinds = (Kind.COMMIT_UPDATE, Kind.REVEAL_UPDATE)
    assert set(seen) == {(a, r, k) for a in addresses for r in range(1, rounds + 1) for k in kinds}
    assert set(seen.values()) == {1}, f"double submissions: {[k for k, v in seen.items() if v > 1]}"


def test_clients_follow_rounds_check_proofs_and_submit_once(
    tmp_path: Path, daemons: list[Daemon], split: fl.FederatedSplit
) -> None:
    """Four clients in-process, one as `mpsnode client run`: three rounds, one update each, proven models."""
    daemon, net = _start(tmp_path, daemons)
    rounds = 3
    state_dir = tmp_path / "journals"

    async def main() -> None:
        async with connect(daemon.address, genesis=net.genesis) as client:
            task_id, init_weights = await _create_task(client, net, split, rounds)
            cli = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mpsnode.cli",
                    "client",
                    "run",
                    "--home",
                    str(tmp_path),
                    "--node",
                    f"{LOCALHOST}:{daemon.port}",
                    "--from",
                    "client-4",
                    "--task",
                    str(task_id),
                    "--digits-shard",
                    f"4/{N_CLIENTS}",
                    "--alpha",
                    "iid",
                    "--seed",
                    "0",
                    "--state-dir",
                    str(state_dir),
                    "--json",
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )
            try:
                results: list[ClientResult] = []

                async def one(i: int) -> None:
                    results.append(await run_client(_config(net, daemon, split, i, task_id, state_dir)))

                async with trio.open_nursery() as nursery:
                    for i in range(N_CLIENTS - 1):
                        nursery.start_soon(one, i)
                out, err = await trio.to_thread.run_sync(cli.communicate, None, 120)
            finally:
                if cli.poll() is None:
                    cli.kill()
            assert cli.returncode == 0, err
            lines = [json.loads(line) for line in out.splitlines()]
            assert [e["round"] for e in lines if e["event"] == "committed"] == [1, 2, 3]
            assert [e["round"] for e in lines if e["event"] == "revealed"] == [1, 2, 3]
            assert lines[-1] == {
                "event": "done",
                "done": True,
                "task": task_id,
                "status": "expired",
                "rounds_committed": 3,
                "updates_ok": 3,
                "reconnects": 0,
                "accuracy_bps": lines[-1]["accuracy_bps"],
            }

            assert all(r.status == "expired" and sorted(r.rounds) == [1, 2, 3] for r in results)
            task = (await client.task(task_id)).value
            assert task.status == TaskStatus.EXPIRED and task.rounds_closed == rounds
            seen = await _submissions(client, task_id)
            _assert_one_per_round(seen, [k.address for k in net.clients], rounds)

            # every client trained from a model proven against a real signed header; all saw the same model
            for result in results:
                for rec in result.rounds.values():
                    assert rec.outcome == "ok" and rec.reveal_outcome == "ok"
                    header = await client.header(rec.proven_height)
                    assert header.state_root.hex() == rec.state_root
                    assert signed_commitment(rec).tx_id.hex() == rec.tx_id
                    assert signed_update(rec).tx_id.hex() == rec.reveal_tx_id
            assert {r.rounds[1].model_hash for r in results} == {H(MODEL, init_weights).hex()}
            for rnd in (2, 3):
                assert len({r.rounds[rnd].model_hash for r in results}) == 1

    trio.run(main)


def test_client_survives_sequencer_kill9_without_double_submission(
    tmp_path: Path, daemons: list[Daemon], split: fl.FederatedSplit
) -> None:
    """The sequencer is SIGKILLed as round 2's first update is acked and restarted on the same port."""
    daemon, net = _start(tmp_path, daemons)
    rounds = 4
    state_dir = tmp_path / "journals"
    killed = trio.Event()
    events: list[ClientEvent] = []

    async def main() -> None:
        async with connect(daemon.address, genesis=net.genesis) as client:
            task_id, _ = await _create_task(client, net, split, rounds)
        results: list[ClientResult] = []

        def on_event(ev: ClientEvent) -> None:
            events.append(ev)
            if ev.kind == "committed" and ev.fields["round"] == 2 and not killed.is_set():
                daemon.kill()  # SIGKILL, at once: other clients are mid-submit
                killed.set()

        async def one(i: int) -> None:
            results.append(await run_client(_config(net, daemon, split, i, task_id, state_dir), on_event))

        async def restart() -> None:
            await killed.wait()
            await trio.sleep(0.5)
            daemon.args = [
                "--listen",
                f"{LOCALHOST}:{daemon.port}",
            ]  # the same address (the last --listen wins)
            await trio.to_thread.run_sync(daemon.start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(restart)
            for i in range(N_CLIENTS):
                nursery.start_soon(one, i)

        assert killed.is_set() and daemon.starts == 2
        assert all(r.status == "expired" and sorted(r.rounds) == list(range(1, rounds + 1)) for r in results)
        outcomes = {
            (r.address.hex()[:8], rec.round): (rec.outcome, rec.reveal_outcome)
            for r in results
            for rec in r.rounds.values()
        }
        assert set(outcomes.values()) == {("ok", "ok")}, outcomes
        assert sum(r.reconnects for r in results) >= N_CLIENTS  # every client lost its link and came back
        assert any(ev.kind == "disconnected" for ev in events)
        async with connect(daemon.address, genesis=net.genesis) as client:
            seen = await _submissions(client, task_id)
            _assert_one_per_round(seen, [k.address for k in net.clients], rounds)
            task = (await client.task(task_id)).value
            assert task.status == TaskStatus.EXPIRED and task.rounds_closed == rounds

    trio.run(main)


def test_restarted_client_resubmits_its_journaled_update_not_a_new_one(
    tmp_path: Path, daemons: list[Daemon], split: fl.FederatedSplit
) -> None:
    """A client that signed and journaled round 1's commitment, then died before sending it, sends that
    same tx, and reveals the journaled delta."""
    daemon, net = _start(tmp_path, daemons)
    state_dir = tmp_path / "journals"
    late = net.keys["client-4"]

    async def main() -> None:
        async with connect(daemon.address, genesis=net.genesis) as client:
            task_id, init_weights = await _create_task(client, net, split, 1)
            wallet = Wallet(late, client.chain_id, client.params)
            await wallet.recover(client)
            for body in (Stake(PARAMS.min_stake), JoinTask(task_id)):
                stx = await wallet.send(client, body)
                assert (await client.wait_receipt(stx.tx_id, timeout=30)).ok
            # the "previous life" of client-4: it trained, signed and journaled round 1, then crashed unsent
            update = fl.LocalLearner(split.clients[4], fl.DEFAULT_ARCH, seed=99).train_round(
                fl.weights_from_bytes(init_weights, fl.DEFAULT_ARCH), fl.DEFAULT_SCALE_BITS, 1
            )
            salt = bytes(range(32))
            commit, _ = commit_reveal(client.chain_id, task_id, 1, late.address, update.to_bytes(), salt)
            orphan = wallet.sign(commit)
            journal = Journal.for_client(state_dir, net.genesis.hash(), late.address, task_id)
            journal.record(
                RoundRecord(
                    1,
                    orphan.encode().hex(),
                    orphan.tx_id.hex(),
                    orphan.tx.nonce,
                    delta=update.to_bytes().hex(),
                    salt=salt.hex(),
                )
            )
            journal.close()  # the crashed process's lock went with it
            assert (await client.receipt(orphan.tx_id)).state == "unknown"

            results: list[ClientResult] = []
            kinds: list[str] = []

            async def one(i: int) -> None:
                cfg = _config(net, daemon, split, i, task_id, state_dir)
                results.append(await run_client(cfg, lambda ev: kinds.append(ev.kind) if i == 4 else None))

            async with trio.open_nursery() as nursery:
                for i in range(N_CLIENTS - 1):
                    nursery.start_soon(one, i)
                # client-4 comes back once round 1 is open (the round its journaled update is for)
                while (await client.task(task_id)).value.status != TaskStatus.ACTIVE:
                    await trio.sleep(0.05)
                nursery.start_soon(one, 4)

            assert "resubmitted" in kinds and "committed" not in kinds  # client-4 trained nothing new
            mine = next(r for r in results if r.address == late.address)
            assert mine.rounds[1].tx_id == orphan.tx_id.hex() and mine.rounds[1].outcome == "ok"
            revealed = signed_update(mine.rounds[1])
            assert revealed is not None and revealed.tx.body.delta == update.to_bytes()  # the journaled delta
            assert mine.rounds[1].reveal_outcome == "ok"
            included = await client.receipt(orphan.tx_id)
            assert included.ok  # the very tx journaled before the crash, with its nonce
            seen = await _submissions(client, task_id)
            _assert_one_per_round(seen, [k.address for k in net.clients], 1)

    trio.run(main)


def test_client_refuses_a_node_of_another_chain(
    tmp_path: Path, daemons: list[Daemon], split: fl.FederatedSplit
) -> None:
    daemon, net = _start(tmp_path, daemons)
    other = make_home(tmp_path / "other", clients=N_CLIENTS, params=Params(block_time_ms=51)).genesis
    config = ClientConfig(
        node=f"{LOCALHOST}:{daemon.port}",
        key=net.keys["client-0"],
        task_id=1,
        data=split.clients[0],
        genesis=other,
    )
    with pytest.raises(WrongNetwork):
        trio.run(run_client, config)


def test_client_cli_rejects_bad_data_options(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3)))
    base = [
        sys.executable,
        "-m",
        "mpsnode.cli",
        "client",
        "run",
        "--node",
        f"{LOCALHOST}:1",
        "--key",
        str(tmp_path / "none.json"),
        "--task",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for extra, message in (
        (["--digits-shard", "5/5"], "need 0 <= I < N"),
        (["--digits-shard", "1/5", "--alpha", "-1"], "must be positive"),
        (["--data", str(tmp_path / "bad.npz")], "needs arrays 'x'"),
    ):
        done = subprocess.run(
            base + extra, check=False, cwd=REPO, capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
