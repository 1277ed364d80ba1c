"""The robust round rule: who is flagged, what is aggregated, with which weights (docs/PROTOCOL.md 7).

Every decision is an exact integer function of the Gram matrix ``G = Q Q^T`` of the round's ``k``
updates (``mpsnode.consensus.krum``), the round's ``f`` (scores and flags: the task's ``f`` capped
by what ``k`` allows), its tolerance in aggregation ``keep_f <= f`` (``f`` less the participants
the task already removed), and the submitters' addresses:

1. **Raw Krum.** Scores ``s_i`` (sum of the ``k - f - 2`` smallest squared distances), the ranking by
   ``(s_i, address)``, the lower median score; the *raw selection* is the first ``k - f`` of the ranking.
2. **Directions.** The pairwise cosine in basis points ``c_ij = floor(10^4 G_ij / isqrt(G_ii G_jj))``
   (clamped to +-10^4; 0 when either norm is 0) and per update the lower median over the others,
   ``m_i``. A colluding minority cannot move ``m_i`` of an honest update past the honest updates' own
   quantiles, and an update that points against most of the others has a negative ``m_i`` however its
   colluders point. The round is *coherent* when the lower median of ``m_i`` over the raw selection
   is at least ``gate_bps``.
3. **Flags** (slashed; coherent rounds only, at most ``f``): among the last ``f`` of the ranking,
   ``100 s_i > coherent_score_ratio_pct * median``; then ``m_i < -threshold_bps``, most negative first,
   filling the remaining slots.
4. **Exclusion** (any round, no slash): among the others, the last ``f`` of the ranking with
   ``100 s_i > exclude_ratio_pct * median`` (worst first, at most ``max(0, keep_f - |flagged|)``;
   each takes one of the tolerance, as Multi-Krum would have left it out), then ``m_i <
   -exclude_bps`` (most negative first, at most ``f'`` and at most what leaves the rest scorable).
5. **Aggregation** over the ``k'`` updates neither flagged nor excluded, with ``f' = max(0, keep_f -
   |flagged|) - |Krum exclusions|``
   (each flagged update is one of the ``f`` the round tolerates; an excluded one is not presumed to
   be). Nearest-neighbour mixing (Allouah et al., AISTATS 2023) replaces each remaining update by the
   sum of its ``n = k' - f'`` nearest remaining updates (itself first, then by ``(distance,
   address)``); plain Multi-Krum is the same with ``n = 1``. The mixed sums' Gram matrix ``A G A^T``
   (``A`` the 0/1 neighbourhood matrix) gives their distances; Multi-Krum over the mixed sums with
   ``f'`` selects ``k' - f'`` of them, and the aggregate is their mean: raw update ``j`` enters with
   integer weight ``w_j`` = the number of selected neighbourhoods that contain it, over the total
   ``(k' - f') n``.

The mixed Gram entries can reach ``n^2 2^52 = 2^68``: ``A G`` is summed in int64 (``|.| <= 2^60``)
and ``(A G) A^T`` in Python ints. Every function here has its reference twin in
``decide_round_reference``, which forms the mixed vectors from the raw rows in Python ints. The two
share the round's steps (``_decide``), so the two building blocks rewritten for speed, the median
cosines (each pair once) and the neighbourhoods (one integer sort key), also keep their plain
definitions as ``median_cosines_reference`` and ``neighbourhoods_reference``; tests/test_robust.py
holds each pair equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import isqrt

import numpy as np

from mpsnode.consensus import krum
from mpsnode.consensus.limits import MAX_UPDATES
from mpsnode.consensus.params import Params
from mpsnode.consensus.tx import DEFAULT_AGGREGATOR, Aggregator

COSINE_ONE = 10_000  # cosines are in basis points
_LIMB_BITS = 30


@dataclass(frozen=True, slots=True)
class RoundRules:
    """The flagging parameters (genesis): see the module docstring, step 3."""

    exclude_ratio_pct: int  # any round: leave out a Krum score above this percent of the median
    coherent_score_ratio_pct: int  # coherent rounds: slash a Krum score above this percent
    gate_bps: int  # coherent when the lower median of m_i over the raw selection is >= gate_bps
    threshold_bps: int  # direction: flag m_i < -threshold_bps (10000 switches the rule off)
    exclude_bps: int = COSINE_ONE  # any round: leave m_i < -exclude_bps out of the aggregate (no slash)

    def __post_init__(self) -> None:
        for name in ("gate_bps", "threshold_bps", "exclude_bps"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= COSINE_ONE:
                raise ValueError(f"{name} must be an int in 0..10000, got {v!r}")
        for name in ("exclude_ratio_pct", "coherent_score_ratio_pct"):
            v = getattr(self, name)
            if type(v) is not int or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")


def round_rules(params: Params) -> RoundRules:
    """The flagging rules of a chain's genesis parameters."""
    return RoundRules(
        params.exclude_score_ratio_pct,
        params.slash_score_ratio_coherent_pct,
        params.coherence_gate_bps,
        params.slash_direction_bps,
        params.exclude_direction_bps,
    )


