"""Client-side federated learning for mpsnode tasks (numpy; not consensus code).

* ``data``: ``Dataset``, ``load_digits``, ``from_arrays``, ``make_split`` (IID or Dirichlet non-IID),
  ``quantize_validation`` (CREATE_TASK's ``val_x``/``val_y``).
* ``mlp``: the float MLP in the on-chain parameter layout (softmax cross-entropy, minibatch SGD).
* ``learner``: ``LocalLearner`` (global int32 model in, int16 delta out), ``TrainConfig``, ``LocalUpdate``.
* ``task``: ``create_task_body`` (a checked CREATE_TASK body), ``initial_weights``.
* ``attacks``: poisoning attacks for evaluation only (imported explicitly, never re-exported here).

See docs/FL.md for a walk-through.
"""

from mpsnode.fl.data import (
    Dataset,
    FederatedSplit,
    decode_validation,
    from_arrays,
    load_digits,
    make_split,
    partition_dirichlet,
    partition_iid,
    quantize_validation,
    split_validation,
)
from mpsnode.fl.learner import LocalLearner, LocalUpdate, TrainConfig, quantize_update, weights_from_bytes
from mpsnode.fl.task import DEFAULT_ARCH, DEFAULT_SCALE_BITS, create_task_body, initial_weights

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_SCALE_BITS",
    "Dataset",
    "FederatedSplit",
    "LocalLearner",
    "LocalUpdate",
    "TrainConfig",
    "create_task_body",
    "decode_validation",
    "from_arrays",
    "initial_weights",
    "load_digits",
    "make_split",
    "partition_dirichlet",
    "partition_iid",
    "quantize_update",
    "quantize_validation",
    "split_validation",
    "weights_from_bytes",
]
