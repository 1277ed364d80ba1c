"""``mpsnode client run`` (the client daemon) and ``mpsnode client create-task`` (a task on real data).

A client's data, one of:

* ``--digits-shard I/N [--alpha A] [--seed S]``: shard ``I`` of scikit-learn's bundled digits split
  across ``N`` clients (``mpsnode.fl.make_split``: a stratified validation set held back, the rest
  split IID, or with Dirichlet(``A``) label skew). Every client and the task's creator must use
  the same ``N``, ``A`` and ``S``: the split is reproduced from them, so the validation set in the
  task is never in any client's shard.
* ``--data FILE``: your own data, features already scaled so that ``x * 2^scale_bits`` fits int16:
  an .npz with ``x`` (samples x features) and ``y`` (integer labels), an .npy of samples with
  ``--labels LABELS.npy``, or a .csv with a header row and the labels in ``--label-column``
  (default ``label``). It must fit the task's arch (features, outputs), checked before anything
  is signed.

``create-task`` builds CREATE_TASK from the same data description (``--digits-clients N`` or
``--validation FILE``), signs it with ``--from NAME``/``--key FILE`` and prints the new task id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import trio

from mpsnode import fl
from mpsnode.cli.common import resolve_node, signer_key
from mpsnode.cli.parsers import AGGREGATORS
from mpsnode.client.daemon import ClientConfig, ClientEvent, run_client
from mpsnode.client.preflight import preflight
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.events import TaskCreated
from mpsnode.fl.attacks import Attacker
from mpsnode.fl.data import digits_split, learner_seed, load_dataset, parse_alpha, parse_shard
from mpsnode.fl.flower import load_client
from mpsnode.node.connection import connect
from mpsnode.node.errors import WouldFail

DEFAULT_TASK_CLIENTS = 10  # a task on your own validation set, unless told


def client_data(args: argparse.Namespace) -> tuple[fl.Dataset, int]:
    """The client's training data and its learner seed, from ``--data`` or ``--digits-shard``."""
    if args.data:
        return load_dataset(args.data, "--data", args.label_column, args.labels), args.seed
    i, n = parse_shard(args.digits_shard)
    return digits_split(n, parse_alpha(args.alpha), args.seed).clients[i], learner_seed(args.seed, i)


def _train_config(args: argparse.Namespace) -> fl.TrainConfig:
    given = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if v is not None}
    return fl.TrainConfig(**given)


# ---------------------------------------------------------------------------------------------
# client run


def cmd_client_run(args: argparse.Namespace) -> int:
    genesis, node, home = resolve_node(args)
    flower = load_client(args.flower) if args.flower else None
    data, seed = (None, args.seed) if flower is not None else client_data(args)
    key = signer_key(args, home)
    if args.attack:
        print(
            f"mpsnode client: EVALUATION ONLY: this client attacks the task ({args.attack})", file=sys.stderr
        )
    state_dir = Path(args.state_dir) if args.state_dir else (home.path / "clients" if home else None)
    config = ClientConfig(
        node=node,
        key=key,
        task_id=args.task,
        data=data,
        genesis=genesis,
        state_dir=state_dir,
        stake=args.stake,
        train=_train_config(args),
        seed=seed,
        attacker=Attacker(args.attack, colluders=args.colluders, seed=seed) if args.attack else None,
        reconnect_for=args.reconnect_for,
        timeout=args.timeout,
        flower=flower,
        flower_layout=args.flower_layout,
    )

    def show(ev: ClientEvent) -> None:
        if args.json:
            print(json.dumps(ev.to_json()), flush=True)
            return
        fields = "  ".join(
            f"{k} {','.join(f'{mk}={mv}' for mk, mv in v.items()) if isinstance(v, dict) else v}"
            for k, v in ev.fields.items()
        )
        print(f"{ev.kind:<12} {fields}", flush=True)

    if not args.json:
        print(
            f"client {key.address.hex()[:16]}  task {args.task}  node {node}  "
            f"{'Flower client ' + args.flower if flower is not None else str(len(data or ())) + ' samples'}"
            f"{'  journal ' + str(state_dir) if state_dir else ''}",
            flush=True,
        )
    try:
        result = trio.run(run_client, config, show)
    except KeyboardInterrupt:
        print(
            f"mpsnode client: interrupted{'; journal kept in ' + str(state_dir) if state_dir else ''} "
            "(a restart resubmits, never re-signs, an update already signed)",
            file=sys.stderr,
        )
        return 130
    ok = [r for r in result.rounds.values() if r.outcome == "ok" and r.reveal_outcome == "ok"]
    summary = {
        "done": True,
        "task": result.task_id,
        "status": result.status,
        "rounds_committed": len(result.rounds),
        "updates_ok": len(ok),  # committed and revealed
        "reconnects": result.reconnects,
        "accuracy_bps": result.accuracy_bps,
    }
    if args.json:
        print(json.dumps({"event": "done", **summary}), flush=True)
    else:
        print("done         " + "  ".join(f"{k} {v}" for k, v in summary.items() if k != "done"), flush=True)
    return 0 if result.status in ("completed", "expired") else 1


