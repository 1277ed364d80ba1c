"""The round rule (mpsnode.consensus.robust): flags, coherence, mixing, selection and weights.

The fast path (Gram kernel, int64 distances, A G A^T in two limbs) is held equal to the reference
twin that forms every vector in Python ints; the rules themselves are checked on hand-built rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsnode.consensus import krum, model, robust
from mpsnode.consensus.robust import RoundRules
from mpsnode.consensus.tx import Aggregator

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OFF = RoundRules(
    exclude_ratio_pct=10**9, coherent_score_ratio_pct=10**9, gate_bps=10_000, threshold_bps=10_000
)


def addrs(k: int) -> list[bytes]:
    return [i.to_bytes(32, "big") for i in range(k)]


def decide(
    Q: np.ndarray, f: int, addresses=None, rules: RoundRules = OFF, agg=Aggregator.NNM_MULTI_KRUM, keep=None
):
    """Both paths; they must agree."""
    addresses = addrs(len(Q)) if addresses is None else addresses
    fast = robust.decide_round(krum.gram_matrix(Q), f, addresses, rules, agg, keep)
    assert fast == robust.decide_round_reference(Q, f, addresses, rules, agg, keep)
    return fast


def cluster(rng: np.random.Generator, n: int, d: int, spread: int = 5, scale: int = 40) -> np.ndarray:
    base = rng.integers(-scale, scale, d)
    return np.stack([base + rng.integers(-spread, spread + 1, d) for _ in range(n)])


# ---------------------------------------------------------------------------------------------
# Building blocks


def test_cosine_bps_floors_and_clamps() -> None:
    assert robust.cosine_bps(0, 0, 5) == 0 and robust.cosine_bps(3, 5, 0) == 0
    assert robust.cosine_bps(4, 4, 4) == 10_000
    assert robust.cosine_bps(-4, 4, 4) == -10_000
    assert robust.cosine_bps(1, 2, 2) == 5_000
    assert robust.cosine_bps(-1, 3, 3) == -3_334  # floor(-10000 / 3)
    assert robust.cosine_bps(10, 10, 11) == 10_000  # isqrt(110) = 10: clamped, not 10000 exactly by luck


@SETTINGS
@given(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=4, max_size=4))
def test_cosine_bps_matches_floats(v: list[int]) -> None:
    a, b = np.array(v[:2]), np.array(v[2:])
    na, nb = int(a @ a), int(b @ b)
    if na == 0 or nb == 0:
        return
    c = 10_000 * int(a @ b) / math.sqrt(na * nb)
    # isqrt(n) = r <= sqrt(n) < r + 1 overstates |cos| by at most 10^4 / r bps (the floor adds 1):
    # a fraction of a bps for real updates (r > 10^6), whole percents for vectors like (0,1),(1,1)
    bound = 1.0 + 10_000 / math.isqrt(na * nb) + 1e-6
    assert abs(robust.cosine_bps(int(a @ b), na, nb) - c) <= bound
    assert robust.cosine_bps(int(a @ b), na, nb) == max(
        -10_000, min(10_000, 10_000 * int(a @ b) // math.isqrt(na * nb))
    )


def test_mixed_gram_exact_beyond_int64() -> None:
    k = 64
    G = np.full((k, k), (1 << 52) - 7, dtype=np.int64)
    G[::3, 1::2] = -(1 << 52)
    hoods = {a: tuple(range(k)) for a in range(k)}
    out = robust.mixed_gram(G, hoods)
    Gl = G.tolist()
    for a in (0, 1, 5):
        for b in (0, 2, 63):
            assert out[a][b] == sum(Gl[i][j] for i in hoods[a] for j in hoods[b])
    assert max(abs(out[a][b]) for a in out for b in out[a]) > 1 << 63


def test_flags_keep_the_task_f_while_aggregation_uses_what_is_left() -> None:
    # Three far outliers, f = 3, but the task already removed three participants (keep_f = 0): the
    # outliers are still flagged, and the rest is averaged whole.
    rng = np.random.default_rng(11)
    Q = cluster(rng, 12, 30, spread=2)
    Q[[1, 4, 7]] *= 60
    Q = np.clip(Q, -32768, 32767).astype(np.int16)
    rules = RoundRules(400, 400, 0, 10_000)
    r = decide(Q, 3, rules=rules, keep=0)
    assert set(r.flagged) == {1, 4, 7} and r.f == 3 and r.tolerated_f == 0
    assert r.weights == tuple(0 if i in (1, 4, 7) else 9 for i in range(12))
    assert robust.flag_f(3, 12) == 3 and robust.flag_f(6, 12) == 4
    with pytest.raises(ValueError, match="keep_f"):
        decide(Q, 2, keep=3)


def test_tolerated_f() -> None:
    assert robust.tolerated_f(5, 0, 20) == 5
    assert robust.tolerated_f(5, 2, 20) == 3  # two already removed: they were two of the five
    assert robust.tolerated_f(5, 9, 20) == 0
    assert robust.tolerated_f(6, 0, 14) == 5  # 14 updates allow at most f = 5
    assert robust.tolerated_f(6, 0, 3) == 0


# ---------------------------------------------------------------------------------------------
# Krum flags


def test_hand_computed_round() -> None:
    Q = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [10, 10]], dtype=np.int16)
    addresses = [bytes([5]) * 32, bytes([4]) * 32, bytes([3]) * 32, bytes([2]) * 32, bytes([1]) * 32]
    rules = RoundRules(400, 400, 0, 10_000)  # gate 0: coherent, so Krum's outlier is slashed
    r = decide(Q, 1, addresses, rules, Aggregator.MULTI_KRUM)
    assert r.coherent and r.scores == (2, 2, 2, 2, 343) and r.median == 2
    assert r.ranking == (3, 2, 1, 0, 4)  # ties broken by address: the order reverses
    assert r.flagged == (4,) and r.flagged_direction == ()
    # The flagged update is one of the f: the other four are all kept (f' = 0), each once.
    assert r.selected == (3, 2, 1, 0) and r.weights == (1, 1, 1, 1, 0)
    # 100 * 343 = 34300 against 17150 * 2: not strictly greater, so not flagged.
    assert decide(Q, 1, addresses, RoundRules(17150, 17150, 0, 10_000)).flagged == ()
    assert decide(Q, 1, addresses, RoundRules(17149, 17149, 0, 10_000)).flagged == (4,)
    # In an incoherent round the same outlier is only left out of the aggregate, never slashed.
    r = decide(Q, 1, addresses, RoundRules(400, 400, 10_000, 10_000), Aggregator.MULTI_KRUM)
    assert not r.coherent and r.flagged == () and r.excluded == (4,) and r.weights == (1, 1, 1, 1, 0)


def test_only_the_f_worst_can_be_flagged_and_median_zero_flags_nobody() -> None:
    rng = np.random.default_rng(1)
    Q = cluster(rng, 7, 30, spread=2)
    Q[[0, 2, 5]] *= 50  # three far outliers, f = 2
    r = decide(np.clip(Q, -32768, 32767).astype(np.int16), 2, rules=RoundRules(400, 400, 0, 10_000))
    assert len(r.flagged) == 2 and set(r.flagged) <= {0, 2, 5}
    assert r.flagged == r.ranking[-2:]
    zeros = np.zeros((5, 4), dtype=np.int16)
    zeros[4, 0] = 1000
    r = decide(zeros, 1, rules=RoundRules(100, 100, 0, 0))
    assert r.median == 0 and r.flagged == ()


def test_coherent_rounds_use_their_own_krum_threshold() -> None:
    rng = np.random.default_rng(2)
    Q = cluster(rng, 9, 50, spread=3)
    Q[0] = Q[0] * 4  # same direction, a long way out
    Q = Q.astype(np.int16)
    loose = decide(Q, 2, rules=RoundRules(10**6, 200, 10_000, 10_000))
    assert not loose.coherent and loose.flagged == ()
    tight = decide(Q, 2, rules=RoundRules(10**6, 200, 5_000, 10_000))
    assert tight.coherent and tight.flagged == (0,)


# ---------------------------------------------------------------------------------------------
# Directions


def test_colluders_cannot_steer_the_reference() -> None:
    # 14 honest updates along +v; 6 colluders: 3 large along -v, 3 large along +v (the steerers).
    # Against the sum of the others, the -v colluders look fine (the steerers outweigh the honest sum
    # ... and cancel); against the pairwise median they are what they are.
    rng = np.random.default_rng(3)
    d = 64
    v = rng.integers(20, 40, d)
    honest = [v + rng.integers(-25, 26, d) for _ in range(14)]
    anti = [-4 * v + rng.integers(-5, 6, d) for _ in range(3)]
    steer = [6 * v + rng.integers(-5, 6, d) for _ in range(3)]
    Q = np.stack(honest + anti + steer).astype(np.int16)
    r = decide(Q, 6, rules=RoundRules(10**6, 10**6, 3_000, 2_500))
    assert r.coherent
    assert set(r.flagged_direction) == {14, 15, 16}
    assert all(r.weights[i] == 0 for i in (14, 15, 16))
    assert all(c > 0 for c in r.cosines[:14])


def test_colluders_cannot_switch_the_gate_off() -> None:
    # Six colluders orthogonal to everyone pull the all-update median down; the gate is taken over
    # the raw selection, where they are a minority, and the sign-flipper is still flagged.
    rng = np.random.default_rng(4)
    d = 80
    v = np.zeros(d, dtype=np.int64)
    v[:40] = 30
    honest = [v + rng.integers(-12, 13, d) * (np.arange(d) < 40) for _ in range(13)]
    ortho = []
    for i in range(6):
        o = np.zeros(d, dtype=np.int64)
        o[40 + 6 * i : 46 + 6 * i] = 60
        ortho.append(o)
    flip = [-honest[0]]
    Q = np.stack(honest + ortho + flip).astype(np.int16)
    r = decide(Q, 7, rules=RoundRules(10**6, 10**6, 4_000, 2_500))
    assert r.coherent and 19 in r.flagged_direction


def test_exclusion_leaves_anti_aligned_updates_out_in_any_round_without_a_flag() -> None:
    # No common direction among the honest (incoherent round), two colluders against their mean.
    rng = np.random.default_rng(9)
    d = 120
    honest = []
    for i in range(10):
        v = np.zeros(d, dtype=np.int64)
        v[12 * i : 12 * i + 12] = rng.integers(30, 60, 12)
        v[:120] += rng.integers(0, 8, d)
        honest.append(v)
    mean = np.sum(honest, axis=0) // 10
    Q = np.stack(honest + [-2 * mean + rng.integers(-2, 3, d), -2 * mean + rng.integers(-2, 3, d)])
    Q = Q.astype(np.int16)
    r = decide(Q, 3, rules=RoundRules(10**6, 10**6, 9_000, 1_000, 1_500))
    assert not r.coherent and r.flagged == ()
    assert set(r.excluded) == {10, 11} and r.weights[10] == r.weights[11] == 0
    assert decide(Q, 3, rules=RoundRules(10**6, 10**6, 9_000, 1_000, 10_000)).excluded == ()
    assert decide(Q, 1, rules=RoundRules(10**6, 10**6, 9_000, 1_000, 1_500)).excluded.__len__() == 1


def test_direction_rule_only_in_coherent_rounds_and_at_most_f() -> None:
    rng = np.random.default_rng(5)
    Q = cluster(rng, 9, 40, spread=2)
    Q[[0, 1, 2]] = -Q[[0, 1, 2]]
    Q = Q.astype(np.int16)
    assert decide(Q, 2, rules=RoundRules(10**6, 10**6, 3_000, 2_500)).flagged_direction.__len__() == 2
    off = decide(Q, 2, rules=RoundRules(10**6, 10**6, 10_000, 2_500))
    assert not off.coherent and off.flagged == ()


# ---------------------------------------------------------------------------------------------
# Mixing, selection, weights


def test_plain_multi_krum_weights_are_the_selection() -> None:
    rng = np.random.default_rng(6)
    Q = cluster(rng, 11, 30).astype(np.int16)
    r = decide(Q, 3, agg=Aggregator.MULTI_KRUM)
    assert len(r.selected) == 8
    assert r.weights == tuple(1 if i in r.selected else 0 for i in range(11))


def test_nnm_with_f_zero_is_the_mean() -> None:
    rng = np.random.default_rng(7)
    Q = cluster(rng, 6, 30).astype(np.int16)
    r = decide(Q, 0)
    assert r.weights == (6,) * 6  # every neighbourhood is everyone, every mix is selected
    w = np.zeros(30, dtype=np.int32)
    assert np.array_equal(model.aggregate(w, Q, weights=r.weights), model.aggregate(w, Q))


def test_nnm_spreads_an_outliers_weight_to_its_neighbours() -> None:
    rng = np.random.default_rng(8)
    Q = cluster(rng, 10, 40, spread=3)
    Q[9] = Q[9] * 30
    Q = np.clip(Q, -32768, 32767).astype(np.int16)
    r = decide(Q, 2)
    n = 10 - 2  # neighbourhood size
    assert sum(r.weights) == len(r.selected) * n == 8 * 8
    assert r.weights[9] < max(r.weights)  # the outlier sits in few neighbourhoods


@SETTINGS
@given(st.data())
def test_fast_equals_reference_and_invariants(data: st.DataObject) -> None:
    f = data.draw(st.integers(0, 3))
    k = data.draw(st.integers(2 * f + 3, 2 * f + 7))
    d = data.draw(st.integers(1, 12))
    big = data.draw(st.booleans())
    lo, hi = (-32768, 32767) if big else (-50, 50)
    Q = np.array(
        data.draw(st.lists(st.lists(st.integers(lo, hi), min_size=d, max_size=d), min_size=k, max_size=k)),
        dtype=np.int16,
    ).reshape(k, d)
    addresses = data.draw(st.lists(st.binary(min_size=32, max_size=32), min_size=k, max_size=k, unique=True))
    keep = data.draw(st.integers(0, f))
    rules = RoundRules(
        data.draw(st.sampled_from([100, 400, 12_000])),
        data.draw(st.sampled_from([100, 400, 3_000])),
        data.draw(st.sampled_from([0, 2_000, 10_000])),
        data.draw(st.sampled_from([0, 1_000, 10_000])),
        data.draw(st.sampled_from([0, 1_500, 10_000])),
    )
    agg = data.draw(st.sampled_from(list(Aggregator)))
    r = decide(Q, f, addresses, rules, agg, keep)
    assert len(r.flagged) <= f and len(set(r.flagged)) == len(r.flagged)
    assert all(r.weights[i] == 0 for i in r.flagged + r.excluded)
    f_rest = max(0, keep - len(r.flagged))
    assert not set(r.excluded) & set(r.flagged) and len(r.excluded) <= f_rest
    worst = [i for i in reversed(r.ranking[k - f :]) if i not in r.flagged]
    far = [i for i in worst if r.median and 100 * r.scores[i] > rules.exclude_ratio_pct * r.median][:f_rest]
    assert r.excluded[: len(far)] == tuple(far)
    assert all(r.cosines[i] < -rules.exclude_bps for i in r.excluded[len(far) :])
    f_rest -= len(far)
    if not r.coherent:
        assert r.flagged == ()
    kept = k - len(r.flagged) - len(r.excluded)
    n = kept - f_rest if agg == Aggregator.NNM_MULTI_KRUM else 1
    assert len(r.selected) == kept - f_rest
    assert sum(r.weights) == len(r.selected) * n
    assert not set(r.selected) & set(r.flagged)
    assert set(r.flagged_direction) <= set(r.flagged)
    if not r.coherent:
        assert r.flagged_direction == ()


@SETTINGS
@given(st.data())
def test_median_cosines_and_neighbourhoods_equal_their_reference_twins(data: st.DataObject) -> None:
    """The pairwise-once cosines and the integer-keyed neighbourhood sort against the definitions:
    zero rows (norm 0), opposite and equal rows (clamping, ties), distances tied on purpose."""
    k = data.draw(st.integers(1, 14))
    d = data.draw(st.integers(1, 6))
    lo, hi = data.draw(st.sampled_from([(-32768, 32767), (-2, 2), (0, 1)]))
    Q = np.array(
        data.draw(st.lists(st.lists(st.integers(lo, hi), min_size=d, max_size=d), min_size=k, max_size=k)),
        dtype=np.int16,
    ).reshape(k, d)
    G = krum.gram_matrix(Q)
    assert robust.median_cosines(G.tolist()) == robust.median_cosines_reference(G.tolist())
    D = krum.distance_matrix_from_gram(G).tolist()
    if data.draw(st.booleans()):  # any integers, negative ones too: the key must order them all
        D = data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=k, max_size=k), min_size=k, max_size=k))
    addresses = data.draw(st.lists(st.binary(min_size=32, max_size=32), min_size=k, max_size=k, unique=True))
    rows = data.draw(st.lists(st.sampled_from(range(k)), min_size=1, max_size=k, unique=True))
    n = data.draw(st.integers(1, len(rows)))
    assert robust.neighbourhoods(D, rows, n, addresses) == robust.neighbourhoods_reference(
        D, rows, n, addresses
    )


def test_refusals() -> None:
    Q = np.zeros((4, 3), dtype=np.int16)
    G = krum.gram_matrix(Q)
    with pytest.raises(ValueError, match="2f \\+ 3"):
        robust.decide_round(G, 1, addrs(4), OFF)
    with pytest.raises(ValueError, match="distinct"):
        robust.decide_round(G, 0, [b"\0" * 32] * 4, OFF)
    with pytest.raises(ValueError):
        robust.decide_round(G.astype(np.int32), 0, addrs(4), OFF)
    with pytest.raises(ValueError):
        RoundRules(100, 100, 10_001, 0)
    with pytest.raises(ValueError):
        robust.decide_round(G, 0, addrs(4), OFF, 7)
