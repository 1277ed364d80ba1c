"""The contribution score (``mpsnode.consensus.contribution``): fast kernels equal their reference
twins, the gradient is the margin's first-order change, the projection removes what was public, and
the units split a round as the protocol says."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsnode.consensus import contribution, krum, model
from mpsnode.consensus.tx import update_commitment

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def nets(draw: st.DrawFn) -> tuple:
    depth = draw(st.integers(1, 3))
    arch = tuple(draw(st.integers(1, 6)) for _ in range(depth)) + (draw(st.integers(2, 5)),)
    s = draw(st.sampled_from([0, 3, 8, 12]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1, 1 << s, model.WEIGHT_CLAMP]))
    w = rng.integers(-scale, scale + 1, model.param_count(arch)).astype(np.int32)
    n = draw(st.integers(0, 12))
    x_scale = draw(st.sampled_from([1, 1 << s, 1 << 15]))
    x = rng.integers(-x_scale, x_scale, (n, arch[0])).clip(-32768, 32767).astype(np.int16)
    y = rng.integers(0, arch[-1], n).astype(np.uint8)
    return w, arch, s, x, y


@SETTINGS
@given(nets())
def test_margin_gradient_matches_reference(net: tuple) -> None:
    w, arch, s, x, y = net
    fast = contribution.margin_gradient(w, arch, s, x, y)
    assert fast.dtype == np.int64
    assert np.array_equal(fast, contribution.margin_gradient_reference(w, arch, s, x, y))


def _margin_sum(w: np.ndarray, arch: tuple, s: int, x: np.ndarray, y: np.ndarray) -> int:
    z = model.compute_logits_reference(w, arch, s, x)
    total = 0
    for row, label in zip(z, y.tolist(), strict=True):
        best = max(v for o, v in enumerate(row) if o != label)
        m = row[label] - best
        if m < contribution.margin_window(s):
            total += m
    return total


def test_gradient_predicts_the_margin_change_of_a_small_step() -> None:
    """<g, q> / 2^s is the first-order change of the counted margins: on a real digits-sized net, a
    small random step changes the margin sum by about that much (and in the same direction)."""
    rng = np.random.default_rng(3)
    arch, s = (16, 12, 4), 12
    w = rng.integers(-1500, 1500, model.param_count(arch)).astype(np.int32)
    x = rng.integers(0, 1 << s, (200, arch[0])).astype(np.int16)
    y = rng.integers(0, arch[-1], 200).astype(np.uint8)
    g = contribution.margin_gradient(w, arch, s, x, y)
    base = _margin_sum(w, arch, s, x, y)
    agree = 0
    for seed in range(20):
        q = np.random.default_rng(seed).integers(-3, 4, w.shape[0])
        predicted = Fraction(int(np.dot(g, q)), 1 << s)
        actual = _margin_sum((w + q).astype(np.int32), arch, s, x, y) - base
        agree += (predicted > 0) == (actual > 0)
        assert abs(actual - predicted) <= abs(predicted) / 2 + (1 << (2 * s - 4))
    assert agree >= 18


def test_samples_beyond_the_window_give_no_gradient() -> None:
    arch, s = (2, 2), 4
    w = np.array([100, 0, 0, 0, 0, 0], dtype=np.int32)  # class 0's logit = 100 x, bias 0
    x = np.array([[16, 0]], dtype=np.int16)  # margin of class 0 = 1600 << 4 = 100 logits: confident
    assert not contribution.margin_gradient(w, arch, s, x, np.array([0], np.uint8)).any()
    wrong = contribution.margin_gradient(w, arch, s, x, np.array([1], np.uint8))  # misclassified: counts
    assert wrong.any() and np.array_equal(
        wrong, contribution.margin_gradient_reference(w, arch, s, x, np.array([1], np.uint8))
    )


def test_validation_limits_refused() -> None:
    w = np.zeros(model.param_count((2, 2)), dtype=np.int32)
    with pytest.raises(ValueError, match="labels must be <"):
        contribution.margin_gradient(w, (2, 2), 4, np.zeros((1, 2), np.int16), np.array([2], np.uint8))
    with pytest.raises(ValueError, match="labels for"):
        contribution.margin_gradient(w, (2, 2), 4, np.zeros((2, 2), np.int16), np.array([1], np.uint8))
    with pytest.raises(ValueError, match="exceeds the limit"):
        n = contribution.MAX_VALIDATION_SAMPLES + 1
        contribution.margin_gradient(w, (2, 2), 4, np.zeros((n, 2), np.int16), np.zeros(n, np.uint8))


@st.composite
def bases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    d = draw(st.integers(1, 12))
    k = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1, 50, 32767]))
    P = rng.integers(-scale, scale + 1, (k, d)).astype(np.int16)
    if k >= 3 and draw(st.booleans()):
        P[2] = np.clip(P[0].astype(np.int64) + P[1], -32768, 32767)  # a dependent row
    if k >= 2 and draw(st.booleans()):
        P[1] = 0
    g = rng.integers(-(1 << 23), 1 << 23, d).astype(np.int64)
    return g, P


@SETTINGS
@given(bases())
def test_projection_matches_reference(case: tuple[np.ndarray, np.ndarray]) -> None:
    g, P = case
    fast = contribution.orthogonal_direction(g, P, krum.gram_matrix(P))
    assert np.array_equal(fast, contribution.orthogonal_direction_reference(g, P))
    assert int(np.abs(fast).max(initial=0)) < 1 << 24


@SETTINGS
@given(bases())
def test_solve_gram_matches_reference(case: tuple[np.ndarray, np.ndarray]) -> None:
    g, P = case
    H = [[int(a) for a in row] for row in krum.gram_matrix_reference(P)]
    r = [int(np.dot(row.astype(object), g.astype(object))) for row in P]
    Y, D = contribution.solve_gram(H, r)
    assert D > 0
    Yr, Dr = contribution.solve_gram_reference(H, r)
    assert [Fraction(v, D) for v in Y] == [Fraction(v, Dr) for v in Yr]
    # y solves the system: H y = r (r lies in the range of H = P P^T)
    for i in range(len(r)):
        assert sum(Fraction(H[i][j]) * Fraction(Y[j], D) for j in range(len(r))) == r[i]


def test_solve_gram_many_rows_with_dependencies() -> None:
    """24 rows at full int16 scale, three of them combinations of earlier ones and one zero: the kept
    rows and the exact solution are the reference's."""
    rng = np.random.default_rng(5)
    P = rng.integers(-32768, 32768, (24, 40)).astype(np.int16)
    P[5] = P[2]  # a copy
    P[0] -= P[0] % 2  # even, so that P[9] below is an exact combination
    P[4] -= P[4] % 2
    P[9] = P[0] // 2 - P[4] // 2
    P[13] = 0
    P[1] = np.clip(P[1], -32767, 32767)
    P[17] = -P[1]  # a negation
    g = rng.integers(-(1 << 23), 1 << 23, 40).astype(np.int64)
    H = [[int(a) for a in row] for row in krum.gram_matrix_reference(P)]
    r = [int(np.dot(row.astype(object), g.astype(object))) for row in P]
    Y, D = contribution.solve_gram(H, r)
    Yr, Dr = contribution.solve_gram_reference(H, r)
    assert [Fraction(v, D) for v in Y] == [Fraction(v, Dr) for v in Yr]
    assert Y[5] == Y[9] == Y[13] == Y[17] == 0  # dependent rows are not kept
    assert contribution.solve_gram([], []) == ([], 1)
    assert contribution.solve_gram([[0, 0], [0, 0]], [0, 0]) == ([0, 0], 1)


