"""Krum scoring: the fast integer kernels equal their plain-Python twins, and the selection rule."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpsnode.consensus import krum
from mpsnode.consensus.krum import (
    KrumResult,
    compute_krum_result,
    distance_matrix,
    distance_matrix_reference,
    gram_matrix,
    gram_matrix_reference,
    krum_scores,
    krum_scores_reference,
    multi_krum,
)

I16_MIN, I16_MAX = -32768, 32767

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.integers(I16_MIN, I16_MAX),
    st.sampled_from([I16_MIN, I16_MIN + 1, I16_MAX, -1, 0, 1]),
    st.integers(-2000, 2000),
)


@st.composite
def updates(draw: st.DrawFn, max_k: int = 12, max_d: int = 40, min_k: int = 1) -> np.ndarray:
    k = draw(st.integers(min_k, max_k))
    d = draw(st.integers(1, max_d))
    kind = draw(st.sampled_from(["mixed", "extreme", "small", "one_extreme_row"]))
    if kind == "extreme":
        Q = draw(arrays(np.int16, (k, d), elements=st.sampled_from([I16_MIN, -I16_MAX, I16_MAX])))
    elif kind == "small":
        Q = draw(arrays(np.int16, (k, d), elements=st.integers(-2000, 2000)))
    else:
        Q = draw(arrays(np.int16, (k, d), elements=values))
        if kind == "one_extreme_row":
            Q = (Q // 16).astype(np.int16)  # small everywhere but one row: both kernels in one product
            Q[draw(st.integers(0, k - 1))] = draw(st.sampled_from([I16_MIN, I16_MAX]))
    # Identical rows make ties in distances and scores.
    for _ in range(draw(st.integers(0, k - 1))):
        Q[draw(st.integers(0, k - 1))] = Q[draw(st.integers(0, k - 1))]
    return Q


# Speed knobs that must never change a result: block width, int32 run length, kernel choice, split.
knobs = st.fixed_dictionaries(
    {},
    optional={
        "block_cols": st.sampled_from([1, 2, 3, 5, 16, 64, 8192]),
        "int32_chunk_max": st.integers(1, 1 << 16),
        "int32_chunk_min": st.sampled_from([1, 2, 64, 1 << 30]),
        "parts": st.integers(1, 5),
    },
)


# ---------------------------------------------------------------------------------------------
# Fast == reference


@SETTINGS
@given(updates(), knobs)
def test_gram_matches_reference(Q: np.ndarray, kw: dict[str, int]) -> None:
    G = gram_matrix(Q, **kw)
    assert G.dtype == np.int64
    assert np.array_equal(G, gram_matrix_reference(Q))


@SETTINGS
@given(updates())
def test_distances_match_reference(Q: np.ndarray) -> None:
    D = distance_matrix(Q)
    assert D.dtype == np.int64
    assert np.array_equal(D, distance_matrix_reference(Q))
    assert np.array_equal(D, D.T)
    assert not np.diagonal(D).any()


@st.composite
def scores_case(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    f = draw(st.integers(0, 5))
    k = draw(st.integers(2 * f + 3, 2 * f + 3 + draw(st.sampled_from([0, 0, 1, 4]))))
    if draw(st.booleans()):
        top = draw(st.sampled_from([3, 100, krum.MAX_DISTANCE - 1]))  # small values tie a lot
        D = draw(arrays(np.int64, (k, k), elements=st.integers(0, top)))
    else:
        D = distance_matrix(draw(updates(min_k=k, max_k=k)))
    return D, f


@SETTINGS
@given(scores_case())
def test_scores_match_reference(case: tuple[np.ndarray, int]) -> None:
    D, f = case
    s = krum_scores(D, f)
    assert s.dtype == np.int64
    assert np.array_equal(s, krum_scores_reference(D, f))


def test_256_updates_small_d() -> None:
    rng = np.random.default_rng(256)
    Q = rng.integers(I16_MIN, I16_MAX + 1, size=(256, 3), dtype=np.int16)
    Q[7] = I16_MIN
    Q[200] = Q[3]
    D = distance_matrix(Q)
    assert np.array_equal(gram_matrix(Q), gram_matrix_reference(Q))
    assert np.array_equal(D, distance_matrix_reference(Q))
    assert np.array_equal(krum_scores(D, 126), krum_scores_reference(D, 126))  # k = 2f + 4
    assert np.array_equal(krum_scores(D, 10), krum_scores_reference(D, 10))


def test_one_parameter() -> None:
    Q = np.array([[I16_MIN], [I16_MAX], [0], [-1], [I16_MAX]], dtype=np.int16)
    assert distance_matrix(Q)[0, 1] == 65535**2
    assert np.array_equal(distance_matrix(Q), distance_matrix_reference(Q))
    assert gram_matrix(Q)[0, 0] == 1 << 30


@pytest.mark.parametrize("block_cols", [1000, 4096, krum.GRAM_BLOCK_COLS])
def test_many_column_blocks(block_cols: int) -> None:
    """d spans many blocks and int32 runs, with the int64 kernel on the tiles of one extreme row."""
    rng = np.random.default_rng(block_cols)
    k, d = 8, 50_000
    Q = rng.integers(-2000, 2001, size=(k, d), dtype=np.int16)
    Q[5, 31_337] = I16_MIN
    Q[6] = Q[1]
    Q64 = Q.astype(np.int64)
    expected = Q64 @ Q64.T  # numpy's integer matmul: exact here (|entries| < 2^46), no BLAS
    for kw in ({}, {"int32_chunk_min": 1 << 30}, {"int32_chunk_max": 100, "parts": 3}):
        assert np.array_equal(gram_matrix(Q, block_cols=block_cols, **kw), expected)
    assert np.array_equal(
        gram_matrix(Q[:3, :2000], block_cols=block_cols), gram_matrix_reference(Q[:3, :2000])
    )


def test_extreme_magnitudes_at_max_params() -> None:
    """The largest distance the protocol allows: 2^22 parameters at opposite ends of int16."""
    d = krum.MAX_PARAMS
    Q = np.empty((3, d), dtype=np.int16)
    Q[0] = I16_MAX
    Q[1] = I16_MIN
    Q[2, 0::2] = I16_MIN
    Q[2, 1::2] = I16_MAX
    expected_g = np.array(
        [
            [d * I16_MAX**2, d * I16_MAX * I16_MIN, 0],
            [d * I16_MAX * I16_MIN, d * I16_MIN**2, (d // 2) * (I16_MIN**2 + I16_MAX * I16_MIN)],
            [0, (d // 2) * (I16_MIN**2 + I16_MAX * I16_MIN), (d // 2) * (I16_MIN**2 + I16_MAX**2)],
        ],
        dtype=np.int64,
    )
    expected_g[0, 2] = expected_g[2, 0] = (d // 2) * (I16_MAX * I16_MIN + I16_MAX**2)
    assert np.array_equal(gram_matrix(Q), expected_g)
    assert np.array_equal(gram_matrix(Q, int32_chunk_min=1, block_cols=1 << 20), expected_g)  # 1-column runs
    D = distance_matrix(Q)
    assert D[0, 1] == d * 65535**2 == 18013848757862400  # < 2^54
    assert D[0, 2] == (d // 2) * 65535**2
    assert D[1, 2] == (d // 2) * 65535**2
    assert krum_scores(D, 0).tolist() == [(d // 2) * 65535**2] * 3  # k - f - 2 = 1 smallest


def test_result_does_not_depend_on_thread_count() -> None:
    rng = np.random.default_rng(7)
    Q = rng.integers(I16_MIN, I16_MAX + 1, size=(20, 30_001), dtype=np.int16)
    Q[:10] //= 32
    before = numba.get_num_threads()
    try:
        results = []
        for n in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(n)
            results.append(gram_matrix(Q))
    finally:
        numba.set_num_threads(before)
    Q64 = Q.astype(np.int64)
    for G in results:
        assert np.array_equal(G, Q64 @ Q64.T)


def test_non_contiguous_and_big_endian_input() -> None:
    rng = np.random.default_rng(3)
    Q = rng.integers(I16_MIN, I16_MAX + 1, size=(6, 60), dtype=np.int16)
    expected = gram_matrix_reference(Q[:, ::3])
    assert np.array_equal(gram_matrix(Q[:, ::3]), expected)
    assert np.array_equal(gram_matrix(Q[:, ::3].astype(">i2")), expected)


# ---------------------------------------------------------------------------------------------
# A hand-computed round


def test_hand_computed_round() -> None:
    # Four clustered points and one outlier in 2-D.
    Q = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [10, 10]], dtype=np.int16)
    assert gram_matrix(Q).tolist() == [
        [0, 0, 0, 0, 0],
        [0, 1, 0, 1, 10],
        [0, 0, 1, 1, 10],
        [0, 1, 1, 2, 20],
        [0, 10, 10, 20, 200],
    ]
    D = distance_matrix(Q)
    assert D.tolist() == [
        [0, 1, 1, 2, 200],
        [1, 0, 2, 1, 181],  # (1-10)^2 + (0-10)^2 = 81 + 100
        [1, 2, 0, 1, 181],
        [2, 1, 1, 0, 162],  # 81 + 81
        [200, 181, 181, 162, 0],
    ]
    # f = 1: each score sums the k - f - 2 = 2 smallest distances to the others.
    assert krum_scores(D, 1).tolist() == [1 + 1, 1 + 1, 1 + 1, 1 + 1, 162 + 181]
    # All four honest scores tie at 2: the address decides, so the order reverses.
    addresses = [bytes([5]) * 32, bytes([4]) * 32, bytes([3]) * 32, bytes([2]) * 32, bytes([1]) * 32]
    r = multi_krum(Q, 1, addresses, 400)
    assert r == KrumResult(
        scores=(2, 2, 2, 2, 343), ranking=(3, 2, 1, 0, 4), selected=(3, 2, 1, 0), flagged=(4,), median=2
    )
    # 100 * 343 = 34300 against 17150 * 2 = 34300: not strictly greater, so not flagged.
    assert multi_krum(Q, 1, addresses, 17150).flagged == ()
    assert multi_krum(Q, 1, addresses, 17149).flagged == (4,)


# ---------------------------------------------------------------------------------------------
# Ranking and the flag rule


def addrs(k: int) -> list[bytes]:
    return [i.to_bytes(32, "big") for i in range(k)]


def test_ties_broken_by_address_not_index() -> None:
    Q = np.zeros((5, 4), dtype=np.int16)  # every score 0
    addresses = [b"\x09" * 32, b"\x01" * 32, b"\x07" * 32, b"\x03" * 32, b"\x05" * 32]
    r = multi_krum(Q, 1, addresses, 100)
    assert r.ranking == (1, 3, 4, 2, 0)
    assert r.selected == (1, 3, 4, 2)
    assert r.median == 0 and r.flagged == ()


def test_flag_uses_lower_median() -> None:
    # Sorted scores 1 2 3 4 5 13: lower median 3 (the upper would be 4).
    r = compute_krum_result([13, 1, 2, 3, 4, 5], 1, addrs(6), 400)
    assert r.median == 3
    assert r.flagged == (0,)  # 1300 > 1200; against the upper median 1300 > 1600 would fail


def test_flag_is_strict() -> None:
    r = compute_krum_result([12, 1, 2, 3, 4, 5], 1, addrs(6), 400)
    assert r.flagged == ()  # 100 * 12 == 400 * 3


def test_median_zero_flags_nobody() -> None:
    r = compute_krum_result([0, 0, 0, 0, 0, 10**9], 1, addrs(6), 100)
    assert r.median == 0 and r.flagged == () and r.ranking[-1] == 5


def test_only_the_f_worst_can_be_flagged() -> None:
    # Three clients far above the threshold, but f = 2: the best of them is selected, not flagged.
    r = compute_krum_result([100, 10, 100, 10, 10, 100, 10], 2, addrs(7), 400)
    assert r.median == 10
    assert r.ranking == (1, 3, 4, 6, 0, 2, 5)
    assert r.selected == (1, 3, 4, 6, 0)
    assert r.flagged == (2, 5)


def test_flag_order_follows_ranking() -> None:
    r = compute_krum_result([50, 1, 1, 1, 40, 1, 1], 2, addrs(7), 100)
    assert r.ranking[-2:] == (4, 0)
    assert r.flagged == (4, 0)


def test_flag_rule_exact_beyond_int64() -> None:
    big = (1 << 62) - 1  # 100 * big overflows int64
    r = compute_krum_result([big, 1 << 56, 1 << 56, 1 << 56, 1 << 56], 1, addrs(5), 101)
    assert r.flagged == (0,)
    r = compute_krum_result([big, 1 << 60, 1 << 60, 1 << 60, 1 << 60], 1, addrs(5), 400)
    assert r.flagged == ()  # 100 * (2^62 - 1) < 400 * 2^60


@SETTINGS
@given(st.data())
def test_multi_krum_invariants(data: st.DataObject) -> None:
    f = data.draw(st.integers(0, 3))
    k = data.draw(st.integers(2 * f + 3, 2 * f + 6))
    Q = data.draw(updates(min_k=k, max_k=k, max_d=10))
    addresses = data.draw(st.lists(st.binary(min_size=32, max_size=32), min_size=k, max_size=k, unique=True))
    pct = data.draw(st.sampled_from([100, 150, 400, 10_000]))
    r = multi_krum(Q, f, addresses, pct)
    s = krum_scores_reference(distance_matrix_reference(Q), f).tolist()
    assert list(r.scores) == s
    assert list(r.ranking) == sorted(range(k), key=lambda i: (s[i], addresses[i]))
    assert r.selected == r.ranking[: k - f]
    assert r.median == sorted(s)[(k - 1) // 2]
    worst = r.ranking[k - f :]
    assert r.flagged == tuple(i for i in worst if r.median > 0 and 100 * s[i] > pct * r.median)


# ---------------------------------------------------------------------------------------------
# Refusals


def test_too_few_updates_for_f() -> None:
    Q = np.zeros((4, 3), dtype=np.int16)
    with pytest.raises(ValueError, match="2f \\+ 3"):
        krum_scores(distance_matrix(Q), 1)
    with pytest.raises(ValueError, match="2f \\+ 3"):
        krum_scores_reference(distance_matrix(Q), 1)
    with pytest.raises(ValueError, match="2f \\+ 3"):
        multi_krum(Q, 1, addrs(4), 400)
    krum_scores(distance_matrix(Q), 0)  # k = 4 >= 3


@pytest.mark.parametrize(
    "Q",
    [
        np.zeros((3, 3), dtype=np.int32),
        np.zeros((3, 3), dtype=np.float64),
        np.zeros(9, dtype=np.int16),
        np.zeros((257, 1), dtype=np.int16),
        np.zeros((1, krum.MAX_PARAMS + 1), dtype=np.int16),
    ],
)
def test_bad_updates_refused(Q: np.ndarray) -> None:
    with pytest.raises(ValueError):
        gram_matrix(Q)


def test_bad_arguments_refused() -> None:
    Q = np.zeros((5, 3), dtype=np.int16)
    with pytest.raises(ValueError):
        multi_krum(Q, 1, addrs(4), 400)  # one address short
    with pytest.raises(ValueError):
        multi_krum(Q, 1, [b"\x00" * 32] * 5, 400)  # duplicate addresses: no total order
    with pytest.raises(ValueError):
        multi_krum(Q, -1, addrs(5), 400)
    with pytest.raises(ValueError):
        multi_krum(Q, 1, addrs(5), -1)
    with pytest.raises(ValueError):
        krum_scores(np.full((5, 5), krum.MAX_DISTANCE, dtype=np.int64), 1)
    with pytest.raises(ValueError):
        krum_scores(np.full((5, 5), -1, dtype=np.int64), 1)
    with pytest.raises(ValueError):
        krum_scores(np.zeros((5, 5), dtype=np.int32), 1)
    with pytest.raises(ValueError):
        gram_matrix(Q, block_cols=0)


# ---------------------------------------------------------------------------------------------
# The direction statistic: each update against the sum of the others


@SETTINGS
@given(updates(max_k=10, max_d=30))
def test_direction_stats_match_reference(Q: np.ndarray) -> None:
    assert krum.direction_stats(gram_matrix(Q)) == krum.direction_stats_reference(Q)


def test_direction_stats_exact_at_the_bounds() -> None:
    """256 updates whose Gram entries all sit at +-2^52: row sums reach 2^60, the total 2^68."""
    k = 256
    rng = np.random.default_rng(5)
    G = (rng.choice([-1, 1, 1, 1, 1, 1, 1, 1], (k, k)) * (1 << 52)).astype(np.int64)  # mostly positive
    G = np.triu(G) + np.triu(G, 1).T
    np.fill_diagonal(G, 1 << 52)
    stats = krum.direction_stats(G)
    rows = [sum(int(v) for v in row) for row in G]
    total = sum(rows)
    assert stats.dots == tuple(r - int(G[i, i]) for i, r in enumerate(rows))
    assert stats.others == tuple(total - 2 * r + int(G[i, i]) for i, r in enumerate(rows))
    assert max(abs(r) for r in rows) > 1 << 59 and total > 1 << 66  # the bounds are actually exercised
    with pytest.raises(ValueError, match="2\\^52"):
        krum.direction_stats(G * 2)


@SETTINGS
@given(updates(min_k=2, max_k=9, max_d=12), st.integers(0, 10_000))
def test_cosine_comparison_matches_floats_away_from_the_boundary(Q: np.ndarray, bps: int) -> None:
    stats = krum.direction_stats_reference(Q)
    for i in range(Q.shape[0]):
        n, o, dot = stats.norms[i], stats.others[i], stats.dots[i]
        if n == 0 or o == 0:
            assert not stats.is_cosine_below(i, bps) and stats.signed_cos2(i) == 0
            continue
        cos = dot / (float(n) ** 0.5 * float(o) ** 0.5)
        assert float(stats.signed_cos2(i)) == pytest.approx(cos * abs(cos), rel=1e-9, abs=1e-12)
        if abs(cos + bps / 10_000) > 1e-9:
            assert stats.is_cosine_below(i, bps) == (cos < -bps / 10_000)


def _cluster_with_flippers(k: int, flipped: list[int], seed: int = 0) -> np.ndarray:
    """``k`` updates around one direction; the rows in ``flipped`` point the other way."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-300, 300, 40)
    Q = np.stack([base + rng.integers(-60, 60, 40) for _ in range(k)])
    Q[flipped] *= -1
    return Q.astype(np.int16)