@dataclass(frozen=True, slots=True)
class RoundDecision:
    """The outcome of one round; every index refers to a row of ``Q`` (submission order)."""

    f: int  # the round's f for scores and flags
    tolerated_f: int  # the round's tolerance in aggregation (<= f)
    scores: tuple[int, ...]  # raw Krum scores
    ranking: tuple[int, ...]  # all rows by (score, address)
    median: int  # lower median of the raw scores
    cosines: tuple[int, ...]  # m_i, bps
    coherent: bool
    flagged: tuple[int, ...]  # Krum's flags (ranking order), then the direction flags
    flagged_direction: tuple[int, ...]  # the part of ``flagged`` flagged by direction
    excluded: tuple[int, ...]  # left out of the aggregate, not slashed: Krum outliers, then by direction
    selected: tuple[int, ...]  # rows whose mixed sum Multi-Krum selected, in its ranking order
    weights: tuple[int, ...]  # per row, its integer weight in the aggregate (0 if flagged or excluded)


# ---------------------------------------------------------------------------------------------
# Building blocks (pure Python ints over a k x k matrix; k <= 256)


def _check_inputs(G: np.ndarray, f: int, addresses: Sequence[bytes]) -> None:
    if not isinstance(G, np.ndarray) or G.ndim != 2 or G.shape[0] != G.shape[1] or G.dtype != np.int64:
        raise ValueError("G must be a square int64 matrix")
    k = G.shape[0]
    if k > MAX_UPDATES:
        raise ValueError(f"{k} updates exceeds the limit of {MAX_UPDATES}")
    if G.size and int(np.abs(G).max()) > 1 << 52:
        raise ValueError("Gram entries must lie within +-2^52")  # int16 rows of <= 2^22 entries
    if type(f) is not int or f < 0 or k < 2 * f + 3:
        raise ValueError(f"the round rule needs k >= 2f + 3 updates: k={k}, f={f!r}")
    if len(addresses) != k or len({bytes(a) for a in addresses}) != k:
        raise ValueError(f"need {k} distinct addresses, got {len(addresses)}")


