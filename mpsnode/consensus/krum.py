"""Krum and Multi-Krum scoring of a round's quantized updates, exact in integers.

A round's ``k`` updates are the rows of an int16 matrix ``Q`` (``k x d``). Krum needs every squared
distance ``D[i][j] = sum_p (Q[i,p] - Q[j,p])^2``; they come from the Gram matrix ``G = Q Q^T`` as
``D[i][j] = G[i][i] + G[j][j] - 2 G[i][j]``, and ``G`` is kept public because the round rule reads it
too (cosines, mixed sums). A client's score ``s_i`` is the sum of its ``k - f - 2`` smallest
distances to the others (docs/PROTOCOL.md, section 7).

This is consensus code: every node must produce the same integers, whatever its CPU, thread count
or BLAS. So nothing here touches a float. The bounds that make every step exact, with ``|q| <= 2^15``,
``d <= MAX_PARAMS = 2^22`` and ``k <= MAX_UPDATES = 256`` (both enforced at CREATE_TASK):

* a product ``q_i q_j`` has magnitude at most ``2^30``: it fits an int32 (``2^30 < 2^31 - 1``);
* an entry of ``G`` is a sum of ``d`` products, so it and every partial sum of it, taken in any
  order, has magnitude at most ``2^22 * 2^30 = 2^52``; int64 never overflows, and integer addition
  without overflow is associative and commutative. The vectorizer's lane-wise reduction and the
  split of the columns across threads only change the order in which exact integers are added, so
  they cannot change a result;
* ``D[i][j] <= 2^22 * 65535^2 < 2^54`` and ``G[i][i] + G[j][j] <= 2^53``, so computing ``D`` from
  ``G`` stays far inside int64;
* a score sums at most ``k - 2 = 254`` distances: ``s_i < 2^8 * 2^54 = 2^62``. ``100 * s_i`` may pass
  ``2^63``, so the flag rule runs on Python ints.

The fast Gram kernel (``gram_matrix``) walks the columns in blocks and the rows in 3 x 3 tiles. Within
a block it reads each row's largest ``|q|``; for a tile whose rows have maxima ``mx`` and ``my`` every
product is bounded by ``mx * my``. The int32 kernel (``mpsnode.consensus.simd.madd_tile3``, LLVM
vector IR: int16 loads, products added in adjacent pairs into int32 lanes, ``vpdpwssd`` or
``vpmaddwd`` on x86) gives each lane two products a step, so a run of ``s`` steps with
``2 * s * mx * my <= 2^31 - 1`` sums exactly in int32 lanes, which are then added in int64. Updates
of the usual magnitude (``|q| <= 2000``: 268 steps, 8,576 columns) run whole blocks at full SIMD
width; a tile whose bound would allow no whole step (one extreme row is enough) falls back to the
int64 kernel, which is exact for every int16 input. The choice changes the speed only, never a
result. A float64 BLAS product of column blocks (exact while every partial sum is an integer below
2^53) was measured too and is slower than either integer kernel (bench/krum.py), so floats are not
used at all.

The round rule built on these (flags, mixing, selection) is ``mpsnode.consensus.robust``.

Each fast function has a ``*_reference`` twin in plain Python ints; tests hold them equal.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from mpsnode.consensus.limits import MAX_DISTANCE, MAX_PARAMS, MAX_UPDATES
from mpsnode.consensus.simd import ACC_LANES, LANES, madd_tile3

# MAX_UPDATES, MAX_PARAMS: CREATE_TASK's limits (limits.py). D < 2^22 * 65535^2 < MAX_DISTANCE = 2^54;
# krum_scores refuses anything larger so its sums stay below 2^62.

# Columns per cache block (``block_cols_for``); the choice changes the speed only, never a result.
# With 256-bit lanes (AVX2) a block is GRAM_BLOCK_COLS wide: at k=256 it takes 8 MiB, which stays in
# L3 for all its tiles, and the tile's rows are read in runs of at most one int32 chunk, so each
# run's six rows fit L1/L2. Measured on Zen 3, interleaved in one process: 16,384 took 4-7 % less
# time than 4,096 at k = 50, 100 and 256 in one sweep and 1-5 % less at k=100 in two later ones.
# With 512-bit lanes (AVX-512) the kernel computes twice as fast and waits on memory instead, so a
# block is cut to about BLOCK_BYTES_WIDE (k rows of int16, a power of two of columns) to stay in L2:
# on a 2-core Xeon with 2 MiB of L2 a core, 2,048-4,096 columns took 46-49 ms at k=100 against 59 ms
# at 16,384, and 264 ms at k=256 against 413 ms (README).
GRAM_BLOCK_COLS = 16384
BLOCK_BYTES_WIDE = 1 << 20
_BLOCK_COLS_MIN = 1024
INT32_CHUNK_MAX = 1 << 16
INT32_CHUNK_MIN = 64  # columns: below this the int32 kernel's per-run overhead makes int64 the faster one

_INT32_MAX = (1 << 31) - 1
_TILE = 3  # 3 x 3 output tiles: 9 accumulators plus 6 row loads fit the 16 AVX2 registers
_INT64_SENTINEL = np.iinfo(np.int64).max


# ---------------------------------------------------------------------------------------------
# Validation


def validate_updates(Q: np.ndarray) -> np.ndarray:
    """Check ``Q`` against the limits the exactness bounds assume; return it C-contiguous, native int16.

    A C-contiguous native-endian int16 array is returned as is; anything else is copied once.
    """
    if not isinstance(Q, np.ndarray) or Q.ndim != 2:
        raise ValueError("updates must be a 2-D numpy array (k x d)")
    if Q.dtype.kind != "i" or Q.dtype.itemsize != 2:
        raise ValueError(f"updates must be int16, got {Q.dtype}")
    k, d = Q.shape
    if k > MAX_UPDATES:
        raise ValueError(f"{k} updates exceeds the limit of {MAX_UPDATES}")
    if d > MAX_PARAMS:
        raise ValueError(f"{d} parameters exceeds the limit of {MAX_PARAMS}")
    return np.ascontiguousarray(Q, dtype=np.int16)


def _validate_f(k: int, f: int) -> None:
    if type(f) is not int or f < 0:
        raise ValueError(f"byzantine f must be a non-negative int, got {f!r}")
    if k < 2 * f + 3:
        raise ValueError(f"Krum needs k >= 2f + 3 updates: k={k}, f={f}")


# ---------------------------------------------------------------------------------------------
# numba kernels. No fastmath, no allocation (buffers come from numpy so tracemalloc sees them).
# numba ignores the annotations; they are for readers and mypy.


@njit(cache=True, boundscheck=False, nogil=True)
def _tile_int64(Q: np.ndarray, i0: int, j0: int, c0: int, c1: int, G: np.ndarray) -> None:
    """G[i0:i0+3, j0:j0+3] += Q[i, c0:c1] . Q[j, c0:c1] in int64; exact for every int16 input."""
    last = Q.shape[0] - 1
    # Padding rows past the end reuse the last row; their results land in G's padding and are dropped.
    x0 = Q[min(i0, last)][c0:c1]
    x1 = Q[min(i0 + 1, last)][c0:c1]
    x2 = Q[min(i0 + 2, last)][c0:c1]
    y0 = Q[min(j0, last)][c0:c1]
    y1 = Q[min(j0 + 1, last)][c0:c1]
    y2 = Q[min(j0 + 2, last)][c0:c1]
    t00 = t01 = t02 = t10 = t11 = t12 = t20 = t21 = t22 = np.int64(0)
    # Slices indexed from 0 let LLVM prove the index non-negative and drop numba's wraparound
    # check, which otherwise blocks vectorization.
    for p in range(c1 - c0):
        a0 = np.int64(x0[p])
        a1 = np.int64(x1[p])
        a2 = np.int64(x2[p])
        b0 = np.int64(y0[p])
        b1 = np.int64(y1[p])
        b2 = np.int64(y2[p])
        t00 += a0 * b0
        t01 += a0 * b1
        t02 += a0 * b2
        t10 += a1 * b0
        t11 += a1 * b1
        t12 += a1 * b2
        t20 += a2 * b0
        t21 += a2 * b1
        t22 += a2 * b2
    G[i0, j0] += t00
    G[i0, j0 + 1] += t01
    G[i0, j0 + 2] += t02
    G[i0 + 1, j0] += t10
    G[i0 + 1, j0 + 1] += t11
    G[i0 + 1, j0 + 2] += t12
    G[i0 + 2, j0] += t20
    G[i0 + 2, j0 + 1] += t21
    G[i0 + 2, j0 + 2] += t22


@njit(cache=True, boundscheck=False, nogil=True)
def _tile_int32(
    Q: np.ndarray, i0: int, j0: int, c0: int, c1: int, chunk: int, G: np.ndarray, lanes: np.ndarray
) -> None:
    """As ``_tile_int64``, through ``simd.madd_tile3``: runs of ``chunk`` columns (a multiple of
    ``LANES``) summed in int32 lanes, each run's lanes then added in int64; the columns past the
    last whole step in int64.

    The caller guarantees ``2 * (chunk // LANES) * max|x| * max|y| <= 2^31 - 1`` over this tile's rows
    and columns, so every lane's sum fits an int32 (``simd``). ``lanes``: scratch ``(9, ACC_LANES)`` int32.
    """
    last = Q.shape[0] - 1
    x0, x1, x2 = min(i0, last), min(i0 + 1, last), min(i0 + 2, last)
    y0, y1, y2 = min(j0, last), min(j0 + 1, last), min(j0 + 2, last)
    for s in range(c0, c1, chunk):
        e = min(s + chunk, c1)
        steps = (e - s) // LANES
        if steps > 0:
            madd_tile3(Q, x0, x1, x2, y0, y1, y2, s, steps, lanes)
            # straight into G: a scratch array here was one heap allocation per tile and block
            for a in range(9):
                total = np.int64(0)
                for lane in range(ACC_LANES):
                    total += np.int64(lanes[a, lane])
                G[i0 + a // 3, j0 + a % 3] += total
        if s + steps * LANES < e:  # the columns past the last whole step
            _tile_int64(Q, i0, j0, s + steps * LANES, e, G)


@njit(cache=True, boundscheck=False, nogil=True)
def _row_abs_max(Q: np.ndarray, c0: int, c1: int, out: np.ndarray) -> None:
    for r in range(Q.shape[0]):
        x = Q[r][c0:c1]
        hi = np.int16(0)
        lo = np.int16(0)
        for p in range(c1 - c0):  # in int16 lanes (max and min vectorize; abs would widen first)
            v = x[p]
            hi = v if v > hi else hi
            lo = v if v < lo else lo
        out[r] = max(np.int64(hi), -np.int64(lo))  # int64 so that |-32768| is representable


@njit(cache=True, boundscheck=False, parallel=True)
def _gram_parts(
    Q: np.ndarray, block_cols: int, chunk_max: int, chunk_min: int, partials: np.ndarray, rowmax: np.ndarray
) -> None:
    """Upper 3x3-tile triangle of Q Q^T, one partial per contiguous column range.

    Each prange iteration owns one column range, one partial and one rowmax row, so no two threads
    write the same memory; the partials are summed afterwards in a fixed order.
    """
    k, d = Q.shape
    parts = partials.shape[0]
    kp = partials.shape[1]
    for t in prange(parts):
        lo = d * t // parts
        hi = d * (t + 1) // parts
        G = partials[t]
        mx = rowmax[t]
        lanes = np.empty((9, ACC_LANES), np.int32)
        for c0 in range(lo, hi, block_cols):
            c1 = min(c0 + block_cols, hi)
            _row_abs_max(Q, c0, c1, mx)
            for i0 in range(0, kp, _TILE):
                bi = max(mx[min(i0, k - 1)], max(mx[min(i0 + 1, k - 1)], mx[min(i0 + 2, k - 1)]))
                for j0 in range(i0, kp, _TILE):
                    bj = max(mx[min(j0, k - 1)], max(mx[min(j0 + 1, k - 1)], mx[min(j0 + 2, k - 1)]))
                    bound = bi * bj  # <= 2^30
                    # whole steps of LANES columns, each lane taking 2 products a step
                    steps = (
                        chunk_max // LANES
                        if bound == 0
                        else min(chunk_max // LANES, _INT32_MAX // (2 * bound))
                    )
                    chunk = steps * LANES
                    if steps > 0 and chunk >= chunk_min:
                        _tile_int32(Q, i0, j0, c0, c1, chunk, G, lanes)
                    else:
                        _tile_int64(Q, i0, j0, c0, c1, G)


# ---------------------------------------------------------------------------------------------
# Fast path


def block_cols_for(k: int, lanes: int = LANES) -> int:
    """The column block ``gram_matrix`` uses for ``k`` rows with ``lanes`` int16 lanes (see
    GRAM_BLOCK_COLS): GRAM_BLOCK_COLS for 256-bit lanes; for 512-bit ones the largest power of two
    of columns whose ``k`` int16 rows fit BLOCK_BYTES_WIDE, between 1,024 and GRAM_BLOCK_COLS."""
    if lanes < 32 or k < 1:
        return GRAM_BLOCK_COLS
    cols = _BLOCK_COLS_MIN
    while cols * 2 <= GRAM_BLOCK_COLS and 2 * k * cols * 2 <= BLOCK_BYTES_WIDE:
        cols *= 2
    return cols


def gram_matrix(
    Q: np.ndarray,
    *,
    block_cols: int | None = None,
    int32_chunk_max: int = INT32_CHUNK_MAX,
    int32_chunk_min: int = INT32_CHUNK_MIN,
    parts: int | None = None,
) -> np.ndarray:
    """Exact int64 ``G = Q Q^T`` of an int16 ``k x d`` matrix.

    The keyword arguments tune speed and never change the result (tests use them to force several
    column blocks, tiny int32 runs, the int64 kernel alone, or a given column split):
    ``block_cols`` columns per cache block (default ``block_cols_for(k)``); int32 runs of at most
    ``int32_chunk_max`` columns, and the int64 kernel wherever the overflow bound allows fewer than
    ``int32_chunk_min`` (so ``int32_chunk_min > int32_chunk_max`` means int64 everywhere); ``parts``
    contiguous column ranges computed in parallel, by default numba's thread count.

    Working memory beyond the input and the result is ``parts * k^2`` int64 (1 MiB at k=256, 2
    threads); a non-contiguous or non-native ``Q`` is copied once first.
    """
    Q = validate_updates(Q)
    if block_cols is None:
        block_cols = block_cols_for(Q.shape[0])
    for name, v in (
        ("block_cols", block_cols),
        ("int32_chunk_max", int32_chunk_max),
        ("int32_chunk_min", int32_chunk_min),
    ):
        if type(v) is not int or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    k, d = Q.shape
    if k == 0 or d == 0:
        return np.zeros((k, k), dtype=np.int64)
    n_parts = numba.get_num_threads() if parts is None else parts
    if type(n_parts) is not int or n_parts < 1:
        raise ValueError(f"parts must be a positive int, got {parts!r}")
    n_parts = min(n_parts, d)
    kp = -(-k // _TILE) * _TILE
    partials = np.zeros((n_parts, kp, kp), dtype=np.int64)
    rowmax = np.zeros((n_parts, k), dtype=np.int64)
    _gram_parts(Q, block_cols, int32_chunk_max, int32_chunk_min, partials, rowmax)
    # Fixed order, and exact in any order: each entry of every partial is bounded by 2^52 in total.
    upper = partials[0]
    for t in range(1, n_parts):
        upper += partials[t]
    upper = upper[:k, :k]
    # Only tiles with i0 <= j0 were computed: the upper triangle is complete, mirror it.
    G = np.triu(upper)
    G += np.triu(upper, 1).T
    return G


def distance_matrix_from_gram(G: np.ndarray) -> np.ndarray:
    """``D[i][j] = G[i][i] + G[j][j] - 2 G[i][j]`` in int64 (all terms below 2^54, see module doc)."""
    if G.ndim != 2 or G.shape[0] != G.shape[1] or G.dtype != np.int64:
        raise ValueError("G must be a square int64 matrix")
    g = np.diagonal(G)
    D = g[:, None] + g[None, :]
    D -= 2 * G
    np.fill_diagonal(D, 0)  # already 0 for a true Gram matrix; stated so D's contract never depends on G
    return D


def distance_matrix(Q: np.ndarray) -> np.ndarray:
    """Exact int64 ``D[i][j] = sum_p (Q[i,p] - Q[j,p])^2``: symmetric, zero diagonal."""
    return distance_matrix_from_gram(gram_matrix(Q))


def _validate_distances(D: np.ndarray) -> None:
    if not isinstance(D, np.ndarray) or D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError("D must be a square 2-D numpy array")
    if D.dtype != np.int64:
        raise ValueError(f"D must be int64, got {D.dtype}")
    if D.shape[0] > MAX_UPDATES:
        raise ValueError(f"{D.shape[0]} updates exceeds the limit of {MAX_UPDATES}")
    if D.size and (int(D.min()) < 0 or int(D.max()) >= MAX_DISTANCE):
        # Squared distances of int16 vectors of <= 2^22 entries; anything else would risk overflow.
        raise ValueError("distances must lie in 0..2^54-1")


def krum_scores(D: np.ndarray, f: int) -> np.ndarray:
    """int64 ``s_i`` = sum of the ``k - f - 2`` smallest ``D[i][j]``, ``j != i``; needs ``k >= 2f + 3``."""
    _validate_distances(D)
    k = D.shape[0]
    _validate_f(k, f)
    m = k - f - 2
    # The sentinel sorts last and m <= k - 2 < k - 1, so the diagonal is never among the m smallest.
    E = D.copy()
    np.fill_diagonal(E, _INT64_SENTINEL)
    E.sort(axis=1)
    return E[:, :m].sum(axis=1, dtype=np.int64)  # < 254 * 2^54 < 2^62


# ---------------------------------------------------------------------------------------------
# Reference twins: plain Python ints, obviously correct, slow.


def _rows(Q: np.ndarray) -> list[list[int]]:
    Q = validate_updates(Q)
    return [[int(v) for v in row] for row in Q]


def gram_matrix_reference(Q: np.ndarray) -> np.ndarray:
    """Reference twin of ``gram_matrix``: ``G[i][j] = sum(q_i * q_j)`` in Python ints."""
    rows = _rows(Q)
    k = len(rows)
    G = [[sum(a * b for a, b in zip(rows[i], rows[j], strict=True)) for j in range(k)] for i in range(k)]
    return np.array(G, dtype=np.int64).reshape(k, k)


def distance_matrix_reference(Q: np.ndarray) -> np.ndarray:
    """Reference twin of ``distance_matrix``: ``D[i][j] = sum((q_i - q_j)^2)`` in Python ints."""
    rows = _rows(Q)
    k = len(rows)
    D = [
        [sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True)) for j in range(k)] for i in range(k)
    ]
    return np.array(D, dtype=np.int64).reshape(k, k)


def krum_scores_reference(D: np.ndarray, f: int) -> np.ndarray:
    """Reference twin of ``krum_scores``: each row's sum of its ``k - f - 2`` smallest off-diagonal
    distances."""
    _validate_distances(D)
    k = D.shape[0]
    _validate_f(k, f)
    rows = [[int(v) for v in row] for row in D]
    scores = [sum(sorted(rows[i][j] for j in range(k) if j != i)[: k - f - 2]) for i in range(k)]
    return np.array(scores, dtype=np.int64)