def test_public_combinations_gain_next_to_nothing() -> None:
    """A copy of a previous update, the previous round's mean (a replay of the global change) and a
    zero update gain (next to) nothing; a fresh direction keeps its gain."""
    rng = np.random.default_rng(11)
    d = 4000
    P = rng.integers(-300, 300, (8, d)).astype(np.int16)
    g = contribution.to_direction(rng.integers(-(1 << 40), 1 << 40, d).astype(np.int64))
    v = contribution.orthogonal_direction(g, P, krum.gram_matrix(P))
    fresh = np.clip(g >> 17, -300, 300).astype(np.int16)  # aligned with g, nothing like P
    mean = np.rint(P.astype(np.float64).mean(axis=0)).astype(np.int16)
    Q = np.stack([P[3], mean, np.zeros(d, np.int16), fresh])
    gains = contribution.gains(v, Q)
    assert np.array_equal(gains, contribution.gains_reference(v, Q))
    assert gains[2] == 0
    assert abs(int(gains[0])) < gains[3] // 1000  # a copy: numerically nothing
    assert abs(int(gains[1])) < gains[3] // 50  # the mean, rounded to int16: next to nothing


def test_units_share_a_round_by_positive_gain() -> None:
    units = contribution.round_units([30, 10, -20, 0, 60], [1, 2, 1, 1, 0])
    assert units == (750_000, 250_000, 0, 0, 0)  # the last was not aggregated, the third hurt
    assert contribution.round_units([-1, 0], [1, 1]) == (0, 0)
    assert sum(contribution.round_units([7, 11, 13], [1, 1, 1])) <= contribution.ROUND_UNITS
    with pytest.raises(ValueError):
        contribution.round_units([1, 2], [1])


