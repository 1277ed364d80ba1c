"""A client's local learning step: from the on-chain global model to the int16 delta it submits.

Client-side code, not consensus. Each round a ``LocalLearner`` takes the task's current global model
(the int32 weights at ``2^-scale_bits`` that the chain stores and proves), trains a float copy for
``local_epochs`` on its own data, and quantizes the change to the int16 delta of REVEAL_UPDATE:
``q = clip(round(change * 2^s), -32767, 32767)``. Values beyond int16 are clipped and counted.

Error feedback (optional): what quantization lost this round, ``change - q * 2^-s`` (rounding and
clipping), is carried and added to the next round's change, so no part of the update is lost for
good, only delayed. At 12 scale bits the rounding error (<= 2^-13 per parameter) is far below an
honest update and it matters little; it matters when updates clip or the scale is coarse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpsnode.consensus import model
from mpsnode.fl import mlp, quantize
from mpsnode.fl.data import Dataset

INT16_LIMIT = (1 << 15) - 1  # quantize_delta clips to +-32767 (symmetric)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Local optimizer settings (the task fixes only ``local_epochs``)."""

    lr: float = 0.3  # with batch 8 and 2 local epochs: digits at 90% in under 10 IID rounds of 20 clients
    batch_size: int = 8
    momentum: float = 0.0
    weight_decay: float = 0.0
    error_feedback: bool = False

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if type(self.batch_size) is not int or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}")


@dataclass(frozen=True, slots=True, eq=False)
class LocalUpdate:
    """One round's result: the int16 delta to submit and what went into it."""

    delta: np.ndarray  # int16, one entry per parameter, units of 2^-scale_bits
    change: np.ndarray  # float64: the trained change (plus carried error with error feedback)
    clipped: int  # entries of ``change * 2^s`` beyond +-32767, clipped in ``delta``
    loss: float  # mean minibatch loss of the last local epoch
    samples: int

    def to_bytes(self) -> bytes:
        """REVEAL_UPDATE's ``delta`` field: int16 little-endian."""
        return self.delta.astype("<i2").tobytes()


def quantize_update(change: np.ndarray, scale_bits: int) -> tuple[np.ndarray, int]:
    """``(int16 delta, clipped count)`` of a float change at ``2^-scale_bits``."""
    scaled = np.rint(np.asarray(change, dtype=np.float64) * float(1 << model.validate_scale_bits(scale_bits)))
    if not np.isfinite(scaled).all():
        raise ValueError("the update holds NaN or infinite values")
    clipped = int(np.count_nonzero(np.abs(scaled) > INT16_LIMIT))
    return quantize.quantize_delta(change, scale_bits), clipped


def weights_from_bytes(blob: bytes, arch: Sequence[int]) -> np.ndarray:
    """The int32 weights of an on-chain model blob (int32 little-endian), checked against ``arch``."""
    w = np.frombuffer(blob, dtype="<i4").astype(np.int32)
    return model.validate_weights(w, arch)


class LocalLearner:
    """Trains on one client's data, round after round, and returns the int16 delta to submit.

    ``seed`` fixes the minibatch order, so a run is reproducible. The learner keeps only the
    error-feedback residual between rounds; the model always starts from the global weights given.
    """

    def __init__(
        self, data: Dataset, arch: Sequence[int], config: TrainConfig | None = None, seed: int = 0
    ) -> None:
        self.arch = model.validate_arch(arch)
        if data.features != self.arch[0]:
            raise ValueError(f"the data has {data.features} features, the arch expects {self.arch[0]}")
        if data.n_classes > self.arch[-1]:
            raise ValueError(f"{data.n_classes} classes but the arch has {self.arch[-1]} outputs")
        if len(data) == 0:
            raise ValueError("a learner needs at least one sample")
        self.data = data
        self.config = config or TrainConfig()
        self.rng = np.random.default_rng(seed)
        self.residual = np.zeros(model.param_count(self.arch), dtype=np.float64)

    def train_round(self, global_weights: np.ndarray, scale_bits: int, local_epochs: int) -> LocalUpdate:
        """Train ``local_epochs`` from ``global_weights`` (int32, on-chain) and quantize the change."""
        w = model.validate_weights(np.asarray(global_weights), self.arch)
        start = quantize.dequantize(w, scale_bits)
        cfg = self.config
        trained, loss = mlp.train_sgd(
            start,
            self.arch,
            self.data.x,
            self.data.y,
            epochs=local_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            rng=self.rng,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        change = trained - start
        if cfg.error_feedback:
            change = change + self.residual
        delta, clipped = quantize_update(change, scale_bits)
        if cfg.error_feedback:
            self.residual = change - quantize.dequantize(delta, scale_bits)
        return LocalUpdate(delta, change, clipped, loss, len(self.data))

    def reset(self) -> None:
        """Forget the error-feedback residual (for a new task)."""
        self.residual[...] = 0.0
