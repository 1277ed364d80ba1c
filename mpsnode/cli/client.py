"""``mpsnode client run`` (the client daemon) and ``mpsnode client create-task`` (a task on real data).

A client's data, one of:

* ``--digits-shard I/N [--alpha A] [--seed S]``: shard ``I`` of scikit-learn's bundled digits split
  across ``N`` clients (``mpsnode.fl.make_split``: a stratified validation set held back, the rest
  split IID, or with Dirichlet(``A``) label skew). Every client and the task's creator must use
  the same ``N``, ``A`` and ``S``: the split is reproduced from them, so the validation set in the
  task is never in any client's shard.
* ``--data FILE.npz``: your own arrays, ``x`` (samples x features, floats already scaled so that
  ``x * 2^scale_bits`` fits int16) and ``y`` (integer labels).

``create-task`` builds CREATE_TASK from the same data description (``--digits-clients N`` or
``--val FILE.npz``), signs it with ``--from NAME``/``--key FILE`` and prints the new task id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from mpsnode.client.daemon import ClientStopped
from mpsnode.consensus import crypto
from mpsnode.consensus.genesis import Genesis
from mpsnode.node.files import load_genesis, load_key
from mpsnode.node.home import Home

if TYPE_CHECKING:
    from mpsnode import fl

# Training defaults are mpsnode.fl's (TrainConfig, DEFAULT_ARCH, DEFAULT_SCALE_BITS); mpsnode.fl and
# numpy are imported only by the commands that use them, so that every other command starts fast.


def parse_alpha(text: str | None) -> float | None:
    """``None``/``iid`` for an IID split, else a positive Dirichlet concentration."""
    if text is None or text.lower() == "iid":
        return None
    try:
        alpha = float(text)
    except ValueError:
        raise ValueError(f"--alpha {text!r}: give a positive number or 'iid'") from None
    if not alpha > 0:
        raise ValueError(f"--alpha {text!r}: must be positive (or 'iid')")
    return alpha


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with ``0 <= I < N``."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--digits-shard {text!r}: expected I/N, e.g. 3/10") from None
    if not 0 <= i < n:
        raise ValueError(f"--digits-shard {text!r}: need 0 <= I < N")
    return i, n


def digits_split(n_clients: int, alpha: float | None, seed: int) -> fl.FederatedSplit:
    """The digits split every party of a digits task reproduces from ``(n_clients, alpha, seed)``."""
    from mpsnode import fl

    return fl.make_split(fl.load_digits(), n_clients, alpha=alpha, seed=seed)


def learner_seed(split_seed: int, shard: int) -> int:
    """A distinct minibatch order per shard, fixed by the split seed."""
    return split_seed * 1009 + shard


def load_npz(path: str, what: str) -> fl.Dataset:
    import numpy as np

    from mpsnode import fl

    try:
        with np.load(path) as data:
            if "x" not in data or "y" not in data:
                raise ValueError(f"{what} {path}: needs arrays 'x' (samples x features) and 'y' (labels)")
            return fl.from_arrays(data["x"], data["y"], int(data["n_classes"]) if "n_classes" in data else None)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc})") from None


def client_data(args: argparse.Namespace) -> tuple[fl.Dataset, int]:
    """The client's training data and its learner seed, from ``--data`` or ``--digits-shard``."""
    if args.data:
        return load_npz(args.data, "--data"), args.seed
    i, n = parse_shard(args.digits_shard)
    return digits_split(n, parse_alpha(args.alpha), args.seed).clients[i], learner_seed(args.seed, i)


def _chain(args: argparse.Namespace) -> tuple[Genesis | None, str, Home | None]:
    home = Home.open(args.home) if args.home else None
    genesis = load_genesis(args.genesis) if args.genesis else (home.genesis() if home else None)
    node = args.node or (home.listen if home else None)
    if not node:
        raise ValueError("say where the node is: --node HOST:PORT, or --home DIR (its config.toml)")
    return genesis, node, home


def _key(args: argparse.Namespace, home: Home | None) -> crypto.Keypair:
    if args.key:
        return load_key(args.key)
    if home is not None and args.sender:
        return load_key(home.key_path(args.sender))
    raise ValueError("say who signs: --key FILE, or --home DIR with --from NAME (a key in DIR/keys/)")


