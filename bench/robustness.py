"""Robustness benchmark: federated digits training on the real chain, under every attack in
``mpsnode.fl.attacks`` (evaluation only), against plain FedAvg.

Every run drives an in-process ``mpsnode.chain.Chain`` on a ``MemoryStore`` with real signed
transactions (CREATE_TASK, STAKE, JOIN_TASK, SUBMIT_UPDATE): the rounds are closed by the STF
itself, so Krum, the flagging rules, slashing, aggregation and evaluation measured here are exactly
what the chain does. Beside it the same clients run plain FedAvg (every update averaged with the
chain's integer aggregation and evaluation, nobody flagged), starting from the same model.

Grid: attack x malicious fraction x alpha (``iid`` or a Dirichlet alpha) x seed. Prints one JSON
object per run and per grid cell on stdout, and a markdown summary (stderr, or ``--markdown FILE``).

    python bench/robustness.py                       # the whole grid (about an hour on 2 cores)
    python bench/robustness.py --quick               # a few minutes: fewer rounds, one seed
    python bench/robustness.py --attack sign_flip --alpha 0.5 --fraction 20
    python bench/robustness.py --diagnostics FILE    # per-round per-client statistics (calibration)
    python bench/robustness.py --param slash_direction_bps=2000   # try other genesis parameters
    python bench/robustness.py --oracle              # also FedAvg of the honest clients alone

``--oracle`` adds a third run per setup: FedAvg over the honest clients only, as if every attacker
had been removed before round 1 (nothing real can do that). Against it the chain's loss under attack
splits in two: no-attack FedAvg -> oracle is what the attackers' data leaving costs; oracle -> chain
is what the rules cost (the rounds before a slash, and Multi-Krum leaving out ``f`` updates a round).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import genesis as genesis_tool
from mpsnode import fl
from mpsnode.consensus import krum, model
from mpsnode.consensus.events import RoundClosed, Slashed
from mpsnode.consensus.params import Params
from mpsnode.consensus.state import TaskStatus
from mpsnode.consensus.tx import JoinTask, SignedTx, Stake, SubmitUpdate, Tx
from mpsnode.fl import attacks
from mpsnode.node.chain import Chain
from mpsnode.node.store import MemoryStore

ARCH = fl.DEFAULT_ARCH
SCALE_BITS = fl.DEFAULT_SCALE_BITS
ALL_ATTACKS = ("none", *attacks.ATTACKS)
ALL_ALPHAS = ("iid", "1.0", "0.5", "0.1")
ALL_FRACTIONS = (0, 10, 20, 30)


@dataclass(frozen=True, slots=True)
class Setup:
    attack: str
    fraction: int  # percent of clients that are malicious
    alpha: str  # "iid" or a Dirichlet alpha
    seed: int
    clients: int = 20
    rounds: int = 30
    byzantine_f: int = 5
    local_epochs: int = 2
    target_bps: int = 9000
    params: tuple[tuple[str, int], ...] = ()  # genesis parameter overrides
    fedavg: bool = True
    oracle: bool = False
    diagnostics: bool = False

    @property
    def n_attackers(self) -> int:
        return 0 if self.attack == "none" else round(self.clients * self.fraction / 100)


@dataclass
class Outcome:
    accuracy: list[int] = field(default_factory=list)
    slashed: dict[int, tuple[int, int]] = field(default_factory=dict)  # client -> (round, reason)
    void_rounds: int = 0
    clipped: int = 0
    diagnostics: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The clients: honest learners and colluding attackers


class Population:
    """The run's clients: data, learners and which of them attack."""

    def __init__(self, setup: Setup) -> None:
        alpha = None if setup.alpha == "iid" else float(setup.alpha)
        self.setup = setup
        self.split = fl.make_split(fl.load_digits(), setup.clients, alpha=alpha, seed=setup.seed)
        rng = np.random.default_rng(10_000 + setup.seed)
        self.attackers = frozenset(int(i) for i in rng.permutation(setup.clients)[: setup.n_attackers])
        self.attack_rng = np.random.default_rng(20_000 + setup.seed)

    def learners(self) -> list[fl.LocalLearner]:
        """Fresh learners (one per client; attackers on flipped labels for label_flip)."""
        out = []
        for i, data in enumerate(self.split.clients):
            if (
                i in self.attackers
                and self.setup.attack != "none"
                and attacks.poisons_data(self.setup.attack)
            ):
                data = attacks.flip_labels(data)
            out.append(fl.LocalLearner(data, ARCH, seed=1000 * self.setup.seed + i))
        return out

    def round_deltas(
        self, learners: list[fl.LocalLearner], weights: np.ndarray, active: Sequence[int], outcome: Outcome
    ) -> dict[int, np.ndarray]:
        """Every active client's int16 delta for this round (attackers collude on theirs)."""
        attack = self.setup.attack
        bad = [i for i in active if i in self.attackers]
        good = [i for i in active if i not in self.attackers]
        deltas: dict[int, np.ndarray] = {}
        changes: dict[int, np.ndarray] = {}
        for i in good:
            up = learners[i].train_round(weights, SCALE_BITS, self.setup.local_epochs)
            deltas[i], changes[i] = up.delta, up.change
            outcome.clipped += up.clipped
        if bad:
            d = model.param_count(ARCH)
            if attacks.needs_training(attack):
                own = np.stack(
                    [
                        learners[i].train_round(weights, SCALE_BITS, self.setup.local_epochs).change
                        for i in bad
                    ]
                )
            else:
                own = np.zeros((len(bad), d))
            honest = np.stack([changes[i] for i in good]) if good else None
            crafted, clipped = attacks.craft_deltas(
                attack, own, honest, n_clients=self.setup.clients, scale_bits=SCALE_BITS, rng=self.attack_rng
            )
            outcome.clipped += sum(clipped)
            for row, i in enumerate(bad):
                deltas[i] = crafted[row]
        return deltas


