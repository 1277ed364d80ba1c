"""Benchmark: the exact integer forward pass and aggregation at about 10^6 parameters.

Prints one JSON object per result:

* ``evaluate``: ``accuracy_bps`` end to end (validation, int64 forward pass, argmax) of an MLP with
  ``arch = [256, 1024, 768, 10]`` (1,058,058 parameters, about 1.06 * 10^9 multiply-adds over 1000
  samples) at ``scale_bits = 16``; for context, the usual inexact float32 BLAS forward pass of the same
  model (conversion not timed);
* ``aggregate``: ``aggregate`` of m = 48 selected int16 deltas into a model of d = 10^6 parameters.

Times are the best of 3 after a warm-up (numba load from its cache, page faults).

    python bench/model.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpsnode.consensus import model
from mpsnode.fl import quantize


def best_of(fn: Callable[[], Any], reps: int) -> float:
    time.sleep(0.5)  # let BLAS/OpenMP worker threads from a previous call fall asleep
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def float32_forward(ws: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    a = x
    for i, (W, b) in enumerate(ws):
        a = a @ W.T + b
        if i + 1 < len(ws):
            np.maximum(a, 0, out=a)
    return np.argmax(a, axis=1)


def bench_evaluate(arch: list[int], samples: int, reps: int) -> dict[str, Any]:
    s = 16
    rng = np.random.default_rng(1)
    d = model.param_count(arch)
    floats = [rng.normal(0, 1 / np.sqrt(n_in), (n_out, n_in)) for n_in, n_out in pairwise(arch)]
    flat = np.concatenate([np.concatenate([W.ravel(), np.zeros(W.shape[0])]) for W in floats])
    weights = quantize.quantize_weights(flat, s)
    x = quantize.quantize_inputs(rng.uniform(-0.5, 0.5, (samples, arch[0])), s)
    y = rng.integers(0, arch[-1], samples).astype(np.uint8)
    macs = sum(n_in * n_out for n_in, n_out in pairwise(arch)) * samples

    exact_s = best_of(lambda: model.accuracy_bps(weights, arch, s, x, y), reps)
    ws32 = [
        (
            quantize.dequantize(weights[wsl], s).reshape(n_out, n_in).astype(np.float32),
            quantize.dequantize(weights[bsl], s).astype(np.float32),
        )
        for (wsl, bsl), n_in, n_out in zip(model.layer_slices(arch), arch[:-1], arch[1:], strict=True)
    ]
    x32 = quantize.dequantize(x, s).astype(np.float32)
    f32_s = best_of(lambda: float32_forward(ws32, x32), reps)
    agree = float(np.mean(float32_forward(ws32, x32) == model.predict(weights, arch, s, x)))
    return {
        "bench": "model_evaluate",
        "arch": arch,
        "params": d,
        "samples": samples,
        "scale_bits": s,
        "multiply_adds": macs,
        "exact_s": round(exact_s, 4),
        "gmac_per_s": round(macs / exact_s / 1e9, 2),
        "float32_blas_s": round(f32_s, 4),
        "ratio": round(exact_s / f32_s, 2),
        "float32_agreement": round(agree, 4),
        "threads": numba.get_num_threads(),
        "cpus": os.cpu_count(),
    }


def bench_aggregate(m: int, d: int, reps: int) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    w = rng.integers(-(1 << 20), 1 << 20, d).astype(np.int32)
    Q = rng.integers(-2000, 2001, (m, d)).astype(np.int16)
    exact_s = best_of(lambda: model.aggregate(w, Q), reps)
    # For context: the same arithmetic as plain numpy calls.
    numpy_s = best_of(
        lambda: np.clip(
            w + (Q.sum(axis=0, dtype=np.int64) + m // 2) // m, -model.WEIGHT_CLAMP, model.WEIGHT_CLAMP
        ).astype(np.int32),
        reps,
    )
    return {
        "bench": "model_aggregate",
        "m": m,
        "d": d,
        "values": "uniform int16 in [-2000, 2000]",
        "exact_s": round(exact_s, 4),
        "numpy_s": round(numpy_s, 4),
        "threads": numba.get_num_threads(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one timed repetition")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    if args.quick:
        print(json.dumps(bench_evaluate([64, 128, 10], 100, reps)), flush=True)
        print(json.dumps(bench_aggregate(8, 10**4, reps)), flush=True)
        return
    print(json.dumps(bench_evaluate([256, 1024, 768, 10], 1000, reps)), flush=True)
    print(json.dumps(bench_aggregate(48, 10**6, reps)), flush=True)


if __name__ == "__main__":
    main()