RULE = krum.RoundRules(threshold_bps=2500, gate_bps=4000, coherent_score_ratio_pct=10**6)  # Krum off


def test_sign_flipped_updates_are_flagged_by_direction_and_not_aggregated() -> None:
    Q = _cluster_with_flippers(9, [2, 6])
    r = multi_krum(Q, 2, addrs(9), 10**6, RULE)  # Krum's rule effectively off
    assert r.coherent and set(r.flagged_direction) == {2, 6} and r.flagged == r.flagged_direction
    assert not set(r.selected) & {2, 6} and len(r.selected) == 9 - 2 - len(set(r.ranking[:7]) & {2, 6})
    stats = krum.direction_stats_reference(Q)
    keys = [stats.signed_cos2(i) for i in (2, 6)]
    assert list(r.flagged_direction) == [
        i for _, i in sorted(zip(keys, (2, 6), strict=True))
    ]  # most negative first


def test_direction_rule_needs_agreement_and_respects_its_limits() -> None:
    Q = _cluster_with_flippers(9, [2, 6])
    # gate above the round's median cosine: the rule does not apply
    off = multi_krum(Q, 2, addrs(9), 10**6, krum.RoundRules(2500, 10_000, 10**6))
    assert not off.coherent and off.flagged == ()
    # threshold 10000 (cos < -1) never flags
    assert multi_krum(Q, 2, addrs(9), 10**6, krum.RoundRules(10_000, 0, 10**6)).flagged == ()
    # at most f flagged in all: Krum's flags take their slots first
    assert len(multi_krum(Q, 1, addrs(9), 10**6, RULE).flagged_direction) == 1
    Q3 = _cluster_with_flippers(9, [2, 6])
    Q3[4] = (Q3[4].astype(np.int64) * 40).clip(-32767, 32767)  # a boosted one Krum catches
    r = multi_krum(
        Q3, 2, addrs(9), 10**6, krum.RoundRules(2500, 4000, 10_000)
    )  # coherent: 100x, only the boosted
    assert r.flagged[0] == 4 and len(r.flagged) == 2 and r.flagged_direction == r.flagged[1:]
    # without a rule nothing changes from plain Krum
    plain = multi_krum(Q, 2, addrs(9), 10**6)
    assert plain.flagged == () and plain.selected == plain.ranking[:7] and not plain.coherent
    with pytest.raises(ValueError):
        krum.RoundRules(10_001, 0, 100)


