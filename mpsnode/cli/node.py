"""``mpsnode sequencer``, ``mpsnode tx ...`` and ``mpsnode query ...``: the daemon and its clients.

Every command that talks to a node takes ``--node HOST:PORT`` (default: the home's listen
address) and ``--home DIR`` or ``--genesis FILE`` to know the chain (without either, the node's
genesis is fetched and trusted on first use). Output is human-readable; ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import trio

from mpsnode.cli.main import print_fields
from mpsnode.client.connection import Client, Proven, Wallet, connect
from mpsnode.consensus import crypto
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.hashing import H
from mpsnode.consensus.tx import Body, CreateTask, JoinTask, Stake, SubmitUpdate, Transfer, Unstake
from mpsnode.node.files import load_genesis, load_key
from mpsnode.node.home import Home

# ---------------------------------------------------------------------------------------------
# sequencer


def cmd_sequencer(args: argparse.Namespace) -> int:
    from sequencer.daemon import run_daemon

    return run_daemon(args.home, listen=args.listen, metrics=args.metrics, block_time_ms=args.block_time_ms,
                      server=server_options(args))


def add_server_arguments(sp: argparse.ArgumentParser) -> None:
    """The daemon flags that override ``mpsnode.server.ServerConfig`` (``SERVER_FLAGS``)."""
    sp.add_argument("--max-connections", type=int, default=None)
    sp.add_argument("--handshake-timeout", type=float, default=None)
    sp.add_argument("--frame-timeout", type=float, default=None)
    sp.add_argument("--slow-peer-timeout", type=float, default=None)
    sp.add_argument("--outbox-bytes", type=int, default=None)


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerConfig`` overrides given on the command line."""
    from mpsnode.node.server import SERVER_FLAGS

    return {name: getattr(args, name) for name in SERVER_FLAGS if getattr(args, name) is not None}


# ---------------------------------------------------------------------------------------------
# shared


def _chain(args: argparse.Namespace) -> tuple[Genesis | None, str]:
    genesis = None
    node = args.node
    if args.genesis:
        genesis = load_genesis(args.genesis)
    if args.home:
        home = Home.open(args.home)
        genesis = genesis or home.genesis()
        node = node or home.listen
    return genesis, node or "127.0.0.1:7070"


def _key(args: argparse.Namespace) -> crypto.Keypair:
    if args.key:
        return load_key(args.key)
    if args.home and args.sender:
        return load_key(Home.open(args.home).key_path(args.sender))
    raise ValueError("say who signs: --key FILE, or --home DIR with --from NAME (a key in DIR/keys/)")


def _address(text: str, args: argparse.Namespace) -> bytes:
    """A hex address, or the name of a key in the home."""
    try:
        return crypto.parse_address(text)
    except ValueError:
        if args.home and (Home.open(args.home).key_path(text)).is_file():
            return load_key(Home.open(args.home).key_path(text)).address
        raise


def _run(fn: Any, args: argparse.Namespace) -> int:
    genesis, node = _chain(args)

    async def main() -> Any:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            return await fn(client, args)

    result = trio.run(main)
    print_fields(result, args.json)
    return 0


# ---------------------------------------------------------------------------------------------
# tx


def _body(args: argparse.Namespace) -> Body:
    kind = args.tx_cmd
    if kind == "transfer":
        return Transfer(_address(args.to, args), args.amount)
    if kind == "stake":
        return Stake(args.amount)
    if kind == "unstake":
        return Unstake(args.amount)
    if kind == "join":
        return JoinTask(args.task)
    if kind == "submit-update":
        if args.delta:
            delta = np.load(args.delta).astype("<i2").tobytes()
        else:
            rng = np.random.default_rng(args.random_delta)
            delta = rng.integers(-args.scale, args.scale, args.params, dtype=np.int16).astype("<i2").tobytes()
        return SubmitUpdate(args.task, args.round, delta)
    if kind == "create-task":
        return _create_task(args)
    raise ValueError(f"unknown tx kind {kind}")


def _create_task(args: argparse.Namespace) -> CreateTask:
    arch = tuple(int(w) for w in args.arch.split(","))
    n_params = sum(arch[i] * arch[i + 1] + arch[i + 1] for i in range(len(arch) - 1))
    rng = np.random.default_rng(args.seed)
    if args.init:
        weights = np.load(args.init).astype("<i4").tobytes()
    else:
        weights = rng.integers(-args.init_scale, args.init_scale, n_params).astype("<i4").tobytes()
    if args.val:
        data = np.load(args.val)
        val_x, val_y = data["x"].astype("<i2").tobytes(), data["y"].astype(np.uint8).tobytes()
    else:
        val_x = rng.integers(-256, 256, args.samples * arch[0]).astype("<i2").tobytes()
        val_y = rng.integers(0, arch[-1], args.samples).astype(np.uint8).tobytes()
    return CreateTask(arch, args.scale_bits, weights, args.target_bps, args.max_rounds, args.min_clients,
                      args.max_clients, args.byzantine_f, args.join_blocks, args.round_blocks, args.fee_per_round,
                      args.local_epochs, val_x, val_y)