# ---------------------------------------------------------------------------------------------
# client run


def _train_config(args: argparse.Namespace) -> fl.TrainConfig:
    from mpsnode import fl

    given = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if v is not None}
    return fl.TrainConfig(**given)


def cmd_client_run(args: argparse.Namespace) -> int:
    from mpsnode.client.daemon import ClientConfig, ClientEvent, run_client

    genesis, node, home = _chain(args)
    data, seed = client_data(args)
    key = _key(args, home)
    if args.attack:
        print(f"mpsnode client: EVALUATION ONLY: this client attacks the task ({args.attack})", file=sys.stderr)
    state_dir = Path(args.state_dir) if args.state_dir else (home.path / "clients" if home else None)
    config = ClientConfig(node=node, key=key, task_id=args.task, data=data, genesis=genesis, state_dir=state_dir,
                          stake=args.stake, train=_train_config(args), seed=seed,
                          attack=args.attack, colluders=args.colluders, reconnect_for=args.reconnect_for,
                          timeout=args.timeout)

    def show(ev: ClientEvent) -> None:
        if args.json:
            print(json.dumps(ev.to_json()), flush=True)
            return
        fields = "  ".join(f"{k} {v}" for k, v in ev.fields.items())
        print(f"{ev.kind:<12} {fields}", flush=True)

    if not args.json:
        print(f"client {key.address.hex()[:16]}  task {args.task}  node {node}  {len(data)} samples"
              f"{'  journal ' + str(state_dir) if state_dir else ''}", flush=True)
    try:
        result = trio.run(run_client, config, show)
    except KeyboardInterrupt:
        print(f"mpsnode client: interrupted{'; journal kept in ' + str(state_dir) if state_dir else ''} "
              "(a restart resubmits, never re-signs, an update already signed)", file=sys.stderr)
        return 130
    ok = [r for r in result.rounds.values() if r.outcome == "ok"]
    summary = {"done": True, "task": result.task_id, "status": result.status, "rounds_submitted": len(result.rounds),
               "updates_ok": len(ok), "reconnects": result.reconnects, "accuracy_bps": result.accuracy_bps}
    if args.json:
        print(json.dumps({"event": "done", **summary}), flush=True)
    else:
        print("done         " + "  ".join(f"{k} {v}" for k, v in summary.items() if k != "done"), flush=True)
    return 0 if result.status in ("completed", "expired") else 1


# ---------------------------------------------------------------------------------------------
# client create-task


def cmd_client_create_task(args: argparse.Namespace) -> int:
    from mpsnode import fl
    from mpsnode.client.connection import Wallet, connect
    from mpsnode.consensus.events import TaskCreated

    genesis, node, home = _chain(args)
    key = _key(args, home)
    if args.val:
        validation = load_npz(args.val, "--val")
    else:
        validation = digits_split(args.digits_clients, parse_alpha(args.alpha), args.seed).validation
    arch = tuple(int(w) for w in args.arch.split(",")) if args.arch else fl.DEFAULT_ARCH
    scale_bits = fl.DEFAULT_SCALE_BITS if args.scale_bits is None else args.scale_bits
    if not 0 < args.target <= 1:
        raise ValueError(f"--target {args.target}: give the accuracy as a fraction in (0, 1], e.g. 0.9")
    body = fl.create_task_body(validation, arch=arch, scale_bits=scale_bits,
                               target_accuracy_bps=round(args.target * 10000), max_rounds=args.max_rounds,
                               min_clients=args.min_clients, max_clients=args.max_clients,
                               byzantine_f=args.byzantine_f, join_blocks=args.join_blocks,
                               round_blocks=args.round_blocks, fee_per_round=args.fee_per_round,
                               local_epochs=args.local_epochs, seed=args.seed)

    async def main() -> dict[str, Any]:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            wallet = Wallet(key, client.chain_id, client.params)
            await wallet.recover(client)
            stx = await wallet.send(client, body)
            outcome = await client.wait_receipt(stx.tx_id, timeout=args.timeout)
            if not outcome.ok:
                why = outcome.receipt.status_name if outcome.receipt else f"{outcome.state}: {outcome.reason}"
                raise ClientStopped(f"CREATE_TASK failed: {why}")
            assert outcome.receipt is not None
            created = next(e for e in outcome.receipt.events if isinstance(e, TaskCreated))
            return {"task_id": created.task_id, "tx_id": stx.tx_id.hex(), "height": outcome.height,
                    "escrow": created.escrow, "params": created.params, "validation_samples": len(validation)}

    out = trio.run(main)
    print(json.dumps(out, indent=2) if args.json else "\n".join(f"{k:<18} {v}" for k, v in out.items()))
    return 0


