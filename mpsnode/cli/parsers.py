"""Every ``mpsnode`` subcommand's flags, and the command that runs it.

This module imports nothing but argparse and the demo's option defaults, so ``mpsnode --help``
and a bad flag answer at once; each parser names its command as ``"module:function"`` under
``mpsnode.cli`` (``COMMAND``), and ``mpsnode.cli.main`` imports that module only when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from mpsnode.demo.options import DemoOptions

COMMAND = "command"  # the argparse destination holding "module:function"

ATTACK_HELP = (
    "sign_flip, gaussian, scaled, label_flip, free_rider_zeros, free_rider_copy, alie, ipm_0.1, ipm_2"
)


def _runs(p: argparse.ArgumentParser, target: str) -> None:
    p.set_defaults(**{COMMAND: target})


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_node_arguments(p: argparse.ArgumentParser) -> None:
    """How a command finds the chain and the node (``common.resolve_node``)."""
    p.add_argument("--home", help="node home: genesis.json, keys/ and the default --node")
    p.add_argument(
        "--genesis", help="genesis.json of the chain (default: the home's; else fetched from the node)"
    )
    p.add_argument(
        "--node", help="HOST:PORT of the node (default: the home's listen address, else 127.0.0.1:7070)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (connect, receipt)")
    add_json(p)


def add_signer_arguments(p: argparse.ArgumentParser) -> None:
    """Who signs (``common.signer_key``)."""
    p.add_argument("--from", dest="sender", help="key name in the home's keys/ (e.g. user, client-0)")
    p.add_argument("--key", help="key file that signs")


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The daemon flags that override ``mpsnode.node.server.ServerConfig`` (``cli.common.SERVER_FLAGS``)."""
    p.add_argument("--max-connections", type=int, default=None)
    p.add_argument("--handshake-timeout", type=float, default=None)
    p.add_argument("--frame-timeout", type=float, default=None)
    p.add_argument("--slow-peer-timeout", type=float, default=None)
    p.add_argument("--outbox-bytes", type=int, default=None)


def add_digits_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--alpha", default="1.0", help="Dirichlet label skew of the digits split, or 'iid' (default 1.0)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the digits split (same for every party)")


# ---------------------------------------------------------------------------------------------


