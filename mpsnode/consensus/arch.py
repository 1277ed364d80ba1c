"""A model's shape: layer widths ``[in, h1, ..., out]`` and the flat layout of its parameters.

Per layer, weights row-major (``out x in``), then the ``out`` biases; layers in order. Kept apart
from the kernels (``model.py``, numba) so that a tx can be validated without compiling anything.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import pairwise

__all__ = ["layer_slices", "param_count", "validate_arch"]


def validate_arch(arch: Sequence[int]) -> tuple[int, ...]:
    """``arch`` as a tuple of ints: at least two widths, each at least 1."""
    try:
        widths = tuple(operator.index(w) for w in arch)
    except TypeError:
        raise ValueError(f"arch must be a sequence of ints, got {arch!r}") from None
    if len(widths) < 2:
        raise ValueError(f"arch needs at least an input and an output width, got {widths}")
    if any(w < 1 for w in widths):
        raise ValueError(f"every layer width must be at least 1, got {widths}")
    return widths


def param_count(arch: Sequence[int]) -> int:
    """Number of parameters: ``sum(out * in + out)`` over the layers."""
    widths = validate_arch(arch)
    return sum(n_out * n_in + n_out for n_in, n_out in pairwise(widths))


def layer_slices(arch: Sequence[int]) -> list[tuple[slice, slice]]:
    """Per layer, the ``(weights, biases)`` slices of the flat parameter vector.

    ``params[weights].reshape(out, in)`` is the layer's weight matrix, ``params[biases]`` its biases.
    """
    widths = validate_arch(arch)
    out: list[tuple[slice, slice]] = []
    start = 0
    for n_in, n_out in pairwise(widths):
        w_end = start + n_out * n_in
        b_end = w_end + n_out
        out.append((slice(start, w_end), slice(w_end, b_end)))
        start = b_end
    return out
