"""Robustness benchmark: federated digits training on the real chain, under every attack in
``mpsnode.fl.attacks`` (evaluation only) and withholding, against plain FedAvg.

Every run drives an in-process ``mpsnode.chain.Chain`` on a ``MemoryStore`` with real signed
transactions (CREATE_TASK, STAKE, JOIN_TASK, COMMIT_UPDATE, REVEAL_UPDATE): the rounds are closed by
the STF itself, so the round rule (tolerance, Krum, directions, slashing, exclusion, mixing),
aggregation, contribution units, evaluation and payments measured here are exactly what the chain
does. Rounds are commit-reveal, so the attackers see what is public when they commit: the previous
round's revealed updates (and the previous global change), never the current round's. The accuracy
target of every run is no-attack FedAvg of the same clients (every client honest, every update averaged with the chain's
integer aggregation and evaluation, from the same model).

Grid: f (an int, or ``attackers``: f = the number of attackers) x attack x malicious fraction x alpha
(``iid`` or a Dirichlet alpha) x seed. Prints one JSON object per run, per grid cell and a total on
stdout, and markdown tables (stderr, or ``--markdown FILE``). A run's object has, among others:
``attack``, ``fraction``, ``alpha``, ``seed``, ``byzantine_f``, ``honest_slashed`` (count),
``attackers_slashed``, ``void_rounds``, ``silent_removed``, ``final_accuracy`` and
``fedavg_no_attack_accuracy`` (percent), and ``completed``: the chain's accuracy reached
``--target`` (90%) within the rounds and the task did not end early, i.e. a task with that target
would have completed and paid (the chain's task itself runs all rounds at target 100% so that final
accuracies compare; its trajectory up to the target is the same).

``--pay``: the chain's task has the target itself, so it completes there and pays its clients by
contribution; each run's object then has ``rewards`` (per client), ``reward_per_attacker_over_honest``
(mean reward of an attacker, slashed ones at 0, over the mean reward of an honest client; null when
the task did not complete) and ``honest_reward_min_over_mean``, and the tables gain payments.

    python bench/robustness.py --jobs 2 --byzantine-f 5 --byzantine-f attackers   # the README grid
    python bench/robustness.py --quick               # a few minutes: fewer rounds, one seed
    python bench/robustness.py --attack sign_flip --alpha 0.5 --fraction 20
    python bench/robustness.py --diagnostics FILE    # per-round per-client statistics (calibration)
    python bench/robustness.py --param exclude_direction_bps=1500   # try other genesis parameters
    python bench/robustness.py --aggregator multi_krum              # the task's pre-aggregation
    python bench/robustness.py --oracle              # also FedAvg of the honest clients alone
    python bench/robustness.py --pay --byzantine-f attackers   # the payment grid (README)

``--oracle`` adds a third run per setup: FedAvg over the honest clients only, as if every attacker
had been removed before round 1 (nothing real can do that). Against it the chain's loss under attack
splits in two: no-attack FedAvg -> oracle is what the attackers' data leaving costs; oracle -> chain
is what the rules cost.
"""

from __future__ import annotations

import argparse
import functools
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
from mpsnode.consensus import krum, model, robust
from mpsnode.consensus.events import (
    ParticipantRemoved,
    RemovalReason,
    Rewarded,
    RoundClosed,
    Slashed,
    TaskCompleted,
    TaskExpired,
)
from mpsnode.consensus.hashing import H
from mpsnode.consensus.params import Params
from mpsnode.consensus.state import RoundPhase, TaskStatus
from mpsnode.consensus.stf.task import EXPIRED_MAX_ROUNDS
from mpsnode.consensus.tx import DEFAULT_AGGREGATOR, Aggregator, JoinTask, SignedTx, Stake, Tx, commit_reveal
from mpsnode.fl import attacks
from mpsnode.node.chain import Chain
from mpsnode.node.store import MemoryStore

ARCH = fl.DEFAULT_ARCH
SCALE_BITS = fl.DEFAULT_SCALE_BITS
WITHHOLD = "withhold"  # the attackers join and then never submit (a bench behaviour, not a crafted update)
ALL_ATTACKS = ("none", *attacks.ATTACKS, WITHHOLD)
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
    byzantine_f: int | None = 5  # None: f = the number of attackers
    aggregator: int = DEFAULT_AGGREGATOR
    local_epochs: int = 2
    target_bps: int = 9000
    params: tuple[tuple[str, int], ...] = ()  # genesis parameter overrides
    fedavg: bool = True
    oracle: bool = False
    diagnostics: bool = False
    pay: bool = False  # the chain's task completes at target_bps and pays

    @property
    def n_attackers(self) -> int:
        return 0 if self.attack == "none" else round(self.clients * self.fraction / 100)

    @property
    def f(self) -> int:
        return self.n_attackers if self.byzantine_f is None else self.byzantine_f

    @property
    def f_label(self) -> str:
        return "attackers" if self.byzantine_f is None else str(self.byzantine_f)