def _local(sub: Any) -> None:
    sp = sub.add_parser("init", help="create a network: genesis, keys, config")
    sp.add_argument("--home", required=True)
    sp.add_argument("--clients", type=int, default=10)
    sp.add_argument("--chain-id", default=None)
    sp.add_argument(
        "--devnet", action="store_true", help="well-known keys and fixed time (public, for testing)"
    )
    sp.add_argument(
        "--l1",
        help="settle on the L1 at this JSON-RPC URL: deploy the portal and the oracle there and name them "
        "in genesis (which then allocates nothing: every unit is a deposit)",
    )
    sp.add_argument(
        "--l1-deployer-key", help="L1 key file that deploys (default on the devnet L1: its account 0)"
    )
    sp.add_argument(
        "--bond-eth", type=float, default=1.0, help="the sequencer's bond in the oracle (default 1)"
    )
    sp.add_argument(
        "--verifier-bond-eth", type=float, default=0.1, help="each committee verifier's bond (default 0.1)"
    )
    sp.add_argument(
        "--quorum", type=int, default=1, help="committee attestations that decide a challenge (default 1)"
    )
    sp.add_argument(
        "--challenge-period",
        type=int,
        default=None,
        help="seconds before an output finalizes (devnet 5, else 7 days)",
    )
    sp.add_argument(
        "--deposit-window",
        type=int,
        default=None,
        help="L1 blocks a deposit may wait for L2 (devnet 32, else 300)",
    )
    add_json(sp)
    _runs(sp, "init:cmd_init")

    sp = sub.add_parser("keys", help="create or show a key file")
    ks = sp.add_subparsers(dest="keys_cmd", required=True)
    kn = ks.add_parser("new")
    kn.add_argument("--out", help="write the key here (0600)")
    add_json(kn)
    kshow = ks.add_parser("show")
    kshow.add_argument("file")
    add_json(kshow)
    _runs(sp, "keys:cmd_keys")

    sp = sub.add_parser("inspect", help="read a node's store: head | block H | account ADDR | task ID")
    sp.add_argument("--home", required=True)
    sp.add_argument("what", nargs="*", default=["head"])
    add_json(sp)
    _runs(sp, "inspect:cmd_inspect")

    sp = sub.add_parser("demo", help="run the end-to-end demo: a sequencer, a verifier, a task, FL clients")
    d = DemoOptions()
    sp.add_argument(
        "--clients", type=int, default=d.clients, help=f"clients in the task (default {d.clients})"
    )
    sp.add_argument(
        "--malicious", type=int, default=d.malicious, help=f"of them attackers (default {d.malicious})"
    )
    sp.add_argument(
        "--attack",
        default=d.attack,
        help=f"the attackers' attack, evaluation only (default {d.attack}): {ATTACK_HELP}",
    )
    sp.add_argument(
        "--alpha",
        default=str(d.alpha),
        help=f"Dirichlet label skew of the clients' data, or 'iid' (default {d.alpha}: mildly non-IID)",
    )
    sp.add_argument(
        "--target", type=float, default=d.target, help=f"target accuracy, 0..1 (default {d.target})"
    )
    sp.add_argument(
        "--max-rounds",
        type=int,
        default=d.max_rounds,
        help=f"the task's round limit (default {d.max_rounds})",
    )
    sp.add_argument(
        "--seed", type=int, default=d.seed, help=f"data split, model and attacker choice (default {d.seed})"
    )
    sp.add_argument(
        "--byzantine-f",
        type=int,
        default=None,
        help="the task's f (default: the attackers' count, as far as the clients allow)",
    )
    sp.add_argument(
        "--home", default=None, help="keep the chain here (a new or empty dir; default: a new temp dir)"
    )
    sp.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    sp.add_argument(
        "--keep",
        action="store_true",
        help="leave the network and its explorer up after the task, until Ctrl-C",
    )
    sp.add_argument(
        "--dishonest-sequencer",
        action="store_true",
        help="EVALUATION ONLY: after the task the sequencer posts a forged output to L1; two committee "
        "verifiers must challenge it, the challenge be upheld and the forged withdrawal refused",
    )
    _runs(sp, "demo:cmd_demo")


