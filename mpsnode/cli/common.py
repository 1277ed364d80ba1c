"""What the subcommands share: printing results, and finding the chain, the node and the signer."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mpsnode.consensus import crypto
from mpsnode.consensus.genesis import Genesis
from mpsnode.node.files import load_genesis, load_key
from mpsnode.node.home import DEFAULT_LISTEN, Home

#: The ``ServerConfig`` fields a daemon's flags override (``add_server_arguments``); kept here so that
#: the light commands need not import the server (tests/test_cli.py holds them to ServerConfig).
SERVER_FLAGS = ("max_connections", "handshake_timeout", "frame_timeout", "slow_peer_timeout", "outbox_bytes")


def print_fields(obj: Any, as_json: bool) -> None:
    """A dict as aligned ``key  value`` lines (nested dicts as ``outer.inner`` keys, a list of dicts
    one indented line per item), or as JSON."""
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=False))
        return
    rows = list(_flatten(obj))
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        if isinstance(v, list) and v and all(isinstance(item, dict) for item in v):
            print(f"{k:<{width}}  {len(v)}")
            for item in v:
                print("    " + "  ".join(f"{ik} {_text(iv)}" for ik, iv in item.items()))
            continue
        print(f"{k:<{width}}  {_text(v)}")


def _flatten(obj: dict[str, Any], prefix: str = "") -> Any:
    for k, v in obj.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _text(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def resolve_node(args: argparse.Namespace) -> tuple[Genesis | None, str, Home | None]:
    """The chain (``--genesis``, else the home's, else None: fetched from the node and pinned), the
    node's address (``--node``, else the home's listen address, else ``DEFAULT_LISTEN``) and the home."""
    home = Home.open(args.home) if args.home else None
    genesis = load_genesis(args.genesis) if args.genesis else (home.genesis() if home else None)
    node = args.node or (home.listen if home else DEFAULT_LISTEN)
    return genesis, node, home


def signer_key(args: argparse.Namespace, home: Home | None) -> crypto.Keypair:
    """The key that signs: ``--key FILE``, or ``--from NAME`` in the home's keys/."""
    if args.key:
        return load_key(args.key)
    if home is not None and args.sender:
        return load_key(home.key_path(args.sender))
    raise ValueError("say who signs: --key FILE, or --home DIR with --from NAME (a key in DIR/keys/)")


def parse_address(text: str, home: Home | None) -> bytes:
    """A hex address, or the name of a key in the home."""
    try:
        return crypto.parse_address(text)
    except ValueError:
        if home is not None and home.key_path(text).is_file():
            return load_key(home.key_path(text)).address
        names = (
            f" (keys in {home.path / 'keys'}: {', '.join(sorted(p.stem for p in (home.path / 'keys').glob('*.json')))})"
            if home is not None and (home.path / "keys").is_dir()
            else ""
        )
        raise ValueError(f"{text!r} is neither an address (64 hex digits) nor a key name{names}") from None


def parse_l1_address(text: str) -> bytes:
    """An L1 (Ethereum) address, ``0x`` and 40 hex digits, as 20 bytes."""
    body = text.removeprefix("0x").removeprefix("0X")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != 20 or len(body) != 40:
        raise ValueError(f"{text!r} is not an L1 address (0x and 40 hex digits)")
    return raw


def parse_hex32(text: str, refusal: str) -> bytes:
    """32 bytes given as 64 hex digits; else ``ValueError(refusal)``."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(refusal)
    return raw


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerConfig`` overrides given on the command line."""
    return {name: getattr(args, name) for name in SERVER_FLAGS if getattr(args, name) is not None}
