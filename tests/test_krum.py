"""Krum scoring: the fast integer kernels equal their plain-Python twins, and the selection rule."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpsnode.consensus import krum, simd
from mpsnode.consensus.krum import (
    distance_matrix,
    distance_matrix_reference,
    gram_matrix,
    gram_matrix_reference,
    krum_scores,
    krum_scores_reference,
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


def test_hand_computed_distances_and_scores() -> None:
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


# ---------------------------------------------------------------------------------------------
# Refusals


def test_too_few_updates_for_f() -> None:
    Q = np.zeros((4, 3), dtype=np.int16)
    with pytest.raises(ValueError, match="2f \\+ 3"):
        krum_scores(distance_matrix(Q), 1)
    with pytest.raises(ValueError, match="2f \\+ 3"):
        krum_scores_reference(distance_matrix(Q), 1)
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
        krum_scores(distance_matrix(Q), -1)
    with pytest.raises(ValueError):
        krum_scores(np.full((5, 5), krum.MAX_DISTANCE, dtype=np.int64), 1)
    with pytest.raises(ValueError):
        krum_scores(np.full((5, 5), -1, dtype=np.int64), 1)
    with pytest.raises(ValueError):
        krum_scores(np.zeros((5, 5), dtype=np.int32), 1)
    with pytest.raises(ValueError):
        gram_matrix(Q, block_cols=0)


@numba.njit
def _madd_compiled(Q, rows, start, steps, out):  # the intrinsic runs compiled only
    simd.madd_tile3(Q, rows[0], rows[1], rows[2], rows[3], rows[4], rows[5], start, steps, out)


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the intrinsic runs compiled only")
@pytest.mark.parametrize("values", ["small", "extreme"])
def test_the_simd_multiply_add_equals_its_reference_twin(values: str) -> None:
    """The LLVM vector kernel and numpy agree lane for lane, also where int32 pair sums wrap
    (-32768 * -32768 twice is 2^31): two's-complement arithmetic is defined bit for bit."""
    rng = np.random.default_rng(11)
    cols = simd.LANES * 40 + 5
    if values == "extreme":
        Q = rng.choice(np.array([-32768, 32767, -32767, 0], dtype=np.int16), size=(7, cols))
        Q[2, : simd.LANES] = -32768
        Q[4, : simd.LANES] = -32768
    else:
        Q = rng.integers(-2000, 2001, size=(7, cols), dtype=np.int16)
    for rows, start, steps in (
        ((0, 1, 2, 3, 4, 5), 0, 40),
        ((2, 2, 4, 4, 6, 2), 3, 17),
        ((6, 5, 4, 3, 2, 1), 64, 1),
    ):
        fast = np.zeros((9, simd.ACC_LANES), np.int32)
        plain = np.zeros((9, simd.ACC_LANES), np.int32)
        _madd_compiled(Q, np.array(rows, np.int64), start, steps, fast)
        simd.madd_tile3_reference(Q, *rows, start, steps, plain)
        assert np.array_equal(fast, plain)


def test_block_cols_for() -> None:
    """256-bit lanes keep one block width; 512-bit lanes fit k int16 rows in BLOCK_BYTES_WIDE."""
    assert all(krum.block_cols_for(k, lanes=16) == krum.GRAM_BLOCK_COLS for k in (1, 100, 256))
    widths = {k: krum.block_cols_for(k, lanes=32) for k in (1, 50, 100, 256, 257, 4096)}
    assert widths == {1: 16384, 50: 8192, 100: 4096, 256: 2048, 257: 1024, 4096: 1024}
    for k, cols in widths.items():
        assert cols & (cols - 1) == 0 and (k * cols * 2 <= krum.BLOCK_BYTES_WIDE or cols == 1024)
    rng = np.random.default_rng(7)
    Q = rng.integers(-2000, 2001, size=(krum.MAX_UPDATES, 5000), dtype=np.int16)
    Q64 = Q.astype(np.int64)
    assert np.array_equal(gram_matrix(Q), Q64 @ Q64.T)  # the default block for the most rows, exact
