"""``mpsnode sequencer``, ``mpsnode tx ...`` and ``mpsnode query ...``: the daemon and its clients.

Every command that talks to a node takes ``--node HOST:PORT`` (default: the home's listen
address) and ``--home DIR`` or ``--genesis FILE`` to know the chain (without either, the node's
genesis is fetched and trusted on first use). Output is human-readable; ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import trio

from mpsnode.cli.common import (
    parse_address,
    parse_hex32,
    parse_l1_address,
    print_fields,
    resolve_node,
    server_options,
    signer_key,
)
from mpsnode.cli.parsers import AGGREGATORS
from mpsnode.client.preflight import preflight
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.events import TaskExpired
from mpsnode.consensus.hashing import H
from mpsnode.consensus.limits import MIN_SCORED_UPDATES
from mpsnode.consensus.state import RoundPhase, Task, TaskStatus
from mpsnode.consensus.stf.task import EXPIRED_NOT_ENOUGH_CLIENTS, EXPIRED_TOO_FEW_PARTICIPANTS
from mpsnode.consensus.tx import (
    Body,
    CreateTask,
    JoinTask,
    SignedTx,
    Stake,
    Transfer,
    Unstake,
    Withdraw,
    commit_reveal,
)
from mpsnode.fl.data import load_array, load_arrays
from mpsnode.node.connection import Client, Proven, connect
from mpsnode.node.errors import NotFound, WouldFail
from mpsnode.node.home import Home
from mpsnode.node.inspect import account_fields, event_json, task_fields, tx_fields
from sequencer.daemon import L1Options, run_daemon

# ---------------------------------------------------------------------------------------------
# sequencer


EXIT_FAILED = 1  # the tx was included with a failed effect, or dropped


def cmd_sequencer(args: argparse.Namespace) -> int:
    return run_daemon(
        args.home,
        listen=args.listen,
        metrics=args.metrics,
        http=args.http,
        block_time_ms=args.block_time_ms,
        server=server_options(args),
        l1=L1Options(
            args.l1,
            args.l1_key,
            args.l1_confirmations,
            args.output_blocks,
            args.output_seconds,
            args.evaluation_dishonest,
        ),
    )


def _run(
    fn: Callable[[Client, argparse.Namespace], Awaitable[dict[str, Any]]], args: argparse.Namespace
) -> int:
    genesis, node, _ = resolve_node(args)

    async def main() -> dict[str, Any]:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            return await fn(client, args)

    print_fields(trio.run(main), args.json)
    return 0


# ---------------------------------------------------------------------------------------------
# tx


def _salt(args: argparse.Namespace) -> bytes:
    if args.salt is None:
        return secrets.token_bytes(32)
    return parse_hex32(args.salt, f"--salt must be 32 bytes as 64 hex digits, got {args.salt!r}")


def _body(args: argparse.Namespace, home: Home | None, chain_id: str, sender: bytes) -> Body:
    kind = args.tx_cmd
    if kind == "transfer":
        return Transfer(parse_address(args.to, home), args.amount)
    if kind == "stake":
        return Stake(args.amount)
    if kind == "unstake":
        return Unstake(args.amount)
    if kind == "withdraw":
        return Withdraw(parse_l1_address(args.to), args.amount)
    if kind == "join":
        return JoinTask(args.task)
    if kind in ("commit-update", "reveal-update"):
        if args.delta:
            delta = load_array(args.delta, "--delta").astype("<i2").tobytes()
        else:
            rng = np.random.default_rng(args.random_delta)
            delta = rng.integers(-args.scale, args.scale, args.params, dtype=np.int16).astype("<i2").tobytes()
        commit, reveal = commit_reveal(chain_id, args.task, args.round, sender, delta, args.salt_bytes)
        return commit if kind == "commit-update" else reveal
    if kind == "create-task":
        return _create_task(args)
    raise ValueError(f"unknown tx kind {kind}")


def _create_task(args: argparse.Namespace) -> CreateTask:
    arch = tuple(int(w) for w in args.arch.split(","))
    n_params = sum(arch[i] * arch[i + 1] + arch[i + 1] for i in range(len(arch) - 1))
    rng = np.random.default_rng(args.seed)
    if args.init:
        weights = load_array(args.init, "--init").astype("<i4").tobytes()
    else:
        weights = rng.integers(-args.init_scale, args.init_scale, n_params).astype("<i4").tobytes()
    if args.val:
        data = load_arrays(args.val, "--val", ("x", "y"))
        val_x, val_y = data["x"].astype("<i2").tobytes(), data["y"].astype(np.uint8).tobytes()
    else:
        val_x = rng.integers(-256, 256, args.samples * arch[0]).astype("<i2").tobytes()
        val_y = rng.integers(0, arch[-1], args.samples).astype(np.uint8).tobytes()
    return CreateTask(
        arch,
        args.scale_bits,
        weights,
        args.target_bps,
        args.max_rounds,
        args.min_clients,
        args.max_clients,
        args.byzantine_f,
        args.join_blocks,
        args.round_blocks,
        args.fee_per_round,
        args.local_epochs,
        val_x,
        val_y,
        AGGREGATORS[args.aggregator],
    )


def cmd_tx(args: argparse.Namespace) -> int:
    """Sign, check, submit and (by default) wait: exit 0 when the tx did what it asked, 1 when it was
    included with a failed effect or dropped, 2 when it was not sent (it would fail, or bad input)."""
    genesis, node, home = resolve_node(args)
    key = signer_key(args, home)
    if args.tx_cmd in ("commit-update", "reveal-update"):
        args.salt_bytes = _salt(args)
    if genesis is not None:  # bad input is refused before connecting
        _body(args, home, genesis.chain_id, key.address)

    async def send() -> tuple[int, dict[str, Any]]:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            body = _body(args, home, client.chain_id, key.address)
            wallet = Wallet(key, client.chain_id, client.params)
            if args.nonce is not None:
                wallet.next_nonce = args.nonce
            else:
                await wallet.recover(client)
            stx = wallet.sign(body, args.fee)
            if not args.force:
                await _check_before_sending(client, stx)
            tx_id = await wallet.submit(client, stx)
            out: dict[str, Any] = {
                "tx_id": tx_id.hex(),
                "kind": stx.tx.kind.name,
                "sender": key.address.hex(),
                "nonce": stx.tx.nonce,
                "fee": stx.tx.fee,
                "size": stx.size,
                "state": "accepted",
            }
            if args.tx_cmd == "commit-update":
                out["salt"] = args.salt_bytes.hex()  # reveal-update needs it: keep it
            if not args.wait:
                return 0, out
            outcome = await client.wait_receipt(tx_id, timeout=args.timeout)
            out.update(_outcome_json(outcome))
            return (0 if outcome.ok else EXIT_FAILED), out

    code, out = trio.run(send)
    print_fields(out, args.json)
    if code:
        why = out.get("status") if out.get("state") == "included" else f"dropped: {out.get('reason', '')}"
        print(f"mpsnode: the {out['kind']} failed ({why}); its fee is spent", file=sys.stderr)
    return code


def cmd_tx_pending(args: argparse.Namespace) -> int:
    """The signer's pending txs (waiting = behind a nonce gap); ``--drop TXID`` drops a waiting one."""
    genesis, node, home = resolve_node(args)
    key = signer_key(args, home)

    async def main() -> dict[str, Any]:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            if args.drop:
                tx_id = parse_hex32(args.drop, f"--drop {args.drop!r}: a tx id is 64 hex digits")
                await client.drop_pending(tx_id, key)
            txs = await client.pending(key.address)
            out: dict[str, Any] = {
                "address": key.address.hex(),
                **({"dropped": args.drop} if args.drop else {}),
            }
            out["pending"] = [
                {
                    "tx_id": p.tx_id.hex(),
                    "nonce": p.nonce,
                    "fee": p.fee,
                    "state": "waiting behind a nonce gap" if p.waiting else "next in line",
                }
                for p in txs
            ]
            return out

    print_fields(trio.run(main), args.json)
    return 0


