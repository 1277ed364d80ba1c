"""What a node and a client say while a task goes nowhere: a waiting client names the join deadline,
a void round (fewer than 3 updates) is said as such by the client daemon, `query task` and the
sequencer's metrics, and the metrics read the store's head at once after a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio
from test_client import _config

from mpsnode import fl
from mpsnode.client.daemon import ClientEvent, run_client
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.params import Params
from mpsnode.consensus.tx import JoinTask, Stake
from mpsnode.fl.data import digits_split
from mpsnode.node.connection import connect

from nodekit import LOCALHOST, REPO, Daemon, make_home

N = 5


def test_void_rounds_are_said_everywhere(tmp_path: Path, daemons: list[Daemon]) -> None:
    net = make_home(tmp_path, clients=N, params=Params(block_time_ms=50))
    daemon = Daemon(tmp_path, ["--metrics", f"{LOCALHOST}:0"])
    daemons.append(daemon)
    daemon.start()
    split = digits_split(N, None, 0)
    kinds: list[tuple[str, dict]] = []

    async def main() -> int:
        async with connect(daemon.address, genesis=net.genesis) as client:
            body = fl.create_task_body(
                split.validation,
                target_accuracy_bps=10000,
                max_rounds=2,
                min_clients=N,
                max_clients=N + 1,
                byzantine_f=1,
                join_blocks=40,
                round_blocks=20,
                fee_per_round=1,
                local_epochs=1,
                seed=0,
            )
            user = Wallet(net.keys["user"], client.chain_id, client.params)
            await user.recover(client)
            created = await client.wait_receipt((await user.send(client, body)).tx_id, timeout=30)
            assert created.ok and created.receipt is not None
            task_id = next(e.task_id for e in created.receipt.events if e.name == "TaskCreated")
            # clients 2..4 join and then never train: 2 updates a round, fewer than the 3 a round needs
            for name in ("client-2", "client-3", "client-4"):
                silent = Wallet(net.keys[name], client.chain_id, client.params)
                await silent.recover(client)
                for body in (Stake(client.params.min_stake), JoinTask(task_id)):
                    assert (await client.wait_receipt((await silent.send(client, body)).tx_id, timeout=30)).ok

            def seen(ev: ClientEvent) -> None:
                kinds.append((ev.kind, ev.fields))

            async with trio.open_nursery() as nursery:
                for i in range(2):
                    cfg = _config(net, daemon, split, i, task_id, tmp_path / "journals")
                    nursery.start_soon(run_client, cfg, seen if i == 0 else None)
            return task_id

    task_id = trio.run(main)
    assert any(k == "waiting" and f["join_deadline"] > 0 for k, f in kinds), kinds
    voids = [f for k, f in kinds if k == "round_void"]
    assert voids and voids[0]["needs"] == 3, kinds
    assert not any(k == "round_closed" for k, _ in kinds)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpsnode.cli",
            "query",
            "task",
            str(task_id),
            "--home",
            str(tmp_path),
            "--node",
            f"{LOCALHOST}:{daemon.port}",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    task = json.loads(done.stdout)
    assert task["void_rounds"] == 2 and task["status"] == "EXPIRED", task
    metrics = daemon.metrics()
    assert metrics["mps_rounds_void_total"] == 2 and metrics["mps_rounds_closed_total"] == 2

    # restarted, the node reads its height from the store before any new block
    head = metrics["mps_height"]
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.metrics()["mps_height"] == head > 0
