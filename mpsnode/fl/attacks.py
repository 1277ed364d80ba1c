"""Poisoning attacks on federated learning. FOR EVALUATION ONLY.

This module exists to test the protocol's defences (Krum, slashing) in the robustness benchmark
and the demo; an honest client never imports it. Every attack turns what the attackers could
compute honestly into the float changes they submit instead; ``craft_deltas`` quantizes them to
int16 deltas at the task's scale.

Inputs, as in the papers the attacks come from:

* ``own``: the honest-like changes the colluding attackers trained on their own data this round
  (``a x d``; for ``label_flip`` trained on flipped labels, see ``flip_labels``).
* ``honest``: the honest clients' changes the attackers can see when they commit (``h x d``). Rounds
  are commit-reveal, so nobody sees the current round's updates before committing: what is public
  is the previous round's revealed updates, and that is what the daemon and the benchmark pass. The
  attacks whose papers assume the attacker sees honest updates use them: ``free_rider_copy`` copies
  one, ``ipm`` uses their mean (Xie, Koyejo, Gupta 2019 assume an omniscient attacker), the
  adaptive attacks their statistics. When it is ``None`` (the first round) these fall back to ``own``.
* ``previous_change``: the last round's global change (the model now minus the model before),
  public, for ``free_rider_replay``.

The attacks:

* ``sign_flip``: ``-own`` (each attacker reverses its own update).
* ``gaussian``: ``N(0, std^2)`` per parameter, ignoring the data (``std`` in parameter units, 1.0 by
  default; honest digits updates have per-parameter RMS 0.02-0.1 in early rounds).
* ``scaled``: ``boost * own``, the boosted update of model-replacement attacks (Bagdasaryan et al.
  2020), ``boost`` = the number of clients by default so that one update outweighs the average.
* ``label_flip``: honest training on labels ``c -> n_classes - 1 - c``; the update is sent as trained.
* ``free_rider_zeros``: no training, a zero update. ``free_rider_copy``: a copy of an honest update
  (of the previous round: the current one is hidden until every commitment is in).
  ``free_rider_replay``: no training, the previous round's global change again plus Gaussian noise of
  ``replay_noise`` (0.25) times its RMS per parameter: momentum for free, looking like a fresh step.
* ``alie`` ("A Little Is Enough", Baruch et al. 2019): every colluder sends ``mean - z * std`` of the
  colluders' own updates, per parameter; ``z`` from the paper: ``s = floor(n / 2 + 1) - a``,
  ``z = Phi^-1((n - s) / n)`` for ``n`` clients of which ``a`` collude.
* ``ipm`` (inner-product manipulation, Xie et al. 2019): ``-epsilon * mean(honest)``; the benchmark
  runs ``epsilon = 0.1`` (``ipm_0.1``, hides among honest updates) and ``2`` (``ipm_2``).

Adaptive attacks that know the aggregation rule and see the honest updates (full knowledge):

* ``fang_krum`` (Fang, Cao, Jia, Gong, USENIX Security 2020, "Local Model Poisoning Attacks to
  Byzantine-Robust FL", the attack on Krum): every colluder sends ``-lambda * s``, ``s`` the sign of
  the honest mean change (the direction the model would move without attack), with the largest
  ``lambda`` (halving from the paper's upper bound) for which Krum with the task's ``f`` picks a
  crafted update over every honest one.
* ``fang_krum_aware``: the same, but the colluders also know the chain's flagging rules
  (``mpsnode.consensus.robust`` with the genesis parameters): they keep halving ``lambda`` until the
  chain would flag none of them, and send their honest updates in rounds where no ``lambda`` above
  a floor passes.
* ``minmax_std``, ``minmax_uv``, ``minsum_std``, ``minsum_uv`` (Shejwalkar and Houmansadr, NDSS 2021,
  "Manipulating the Byzantine", the AGR-agnostic attacks): ``mean(honest) + gamma * p`` with ``p``
  minus the honest per-parameter standard deviation (``std``) or minus the unit vector of the honest
  mean (``uv``), ``gamma`` the largest (binary search) for which the crafted update's largest
  distance to an honest one stays within the largest honest pairwise distance (min-max), or its sum
  of squared distances within the largest honest one's (min-sum).

The chain refuses an exact duplicate of an update already submitted in the round, so attacks whose
colluders would send one identical vector (``alie``, ``ipm``, ``free_rider_*``) make each copy
distinct: the attacker with index ``i`` adds one unit (``2^-s``) at parameter ``i mod d``. This is
what a real colluder would do and changes nothing else measurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mpsnode.consensus import krum, robust
from mpsnode.consensus.model import param_count
from mpsnode.consensus.robust import RoundRules, round_rules
from mpsnode.consensus.state import Task
from mpsnode.consensus.tx import DEFAULT_AGGREGATOR
from mpsnode.fl.data import Dataset
from mpsnode.fl.learner import quantize_update
from mpsnode.fl.rounds import RoundView

ATTACKS = (
    "sign_flip",
    "gaussian",
    "scaled",
    "label_flip",
    "free_rider_zeros",
    "free_rider_copy",
    "free_rider_replay",
    "alie",
    "ipm_0.1",
    "ipm_2",
    "fang_krum",
    "fang_krum_aware",
    "minmax_std",
    "minmax_uv",
    "minsum_std",
    "minsum_uv",
)
ADAPTIVE = frozenset({"fang_krum", "fang_krum_aware", "minmax_std", "minmax_uv", "minsum_std", "minsum_uv"})
# Attacks whose colluders would all send one identical vector (or copy someone): made distinct.
IDENTICAL = frozenset({"free_rider_zeros", "free_rider_copy", "alie", "ipm_0.1", "ipm_2"} | ADAPTIVE)
DEFAULT_REPLAY_NOISE = 0.25  # free_rider_replay: noise std over the replayed change's RMS
DEFAULT_GAUSSIAN_STD = 1.0  # parameter units: 10x the largest honest per-parameter RMS seen on digits (0.1)


@dataclass(frozen=True, slots=True)
class AttackOptions:
    gaussian_std: float = DEFAULT_GAUSSIAN_STD
    boost: float | None = None  # scaled: None means the number of clients
    replay_noise: float = DEFAULT_REPLAY_NOISE


@dataclass(frozen=True, slots=True)
class Knowledge:
    """What the adaptive attacks know of the chain: the round's tolerance ``f``, the task's scale and
    aggregator, and the genesis flagging rules (``fang_krum_aware`` simulates the chain with them)."""

    f: int  # the round's f for scores and flags (robust.flag_f)
    scale_bits: int
    rules: RoundRules | None = None
    aggregator: int = DEFAULT_AGGREGATOR
    keep_f: int | None = None  # the round's tolerance in aggregation (robust.tolerated_f); None: f

    @classmethod
    def of_round(cls, task: Task, rules: RoundRules | None) -> Knowledge:
        """What the chain's rule uses for ``task``'s open round, if every participant submits."""
        n = len(task.participants)
        return cls(
            robust.flag_f(task.byzantine_f, n),
            task.scale_bits,
            rules,
            task.aggregator,
            robust.tolerated_f(task.byzantine_f, task.removed, n),
        )


def validate_attack(name: str) -> str:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return name


def needs_training(name: str) -> bool:
    """Whether the attackers train on their data first (free riders do not)."""
    return not validate_attack(name).startswith("free_rider")


def poisons_data(name: str) -> bool:
    """Whether the attackers train on poisoned data (``flip_labels``) instead of their own."""
    return validate_attack(name) == "label_flip"


def flip_labels(data: Dataset) -> Dataset:
    """The same inputs with every label ``c`` replaced by ``n_classes - 1 - c``."""
    return Dataset(data.x.copy(), (data.n_classes - 1 - data.y).astype(np.int64), data.n_classes)


def alie_z(n_clients: int, n_attackers: int) -> float:
    """ALIE's ``z_max``: ``s = floor(n / 2 + 1) - a`` supporters needed, ``z = Phi^-1((n - s) / n)``.

    When the attackers alone are a majority (``s <= 0``) the paper's bound no longer applies and the
    ratio is capped just below 1.
    """
    if n_clients < 1 or not 0 < n_attackers <= n_clients:
        raise ValueError(f"need 0 < attackers <= clients, got {n_attackers} of {n_clients}")
    s = math.floor(n_clients / 2 + 1) - n_attackers
    ratio = min((n_clients - s) / n_clients, 1.0 - 1e-9)
    return NormalDist().inv_cdf(ratio)


def craft(
    name: str,
    own: np.ndarray,
    honest: np.ndarray | None = None,
    *,
    n_clients: int,
    rng: np.random.Generator,
    options: AttackOptions | None = None,
    knowledge: Knowledge | None = None,
    previous_change: np.ndarray | None = None,
) -> np.ndarray:
    """The float changes (``a x d``) the ``a`` colluding attackers send instead of ``own``."""
    validate_attack(name)
    opts = options or AttackOptions()
    own = np.asarray(own, dtype=np.float64)
    if own.ndim != 2 or own.shape[0] < 1:
        raise ValueError("own must be a 2-D array with one row per attacker")
    a, d = own.shape
    seen = own if honest is None or len(honest) == 0 else np.asarray(honest, dtype=np.float64)
    if seen.ndim != 2 or seen.shape[1] != d:
        raise ValueError(f"honest updates must have {d} columns")
    if name == "sign_flip":
        return -own
    if name == "gaussian":
        return rng.normal(0.0, opts.gaussian_std, (a, d))
    if name == "scaled":
        boost = float(n_clients) if opts.boost is None else float(opts.boost)
        return boost * own
    if name == "label_flip":
        return own.copy()
    if name == "free_rider_zeros":
        return np.zeros((a, d))
    if name == "free_rider_copy":
        if honest is None or len(honest) == 0:
            return np.zeros((a, d))  # nothing public to copy yet
        picks = rng.integers(0, seen.shape[0], a)
        return seen[picks].copy()
    if name == "free_rider_replay":
        if previous_change is None:
            return np.zeros((a, d))
        change = np.asarray(previous_change, dtype=np.float64)
        rms = float(np.sqrt(np.mean(change**2))) if change.size else 0.0
        return change[None, :] + rng.normal(0.0, opts.replay_noise * rms, (a, d))
    if name == "alie":
        z = alie_z(n_clients, a)
        return np.repeat((own.mean(axis=0) - z * own.std(axis=0))[None, :], a, axis=0)
    if name in ADAPTIVE:
        if knowledge is None:
            knowledge = Knowledge(f=max(1, a), scale_bits=16)
        if name.startswith("fang"):
            return fang_krum(own, seen, knowledge, aware=name == "fang_krum_aware")
        rule, _, direction = name.partition("_")
        return np.repeat(min_max_sum(seen, rule, direction)[None, :], a, axis=0)
    epsilon = 0.1 if name == "ipm_0.1" else 2.0
    return np.repeat((-epsilon * seen.mean(axis=0))[None, :], a, axis=0)


def _krum_picks_crafted(honest: np.ndarray, crafted: np.ndarray, f: int) -> bool:
    """Whether Krum (the single best score) over ``honest`` and ``a`` copies of ``crafted`` picks a
    crafted one, with the colluders' copies as close as the chain allows (distance ~0)."""
    h = honest.shape[0]
    a = crafted.shape[0]
    k = h + a
    m = k - f - 2
    if m < 1:
        return False
    X = np.vstack([honest, crafted])
    sq = np.einsum("ij,ij->i", X, X)
    D = np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0.0)
    np.fill_diagonal(D, np.inf)
    scores = np.sort(D, axis=1)[:, :m].sum(axis=1)
    return bool(np.argmin(scores) >= h)


