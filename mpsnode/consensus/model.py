"""The integer model: a fully connected ReLU network evaluated exactly in integers, and aggregation.

``arch = [in, h1, ..., out]`` gives the layer widths. The parameters are one flat int32 vector,
layer by layer: the layer's weights row-major (``out x in``), then its ``out`` biases. Weights are in
units of ``2^-s`` (``s = scale_bits``, 0..24) and stay within the model clamp ``+-(2^24 - 1)``.
Validation inputs are int16 (``samples x in``) at the same scale; labels are uint8 (docs/PROTOCOL.md,
"Transactions" and "Closing a round").

This is consensus code: every node must produce the same integers, whatever its CPU, thread count
or BLAS, so nothing here touches a float (the quantization helpers at the end are client-side tools,
not consensus). The forward pass, for a layer with weights ``W``, biases ``b`` and input ``a``:

    z = W a + (b << s)                                  (int64)
    a_next = clamp(z >> s, 0, 2^24 - 1)                 (hidden layers; >> is a floor shift)
    prediction = argmax of the last z, lowest index on ties

``a_0`` is the int16 input itself: ``W a_0`` is at scale ``2^-2s``, so ``b << s`` brings the bias to
that scale and ``>> s`` brings the result back to ``2^-s``; the output is compared at ``2^-2s``.

Why int64 never overflows (the limits are enforced at CREATE_TASK and checked again here):

* ``|W[o][j]| <= 2^24 - 1`` (the clamp); ``|a_0[j]| <= 2^15`` (int16) and hidden activations lie in
  ``0..2^24 - 1``, so ``|a[j]| <= 2^24 - 1`` in every layer;
* a product has ``|W[o][j] a[j]| <= (2^24 - 1)^2 < 2^48``, and a layer's fan-in is at most
  ``MAX_FAN_IN = 2^14``, so the sum of the products' magnitudes is below ``2^14 * 2^48 = 2^62``;
* the bias term has ``|b << s| <= (2^24 - 1) * 2^24 < 2^48``;
* so every partial sum, taken in any order and with or without the bias, has magnitude below
  ``2^62 + 2^48 < 2^63``. Integer addition without overflow is associative and commutative: the
  tiling, the vectorizer's lane-wise sums and the split across threads only change the order in which
  exact integers are added, never a result.

Aggregation adds the rounded mean of the selected int16 deltas: ``a_p = (sum_r q_rp + m // 2) // m``
(floor division, as Python's ``//``, also for negative sums) and ``w_p = clamp(w_p + a_p,
-(2^24 - 1), 2^24 - 1)``. ``|sum_r q_rp| <= m * 2^15``, far inside int64 for any feasible ``m``.

The fast kernels (numba, integer only, no fastmath) sit beside ``*_reference`` twins in plain Python
ints; tests hold them equal. The layer kernel computes ``Z = A W^T`` (samples x outputs) in 3 x 3
tiles of dot products along the fan-in, both operands int32 rows read contiguously; a product of two
sign-extended int32 values compiles to AVX2's ``vpmuldq`` (four exact 32 x 32 -> 64-bit products per
instruction). Tiles are grouped into blocks of samples and of outputs that stay in the L2 cache, and
the blocks run in parallel.

A layer large enough to matter (``LIMB_MIN_PRODUCTS``) usually goes through the limb kernel instead:
each operand is split into int16 limbs, ``x = sum_l x_l 2^(b l)`` with ``b``-bit lower limbs in
``0..2^b - 1`` and a signed top limb (or kept whole where it fits int16), and each pair of limbs is
multiplied with ``simd.madd_cross3`` (``vpdpwssd`` / ``vpmaddwd``: 16 or 32 int16 products per
instruction) in int32 runs short enough that no run can overflow (``2 * steps * max|x_l| * max|w_m|
<= 2^31 - 1``), each run then added in int64 shifted by ``b_x l + b_w m``. The split is chosen per
layer from the operands' least and greatest entries, by a cost estimate (``_plan``: one unit per
pair of limbs plus ``LIMB_FLUSH_COST`` per int32 run a step); where the estimate exceeds
``LIMB_COST_MAX`` the int32 kernel runs. Either way the result is the same exact integers: the
limbs add back up to the operands, every run is exact, and the int64 sums wrap modulo 2^64 at
worst, which gives back the true value because the true value fits an int64 (the bound above).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numba
import numpy as np
from numba import njit, prange

from mpsnode.consensus.arch import layer_slices, param_count, validate_arch
from mpsnode.consensus.limits import DIRECTION_BITS, MAX_FAN_IN, MAX_SCALE_BITS, MODEL_CLAMP
from mpsnode.consensus.simd import ACC_LANES, LANES, madd_cross3

WEIGHT_CLAMP = MODEL_CLAMP  # |w| <= WEIGHT_CLAMP for every model parameter (limits.py)
ACTIVATION_MAX = MODEL_CLAMP  # hidden activations lie in 0..ACTIVATION_MAX

# Block sizes of the layer kernel (speed only): a block of W's rows and a block of A's rows, each
# sized to about half the 1 MiB L2 of the target machine, so that a block pair stays cached while its
# tiles are computed.
W_BLOCK_BYTES = 512 << 10
A_BLOCK_BYTES = 256 << 10
MAX_AGGREGATE_WEIGHT = 1 << 16  # per row; 256 rows keep W < 2^24 and every sum below 2^48
# columns per accumulator run of the aggregation kernel (2 MiB of int64 a thread): on the 2-core Zen 4
# EPYC long runs beat L1-sized ones (k = 50, d = 10^6: 5.3 ms at 2^18 columns, 6.7 ms at 2^12), the
# rows' reads staying sequential for longer while the accumulator sits in L2 and L3
AGGREGATE_CHUNK = 1 << 18

_TILE = 3  # 3 x 3 output tiles: 9 accumulators plus 6 row loads fit the 16 AVX2 registers
_INT32_MAX = (1 << 31) - 1
# The limb kernel (speed only, module doc): the lower-limb widths tried (0: the operand whole), the
# cost of one int32 run's flush into int64 relative to one multiply-add step, the largest estimated
# cost (in int16 passes) at which it is used (on a 2-core AVX-512 Zen 4 it broke even with the int32
# kernel near 4 and took half its time at 2; not measured on an AVX2 host), and the smallest layer
# (samples x in x out products) worth splitting (below it the split costs more than it saves).
LIMB_WIDTHS = (0, 4, 6, 8, 10, 12, 14, 15)
LIMB_FLUSH_COST = 2.0
LIMB_COST_MAX = 3.0
LIMB_MIN_PRODUCTS = 1 << 24


# ---------------------------------------------------------------------------------------------
# Validation: the limits the overflow bounds assume


def _validate_forward_arch(arch: Sequence[int]) -> tuple[int, ...]:
    widths = validate_arch(arch)
    if any(w > MAX_FAN_IN for w in widths[:-1]):
        raise ValueError(f"layer fan-in must be <= {MAX_FAN_IN}, got {widths}")
    return widths


def validate_scale_bits(scale_bits: int) -> int:
    """``scale_bits`` if it is an int in ``0..MAX_SCALE_BITS``; else ``ValueError``."""
    if type(scale_bits) is not int or not 0 <= scale_bits <= MAX_SCALE_BITS:
        raise ValueError(f"scale_bits must be an int in 0..{MAX_SCALE_BITS}, got {scale_bits!r}")
    return scale_bits


def _as_vector(a: np.ndarray, name: str, itemsize: int) -> np.ndarray:
    """A 1-D signed-int array of the given width, returned C-contiguous and native-endian."""
    if not isinstance(a, np.ndarray) or a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D numpy array")
    if a.dtype.kind != "i" or a.dtype.itemsize != itemsize:
        raise ValueError(f"{name} must be int{8 * itemsize}, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.dtype(f"i{itemsize}"))


def validate_weights(weights: np.ndarray, arch: Sequence[int]) -> np.ndarray:
    """``weights`` as a native int32 vector of ``param_count(arch)`` entries within the clamp."""
    w = _as_vector(weights, "weights", 4)
    d = param_count(arch)
    if w.shape[0] != d:
        raise ValueError(f"{w.shape[0]} weights for an arch of {d} parameters")
    if d and (int(w.min()) < -WEIGHT_CLAMP or int(w.max()) > WEIGHT_CLAMP):
        raise ValueError(f"weights must lie within +-{WEIGHT_CLAMP}")
    return w


def validate_inputs(x: np.ndarray, arch: Sequence[int]) -> np.ndarray:
    """``x`` as a native C-contiguous int16 ``samples x arch[0]`` matrix."""
    widths = validate_arch(arch)
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("inputs must be a 2-D numpy array (samples x in)")
    if x.dtype.kind != "i" or x.dtype.itemsize != 2:
        raise ValueError(f"inputs must be int16, got {x.dtype}")
    if x.shape[1] != widths[0]:
        raise ValueError(f"inputs have {x.shape[1]} columns, the arch expects {widths[0]}")
    return np.ascontiguousarray(x, dtype=np.int16)


def validate_deltas(model: np.ndarray, selected_deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model as int32 and the selected deltas as a ``m x d`` int16 matrix; ``ValueError`` for other
    shapes or types."""
    w = _as_vector(model, "model", 4)
    Q = selected_deltas
    if not isinstance(Q, np.ndarray) or Q.ndim != 2:
        raise ValueError("deltas must be a 2-D numpy array (m x d)")
    if Q.dtype.kind != "i" or Q.dtype.itemsize != 2:
        raise ValueError(f"deltas must be int16, got {Q.dtype}")
    if Q.shape[0] < 1:
        raise ValueError("aggregation needs at least one selected delta")
    if Q.shape[1] != w.shape[0]:
        raise ValueError(f"deltas have {Q.shape[1]} columns, the model has {w.shape[0]} parameters")
    return w, np.ascontiguousarray(Q, dtype=np.int16)