def _node(sub: Any) -> None:
    sp = sub.add_parser("sequencer", help="run the sequencer daemon")
    sp.add_argument("--home", required=True)
    sp.add_argument("--listen", help="HOST:PORT to serve the wire protocol on (default: config.toml)")
    sp.add_argument("--metrics", help="HOST:PORT for Prometheus metrics (default: config.toml, or none)")
    sp.add_argument(
        "--http", metavar="HOST:PORT", help="serve the explorer, a read-only web page and JSON API, here"
    )
    sp.add_argument("--block-time-ms", type=int, default=None, help="override the genesis block time")
    l1 = sp.add_argument_group("settlement (a chain whose genesis names an L1)")
    l1.add_argument("--l1", help="JSON-RPC URL of the L1 (default: config.toml's l1)")
    l1.add_argument("--l1-key", help="the sequencer's L1 key file (default: HOME/keys/l1/sequencer.json)")
    l1.add_argument(
        "--l1-confirmations",
        type=int,
        default=0,
        help="follow L1 this many blocks behind its head (default 0)",
    )
    l1.add_argument(
        "--output-blocks", type=int, default=20, help="post an output every N L2 blocks (default 20) ..."
    )
    l1.add_argument(
        "--output-seconds",
        type=float,
        default=5.0,
        help="... or every T seconds, whichever comes first (default 5)",
    )
    l1.add_argument(
        "--evaluation-dishonest",
        action="store_true",
        help="EVALUATION ONLY (mpsnode demo --dishonest-sequencer): once a withdrawal is paid on L1, post a "
        "forged output that withdraws 1 ETH the sequencer never had",
    )
    add_server_arguments(sp)
    _runs(sp, "node:cmd_sequencer")

    sp = sub.add_parser("tx", help="sign and submit a transaction")
    ts = sp.add_subparsers(dest="tx_cmd", required=True)

    def tx_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = ts.add_parser(name, help=help_text)
        add_node_arguments(p)
        add_signer_arguments(p)
        p.add_argument("--fee", type=int, default=None, help="fee (default: the minimum for the size)")
        p.add_argument("--nonce", type=int, default=None, help="nonce (default: the node's next free one)")
        p.add_argument(
            "--wait",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="wait for the receipt and exit 1 if the tx failed (default; --no-wait: return "
            "once the node holds the tx)",
        )
        p.add_argument(
            "--force",
            action="store_true",
            help="send even when the tx would fail on the node's current state, or leaves a nonce gap",
        )
        _runs(p, "node:cmd_tx")
        return p

    p = tx_parser("transfer", "move balance")
    p.add_argument("--to", required=True, help="address (hex) or key name")
    p.add_argument("--amount", type=int, required=True)
    for name, text in (("stake", "bond balance"), ("unstake", "start unbonding")):
        p = tx_parser(name, text)
        p.add_argument("--amount", type=int, required=True)
    p = tx_parser(
        "withdraw", "move balance to L1: paid there once its output finalizes (mpsnode l1 prove-withdrawal)"
    )
    p.add_argument("--to", required=True, help="the L1 address to pay (0x and 40 hex digits)")
    p.add_argument("--amount", type=int, required=True)
    p = tx_parser("join", "join a task")
    p.add_argument("--task", type=int, required=True)
    for name, text in (
        ("commit-update", "commit to a model update (commit phase; prints the salt to reveal with)"),
        ("reveal-update", "reveal the committed update (reveal phase): the same delta and salt"),
    ):
        p = tx_parser(name, text)
        p.add_argument("--task", type=int, required=True)
        p.add_argument("--round", type=int, required=True)
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--delta", help=".npy file of the delta (cast to int16)")
        g.add_argument("--random-delta", type=int, metavar="SEED", help="a random delta (for testing)")
        p.add_argument("--params", type=int, default=0, help="parameter count for --random-delta")
        p.add_argument("--scale", type=int, default=100, help="magnitude for --random-delta")
        p.add_argument(
            "--salt",
            required=name == "reveal-update",
            help="32 bytes as hex"
            + (" (default: random)" if name == "commit-update" else ", from commit-update"),
        )
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
    _aggregator(p)

    p = ts.add_parser(
        "pending", help="list your txs pending on the sequencer; --drop one stuck behind a nonce gap"
    )
    add_node_arguments(p)
    add_signer_arguments(p)
    p.add_argument(
        "--drop", metavar="TXID", help="drop this pending tx (only one waiting behind a nonce gap)"
    )
    _runs(p, "node:cmd_tx_pending")

    sp = sub.add_parser("query", help="read from a node (state answers are proven)")
    qs = sp.add_subparsers(dest="query_cmd", required=True)
    p = qs.add_parser("status")
    add_node_arguments(p)
    p = qs.add_parser("account")
    add_node_arguments(p)
    p.add_argument("address", help="address (hex) or key name")
    p = qs.add_parser("task")
    add_node_arguments(p)
    p.add_argument("task_id", type=int)
    p.add_argument("--model", action="store_true", help="also fetch and prove the global model")
    p.add_argument("--model-out", help="write the model to this .npy file")
    p = qs.add_parser("block")
    add_node_arguments(p)
    p.add_argument("height", type=int)
    p = qs.add_parser("receipt")
    add_node_arguments(p)
    p.add_argument("tx_id")
    p.add_argument("--wait", action="store_true", help="wait until included or dropped")
    p = qs.add_parser("events")
    add_node_arguments(p)
    p.add_argument("--height", type=int, default=None, help="events of blocks from this height")
    p.add_argument("--task", type=int, default=None, help="events of this task")
    p.add_argument("--start", type=int, default=0, help="with --task: from this height")
    p.add_argument("--count", type=int, default=100)
    _runs(sp, "node:cmd_query")
    for p in qs.choices.values():
        _runs(p, "node:cmd_query")