# ---------------------------------------------------------------------------------------------
# The chain run


class ChainDriver:
    """A devnet chain in memory, driven with real signed transactions."""

    def __init__(self, clients: int, params: Params) -> None:
        self.genesis, self.keys = genesis_tool.devnet(clients, params)
        self.chain = Chain(MemoryStore(), self.genesis)
        self.nonces: dict[bytes, int] = {}
        self.time_ms = self.genesis.genesis_time_ms
        self.clients = [self.keys[f"client-{i}"] for i in range(clients)]

    def tx(self, key: Any, body: Any) -> SignedTx:
        nonce = self.nonces.get(key.address, 0)
        self.nonces[key.address] = nonce + 1
        return Tx(self.genesis.chain_id, key.address, nonce, self.genesis.params.tx_base_fee, body).sign(key)

    def block(self, txs: Sequence[SignedTx] = ()) -> list[Any]:
        self.time_ms += 1000
        _, result, rejected = self.chain.build(list(txs), self.time_ms, self.keys["sequencer"])
        if rejected:
            raise RuntimeError(f"benchmark built an invalid tx: {rejected[0][1].reason}")
        return result.events


def run_chain(setup: Setup, pop: Population) -> Outcome:
    params = replace(Params(), **dict(setup.params))
    drv = ChainDriver(setup.clients, params)
    body = fl.create_task_body(
        pop.split.validation,
        arch=ARCH,
        scale_bits=SCALE_BITS,
        target_accuracy_bps=10_000,
        max_rounds=setup.rounds,
        min_clients=setup.clients,
        max_clients=setup.clients,
        byzantine_f=setup.byzantine_f,
        join_blocks=1,
        round_blocks=2,
        fee_per_round=100,
        local_epochs=setup.local_epochs,
        seed=setup.seed,
    )
    stake = 10 * params.min_stake
    events = drv.block([drv.tx(drv.keys["user"], body)] + [drv.tx(c, Stake(stake)) for c in drv.clients])
    task_id = events[0].task_id
    drv.block([drv.tx(c, JoinTask(task_id)) for c in drv.clients])
    index = {c.address: i for i, c in enumerate(drv.clients)}
    learners = pop.learners()
    out = Outcome()
    while True:
        state = drv.chain.state()
        task = state.get_task(task_id)
        if task is None or task.status != TaskStatus.ACTIVE:
            break
        weights = fl.weights_from_bytes(state.get_model(task_id), ARCH)
        active = [index[a] for a in task.participants]
        deltas = pop.round_deltas(learners, weights, active, out)
        if setup.diagnostics:
            out.diagnostics.append(
                round_diagnostics(task.round, active, deltas, pop.attackers, setup.byzantine_f)
            )
        events = drv.block(
            [drv.tx(drv.clients[i], SubmitUpdate(task_id, task.round, deltas[i].tobytes())) for i in active]
        )
        while not any(isinstance(e, RoundClosed) for e in events):  # a refused update: wait for the deadline
            events = drv.block()
        for e in events:
            if isinstance(e, RoundClosed):
                if e.void:
                    out.void_rounds += 1
                else:
                    out.accuracy.append(e.accuracy_bps)
            elif isinstance(e, Slashed):
                out.slashed[index[e.address]] = (e.round, e.reason)
    return out


