"""``mpsnode demo``: a real network trains a digits classifier while attackers try to poison it.

What runs, all on 127.0.0.1 with free ports:

* a devnet home (a new temporary directory, or ``--home``): genesis, keys, config;
* the sequencer daemon (``mpsnode sequencer``) and a verifier daemon (``mpsnode verifier``) that
  follows it, each a separate process, logging to ``HOME/logs/``;
* the user, who creates the task over the wire: train the 64-32-10 MLP on scikit-learn's bundled
  digits to the target accuracy within ``max_rounds``, judged on a held-back validation set;
* the clients, each running the client daemon's code (``mpsnode.client.daemon.run_client``, exactly what
  ``mpsnode client run`` runs) on its own Dirichlet shard of the digits: stake, join, and each
  round fetch the proven global model, train, commit, then reveal. ``--malicious`` of them attack instead
  (``mpsnode.fl.attacks``, evaluation only).

The clients run as trio tasks inside the demo process, each with its own connection, wallet and
journal: ten Python processes would each pay about a second of imports and their own numba and
numpy start-up on a 2-core machine, while the training itself (a few milliseconds per round
for a 2410-parameter model) is not worth a process. The nodes, whose separation is the point
(the verifier trusts nothing the sequencer says), are separate processes.

While rounds close, one line per round (accuracy, selected, flagged, slashes) is printed from
the blocks the sequencer pushes, each block's signature and receipts root checked. At the end:
a table per client (honest or attacker, stake before and after, reward), the verifier's verdict
from its own STATUS, a PNG plot (``verifier.replay.plot``) and where the chain is kept for
``mpsnode replay``. Exit code 0 only when the task completed and the verifier agreed; 1 when
either failed; 2 for bad options; 130 when interrupted (Ctrl-C stops every process it started).
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

from genesis import SettlementTerms, make_settled_network
from mpsnode import fl
from mpsnode.client.daemon import ClientConfig, ClientEvent, ClientStopped, run_client
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.errors import MpsError
from mpsnode.consensus.events import (
    RoundClosed,
    Slashed,
    Staked,
    TaskCompleted,
    TaskCreated,
    TaskExpired,
    TaskStarted,
)
from mpsnode.consensus.receipt import receipts_root
from mpsnode.demo.options import DemoOptions
from mpsnode.demo.processes import LOCALHOST, DemoFailed, NodeProcess
from mpsnode.demo.report import ClientInfo, DemoOutcome, Progress, print_summary, round_line
from mpsnode.demo.settle import (
    DemoL1,
    challenge_line,
    expose_forgery,
    final_check,
    fund,
    print_settlement,
    withdraw_reward,
)
from mpsnode.fl.attacks import ATTACKS, Attacker
from mpsnode.fl.data import digits_split, learner_seed
from mpsnode.node.connection import Client, ConnectionLost, connect
from mpsnode.node.errors import VerificationFailed
from mpsnode.node.l1.anvil import Anvil, AnvilError
from mpsnode.node.l1.client import L1, L1Error
from verifier.replay.audit import Audit
from verifier.replay.plot import plot_audit

DEMO_STAKE = 10_000_000  # each client bonds 0.01 ETH (units are gwei) before joining
FEE_PER_ROUND = 10_000_000  # the user pays 0.01 ETH per scored round
JOIN_BLOCKS = 150  # 30 s at the devnet's 200 ms blocks for every client to stake and join
ROUND_BLOCKS = 50  # a commit phase ends early when all have committed; this is the deadline for stragglers
LOCAL_EPOCHS = 2
VERIFIER_CATCH_UP = 60.0  # seconds for the verifier to reach the sequencer's final head


async def follow_task(node: Client, progress: Progress, f: int, out: Any) -> None:
    """Print a line per closed round until the task completes or expires, from checked blocks."""

    async with node.subscribe(from_height=1, with_receipts=True) as blocks:
        async for pushed in blocks:
            block = pushed.block()
            header = node.verify_header(block.header.encode(), block.signature)
            receipts = pushed.receipt_list()
            if receipts_root(receipts) != header.receipts_root:
                raise VerificationFailed(
                    f"block {header.height}: receipts do not match the signed receipts root"
                )
            progress.head = header.height
            progress.audit.fold_block(header.height, receipts)
            for staked in (e for r in receipts for e in r.events if isinstance(e, Staked)):
                progress.staked[staked.address] = staked.bonded
            events = [
                e for r in receipts for e in r.events if getattr(e, "task_id", None) == progress.task_id
            ]
            slashes = [e for e in events if isinstance(e, Slashed)]
            for ev in events:
                if isinstance(ev, TaskStarted):
                    progress.status = "active"
                    out(
                        f"  task {progress.task_id} started at block {header.height} with {len(ev.participants)} "
                        f"clients; round 1 is open"
                    )
                elif isinstance(ev, RoundClosed):
                    progress.rounds = ev.round
                    if not ev.void:
                        progress.accuracy_bps = ev.accuracy_bps
                    out(round_line(progress, ev, [s for s in slashes if s.round == ev.round], header.height))
                elif isinstance(ev, TaskCompleted):
                    progress.status = "completed"
                    out(
                        f"  task {progress.task_id} COMPLETED after {ev.rounds} rounds at "
                        f"{ev.accuracy_bps / 100:.2f}%: the user is charged {ev.charged} "
                        f"(protocol fee {ev.protocol_fee}), the clients are paid"
                    )
                elif isinstance(ev, TaskExpired):
                    progress.status = "expired"
                    why = {1: "not enough clients joined", 2: "max rounds reached without the target"}
                    out(
                        f"  task {progress.task_id} EXPIRED after {ev.rounds} rounds: "
                        f"{why.get(ev.reason, ev.reason)}; the escrow is refunded"
                    )
            if progress.status in ("completed", "expired"):
                return


@dataclass
class DemoParts:
    """What one run is made of: the options, the network, the two daemons, the L1, the outcome
    being filled in, and where lines go."""

    opts: DemoOptions
    net: Any
    sequencer: NodeProcess
    verifier: NodeProcess
    l1: DemoL1
    outcome: DemoOutcome
    out: Any


async def drive_until_interrupted(parts: DemoParts) -> None:
    """``drive``, stopped by Ctrl-C (or SIGTERM): the signal arrives as a message to one task, which
    raises KeyboardInterrupt there, instead of being injected wherever the demo happens to run (a
    client's reconnect loop, a connection's reader), so it is never taken for something else."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    raise KeyboardInterrupt

            nursery.start_soon(watch)
            await drive(parts)
            nursery.cancel_scope.cancel()


