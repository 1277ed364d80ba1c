"""The integer model: fast kernels equal their plain-Python twins, exact bounds, and a float cross-check."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numba import njit

from mpsnode.consensus import model, simd
from mpsnode.consensus.model import (
    MAX_AGGREGATE_WEIGHT,
    WEIGHT_CLAMP,
    accuracy_bps,
    accuracy_bps_reference,
    aggregate,
    aggregate_and_dots,
    aggregate_reference,
    compute_logits,
    compute_logits_reference,
    layer_slices,
    param_count,
    predict,
    predict_reference,
)
from mpsnode.fl import quantize

I16_MIN, I16_MAX = -32768, 32767
CLAMP = WEIGHT_CLAMP  # 2^24 - 1
SAT = (1 << 24) - 1  # largest hidden activation

Aggregator = Callable[[np.ndarray, np.ndarray], np.ndarray]

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# numba's integer semantics, which the kernels rely on


@njit(cache=False)
def _numba_shift_div(
    a: np.ndarray, s: np.ndarray, m: np.ndarray, out_shift: np.ndarray, out_div: np.ndarray
) -> None:
    for i in range(a.shape[0]):
        out_shift[i] = a[i] >> s[i]
        out_div[i] = a[i] // m[i]


def test_numba_right_shift_is_floor_and_floordiv_is_pythons() -> None:
    values = [
        -(1 << 62),
        -(1 << 48) - 1,
        -65537,
        -65536,
        -65535,
        -7,
        -6,
        -5,
        -3,
        -2,
        -1,
        0,
        1,
        2,
        3,
        5,
        65535,
        65536,
        (1 << 62) - 1,
    ]
    shifts = [0, 1, 2, 16, 24]
    divisors = [1, 2, 3, 4, 7, 48, 256]
    cases = [(a, s, m) for a in values for s in shifts for m in divisors]
    a, s, m = (np.array(col, dtype=np.int64) for col in zip(*cases, strict=True))
    out_shift = np.empty_like(a)
    out_div = np.empty_like(a)
    _numba_shift_div(a, s, m, out_shift, out_div)
    assert out_shift.tolist() == [x >> y for x, y, _ in cases]
    assert out_div.tolist() == [x // z for x, _, z in cases]
    # The kind of case that tells floor from truncation apart, stated literally.
    assert (-5 >> 1, -5 // 2, -1 >> 24, -2 // 3) == (-3, -3, -1, -1)


def test_shift_relu_kernel_floors_and_clamps() -> None:
    z = np.array(
        [[-(1 << 62), -65537, -65536, -1, 0, 1, 65535, 65536, 131071, 1 << 40, (1 << 62) - 1]], dtype=np.int64
    )
    a = np.empty(z.shape, dtype=np.int32)
    model._shift_relu(z, 16, a)
    assert a.tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 1, SAT, SAT]]


# ---------------------------------------------------------------------------------------------
# Layout


def test_param_count() -> None:
    assert param_count((4, 5, 3)) == 4 * 5 + 5 + 5 * 3 + 3 == 43
    assert param_count([1, 1]) == 2
    assert param_count([64, 32, 10]) == 64 * 32 + 32 + 32 * 10 + 10 == 2410
    assert param_count([256, 1024, 768, 10]) == 1_058_058
    assert param_count([3, 2, 2, 2, 2]) == 8 + 6 + 6 + 6
    assert param_count((np.int64(4), 2)) == 10  # type: ignore[arg-type]  # numpy ints from a decoder
    for bad in ([], [5], [3, 0, 2], [3, -1], [2.0, 3], "ab"):
        with pytest.raises(ValueError):
            param_count(bad)  # type: ignore[arg-type]


def test_layer_slices_tile_the_vector() -> None:
    assert layer_slices((3, 4, 2)) == [(slice(0, 12), slice(12, 16)), (slice(16, 24), slice(24, 26))]
    archs: list[tuple[int, ...]] = [(1, 1), (7, 3, 5, 2), (2, 9, 1, 4)]
    for arch in archs:
        pos = 0
        for ws, bs in layer_slices(arch):
            assert ws.start == pos and bs.start == ws.stop
            pos = bs.stop
        assert pos == param_count(arch)


def test_layout_is_rows_of_weights_then_biases() -> None:
    # arch (2, 2, 2) at s = 0, written out by hand: W1 = [[1, 2], [3, 4]], b1 = [5, -100],
    # W2 = [[1, 0], [0, 1]], b2 = [0, 10]. x = [10, 20]:
    # z1 = [10 + 40 + 5, 30 + 80 - 100] = [55, 10]; a1 = [55, 10]; z2 = [55, 20].
    w = np.array([1, 2, 3, 4, 5, -100, 1, 0, 0, 1, 0, 10], dtype=np.int32)
    x = np.array([[10, 20]], dtype=np.int16)
    assert compute_logits(w, (2, 2, 2), 0, x).tolist() == [[55, 20]]
    assert compute_logits_reference(w, (2, 2, 2), 0, x) == [[55, 20]]
    # s = 1: z1 = W x + (b << 1) = [50 + 10, 110 - 200] = [60, -90]; a1 = [30, 0]; z2 = [30, 0 + 20].
    assert compute_logits(w, (2, 2, 2), 1, x).tolist() == [[30, 20]]


# ---------------------------------------------------------------------------------------------
# Forward pass: fast == reference

weight_values = st.one_of(
    st.integers(-CLAMP, CLAMP),
    st.sampled_from([-CLAMP, CLAMP, -1, 0, 1]),
    st.integers(-300, 300),
)
input_values = st.one_of(
    st.integers(I16_MIN, I16_MAX),
    st.sampled_from([I16_MIN, -I16_MAX, I16_MAX, -1, 0, 1]),
    st.integers(-100, 100),
)


@st.composite
def forward_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], int, np.ndarray, np.ndarray]:
    hidden = draw(st.lists(st.integers(1, 8), min_size=0, max_size=2))
    arch = (draw(st.integers(1, 8)), *hidden, draw(st.integers(1, 6)))
    scale_bits = draw(st.one_of(st.sampled_from([0, 24]), st.integers(0, 24)))
    d = param_count(arch)
    kind = draw(st.sampled_from(["mixed", "extreme", "small"]))
    if kind == "extreme":
        w = draw(arrays(np.int32, d, elements=st.sampled_from([-CLAMP, CLAMP])))
    elif kind == "small":
        w = draw(arrays(np.int32, d, elements=st.integers(-300, 300)))
    else:
        w = draw(arrays(np.int32, d, elements=weight_values))
    n = draw(st.integers(1, 7))
    x = draw(arrays(np.int16, (n, arch[0]), elements=input_values))
    # Ties in the argmax: copy some output rows (weights and bias) onto others.
    ws, bs = layer_slices(arch)[-1]
    W = w[ws].reshape(arch[-1], arch[-2])
    b = w[bs]
    for _ in range(draw(st.integers(0, arch[-1]))):
        src, dst = draw(st.integers(0, arch[-1] - 1)), draw(st.integers(0, arch[-1] - 1))
        W[dst] = W[src]
        b[dst] = b[src]
    return arch, scale_bits, w, x


# Speed knobs that must never change a result.
block_knobs = st.fixed_dictionaries(
    {},
    optional={
        "sample_block": st.integers(1, 9),
        "output_block": st.integers(1, 9),
        "kernel": st.sampled_from([None, "limbs", "int32"]),
    },
)


@SETTINGS
@given(forward_cases(), block_knobs)
def test_forward_matches_reference(
    case: tuple[tuple[int, ...], int, np.ndarray, np.ndarray], kw: dict[str, int]
) -> None:
    arch, s, w, x = case
    z = compute_logits(w, arch, s, x, **kw)
    assert z.dtype == np.int64 and z.shape == (x.shape[0], arch[-1])
    assert z.tolist() == compute_logits_reference(w, arch, s, x)
    p = predict(w, arch, s, x)
    assert p.dtype == np.int64
    assert p.tolist() == predict_reference(w, arch, s, x).tolist()


def test_ties_go_to_the_lowest_index() -> None:
    arch = (3, 4, 5)
    x = np.array([[1, -2, 3], [0, 0, 0], [I16_MAX, I16_MIN, 7]], dtype=np.int16)
    w = np.zeros(param_count(arch), dtype=np.int32)
    assert predict(w, arch, 8, x).tolist() == [0, 0, 0]  # every logit equal
    _, bs = layer_slices(arch)[-1]
    w[bs] = [1, 7, 3, 7, 7]  # max 7 at outputs 1, 3 and 4
    assert predict(w, arch, 8, x).tolist() == [1, 1, 1]
    assert predict_reference(w, arch, 8, x).tolist() == [1, 1, 1]


def _saturating_case(scale_bits: int) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """arch (1, 16384, 2): the largest fan-in, every hidden unit saturated, output weights at the clamp."""
    arch = (1, model.MAX_FAN_IN, 2)
    h = model.MAX_FAN_IN
    (w1, b1), (w2, b2) = layer_slices(arch)
    w = np.empty(param_count(arch), dtype=np.int32)
    w[w1] = CLAMP
    w[b1] = CLAMP
    W2 = w[w2].reshape(2, h)
    W2[0] = -CLAMP
    W2[1] = CLAMP
    w[b2] = [-CLAMP, CLAMP]
    x = np.array([[I16_MAX], [1], [0], [I16_MIN]], dtype=np.int16)
    return arch, w, x


@pytest.mark.parametrize("kernel", [None, "limbs", "int32"])
@pytest.mark.parametrize("scale_bits", [0, 24])
def test_largest_sums_do_not_overflow(scale_bits: int, kernel: str | None) -> None:
    arch, w, x = _saturating_case(scale_bits)
    z = compute_logits(w, arch, scale_bits, x, kernel=kernel)
    assert z.tolist() == compute_logits_reference(w, arch, scale_bits, x)
    s = scale_bits
    # x = 32767: z1 = CLAMP * 32767 + (CLAMP << s) saturates every hidden unit at both scales.
    top = model.MAX_FAN_IN * CLAMP * SAT + (CLAMP << s)
    assert z[0].tolist() == [-top, top]
    assert top < (1 << 62) + (1 << 48) < (1 << 63) - 1
    assert predict(w, arch, scale_bits, x).tolist() == predict_reference(w, arch, scale_bits, x).tolist()
    assert predict(w, arch, scale_bits, x)[0] == 1


def test_largest_input_fan_in_at_the_extremes() -> None:
    arch = (model.MAX_FAN_IN, 2, 3)
    rng = np.random.default_rng(7)
    w = rng.choice(np.array([-CLAMP, CLAMP], dtype=np.int32), param_count(arch))
    x = rng.choice(np.array([I16_MIN, I16_MAX], dtype=np.int16), (3, arch[0]))
    x[0] = I16_MIN
    w[: 2 * arch[0]] = -CLAMP  # row 0: the most negative input times the most negative weight
    for s in (0, 24):
        expected = compute_logits_reference(w, arch, s, x)
        for kernel in (None, "limbs", "int32"):
            assert compute_logits(w, arch, s, x, kernel=kernel).tolist() == expected


@pytest.mark.parametrize("a_max", [1, 200, 32767, 32768, 1 << 17, CLAMP])
@pytest.mark.parametrize("w_max", [1, 3000, 32767, CLAMP])
def test_the_limb_kernel_at_every_magnitude(a_max: int, w_max: int) -> None:
    """Fan-ins of several int16 steps, operands up to the bounds on either side: the chosen limb
    split's runs stay exact (a run split into whole runs and a remainder included), and both
    kernels equal plain Python ints."""
    rng = np.random.default_rng(a_max * 7 + w_max)
    for n, n_in, n_out in ((7, 5 * simd.LANES + 3, 8), (4, 2 * simd.LANES, 3), (3, 1, 2)):
        A = rng.integers(-a_max if a_max <= 32768 else 0, a_max + (a_max < 32768), (n, n_in))
        A.flat[0] = -32768 if a_max == 32768 else a_max
        A = A.astype(np.int16 if a_max <= 32768 else np.int32)
        W = rng.integers(-w_max, w_max + 1, (n_out, n_in)).astype(np.int32)
        W.flat[-1] = -w_max
        b = rng.integers(-CLAMP, CLAMP + 1, n_out).astype(np.int32)
        plan = model._plan(model._value_range(A), model._value_range(W))
        assert plan is not None
        expected = [
            [
                sum(int(a) * int(w) for a, w in zip(A[i], W[o], strict=True)) + (int(b[o]) << 5)
                for o in range(n_out)
            ]
            for i in range(n)
        ]
        for kernel in ("limbs", "int32"):
            Z = np.empty((n, n_out), dtype=np.int64)
            model._dense_fast(A, W, b, 5, kernel, Z, sample_block=3, output_block=3)
            assert Z.tolist() == expected, kernel


@pytest.mark.parametrize("bits", model.LIMB_WIDTHS)
def test_limbs_add_back_up_and_keep_their_bounds(bits: int) -> None:
    rng = np.random.default_rng(bits)
    M = rng.integers(-CLAMP, CLAMP + 1, (5, 37)).astype(np.int32)
    M[0, 0], M[0, 1] = -CLAMP, CLAMP
    lo, hi = model._value_range(M)
    bounds = model._limb_bounds(lo, hi, bits)
    if bits == 0:
        assert bounds is None  # 24-bit values are not one int16 limb
        small = (M // 1024).astype(np.int16)
        assert model._limb_bounds(*model._value_range(small), 0) == [int(np.abs(small).max())]
        return
    assert bounds is not None
    L = model._limbs(M, bits, 64, len(bounds))
    assert not L[:, :, 37:].any()
    total = sum(L[i].astype(np.int64) << (bits * i) for i in range(len(bounds)))
    assert np.array_equal(total[:, :37], M)
    for limb, bound in zip(L, bounds, strict=True):
        assert int(np.abs(limb.astype(np.int64)).max()) <= bound
    assert all(0 <= int(v) < (1 << bits) for v in L[:-1].ravel())


def test_no_limb_plan_where_one_step_could_overflow() -> None:
    """-2^15 on both sides as single limbs makes a pair sum of 2^31; the plan splits one side instead."""
    plan = model._plan((-32768, 0), (-32768, 0))
    assert plan is not None
    _, a_bits, w_bits, table = plan
    assert a_bits or w_bits
    a_bounds = model._limb_bounds(-32768, 0, a_bits)
    w_bounds = model._limb_bounds(-32768, 0, w_bits)
    assert a_bounds is not None and w_bounds is not None
    for i, mx in enumerate(a_bounds):
        for j, my in enumerate(w_bounds):
            steps = int(table[i, j])
            assert (steps == 0) == (mx * my == 0)
            assert 2 * steps * mx * my <= (1 << 31) - 1


def test_matmul_rows_kernels_agree() -> None:
    rng = np.random.default_rng(3)
    A = rng.integers(-(1 << 30), 1 << 30, (9, 3 * simd.LANES + 1)).astype(np.int32)
    B = rng.integers(-(1 << 20), 1 << 20, (5, 3 * simd.LANES + 1)).astype(np.int32)
    expected = [[sum(int(a) * int(b) for a, b in zip(r, c, strict=True)) for c in B] for r in A]
    for kernel in (None, "limbs", "int32"):
        assert model.matmul_rows(A, B, kernel=kernel).tolist() == expected
    with pytest.raises(ValueError):
        model.matmul_rows(A, B, kernel="float")


@njit
def _cross_compiled(X, Y, rows, start, runs, run_steps, shift, out):  # the intrinsic runs compiled only
    simd.madd_cross3(
        X, Y, rows[0], rows[1], rows[2], rows[3], rows[4], rows[5], start, runs, run_steps, shift, out
    )


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the intrinsic runs compiled only")
def test_the_cross_multiply_add_equals_its_reference_twin() -> None:
    """Lane for lane, with runs that wrap int32 and shifts and sums that wrap int64."""
    rng = np.random.default_rng(13)
    for trial in range(40):
        cols = simd.LANES * int(rng.integers(1, 30)) + int(rng.integers(0, 5))
        pool = np.array([-32768, 32767, -1, 0, 5], dtype=np.int16)
        X = (
            rng.choice(pool, size=(5, cols))
            if trial % 2
            else rng.integers(-32768, 32768, (5, cols)).astype(np.int16)
        )
        Y = rng.integers(-32768, 32768, (4, cols)).astype(np.int16)
        total = cols // simd.LANES
        run_steps = int(rng.integers(1, total + 1))
        runs = total // run_steps
        start = int(rng.integers(0, cols - runs * run_steps * simd.LANES + 1))
        rows = [int(r) for r in rng.integers(0, 4, 6)]
        shift = int(rng.integers(0, 45))
        init = rng.integers(-(1 << 62), 1 << 62, (9, simd.ACC_LANES // 2))
        fast, plain = init.copy(), init.copy()
        _cross_compiled(X, Y, np.array(rows, np.int64), start, runs, run_steps, shift, fast)
        simd.madd_cross3_reference(X, Y, *rows, start, runs, run_steps, shift, plain)
        assert np.array_equal(fast, plain), trial


def test_forward_rejects_what_the_bounds_exclude() -> None:
    arch = (2, 3, 2)
    w = np.zeros(param_count(arch), dtype=np.int32)
    x = np.zeros((1, 2), dtype=np.int16)
    for bad_w in (
        np.full(param_count(arch), CLAMP + 1, dtype=np.int32),
        np.full(param_count(arch), -CLAMP - 1, dtype=np.int32),
        np.zeros(param_count(arch) + 1, dtype=np.int32),
        np.zeros(param_count(arch), dtype=np.int64),
    ):
        with pytest.raises(ValueError):
            predict(bad_w, arch, 0, x)
    for bad_x in (
        np.zeros((1, 3), dtype=np.int16),
        np.zeros((1, 2), dtype=np.int32),
        np.zeros(2, dtype=np.int16),
    ):
        with pytest.raises(ValueError):
            predict(w, arch, 0, bad_x)
    for bad_s in (-1, 25, True, 3.0):
        with pytest.raises(ValueError):
            predict(w, arch, bad_s, x)  # type: ignore[arg-type]
    wide = (model.MAX_FAN_IN + 1, 2)
    with pytest.raises(ValueError):
        predict(np.zeros(param_count(wide), dtype=np.int32), wide, 0, np.zeros((1, wide[0]), dtype=np.int16))
    with pytest.raises(ValueError):
        compute_logits(w, arch, 0, x, sample_block=0)


def test_forward_accepts_wire_buffers() -> None:
    # What the STF passes: read-only little-endian views of state blobs; big-endian is converted.
    arch = (3, 4, 2)
    rng = np.random.default_rng(3)
    w = rng.integers(-5000, 5000, param_count(arch)).astype(np.int32)
    x = rng.integers(-3000, 3000, (6, 3)).astype(np.int16)
    expected = predict_reference(w, arch, 10, x).tolist()
    w_view = np.frombuffer(w.astype("<i4").tobytes(), dtype="<i4")
    x_view = np.frombuffer(x.astype("<i2").tobytes(), dtype="<i2").reshape(-1, 3)
    assert predict(w_view, arch, 10, x_view).tolist() == expected
    assert predict(w.astype(">i4"), arch, 10, x.astype(">i2")).tolist() == expected
    assert predict(w, arch, 10, np.asfortranarray(x)).tolist() == expected
    assert predict(w, arch, 10, x[:0]).shape == (0,)


def test_accuracy_bps() -> None:
    arch = (2, 3)
    # W = [[1, 0], [0, 1], [-1, -1]], b = 0: the logits of x are [x0, x1, -x0 - x1].
    w = np.array([1, 0, 0, 1, -1, -1, 0, 0, 0], dtype=np.int32)
    x = np.array([[5, 1], [1, 5], [-5, -5], [2, 2], [3, 0], [0, 3], [-1, -9]], dtype=np.int16)
    assert predict(w, arch, 4, x).tolist() == [0, 1, 2, 0, 0, 1, 2]
    y = np.array([0, 1, 2, 1, 0, 0, 1], dtype=np.uint8)  # 4 of 7 right
    assert accuracy_bps(w, arch, 4, x, y) == 4 * 10_000 // 7 == 5714
    assert accuracy_bps_reference(w, arch, 4, x, y) == 5714
    with pytest.raises(ValueError):
        accuracy_bps(w, arch, 4, x, y[:3])
    with pytest.raises(ValueError):
        accuracy_bps(w, arch, 4, x[:0], y[:0])
    with pytest.raises(ValueError):
        accuracy_bps(w, arch, 4, x, y.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Aggregation: fast == reference, and the rounding rule written out


delta_values = st.one_of(
    st.integers(I16_MIN, I16_MAX),
    st.sampled_from([I16_MIN, I16_MAX, -1, 0, 1]),
    st.integers(-3, 3),
)
model_values = st.one_of(
    st.integers(-CLAMP, CLAMP),
    st.sampled_from([-CLAMP, -CLAMP + 1, CLAMP - 1, CLAMP, 0]),
    st.integers(-(1 << 31), (1 << 31) - 1),  # aggregation itself also clamps an out-of-range model
)


@st.composite
def aggregate_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    m = draw(st.one_of(st.just(1), st.integers(1, 7)))
    d = draw(st.integers(1, 40))
    w = draw(arrays(np.int32, d, elements=model_values))
    Q = draw(arrays(np.int16, (m, d), elements=delta_values))
    if draw(st.booleans()):
        Q[:] = draw(st.sampled_from([I16_MIN, I16_MAX]))  # all rows at one extreme: pushes past the clamp
    return w, Q


# an aggregation weight: small ones, zeros (rows left out), and the largest allowed
agg_weight = st.one_of(st.integers(0, 3), st.sampled_from([MAX_AGGREGATE_WEIGHT - 1, MAX_AGGREGATE_WEIGHT]))

agg_knobs = st.fixed_dictionaries({}, optional={"parts": st.integers(1, 5), "chunk": st.integers(1, 9)})


@SETTINGS
@given(aggregate_cases(), agg_knobs)
def test_aggregate_matches_reference(case: tuple[np.ndarray, np.ndarray], kw: dict[str, int]) -> None:
    w, Q = case
    w_before, Q_before = w.copy(), Q.copy()
    new = aggregate(w, Q, **kw)
    assert new.dtype == np.int32 and new.shape == w.shape
    assert new.tolist() == aggregate_reference(w, Q).tolist()
    assert np.array_equal(w, w_before) and np.array_equal(Q, Q_before)  # inputs untouched
    assert int(np.abs(new.astype(np.int64)).max()) <= CLAMP


@SETTINGS
@given(aggregate_cases(), agg_knobs, st.data())
def test_aggregate_of_selected_rows_matches_reference(
    case: tuple[np.ndarray, np.ndarray], kw: dict[str, int], data: st.DataObject
) -> None:
    w, Q = case
    rows = data.draw(
        st.permutations(range(Q.shape[0])).flatmap(lambda p: st.integers(1, len(p)).map(lambda n: p[:n]))
    )
    assert aggregate(w, Q, rows=rows, **kw).tolist() == aggregate_reference(w, Q[rows]).tolist()


@SETTINGS
@given(aggregate_cases(), agg_knobs, st.data())
def test_weighted_aggregate_matches_reference(
    case: tuple[np.ndarray, np.ndarray], kw: dict[str, int], data: st.DataObject
) -> None:
    w, Q = case
    weights = data.draw(st.lists(agg_weight, min_size=Q.shape[0], max_size=Q.shape[0]).filter(any))
    new = aggregate(w, Q, weights=weights, **kw)
    assert new.tolist() == aggregate_reference(w, Q, weights).tolist()


DIRECTION_MAX = (1 << 24) - 1  # |v| < 2^DIRECTION_BITS


@SETTINGS
@given(aggregate_cases(), agg_knobs, st.data())
def test_aggregate_and_dots_match_the_references(
    case: tuple[np.ndarray, np.ndarray], kw: dict[str, int], data: st.DataObject
) -> None:
    """The fused pass gives the weighted aggregate and every row's exact dot with ``v``, rows of
    weight 0 included, whatever the parts and chunks."""
    w, Q = case
    v_entry = st.one_of(
        st.integers(-DIRECTION_MAX, DIRECTION_MAX), st.sampled_from([-DIRECTION_MAX, DIRECTION_MAX])
    )
    v = data.draw(arrays(np.int32, Q.shape[1], elements=v_entry))
    weights = data.draw(
        st.none() | st.lists(agg_weight, min_size=Q.shape[0], max_size=Q.shape[0]).filter(any)
    )
    new, dots = aggregate_and_dots(w, Q, v, weights=weights, **kw)
    assert new.tolist() == aggregate_reference(w, Q, weights).tolist()
    assert dots.dtype == np.int64
    assert dots.tolist() == [sum(int(a) * int(b) for a, b in zip(row, v, strict=True)) for row in Q.tolist()]


def test_aggregate_and_dots_exact_at_the_bounds() -> None:
    """Every entry at its extreme: each dot is 2^15 (2^24 - 1) d, past int32 and exact."""
    d = 3 * 4099
    Q = np.full((5, d), I16_MIN, dtype=np.int16)
    v = np.full(d, -DIRECTION_MAX, dtype=np.int32)
    new, dots = aggregate_and_dots(np.zeros(d, dtype=np.int32), Q, v, chunk=4096)
    assert dots.tolist() == [(1 << 15) * DIRECTION_MAX * d] * 5
    assert new.tolist() == [I16_MIN] * d


@pytest.mark.parametrize(
    "v",
    [
        np.full(3, 1 << 24, dtype=np.int32),
        np.full(3, -(1 << 24), dtype=np.int32),
        np.ones(3, dtype=np.int64),
        np.ones(4, dtype=np.int32),
        np.ones((1, 3), dtype=np.int32),
    ],
)
def test_aggregate_and_dots_refuses_a_bad_vector(v: np.ndarray) -> None:
    w, Q = np.zeros(3, dtype=np.int32), np.ones((2, 3), dtype=np.int16)
    with pytest.raises(ValueError):
        aggregate_and_dots(w, Q, v)


@pytest.mark.parametrize("rows", [[], [0, 0], [-1], [2], [0.5]])
def test_aggregate_refuses_bad_rows(rows: list) -> None:
    w, Q = np.zeros(3, dtype=np.int32), np.ones((2, 3), dtype=np.int16)
    with pytest.raises((ValueError, TypeError)):
        aggregate(w, Q, rows=rows)


@pytest.mark.parametrize("fn", [aggregate, aggregate_reference])
def test_aggregate_rounding_written_out(fn: Aggregator) -> None:
    # (sum + m // 2) // m, floor division: a .5 rounds up (towards +inf), also below zero.
    cases = [  # (deltas of one parameter, expected a_p)
        ([1, 0], 1),
        ([-1, 0], 0),
        ([3, 0], 2),
        ([-3, 0], -1),
        ([1, -2], 0),  # m = 2: x.5 -> up
        ([-2, 0, 0], -1),
        ([2, 0, 0], 1),
        ([-1, 0, 0], 0),
        ([1, 0, 0], 0),  # m = 3: floor(-1/3) = -1
        ([-2, 0, 0, 0], 0),
        ([2, 0, 0, 0], 1),
        ([-6, 0, 0, 0], -1),
        ([-7, 0, 0, 0], -2),  # m = 4
        ([5], 5),
        ([-5], -5),
        ([I16_MIN], I16_MIN),
        ([I16_MAX], I16_MAX),  # m = 1: the delta itself
        ([I16_MIN] * 48, I16_MIN),
        ([I16_MIN] * 47 + [I16_MIN + 1], I16_MIN),
    ]
    for deltas, expected in cases:
        Q = np.array(deltas, dtype=np.int16).reshape(-1, 1)
        assert fn(np.array([100], dtype=np.int32), Q).tolist() == [100 + expected], deltas


@pytest.mark.parametrize("fn", [aggregate, aggregate_reference])
def test_aggregate_clamps_both_ends(fn: Aggregator) -> None:
    w = np.array([CLAMP, -CLAMP, CLAMP - 5, -CLAMP + 5, (1 << 31) - 1, -(1 << 31), 0], dtype=np.int32)
    Q = np.array(
        [[I16_MAX, I16_MIN, 10, -10, 0, 0, I16_MIN], [I16_MAX, I16_MIN, 10, -10, 0, 0, I16_MIN]],
        dtype=np.int16,
    )
    assert fn(w, Q).tolist() == [CLAMP, -CLAMP, CLAMP, -CLAMP, CLAMP, -CLAMP, I16_MIN]


def test_aggregate_large_matches_reference_and_numpy() -> None:
    rng = np.random.default_rng(11)
    m, d = 48, 10_007
    w = rng.integers(-CLAMP, CLAMP + 1, d).astype(np.int32)
    Q = rng.integers(I16_MIN, I16_MAX + 1, (m, d)).astype(np.int16)
    new = aggregate(w, Q)
    assert new.tolist() == aggregate_reference(w, Q).tolist()
    # numpy's // on int64 is floor division too: a third, independent route.
    a = (Q.sum(axis=0, dtype=np.int64) + m // 2) // m
    assert np.array_equal(new, np.clip(w + a, -CLAMP, CLAMP))


def test_aggregate_rejects_bad_shapes() -> None:
    w = np.zeros(4, dtype=np.int32)
    for Q in (
        np.zeros((0, 4), dtype=np.int16),
        np.zeros((2, 5), dtype=np.int16),
        np.zeros((2, 4), dtype=np.int32),
        np.zeros(4, dtype=np.int16),
    ):
        with pytest.raises(ValueError):
            aggregate(w, Q)
    with pytest.raises(ValueError):
        aggregate(w.astype(np.int64), np.zeros((1, 4), dtype=np.int16))
    with pytest.raises(ValueError):
        aggregate(w, np.zeros((1, 4), dtype=np.int16), parts=0)


# ---------------------------------------------------------------------------------------------
# Quantization helpers (client side)


def test_quantize_round_trip_and_clipping() -> None:
    s = 16
    v = np.array([0.0, 1.0, -1.0, 0.25, 1.5 / 65536, -2.5 / 65536, 1e9, -1e9, 3.3])
    q = quantize.quantize_weights(v, s)
    assert q.dtype == np.int32
    assert q.tolist() == [0, 65536, -65536, 16384, 2, -2, CLAMP, -CLAMP, round(3.3 * 65536)]
    assert np.all(np.abs(quantize.dequantize(q[:6], s) - v[:6]) <= 2.0 ** -(s + 1))
    x = quantize.quantize_inputs(np.array([0.4999, -0.5, 0.6, -0.6]), s)
    assert x.dtype == np.int16 and x.tolist() == [32761, I16_MIN + 1, I16_MAX, -I16_MAX]
    assert quantize.quantize_delta(np.array([1e-3, -1.0]), s).tolist() == [66, I16_MIN + 1]
    with pytest.raises(ValueError):
        quantize.quantize_weights(np.array([np.nan]), s)


# ---------------------------------------------------------------------------------------------
# An independent float cross-check: a trained float MLP and its quantized integer twin agree


def _train_mlp(
    x: np.ndarray, y: np.ndarray, arch: tuple[int, ...], steps: int, lr: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Minibatch SGD on softmax cross-entropy, float64; layers as (W out x in, b)."""
    rng = np.random.default_rng(seed)
    layers = [
        (rng.normal(0, np.sqrt(2 / n_in), (n_out, n_in)), np.zeros(n_out)) for n_in, n_out in pairwise(arch)
    ]
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        acts = [x[idx]]
        for i, (W, b) in enumerate(layers):
            z = acts[-1] @ W.T + b
            acts.append(np.maximum(z, 0) if i + 1 < len(layers) else z)
        p = np.exp(acts[-1] - acts[-1].max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = p
        g[np.arange(len(idx)), y[idx]] -= 1
        g /= len(idx)
        for i in range(len(layers) - 1, -1, -1):
            W, b = layers[i]
            gW, gb = g.T @ acts[i], g.sum(axis=0)
            if i:
                g = (g @ W) * (acts[i] > 0)
            layers[i] = (W - lr * gW, b - lr * gb)
    return layers


def _float_predict(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    a = x
    for i, (W, b) in enumerate(layers):
        a = a @ W.T + b
        if i + 1 < len(layers):
            a = np.maximum(a, 0)
    return np.argmax(a, axis=1)


def _check_integer_twin(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    arch: tuple[int, ...],
    steps: int,
    lr: float,
) -> None:
    s = 16
    layers = _train_mlp(x_train, y_train, arch, steps, lr, seed=5)
    float_preds = _float_predict(layers, x_test)
    assert np.mean(float_preds == y_test) >= 0.85  # a real model, so agreement is not trivial
    # The flat layout written out independently of layer_slices: per layer W row-major, then b.
    flat = np.concatenate([np.concatenate([W.ravel(), b]) for W, b in layers])
    weights = quantize.quantize_weights(flat, s)
    assert int(np.abs(weights).max()) < CLAMP  # nothing clipped: the comparison is fair
    xq = quantize.quantize_inputs(x_test, s)
    int_preds = predict(weights, arch, s, xq)
    agreement = np.mean(int_preds == float_preds)
    assert agreement >= 0.99, agreement
    y8 = y_test.astype(np.uint8)
    assert accuracy_bps(weights, arch, s, xq, y8) == int(
        np.count_nonzero(int_preds == y_test)
    ) * 10_000 // len(y8)


def test_float_mlp_agrees_with_integer_twin_synthetic() -> None:
    # 10 overlapping Gaussian clusters in 64 dimensions (the float model gets about 90% right, so
    # many samples lie near a decision boundary), inputs inside the int16 range at s = 16 (|x| < 0.5).
    rng = np.random.default_rng(1)
    centers = rng.uniform(-0.25, 0.25, (10, 64))
    y = rng.integers(0, 10, 3000)
    x = np.clip(centers[y] + rng.normal(0, 0.35, (3000, 64)), -0.49, 0.49)
    _check_integer_twin(x[:2000], y[:2000], x[2000:], y[2000:], (64, 32, 10), steps=400, lr=0.5)


def test_float_mlp_agrees_with_integer_twin_digits() -> None:
    from sklearn.datasets import load_digits  # a project dependency (mpsnode.fl's default data)

    digits = load_digits()
    x = digits.data / 32.0 - 0.25  # pixels 0..16 -> [-0.25, 0.25]
    y = digits.target
    order = np.random.default_rng(2).permutation(len(y))
    x, y = x[order], y[order]
    _check_integer_twin(x[:1300], y[:1300], x[1300:], y[1300:], (64, 32, 10), steps=600, lr=0.5)
