"""``mpsnode l1 deposit | prove-withdrawal | status``: the L1 side of settlement (docs/SETTLEMENT.md)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import trio
from eth_account.signers.local import LocalAccount

from mpsnode.cli.common import parse_address, parse_hex32, print_fields, resolve_node
from mpsnode.client import settlement
from mpsnode.consensus.genesis import Genesis
from mpsnode.node.connection import connect
from mpsnode.node.files import load_l1_key
from mpsnode.node.home import Home
from mpsnode.node.l1.anvil import DEVNET_CHAIN_ID, Anvil
from mpsnode.node.l1.client import L1, account


def _l1(args: argparse.Namespace) -> tuple[Genesis, str, Home | None, L1]:
    genesis, node, home = resolve_node(args)
    if genesis is None:
        raise ValueError("say which chain: --home DIR or --genesis FILE (its genesis names the L1 contracts)")
    if genesis.l1 is None:
        raise ValueError(f"chain {genesis.chain_id} settles on no L1 (its genesis names no contracts)")
    url = args.l1 or (home.l1 if home is not None else "")
    if not url:
        raise ValueError('say where the L1 is: --l1 URL (or l1 = "URL" in the home\'s config.toml)')
    return genesis, node, home, L1(url, genesis.l1)


def _payer(args: argparse.Namespace, home: Home | None) -> LocalAccount:
    if args.l1_key:
        return account(load_l1_key(args.l1_key))
    if home is not None and args.l1_from:
        return account(load_l1_key(home.l1_key_path(args.l1_from)))
    raise ValueError(
        "say who pays on L1: --l1-key FILE, or --home DIR with --l1-from NAME (a key in DIR/keys/l1/)"
    )


def cmd_l1_deposit(args: argparse.Namespace) -> int:
    genesis, node, home, l1 = _l1(args)
    payer = _payer(args, home)
    recipient = parse_address(args.to, home)

    async def main() -> dict[str, Any]:
        made = await settlement.deposit(l1, payer, recipient, args.amount)
        out: dict[str, Any] = {"recipient": recipient.hex(), **made.to_json()}
        if args.wait:
            async with connect(node, genesis=genesis, timeout=args.timeout) as client:
                out["credited_at_height"] = await settlement.wait_credited(client, made.index, args.timeout)
        return out

    print_fields(trio.run(main), args.json)
    return 0


def cmd_l1_prove(args: argparse.Namespace) -> int:
    genesis, node, home, l1 = _l1(args)
    payer = _payer(args, home)
    tx_id = parse_hex32(args.tx_id, f"the tx id is 64 hex digits, got {args.tx_id!r}")

    async def main() -> dict[str, Any]:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            return await settlement.prove_withdrawal(client, l1, payer, tx_id, wait=args.wait)

    print_fields(trio.run(main), args.json)
    return 0


def cmd_l1_devnet(args: argparse.Namespace) -> int:
    """anvil in the foreground: one JSON ready line with its URL, until SIGINT or SIGTERM."""
    state = Path(args.state) if args.state else None
    node = Anvil(port=args.port, state=state, block_time=args.block_time or None)
    workdir = state.parent if state is not None else Path(tempfile.mkdtemp(prefix="mpsnode-l1-"))
    node.start(workdir)
    print(
        json.dumps({"ready": True, "url": node.url, "chain_id": DEVNET_CHAIN_ID, "state": args.state}),
        flush=True,
    )
    print(
        f"mpsnode: devnet L1 on {node.url}; `mpsnode init --home DIR --l1 {node.url} --devnet` deploys on it",
        file=sys.stderr,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if node.proc is None or node.proc.poll() is not None:
                print("mpsnode: anvil exited", file=sys.stderr)
                return 1
    finally:
        node.stop()  # anvil writes its state dump on the way out
    return 0


def cmd_l1_status(args: argparse.Namespace) -> int:
    genesis, node, _, l1 = _l1(args)

    async def main() -> dict[str, Any]:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            return await settlement.status(client, l1)

    print_fields(trio.run(main), args.json)
    return 0
