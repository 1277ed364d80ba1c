"""Audit replay against production: a chain made through the real sequencer, then replayed from genesis.

1. Starts ``mpsnode sequencer`` (its own process, 127.0.0.1, a free port, ``--block-time-ms``) on
   a fresh devnet home.
2. Paced transfers: ``--paced-txs`` (33,000) pre-signed transfers from ``--senders`` accounts
   offered at ``--paced-rate`` (1000/s) over 4 connections, below the sequencer's capacity, so
   blocks stay small: about 2000 blocks.
3. Burst transfers: ``--burst-txs`` (40,000) more, submitted as fast as the sequencer takes them
   (bench/ingest.py's loader): its full throughput, in large blocks.
4. A task: ``--clients`` clients (20) stake, join a 784-128-10 model (101,770 parameters), and
   run ``--rounds`` rounds (20): each round every active client submits a 203 KB int16 update
   and the round closes when all are in (Krum, slashing, aggregation, evaluation). One client
   sends a boosted outlier in round 3, so the chain holds a slash.
5. Stops the sequencer and replays its home with ``mpsnode.replay.engine`` (what ``mpsnode
   replay --home`` runs): fresh in-memory state, every check and root, the audit.

Prints one JSON object per phase and one for the whole chain: production (wall clock from the
first submit until nothing is pending, and the sequencer's own block build + commit time from its
metrics), replay (timed at the phase boundaries, after the signature kernel's one-time JIT
compile), and their ratios: ``ratio`` = production wall time / replay time, and
``ratio_vs_sequencer_busy`` = the sequencer's build + commit time / replay time (independent of
how fast the load was offered). The target is replay >= 8x production.

    python bench/replay.py [--paced-txs N] [--burst-txs N] [--rounds N] [--plot out.png] [--quick]
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

import numpy as np
import trio
from ingest import metric_sum, run_load, start_daemon, submit_frames

import genesis as genesis_tool
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.model import param_count
from mpsnode.consensus.params import Params
from mpsnode.consensus.sigverify import warm_up
from mpsnode.consensus.state import RoundPhase
from mpsnode.consensus.tx import CreateTask, JoinTask, Stake, Transfer, Tx, commit_reveal
from mpsnode.node import collector
from mpsnode.node.connection import Client, connect
from verifier.replay.engine import HomeSource, replay

ARCH = (784, 128, 10)
SAMPLES = 200


TARGET = 8.0  # replay of the whole chain this many times faster than its production


def task_body(rounds: int, clients: int, f: int) -> CreateTask:
    rng = np.random.default_rng(0)
    n = param_count(ARCH)
    weights = rng.integers(-2000, 2000, n).astype("<i4").tobytes()
    val_x = rng.integers(-256, 256, SAMPLES * ARCH[0]).astype("<i2").tobytes()
    val_y = rng.integers(0, ARCH[-1], SAMPLES).astype(np.uint8).tobytes()
    return CreateTask(ARCH, 8, weights, 10_000, rounds, clients, clients, f, 1000, 1000, 10, 1, val_x, val_y)


async def _send(client: Client, stxs: list) -> None:
    results = await client.submit_many(stxs)
    errors = [r for r in results if not isinstance(r, bytes)]
    if errors:
        raise RuntimeError(f"{len(errors)} submits refused: {errors[:2]}")
    for stx in stxs:
        outcome = await client.wait_receipt(stx.tx_id, timeout=120)
        if not outcome.ok:
            raise RuntimeError(f"tx failed: {outcome}")


async def run_task(port: int, g, keys: list, rounds: int, f: int) -> dict:
    """Stake, create, join, then ``rounds`` rounds of updates; returns timings and heights."""
    n = param_count(ARCH)
    rng = np.random.default_rng(1)
    async with connect(("127.0.0.1", port), genesis=g, timeout=30) as client:
        wallets = [Wallet(k, g.chain_id, g.params) for k in keys]
        for w in wallets:
            await w.recover(client)
        user = Wallet(genesis_tool.devnet_key("user"), g.chain_id, g.params)
        await user.recover(client)
        start_height = (await client.status()).height
        create = user.sign(task_body(rounds, len(keys), f))
        await _send(client, [create] + [w.sign(Stake(5000)) for w in wallets])
        task_id = 1  # the chain's first task
        await _send(client, [w.sign(JoinTask(task_id)) for w in wallets])
        t0 = time.perf_counter()
        update_bytes = 0
        for round_ in range(1, rounds + 1):
            task = (await client.task(task_id)).value
            active = set(task.participants)
            base = rng.integers(-60, 60, n)
            pairs = []
            for i, w in enumerate(wallets):
                if w.address not in active:
                    continue
                delta = base + rng.integers(-8, 8, n)
                if round_ == 3 and i == len(wallets) - 1:
                    delta = delta * 40  # a boosted outlier: Krum flags it, the STF slashes it
                d = np.clip(delta, -32768, 32767).astype("<i2").tobytes()
                pairs.append((w, commit_reveal(g.chain_id, task_id, round_, w.address, d, bytes(32))))
            await _send(client, [w.sign(c) for w, (c, _) in pairs])
            with trio.fail_after(120):
                while (await client.task(task_id)).value.phase != RoundPhase.REVEAL:
                    await trio.sleep(0.01)
            stxs = [w.sign(r) for w, (_, r) in pairs]
            update_bytes += sum(s.size for s in stxs)
            await _send(client, stxs)
            with trio.fail_after(120):
                while True:
                    task = (await client.task(task_id)).value
                    if task.rounds_closed >= round_:
                        break
                    await trio.sleep(0.01)
        seconds = time.perf_counter() - t0
        end_height = (await client.status()).height
        return {
            "seconds": seconds,
            "start_height": start_height,
            "end_height": end_height,
            "update_bytes": update_bytes,
            "status": task.status.name,
        }


async def paced_load(port: int, g, txs: list[bytes], rate: float, connections: int = 4) -> dict:
    """Submit ``txs`` at ``rate`` a second (open loop: acks are not waited for), then until none is pending.

    Below the sequencer's capacity, blocks stay small (about ``rate * block_time`` txs), which is
    what makes a chain of many blocks.
    """
    clients: list[Client] = []
    errors: list[str] = []
    async with (
        connect(("127.0.0.1", port), genesis=g) as c0,
        connect(("127.0.0.1", port), genesis=g) as c1,
        connect(("127.0.0.1", port), genesis=g) as c2,
        connect(("127.0.0.1", port), genesis=g) as c3,
    ):
        clients = [c0, c1, c2, c3][:connections]

        async def one(client: Client, raw: bytes) -> None:
            try:
                await client.submit(raw)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i, raw in enumerate(txs):
                await trio.sleep_until(start + i / rate)
                nursery.start_soon(one, clients[i % len(clients)], raw)
        with trio.fail_after(300):
            while (await c0.status()).mempool_txs:
                await trio.sleep(0.005)
    return {"included": len(txs) - len(errors), "errors": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paced-txs", type=int, default=33_000, help="transfers offered at --paced-rate")
    ap.add_argument("--paced-rate", type=float, default=1000.0, help="tx/s offered in the paced phase")
    ap.add_argument("--burst-txs", type=int, default=40_000, help="transfers submitted as fast as possible")
    ap.add_argument("--senders", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--byzantine-f", type=int, default=2)
    ap.add_argument("--block-time-ms", type=int, default=10)
    ap.add_argument("--plot", help="also draw the replayed audit into this PNG")
    ap.add_argument("--keep", action="store_true", help="keep the home directory")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.paced_txs, args.burst_txs, args.senders, args.rounds = 3000, 5000, 200, 5
    home = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    net = genesis_tool.make_network(
        home, clients=max(args.senders, args.clients), devnet_keys=True, params=Params()
    )
    g = net.genesis
    sink = net.keys["treasury"].address
    senders = net.clients[: args.senders]
    total = args.paced_txs + args.burst_txs
    signed: list[bytes] = []  # nonce rounds over the senders: any prefix keeps each sender's order
    for nonce in range(-(-total // len(senders))):
        for key in senders:
            if len(signed) < total:
                signed.append(
                    Tx(g.chain_id, key.address, nonce, g.params.tx_base_fee, Transfer(sink, 1))
                    .sign(key)
                    .encode()
                )
    paced, burst = signed[: args.paced_txs], signed[args.paced_txs :]
    by_conn: list[list[bytes]] = [submit_frames(burst[i::4]) for i in range(4)]
    proc, port, metrics_port = start_daemon(
        home, ["--metrics", "127.0.0.1:0", "--block-time-ms", str(args.block_time_ms)]
    )
    assert metrics_port is not None

    def busy() -> float:
        return metric_sum(metrics_port, "mps_block_build_seconds_sum") + metric_sum(
            metrics_port, "mps_block_commit_seconds_sum"
        )

    async def head() -> int:
        async with connect(("127.0.0.1", port), genesis=g) as client:
            return (await client.status()).height

    phases: list[dict] = []
    try:
        for name, run in (
            ("paced", lambda: paced_load(port, g, paced, args.paced_rate)),
            ("burst", lambda: run_load(port, g, by_conn, 500, len(burst))),
        ):
            b0, h0, t0 = busy(), trio.run(head), time.perf_counter()
            load = trio.run(run)
            phases.append(
                {
                    "phase": name,
                    "seconds": time.perf_counter() - t0,
                    "busy": busy() - b0,
                    "start": h0,
                    "end": trio.run(head),
                    "txs": load["included"],
                }
            )
        b0 = busy()
        task = trio.run(run_task, port, g, net.clients[: args.clients], args.rounds, args.byzantine_f)
        phases.append(
            {
                "phase": "task",
                "seconds": task["seconds"],
                "busy": busy() - b0,
                "start": task["start_height"],
                "end": task["end_height"],
                "txs": None,
            }
        )
    finally:
        proc.terminate()
        proc.wait(60)

    warm_up()  # the signature kernel's one-time JIT compile (the sequencer did the same at its start)
    marks: dict[int, float] = {}
    source = HomeSource(home)
    try:
        r0 = time.perf_counter()
        ends = {p["end"] for p in phases} | {p["start"] for p in phases}

        def on_block(header) -> None:
            if header.height in ends:
                marks[header.height] = time.perf_counter() - r0

        with collector.tuned():  # the collector as `mpsnode replay` sets it (mpsnode.node.collector)
            outcome = replay(source, progress=False, on_block=on_block)
    finally:
        source.close()
    if not outcome.ok:
        raise SystemExit(f"replay diverged: {json.dumps(outcome.report)[:2000]}")
    if args.plot:
        from verifier.replay.plot import plot_audit

        targets = {
            t.task_id: t.target_accuracy_bps
            for t in outcome.audit.tasks.values()
            if t.target_accuracy_bps is not None
        }
        plot_audit(outcome.audit, args.plot, targets)
    audit_task = outcome.audit.tasks.get(1)
    rounds_closed = len(audit_task.rounds) if audit_task else 0
    slashes = sum(len(r.slashed) for r in audit_task.rounds) if audit_task else 0

    common = {"cores": os.cpu_count(), "block_time_ms": args.block_time_ms}
    for p in phases:
        blocks = p["end"] - p["start"]
        replay_s = marks.get(p["end"], 0.0) - marks.get(p["start"], 0.0)
        out = {
            "bench": f"replay_{p['phase']}",
            "blocks": blocks,
            "production_s": round(p["seconds"], 2),
            "production_blocks_per_s": round(blocks / p["seconds"], 1),
            "sequencer_build_commit_s": round(p["busy"], 2),
            "replay_s": round(replay_s, 2),
            "replay_blocks_per_s": round(blocks / replay_s, 1),
            "ratio": round(p["seconds"] / replay_s, 2),
            "ratio_vs_sequencer_busy": round(p["busy"] / replay_s, 2),
        }
        if p["txs"] is not None:
            out.update(
                txs=p["txs"],
                production_tx_per_s=round(p["txs"] / p["seconds"], 1),
                replay_tx_per_s=round(p["txs"] / replay_s, 1),
            )
        else:
            out.update(
                params=param_count(ARCH),
                clients=args.clients,
                rounds=rounds_closed,
                slashes=slashes,
                update_mb=round(task["update_bytes"] / 1e6, 1),
                task_status=task["status"],
                production_rounds_per_s=round(rounds_closed / p["seconds"], 2),
                replay_rounds_per_s=round(rounds_closed / replay_s, 2),
            )
        if p["phase"] == "paced":
            out["offered_tx_per_s"] = args.paced_rate
        print(json.dumps({**out, **common}))
    produced = sum(p["seconds"] for p in phases)
    busy_total = sum(p["busy"] for p in phases)
    replay_total = marks.get(phases[-1]["end"], 0.0) - marks.get(phases[0]["start"], 0.0)
    ratio = produced / replay_total
    print(
        json.dumps(
            {
                "bench": "replay_vs_production",
                "blocks": outcome.blocks,
                "txs": outcome.txs,
                "production_s": round(produced, 2),
                "sequencer_build_commit_s": round(busy_total, 2),
                "replay_s": round(replay_total, 2),
                "replay_whole_chain_s": round(outcome.seconds, 2),
                "production_blocks_per_s": round(outcome.blocks / produced, 1),
                "replay_blocks_per_s": round(outcome.blocks / replay_total, 1),
                "ratio": round(ratio, 2),
                "ratio_vs_sequencer_busy": round(busy_total / replay_total, 2),
                "target": TARGET,
                "meets_target": ratio >= TARGET,
                **common,
            }
        )
    )
    if args.keep:
        print(json.dumps({"home": str(home)}), file=sys.stderr)
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
