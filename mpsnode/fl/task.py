"""Building CREATE_TASK from a dataset: architecture, initial model and the quantized validation set.

Client-side code, not consensus. ``create_task_body`` returns the ``mpsnode.tx.CreateTask`` body
a user signs; it runs the chain's own stateless checks (``validate_create_task``) before returning,
so a body that the chain would refuse raises ``InvalidField`` here, naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpsnode.consensus import model
from mpsnode.consensus.tx import DEFAULT_AGGREGATOR, CreateTask
from mpsnode.consensus.validation import validate_create_task
from mpsnode.fl import mlp, quantize
from mpsnode.fl.data import Dataset, quantize_validation

DEFAULT_ARCH = (64, 32, 10)  # digits: 64 pixels, one hidden layer of 32, 10 classes (2410 parameters)
DEFAULT_SCALE_BITS = 12  # deltas up to +-8.0 in steps of 2^-12; inputs in [0, 1] become 0..4096


def initial_weights(arch: Sequence[int], scale_bits: int, seed: int = 0) -> np.ndarray:
    """A seeded He-normal initial model, quantized to int32 at ``2^-scale_bits``."""
    params = mlp.init_params(arch, np.random.default_rng(seed))
    return quantize.quantize_weights(params, scale_bits)


def create_task_body(
    validation: Dataset,
    *,
    arch: Sequence[int] = DEFAULT_ARCH,
    scale_bits: int = DEFAULT_SCALE_BITS,
    target_accuracy_bps: int = 9000,
    max_rounds: int = 30,
    min_clients: int = 10,
    max_clients: int = 10,
    byzantine_f: int = 2,
    join_blocks: int = 20,
    round_blocks: int = 20,
    fee_per_round: int = 1000,
    local_epochs: int = 2,
    seed: int = 0,
    init_weights: np.ndarray | None = None,
    aggregator: int = DEFAULT_AGGREGATOR,
) -> CreateTask:
    """The CREATE_TASK body for training ``arch`` judged on ``validation``.

    ``init_weights`` (int32, on-chain layout) defaults to ``initial_weights(arch, scale_bits, seed)``.
    """
    widths = model.validate_arch(arch)
    if validation.features != widths[0]:
        raise ValueError(
            f"the validation set has {validation.features} features, the arch expects {widths[0]}"
        )
    if validation.n_classes > widths[-1]:
        raise ValueError(f"{validation.n_classes} classes but the arch has {widths[-1]} outputs")
    weights = initial_weights(widths, scale_bits, seed) if init_weights is None else init_weights
    weights = model.validate_weights(np.asarray(weights), widths)
    val_x, val_y = quantize_validation(validation, scale_bits)
    body = CreateTask(
        widths,
        scale_bits,
        weights.astype("<i4").tobytes(),
        target_accuracy_bps,
        max_rounds,
        min_clients,
        max_clients,
        byzantine_f,
        join_blocks,
        round_blocks,
        fee_per_round,
        local_epochs,
        val_x,
        val_y,
        aggregator,
    )
    validate_create_task(body)
    return body