# ---------------------------------------------------------------------------------------------
# client create-task


def default_byzantine_f(clients: int) -> int:
    """The f a task of ``clients`` participants gets unless told: one in five, at least one, and at most
    what the chain accepts (``min_clients >= 2 f + 3``)."""
    return max(0, min((clients - 3) // 2, max(1, clients // 5)))


def task_sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """``(min_clients, max_clients, f)`` from the flags: ``--digits-clients N`` sizes the task to the
    split's N shards unless told otherwise; a task that could never start is refused."""
    shards = args.digits_clients
    max_clients = args.max_clients if args.max_clients is not None else (shards or DEFAULT_TASK_CLIENTS)
    min_clients = (
        args.min_clients if args.min_clients is not None else min(shards or max_clients, max_clients)
    )
    f = args.byzantine_f if args.byzantine_f is not None else default_byzantine_f(min_clients)
    if shards is not None and min_clients > shards:
        raise ValueError(
            f"--min-clients {min_clients} but the digits split has {shards} shards: the task could never start; "
            f"give --min-clients <= {shards} (or --digits-clients >= {min_clients})"
        )
    if min_clients < 2 * f + 3:
        raise ValueError(
            f"--byzantine-f {f} needs at least 2f + 3 = {2 * f + 3} clients per round, and --min-clients is "
            f"{min_clients}: lower --byzantine-f to {max(0, (min_clients - 3) // 2)} or raise --min-clients"
        )
    return min_clients, max_clients, f


def cmd_client_create_task(args: argparse.Namespace) -> int:
    """Create a task; exit 0 with its id, 1 if the CREATE_TASK was included but failed, 2 if refused."""
    genesis, node, home = resolve_node(args)
    key = signer_key(args, home)
    min_clients, max_clients, f = task_sizes(args)
    if args.validation:
        validation = load_dataset(args.validation, "--validation", args.label_column, args.val_labels)
    else:
        validation = digits_split(args.digits_clients, parse_alpha(args.alpha), args.seed).validation
    arch = tuple(int(w) for w in args.arch.split(",")) if args.arch else fl.DEFAULT_ARCH
    scale_bits = fl.DEFAULT_SCALE_BITS if args.scale_bits is None else args.scale_bits
    if not 0 < args.target <= 1:
        raise ValueError(f"--target {args.target}: give the accuracy as a fraction in (0, 1], e.g. 0.9")
    body = fl.create_task_body(
        validation,
        arch=arch,
        scale_bits=scale_bits,
        target_accuracy_bps=round(args.target * 10000),
        max_rounds=args.max_rounds,
        min_clients=min_clients,
        max_clients=max_clients,
        byzantine_f=f,
        join_blocks=args.join_blocks,
        round_blocks=args.round_blocks,
        fee_per_round=args.fee_per_round,
        local_epochs=args.local_epochs,
        seed=args.seed,
        aggregator=AGGREGATORS[args.aggregator],
    )

    async def main() -> dict[str, Any] | str:
        async with connect(node, genesis=genesis, timeout=args.timeout) as client:
            wallet = Wallet(key, client.chain_id, client.params)
            await wallet.recover(client)
            stx = wallet.sign(body)
            forecast = await preflight(client, stx)
            if forecast is not None and forecast.failure is not None:
                problem = forecast.failure
                raise WouldFail(
                    f"the CREATE_TASK would fail: {type(problem).__name__}: {problem.reason}; "
                    "nothing was sent"
                )
            await wallet.submit(client, stx)
            outcome = await client.wait_receipt(stx.tx_id, timeout=args.timeout)
            if not outcome.ok:
                why = outcome.receipt.status_name if outcome.receipt else f"{outcome.state}: {outcome.reason}"
                return f"the CREATE_TASK failed ({why}); its fee is spent"
            assert outcome.receipt is not None
            created = next(e for e in outcome.receipt.events if isinstance(e, TaskCreated))
            return {
                "task_id": created.task_id,
                "tx_id": stx.tx_id.hex(),
                "height": outcome.height,
                "escrow": created.escrow,
                "params": created.params,
                "min_clients": min_clients,
                "max_clients": max_clients,
                "byzantine_f": f,
                "aggregator": args.aggregator,
                "join_deadline": outcome.height + args.join_blocks,
                "validation_samples": len(validation),
                # samples per class: a user's own file shows here what the chain will judge on
                "validation_classes": np.bincount(validation.y, minlength=arch[-1]).tolist(),
            }

    out = trio.run(main)
    if isinstance(out, str):
        print(f"mpsnode: {out}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2) if args.json else "\n".join(f"{k:<18} {v}" for k, v in out.items()))
    if not args.json:
        print(
            f"the task starts once {min_clients} clients joined, by block {out['join_deadline']}; "
            "otherwise it expires and the escrow is refunded",
            file=sys.stderr,
        )
    return 0