@dataclass
class Outcome:
    accuracy: list[int] = field(default_factory=list)
    slashed: dict[int, tuple[int, int]] = field(default_factory=dict)  # client -> (round, reason)
    void_rounds: int = 0
    silent_removed: int = 0
    expired_reason: int | None = None
    reached_target_round: int | None = None
    clipped: int = 0
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    completed_round: int | None = None  # the round the task completed (paid) in
    rewards: dict[int, int] = field(default_factory=dict)  # client -> amount paid
    units: dict[int, int] = field(default_factory=dict)  # client -> contribution units credited


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
                and self.setup.attack not in ("none", WITHHOLD)
                and attacks.poisons_data(self.setup.attack)
            ):
                data = attacks.flip_labels(data)
            out.append(fl.LocalLearner(data, ARCH, seed=1000 * self.setup.seed + i))
        return out

    def round_deltas(
        self,
        learners: list[fl.LocalLearner],
        weights: np.ndarray,
        active: Sequence[int],
        outcome: Outcome,
        knowledge: attacks.Knowledge | None = None,
        public: dict[int, np.ndarray] | None = None,
        previous_change: np.ndarray | None = None,
    ) -> dict[int, np.ndarray]:
        """Every active client's int16 delta for this round (attackers collude on theirs; withholding
        attackers send none). ``public``: the previous round's deltas (what the attackers can see when
        they commit), ``previous_change``: the last global change, in model units."""
        attack = self.setup.attack
        bad = [i for i in active if i in self.attackers]
        good = [i for i in active if i not in self.attackers]
        deltas: dict[int, np.ndarray] = {}
        for i in good:
            up = learners[i].train_round(weights, SCALE_BITS, self.setup.local_epochs)
            deltas[i] = up.delta
            outcome.clipped += up.clipped
        if bad and attack == WITHHOLD:
            return deltas
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
            seen = [i for i in sorted(public or {}) if i not in self.attackers]
            scale = float(1 << SCALE_BITS)
            honest = np.stack([public[i] / scale for i in seen]) if public and seen else None
            replay = None if previous_change is None else previous_change / scale
            crafted, clipped = attacks.craft_deltas(
                attack,
                own,
                honest,
                n_clients=self.setup.clients,
                scale_bits=SCALE_BITS,
                rng=self.attack_rng,
                knowledge=knowledge or attacks.Knowledge(self.setup.f, SCALE_BITS),
                previous_change=replay,
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
        target_accuracy_bps=setup.target_bps if setup.pay else 10_000,
        max_rounds=setup.rounds,
        min_clients=setup.clients,
        max_clients=setup.clients,
        byzantine_f=setup.f,
        join_blocks=1,
        round_blocks=2,
        fee_per_round=1_000_000,
        local_epochs=setup.local_epochs,
        seed=setup.seed,
        aggregator=setup.aggregator,
    )
    stake = 10 * params.min_stake
    events = drv.block([drv.tx(drv.keys["user"], body)] + [drv.tx(c, Stake(stake)) for c in drv.clients])
    task_id = events[0].task_id
    drv.block([drv.tx(c, JoinTask(task_id)) for c in drv.clients])
    index = {c.address: i for i, c in enumerate(drv.clients)}
    learners = pop.learners()
    out = Outcome()
    rules = robust.round_rules(params)
    public: dict[int, np.ndarray] = {}
    last_weights: np.ndarray | None = None
    while True:
        state = drv.chain.state()
        task = state.get_task(task_id)
        if task is None or task.status != TaskStatus.ACTIVE:
            break
        weights = fl.weights_from_bytes(state.get_model(task_id), ARCH)
        active = [index[a] for a in task.participants]
        knowledge = attacks.Knowledge.of_round(task, rules)
        change = None if last_weights is None else weights.astype(np.int64) - last_weights.astype(np.int64)
        deltas = pop.round_deltas(learners, weights, active, out, knowledge, public, change)
        last_weights = weights
        if setup.diagnostics:
            sent = [i for i in active if i in deltas]
            f_sent = robust.flag_f(task.byzantine_f, len(sent))
            out.diagnostics.append(round_diagnostics(task.round, sent, deltas, pop.attackers, f_sent))
        sent = [i for i in active if i in deltas]
        pairs = {
            i: commit_reveal(
                drv.genesis.chain_id,
                task_id,
                task.round,
                drv.clients[i].address,
                deltas[i].tobytes(),
                H(b"bench-salt", bytes([i]) + task.round.to_bytes(8, "big")),
            )
            for i in sent
        }
        events = drv.block([drv.tx(drv.clients[i], pairs[i][0]) for i in sent])
        while (t := drv.chain.state().get_task(task_id)) is not None and (
            t.round == task.round and t.phase == RoundPhase.COMMIT and t.status == TaskStatus.ACTIVE
        ):
            events += drv.block()  # someone withheld its commitment: wait for the commit deadline
        if t is not None and t.round == task.round and t.status == TaskStatus.ACTIVE:
            events += drv.block([drv.tx(drv.clients[i], pairs[i][1]) for i in sent])
        while not any(isinstance(e, RoundClosed) for e in events):  # a refused reveal: wait for the deadline
            events += drv.block()
        public = {i: deltas[i].astype(np.float64) for i in sent}
        for e in events:
            if isinstance(e, RoundClosed):
                if e.void:
                    out.void_rounds += 1
                else:
                    out.accuracy.append(e.accuracy_bps)
                for a, u in zip(e.participants, e.contributions, strict=True):
                    out.units[index[a]] = out.units.get(index[a], 0) + u
            elif isinstance(e, Rewarded):
                out.rewards[index[e.address]] = e.amount
            elif isinstance(e, TaskCompleted):
                out.completed_round = e.rounds
            elif isinstance(e, Slashed):
                out.slashed[index[e.address]] = (e.round, e.reason)
            elif isinstance(e, ParticipantRemoved) and e.reason == RemovalReason.SILENT:
                out.silent_removed += 1
            elif isinstance(e, TaskExpired) and e.reason != EXPIRED_MAX_ROUNDS:
                out.expired_reason = e.reason
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
        byzantine_f=setup.f,
        seed=setup.seed,
    )
    weights = fl.weights_from_bytes(body.init_weights, ARCH)
    vx, vy = fl.decode_validation(body.val_x, body.val_y, ARCH)
    learners = pop.learners()
    scratch = Outcome()
    acc = []
    averaged = [i for i in range(setup.clients) if not (honest_only and i in pop.attackers)]
    public: dict[int, np.ndarray] = {}
    change = None
    for _ in range(setup.rounds):
        deltas = pop.round_deltas(learners, weights, range(setup.clients), scratch, None, public, change)
        new = model.aggregate(weights, np.stack([deltas[i] for i in averaged if i in deltas]))
        change = new.astype(np.int64) - weights.astype(np.int64)
        weights = new
        public = {i: d.astype(np.float64) for i, d in deltas.items()}
        acc.append(model.accuracy_bps(weights, ARCH, SCALE_BITS, vx, vy))
    return acc