def add_data_file_arguments(
    p: argparse.ArgumentParser, group: Any, flag: str, labels: str, what: str, *aliases: str
) -> None:
    """``flag FILE`` (in ``group``, also spelt ``aliases``), the labels of an .npy ``labels`` and
    the CSV label column."""
    group.add_argument(
        flag,
        *aliases,
        metavar="FILE",
        help=f"{what}: .npz (arrays x, y), .npy of samples (with {labels}), or .csv with a header "
        "(labels in --label-column)",
    )
    p.add_argument(labels, metavar="FILE.npy", help=f"the labels of an .npy {flag}")
    p.add_argument("--label-column", default="label", help="the CSV column of the labels (default label)")


def add_l1_arguments(p: argparse.ArgumentParser, payer: bool = True) -> None:
    """How an ``l1`` command finds the L1 and who pays there (``cli.l1``)."""
    add_node_arguments(p)
    p.add_argument("--l1", help="L1 JSON-RPC URL (default: the home's config.toml)")
    if payer:
        p.add_argument("--l1-from", help="L1 key name in the home's keys/l1/ (e.g. user, client-0)")
        p.add_argument("--l1-key", help="L1 key file that pays")


def _l1(sub: Any) -> None:
    sp = sub.add_parser("l1", help="settlement on L1: deposit, prove a withdrawal, status")
    ls = sp.add_subparsers(dest="l1_cmd", required=True)
    p = ls.add_parser("deposit", help="lock ETH in the portal for an L2 address; the L2 must credit it")
    add_l1_arguments(p)
    p.add_argument("--amount", type=int, required=True, help="L2 units (1 unit = 1 gwei)")
    p.add_argument("--to", required=True, help="the L2 recipient: address (hex) or key name")
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the L2 credits it (default)",
    )
    _runs(p, "l1:cmd_l1_deposit")
    p = ls.add_parser("prove-withdrawal", help="prove a WITHDRAW on L1 and have the portal pay it")
    add_l1_arguments(p)
    p.add_argument("tx_id", help="the WITHDRAW tx id (64 hex digits)")
    p.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for its output to be posted and finalize"
    )
    _runs(p, "l1:cmd_l1_prove")
    p = ls.add_parser("status", help="contracts, outputs posted and finalized, deposits, portal against L2")
    add_l1_arguments(p, payer=False)
    _runs(p, "l1:cmd_l1_status")
    p = ls.add_parser(
        "devnet",
        help="run the devnet L1 (anvil) on 127.0.0.1 until Ctrl-C, its state kept in --state; then "
        "`mpsnode init --l1 URL` deploys on it",
    )
    p.add_argument("--port", type=int, default=8545, help="port on 127.0.0.1 (0: a free one; default 8545)")
    p.add_argument("--state", help="load from and dump to this file (default: none, a fresh chain)")
    p.add_argument(
        "--block-time", type=float, default=1.0, help="seconds per L1 block (0: one per tx; default 1)"
    )
    _runs(p, "l1:cmd_l1_devnet")