def run_fedavg(setup: Setup, pop: Population, *, honest_only: bool = False) -> list[int]:
    """Plain FedAvg on the same clients: every update averaged, nobody flagged, same integer model.

    ``honest_only``: the oracle, averaging only the clients that do not attack (all of them train).
    """
    body = fl.create_task_body(
        pop.split.validation,
        arch=ARCH,
        scale_bits=SCALE_BITS,
        min_clients=setup.clients,
        max_clients=setup.clients,
        byzantine_f=setup.byzantine_f,
        seed=setup.seed,
    )
    weights = fl.weights_from_bytes(body.init_weights, ARCH)
    vx, vy = fl.decode_validation(body.val_x, body.val_y, ARCH)
    learners = pop.learners()
    scratch = Outcome()
    acc = []
    averaged = [i for i in range(setup.clients) if not (honest_only and i in pop.attackers)]
    for _ in range(setup.rounds):
        deltas = pop.round_deltas(learners, weights, range(setup.clients), scratch)
        weights = model.aggregate(weights, np.stack([deltas[i] for i in averaged]))
        acc.append(model.accuracy_bps(weights, ARCH, SCALE_BITS, vx, vy))
    return acc


def round_diagnostics(
    round_: int, active: Sequence[int], deltas: dict[int, np.ndarray], attackers: frozenset[int], f: int
) -> dict[str, Any]:
    """Statistics of one round for calibration (floats, computed from the exact integer Gram matrix).

    Per client: the Krum score over the lower median of all scores, the cosine of its update with
    the sum of all other updates, and with the sum of the Multi-Krum selection (itself left out).
    """
    Q = np.stack([deltas[i] for i in active])
    Gi = krum.gram_matrix(Q)
    G = Gi.astype(object)  # Python ints: sums below can pass 2^63
    k = len(active)
    scored = k >= 2 * f + 3
    scores = krum.krum_scores(krum.distance_matrix_from_gram(Gi), f).tolist() if scored else [0] * k
    median = sorted(scores)[(k - 1) // 2]
    selected = sorted(range(k), key=lambda i: (scores[i], i))[: k - f] if scored else list(range(k))
    sel = set(selected)

    def cosine(i: int, group: Sequence[int]) -> float:
        others = [j for j in group if j != i]
        dot = sum(G[i][j] for j in others)
        norm = sum(G[j][m] for j in others for m in others)
        return float(dot) / float(np.sqrt(float(G[i][i]) * float(norm))) if G[i][i] and norm else 0.0

    return {
        "round": round_,
        "clients": [
            {
                "client": c,
                "attacker": c in attackers,
                "selected": j in sel,
                "krum_ratio": scores[j] / median if median else 0.0,
                "cos_others": cosine(j, range(k)),
                "cos_selected": cosine(j, selected),
                "norm2": int(G[j][j]),
            }
            for j, c in enumerate(active)
        ],
    }


# ---------------------------------------------------------------------------------------------
# One run, the grid, the summary


def first_round_reaching(acc: Sequence[int], target: int) -> int | None:
    return next((r + 1 for r, a in enumerate(acc) if a >= target), None)


def run(setup: Setup) -> dict[str, Any]:
    t0 = time.perf_counter()
    pop = Population(setup)
    chain = run_chain(setup, pop)
    result: dict[str, Any] = {
        "kind": "run",
        "attack": setup.attack,
        "fraction": setup.fraction,
        "alpha": setup.alpha,
        "seed": setup.seed,
        "clients": setup.clients,
        "attackers": sorted(pop.attackers),
        "byzantine_f": setup.byzantine_f,
        "rounds": setup.rounds,
        "final_accuracy_bps": chain.accuracy[-1] if chain.accuracy else None,
        "rounds_to_target": first_round_reaching(chain.accuracy, setup.target_bps),
        "attackers_slashed": sum(1 for i in pop.attackers if i in chain.slashed),
        "attacker_slash_rounds": sorted(chain.slashed[i][0] for i in pop.attackers if i in chain.slashed),
        "honest_slashed": sorted(i for i in chain.slashed if i not in pop.attackers),
        "slash_reasons": sorted({r for _, r in chain.slashed.values()}),
        "void_rounds": chain.void_rounds,
        "clipped": chain.clipped,
        "accuracy": chain.accuracy,
    }
    if setup.fedavg:
        fed = run_fedavg(setup, Population(setup))
        result["fedavg_final_accuracy_bps"] = fed[-1]
        result["fedavg_rounds_to_target"] = first_round_reaching(fed, setup.target_bps)
    if setup.oracle:
        result["oracle_final_accuracy_bps"] = run_fedavg(setup, Population(setup), honest_only=True)[-1]
    if setup.diagnostics:
        result["diagnostics"] = chain.diagnostics
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def grid(args: argparse.Namespace) -> Iterator[Setup]:
    overrides = tuple(sorted(args.param.items()))
    for attack in args.attack:
        for fraction in args.fraction:
            if (attack == "none") != (fraction == 0):
                continue  # no attack has no attackers; an attack needs some
            for alpha in args.alpha:
                for seed in args.seeds:
                    yield Setup(
                        attack,
                        fraction,
                        alpha,
                        seed,
                        clients=args.clients,
                        rounds=args.rounds,
                        byzantine_f=args.byzantine_f,
                        target_bps=args.target,
                        params=overrides,
                        fedavg=not args.no_fedavg,
                        oracle=args.oracle,
                        diagnostics=args.diagnostics is not None,
                    )


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (attack, fraction, alpha) over the seeds, with the drop against no attack."""
    cells: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        cells[(r["attack"], r["fraction"], r["alpha"])].append(r)
    baseline = {(r["alpha"], r["seed"]): r["final_accuracy_bps"] for r in runs if r["attack"] == "none"}
    out = []
    for (attack, fraction, alpha), rs in sorted(
        cells.items(),
        key=lambda kv: (
            ALL_ATTACKS.index(kv[0][0]),
            kv[0][1],
            ALL_ALPHAS.index(kv[0][2]) if kv[0][2] in ALL_ALPHAS else 9,
        ),
    ):
        accs = [r["final_accuracy_bps"] for r in rs]
        drops = [
            baseline[(r["alpha"], r["seed"])] - r["final_accuracy_bps"]
            for r in rs
            if (r["alpha"], r["seed"]) in baseline
        ]
        slash_rounds = [x for r in rs for x in r["attacker_slash_rounds"]]
        reached = [r["rounds_to_target"] for r in rs]
        cell = {
            "kind": "cell",
            "attack": attack,
            "fraction": fraction,
            "alpha": alpha,
            "seeds": len(rs),
            "mean_accuracy_bps": round(float(np.mean(accs))),
            "min_accuracy_bps": min(accs),
            "max_drop_vs_no_attack_bps": max(drops) if drops else None,
            "rounds_to_target": reached,
            "attackers": sum(len(r["attackers"]) for r in rs),
            "attackers_slashed": sum(r["attackers_slashed"] for r in rs),
            "last_slash_round": max(slash_rounds) if slash_rounds else None,
            "honest_slashed": sum(len(r["honest_slashed"]) for r in rs),
        }
        if "fedavg_final_accuracy_bps" in rs[0]:
            fed = [r["fedavg_final_accuracy_bps"] for r in rs]
            cell["fedavg_mean_accuracy_bps"] = round(float(np.mean(fed)))
            cell["fedavg_rounds_to_target"] = [r["fedavg_rounds_to_target"] for r in rs]
        if "oracle_final_accuracy_bps" in rs[0]:
            cell["oracle_mean_accuracy_bps"] = round(
                float(np.mean([r["oracle_final_accuracy_bps"] for r in rs]))
            )
        out.append(cell)
    return out


def _pct(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / 100:.1f}"


def markdown(cells: list[dict[str, Any]]) -> str:
    """Two tables: accuracy (chain vs FedAvg) and slashing, one column per alpha."""
    alphas = [a for a in ALL_ALPHAS if any(c["alpha"] == a for c in cells)]
    alphas += sorted({c["alpha"] for c in cells} - set(alphas))
    rows = sorted(
        {(c["attack"], c["fraction"]) for c in cells}, key=lambda r: (ALL_ATTACKS.index(r[0]), r[1])
    )
    by = {(c["attack"], c["fraction"], c["alpha"]): c for c in cells}
    head = "| attack | malicious | " + " | ".join(f"alpha {a}" for a in alphas) + " |"
    sep = "|---|---|" + "---|" * len(alphas)
    acc_lines = [
        "Final accuracy %, mean over seeds: chain (Krum + slashing) / plain FedAvg; "
        "rounds to 90% (chain, worst seed, `-` = not reached)",
        "",
        head,
        sep,
    ]
    slash_lines = [
        "Slashing: attackers slashed / attackers (last round any was slashed); honest slashed",
        "",
        head,
        sep,
    ]
    for attack, fraction in rows:
        acc_cells, slash_cells = [], []
        for a in alphas:
            c = by.get((attack, fraction, a))
            if c is None:
                acc_cells.append("")
                slash_cells.append("")
                continue
            reached = c["rounds_to_target"]
            worst = "-" if any(x is None for x in reached) else str(max(reached))
            fed = _pct(c.get("fedavg_mean_accuracy_bps")) if "fedavg_mean_accuracy_bps" in c else "n/a"
            acc_cells.append(f"{_pct(c['mean_accuracy_bps'])} / {fed}; {worst}")
            last = c["last_slash_round"]
            slash_cells.append(
                f"{c['attackers_slashed']}/{c['attackers']}"
                + (f" (r{last})" if last else "")
                + f"; {c['honest_slashed']}"
            )
        acc_lines.append(f"| {attack} | {fraction}% | " + " | ".join(acc_cells) + " |")
        slash_lines.append(f"| {attack} | {fraction}% | " + " | ".join(slash_cells) + " |")
    return "\n".join(acc_lines) + "\n\n" + "\n".join(slash_lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attack", action="append", choices=ALL_ATTACKS, help="repeatable; default: all")
    ap.add_argument(
        "--alpha", action="append", help="iid or a Dirichlet alpha, repeatable; default: iid 1.0 0.5 0.1"
    )
    ap.add_argument(
        "--fraction", action="append", type=int, help="malicious percent, repeatable; default 0 10 20 30"
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--byzantine-f", type=int, default=5)
    ap.add_argument("--target", type=int, default=9000, help="accuracy target in bps for rounds-to-target")
    ap.add_argument("--param", action="append", default=[], help="genesis parameter override NAME=INT")
    ap.add_argument("--no-fedavg", action="store_true", help="skip the plain FedAvg comparison")
    ap.add_argument(
        "--oracle", action="store_true", help="also FedAvg of the honest clients alone (see above)"
    )
    ap.add_argument("--quick", action="store_true", help="12 rounds, one seed")
    ap.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    ap.add_argument("--markdown", help="write the markdown tables to this file (default: stderr)")
    ap.add_argument("--diagnostics", help="write per-round per-client statistics (JSON lines) to this file")
    args = ap.parse_args(argv)
    args.attack = args.attack or list(ALL_ATTACKS)
    args.alpha = args.alpha or list(ALL_ALPHAS)
    args.fraction = args.fraction or list(ALL_FRACTIONS)
    for a in args.alpha:
        if a != "iid":
            try:
                if not float(a) > 0:
                    raise ValueError
            except ValueError:
                ap.error(f"--alpha must be iid or a positive number, got {a!r}")
    if args.quick:
        args.rounds, args.seeds = 12, 1
    args.seeds = list(range(args.seeds))
    names = {f.name for f in fields(Params)}
    overrides = {}
    for item in args.param:
        name, _, value = item.partition("=")
        if name not in names or not value.lstrip("-").isdigit():
            ap.error(f"--param wants NAME=INT with NAME one of {sorted(names)}, got {item!r}")
        overrides[name] = int(value)
    problems = replace(Params(), **overrides).validate()
    if problems:
        ap.error("; ".join(f"{n}: {why}" for n, why in problems))
    args.param = overrides
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setups = list(grid(args))
    runs: list[dict[str, Any]] = []
    diag = open(args.diagnostics, "w") if args.diagnostics else None  # noqa: SIM115 - closed when the grid is done
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_one_thread_each) as pool:
            results: Iterator[dict[str, Any]] = pool.map(run, setups)
            runs = _collect(results, diag)
    else:
        runs = _collect(map(run, setups), diag)
    if diag:
        diag.close()
    cells = summarize(runs)
    for c in cells:
        print(json.dumps(c), flush=True)
    print(
        json.dumps(
            {
                "kind": "total",
                "runs": len(runs),
                "seconds": round(time.perf_counter() - t0, 1),
                "honest_slashed": sum(len(r["honest_slashed"]) for r in runs),
                "params": {**Params().to_json(), **args.param},
            }
        ),
        flush=True,
    )
    table = markdown(cells)
    if args.markdown:
        Path(args.markdown).write_text(table)
    else:
        print(table, file=sys.stderr)


def _one_thread_each() -> None:
    """Worker processes share the cores: one numba thread each."""
    import numba

    numba.set_num_threads(1)


def _collect(results: Iterator[dict[str, Any]], diag: Any) -> list[dict[str, Any]]:
    runs = []
    for r in results:
        if diag is not None:
            for d in r.pop("diagnostics", []):
                diag.write(
                    json.dumps(
                        {
                            "attack": r["attack"],
                            "fraction": r["fraction"],
                            "alpha": r["alpha"],
                            "seed": r["seed"],
                            **d,
                        }
                    )
                    + "\n"
                )
        print(json.dumps(r), flush=True)
        runs.append(r)
    return runs


if __name__ == "__main__":
    main()