def round_diagnostics(
    round_: int, active: Sequence[int], deltas: dict[int, np.ndarray], attackers: frozenset[int], f: int
) -> dict[str, Any]:
    """Statistics of one round for calibration, from the exact integer Gram matrix.

    Per client: the Krum score over the lower median of all scores, its median pairwise cosine with
    the others (the chain's direction statistic, bps), whether it is in the raw Krum selection.
    """
    Q = np.stack([deltas[i] for i in active])
    G = krum.gram_matrix(Q)
    k = len(active)
    scores = krum.krum_scores(krum.distance_matrix_from_gram(G), f).tolist() if k >= 2 * f + 3 else [0] * k
    median = sorted(scores)[(k - 1) // 2]
    selected = sorted(range(k), key=lambda i: (scores[i], i))[: k - f]
    sel = set(selected)
    cos = robust.median_cosines(G.tolist())
    gate = sorted(cos[i] for i in selected)[(len(selected) - 1) // 2]
    return {
        "round": round_,
        "f": f,
        "gate_bps": gate,
        "clients": [
            {
                "client": c,
                "attacker": c in attackers,
                "selected": j in sel,
                "krum_ratio": scores[j] / median if median else 0.0,
                "cos_bps": cos[j],
                "norm2": int(G[j][j]),
            }
            for j, c in enumerate(active)
        ],
    }


# ---------------------------------------------------------------------------------------------
# One run, the grid, the summary


def first_round_reaching(acc: Sequence[int], target: int) -> int | None:
    return next((r + 1 for r, a in enumerate(acc) if a >= target), None)


@functools.lru_cache(maxsize=64)
def fedavg_no_attack(alpha: str, seed: int, clients: int, rounds: int, local_epochs: int) -> tuple[int, ...]:
    """FedAvg of the same clients, all of them honest: the accuracy target every attack is held to."""
    setup = Setup(
        "none", 0, alpha, seed, clients=clients, rounds=rounds, byzantine_f=0, local_epochs=local_epochs
    )
    return tuple(run_fedavg(setup, Population(setup)))


def run(setup: Setup) -> dict[str, Any]:
    t0 = time.perf_counter()
    pop = Population(setup)
    chain = run_chain(setup, pop)
    final = chain.accuracy[-1] if chain.accuracy else None
    baseline = fedavg_no_attack(setup.alpha, setup.seed, setup.clients, setup.rounds, setup.local_epochs)
    reached = first_round_reaching(chain.accuracy, setup.target_bps)
    honest_slashed = sorted(i for i in chain.slashed if i not in pop.attackers)
    result: dict[str, Any] = {
        "kind": "run",
        "attack": setup.attack,
        "fraction": setup.fraction,
        "alpha": setup.alpha,
        "seed": setup.seed,
        "clients": setup.clients,
        "attackers": sorted(pop.attackers),
        "byzantine_f": setup.f,
        "f_mode": setup.f_label,
        "aggregator": Aggregator.describe(setup.aggregator),
        "rounds": setup.rounds,
        "final_accuracy": None if final is None else final / 100,
        "fedavg_no_attack_accuracy": baseline[-1] / 100,
        "completed": reached is not None and chain.expired_reason is None,
        "honest_slashed": len(honest_slashed),
        "attackers_slashed": sum(1 for i in pop.attackers if i in chain.slashed),
        "void_rounds": chain.void_rounds,
        "final_accuracy_bps": final,
        "fedavg_no_attack_accuracy_bps": baseline[-1],
        "rounds_to_target": reached,
        "attacker_slash_rounds": sorted(chain.slashed[i][0] for i in pop.attackers if i in chain.slashed),
        "honest_slashed_clients": honest_slashed,
        "slash_reasons": sorted({RemovalReason.describe(r) for _, r in chain.slashed.values()}),
        "silent_removed": chain.silent_removed,
        "expired_reason": chain.expired_reason,
        "clipped": chain.clipped,
        "accuracy": chain.accuracy,
    }
    if setup.pay:
        result.update(payments(setup, pop, chain))
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


def payments(setup: Setup, pop: Population, chain: Outcome) -> dict[str, Any]:
    """What the completed task paid: per client, and the ratios of the payment targets."""
    honest = [i for i in range(setup.clients) if i not in pop.attackers]
    paid = chain.completed_round is not None
    rewards = [chain.rewards.get(i, 0) for i in range(setup.clients)]
    honest_mean = float(np.mean([rewards[i] for i in honest])) if honest else 0.0
    per_attacker = None
    if paid and pop.attackers and honest_mean > 0:
        per_attacker = float(np.mean([rewards[i] for i in pop.attackers])) / honest_mean
    return {
        "paid": paid,
        "completed_round": chain.completed_round,
        "rewards": rewards,
        "units": [chain.units.get(i, 0) for i in range(setup.clients)],
        "reward_per_attacker_over_honest": None if per_attacker is None else round(per_attacker, 4),
        "honest_reward_min_over_mean": (
            round(min(rewards[i] for i in honest) / honest_mean, 4) if paid and honest_mean > 0 else None
        ),
    }


def grid(args: argparse.Namespace) -> Iterator[Setup]:
    overrides = tuple(sorted(args.param.items()))
    for f in args.byzantine_f:
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
                            byzantine_f=f,
                            aggregator=args.aggregator,
                            target_bps=args.target,
                            params=overrides,
                            fedavg=not args.no_fedavg,
                            oracle=args.oracle,
                            diagnostics=args.diagnostics is not None,
                            pay=args.pay,
                        )


CellKey = tuple[str, str, int, str]  # f mode, attack, fraction, alpha


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (f mode, attack, fraction, alpha) over the seeds."""
    cells: dict[CellKey, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        cells[(r["f_mode"], r["attack"], r["fraction"], r["alpha"])].append(r)
    out = []
    for (f_mode, attack, fraction, alpha), rs in sorted(cells.items(), key=lambda kv: _cell_order(kv[0])):
        accs = [r["final_accuracy_bps"] or 0 for r in rs]
        drops = [r["fedavg_no_attack_accuracy_bps"] - (r["final_accuracy_bps"] or 0) for r in rs]
        slash_rounds = [x for r in rs for x in r["attacker_slash_rounds"]]
        cell = {
            "kind": "cell",
            "f_mode": f_mode,
            "attack": attack,
            "fraction": fraction,
            "alpha": alpha,
            "seeds": len(rs),
            "mean_accuracy_bps": round(float(np.mean(accs))),
            "min_accuracy_bps": min(accs),
            "fedavg_no_attack_mean_bps": round(
                float(np.mean([r["fedavg_no_attack_accuracy_bps"] for r in rs]))
            ),
            "max_drop_vs_fedavg_no_attack_bps": max(drops),
            "mean_drop_vs_fedavg_no_attack_bps": round(float(np.mean(drops))),
            "rounds_to_target": [r["rounds_to_target"] for r in rs],
            "completed": sum(1 for r in rs if r["completed"]),
            "attackers": sum(len(r["attackers"]) for r in rs),
            "attackers_slashed": sum(r["attackers_slashed"] for r in rs),
            "last_slash_round": max(slash_rounds) if slash_rounds else None,
            "honest_slashed": sum(r["honest_slashed"] for r in rs),
            "void_rounds": sum(r["void_rounds"] for r in rs),
            "silent_removed": sum(r["silent_removed"] for r in rs),
        }
        paid = [r for r in rs if r.get("paid")]
        if "paid" in rs[0]:
            ratios = [
                r["reward_per_attacker_over_honest"]
                for r in paid
                if r["reward_per_attacker_over_honest"] is not None
            ]
            floors = [
                r["honest_reward_min_over_mean"] for r in paid if r["honest_reward_min_over_mean"] is not None
            ]
            cell["paid"] = len(paid)
            cell["max_reward_per_attacker_over_honest"] = max(ratios) if ratios else None
            cell["min_honest_reward_min_over_mean"] = min(floors) if floors else None
            cell["honest_reward_min_over_mean"] = floors
        if "fedavg_final_accuracy_bps" in rs[0]:
            cell["fedavg_mean_accuracy_bps"] = round(
                float(np.mean([r["fedavg_final_accuracy_bps"] for r in rs]))
            )
        if "oracle_final_accuracy_bps" in rs[0]:
            cell["oracle_mean_accuracy_bps"] = round(
                float(np.mean([r["oracle_final_accuracy_bps"] for r in rs]))
            )
        out.append(cell)
    return out


def _cell_order(key: CellKey) -> tuple[Any, ...]:
    f_mode, attack, fraction, alpha = key
    return (
        f_mode,
        ALL_ATTACKS.index(attack),
        fraction,
        ALL_ALPHAS.index(alpha) if alpha in ALL_ALPHAS else 9,
        alpha,
    )


def _pct(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / 100:.1f}"


def markdown(cells: list[dict[str, Any]]) -> str:
    """Per f mode, two tables: accuracy against no-attack FedAvg, and slashing / liveness."""
    parts = []
    for f_mode in sorted({c["f_mode"] for c in cells}):
        group = [c for c in cells if c["f_mode"] == f_mode]
        alphas = [a for a in ALL_ALPHAS if any(c["alpha"] == a for c in group)]
        alphas += sorted({c["alpha"] for c in group} - set(alphas))
        rows = sorted(
            {(c["attack"], c["fraction"]) for c in group}, key=lambda r: (ALL_ATTACKS.index(r[0]), r[1])
        )
        by = {(c["attack"], c["fraction"], c["alpha"]): c for c in group}
        head = "| attack | malicious | " + " | ".join(f"alpha {a}" for a in alphas) + " |"
        sep = "|---|---|" + "---|" * len(alphas)
        seeds = max(c["seeds"] for c in group)
        title = "f = number of attackers" if f_mode == "attackers" else f"f = {f_mode}"
        acc_lines = [
            f"{title}. Final accuracy %, mean over {seeds} seeds: chain (worst seed's drop against "
            "no-attack FedAvg of the same clients, points); `*` = a seed missed 90%",
            "",
            head,
            sep,
        ]
        slash_lines = [
            f"{title}. Attackers slashed / attackers (last round any was slashed); honest slashed; "
            "void rounds; silent removed",
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
                missed = "*" if c["completed"] < c["seeds"] else ""
                acc_cells.append(
                    f"{_pct(c['mean_accuracy_bps'])} ({-c['max_drop_vs_fedavg_no_attack_bps'] / 100:+.1f}){missed}"
                )
                last = c["last_slash_round"]
                slash_cells.append(
                    f"{c['attackers_slashed']}/{c['attackers']}"
                    + (f" (r{last})" if last else "")
                    + f"; {c['honest_slashed']}; {c['void_rounds']}; {c['silent_removed']}"
                )
            acc_lines.append(f"| {attack} | {fraction}% | " + " | ".join(acc_cells) + " |")
            slash_lines.append(f"| {attack} | {fraction}% | " + " | ".join(slash_cells) + " |")
        fed = {c["alpha"]: c["fedavg_no_attack_mean_bps"] for c in group}
        acc_lines.append("| FedAvg, no attack | | " + " | ".join(_pct(fed.get(a)) for a in alphas) + " |")
        parts.append("\n".join(acc_lines) + "\n\n" + "\n".join(slash_lines) + "\n")
        if any("paid" in c for c in group):
            parts.append(_payment_table(title, head, sep, rows, alphas, by, seeds))
    return "\n".join(parts)


def _payment_table(
    title: str,
    head: str,
    sep: str,
    rows: list[tuple[str, int]],
    alphas: list[str],
    by: dict[tuple[str, int, str], dict[str, Any]],
    seeds: int,
) -> str:
    """Per cell: the worst seed's reward per attacker over the mean honest reward, and the lowest
    honest client's reward over the mean honest reward; ``(paid/seeds)`` when a seed's task did not
    complete (nothing was paid there)."""

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"{title}. Payments (tasks completing at the target): worst seed's reward per attacker / mean "
        "honest reward; lowest honest client / mean honest; (paid seeds / seeds) when some did not complete",
        "",
        head,
        sep,
    ]
    for attack, fraction in rows:
        cells = []
        for a in alphas:
            c = by.get((attack, fraction, a))
            if c is None or "paid" not in c:
                cells.append("")
                continue
            text = (
                f"{ratio(c['max_reward_per_attacker_over_honest'])}; {ratio(c['min_honest_reward_min_over_mean'])}"
                if attack != "none"
                else ratio(c["min_honest_reward_min_over_mean"])
            )
            if c["paid"] < c["seeds"]:
                text += f" ({c['paid']}/{c['seeds']})"
            cells.append(text)
        lines.append(f"| {attack} | {fraction}% | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    ap.add_argument(
        "--byzantine-f",
        action="append",
        help="the task's f: an int or 'attackers' (f = the number of attackers); repeatable, default 5",
    )
    ap.add_argument(
        "--aggregator",
        choices=[a.name.lower() for a in Aggregator],
        default=Aggregator(DEFAULT_AGGREGATOR).name.lower(),
        help="the task's pre-aggregation (default: the chain's default)",
    )
    ap.add_argument("--target", type=int, default=9000, help="accuracy target in bps for rounds-to-target")
    ap.add_argument("--param", action="append", default=[], help="genesis parameter override NAME=INT")
    ap.add_argument("--no-fedavg", action="store_true", help="skip the plain FedAvg comparison")
    ap.add_argument(
        "--oracle", action="store_true", help="also FedAvg of the honest clients alone (see above)"
    )
    ap.add_argument(
        "--pay",
        action="store_true",
        help="the task completes at --target and pays (payment ratios, see above)",
    )
    ap.add_argument("--quick", action="store_true", help="12 rounds, one seed")
    ap.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    ap.add_argument("--markdown", help="write the markdown tables to this file (default: stderr)")
    ap.add_argument("--diagnostics", help="write per-round per-client statistics (JSON lines) to this file")
    args = ap.parse_args(argv)
    args.attack = args.attack or list(ALL_ATTACKS)
    args.alpha = args.alpha or list(ALL_ALPHAS)
    args.fraction = args.fraction or list(ALL_FRACTIONS)
    f_modes: list[int | None] = []
    for v in args.byzantine_f or ["5"]:
        if v == "attackers":
            f_modes.append(None)
        elif v.isdigit():
            f_modes.append(int(v))
        else:
            ap.error(f"--byzantine-f wants an int or 'attackers', got {v!r}")
    args.byzantine_f = f_modes
    args.aggregator = int(Aggregator[args.aggregator.upper()])
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
                "honest_slashed": sum(r["honest_slashed"] for r in runs),
                "void_rounds": sum(r["void_rounds"] for r in runs),
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
