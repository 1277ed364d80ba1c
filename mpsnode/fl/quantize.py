"""Fixed point for clients: floats in, the integers CREATE_TASK and REVEAL_UPDATE carry out, and back.

NOT consensus code: floats are fine here. A value ``v`` at scale ``s`` travels as the integer
nearest ``v * 2^s`` (ties to even), clipped to its field's range: int32 within the model clamp for
weights, int16 (+-32767) for validation inputs and update deltas. The chain itself only ever
reads the integers (``mpsnode.consensus.model``).
"""

from __future__ import annotations

import numpy as np

from mpsnode.consensus.model import WEIGHT_CLAMP, validate_scale_bits


def _quantize(values: np.ndarray, scale_bits: int, bound: int, dtype: type[np.integer]) -> np.ndarray:
    s = validate_scale_bits(scale_bits)
    scaled = np.rint(np.asarray(values, dtype=np.float64) * float(1 << s))  # nearest, ties to even
    if np.isnan(scaled).any():
        raise ValueError("cannot quantize NaN")
    return np.clip(scaled, -bound, bound).astype(dtype)


def quantize_weights(float_weights: np.ndarray, scale_bits: int) -> np.ndarray:
    """Round ``float_weights * 2^s`` to the nearest int32, clipped to the model clamp."""
    return _quantize(float_weights, scale_bits, WEIGHT_CLAMP, np.int32)


def quantize_inputs(float_x: np.ndarray, scale_bits: int) -> np.ndarray:
    """Round ``float_x * 2^s`` to the nearest int16, clipped to +-32767 (val_x for CREATE_TASK)."""
    return _quantize(float_x, scale_bits, (1 << 15) - 1, np.int16)


def quantize_delta(float_delta: np.ndarray, scale_bits: int) -> np.ndarray:
    """Round an update ``float_delta * 2^s`` to the nearest int16, clipped to +-32767 (REVEAL_UPDATE)."""
    return _quantize(float_delta, scale_bits, (1 << 15) - 1, np.int16)


def dequantize(q: np.ndarray, scale_bits: int) -> np.ndarray:
    """The float64 values ``q * 2^-s`` of fixed-point integers (weights, inputs or deltas)."""
    s = validate_scale_bits(scale_bits)
    return np.asarray(q, dtype=np.float64) / float(1 << s)
