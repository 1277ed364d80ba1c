"""Ingest of model updates: 2 MB REVEAL_UPDATE txs through the sequencer daemon, in MB/s included.

Starts ``mpsnode sequencer`` on a fresh devnet home (127.0.0.1, a free port), creates ``--tasks``
tasks of a (3900 -> 256) model (998,656 parameters: a 2 MB int16 delta) with ``--clients`` clients
each (f = 0, so every round of 3 is scored, aggregated and evaluated), then every client commits to
and reveals one update per round for ``--rounds`` rounds, each task on its own connection: a
round's reveals are sent once its commitments are included (the reveal phase opens at the end of
that block), the next round's commitments once its reveals are. Every tx is signed before the clock
starts. Prints:

* ``ingest_updates_mbps``: included update bytes per second, sustained (10% to 90% of the bytes);
* ``ingest_updates_bound``: what bounds it (the disk, the one block builder, or the round trips
  between a round's phases when neither is busy): the bytes the daemon wrote to disk (/proc/PID/io) per
  included update byte, the synced write rate of a fresh LMDB store on the same disk measured
  after the run (what a growing data file can take), the time that volume needs at that rate, the
  sequencer's block build and commit seconds (its metrics), how busy the cores were, and the
  daemon's system CPU and minor page faults (mpsnode.node.allocator says why they matter);
* ``ingest_updates_ack_latency``: submit of a 2 MB tx -> durable ack, p50 and p99 in ms.

    python bench/ingest_updates.py [--tasks N] [--clients N] [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lmdb
import numpy as np
import trio
from ingest import _cpu_seconds, metric_sum, percentile, start_daemon, sustained_rate

import genesis as genesis_tool
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.params import Params
from mpsnode.consensus.tx import CreateTask, JoinTask, Stake, Tx, commit_reveal
from mpsnode.node.connection import connect

ARCH = (3900, 256)
N_PARAMS = ARCH[0] * ARCH[1] + ARCH[1]
MB = 1e6
TARGET_MBPS = 100  # the performance issue's target


def _written(pid: int) -> int:
    """Bytes a process has caused to be written to disk (``write_bytes`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _faults_and_system(pid: int) -> tuple[int, float]:
    """A process's minor page faults and system CPU seconds so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def _builder_busy(port: int) -> tuple[float, float]:
    """The sequencer's block build and block commit seconds so far (its metrics)."""
    return metric_sum(port, "mps_block_build_seconds_sum"), metric_sum(port, "mps_block_commit_seconds_sum")


def synced_growth_rate(where: Path, blocks: int = 4, values: int = 48) -> float:
    """Bytes/s of synced LMDB commits of ``values`` 2 MB values each into a fresh store beside the
    daemon's (the same disk): what a chain that grows its data file can write at most."""
    rng = np.random.default_rng(2)
    data = [rng.integers(0, 256, 2 * N_PARAMS, dtype=np.uint8).tobytes() for _ in range(values)]
    path = where / "disk-probe"
    env = lmdb.open(str(path), map_size=1 << 36, sync=True, metasync=True)
    try:
        t0 = time.perf_counter()
        for b in range(blocks):
            with env.begin(write=True) as txn:
                for i, v in enumerate(data):
                    txn.put(b"%d-%d" % (b, i), v)
        return blocks * values * len(data[0]) / (time.perf_counter() - t0)
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)


async def setup(port: int, net, tasks: int, clients: int) -> list[int]:
    g = net.genesis
    keys = net.clients
    rng = np.random.default_rng(0)
    async with connect(("127.0.0.1", port), genesis=g) as client:
        wallets = {k.address: Wallet(k, g.chain_id, g.params) for k in [*keys, net.keys["user"]]}
        for w in wallets.values():
            await w.recover(client)
        stakes = [await wallets[k.address].send(client, Stake(g.params.min_stake)) for k in keys]
        user = wallets[net.keys["user"].address]
        created = []
        for _ in range(tasks):
            body = CreateTask(
                ARCH,
                8,
                rng.integers(-200, 200, N_PARAMS).astype("<i4").tobytes(),
                10000,
                1000,
                clients,
                clients,
                0,
                1000,
                1000,
                1,
                1,
                rng.integers(-256, 256, 16 * ARCH[0]).astype("<i2").tobytes(),
                rng.integers(0, ARCH[-1], 16).astype(np.uint8).tobytes(),
            )
            created.append(await user.send(client, body))
        for stx in stakes:
            assert (await client.wait_receipt(stx.tx_id)).ok
        task_ids = []
        for stx in created:
            outcome = await client.wait_receipt(stx.tx_id)
            assert outcome.ok, outcome
            task_ids.append(next(e.task_id for e in outcome.receipt.events if e.name == "TaskCreated"))
        joins = [
            await wallets[keys[t * clients + i].address].send(client, JoinTask(task_id))
            for t, task_id in enumerate(task_ids)
            for i in range(clients)
        ]
        for stx in joins:
            assert (await client.wait_receipt(stx.tx_id)).ok
        while True:
            states = [(await client.task(t)).value for t in task_ids]
            if all(s.round == 1 for s in states):
                return task_ids
            await trio.sleep(0.05)


async def run_rounds(port: int, g, signed: list[list[list[bytes]]]) -> dict:
    """``signed[task][phase]`` holds a phase's txs (raw): round 1's commitments, its reveals, round 2's...

    Inclusion times come from the loaders' own receipt waits (no extra subscriber pulling every
    block back out of the node, which would cost the node a second copy of each byte).
    """
    latencies: list[float] = []
    included: list[tuple[float, int]] = []
    total = sum(len(raw) for task in signed for rnd in task for raw in rnd)
    reveals = [raw for task in signed for rnd in task[1::2] for raw in rnd]  # every second phase

    async def task_loader(rounds: list[list[bytes]]) -> None:
        async with connect(("127.0.0.1", port), genesis=g) as client:
            for txs in rounds:
                ids: list[tuple[bytes, int]] = []

                async def submit(raw: bytes, ids: list[tuple[bytes, int]]) -> None:
                    t0 = time.perf_counter()
                    ids.append((await client.submit(raw), len(raw)))
                    latencies.append(time.perf_counter() - t0)

                async with trio.open_nursery() as nursery:
                    for raw in txs:
                        nursery.start_soon(submit, raw, ids)

                async def wait(tx_id: bytes, size: int) -> None:
                    outcome = await client.wait_receipt(tx_id, timeout=120)
                    assert outcome.ok, outcome
                    included.append((time.perf_counter(), size))

                async with trio.open_nursery() as nursery:
                    for tx_id, size in ids:
                        nursery.start_soon(wait, tx_id, size)

    t0 = time.perf_counter()
    with trio.fail_after(900):
        async with trio.open_nursery() as nursery:
            for rounds in signed:
                nursery.start_soon(task_loader, rounds)
    included.sort()
    end = included[-1][0]
    cum, sustained = sustained_rate(included, total, t0, end)
    return {
        "bytes": cum,
        "sustained_Bps": sustained,
        "overall_Bps": cum / (end - t0),
        "wall_s": end - t0,
        "ack_p50_ms": percentile(latencies, 50) * 1000,
        "ack_p99_ms": percentile(latencies, 99) * 1000,
        "txs": len(latencies),
        "reveals": len(reveals),
        "revealed_bytes": sum(len(raw) for raw in reveals),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--clients", type=int, default=6, help="per task (f = 0: at least 3)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.rounds = 4, 3
    home = Path(tempfile.mkdtemp(prefix="bench-updates-"))
    net = genesis_tool.make_network(
        home, clients=args.tasks * args.clients, devnet_keys=True, params=Params()
    )
    g = net.genesis
    proc, port, metrics_port = start_daemon(home, ["--metrics", "127.0.0.1:0"])
    assert metrics_port is not None
    try:
        task_ids = trio.run(setup, port, net, args.tasks, args.clients)
        rng = np.random.default_rng(1)
        pool = [
            rng.integers(-50, 50, N_PARAMS, dtype=np.int16).astype("<i2").tobytes()
            for _ in range(args.clients + 1)
        ]
        signed: list[list[list[bytes]]] = []
        t_sign = time.perf_counter()
        for t, task_id in enumerate(task_ids):
            phases = []
            for r in range(1, args.rounds + 1):
                commits, reveals = [], []
                for i in range(args.clients):
                    key = net.clients[t * args.clients + i]
                    nonce = 2 + 2 * (r - 1)  # stake and join came first
                    delta = pool[(r + i) % len(pool)]
                    pair = commit_reveal(g.chain_id, task_id, r, key.address, delta, bytes(32))
                    for body, n, out in ((pair[0], nonce, commits), (pair[1], nonce + 1, reveals)):
                        out.append(
                            Tx(g.chain_id, key.address, n, g.params.tx_base_fee, body).sign(key).encode()
                        )
                phases += [commits, reveals]
            signed.append(phases)
        sign_s = time.perf_counter() - t_sign
        cpu0, written0, busy0 = _cpu_seconds(proc.pid), _written(proc.pid), _builder_busy(metrics_port)
        faults0, system0 = _faults_and_system(proc.pid)
        result = trio.run(run_rounds, port, g, signed)
        result["daemon_cpu_s"] = _cpu_seconds(proc.pid) - cpu0
        faults1, system1 = _faults_and_system(proc.pid)
        result["faults"], result["system_s"] = faults1 - faults0, system1 - system0
        result["written"] = _written(proc.pid) - written0
        result["build_s"], result["commit_s"] = (
            after - before for after, before in zip(_builder_busy(metrics_port), busy0, strict=True)
        )
    finally:
        proc.terminate()
        proc.wait(60)
    disk_Bps = synced_growth_rate(home)
    mbps = result["sustained_Bps"] / MB
    print(
        json.dumps(
            {
                "bench": "ingest_updates_mbps",
                "value": round(mbps, 1),
                "unit": "MB/s included",
                "overall_mbps": round(result["overall_Bps"] / MB, 1),
                "target": TARGET_MBPS,
                "meets_target": mbps >= TARGET_MBPS,
                "txs": result["txs"],
                "reveals": result["reveals"],
                "update_bytes": 2 * N_PARAMS,
                "tasks": args.tasks,
                "clients_per_task": args.clients,
                "rounds": args.rounds,
                "wall_s": round(result["wall_s"], 2),
                "daemon_cpu_s": round(result["daemon_cpu_s"], 2),
                "presign_s": round(sign_s, 2),
                "cores": os.cpu_count(),
            }
        )
    )
    included = result["revealed_bytes"]
    disk_s = result["written"] / disk_Bps
    wall = result["wall_s"]
    builder_busy = (result["build_s"] + result["commit_s"]) / wall
    cores_busy = result["daemon_cpu_s"] / wall / (os.cpu_count() or 1)
    print(
        json.dumps(
            {
                "bench": "ingest_updates_bound",
                "written_mb": round(result["written"] / MB, 1),
                "revealed_mb": round(included / MB, 1),
                "written_per_update_byte": round(result["written"] / included, 2),
                "disk_synced_growth_mbps": round(disk_Bps / MB, 1),
                "disk_s": round(disk_s, 2),
                "block_build_s": round(result["build_s"], 2),
                "block_commit_s": round(result["commit_s"], 2),
                "builder_busy": round(builder_busy, 3),
                "cores_busy": round(cores_busy, 3),
                "daemon_system_cpu_s": round(result["system_s"], 2),
                "daemon_minor_faults": result["faults"],
                "bound": (
                    "disk: writing what the daemon wrote at this disk's synced growth rate takes "
                    f"{disk_s / wall:.0%} of the run"
                    if disk_s > 0.5 * wall
                    else f"the one block builder: builds and commits fill {builder_busy:.0%} of the run"
                    if builder_busy > 0.75
                    else "round trips: each phase of a round is sent once the last is included, so "
                    f"the builder (busy {builder_busy:.0%}) and the cores (busy {cores_busy:.0%}) "
                    "wait for a phase's txs to arrive, and its arrival for the block before"
                ),
            }
        )
    )
    print(
        json.dumps(
            {
                "bench": "ingest_updates_ack_latency",
                "p50_ms": round(result["ack_p50_ms"], 1),
                "p99_ms": round(result["ack_p99_ms"], 1),
            }
        )
    )
    if args.keep:
        print(json.dumps({"home": str(home)}), file=sys.stderr)
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
