"""What each update did for the model: the contribution score rewards are paid by, exact in integers.

A round's reward is split by each aggregated update's first-order effect on the task's validation
margin, after removing everything the previous round already made public (docs/PROTOCOL.md,
section 8; the measurements behind the choice are in docs/FL.md, "Paying for contribution").

1. **Margin gradient** ``g`` (``margin_gradient``). A sample's margin is the logit of its true class
   minus the best other logit (lowest index on ties), from the chain's integer forward pass. Samples
   whose margin is below ``MARGIN_WINDOW_LOGITS`` logits count (a hinge: every misclassified sample,
   and the correct ones not yet confident); ``g`` is the gradient of the sum of their margins with
   respect to the parameters, computed by an integer backward pass:
   the last layer's term is ``+2^s`` at the true class and ``-2^s`` at the best other one; going back
   through a layer ``e = delta W``, then ``delta' = clamp((e * mask) >> s, +-(2^24 - 1))`` with
   ``mask = 1`` where the hidden activation ``z >> s`` lay strictly between 0 and its ceiling; a
   layer's weight gradient is ``sum_v delta[v][o] a[v][j]`` and its bias gradient
   ``(sum_v delta[v][o]) << s``. ``>>`` is a floor shift. Every sum stays below 2^62 (limits.py).
2. **What was public** (``orthogonal_direction``). The previous round's revealed updates and the
   global change they made (new model minus old, a rounded weighted mean of them: one more row,
   ``extend_gram``) are public when this round's are committed; so is anything built from them.
   ``P`` (``k' x d``) is those rows. The direction ``v`` is ``g`` with its projection
   on the span of ``P``'s rows removed: ``y`` solves ``(P P^T) y = P g`` exactly (``solve_gram``: the
   rows taken greedily in index order, each kept if independent of those kept before it, solved
   exactly over the rationals), ``y_j`` is taken in fixed point ``floor(y_j 2^F)`` with
   ``F = min(20, 46 - bitlen(sum_j ceil|y_j|))`` (so that every sum below stays under 2^62; if
   ``F < 0`` no projection is made), and ``v_p = (g_p << F) - sum_j floor(y_j 2^F) P[j][p]``.
   ``g`` is first floor-shifted to magnitudes below ``2^24`` and ``v`` is floor-shifted the same way
   (``to_direction``).
3. **Gains** (``gains``): ``gain_i = sum_p v_p q_ip``, exact in int64 (below 2^61). A zero update
   gains exactly 0; a copy of a previous update, or any combination of them (a replay of the last
   global change), gains next to nothing; noise gains as often as it loses, and little.
4. **Near copies** (``near_copies``): revealed updates whose pairwise cosine (``robust.cosine_bps``
   on the round's Gram matrix) is at least ``duplicate_cosine_bps`` are linked, and each update's
   ``c_i`` is the size of its linked group (1 alone). Honest updates of different clients never came
   near (pairwise cosines at most 0.87 in the digits grid, at alpha 0.1); a copy of this round's
   update, which commit-reveal makes possible only in collusion with its author, shares one
   contribution with it instead of doubling it.
   **Significance** (``significant``): a positive gain whose cosine with ``v`` is below
   ``min_gain_cosine_bps`` counts as 0 (a random direction's cosine with ``v`` is about
   ``1/sqrt(d)`` either way; the positive part of noise is what it would otherwise earn). **Length
   cap** (``norm_capped``): a positive gain of an update longer than the upper quartile of the
   eligible updates' lengths is scaled down to that length.
5. **Units** (``round_units``): a round whose aggregate went downhill (``sum_i w_i gain_i <= 0``,
   ``w`` the aggregate weights) pays nobody; otherwise the updates neither flagged nor left out
   share ``ROUND_UNITS`` in proportion to ``s_i = max(0, gain_i) // c_i``: ``ROUND_UNITS * s_i //
   sum_j s_j``. An update that hurt, or was flagged or left out, earns nothing that round; a round
   that pays nobody leaves its fee to go back to the task's creator. An honest update Multi-Krum did
   not select (heterogeneous data) still earns what it would have done for the model.

The fast paths (numba kernels, the layer kernel of ``model.py``) have ``*_reference`` twins in plain
Python ints and Fractions; tests hold them equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import isqrt, lcm
from typing import cast

import flint
import numpy as np
from numba import njit, prange

from mpsnode.consensus import model
from mpsnode.consensus.arch import layer_slices, param_count
from mpsnode.consensus.limits import DIRECTION_BITS, MAX_VALIDATION_SAMPLES, MODEL_CLAMP
from mpsnode.consensus.params import Params
from mpsnode.consensus.robust import cosine_bps

ROUND_UNITS = 1_000_000  # reward units shared per billed round
MARGIN_WINDOW_LOGITS = 4  # samples count while margin < 4 logits (4 << 2s in the integer logits)
PROJECTION_BITS = 20  # F's ceiling: y in fixed point at 2^-20
_PROJECTION_BUDGET_BITS = 46  # 2^15 * sum|y| * 2^F <= 2^61
_TERM_MAX = (1 << 24) - 1  # back-propagated terms are clamped to +-(2^24 - 1)


# ---------------------------------------------------------------------------------------------
# 1. The margin gradient


def _check_validation(
    val_x: np.ndarray, val_y: np.ndarray, arch: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    x = model.validate_inputs(val_x, arch)
    if not isinstance(val_y, np.ndarray) or val_y.ndim != 1 or val_y.dtype != np.uint8:
        raise ValueError("labels must be a 1-D uint8 numpy array")
    if val_y.shape[0] != x.shape[0]:
        raise ValueError(f"{val_y.shape[0]} labels for {x.shape[0]} samples")
    if x.shape[0] > MAX_VALIDATION_SAMPLES:
        raise ValueError(f"{x.shape[0]} samples exceeds the limit of {MAX_VALIDATION_SAMPLES}")
    if val_y.size and int(val_y.max()) >= arch[-1]:
        raise ValueError(f"labels must be < {arch[-1]}")
    return x, val_y


def margin_window(scale_bits: int) -> int:
    """The margin window in integer logits (scale ``2^-2s``): ``MARGIN_WINDOW_LOGITS << 2s``."""
    return MARGIN_WINDOW_LOGITS << (2 * model.validate_scale_bits(scale_bits))


def _output_terms(z: np.ndarray, y: np.ndarray, scale_bits: int) -> np.ndarray:
    """The last layer's back-propagated terms (int32 ``n x out``): ``+2^s`` at the true class and
    ``-2^s`` at the best other class, for samples whose margin is below the window; 0 elsewhere."""
    n, out = z.shape
    terms = np.zeros((n, out), dtype=np.int32)
    if n == 0:
        return terms
    rows = np.arange(n)
    others = z.copy()
    others[rows, y] = np.iinfo(np.int64).min
    best = np.argmax(others, axis=1)  # first maximum: the lowest index on ties
    window = margin_window(scale_bits)
    true_z = z[rows, y].tolist()
    best_z = others[rows, best].tolist()
    unit = 1 << scale_bits
    for v in range(n):
        if true_z[v] - best_z[v] < window:  # Python ints: the difference cannot overflow
            terms[v, y[v]] = unit
            terms[v, best[v]] = -unit
    return terms


def margin_gradient(
    weights: np.ndarray, arch: Sequence[int], scale_bits: int, val_x: np.ndarray, val_y: np.ndarray
) -> np.ndarray:
    """The integer gradient ``g`` (int64, one per parameter, layer by layer as the weights) of the
    validation margin inside the window (module docstring, step 1)."""
    widths = tuple(arch)
    w = model.validate_weights(weights, widths)
    s = model.validate_scale_bits(scale_bits)
    x, y = _check_validation(val_x, val_y, widths)
    slices = layer_slices(widths)
    acts = [x.astype(np.int32)]
    hidden_z = []
    z = np.zeros((x.shape[0], widths[-1]), dtype=np.int64)
    for layer, (ws, bs) in enumerate(slices):
        W = w[ws].reshape(widths[layer + 1], widths[layer])
        z = model.matmul_rows(acts[-1], W) + (w[bs].astype(np.int64) << s)
        if layer + 1 < len(slices):
            hidden_z.append(z)
            acts.append(np.clip(z >> s, 0, MODEL_CLAMP).astype(np.int32))
    terms = _output_terms(z, y.astype(np.int64), s)
    g = np.zeros(param_count(widths), dtype=np.int64)
    for layer in range(len(slices) - 1, -1, -1):
        ws, bs = slices[layer]
        g[ws] = model.matmul_rows(np.ascontiguousarray(terms.T), np.ascontiguousarray(acts[layer].T)).ravel()
        g[bs] = terms.sum(axis=0, dtype=np.int64) << s
        if layer:
            W = w[ws].reshape(widths[layer + 1], widths[layer])
            e = model.matmul_rows(terms, np.ascontiguousarray(W.T))
            zh = hidden_z[layer - 1] >> s
            e[(zh <= 0) | (zh >= MODEL_CLAMP)] = 0
            terms = np.clip(e >> s, -_TERM_MAX, _TERM_MAX).astype(np.int32)
    return g


def margin_gradient_reference(
    weights: np.ndarray, arch: Sequence[int], scale_bits: int, val_x: np.ndarray, val_y: np.ndarray
) -> np.ndarray:
    """Reference twin of ``margin_gradient``: the same backward pass, sample by sample, in Python ints."""
    widths = tuple(arch)
    w = [int(v) for v in model.validate_weights(weights, widths)]
    s = model.validate_scale_bits(scale_bits)
    x, y = _check_validation(val_x, val_y, widths)
    slices = layer_slices(widths)
    window = margin_window(s)
    g = [0] * len(w)
    for row, label in zip(x.tolist(), y.tolist(), strict=True):
        acts, zs = [row], []
        for layer, (ws, bs) in enumerate(slices):
            n_in = widths[layer]
            W, b = w[ws], w[bs]
            z = [sum(W[o * n_in + j] * acts[-1][j] for j in range(n_in)) + (b[o] << s) for o in range(len(b))]
            zs.append(z)
            if layer + 1 < len(slices):
                acts.append([min(max(v >> s, 0), MODEL_CLAMP) for v in z])
        out = zs[-1]
        best = min((o for o in range(len(out)) if o != label), key=lambda o: (-out[o], o))
        if not out[label] - out[best] < window:
            continue
        terms = [0] * len(out)
        terms[label], terms[best] = 1 << s, -(1 << s)
        for layer in range(len(slices) - 1, -1, -1):
            ws, bs = slices[layer]
            n_in, n_out = widths[layer], widths[layer + 1]
            for o in range(n_out):
                if terms[o]:
                    for j in range(n_in):
                        g[ws.start + o * n_in + j] += terms[o] * acts[layer][j]
                    g[bs.start + o] += terms[o] << s
            if layer:
                e = [sum(terms[o] * w[ws.start + o * n_in + j] for o in range(n_out)) for j in range(n_in)]
                zh = [v >> s for v in zs[layer - 1]]
                terms = [
                    min(max((e[j] if 0 < zh[j] < MODEL_CLAMP else 0) >> s, -_TERM_MAX), _TERM_MAX)
                    for j in range(n_in)
                ]
    return np.array(g, dtype=np.int64)


def to_direction(v: np.ndarray) -> np.ndarray:
    """``v`` floor-shifted right by the fewest bits that bring every entry below ``2^24`` (int64)."""
    if v.size == 0:
        return v.astype(np.int64)
    top = max(int(v.max()), -int(v.min()))
    shift = max(0, top.bit_length() - DIRECTION_BITS)
    return (v if v.dtype == np.int64 else v.astype(np.int64)) >> shift  # a new array either way


# ---------------------------------------------------------------------------------------------
# 2. The projection off what was public


def solve_gram(H: Sequence[Sequence[int]], r: Sequence[int]) -> tuple[list[int], int]:
    """An exact solution ``y = Y / D`` (``D > 0``) of ``H y = r`` for the Gram matrix ``H = P P^T``
    and ``r = P g``: rows taken greedily in index order, each kept while independent of those kept
    before it (``y_j = 0`` for the others).

    In FLINT's exact integer matrices: the kept rows are the pivot columns of ``H``'s reduced row
    echelon form (column ``j`` of ``H`` is ``P p_j``, and ``P v = 0`` for a ``v`` in the span of
    ``P``'s rows only if ``v = 0``, so ``H``'s columns depend on each other exactly as ``P``'s rows
    do), and the kept system, nonsingular, is solved over the rationals; ``D`` is the least common
    denominator. Only the rationals ``y_j`` are the protocol's; any exact method gives the same.
    (Bareiss elimination in Python ints, the first version, took 1.45 s at k = 101 and 13 s at
    k = 160 and 127 s at 257 rows, on entries of thousands of bits; this takes 0.017 s and 0.21 s.)"""
    k = len(r)
    Y = [0] * k
    if k == 0:
        return Y, 1
    Hi = [[int(v) for v in row] for row in H]
    R, _, rank = flint.fmpz_mat(Hi).rref()
    keep: list[int] = []
    col = 0
    for row in range(rank):  # the first nonzero entry of each nonzero row is a pivot
        while R[row, col] == 0:
            col += 1
        keep.append(col)
        col += 1
    if not keep:
        return Y, 1
    system = flint.fmpz_mat([[Hi[a][b] for b in keep] for a in keep])
    x = cast(flint.fmpq_mat, system.solve(flint.fmpz_mat([[int(r[a])] for a in keep])))  # rationals
    numerators, D = x.numer_denom()  # x = numerators / D, D the least common denominator
    for i, j in enumerate(keep):
        Y[j] = int(numerators[i, 0])
    return Y, int(D)


def solve_gram_reference(H: Sequence[Sequence[int]], r: Sequence[int]) -> tuple[list[int], int]:
    """Reference twin of ``solve_gram``: the same kept rows found by rank, solved with Fractions."""
    k = len(r)
    keep: list[int] = []
    for j in range(k):
        trial = [*keep, j]
        if _rank([[Fraction(int(H[a][b])) for b in trial] for a in trial]) == len(trial):
            keep.append(j)
    A = [[Fraction(int(H[a][b])) for b in keep] + [Fraction(int(r[a]))] for a in keep]
    n = len(keep)
    for c in range(n):  # Gauss-Jordan on the nonsingular kept system
        p = next(i for i in range(c, n) if A[i][c] != 0)
        A[c], A[p] = A[p], A[c]
        A[c] = [v / A[c][c] for v in A[c]]
        for i in range(n):
            if i != c and A[i][c] != 0:
                A[i] = [a - A[i][c] * b for a, b in zip(A[i], A[c], strict=True)]
    y = [Fraction(0)] * k
    for idx, j in enumerate(keep):
        y[j] = A[idx][n]
    D = 1
    for v in y:
        D = lcm(D, v.denominator)
    return [int(v * D) for v in y], D


def _rank(A: list[list[Fraction]]) -> int:
    A = [row[:] for row in A]
    rank = 0
    for c in range(len(A[0]) if A else 0):
        p = next((i for i in range(rank, len(A)) if A[i][c] != 0), None)
        if p is None:
            continue
        A[rank], A[p] = A[p], A[rank]
        for i in range(rank + 1, len(A)):
            factor = A[i][c] / A[rank][c]
            A[i] = [a - factor * b for a, b in zip(A[i], A[rank], strict=True)]
        rank += 1
    return rank


def projection_coefficients(Y: Sequence[int], D: int) -> tuple[list[int], int]:
    """``(floor(y_j 2^F), F)`` with ``F = min(20, 46 - bitlen(sum_j ceil|y_j|))``; ``F < 0`` means no
    projection (module docstring, step 2)."""
    bound = sum(-(-abs(v) // D) for v in Y)
    F = min(PROJECTION_BITS, _PROJECTION_BUDGET_BITS - bound.bit_length())
    if F < 0:
        return [0] * len(Y), F
    return [(v << F) // D for v in Y], F


PROJECT_CHUNK = 4096  # columns per run of the projection kernel (32 KiB of int64 stays in L1/L2)


@njit(cache=True, boundscheck=False, parallel=True)
def _project(g: np.ndarray, F: int, P: np.ndarray, c: np.ndarray, chunk: int, out: np.ndarray) -> None:
    """``out_p = (g_p << F) - sum_j c_j P[j][p]`` in int64 (below 2^62 by the choice of F), a run of
    ``chunk`` columns at a time, each run reading the basis rows contiguously."""
    d = g.shape[0]
    k = P.shape[0]
    runs = (d + chunk - 1) // chunk
    for t in prange(runs):
        lo = t * chunk
        hi = min(d, lo + chunk)
        for p in range(lo, hi):
            out[p] = np.int64(g[p]) << F
        for j in range(k):
            cj = c[j]
            row = P[j]
            for p in range(lo, hi):
                out[p] -= cj * np.int64(row[p])


def orthogonal_direction(g: np.ndarray, P: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The direction ``v`` (int64, below ``2^24``): ``g`` off the span of ``P``'s rows (step 2).

    ``g`` is int64 below ``2^24`` (``to_direction``), ``P`` the previous round's int16 updates
    (``k' x d``, possibly none) and ``H = P P^T`` their exact Gram matrix (``krum.gram_matrix``)."""
    g = _check_direction(g)
    if P.shape[0] == 0:
        return g.copy()
    r = _row_dots(P, g)
    Y, D = solve_gram(H.tolist(), r.tolist())
    c, F = projection_coefficients(Y, D)
    if F < 0:
        return g.copy()
    out = np.empty_like(g)
    _project(g, F, np.ascontiguousarray(P, dtype=np.int16), np.array(c, dtype=np.int64), PROJECT_CHUNK, out)
    return to_direction(out)


