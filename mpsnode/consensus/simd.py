"""An exact int16 multiply-add in LLVM vector IR, for the Gram kernel (``krum``).

numba's auto-vectorizer turns the Gram kernel's int32 loop into 128-bit code that widens every
int16 with a shuffle before multiplying (4 products per instruction, bound by the shuffle port).
``madd_tile3`` writes the loop itself as a numba intrinsic in LLVM's target-independent vector IR:
load ``LANES`` int16 of a row, sign-extend to int32, multiply, add adjacent pairs, add to an
accumulator. LLVM selects the instructions for the CPU it compiles on (``vpdpwssd`` with AVX-512
VNNI, ``vpmaddwd`` + ``vpaddd`` with AVX2 or SSE2), and every one of them computes the same
integers: IR ``mul`` and ``add`` on i32 are two's-complement (wrapping) operations, defined
bit for bit on every target.

Exactness (the caller's duty): each of the ``LANES // 2`` int32 lanes of an accumulator receives two
products per step. After ``steps`` steps over rows whose ``|q|`` are bounded by ``mx`` and ``my`` the
lane holds a sum of ``2 * steps`` products, each of magnitude at most ``mx * my``; with
``2 * steps * mx * my <= 2^31 - 1`` the true sum fits an int32, so the wrapped sum equals it (an
intermediate pair sum may wrap, e.g. two products of 2^30, but arithmetic modulo 2^32 gives back
the true value whenever that value fits). The lanes are then added in int64.

``LANES`` follows the host: 32 int16 (one 512-bit register) where LLVM reports AVX-512BW, else 16
(one 256-bit register), so the tile's 9 accumulators and 6 rows fit the register file either way.
The lane count changes how the exact products are grouped, never their sum.

``madd_tile3_reference`` is the plain twin (numpy int64, wrapped to int32 at the end); with numba's
JIT disabled (``NUMBA_DISABLE_JIT=1``) it is what ``madd_tile3`` names, since an intrinsic only runs
compiled. tests/test_krum.py holds the two equal, wrapping cases included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 32 if "+avx512bw" in llvm.get_host_cpu_features().flatten() else 16
ACC_LANES = LANES // 2  # int32 lanes of an accumulator

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)


def _emit_step(builder: Any, ptrs: list[Any], col: Any, accs: list[Any]) -> None:
    """One step of a 3 x 3 tile in IR: load ``LANES`` int16 from column ``col`` of each of the six
    rows at ``ptrs`` (addresses as i64: x0..x2, then y0..y2), sign-extend to int32, multiply each x by
    each y, add adjacent products in pairs and add them to the int32 accumulators ``accs`` (wrapping)."""
    load_t = ir.VectorType(_I16, LANES)
    wide_t = ir.VectorType(_I32, LANES)
    even = ir.Constant(ir.VectorType(_I32, ACC_LANES), [2 * i for i in range(ACC_LANES)])
    odd = ir.Constant(ir.VectorType(_I32, ACC_LANES), [2 * i + 1 for i in range(ACC_LANES)])
    offset = builder.mul(col, ir.Constant(_I64, 2))

    def load(ptr: Any) -> Any:
        address = builder.inttoptr(builder.add(ptr, offset), load_t.as_pointer())
        return builder.sext(builder.load(address, align=2), wide_t)

    xs = [load(p) for p in ptrs[:3]]
    ys = [load(p) for p in ptrs[3:]]
    for r in range(3):
        for s in range(3):
            m = builder.mul(xs[r], ys[s])
            pairs = builder.add(builder.shuffle_vector(m, m, even), builder.shuffle_vector(m, m, odd))
            acc = accs[3 * r + s]
            builder.store(builder.add(builder.load(acc), pairs), acc)


def madd_tile3_reference(
    Q: np.ndarray,
    x0: int,
    x1: int,
    x2: int,
    y0: int,
    y1: int,
    y2: int,
    start: int,
    steps: int,
    out: np.ndarray,
) -> None:
    """``madd_tile3`` in numpy: exact int64 products, paired and summed per lane, wrapped to int32."""
    end = start + steps * LANES
    for r, xr in enumerate((x0, x1, x2)):
        for c, yc in enumerate((y0, y1, y2)):
            m = Q[xr, start:end].astype(np.int64) * Q[yc, start:end].astype(np.int64)
            lanes = (m[0::2] + m[1::2]).reshape(steps, ACC_LANES).sum(axis=0)
            out[3 * r + c] = ((lanes + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


@intrinsic
def _madd_tile3(
    typingctx: Any,
    Q: Any,
    x0: Any,
    x1: Any,
    x2: Any,
    y0: Any,
    y1: Any,
    y2: Any,
    start: Any,
    steps: Any,
    out: Any,
) -> Any:
    """``out[3 * r + s, l]`` = lane ``l`` of the sum over ``steps`` steps of ``LANES`` columns from
    ``start`` of ``Q[xr] * Q[ys]``, products of adjacent columns added in pairs (int32, wrapping).

    ``Q``: a C-contiguous int16 matrix; ``x0..y2``: row indices (in range); ``out``: a C-contiguous
    int32 ``(9, ACC_LANES)`` array. The caller keeps ``start + steps * LANES`` within the row.
    """
    sig = types.void(Q, x0, x1, x2, y0, y1, y2, start, steps, out)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        q = context.make_array(signature.args[0])(context, builder, args[0])
        o = context.make_array(signature.args[9])(context, builder, args[9])
        rows = [builder.sext(a, _I64) if a.type != _I64 else a for a in args[1:7]]
        start_v, steps_v = args[7], args[8]
        acc_t = ir.VectorType(_I32, ACC_LANES)
        base = builder.ptrtoint(q.data, _I64)
        row_bytes = builder.extract_value(q.strides, 0)
        ptrs = [builder.add(base, builder.mul(r, row_bytes)) for r in rows]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_t, None)) for _ in range(9)]
        with cgutils.for_range(builder, steps_v) as loop:
            _emit_step(
                builder, ptrs, builder.add(start_v, builder.mul(loop.index, ir.Constant(_I64, LANES))), accs
            )
        out_base = builder.ptrtoint(o.data, _I64)
        out_row = builder.extract_value(o.strides, 0)
        for t in range(9):
            address = builder.add(out_base, builder.mul(ir.Constant(_I64, t), out_row))
            builder.store(builder.load(accs[t]), builder.inttoptr(address, acc_t.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


#: What the Gram kernel calls (typed loosely: the intrinsic's own signature starts with numba's context).
madd_tile3: Callable[..., None] = madd_tile3_reference if numba.config.DISABLE_JIT else _madd_tile3  # type: ignore[attr-defined]


def madd_cross3_reference(
    X: np.ndarray,
    Y: np.ndarray,
    x0: int,
    x1: int,
    x2: int,
    y0: int,
    y1: int,
    y2: int,
    start: int,
    runs: int,
    run_steps: int,
    shift: int,
    out: np.ndarray,
) -> None:
    """``madd_cross3`` in numpy: each run's lanes summed exactly and wrapped to int32, their two
    halves added in int64, and the total shifted and added to ``out`` (int64, wrapping)."""
    width = run_steps * LANES
    half = ACC_LANES // 2
    for r, xr in enumerate((x0, x1, x2)):
        for c, yc in enumerate((y0, y1, y2)):
            total = np.zeros(half, np.int64)
            for run in range(runs):
                a = start + run * width
                m = X[xr, a : a + width].astype(np.int64) * Y[yc, a : a + width].astype(np.int64)
                lanes = (m[0::2] + m[1::2]).reshape(run_steps, ACC_LANES).sum(axis=0)
                wrapped = (lanes + (1 << 31)) % (1 << 32) - (1 << 31)
                total += wrapped[:half] + wrapped[half:]
            with np.errstate(over="ignore"):
                out[3 * r + c] += total << np.int64(shift)


@intrinsic
def _madd_cross3(
    typingctx: Any,
    X: Any,
    Y: Any,
    x0: Any,
    x1: Any,
    x2: Any,
    y0: Any,
    y1: Any,
    y2: Any,
    start: Any,
    runs: Any,
    run_steps: Any,
    shift: Any,
    out: Any,
) -> Any:
    """``out[3 * r + s, l] +=`` (lane ``l`` of the sum over ``runs`` runs of ``run_steps`` steps of
    ``LANES`` columns from ``start`` of ``X[xr] * Y[ys]``) ``<< shift``: products of adjacent columns
    added in pairs, a run summed in int32 lanes (wrapping), each run's lanes then sign-extended and
    their two halves added into ``ACC_LANES // 2`` int64 lanes (wrapping, as the shift and the add).

    ``X``, ``Y``: C-contiguous int16 matrices with the same number of columns; ``out``: a C-contiguous
    int64 ``(9, ACC_LANES // 2)`` array. The caller keeps ``start + runs * run_steps * LANES`` within the
    rows, and ``2 * run_steps * max|x| * max|y| <= 2^31 - 1`` so that each run's lanes are exact.
    """
    sig = types.void(X, Y, x0, x1, x2, y0, y1, y2, start, runs, run_steps, shift, out)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        xa = context.make_array(signature.args[0])(context, builder, args[0])
        ya = context.make_array(signature.args[1])(context, builder, args[1])
        o = context.make_array(signature.args[12])(context, builder, args[12])
        rows = [builder.sext(a, _I64) if a.type != _I64 else a for a in args[2:8]]
        start_v, runs_v, run_steps_v, shift_v = (
            builder.sext(a, _I64) if a.type != _I64 else a for a in args[8:12]
        )
        acc_t = ir.VectorType(_I32, ACC_LANES)
        acc64_t = ir.VectorType(_I64, ACC_LANES // 2)
        low = ir.Constant(ir.VectorType(_I32, ACC_LANES // 2), list(range(ACC_LANES // 2)))
        high = ir.Constant(ir.VectorType(_I32, ACC_LANES // 2), list(range(ACC_LANES // 2, ACC_LANES)))
        ptrs = []
        for arr, rs in ((xa, rows[:3]), (ya, rows[3:])):
            base = builder.ptrtoint(arr.data, _I64)
            row_bytes = builder.extract_value(arr.strides, 0)
            ptrs += [builder.add(base, builder.mul(r, row_bytes)) for r in rs]
        out_base = builder.ptrtoint(o.data, _I64)
        out_row = builder.extract_value(o.strides, 0)
        out_ptrs = [
            builder.inttoptr(
                builder.add(out_base, builder.mul(ir.Constant(_I64, t), out_row)), acc64_t.as_pointer()
            )
            for t in range(9)
        ]
        wides = [cgutils.alloca_once_value(builder, ir.Constant(acc64_t, None)) for _ in out_ptrs]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_t, None)) for _ in range(9)]
        shifts = builder.insert_element(ir.Constant(acc64_t, None), shift_v, ir.Constant(_I32, 0))
        shifts = builder.shuffle_vector(
            shifts, shifts, ir.Constant(ir.VectorType(_I32, ACC_LANES // 2), [0] * (ACC_LANES // 2))
        )
        step_cols = builder.mul(run_steps_v, ir.Constant(_I64, LANES))
        with cgutils.for_range(builder, runs_v) as run:
            run_start = builder.add(start_v, builder.mul(run.index, step_cols))
            for acc in accs:
                builder.store(ir.Constant(acc_t, None), acc)
            with cgutils.for_range(builder, run_steps_v) as loop:
                col = builder.add(run_start, builder.mul(loop.index, ir.Constant(_I64, LANES)))
                _emit_step(builder, ptrs, col, accs)
            for acc, wide in zip(accs, wides, strict=True):
                run_sum = builder.load(acc)
                halves = builder.add(
                    builder.sext(builder.shuffle_vector(run_sum, run_sum, low), acc64_t),
                    builder.sext(builder.shuffle_vector(run_sum, run_sum, high), acc64_t),
                )
                builder.store(builder.add(builder.load(wide), halves), wide)
        for wide, p in zip(wides, out_ptrs, strict=True):
            total = builder.add(builder.load(p, align=8), builder.shl(builder.load(wide), shifts))
            builder.store(total, p, align=8)
        return context.get_dummy_value()

    return sig, codegen


#: What the layer kernel calls (``model``); the reference twin where numba's JIT is disabled.
madd_cross3: Callable[..., None] = madd_cross3_reference if numba.config.DISABLE_JIT else _madd_cross3  # type: ignore[attr-defined]