# ---------------------------------------------------------------------------------------------
# parsers


def _add_node(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="node home: genesis.json, keys/, the default --node and the journal dir")
    p.add_argument("--genesis", help="genesis.json of the chain (default: the home's; else fetched from the node)")
    p.add_argument("--node", help="HOST:PORT of the sequencer (default: the home's listen address)")
    p.add_argument("--key", help="key file of the client")
    p.add_argument("--from", dest="sender", help="or: a key name in the home's keys/ (e.g. client-3)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a connection or a receipt")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")


def _add_digits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", default="1.0", help="Dirichlet label skew of the digits split, or 'iid' (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the digits split (same for every party)")


def add_parsers(sub: Any) -> None:
    sp = sub.add_parser("client", help="a federated-learning client: run the daemon, create a task")
    cs = sp.add_subparsers(dest="client_cmd", required=True)

    p = cs.add_parser("run", help="follow a task's rounds, train on local data, submit one update per round")
    _add_node(p)
    p.add_argument("--task", type=int, required=True, help="task id")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--digits-shard", metavar="I/N", help="shard I of the bundled digits split across N clients")
    data.add_argument("--data", metavar="FILE.npz", help="your own training data: arrays x (float) and y (int)")
    _add_digits(p)
    p.add_argument("--stake", type=int, default=None, help="bond up to this much before joining (default: min_stake)")
    p.add_argument("--lr", type=float, default=None, help="local SGD learning rate (default: mpsnode.fl's, 0.3)")
    p.add_argument("--batch-size", type=int, default=None, help="local minibatch size (default: mpsnode.fl's, 8)")
    p.add_argument("--state-dir", help="where the submission journal is kept (default: HOME/clients)")
    p.add_argument("--reconnect-for", type=float, default=120.0,
                   help="seconds to keep reconnecting to a node that went away")
    p.add_argument("--attack", default=None, help="EVALUATION ONLY: send a poisoned update instead "
                   "(sign_flip, gaussian, scaled, label_flip, free_rider_zeros, free_rider_copy, alie, ipm_0.1, ipm_2)")
    p.add_argument("--colluders", type=int, default=1, help="EVALUATION ONLY: attackers colluding (alie)")
    p.set_defaults(func=cmd_client_run)

    p = cs.add_parser("create-task", help="ask for a model trained on the digits split (or your validation set)")
    _add_node(p)
    val = p.add_mutually_exclusive_group(required=True)
    val.add_argument("--digits-clients", type=int, metavar="N", help="validation set of the digits split for N clients")
    val.add_argument("--val", metavar="FILE.npz", help="your own validation set: arrays x (float) and y (int)")
    _add_digits(p)
    p.add_argument("--arch", default=None, help="layer widths, e.g. 64,32,10 (default: mpsnode.fl's for digits)")
    p.add_argument("--scale-bits", type=int, default=None, help="fixed-point bits (default: mpsnode.fl's, 12)")
    p.add_argument("--target", type=float, default=0.9, help="target validation accuracy, 0..1 (default 0.9)")
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--min-clients", type=int, default=10)
    p.add_argument("--max-clients", type=int, default=10)
    p.add_argument("--byzantine-f", type=int, default=2, help="updates Krum assumes may be hostile per round")
    p.add_argument("--join-blocks", type=int, default=150)
    p.add_argument("--round-blocks", type=int, default=50)
    p.add_argument("--fee-per-round", type=int, default=1000)
    p.add_argument("--local-epochs", type=int, default=2)
    p.set_defaults(func=cmd_client_create_task)