async def _check_before_sending(client: Client, stx: SignedTx) -> None:
    """Refuse a tx that cannot do what it asks (``WouldFail``): a nonce gap, or a failure the chain's
    rules foresee on the proven head state (``client.preflight``)."""
    info = await client.nonce(stx.tx.sender)
    if stx.tx.nonce > info.next_nonce:
        raise WouldFail(
            f"nonce {stx.tx.nonce} leaves a gap: the next free nonce is {info.next_nonce}, and the tx would wait "
            f"until nonces {info.next_nonce}..{stx.tx.nonce - 1} are used; nothing was sent (--force sends it)"
        )
    forecast = await preflight(client, stx)
    # an invalid tx (nonce, fee) costs nothing: the node refuses it with its own reason
    problem = forecast.failure if forecast is not None else None
    if problem is not None:
        raise WouldFail(
            f"the {stx.tx.kind.name} would fail: {type(problem).__name__}: {problem.reason}; nothing was sent "
            "(--force sends it anyway)"
        )


def _outcome_json(outcome: Any) -> dict[str, Any]:
    out = outcome.to_json()
    receipt = out.pop("receipt", None)
    if receipt is not None:
        out["status"] = receipt["status_name"]
        out["fee_paid"] = receipt["fee_paid"]
        out["events"] = [event_json(e) for e in outcome.receipt.events]
    return out