def orthogonal_direction_reference(g: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Reference twin of ``orthogonal_direction``, from ``P`` alone, in Python ints and Fractions."""
    gv = [int(v) for v in _check_direction(g)]
    rows = [[int(v) for v in row] for row in P]
    if not rows:
        return np.array(gv, dtype=np.int64)
    H = [[sum(a * b for a, b in zip(ri, rj, strict=True)) for rj in rows] for ri in rows]
    r = [sum(a * b for a, b in zip(row, gv, strict=True)) for row in rows]
    c, F = projection_coefficients(*solve_gram_reference(H, r))
    if F < 0:
        return np.array(gv, dtype=np.int64)
    out = [(gp << F) - sum(cj * row[p] for cj, row in zip(c, rows, strict=True)) for p, gp in enumerate(gv)]
    return to_direction(np.array(out, dtype=np.int64))


def extend_gram(P: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The Gram matrix of ``P`` (int16, ``k + 1`` rows) from ``H``, that of its first ``k`` rows:
    the last row's exact inner products with every row added (int64). The basis gets its extra row
    (the last global change) in place, so no copy of the basis is made."""
    k = P.shape[0] - 1
    if k < 0 or H.shape != (k, k):
        raise ValueError(f"H must be the {k} x {k} Gram matrix of all rows of P but the last")
    last = P[k].astype(np.int64)
    cross = _row_dots(P, last)  # the last entry is the row with itself
    H2 = np.zeros((k + 1, k + 1), dtype=np.int64)
    H2[:k, :k] = H
    H2[:, k] = cross
    H2[k, :] = cross
    return H2


def _check_direction(g: np.ndarray) -> np.ndarray:
    if not isinstance(g, np.ndarray) or g.ndim != 1 or g.dtype != np.int64:
        raise ValueError("the direction must be a 1-D int64 numpy array")
    if g.size and max(int(g.max()), -int(g.min())) >= 1 << DIRECTION_BITS:
        raise ValueError(f"the direction must lie below 2^{DIRECTION_BITS}")
    return g


# ---------------------------------------------------------------------------------------------
# 3. Gains and 4. units


@njit(cache=True, boundscheck=False, parallel=True)
def _dots(Q: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    k, d = Q.shape
    for i in prange(k):
        row = Q[i]
        acc = np.int64(0)
        for p in range(d):
            acc += np.int64(row[p]) * v[p]
        out[i] = acc


def _row_dots(Q: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros(Q.shape[0], dtype=np.int64)
    if Q.shape[0] and Q.shape[1]:
        _dots(np.ascontiguousarray(Q, dtype=np.int16), np.ascontiguousarray(v, dtype=np.int64), out)
    return out


def gains(direction: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``gain_i = sum_p v_p q_ip`` for the int16 rows of ``Q`` (int64, exact: below 2^61)."""
    v = _check_direction(direction)
    if not isinstance(Q, np.ndarray) or Q.ndim != 2 or Q.dtype.kind != "i" or Q.dtype.itemsize != 2:
        raise ValueError("updates must be a 2-D int16 numpy array")
    if Q.shape[1] != v.shape[0]:
        raise ValueError(f"updates have {Q.shape[1]} columns, the direction {v.shape[0]}")
    return _row_dots(Q, v)


def squared_norm(v: np.ndarray) -> int:
    """``sum_p v_p^2`` of a direction (below 2^24 per entry), exact: int64 partial sums of 2^14
    entries (each below 2^62), added in Python ints."""
    v = _check_direction(v)
    return sum(int(np.dot(v[i : i + (1 << 14)], v[i : i + (1 << 14)])) for i in range(0, v.shape[0], 1 << 14))


def significant(
    round_gains: Sequence[int], norms: Sequence[int], direction_norm: int, min_cosine_bps: int
) -> list[int]:
    """Step 4b: each gain, or 0 where it is positive but its cosine with the direction is below
    ``min_cosine_bps``: ``10^8 gain^2 < min_cosine_bps^2 * |v|^2 * |q_i|^2`` (Python ints; ``norms``
    are the ``|q_i|^2``, the Gram diagonal). A positive gain that small is what noise gets."""
    out = []
    for x, n in zip(round_gains, norms, strict=True):
        x = int(x)
        if x > 0 and 10**8 * x * x < min_cosine_bps * min_cosine_bps * direction_norm * int(n):
            x = 0
        out.append(x)
    return out


def norm_capped(round_gains: Sequence[int], norms: Sequence[int], eligible: Sequence[bool]) -> list[int]:
    """Step 4c: a positive gain of an update longer than the upper quartile ``m`` of the eligible
    updates' lengths is scaled to that length, ``gain * isqrt(m^2) // isqrt(|q_i|^2)`` (``m^2`` =
    element ``(n - 1) * 3 // 4`` of the ``n`` eligible squared norms, sorted): a longer step is not
    more work, and a boosted update (or one trained on wrong labels, whose loss stays high) would
    otherwise earn in proportion to its length."""
    pool = sorted(int(n) for n, e in zip(norms, eligible, strict=True) if e)
    if not pool:
        return [int(x) for x in round_gains]
    cap = isqrt(pool[(len(pool) - 1) * 3 // 4])
    out = []
    for x, n in zip(round_gains, norms, strict=True):
        x, length = int(x), isqrt(int(n))
        out.append(x * cap // length if x > 0 and length > cap else x)
    return out


def gains_reference(direction: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Reference twin of ``gains``, in Python ints."""
    v = [int(x) for x in _check_direction(direction)]
    return np.array([sum(int(a) * b for a, b in zip(row, v, strict=True)) for row in Q], dtype=np.int64)


def near_copies(G: Sequence[Sequence[int]], threshold_bps: int) -> tuple[int, ...]:
    """Step 4: the size of each row's group of near copies (rows linked, transitively, when their
    pairwise cosine is at least ``threshold_bps``); 1 for a row like no other."""
    k = len(G)
    parent = list(range(k))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(k):
        for j in range(i + 1, k):
            if cosine_bps(int(G[i][j]), int(G[i][i]), int(G[j][j])) >= threshold_bps:
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = [root(i) for i in range(k)]
    return tuple(roots.count(r) for r in roots)


def round_units(
    round_gains: Sequence[int],
    weights: Sequence[int],
    copies: Sequence[int] | None = None,
    eligible: Sequence[bool] | None = None,
) -> tuple[int, ...]:
    """Each update's reward units for the round (step 5). Nobody earns when the round's step went
    downhill (``sum_i weights_i gain_i <= 0``, ``weights`` the aggregate weights); otherwise
    ``ROUND_UNITS * s_i // S`` with ``s_i = max(0, gain_i) // copies_i`` for the ``eligible``
    updates (neither flagged nor left out; default: ``weights_i > 0``), ``S`` the sum of the
    ``s_j``; 0 for the others, and for everyone when ``S = 0``. ``copies`` defaults to 1 each."""
    k = len(weights)
    if len(round_gains) != k:
        raise ValueError(f"{len(round_gains)} gains for {k} weights")
    group = [1] * k if copies is None else [int(c) for c in copies]
    if len(group) != k or any(c < 1 for c in group):
        raise ValueError("copies must give a group size >= 1 per update")
    able = [int(w) > 0 for w in weights] if eligible is None else [bool(e) for e in eligible]
    if len(able) != k:
        raise ValueError(f"{len(able)} eligibility flags for {k} updates")
    if sum(int(w) * int(x) for w, x in zip(weights, round_gains, strict=True)) <= 0:
        return tuple(0 for _ in range(k))
    shares = [max(0, int(x)) // c if a else 0 for x, a, c in zip(round_gains, able, group, strict=True)]
    positive = sum(shares)
    if positive == 0:
        return tuple(0 for _ in shares)
    return tuple(ROUND_UNITS * x // positive for x in shares)


def round_contributions(
    round_gains: Sequence[int],
    G: Sequence[Sequence[int]],
    direction_norm: int,
    weights: Sequence[int],
    eligible: Sequence[bool],
    params: Params,
) -> tuple[int, ...]:
    """Steps 4 and 5 on a round's raw gains: significance, length cap, near copies, units. ``G`` is
    the round's Gram matrix, ``direction_norm`` ``|v|^2`` (``squared_norm``), ``weights`` the aggregate
    weights and ``eligible`` whether each update was neither flagged nor left out."""
    norms = [int(G[i][i]) for i in range(len(G))]
    kept = significant(round_gains, norms, direction_norm, params.min_gain_cosine_bps)
    kept = norm_capped(kept, norms, eligible)
    return round_units(kept, weights, near_copies(G, params.duplicate_cosine_bps), eligible)
