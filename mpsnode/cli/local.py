"""Commands that need no node: ``init``, ``keys``, ``inspect`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import genesis
from mpsnode.cli.common import print_fields
from mpsnode.demo.options import DemoOptions
from mpsnode.demo.run import run_demo
from mpsnode.fl.data import parse_alpha
from mpsnode.node.files import generate_key, load_key, save_key
from mpsnode.node.inspect import inspect


def cmd_init(args: argparse.Namespace) -> int:
    net = genesis.make_network(
        args.home, clients=args.clients, chain_id=args.chain_id, devnet_keys=args.devnet
    )
    g = net.genesis
    print_fields(
        {
            "home": str(net.home),
            "chain_id": g.chain_id,
            "genesis_hash": g.hash().hex(),
            "state_root": g.state_root().hex(),
            "sequencer": g.sequencer.hex(),
            "clients": len(net.clients),
            "keys": str(net.home / "keys"),
        },
        args.json,
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_cmd == "new":
        key = generate_key()
        if args.out:
            if Path(args.out).exists():
                raise SystemExit(f"mpsnode: {args.out} exists; refusing to overwrite a key")
            save_key(args.out, key)
        if args.out:
            print_fields({"address": key.address.hex(), "file": args.out}, args.json)
        else:  # nowhere to keep it: show the secret once, and say what it is
            print_fields({"address": key.address.hex(), "seed": key.seed.hex()}, args.json)
            print(
                "mpsnode: this key is not saved anywhere: the seed above is its secret; keep it safe, or use "
                "--out FILE next time",
                file=sys.stderr,
            )
    else:
        key = load_key(args.file)
        print_fields({"address": key.address.hex(), "file": args.file}, args.json)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    print_fields(inspect(args.home, args.what), args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        alpha = parse_alpha(args.alpha)
    except ValueError as exc:
        print(f"mpsnode demo: {exc}", file=sys.stderr)
        return 2
    opts = DemoOptions(
        clients=args.clients,
        malicious=args.malicious,
        attack=args.attack,
        alpha=alpha,
        target=args.target,
        max_rounds=args.max_rounds,
        seed=args.seed,
        home=args.home,
        byzantine_f=args.byzantine_f,
        plot=args.plot,
    )
    return run_demo(opts)