def cosine_bps(dot: int, norm_a: int, norm_b: int) -> int:
    """``floor(10^4 dot / isqrt(norm_a norm_b))`` clamped to +-10^4; 0 when either norm is 0."""
    if norm_a == 0 or norm_b == 0:
        return 0
    root = isqrt(norm_a * norm_b)
    return max(-COSINE_ONE, min(COSINE_ONE, COSINE_ONE * dot // root))


def median_cosines(G: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """``median_cosines_reference`` for a symmetric ``G`` (a Gram matrix): each pair's cosine is
    computed once, for both rows, with ``cosine_bps`` written out (the square root of a product of
    two norms is a Python-int ``isqrt`` of up to 104 bits: the most costly step of the round rule)."""
    k = len(G)
    norms = [G[i][i] for i in range(k)]
    rows: list[list[int]] = [[] for _ in range(k)]
    for i in range(k):
        Gi, ni, row = G[i], norms[i], rows[i]
        for j in range(i + 1, k):
            nj = norms[j]
            if ni == 0 or nj == 0:
                c = 0
            else:
                c = COSINE_ONE * Gi[j] // isqrt(ni * nj)
                c = -COSINE_ONE if c < -COSINE_ONE else COSINE_ONE if c > COSINE_ONE else c
            row.append(c)
            rows[j].append(c)
    out = []
    for row in rows:
        row.sort()
        out.append(row[(k - 2) // 2] if row else 0)
    return tuple(out)


def median_cosines_reference(G: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """``m_i``: the lower median over ``j != i`` of ``cosine_bps(G_ij, G_ii, G_jj)``."""
    k = len(G)
    out = []
    for i in range(k):
        row = sorted(cosine_bps(G[i][j], G[i][i], G[j][j]) for j in range(k) if j != i)
        out.append(row[(k - 2) // 2] if row else 0)
    return tuple(out)


Table = Sequence[Sequence[int]] | Mapping[int, Mapping[int, int]]  # indexed [i][j] by row


def rank(
    scores: Sequence[int] | Mapping[int, int], addresses: Sequence[bytes], rows: Sequence[int]
) -> list[int]:
    """``rows`` ascending by ``(score, address)``."""
    return sorted(rows, key=lambda i: (scores[i], bytes(addresses[i])))


def krum_scores_of(D: Table, rows: Sequence[int], f: int) -> dict[int, int]:
    """Krum scores among ``rows`` only: each row's sum of its ``len(rows) - f - 2`` smallest distances."""
    m = len(rows) - f - 2
    return {i: sum(sorted(D[i][j] for j in rows if j != i)[:m]) for i in rows}


def neighbourhoods(
    D: Sequence[Sequence[int]], rows: Sequence[int], n: int, addresses: Sequence[bytes]
) -> dict[int, tuple[int, ...]]:
    """``neighbourhoods_reference`` with one integer sort key per pair: ``distance * len(rows) +``
    the row's place in address order, which orders exactly as ``(distance, address)`` does since
    that place lies in ``0..len(rows) - 1``."""
    width = len(rows)
    by_place = sorted(rows, key=lambda j: bytes(addresses[j]))
    place = {j: p for p, j in enumerate(by_place)}
    out = {}
    for i in rows:
        Di = D[i]
        keys = sorted([Di[j] * width + place[j] for j in rows if j != i])[: n - 1]
        out[i] = (i, *[by_place[key % width] for key in keys])  # key % width: the place, for any sign
    return out


def neighbourhoods_reference(
    D: Sequence[Sequence[int]], rows: Sequence[int], n: int, addresses: Sequence[bytes]
) -> dict[int, tuple[int, ...]]:
    """Each row's ``n`` nearest among ``rows``: itself, then by ``(distance, address)``."""
    return {
        i: (i, *sorted((j for j in rows if j != i), key=lambda j: (D[i][j], bytes(addresses[j])))[: n - 1])
        for i in rows
    }


def mixed_gram(G: np.ndarray, hoods: dict[int, tuple[int, ...]]) -> dict[int, dict[int, int]]:
    """``M_a . M_b`` for the mixed sums ``M_a = sum_{j in hood(a)} Q_j``, as ``A G A^T`` exactly.

    ``A G`` sums at most 256 entries of magnitude <= 2^52 (<= 2^60: exact in int64). Its entries are
    split as ``hi 2^30 + lo`` with ``0 <= lo < 2^30``, so both halves of ``(A G) A^T`` are sums of at
    most 256 terms below 2^30 in magnitude (< 2^38), exact in int64, and are joined in Python ints.
    """
    order = sorted(hoods)
    A = np.zeros((len(order), G.shape[0]), dtype=np.int64)
    for r, a in enumerate(order):
        A[r, list(hoods[a])] = 1
    AG = A @ G
    hi, lo = AG >> _LIMB_BITS, AG & ((1 << _LIMB_BITS) - 1)
    H, L = (hi @ A.T).tolist(), (lo @ A.T).tolist()
    return {
        a: {b: (H[r][c] << _LIMB_BITS) + L[r][c] for c, b in enumerate(order)} for r, a in enumerate(order)
    }


# ---------------------------------------------------------------------------------------------
# The round


def flag_f(byzantine_f: int, k: int) -> int:
    """The round's ``f`` for scoring and flagging: the task's ``f``, at most what ``k`` updates allow
    (``k >= 2f + 3``); needs ``k >= 3``."""
    return max(0, min(byzantine_f, (k - 3) // 2))


def tolerated_f(byzantine_f: int, removed: int, k: int) -> int:
    """The round's tolerance in aggregation: the task's ``f`` less the participants already removed,
    at most what ``k`` updates allow; needs ``k >= 3``."""
    return max(0, min(byzantine_f - removed, (k - 3) // 2))


def decide_round(
    G: np.ndarray,
    f: int,
    addresses: Sequence[bytes],
    rules: RoundRules,
    aggregator: int = DEFAULT_AGGREGATOR,
    keep_f: int | None = None,
) -> RoundDecision:
    """The round's decision from its Gram matrix (module docstring, steps 1 to 5): scored and flagged
    with ``f``, aggregated with the tolerance ``keep_f <= f`` (default ``f``)."""
    _check_inputs(G, f, addresses)
    keep = _check_keep(f, keep_f)
    D = krum.distance_matrix_from_gram(G)
    scores = krum.krum_scores(D, f).tolist()

    def mix(hoods: dict[int, tuple[int, ...]]) -> dict[int, dict[int, int]]:
        return mixed_gram(G, hoods)

    return _decide(scores, D.tolist(), G.tolist(), f, keep, addresses, rules, Aggregator(aggregator), mix)


def _check_keep(f: int, keep_f: int | None) -> int:
    keep = f if keep_f is None else keep_f
    if type(keep) is not int or not 0 <= keep <= f:
        raise ValueError(f"keep_f must be an int in 0..f={f}, got {keep_f!r}")
    return keep


def _decide(
    scores: Sequence[int],
    D: Sequence[Sequence[int]],
    G: Sequence[Sequence[int]],
    f: int,
    keep_f: int,
    addresses: Sequence[bytes],
    rules: RoundRules,
    aggregator: Aggregator,
    mix: Callable[[dict[int, tuple[int, ...]]], dict[int, dict[int, int]]],
) -> RoundDecision:
    k = len(scores)
    ranking = rank(scores, addresses, range(k))
    median = sorted(scores)[(k - 1) // 2]
    cosines = median_cosines(G)
    raw_selection = ranking[: k - f]
    selected_cosines = sorted(cosines[i] for i in raw_selection)
    coherent = selected_cosines[(len(selected_cosines) - 1) // 2] >= rules.gate_bps
    worst = ranking[k - f :]  # Krum can only single out the f worst-ranked
    krum_flags: list[int] = []
    direction_flags: list[int] = []
    if coherent:  # the signals are reliable: slash
        ratio = rules.coherent_score_ratio_pct
        krum_flags = [i for i in worst if median > 0 and 100 * scores[i] > ratio * median]
        below = [i for i in range(k) if i not in krum_flags and cosines[i] < -rules.threshold_bps]
        direction_flags = rank(cosines, addresses, below)[: f - len(krum_flags)]
    flagged = krum_flags + direction_flags

    flagged_set = set(flagged)
    f_rest = max(0, keep_f - len(flagged))
    # Excluded, in any round, without a slash. Honest updates can be outliers late in training or with
    # strongly non-IID data (a client left out for long drifts away as the model memorizes the
    # others), so this costs a round's place in the aggregate, never stake. First the Krum outliers
    # (worst first, at most f_rest): each is one Multi-Krum would leave out, so each takes one of
    # f_rest. Then the updates pointing against most of the others (most negative first): these are
    # not presumed Byzantine, so f_rest stays and they are at most what leaves the rest scorable.
    far = [
        i
        for i in reversed(worst)
        if i not in flagged_set and median > 0 and 100 * scores[i] > rules.exclude_ratio_pct * median
    ][:f_rest]
    f_rest -= len(far)
    room = max(0, min(f_rest, k - len(flagged) - len(far) - 2 * f_rest - 3))
    against = [
        i for i in range(k) if i not in flagged_set and i not in far and cosines[i] < -rules.exclude_bps
    ]
    excluded = far + rank(cosines, addresses, against)[:room]
    rest = [i for i in range(k) if i not in flagged_set and i not in set(excluded)]
    n = len(rest) - f_rest if aggregator == Aggregator.NNM_MULTI_KRUM else 1
    hoods = neighbourhoods(D, rest, n, addresses)
    if n == 1:
        MG = {a: {b: G[a][b] for b in rest} for a in rest}
    else:
        MG = mix(hoods)
    MD = {a: {b: MG[a][a] + MG[b][b] - 2 * MG[a][b] for b in rest} for a in rest}
    mixed_scores = krum_scores_of(MD, rest, f_rest)
    selected = rank(mixed_scores, addresses, rest)[: len(rest) - f_rest]
    weights = [0] * k
    for a in selected:
        for j in hoods[a]:
            weights[j] += 1
    return RoundDecision(
        f=f,
        tolerated_f=keep_f,
        scores=tuple(int(s) for s in scores),
        ranking=tuple(ranking),
        median=int(median),
        cosines=cosines,
        coherent=coherent,
        flagged=tuple(flagged),
        flagged_direction=tuple(direction_flags),
        excluded=tuple(excluded),
        selected=tuple(selected),
        weights=tuple(weights),
    )


def decide_round_reference(
    Q: np.ndarray,
    f: int,
    addresses: Sequence[bytes],
    rules: RoundRules,
    aggregator: int = DEFAULT_AGGREGATOR,
    keep_f: int | None = None,
) -> RoundDecision:
    """Reference twin of ``decide_round`` from the updates themselves, in Python ints: Gram entries
    and distances by definition, and the mixed sums formed as vectors."""
    rows = [[int(v) for v in row] for row in krum.validate_updates(Q)]
    k = len(rows)
    if type(f) is not int or f < 0 or k < 2 * f + 3:
        raise ValueError(f"the round rule needs k >= 2f + 3 updates: k={k}, f={f!r}")
    keep = _check_keep(f, keep_f)
    aggregator = Aggregator(aggregator)

    def dot(a: Sequence[int], b: Sequence[int]) -> int:
        return sum(x * y for x, y in zip(a, b, strict=True))

    D = krum.distance_matrix_reference(Q)
    scores = krum.krum_scores_reference(D, f).tolist()

    def mix(hoods: dict[int, tuple[int, ...]]) -> dict[int, dict[int, int]]:
        sums = {
            a: [sum(col) for col in zip(*(rows[j] for j in hood), strict=True)] for a, hood in hoods.items()
        }
        return {a: {b: dot(sums[a], sums[b]) for b in hoods} for a in hoods}

    G = krum.gram_matrix_reference(Q).tolist()
    return _decide(scores, D.tolist(), G, f, keep, addresses, rules, aggregator, mix)
