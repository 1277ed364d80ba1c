"""Benchmark: one round's local training with each kind of client, on the same data.

The three kinds a task can mix (docs/FL.md, "Bring your own client"): mpsnode's native learner
(``fl.LocalLearner``), an unchanged Flower NumPyClient around a scikit-learn ``MLPClassifier``
(examples/flower_sklearn_client.py) and one around a PyTorch MLP (examples/flower_torch_client.py),
the last two driven by ``fl.flower.FlowerLearner`` exactly as ``mpsnode client run --flower`` does.
Each trains shard 0 of the digits split for ``--clients`` clients (iid, seed 0) on the task's arch
[64, 32, 10] at scale 2^-12 with ``local_epochs`` 2, for ``--rounds`` rounds: each round starts
from the model the last one left (the client's own update applied, as a one-client aggregation),
so every round's parameters are new to the client. Timed per round: ``train_round`` whole (the
framework's fit, the layout conversion both ways, quantization to the int16 delta, error
feedback); ``load_s`` is loading the client (importing its module and framework, building the
model). The accuracy is the chain's model after the last round on the held-back validation set
(float forward pass). One JSON object per kind, then a summary.

    python bench/client_kinds.py [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from mpsnode import fl
from mpsnode.consensus import model
from mpsnode.fl import mlp, quantize
from mpsnode.fl.data import digits_split
from mpsnode.fl.flower import FlowerError, FlowerLearner, load_client

REPO = Path(__file__).resolve().parent.parent
ARCH = (64, 32, 10)
SCALE_BITS = 12
LOCAL_EPOCHS = 2


def make_learner(kind: str, clients: int):
    data = digits_split(clients, None, 0).clients[0]
    if kind == "native":
        return fl.LocalLearner(data, ARCH, seed=0)
    os.environ.update({"SHARD": f"0/{clients}", "ALPHA": "iid", "SEED": "0"})
    client = load_client(str(REPO / "examples" / f"flower_{kind}_client.py") + ":make_client")
    return FlowerLearner(client, ARCH)


def run(kind: str, clients: int, rounds: int) -> dict:
    started = time.perf_counter()
    learner = make_learner(kind, clients)
    load_s = time.perf_counter() - started
    weights = fl.initial_weights(ARCH, SCALE_BITS, 0)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        update = learner.train_round(weights, SCALE_BITS, LOCAL_EPOCHS)
        times.append(time.perf_counter() - t)
        weights = np.clip(weights + update.delta.astype(np.int32), -model.WEIGHT_CLAMP, model.WEIGHT_CLAMP)
    validation = digits_split(clients, None, 0).validation
    logits, _ = mlp.forward(quantize.dequantize(weights, SCALE_BITS), ARCH, validation.x)
    return {
        "bench": "client_round",
        "kind": kind,
        "load_s": round(load_s, 3),
        "first_round_s": round(times[0], 4),
        "round_s_median": round(statistics.median(times[1:] or times), 4),
        "round_s_max": round(max(times[1:] or times), 4),
        "rounds": rounds,
        "samples": len(digits_split(clients, None, 0).clients[0]),
        "accuracy_after": round(float(np.mean(np.argmax(logits, axis=1) == validation.y)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    digits_split(args.clients, None, 0)  # the digits loaded once, before any client is timed
    results = {}
    for kind in ("native", "sklearn", "torch"):
        try:
            results[kind] = run(kind, args.clients, rounds)
        except FlowerError as exc:  # torch (the [torch] extra) or flwr absent
            print(json.dumps({"bench": "client_round", "kind": kind, "skipped": str(exc)}), flush=True)
            continue
        print(json.dumps(results[kind]), flush=True)
    native = results.get("native", {}).get("round_s_median")
    print(
        json.dumps(
            {
                "bench": "client_round_summary",
                **{
                    f"{kind}_over_native": round(r["round_s_median"] / native, 2)
                    for kind, r in results.items()
                    if native and kind != "native"
                },
            }
        )
    )


if __name__ == "__main__":
    main()