# ---------------------------------------------------------------------------------------------
# numba kernels. Integers only, no fastmath, no allocation (buffers come from numpy).
# numba's ``>>`` on int64 is an arithmetic (floor) shift and its ``//`` on ints is Python's floor
# division; tests check both. numba ignores the annotations; they are for readers and mypy.


@njit(cache=True, boundscheck=False, nogil=True)
def _tile(A: np.ndarray, W: np.ndarray, b: np.ndarray, shift: int, i0: int, o0: int, Z: np.ndarray) -> None:
    """``Z[i, o] = A[i] . W[o] + (b[o] << shift)`` for the 3 x 3 tile at ``(i0, o0)``, in int64.

    Rows past the end reuse the last row; their results are computed and dropped.
    """
    n = A.shape[0]
    n_out = W.shape[0]
    fan_in = A.shape[1]
    x0 = A[min(i0, n - 1)]
    x1 = A[min(i0 + 1, n - 1)]
    x2 = A[min(i0 + 2, n - 1)]
    y0 = W[min(o0, n_out - 1)]
    y1 = W[min(o0 + 1, n_out - 1)]
    y2 = W[min(o0 + 2, n_out - 1)]
    t00 = t01 = t02 = t10 = t11 = t12 = t20 = t21 = t22 = np.int64(0)
    for p in range(fan_in):
        # int32 operands widened to int64: LLVM emits vpmuldq (exact 32 x 32 -> 64-bit products).
        a0 = np.int64(x0[p])
        a1 = np.int64(x1[p])
        a2 = np.int64(x2[p])
        w0 = np.int64(y0[p])
        w1 = np.int64(y1[p])
        w2 = np.int64(y2[p])
        t00 += a0 * w0
        t01 += a0 * w1
        t02 += a0 * w2
        t10 += a1 * w0
        t11 += a1 * w1
        t12 += a1 * w2
        t20 += a2 * w0
        t21 += a2 * w1
        t22 += a2 * w2
    for di in range(_TILE):
        i = i0 + di
        if i >= n:
            break
        for dj in range(_TILE):
            o = o0 + dj
            if o >= n_out:
                break
            if di == 0:
                t = t00 if dj == 0 else (t01 if dj == 1 else t02)
            elif di == 1:
                t = t10 if dj == 0 else (t11 if dj == 1 else t12)
            else:
                t = t20 if dj == 0 else (t21 if dj == 1 else t22)
            Z[i, o] = t + (np.int64(b[o]) << shift)