def test_near_copies_share_one_contribution() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(-200, 200, 500)
    other = rng.integers(-200, 200, 500)
    Q = np.stack([base, base + rng.integers(-5, 6, 500), other, np.zeros(500), base * 2]).astype(np.int16)
    copies = contribution.near_copies(krum.gram_matrix(Q).tolist(), 9500)
    assert copies == (3, 3, 1, 1, 3)  # a near copy and a scaled copy of row 0 link to it; zero links nothing
    units = contribution.round_units([90, 90, 60, 0, 180], [1, 1, 1, 1, 1], copies)
    assert units == (
        166_666,
        166_666,
        333_333,
        0,
        333_333,
    )  # shares 30, 30, 60, 0, 60: the alike split theirs
    assert contribution.near_copies(krum.gram_matrix(Q).tolist(), 10_001) == (1, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        contribution.round_units([1, 2], [1, 1], [1, 0])


def test_a_longer_update_earns_no_more_than_the_upper_quartile_length() -> None:
    norms = [100, 400, 900, 1600, 10_000]  # lengths 10, 20, 30, 40, 100; upper quartile of the eligible: 40
    capped = contribution.norm_capped([50, 50, -50, 80, 500], norms, [True] * 5)
    assert capped == [50, 50, -50, 80, 200]  # 500 * 40 // 100; a loss is never scaled
    assert contribution.norm_capped([500], [10_000], [False]) == [500]  # nothing eligible: unchanged


def test_commitment_binds_every_field() -> None:
    base = ("chain", 1, 2, bytes(32), b"\x01\x00", bytes(32))
    reference = update_commitment(*base)
    for i, other in enumerate(("chain2", 2, 3, bytes([1]) * 32, b"\x02\x00", bytes([1]) * 32)):
        changed = list(base)
        changed[i] = other
        assert update_commitment(*changed) != reference


def test_gains_of_noise_size_do_not_count() -> None:
    rng = np.random.default_rng(9)
    v = rng.integers(-(1 << 23), 1 << 23, 50_000).astype(np.int64)
    assert contribution.squared_norm(v) == sum(int(x) * int(x) for x in v)  # exact past 2^63
    aligned = np.clip(v >> 16, -32767, 32767).astype(np.int16)
    noise = rng.integers(-128, 128, 50_000).astype(np.int16)
    Q = np.stack([aligned, noise])
    gains = contribution.gains(v, Q).tolist()
    norms = np.diagonal(krum.gram_matrix(Q)).tolist()
    kept = contribution.significant(gains, norms, contribution.squared_norm(v), 70)
    assert kept[0] == gains[0] > 0  # cosine near 1
    assert kept[1] == min(gains[1], 0)  # a random direction's cosine is about 1/sqrt(d) = 0.0045 < 0.007
    assert contribution.significant([-5], [1], 1, 70) == [-5]  # a loss is kept as it is
