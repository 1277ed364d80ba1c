"""The ``mpsnode`` command line: init, keys, inspect, demo, sequencer, tx, query, verifier, export, replay."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

from mpsnode.consensus.errors import MpsError
from mpsnode.node.files import generate_key, load_key, save_key


def print_fields(obj: Any, as_json: bool) -> None:
    """A flat dict as aligned ``key  value`` lines, or as JSON."""
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=False))
        return
    width = max((len(k) for k in obj), default=0)
    for k, v in obj.items():
        if isinstance(v, (list, dict)):
            v = json.dumps(v)
        print(f"{k:<{width}}  {v}")


# ---------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from genesis import make_network

    net = make_network(args.home, clients=args.clients, chain_id=args.chain_id, devnet_keys=args.devnet)
    g = net.genesis
    print_fields({"home": str(net.home), "chain_id": g.chain_id, "genesis_hash": g.hash().hex(),
            "state_root": g.state_root().hex(), "sequencer": g.sequencer.hex(),
            "clients": len(net.clients), "keys": str(net.home / "keys")}, args.json)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_cmd == "new":
        key = generate_key()
        if args.out:
            if Path(args.out).exists():
                raise SystemExit(f"mpsnode: {args.out} exists; refusing to overwrite a key")
            save_key(args.out, key)
        print_fields({"address": key.address.hex(), **({"file": args.out} if args.out else {})}, args.json)
    else:
        key = load_key(args.file)
        print_fields({"address": key.address.hex(), "file": args.file}, args.json)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from mpsnode.node.inspect import inspect

    print_fields(inspect(args.home, args.what), args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mpsnode.demo.run import run_demo_cli

    return run_demo_cli(args)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpsnode", description="A rollup node for stake-secured federated learning.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add_json(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("init", help="create a network: genesis, keys, config")
    sp.add_argument("--home", required=True)
    sp.add_argument("--clients", type=int, default=10)
    sp.add_argument("--chain-id", default=None)
    sp.add_argument("--devnet", action="store_true", help="well-known keys and fixed time (public, for testing)")
    add_json(sp)
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("keys", help="create or show a key file")
    ks = sp.add_subparsers(dest="keys_cmd", required=True)
    kn = ks.add_parser("new")
    kn.add_argument("--out", help="write the key here (0600)")
    add_json(kn)
    kshow = ks.add_parser("show")
    kshow.add_argument("file")
    add_json(kshow)
    sp.set_defaults(func=cmd_keys)

    sp = sub.add_parser("inspect", help="read a node's store: head | block H | account ADDR | task ID")
    sp.add_argument("--home", required=True)
    sp.add_argument("what", nargs="*", default=["head"])
    add_json(sp)
    sp.set_defaults(func=cmd_inspect)

    from mpsnode.demo.run import add_demo_arguments

    sp = sub.add_parser("demo", help="run the end-to-end demo: a sequencer, a verifier, a task, FL clients")
    add_demo_arguments(sp)
    sp.set_defaults(func=cmd_demo)

    from mpsnode.cli.node import add_parsers

    add_parsers(sub)
    from mpsnode.cli.verifier import add_parsers as add_verifier_parsers

    add_verifier_parsers(sub)
    from mpsnode.cli.client import add_parsers as add_client_parsers

    add_client_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mpsnode.client.connection import ConnectionLost

    try:
        return int(args.func(args) or 0)
    except MpsError as exc:
        print(f"mpsnode: error {exc.code} ({type(exc).__name__}): {exc.reason}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionLost) as exc:
        print(f"mpsnode: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # connection refused and the like
        print(f"mpsnode: cannot reach the node: {exc}", file=sys.stderr)
        return 3
    except trio.TooSlowError:
        print("mpsnode: timed out waiting for the node", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