@njit(cache=True, boundscheck=False, parallel=True)
def _dense(
    A: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    shift: int,
    sample_block: int,
    output_block: int,
    Z: np.ndarray,
) -> None:
    """``Z = A W^T + (b << shift)``: ``A`` is int32 ``n x in``, ``W`` int32 ``out x in``, ``Z`` int64.

    Each prange iteration owns one (sample block, output block) pair and writes only its own part
    of ``Z``, so no two threads touch the same memory.
    """
    n = A.shape[0]
    n_out = W.shape[0]
    n_sb = (n + sample_block - 1) // sample_block
    n_ob = (n_out + output_block - 1) // output_block
    for job in prange(n_sb * n_ob):
        i_lo = (job // n_ob) * sample_block
        o_lo = (job % n_ob) * output_block
        i_hi = min(n, i_lo + sample_block)
        o_hi = min(n_out, o_lo + output_block)
        for i0 in range(i_lo, i_hi, _TILE):
            for o0 in range(o_lo, o_hi, _TILE):
                _tile(A, W, b, shift, i0, o0, Z)


@njit(cache=True, boundscheck=False, nogil=True)
def _shift_relu(Z: np.ndarray, shift: int, A: np.ndarray) -> None:
    """``A = clamp(Z >> shift, 0, 2^24 - 1)`` as int32 (``>>`` is arithmetic: floor for negatives)."""
    n, n_out = Z.shape
    for i in range(n):
        for o in range(n_out):
            A[i, o] = min(max(Z[i, o] >> shift, 0), ACTIVATION_MAX)


@njit(cache=True, boundscheck=False, parallel=True)
def _aggregate(
    w: np.ndarray,
    Q: np.ndarray,
    rows: np.ndarray,
    mult: np.ndarray,
    chunk: int,
    acc: np.ndarray,
    out: np.ndarray,
    v: np.ndarray,
    dots: np.ndarray,
) -> None:
    """``out = clamp(w + (sum_r mult[r] Q[rows[r]] + W // 2) // W)``, ``W = sum(mult)``, with Python
    floor division, column chunk by chunk; with ``v`` (int32, one per column; empty: none), also
    ``dots[t, r] = sum_p v_p Q[rows[r], p]`` over the columns of part ``t``, from the rows while
    they are in cache.

    Each prange iteration owns one accumulator row, one row of ``dots`` and a disjoint range of
    columns. A row of ``mult`` 0 adds nothing to ``out``.
    """
    m = rows.shape[0]
    d = Q.shape[1]
    parts = acc.shape[0]
    with_dots = v.shape[0] > 0
    total = np.int64(0)
    for r in range(m):
        total += mult[r]
    half = total // 2
    for t in prange(parts):
        lo = d * t // parts
        hi = d * (t + 1) // parts
        a = acc[t]
        for r in range(m):
            dots[t, r] = 0
        for c0 in range(lo, hi, chunk):
            c1 = min(c0 + chunk, hi)
            width = c1 - c0
            for p in range(width):
                a[p] = 0
            r = 0
            while r + 4 <= m:  # four rows a pass: the accumulator is read and written a quarter as often
                q0 = Q[rows[r]][c0:c1]
                q1 = Q[rows[r + 1]][c0:c1]
                q2 = Q[rows[r + 2]][c0:c1]
                q3 = Q[rows[r + 3]][c0:c1]
                k0, k1, k2, k3 = mult[r], mult[r + 1], mult[r + 2], mult[r + 3]
                if with_dots:
                    vc = v[c0:c1]
                    s0 = s1 = s2 = s3 = np.int64(0)
                    for p in range(width):
                        x0, x1, x2, x3 = np.int64(q0[p]), np.int64(q1[p]), np.int64(q2[p]), np.int64(q3[p])
                        a[p] += k0 * x0 + k1 * x1 + k2 * x2 + k3 * x3
                        y = np.int64(vc[p])
                        s0 += x0 * y
                        s1 += x1 * y
                        s2 += x2 * y
                        s3 += x3 * y
                    dots[t, r] += s0
                    dots[t, r + 1] += s1
                    dots[t, r + 2] += s2
                    dots[t, r + 3] += s3
                else:
                    for p in range(width):
                        a[p] += (
                            k0 * np.int64(q0[p])
                            + k1 * np.int64(q1[p])
                            + k2 * np.int64(q2[p])
                            + k3 * np.int64(q3[p])
                        )
                r += 4
            while r < m:
                q = Q[rows[r]][c0:c1]
                c = mult[r]
                if with_dots:
                    vc = v[c0:c1]
                    s0 = np.int64(0)
                    for p in range(width):
                        x0 = np.int64(q[p])
                        a[p] += c * x0
                        s0 += x0 * np.int64(vc[p])
                    dots[t, r] += s0
                else:
                    for p in range(width):
                        a[p] += c * np.int64(q[p])
                r += 1
            for p in range(width):
                x = np.int64(w[c0 + p]) + (a[p] + half) // total  # |sum| <= W * 2^15 < 2^48: exact
                out[c0 + p] = min(max(x, -WEIGHT_CLAMP), WEIGHT_CLAMP)


@njit(cache=True, boundscheck=False, nogil=True)
def _min_max(M: np.ndarray) -> tuple[np.int64, np.int64]:
    lo = np.int64(0)
    hi = np.int64(0)
    for i in range(M.shape[0]):
        row = M[i]
        for p in range(M.shape[1]):
            v = np.int64(row[p])
            lo = v if v < lo else lo
            hi = v if v > hi else hi
    return lo, hi


@njit(cache=True, boundscheck=False, parallel=True)
def _split_limbs(M: np.ndarray, bits: int, L: np.ndarray) -> None:
    """``L[l, i, p]`` = limb ``l`` of ``M[i, p]``, so that ``M = sum_l L[l] << (bits * l)``: the lower
    limbs ``bits`` bits each (``0..2^bits - 1``), the top one the signed rest (the caller sizes ``L``
    so that it fits int16); columns past ``M``'s are 0."""
    top = L.shape[0] - 1
    cols = M.shape[1]
    mask = (np.int64(1) << bits) - 1
    for i in prange(M.shape[0]):
        row = M[i]
        for p in range(cols):
            v = np.int64(row[p])
            for limb in range(top):
                L[limb, i, p] = np.int16(v & mask)
                v >>= bits
            L[top, i, p] = np.int16(v)
        for limb in range(top + 1):
            for p in range(cols, L.shape[2]):
                L[limb, i, p] = 0


@njit(cache=True, boundscheck=False, parallel=True)
def _dense_limbs(
    AL: np.ndarray,
    WL: np.ndarray,
    a_bits: int,
    w_bits: int,
    run_steps: np.ndarray,
    b: np.ndarray,
    shift: int,
    sample_block: int,
    output_block: int,
    Z: np.ndarray,
) -> None:
    """``Z = A W^T + (b << shift)`` from the int16 limbs of ``A`` (``AL``: limbs x n x cols) and of
    ``W`` (``WL``: limbs x out x cols), ``cols`` a multiple of ``LANES``, of ``a_bits`` and ``w_bits``
    bits: for each pair of limbs ``(i, j)`` with ``run_steps[i, j] > 0``, ``AL[i] WL[j]^T << (a_bits * i
    + w_bits * j)`` through
    ``simd.madd_cross3`` in int32 runs of ``run_steps[i, j]`` steps, all in int64.

    The caller sets ``run_steps[i, j] <= (2^31 - 1) // (2 max|AL[i]| max|WL[j]|)`` (0 where a limb
    is all zero), so every run is exact; int64 wraps, and the true result fits int64 (module doc),
    so the wrapped sum is exact. Each prange iteration owns one (sample block, output block) pair.
    """
    n = Z.shape[0]
    n_out = Z.shape[1]
    steps = AL.shape[2] // LANES
    n_sb = (n + sample_block - 1) // sample_block
    n_ob = (n_out + output_block - 1) // output_block
    for job in prange(n_sb * n_ob):
        i_lo = (job // n_ob) * sample_block
        o_lo = (job % n_ob) * output_block
        i_hi = min(n, i_lo + sample_block)
        o_hi = min(n_out, o_lo + output_block)
        lanes = np.empty((9, ACC_LANES // 2), np.int64)
        for i0 in range(i_lo, i_hi, _TILE):
            x0, x1, x2 = min(i0, n - 1), min(i0 + 1, n - 1), min(i0 + 2, n - 1)
            for o0 in range(o_lo, o_hi, _TILE):
                y0, y1, y2 = min(o0, n_out - 1), min(o0 + 1, n_out - 1), min(o0 + 2, n_out - 1)
                for t in range(9):
                    for lane in range(ACC_LANES // 2):
                        lanes[t, lane] = 0
                for ia in range(AL.shape[0]):
                    for jw in range(WL.shape[0]):
                        rs = run_steps[ia, jw]
                        if rs == 0:
                            continue
                        sh = a_bits * ia + w_bits * jw
                        full = steps // rs
                        if full > 0:
                            madd_cross3(AL[ia], WL[jw], x0, x1, x2, y0, y1, y2, 0, full, rs, sh, lanes)
                        if steps > full * rs:
                            madd_cross3(
                                AL[ia],
                                WL[jw],
                                x0,
                                x1,
                                x2,
                                y0,
                                y1,
                                y2,
                                full * rs * LANES,
                                1,
                                steps - full * rs,
                                sh,
                                lanes,
                            )
                for di in range(_TILE):
                    i = i0 + di
                    if i >= i_hi:
                        break
                    for dj in range(_TILE):
                        o = o0 + dj
                        if o >= o_hi:
                            break
                        total = np.int64(b[o]) << shift
                        for lane in range(ACC_LANES // 2):
                            total += lanes[3 * di + dj, lane]
                        Z[i, o] = total


# ---------------------------------------------------------------------------------------------
# Fast path


def _value_range(M: np.ndarray) -> tuple[int, int]:
    """The least and greatest entry of ``M`` as Python ints, 0 included (an empty ``M`` gives (0, 0))."""
    lo, hi = _min_max(M)
    return int(lo), int(hi)


def _limb_bounds(lo: int, hi: int, bits: int) -> list[int] | None:
    """Magnitude bounds of the limbs of values in ``lo..hi`` split into ``bits``-bit lower limbs and a
    signed top limb within int16 (``bits = 0``: one limb, the value itself), or None if that fails."""
    if bits == 0:
        return [max(-lo, hi)] if lo >= -(1 << 15) and hi < (1 << 15) else None
    lower = 1
    while not (lo >> (bits * lower) >= -(1 << 15) and hi >> (bits * lower) < (1 << 15)):
        lower += 1
    top = bits * lower
    return [(1 << bits) - 1] * lower + [max(-(lo >> top), hi >> top)]


def _plan(a_range: tuple[int, int], w_range: tuple[int, int]) -> tuple[float, int, int, np.ndarray] | None:
    """The cheapest limb split of a layer whose ``A`` and ``W`` values lie in the given ranges: its
    estimated cost (``LIMB_FLUSH_COST``), the bits of each side and the steps per int32 run of each pair
    of limbs (0 where a limb is all zero). None where no split keeps a single step exact."""
    best = None
    for a_bits in LIMB_WIDTHS:
        a_bounds = _limb_bounds(*a_range, a_bits)
        if a_bounds is None:
            continue
        for w_bits in LIMB_WIDTHS:
            w_bounds = _limb_bounds(*w_range, w_bits)
            if w_bounds is None:
                continue
            table = np.zeros((len(a_bounds), len(w_bounds)), dtype=np.int64)
            cost = 0.0
            for i, mx in enumerate(a_bounds):
                for j, my in enumerate(w_bounds):
                    steps = _INT32_MAX // (2 * mx * my) if mx and my else 0
                    if mx and my and steps == 0:
                        cost = math.inf  # -2^15 on both sides: one step's pair sum is 2^31
                    elif steps:
                        table[i, j] = steps
                        cost += 1 + LIMB_FLUSH_COST / steps
            if best is None or cost < best[0]:
                best = (cost, a_bits, w_bits, table)
    return None if best is None or best[0] == math.inf else best


def _limbs(M: np.ndarray, bits: int, cols: int, count: int) -> np.ndarray:
    """``count`` int16 limbs of ``M`` (``_split_limbs``; ``bits = 0``: ``M`` itself), padded to ``cols``."""
    L = np.zeros((count, M.shape[0], cols), dtype=np.int16)
    if bits == 0:
        L[0, :, : M.shape[1]] = M
    elif M.size:
        _split_limbs(M, bits, L)
    return L


def _dense_fast(
    A: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    shift: int,
    kernel: str | None,
    Z: np.ndarray,
    sample_block: int | None = None,
    output_block: int | None = None,
) -> None:
    """``Z = A W^T + (b << shift)`` through the limb kernel or the int32 one: the one ``kernel`` names
    or, by default, the limb kernel wherever its cost estimate is at most ``LIMB_COST_MAX``."""
    n_in = A.shape[1]
    big = A.shape[0] * n_in * W.shape[0] >= LIMB_MIN_PRODUCTS
    if kernel == "limbs" or (kernel is None and big and A.size and W.size):
        plan = _plan(_value_range(A), _value_range(W))
        if plan is not None and (kernel == "limbs" or plan[0] <= LIMB_COST_MAX) and n_in:
            _, a_bits, w_bits, table = plan
            cols = -(-n_in // LANES) * LANES
            AL = _limbs(A, a_bits, cols, table.shape[0])
            WL = _limbs(W, w_bits, cols, table.shape[1])
            row_bytes = 2 * cols * max(AL.shape[0], WL.shape[0])
            sb = sample_block or _default_block(row_bytes, A_BLOCK_BYTES)
            ob = output_block or _default_block(row_bytes, W_BLOCK_BYTES)
            _dense_limbs(AL, WL, a_bits, w_bits, table, b, shift, sb, ob, Z)
            return
    sb = sample_block or _default_block(4 * n_in, A_BLOCK_BYTES)
    ob = output_block or _default_block(4 * n_in, W_BLOCK_BYTES)
    _dense(np.ascontiguousarray(A, dtype=np.int32), W, b, shift, sb, ob, Z)


def _validate_kernel(kernel: str | None) -> None:
    if kernel not in (None, "limbs", "int32"):
        raise ValueError(f"kernel must be None, 'limbs' or 'int32', got {kernel!r}")


def _default_block(row_bytes: int, budget: int) -> int:
    rows = max(_TILE, budget // max(row_bytes, 1))
    return rows - rows % _TILE


def compute_logits(
    weights: np.ndarray,
    arch: Sequence[int],
    scale_bits: int,
    x: np.ndarray,
    *,
    sample_block: int | None = None,
    output_block: int | None = None,
    kernel: str | None = None,
) -> np.ndarray:
    """The last layer's ``z`` (int64, ``samples x out``, at scale ``2^-2s``) of the integer forward pass.

    ``sample_block`` and ``output_block`` (rows of A and of W per cache block) tune speed and never
    change the result; by default each block takes about half of a 1 MiB L2 cache.
    """
    widths = _validate_forward_arch(arch)
    w = validate_weights(weights, widths)
    s = validate_scale_bits(scale_bits)
    a = validate_inputs(x, widths)  # int16; the int32 kernel widens it
    for name, v in (("sample_block", sample_block), ("output_block", output_block)):
        if v is not None and (type(v) is not int or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    _validate_kernel(kernel)
    n = a.shape[0]
    slices = layer_slices(widths)
    z = np.empty((n, 0), dtype=np.int64)
    for layer, (ws, bs) in enumerate(slices):
        n_in, n_out = widths[layer], widths[layer + 1]
        W = w[ws].reshape(n_out, n_in)
        z = np.empty((n, n_out), dtype=np.int64)
        if n:
            _dense_fast(a, W, w[bs], s, kernel, z, sample_block, output_block)
        if layer + 1 < len(slices):
            a = np.empty((n, n_out), dtype=np.int32)
            _shift_relu(z, s, a)
    return z


def matmul_rows(A: np.ndarray, B: np.ndarray, *, kernel: str | None = None) -> np.ndarray:
    """Exact int64 ``A B^T`` of two int32 matrices with the same number of columns, with the layer
    kernel. The caller guarantees every sum of products stays below ``2^63`` (``contribution`` uses it
    for the backward pass, whose bounds are in its module docstring)."""
    for name, M in (("A", A), ("B", B)):
        if not isinstance(M, np.ndarray) or M.ndim != 2 or M.dtype != np.int32:
            raise ValueError(f"{name} must be a 2-D int32 numpy array")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"A has {A.shape[1]} columns, B has {B.shape[1]}")
    _validate_kernel(kernel)
    A = np.ascontiguousarray(A)
    B = np.ascontiguousarray(B)
    Z = np.zeros((A.shape[0], B.shape[0]), dtype=np.int64)
    if A.shape[0] and B.shape[0] and A.shape[1]:
        _dense_fast(A, B, np.zeros(B.shape[0], dtype=np.int32), 0, kernel, Z)
    return Z


def predict(weights: np.ndarray, arch: Sequence[int], scale_bits: int, x: np.ndarray) -> np.ndarray:
    """Predicted class of each row of ``x`` (int64): argmax of the last ``z``, lowest index on ties."""
    z = compute_logits(weights, arch, scale_bits, x)
    # np.argmax returns the first occurrence of the maximum: the lowest index on ties.
    return np.argmax(z, axis=1).astype(np.int64)


def _accuracy_bps(predictions: np.ndarray, val_y: np.ndarray) -> int:
    if not isinstance(val_y, np.ndarray) or val_y.ndim != 1 or val_y.dtype != np.uint8:
        raise ValueError("labels must be a 1-D uint8 numpy array")
    samples = val_y.shape[0]
    if predictions.shape[0] != samples:
        raise ValueError(f"{samples} labels for {predictions.shape[0]} samples")
    if samples == 0:
        raise ValueError("accuracy needs at least one sample")
    correct = int(np.count_nonzero(predictions == val_y.astype(np.int64)))
    return correct * 10_000 // samples


def accuracy_bps(
    weights: np.ndarray, arch: Sequence[int], scale_bits: int, val_x: np.ndarray, val_y: np.ndarray
) -> int:
    """``correct * 10000 // samples`` of the integer model on the validation set."""
    return _accuracy_bps(predict(weights, arch, scale_bits, val_x), val_y)


def aggregate(
    model: np.ndarray,
    selected_deltas: np.ndarray,
    *,
    rows: Sequence[int] | None = None,
    weights: Sequence[int] | None = None,
    parts: int | None = None,
    chunk: int = AGGREGATE_CHUNK,
) -> np.ndarray:
    """The new int32 model ``clamp(w + (sum_r c_r Q[r] + W // 2) // W)``, ``W = sum_r c_r``.

    ``model`` is int32 (``d``), ``selected_deltas`` int16 (``m x d``, ``m >= 1``); neither is
    modified. Every row has weight ``c_r = 1`` (the plain mean) unless ``weights`` gives one int per
    row in ``0..MAX_AGGREGATE_WEIGHT``, at least one positive. ``rows`` selects the deltas by row
    index instead (distinct, at least one): the same result as ``aggregate(model,
    selected_deltas[rows])`` without copying the rows; it cannot be combined with ``weights``.
    ``parts`` (column ranges run in parallel, default numba's thread count) and ``chunk`` (columns
    per accumulator run) tune speed and never change the result.
    """
    w, Q = validate_deltas(model, selected_deltas)
    if rows is not None and weights is not None:
        raise ValueError("give rows or weights, not both")
    if weights is not None:
        mult = _validate_weights(weights, Q.shape[0])
        index = np.flatnonzero(mult).astype(np.int64)
        mult = mult[index]
    elif rows is None:
        index = np.arange(Q.shape[0], dtype=np.int64)
        mult = np.ones(index.size, dtype=np.int64)
    else:
        index = np.array([operator.index(r) for r in rows], dtype=np.int64)
        if index.ndim != 1 or index.size < 1:
            raise ValueError("aggregation needs at least one selected row")
        if index.min() < 0 or index.max() >= Q.shape[0] or np.unique(index).size != index.size:
            raise ValueError(f"rows must be distinct indices below {Q.shape[0]}")
        mult = np.ones(index.size, dtype=np.int64)
    return _run_aggregate(w, Q, index, mult, parts, chunk, np.empty(0, dtype=np.int32))[0]


def aggregate_and_dots(
    model: np.ndarray,
    selected_deltas: np.ndarray,
    v: np.ndarray,
    *,
    weights: Sequence[int] | None = None,
    parts: int | None = None,
    chunk: int = AGGREGATE_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """``aggregate(model, selected_deltas, weights=weights)`` and, in the same pass over the rows,
    ``dots[i] = sum_p v_p Q[i, p]`` for EVERY row ``i`` (int64, exact), those of weight 0 too.

    ``v`` is int32, one per column, each ``|v_p| < 2^DIRECTION_BITS``, so every dot stays below
    ``MAX_PARAMS * 2^15 * 2^24 = 2^61``: the round close's contribution gains
    (``contribution.gains`` computes the same alone), read while the rows are in cache instead of
    in a second pass over the ``k x d`` matrix, which does not fit the caches.
    """
    w, Q = validate_deltas(model, selected_deltas)
    if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype.kind != "i" or v.dtype.itemsize != 4:
        raise ValueError("v must be a 1-D int32 numpy array")
    if v.shape[0] != Q.shape[1]:
        raise ValueError(f"the deltas have {Q.shape[1]} columns, v {v.shape[0]}")
    lo, hi = _value_range(v.reshape(1, -1))
    if max(-lo, hi) >= 1 << DIRECTION_BITS:
        raise ValueError(f"v must lie below 2^{DIRECTION_BITS}")
    k = Q.shape[0]
    mult = np.ones(k, dtype=np.int64) if weights is None else _validate_weights(weights, k)
    index = np.arange(k, dtype=np.int64)
    return _run_aggregate(w, Q, index, mult, parts, chunk, np.ascontiguousarray(v, dtype=np.int32))


def _run_aggregate(
    w: np.ndarray,
    Q: np.ndarray,
    index: np.ndarray,
    mult: np.ndarray,
    parts: int | None,
    chunk: int,
    v: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    d = w.shape[0]
    n_parts = numba.get_num_threads() if parts is None else parts
    for name, x in (("parts", n_parts), ("chunk", chunk)):
        if type(x) is not int or x < 1:
            raise ValueError(f"{name} must be a positive int, got {x!r}")
    n_parts = min(n_parts, max(d, 1))
    out = np.empty(d, dtype=np.int32)
    dots = np.zeros((n_parts, index.size), dtype=np.int64)
    if d:
        acc = np.empty((n_parts, min(chunk, d)), dtype=np.int64)
        _aggregate(w, Q, index, mult, acc.shape[1], acc, out, v, dots)
    # each part's dot is below 2^61 (the bound of the whole): their sum does not wrap (no v: zeros)
    return out, dots.sum(axis=0, dtype=np.int64)


def _validate_weights(weights: Sequence[int], k: int) -> np.ndarray:
    values = [operator.index(c) for c in weights]
    if len(values) != k:
        raise ValueError(f"{len(values)} weights for {k} deltas")
    if any(c < 0 or c > MAX_AGGREGATE_WEIGHT for c in values) or not any(values):
        raise ValueError(f"weights must be ints in 0..{MAX_AGGREGATE_WEIGHT}, at least one positive")
    return np.array(values, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Reference twins: plain Python ints, obviously correct, slow.


def compute_logits_reference(
    weights: np.ndarray, arch: Sequence[int], scale_bits: int, x: np.ndarray
) -> list[list[int]]:
    """Reference twin of ``compute_logits``: the integer forward pass in Python ints."""
    widths = _validate_forward_arch(arch)
    w = [int(v) for v in validate_weights(weights, widths)]
    s = validate_scale_bits(scale_bits)
    rows = [[int(v) for v in row] for row in validate_inputs(x, widths)]
    slices = layer_slices(widths)
    result = []
    for a in rows:
        for layer, (ws, bs) in enumerate(slices):
            n_in = widths[layer]
            W, b = w[ws], w[bs]
            z = [sum(W[o * n_in + j] * a[j] for j in range(n_in)) + (b[o] << s) for o in range(len(b))]
            if layer + 1 < len(slices):
                a = [min(max(v >> s, 0), ACTIVATION_MAX) for v in z]  # Python's >> is a floor shift
        result.append(z)
    return result


def predict_reference(weights: np.ndarray, arch: Sequence[int], scale_bits: int, x: np.ndarray) -> np.ndarray:
    """Reference twin of ``predict``: argmax of the reference logits, lowest index on ties."""
    preds = []
    for z in compute_logits_reference(weights, arch, scale_bits, x):
        best = 0
        for o in range(1, len(z)):
            if z[o] > z[best]:  # strictly greater: the lowest index wins a tie
                best = o
        preds.append(best)
    return np.array(preds, dtype=np.int64)


def accuracy_bps_reference(
    weights: np.ndarray, arch: Sequence[int], scale_bits: int, val_x: np.ndarray, val_y: np.ndarray
) -> int:
    """Reference twin of ``accuracy_bps``: ``correct * 10000 // samples``."""
    return _accuracy_bps(predict_reference(weights, arch, scale_bits, val_x), val_y)


def aggregate_reference(
    model: np.ndarray, selected_deltas: np.ndarray, weights: Sequence[int] | None = None
) -> np.ndarray:
    """Reference twin of ``aggregate``: ``clamp(w + (sum_r c_r Q[r] + W // 2) // W)`` per parameter in
    Python ints (``c_r = 1`` without ``weights``)."""
    w, Q = validate_deltas(model, selected_deltas)
    rows = [[int(v) for v in row] for row in Q]
    c = [1] * len(rows) if weights is None else [int(x) for x in _validate_weights(weights, len(rows))]
    total = sum(c)
    new = []
    for p, wp in enumerate(w.tolist()):
        a = (sum(cr * row[p] for cr, row in zip(c, rows, strict=True)) + total // 2) // total  # floor
        new.append(min(max(wp + a, -WEIGHT_CLAMP), WEIGHT_CLAMP))
    return np.array(new, dtype=np.int32)