@SETTINGS
@given(st.data())
def test_flag_rules_fast_equal_reference(data: st.DataObject) -> None:
    f = data.draw(st.integers(0, 3))
    k = data.draw(st.integers(2 * f + 3, 2 * f + 6))
    Q = data.draw(updates(min_k=k, max_k=k, max_d=10))
    if data.draw(st.booleans()):
        Q = _cluster_with_flippers(
            k, data.draw(st.lists(st.integers(0, k - 1), max_size=f)), data.draw(st.integers(0, 99))
        )
    addresses = data.draw(st.lists(st.binary(min_size=32, max_size=32), min_size=k, max_size=k, unique=True))
    pct = data.draw(st.sampled_from([100, 400, 12_000]))
    rule = krum.RoundRules(
        data.draw(st.sampled_from([0, 2500, 9000])),
        data.draw(st.sampled_from([0, 4000, 9000])),
        data.draw(st.sampled_from([100, 3000, 10**6])),
    )
    fast = multi_krum(Q, f, addresses, pct, rule)
    s = krum_scores_reference(distance_matrix_reference(Q), f).tolist()
    ref = compute_krum_result(s, f, addresses, pct, krum.direction_stats_reference(Q), rule)
    assert fast == ref
    assert len(fast.flagged) <= f and not set(fast.flagged) & set(fast.selected)
    assert set(fast.selected) <= set(fast.ranking[: k - f])
    stats = krum.direction_stats_reference(Q)
    assert all(stats.is_cosine_below(i, rule.threshold_bps) for i in fast.flagged_direction)


def test_coherent_rounds_use_their_own_krum_threshold() -> None:
    Q = _cluster_with_flippers(9, [])
    Q[4] = (Q[4].astype(np.int64) * 8).clip(-32767, 32767)  # boosted, same direction as the others
    r0 = multi_krum(Q, 2, addrs(9), 10**6)
    ratio = 100 * r0.scores[4] // r0.median  # in percent
    coherent = krum.RoundRules(2500, 4000, ratio - 1)
    assert multi_krum(Q, 2, addrs(9), 10**6, coherent).flagged == (4,)  # the coherent threshold applies
    assert multi_krum(Q, 2, addrs(9), 10**6, krum.RoundRules(2500, 4000, ratio + 1)).flagged == ()
    gate_off = krum.RoundRules(2500, 10_000, ratio - 1)  # not coherent: the general threshold applies
    assert multi_krum(Q, 2, addrs(9), 10**6, gate_off).flagged == ()
    assert multi_krum(Q, 2, addrs(9), ratio - 1, gate_off).flagged == (4,)