def _verifier(sub: Any) -> None:
    sp = sub.add_parser("verifier", help="run a verifier: follow an upstream, re-execute, check every block")
    sp.add_argument("--home", required=True, help="the verifier's home: genesis.json, data/, reports/")
    sp.add_argument("--upstream", required=True, help="HOST:PORT of the sequencer or of another verifier")
    sp.add_argument("--genesis", help="copy this genesis.json into a new --home first")
    sp.add_argument("--listen", help="HOST:PORT serving blocks onward (default: config.toml, or :7071)")
    sp.add_argument("--metrics", help="HOST:PORT for Prometheus metrics")
    sp.add_argument(
        "--http", metavar="HOST:PORT", help="serve the explorer, a read-only web page and JSON API, here"
    )
    sp.add_argument(
        "--exit-on-divergence", action="store_true", help="exit (code 3) once a divergence is reported"
    )
    sp.add_argument(
        "--l1", help="settlement mode: the L1 JSON-RPC URL deposits are read from (default: config.toml)"
    )
    sp.add_argument(
        "--l1-confirmations", type=int, default=0, help="read L1 this many blocks behind its head"
    )
    sp.add_argument(
        "--l1-key",
        help="settlement: this verifier's L1 key file; it bonds into the committee (if admitted), compares "
        "every posted output with its own and challenges a wrong one on L1",
    )
    add_server_arguments(sp)
    _runs(sp, "verifier:cmd_verifier")

    sp = sub.add_parser("export", help="write a node's chain (genesis and every block) to one file")
    sp.add_argument("--home", required=True)
    sp.add_argument("--out", required=True)
    add_json(sp)
    _runs(sp, "verifier:cmd_export")

    sp = sub.add_parser("replay", help="re-execute a chain from genesis, check every root, print an audit")
    sp.add_argument("file", nargs="?", help="an export (mpsnode export) or a divergence bundle")
    sp.add_argument("--home", help="replay the chain in this node home's store instead")
    sp.add_argument("--genesis", help="the genesis.json you expect: a chain of another genesis is refused")
    sp.add_argument(
        "--genesis-hash", help="the genesis hash you expect (64 hex digits, as `mpsnode init` prints)"
    )
    add_json(sp)
    sp.add_argument("--plot", help="draw accuracy and Krum scores per round into this PNG")
    sp.add_argument("--reports", help="on a divergence, write <height>.json and <height>.bundle here")
    sp.add_argument(
        "--l1",
        help="settlement mode: the L1 JSON-RPC URL to read deposits and outputs from (default: --home's)",
    )
    bar = sp.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always show progress"
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    _runs(sp, "verifier:cmd_replay")


def _client(sub: Any) -> None:
    sp = sub.add_parser("client", help="a federated-learning client: run the daemon, create a task")
    cs = sp.add_subparsers(dest="client_cmd", required=True)

    p = cs.add_parser(
        "run", help="follow a task's rounds, train on local data, commit and reveal one update a round"
    )
    add_node_arguments(p)
    add_signer_arguments(p)
    p.add_argument("--task", type=int, required=True, help="task id")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--digits-shard", metavar="I/N", help="shard I of the bundled digits split across N clients"
    )
    add_data_file_arguments(p, data, "--data", "--labels", "your own training data")
    data.add_argument(
        "--flower",
        metavar="MODULE:ATTR",
        help="your own Flower NumPyClient (or a factory of one) trains instead, on its own data: "
        "a module name or a path.py, and the attribute",
    )
    p.add_argument(
        "--flower-layout",
        choices=["torch", "sklearn"],
        default=None,
        help="the Flower client's parameter layout (default: read off its parameters)",
    )
    add_digits_arguments(p)
    p.add_argument(
        "--stake", type=int, default=None, help="bond up to this much before joining (default: min_stake)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="local SGD learning rate (default: mpsnode.fl's, 0.3)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="local minibatch size (default: mpsnode.fl's, 8)"
    )
    p.add_argument("--state-dir", help="where the submission journal is kept (default: HOME/clients)")
    p.add_argument(
        "--reconnect-for",
        type=float,
        default=120.0,
        help="seconds to keep reconnecting to a node that went away",
    )
    p.add_argument(
        "--attack", default=None, help=f"EVALUATION ONLY: send a poisoned update instead ({ATTACK_HELP})"
    )
    p.add_argument("--colluders", type=int, default=1, help="EVALUATION ONLY: attackers colluding (alie)")
    _runs(p, "client:cmd_client_run")

    p = cs.add_parser(
        "create-task", help="ask for a model trained on the digits split (or your validation set)"
    )
    add_node_arguments(p)
    add_signer_arguments(p)
    val = p.add_mutually_exclusive_group(required=True)
    val.add_argument(
        "--digits-clients", type=int, metavar="N", help="validation set of the digits split for N clients"
    )
    add_data_file_arguments(p, val, "--validation", "--val-labels", "your own validation set", "--val")
    add_digits_arguments(p)
    p.add_argument(
        "--arch", default=None, help="layer widths, e.g. 64,32,10 (default: mpsnode.fl's for digits)"
    )
    p.add_argument(
        "--scale-bits", type=int, default=None, help="fixed-point bits (default: mpsnode.fl's, 12)"
    )
    p.add_argument("--target", type=float, default=0.9, help="target validation accuracy, 0..1 (default 0.9)")
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument(
        "--min-clients",
        type=int,
        default=None,
        help="clients needed to start (default: --digits-clients N, else 10)",
    )
    p.add_argument(
        "--max-clients", type=int, default=None, help="clients accepted (default: as --min-clients)"
    )
    p.add_argument(
        "--byzantine-f",
        type=int,
        default=None,
        help="participants the task tolerates as faulty, hostile or silent (default: one in five, at "
        "most what min-clients allows: 2f + 3 <= min-clients)",
    )
    p.add_argument("--join-blocks", type=int, default=150)
    p.add_argument("--round-blocks", type=int, default=50)
    p.add_argument("--fee-per-round", type=int, default=1000)
    p.add_argument("--local-epochs", type=int, default=2)
    _aggregator(p)
    _runs(p, "client:cmd_client_create_task")