async def drive(parts: DemoParts) -> None:
    """Fund the L2 from L1, create the task, run the clients and the round monitor, collect the
    results, withdraw a reward to L1, and check both sides."""
    opts, net, sequencer, verifier, outcome, out = (
        parts.opts,
        parts.net,
        parts.sequencer,
        parts.verifier,
        parts.outcome,
        parts.out,
    )
    demo_l1 = parts.l1

    genesis = net.genesis
    split = digits_split(opts.clients, opts.alpha, opts.seed)
    f = opts.f()
    rng = np.random.default_rng(opts.seed)
    attackers = (
        {int(i) for i in rng.choice(opts.clients, opts.malicious, replace=False)} if opts.malicious else set()
    )
    infos = [
        ClientInfo(i, f"client-{i}", net.keys[f"client-{i}"].address, opts.attack if i in attackers else None)
        for i in range(opts.clients)
    ]
    outcome.clients = infos

    async with connect(sequencer.address, genesis=genesis) as node:
        # value comes in from L1: nothing on this chain is a genesis allocation
        addresses = {n: net.keys[n].address for n in ["user", *(c.name for c in infos)]}
        await fund(node, demo_l1, addresses, FEE_PER_ROUND * opts.max_rounds, out)

        # the user asks for a model
        body = fl.create_task_body(
            split.validation,
            target_accuracy_bps=round(opts.target * 10000),
            max_rounds=opts.max_rounds,
            min_clients=opts.clients,
            max_clients=opts.clients,
            byzantine_f=f,
            join_blocks=JOIN_BLOCKS,
            round_blocks=ROUND_BLOCKS,
            fee_per_round=FEE_PER_ROUND,
            local_epochs=LOCAL_EPOCHS,
            seed=opts.seed,
        )
        user = Wallet(net.keys["user"], genesis.chain_id, genesis.params)
        await user.recover(node)
        stx = await user.send(node, body)
        created = await node.wait_receipt(stx.tx_id)
        if not created.ok or created.receipt is None:
            raise DemoFailed(f"CREATE_TASK failed: {created.to_json()}")
        task_id = next(e.task_id for e in created.receipt.events if isinstance(e, TaskCreated))
        out(
            f"  user created task {task_id} at block {created.height}: digits, MLP {'-'.join(map(str, body.arch))}, "
            f"target {opts.target:.0%} within {opts.max_rounds} rounds, f = {f}, escrow "
            f"{FEE_PER_ROUND * opts.max_rounds}; validation set {len(split.validation)} samples (held back)"
        )
        out(
            f"  {opts.clients} clients stake {DEMO_STAKE} and join; each runs what `mpsnode client run --home HOME "
            f"--from client-I --task {task_id} --digits-shard I/{opts.clients} --alpha "
            f"{'iid' if opts.alpha is None else opts.alpha} --seed {opts.seed} --stake {DEMO_STAKE}` runs"
        )
        if attackers:
            out(
                f"  attackers (EVALUATION ONLY, {opts.attack}): "
                f"{', '.join(infos[i].name for i in sorted(attackers))}  (marked * below)"
            )

        progress = Progress(
            task_id,
            {c.address: c.name for c in infos},
            {c.address for c in infos if c.attack},
            Audit(),
            time.monotonic(),
        )
        limiter = trio.CapacityLimiter(2)  # training threads: the machine's cores, not one per client

        def on_event(ev: ClientEvent) -> None:
            if ev.kind in ("disconnected", "reconnected", "resubmitted", "lost", "refused", "late"):
                name = progress.names.get(ev.address, ev.address.hex()[:8])
                out(f"  {name}: {ev.kind} {json.dumps(ev.fields)}")

        async def one_client(info: ClientInfo) -> None:
            config = ClientConfig(
                node=sequencer.address,
                key=net.keys[info.name],
                task_id=task_id,
                data=split.clients[info.index],
                genesis=genesis,
                state_dir=net.home / "clients",
                stake=DEMO_STAKE,
                seed=learner_seed(opts.seed, info.index),
                attacker=(
                    Attacker(
                        info.attack,
                        colluders=max(1, opts.malicious),
                        seed=learner_seed(opts.seed, info.index),
                    )
                    if info.attack
                    else None
                ),
            )
            try:
                info.result = await run_client(config, on_event, limiter)
            except ClientStopped as exc:
                info.error = exc.reason
                out(f"  {info.name} stopped: {exc.reason}")

        async def watch_sequencer(cancel: trio.CancelScope) -> None:
            while sequencer.alive():
                await trio.sleep(0.5)
            out(
                f"  the sequencer exited unexpectedly (code {sequencer.proc.returncode if sequencer.proc else '?'}):"
            )
            out(sequencer.log_tail())
            cancel.cancel()

        async with (
            connect(sequencer.address, genesis=genesis) as monitor_node,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(watch_sequencer, nursery.cancel_scope)
            async with trio.open_nursery() as work:
                work.start_soon(follow_task, monitor_node, progress, f, out)
                for info in infos:
                    work.start_soon(one_client, info)
            nursery.cancel_scope.cancel()
        if progress.status not in ("completed", "expired"):
            raise DemoFailed("the run stopped before the task finished (see above)")
        outcome.task_status, outcome.rounds, outcome.accuracy_bps = (
            progress.status,
            progress.rounds,
            progress.accuracy_bps,
        )

        # the results, from proven state and the checked events
        for info in infos:
            account = (await node.account(info.address)).value
            info.stake_after, info.jailed = account.bonded, account.jailed
        proven_task = await node.task(task_id)
        if proven_task.value is not None:
            progress.audit.describe(task_id, proven_task.value)
        status = await node.status()
        outcome.head_height, outcome.head_hash, outcome.state_root = (
            status.height,
            status.head_hash,
            status.state_root,
        )

    by_address = {c.address: c for c in infos}
    for address, bonded in progress.staked.items():
        if address in by_address:
            by_address[address].stake_before = bonded
    task_audit = progress.audit.tasks.get(task_id)
    if task_audit is not None:
        for r in task_audit.rounds:
            for a in r.selected:
                if a in by_address:
                    by_address[a].selected += 1
            for a in r.participants:
                if a in by_address:
                    by_address[a].units += r.units_of(a)
            for a, amount, _ in r.slashed:
                if a in by_address:
                    by_address[a].slashed += amount
        for a, amount in task_audit.payments.items():
            if a in by_address:
                by_address[a].reward += amount

    # a reward goes back to L1
    async with connect(sequencer.address, genesis=genesis) as node:
        await withdraw_reward(node, demo_l1, genesis, net.keys, infos, out)
        status = await node.status()
        outcome.head_height, outcome.head_hash, outcome.state_root = (
            status.height,
            status.head_hash,
            status.state_root,
        )

    if opts.dishonest_sequencer:
        async with connect(sequencer.address, genesis=genesis) as node:
            await expose_forgery(node, demo_l1, net, out)
            status = await node.status()
            outcome.head_height, outcome.head_hash, outcome.state_root = (
                status.height,
                status.head_hash,
                status.state_root,
            )

    # the verifier's word, then both sides against each other
    outcome.verdict, outcome.verifier_ok = await verifier_verdict(verifier, genesis, outcome)
    if outcome.verifier_ok:
        await trio.to_thread.run_sync(final_check, net.home / "verifier", demo_l1, genesis)

    if opts.plot:
        outcome.plot = plot_audit(
            progress.audit, net.home / "demo.png", {task_id: round(opts.target * 10000)}, progress.names
        )


async def verifier_verdict(verifier: NodeProcess, genesis: Any, outcome: DemoOutcome) -> tuple[str, bool]:
    """Ask the verifier (its own STATUS) whether it re-executed the whole chain and every root matched."""

    target = outcome.head_height
    async with connect(verifier.address, genesis=genesis) as vnode:
        status = await vnode.status()
        with trio.move_on_after(VERIFIER_CATCH_UP):
            while status.verifier is not None and not status.verifier.diverged and status.height < target:
                await trio.sleep(0.2)
                status = await vnode.status()
        v = status.verifier
        if v is None:
            return f"the node at {verifier.address} is not a verifier (kind {status.kind!r})", False
        if v.diverged:
            return (
                f"DIVERGENCE at block {v.divergence_height}: {v.check}: {v.reason} "
                f"(report in {Path(verifier.argv[verifier.argv.index('--home') + 1]) / 'reports'})"
            ), False
        if status.height < target:
            return (
                f"the verifier verified only {status.height} of {target} blocks in {VERIFIER_CATCH_UP:.0f} s",
                False,
            )
        header = await vnode.header(target)
        if header.hash() != outcome.head_hash:
            return (
                f"the verifier's block {target} is {header.hash().hex()[:16]}..., the sequencer's "
                f"{outcome.head_hash.hex()[:16]}..."
            ), False
        return (
            f"{v.blocks_verified} blocks verified, all roots match (block {target} "
            f"{outcome.head_hash.hex()[:16]}..., state root {header.state_root.hex()[:16]}...)"
        ), True


def stop_all(procs: list[NodeProcess], anvil: Anvil) -> None:
    """Stop every daemon, then anvil; a Ctrl-C meanwhile (wherever it lands) kills the one being
    stopped and the stopping goes on, so nothing the demo started outlives it."""
    for stop in [*(p.stop for p in reversed(procs)), anvil.stop]:
        try:
            stop()
        except KeyboardInterrupt:
            for p in procs:
                if p.proc is not None and p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait(15)
            anvil.stop(kill=True)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def run_demo(opts: DemoOptions, out: Any = None) -> int:
    """Run the demo; returns the exit code (see the module docstring)."""

    out = out or (lambda line: print(line, flush=True))
    started = time.monotonic()
    problems = opts.check(ATTACKS)
    if problems:
        for p in problems:
            print(f"mpsnode demo: {p}", file=sys.stderr)
        return 2
    if opts.home is not None:
        root = Path(opts.home).resolve()
        if root.exists() and any(root.iterdir()):
            print(
                f"mpsnode demo: {root} is not empty; give a new or empty --home (the demo creates a new chain)",
                file=sys.stderr,
            )
            return 2
    else:
        root = Path(tempfile.mkdtemp(prefix="mpsnode-demo-"))
    out(
        f"mpsnode demo: {opts.clients} clients ({opts.malicious} attacking with {opts.attack!r}), digits "
        f"{'IID' if opts.alpha is None else f'Dirichlet alpha {opts.alpha}'}, target {opts.target:.0%}, "
        f"at most {opts.max_rounds} rounds, seed {opts.seed}"
    )
    (root / "logs").mkdir(parents=True, exist_ok=True)
    anvil = Anvil(block_time=1, log_path=root / "logs" / "anvil.log")
    try:
        anvil.start(root / "l1")
        terms = SettlementTerms(quorum=2 if opts.dishonest_sequencer else 1)
        net = make_settled_network(
            root, anvil.url, clients=opts.clients, devnet_keys=True, listen=f"{LOCALHOST}:0", terms=terms
        )
    except (AnvilError, L1Error) as exc:
        anvil.stop()
        print(f"mpsnode demo: the devnet L1 did not start: {exc}", file=sys.stderr)
        return 1
    assert net.genesis.l1 is not None
    demo_l1 = DemoL1.open(
        root,
        anvil.url,
        ["user", *(f"client-{i}" for i in range(opts.clients))],
        L1(anvil.url, net.genesis.l1),
    )
    out(
        f"  L1 (anvil, a block a second) on {anvil.url}: portal 0x{net.genesis.l1.portal.hex()}, "
        f"oracle 0x{net.genesis.l1.oracle.hex()}, the sequencer bonded, deposit window "
        f"{net.genesis.l1.deposit_window} blocks"
    )
    out(f"  devnet in {root}  (chain {net.genesis.chain_id}, genesis {net.genesis.hash().hex()[:16]}...)")
    sequencer = NodeProcess(
        "sequencer",
        [
            "sequencer",
            "--home",
            str(root),
            "--listen",
            f"{LOCALHOST}:0",
            "--output-blocks",
            "10",
            "--output-seconds",
            "2",
            *(["--evaluation-dishonest"] if opts.dishonest_sequencer else []),
        ],
        root / "logs" / "sequencer.log",
    )
    outcome = DemoOutcome()
    procs: list[NodeProcess] = []
    code = 1
    reported = False

    def report(code: int) -> int:
        """The summary, the settlement check and the RESULT line; the final exit code."""
        if outcome.clients:
            print_summary(opts, outcome, root, out)
            if demo_l1.settlement is not None:
                settled = print_settlement(demo_l1, out)
            else:
                settled = False
                out("settlement: not checked (the run stopped before the end)")
            if opts.dishonest_sequencer:
                out(challenge_line(demo_l1))
            if code == 0 and not settled:
                code = 1
        out("RESULT: OK" if code == 0 else "RESULT: FAILED (see above)")
        return code

    try:
        procs.append(sequencer)
        sequencer.start()
        out(
            f"  sequencer  pid {sequencer.proc.pid if sequencer.proc else '?'}  listening on {sequencer.address}"
        )
        verifier = NodeProcess(
            "verifier",
            [
                "verifier",
                "--home",
                str(root / "verifier"),
                "--genesis",
                str(root / "genesis.json"),
                "--upstream",
                sequencer.address,
                "--listen",
                f"{LOCALHOST}:0",
                "--l1",
                anvil.url,
                "--l1-key",
                str(root / "keys" / "l1" / "verifier-0.json"),
                "--http",
                f"{LOCALHOST}:0",
            ],
            root / "logs" / "verifier.log",
        )
        procs.append(verifier)
        verifier.start()
        out(
            f"  verifier   pid {verifier.proc.pid if verifier.proc else '?'}  listening on {verifier.address}, "
            f"re-executing every block of {sequencer.address} and comparing every output posted to L1 "
            "(a bonded committee member)"
        )
        explorer = f"http://{LOCALHOST}:{verifier.ready['http_port']}/"
        out(f"  explorer   {explorer}  (the verifier's: open it to follow the task live)")
        if opts.dishonest_sequencer:
            second = NodeProcess(
                "verifier-1",
                [
                    "verifier",
                    "--home",
                    str(root / "verifier-1"),
                    "--genesis",
                    str(root / "genesis.json"),
                    "--upstream",
                    verifier.address,
                    "--listen",
                    f"{LOCALHOST}:0",
                    "--l1",
                    anvil.url,
                    "--l1-key",
                    str(root / "keys" / "l1" / "verifier-1.json"),
                ],
                root / "logs" / "verifier-1.log",
            )
            procs.append(second)
            second.start()
            out(
                f"  verifier-1 pid {second.proc.pid if second.proc else '?'}  following the verifier, a second "
                "committee member (quorum 2)"
            )
            out("  EVALUATION ONLY: the sequencer turns dishonest once a withdrawal is paid on L1")
        trio.run(drive_until_interrupted, DemoParts(opts, net, sequencer, verifier, demo_l1, outcome, out))
        code = 0 if outcome.task_status == "completed" and outcome.verifier_ok else 1
        if opts.dishonest_sequencer and not demo_l1.challenge_ok:
            code = 1
        if opts.keep:
            outcome.seconds = time.monotonic() - started
            code = report(code)
            reported = True
            out(f"--keep: the network stays up (explorer {explorer}); Ctrl-C stops it")
            while all(p.alive() for p in procs):
                time.sleep(0.5)
            out("mpsnode demo: a daemon stopped; stopping the rest")
    except BaseException as exc:  # sorted below; anything unknown is re-raised
        leaves = _leaves(exc)
        if reported and any(isinstance(e, KeyboardInterrupt) for e in leaves):
            out("\nmpsnode demo: stopping the network (--keep)")
        elif any(isinstance(e, KeyboardInterrupt) for e in leaves):
            out("\nmpsnode demo: interrupted; stopping the verifier and the sequencer")
            code = 130
        else:
            known = [
                e
                for e in leaves
                if isinstance(
                    e, (DemoFailed, MpsError, ConnectionLost, OSError, trio.TooSlowError, L1Error, ValueError)
                )
            ]
            if not known or len(known) != len(leaves):
                raise
            for e in known:
                reason = e.reason if isinstance(e, MpsError) else str(e) or type(e).__name__
                out(f"mpsnode demo failed: {type(e).__name__}: {reason}")
            code = 1
    finally:
        stop_all(procs, anvil)
    if reported:
        return code
    outcome.seconds = time.monotonic() - started
    if code == 130:
        out(f"  stopped; what was made so far is in {root}")
        return code
    return report(code)