def _chain_flags_none(honest: np.ndarray, crafted: np.ndarray, knowledge: Knowledge) -> bool:
    """Whether the chain's round rule, run on the quantized round, would neither flag nor exclude any
    of the crafted updates (they must be aggregated to do harm, and unflagged to stay)."""
    if knowledge.rules is None:
        return True
    rows = [quantize_update(x, knowledge.scale_bits)[0] for x in np.vstack([honest, crafted])]
    Q = make_distinct(np.stack(rows))
    k = Q.shape[0]
    if k < 3:
        return True
    f = min(knowledge.f, (k - 3) // 2)
    keep = f if knowledge.keep_f is None else min(knowledge.keep_f, f)
    addresses = [i.to_bytes(32, "big") for i in range(k)]
    decision = robust.decide_round(
        krum.gram_matrix(Q), f, addresses, knowledge.rules, knowledge.aggregator, keep
    )
    return not any(i >= honest.shape[0] for i in decision.flagged + decision.excluded)


FANG_HALVINGS = 20  # lambda tried: the upper bound, then halved up to this many times


def fang_krum(own: np.ndarray, honest: np.ndarray, knowledge: Knowledge, *, aware: bool) -> np.ndarray:
    """Fang et al.'s full-knowledge attack on Krum, in update space (module docstring)."""
    a, d = own.shape
    mean = honest.mean(axis=0)
    s = np.sign(mean)
    h = honest.shape[0]
    c = a
    # The paper's upper bound on lambda, with updates in place of models (the reference model is the
    # current global one, so D(w_i, w_Re) = |delta_i|).
    sq = np.einsum("ij,ij->i", honest, honest)
    Dh = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * honest @ honest.T, 0.0))
    nearest = np.sort(Dh + np.diag(np.full(h, np.inf)), axis=1)[:, : max(1, h - 2)].sum(axis=1)
    lam = float(nearest.min() / (max(1, h - c - 1) * math.sqrt(d)))
    lam += float(np.sqrt(sq).max() / math.sqrt(d))
    floor = lam / 2**FANG_HALVINGS
    while lam > floor:
        crafted = np.repeat((-lam * s)[None, :], a, axis=0)
        if _krum_picks_crafted(honest, crafted, knowledge.f) and (
            not aware or _chain_flags_none(honest, crafted, knowledge)
        ):
            return crafted
        lam /= 2
    # Nothing passes: the plain attack sends its smallest try; the aware one hides this round.
    return own.copy() if aware else np.repeat((-floor * s)[None, :], a, axis=0)