AGGREGATORS = {"nnm": 2, "multi-krum": 1}  # tx.Aggregator; kept here so --help imports nothing heavy


def _aggregator(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--aggregator",
        choices=sorted(AGGREGATORS),
        default="nnm",
        help="how each round's updates are combined: nnm (nearest-neighbour mixing, then Multi-Krum; "
        "the default, best on non-IID data) or multi-krum",
    )


#: Help of the flags and arguments that mean the same in every command that takes them.
COMMON_HELP = {
    "--home": "the node's home directory: genesis.json, config.toml, keys/, data/",
    "--clients": "client keys to make (client-0 .. client-N-1)",
    "--chain-id": "the chain's id (default: mps-devnet with --devnet, else one of its own)",
    "--max-connections": "connections served at once (more are refused with Overloaded)",
    "--handshake-timeout": "seconds a new connection has to say HELLO",
    "--frame-timeout": "seconds a frame may take once its first byte arrived",
    "--slow-peer-timeout": "seconds a peer may leave replies unread past --outbox-bytes before it is dropped",
    "--outbox-bytes": "bytes of replies queued for one peer before it counts as slow",
    "--amount": "units",
    "--task": "task id",
    "--round": "the open round's number (from 1)",
    "--scale-bits": "fixed-point bits of weights, inputs and deltas (0..24)",
    "--init-scale": "magnitude of the random initial weights",
    "--seed": "seed of the random parts (weights, validation set, split)",
    "--target-bps": "target validation accuracy in basis points (10000 = 100%%)",
    "--max-rounds": "rounds before the task expires unmet",
    "--min-clients": "clients needed to start",
    "--max-clients": "clients accepted",
    "--byzantine-f": "participants the task tolerates as faulty, hostile or silent (2f + 3 <= min-clients)",
    "--join-blocks": "blocks the task waits for clients to join",
    "--round-blocks": "blocks a round waits for updates before it closes",
    "--fee-per-round": "units paid per scored round (escrowed: fee x max rounds)",
    "--local-epochs": "local training epochs per round",
    "--count": "at most this many blocks",
    "--out": "the file to write",
    "file": "the file to read",
    "what": "head | block H | account ADDR|KEYNAME | task ID",
    "task_id": "task id",
    "height": "block height",
    "tx_id": "the tx id (64 hex digits)",
}


def _fill_help(parser: argparse.ArgumentParser) -> None:
    """Give every flag that has none the help it has everywhere (``COMMON_HELP``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fill_help(sub)
        elif action.help is None:
            names = action.option_strings or [action.dest]
            action.help = next((COMMON_HELP[n] for n in names if n in COMMON_HELP), None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpsnode", description="A rollup node for stake-secured federated learning."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    _local(sub)
    _node(sub)
    _verifier(sub)
    _l1(sub)
    _client(sub)
    _fill_help(p)
    return p