# ---------------------------------------------------------------------------------------------
# query


async def _query(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    what = args.query_cmd
    if what == "status":
        return (await client.status()).to_json()
    if what == "account":
        address = parse_address(args.address, Home.open(args.home) if args.home else None)
        proven: Proven = await client.account(address)
        acct = proven.value
        nonce = await client.nonce(address)
        return {
            **account_fields(address, acct),
            "pending_txs": nonce.pending,
            "next_nonce": nonce.next_nonce,
            "proven_at_height": proven.height,
            "state_root": proven.header.state_root.hex(),
        }
    if what == "task":
        proven = await client.task(args.task_id)
        task = proven.value
        if task is None:
            raise NotFound(f"no task {args.task_id} at height {proven.height}")
        out = {**task_fields(task), "proven_at_height": proven.height}
        out.update(await _task_progress(client, task, proven.height))
        if args.model:
            model = await client.model(args.task_id)
            _, weights = model.value
            out["model_hash"] = H(b"mps-model", weights).hex()
            out["model_params"] = len(weights) // 4
            if args.model_out:
                np.save(args.model_out, np.frombuffer(weights, dtype="<i4"))
                out["model_file"] = args.model_out
        return out
    if what == "block":
        header, block, receipts = await client.block(args.height)
        out = header.to_json()
        if block is not None:
            out["txs"] = [tx_fields(t) for t in block.txs]
            out["receipts"] = [r.to_json() for r in receipts]
        return out
    if what == "receipt":
        tx_id = bytes.fromhex(args.tx_id)
        if len(tx_id) != 32:
            raise ValueError("a tx id is 64 hex digits")
        outcome = (
            await client.wait_receipt(tx_id, timeout=args.timeout)
            if args.wait
            else await client.receipt(tx_id)
        )
        return _outcome_json(outcome)
    if what == "events":
        if args.task is not None:
            items = await client.events(task_id=args.task, start=args.start, count=args.count)
        else:
            items = await client.events(height=args.height, count=args.count)
        return {"blocks": [{"height": h, "events": [event_json(e) for e in evs]} for h, evs in items]}
    raise ValueError(f"unknown query {what}")


async def _task_progress(client: Client, task: Task, height: int) -> dict[str, Any]:
    """Where the task stands in words: what it waits for and how many blocks are left, or why it ended."""
    if task.status == TaskStatus.JOINING:
        left = task.join_deadline - height
        return {
            "waiting": f"{len(task.participants)} of min {task.min_clients} clients joined; "
            f"{max(0, left)} blocks left to join (block {task.join_deadline})"
        }
    if task.status == TaskStatus.ACTIVE:
        left = task.round_deadline - height
        void = task.rounds_closed - task.billed_rounds
        note = f"; {void} void rounds so far (fewer than {MIN_SCORED_UPDATES} updates)" if void else ""
        if task.phase == RoundPhase.COMMIT:
            doing = f"commit phase, {len(task.committed)} of {len(task.participants)} committed"
        else:
            doing = f"reveal phase, {len(task.submitted)} of {len(task.committed)} committers revealed"
        return {
            "waiting": f"round {task.round}: {doing}; "
            f"{max(0, left)} blocks left in the phase (block {task.round_deadline}){note}"
        }
    if task.status == TaskStatus.EXPIRED:
        for _, events in await client.events(task_id=task.task_id, start=0, count=1000):
            for ev in events:
                if isinstance(ev, TaskExpired) and ev.task_id == task.task_id:
                    if ev.reason == EXPIRED_NOT_ENOUGH_CLIENTS:
                        why = (
                            f"only {len(task.participants)} of min {task.min_clients} clients joined by "
                            f"block {task.join_deadline}"
                        )
                    elif ev.reason == EXPIRED_TOO_FEW_PARTICIPANTS:
                        why = (
                            f"after {ev.rounds} rounds only {len(task.participants)} participants were left "
                            f"({task.removed} removed), fewer than the {MIN_SCORED_UPDATES} a round needs"
                        )
                    else:
                        why = f"{ev.rounds} rounds without reaching the target"
                    return {"expired": f"{why}; the escrow was refunded to the creator"}
    return {}


def cmd_query(args: argparse.Namespace) -> int:
    if args.query_cmd == "events" and (args.task is None) == (args.height is None):
        raise ValueError("say which events: --height H (blocks from H on) or --task ID (one task's)")
    return _run(_query, args)
