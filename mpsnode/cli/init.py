"""``mpsnode init``: write a node home (a devnet, or a chain that settles on an L1)."""

from __future__ import annotations

import argparse
import sys

import genesis
from mpsnode.cli.common import print_fields
from mpsnode.node.files import load_l1_key
from mpsnode.node.l1.client import L1, account
from mpsnode.node.l1.devnet import DEVNET_CHALLENGE_PERIOD, DEVNET_DEPOSIT_WINDOW, DEVNET_L1_CHAIN_ID


def cmd_init(args: argparse.Namespace) -> int:
    if args.l1:
        net = _init_settled(args)
    else:
        if args.l1_deployer_key or args.challenge_period is not None or args.deposit_window is not None:
            raise ValueError("--l1-deployer-key, --challenge-period and --deposit-window go with --l1 URL")
        net = genesis.make_network(
            args.home, clients=args.clients, chain_id=args.chain_id, devnet_keys=args.devnet
        )
    g = net.genesis
    out = {
        "home": str(net.home),
        "chain_id": g.chain_id,
        "genesis_hash": g.hash().hex(),
        "state_root": g.state_root().hex(),
        "sequencer": g.sequencer.hex(),
        "clients": len(net.clients),
        "keys": str(net.home / "keys"),
    }
    if g.l1 is not None:
        out["l1"] = {**g.l1.to_json(), "url": args.l1, "keys": str(net.home / "keys" / "l1")}
    print_fields(out, args.json)
    return 0


def _init_settled(args: argparse.Namespace) -> genesis.Network:
    devnet_l1 = L1(args.l1).chain_id() == DEVNET_L1_CHAIN_ID
    terms = genesis.SettlementTerms(
        bond_wei=round(args.bond_eth * 10**18),
        verifier_bond_wei=round(args.verifier_bond_eth * 10**18),
        quorum=args.quorum,
        challenge_period=args.challenge_period
        if args.challenge_period is not None
        else (DEVNET_CHALLENGE_PERIOD if devnet_l1 else 7 * 24 * 3600),
        deposit_window=args.deposit_window
        if args.deposit_window is not None
        else (DEVNET_DEPOSIT_WINDOW if devnet_l1 else 300),
    )
    if terms.bond_wei <= 0 or terms.verifier_bond_wei <= 0 or terms.deposit_window < 1 or terms.quorum < 1:
        raise ValueError(
            "--bond-eth and --verifier-bond-eth must be positive, --deposit-window and --quorum at least 1"
        )
    deployer = account(load_l1_key(args.l1_deployer_key)) if args.l1_deployer_key else None
    net = genesis.make_settled_network(
        args.home,
        args.l1,
        clients=args.clients,
        chain_id=args.chain_id,
        devnet_keys=args.devnet,
        deployer=deployer,
        terms=terms,
    )
    if not devnet_l1:
        poster = account(load_l1_key(net.home / "keys" / "l1" / "sequencer.json")).address
        print(
            f"mpsnode: fund the sequencer's L1 account {poster} with ETH for gas: it posts the outputs",
            file=sys.stderr,
        )
    return net