MIN_MAX_STEPS = 30


def min_max_sum(honest: np.ndarray, rule: str, direction: str) -> np.ndarray:
    """Shejwalkar and Houmansadr's min-max (``rule = "minmax"``) or min-sum update with the ``std``
    or ``uv`` perturbation (module docstring)."""
    mean = honest.mean(axis=0)
    if direction == "std":
        p = -honest.std(axis=0)
    else:
        norm = float(np.linalg.norm(mean))
        p = -mean / norm if norm else np.zeros_like(mean)
    sq = np.einsum("ij,ij->i", honest, honest)
    D2 = np.maximum(sq[:, None] + sq[None, :] - 2 * honest @ honest.T, 0.0)
    bound = D2.max() if rule == "minmax" else D2.sum(axis=1).max()

    def ok(gamma: float) -> bool:
        diff = honest - (mean + gamma * p)[None, :]
        dist2 = np.einsum("ij,ij->i", diff, diff)
        return bool((dist2.max() if rule == "minmax" else dist2.sum()) <= bound)

    lo, hi = 0.0, 1.0
    pn = float(np.linalg.norm(p))
    if pn == 0:
        return mean
    while ok(hi) and hi < 1e6:
        hi *= 2
    for _ in range(MIN_MAX_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return mean + lo * p


def make_distinct(deltas: np.ndarray, first_index: int = 0) -> np.ndarray:
    """Add one unit at parameter ``(first_index + r) mod d`` of row ``r`` (stepping back from +32767)."""
    out = np.array(deltas, dtype=np.int16, copy=True)
    d = out.shape[1]
    for r in range(out.shape[0]):
        p = (first_index + r) % d
        out[r, p] = out[r, p] + 1 if out[r, p] < 32767 else out[r, p] - 1
    return out


def craft_deltas(
    name: str,
    own: np.ndarray,
    honest: np.ndarray | None = None,
    *,
    n_clients: int,
    scale_bits: int,
    rng: np.random.Generator,
    options: AttackOptions | None = None,
    first_index: int = 0,
    knowledge: Knowledge | None = None,
    previous_change: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:
    """The int16 deltas (``a x d``) the attackers submit, and how many entries of each were clipped.

    ``first_index`` is the first attacker's index among all attackers (see ``make_distinct``).
    """
    changes = craft(
        name,
        own,
        honest,
        n_clients=n_clients,
        rng=rng,
        options=options,
        knowledge=knowledge,
        previous_change=previous_change,
    )
    rows, clipped = [], []
    for change in changes:
        q, c = quantize_update(change, scale_bits)
        rows.append(q)
        clipped.append(c)
    deltas = np.stack(rows)
    if name in IDENTICAL:
        deltas = make_distinct(deltas, first_index)
    return deltas, clipped


ATTACK_RNG_SALT = 0x5EED_A77AC  # attack randomness is seeded apart from the training order
OBSERVING = frozenset(
    {"free_rider_copy", "alie", "ipm_0.1", "ipm_2"} | ADAPTIVE
)  # these read the previous round's updates


class Attacker:
    """One attacking client (``mpsnode.client.daemon.Attacker``): ``name`` from ``ATTACKS``,
    ``colluders`` sharing statistics (alie's z), randomness seeded from ``seed``."""

    def __init__(self, name: str, *, colluders: int = 1, seed: int = 0) -> None:
        self.name = validate_attack(name)
        self.colluders = colluders
        self.rng = np.random.default_rng([seed, ATTACK_RNG_SALT])
        self.last_weights: tuple[int, np.ndarray] | None = None  # (round, model) seen last round

    def poison_data(self, data: Dataset) -> Dataset:
        return flip_labels(data) if poisons_data(self.name) else data

    async def craft(self, view: RoundView) -> tuple[np.ndarray | None, float, int]:
        """The poisoned int16 delta for this round, the training loss and the clipped count."""
        task = view.task
        d = param_count(task.arch)
        own = np.zeros((1, d))
        loss = float("nan")
        if needs_training(self.name):
            update = await view.train()
            own, loss = update.change[None, :], update.loss
        others = None
        if self.name in OBSERVING:
            still_open, others = await view.observe()
            if not still_open:
                return None, loss, 0
        previous_change = None
        if view.weights is not None:
            if self.last_weights is not None and self.last_weights[0] == task.round - 1:
                diff = view.weights.astype(np.int64) - self.last_weights[1].astype(np.int64)
                previous_change = diff / float(1 << task.scale_bits)
            self.last_weights = (task.round, view.weights.copy())
        n_clients = len(task.participants)
        first_index = int.from_bytes(view.address[:4], "big")
        if self.name == "alie":
            # ALIE: mean - z * std of the benign-looking updates the colluders see, z for the colluders' count
            seen = others if others is not None and len(others) > 1 else own
            z = alie_z(n_clients, max(1, min(self.colluders, n_clients)))
            change = seen.mean(axis=0) - z * seen.std(axis=0)
            q, clipped = quantize_update(change, task.scale_bits)
            return make_distinct(q[None, :], first_index)[0], loss, clipped
        knowledge = None
        if self.name in ADAPTIVE:
            rules = None if view.params is None else round_rules(view.params)
            knowledge = Knowledge.of_round(task, rules)
        deltas, clipped_per_row = craft_deltas(
            self.name,
            own,
            others,
            n_clients=n_clients,
            scale_bits=task.scale_bits,
            rng=self.rng,
            first_index=first_index,
            knowledge=knowledge,
            previous_change=previous_change,
        )
        return deltas[0], loss, clipped_per_row[0]