def cmd_tx(args: argparse.Namespace) -> int:
    key = _key(args)
    body = _body(args)

    async def send(client: Client, args: argparse.Namespace) -> dict[str, Any]:
        wallet = Wallet(key, client.chain_id, client.params)
        if args.nonce is not None:
            wallet.next_nonce = args.nonce
        else:
            await wallet.recover(client)
        stx = wallet.sign(body, args.fee)
        tx_id = await wallet.submit(client, stx)
        out: dict[str, Any] = {"tx_id": tx_id.hex(), "kind": stx.tx.kind.name, "sender": key.address.hex(),
                               "nonce": stx.tx.nonce, "fee": stx.tx.fee, "size": stx.size, "state": "accepted"}
        if args.wait:
            outcome = await client.wait_receipt(tx_id, timeout=args.timeout)
            out.update(_outcome_json(outcome))
        return out

    return _run(send, args)


def _outcome_json(outcome: Any) -> dict[str, Any]:
    out = outcome.to_json()
    receipt = out.pop("receipt", None)
    if receipt is not None:
        out["status"] = receipt["status_name"]
        out["fee_paid"] = receipt["fee_paid"]
        out["events"] = receipt["events"]
    return out


# ---------------------------------------------------------------------------------------------
# query


async def _query(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    what = args.query_cmd
    if what == "status":
        return (await client.status()).to_json()
    if what == "account":
        address = _address(args.address, args)
        proven: Proven = await client.account(address)
        acct = proven.value
        nonce = await client.nonce(address)
        return {"address": address.hex(), "balance": acct.balance, "nonce": acct.nonce, "bonded": acct.bonded,
                "unbonding": [[u.amount, u.release_height] for u in acct.unbonding], "jailed": acct.jailed,
                "tasks": list(acct.tasks), "pending_txs": nonce.pending, "next_nonce": nonce.next_nonce,
                "proven_at_height": proven.height, "state_root": proven.header.state_root.hex()}
    if what == "task":
        proven = await client.task(args.task_id)
        task = proven.value
        if task is None:
            from mpsnode.node.errors import NotFound

            raise NotFound(f"no task {args.task_id} at height {proven.height}")
        out = {"task_id": task.task_id, "status": task.status.name, "creator": task.creator.hex(),
               "arch": list(task.arch), "scale_bits": task.scale_bits, "target_accuracy_bps": task.target_accuracy_bps,
               "round": task.round, "round_deadline": task.round_deadline, "rounds_closed": task.rounds_closed,
               "max_rounds": task.max_rounds, "min_clients": task.min_clients, "max_clients": task.max_clients,
               "byzantine_f": task.byzantine_f, "participants": [a.hex() for a in task.participants],
               "submitted": [a.hex() for a in task.submitted], "escrow": task.escrow,
               "accuracy_bps": task.accuracy_bps, "proven_at_height": proven.height}
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
            out["txs"] = [{"tx_id": t.tx_id.hex(), "kind": t.tx.kind.name, "sender": t.tx.sender.hex(),
                           "nonce": t.tx.nonce, "fee": t.tx.fee, "size": t.size} for t in block.txs]
            out["receipts"] = [r.to_json() for r in receipts]
        return out
    if what == "receipt":
        tx_id = bytes.fromhex(args.tx_id)
        if len(tx_id) != 32:
            raise ValueError("a tx id is 64 hex digits")
        outcome = (await client.wait_receipt(tx_id, timeout=args.timeout) if args.wait
                   else await client.receipt(tx_id))
        return _outcome_json(outcome)
    if what == "events":
        if args.task is not None:
            items = await client.events(task_id=args.task, start=args.start, count=args.count)
        else:
            items = await client.events(height=args.height if args.height is not None else 1, count=args.count)
        return {"blocks": [{"height": h, "events": [e.to_json() for e in evs]} for h, evs in items]}
    raise ValueError(f"unknown query {what}")


def cmd_query(args: argparse.Namespace) -> int:
    return _run(_query, args)


# ---------------------------------------------------------------------------------------------
# parsers


def _add_node(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--home", help="node home: genesis.json, keys/ and the default --node")
    sp.add_argument("--genesis", help="genesis.json of the chain (default: the home's)")
    sp.add_argument("--node", help="HOST:PORT of the node (default: the home's listen address)")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (connect, receipt)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")


def add_parsers(sub: Any) -> None:
    sp = sub.add_parser("sequencer", help="run the sequencer daemon")
    sp.add_argument("--home", required=True)
    sp.add_argument("--listen", help="HOST:PORT to serve the wire protocol on (default: config.toml)")
    sp.add_argument("--metrics", help="HOST:PORT for Prometheus metrics (default: config.toml, or none)")
    sp.add_argument("--block-time-ms", type=int, default=None, help="override the genesis block time")
    add_server_arguments(sp)
    sp.set_defaults(func=cmd_sequencer)

    sp = sub.add_parser("tx", help="sign and submit a transaction")
    ts = sp.add_subparsers(dest="tx_cmd", required=True)

    def tx_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = ts.add_parser(name, help=help_text)
        _add_node(p)
        p.add_argument("--from", dest="sender", help="key name in the home's keys/ (e.g. user, client-0)")
        p.add_argument("--key", help="key file that signs")
        p.add_argument("--fee", type=int, default=None, help="fee (default: the minimum for the size)")
        p.add_argument("--nonce", type=int, default=None, help="nonce (default: the node's next free one)")
        p.add_argument("--wait", action="store_true", help="wait for the receipt")
        p.set_defaults(func=cmd_tx)
        return p

    p = tx_parser("transfer", "move balance")
    p.add_argument("--to", required=True, help="address (hex) or key name")
    p.add_argument("--amount", type=int, required=True)
    for name, text in (("stake", "bond balance"), ("unstake", "start unbonding")):
        p = tx_parser(name, text)
        p.add_argument("--amount", type=int, required=True)
    p = tx_parser("join", "join a task")
    p.add_argument("--task", type=int, required=True)
    p = tx_parser("submit-update", "submit a model update (int16 delta)")
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--round", type=int, required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--delta", help=".npy file of the delta (cast to int16)")
    g.add_argument("--random-delta", type=int, metavar="SEED", help="a random delta (for testing)")
    p.add_argument("--params", type=int, default=0, help="parameter count for --random-delta")
    p.add_argument("--scale", type=int, default=100, help="magnitude for --random-delta")
    p = tx_parser("create-task", "ask for a model")
    p.add_argument("--arch", required=True, help="layer widths, e.g. 8,6,3")
    p.add_argument("--scale-bits", type=int, default=8)
    p.add_argument("--init", help=".npy of the initial weights (int32); default random")
    p.add_argument("--init-scale", type=int, default=200)
    p.add_argument("--val", help=".npz with x (int16, samples x in) and y (uint8); default random")
    p.add_argument("--samples", type=int, default=20, help="random validation samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-bps", type=int, default=9000)
    p.add_argument("--max-rounds", type=int, default=10)
    p.add_argument("--min-clients", type=int, default=5)
    p.add_argument("--max-clients", type=int, default=10)
    p.add_argument("--byzantine-f", type=int, default=1)
    p.add_argument("--join-blocks", type=int, default=10)
    p.add_argument("--round-blocks", type=int, default=10)
    p.add_argument("--fee-per-round", type=int, default=100)
    p.add_argument("--local-epochs", type=int, default=1)

    sp = sub.add_parser("query", help="read from a node (state answers are proven)")
    qs = sp.add_subparsers(dest="query_cmd", required=True)
    p = qs.add_parser("status")
    _add_node(p)
    p = qs.add_parser("account")
    _add_node(p)
    p.add_argument("address", help="address (hex) or key name")
    p = qs.add_parser("task")
    _add_node(p)
    p.add_argument("task_id", type=int)
    p.add_argument("--model", action="store_true", help="also fetch and prove the global model")
    p.add_argument("--model-out", help="write the model to this .npy file")
    p = qs.add_parser("block")
    _add_node(p)
    p.add_argument("height", type=int)
    p = qs.add_parser("receipt")
    _add_node(p)
    p.add_argument("tx_id")
    p.add_argument("--wait", action="store_true", help="wait until included or dropped")
    p = qs.add_parser("events")
    _add_node(p)
    p.add_argument("--height", type=int, default=None, help="events of blocks from this height")
    p.add_argument("--task", type=int, default=None, help="events of this task")
    p.add_argument("--start", type=int, default=0, help="with --task: from this height")
    p.add_argument("--count", type=int, default=100)
    sp.set_defaults(func=cmd_query)
    for p in qs.choices.values():
        p.set_defaults(func=cmd_query)

