"""Stateless validity of a transaction: what a node judges from a signed tx's bytes alone.

``validate_transaction`` is the rule the STF applies to every tx of a block and the sequencer to
every submission before it looks at state (docs/PROTOCOL.md, "Transactions"). It lives apart from
``tx`` (the types and their canonical encoding) so that reading txs, as ``mpsnode inspect`` does,
needs no numpy: CREATE_TASK's weight and label checks use it.
"""

from __future__ import annotations

import numpy as np

from mpsnode.consensus.arch import param_count
from mpsnode.consensus.errors import BadSignature, FeeTooLow, InvalidField, TxTooLarge, WrongChain
from mpsnode.consensus.limits import (
    MAX_BLOCKS,
    MAX_BPS,
    MAX_CLASSES,
    MAX_CLIENTS,
    MAX_FAN_IN,
    MAX_LAYERS,
    MAX_LOCAL_EPOCHS,
    MAX_PARAMS,
    MAX_ROUNDS,
    MAX_SCALE_BITS,
    MAX_VALIDATION_SAMPLES,
    MODEL_CLAMP,
)
from mpsnode.consensus.params import Params
from mpsnode.consensus.tx import (
    SYSTEM_SENDER,
    SYSTEM_SIGNATURE,
    Aggregator,
    Body,
    CommitUpdate,
    CreateTask,
    DepositBody,
    Kind,
    RevealUpdate,
    SignedTx,
    Stake,
    Transfer,
    Unstake,
    Withdraw,
    compute_min_fee,
)


def validate_transaction(
    stx: SignedTx, chain_id: str, params: Params, *, check_signature: bool = True
) -> None:
    """Everything that can be judged without state. Raises an ``InvalidTransaction`` leaf."""
    tx = stx.tx
    if tx.chain_id != chain_id:
        raise WrongChain(chain_id, tx.chain_id)
    if stx.size > params.max_tx_bytes:
        raise TxTooLarge(stx.size, params.max_tx_bytes)
    if tx.kind == Kind.DEPOSIT:
        _check(
            tx.sender == SYSTEM_SENDER
            and tx.nonce == 0
            and tx.fee == 0
            and stx.signature == SYSTEM_SIGNATURE,
            "deposit",
            "a deposit is a system tx: zero sender, nonce, fee and signature",
        )
        return
    if tx.sender == SYSTEM_SENDER:
        raise InvalidField("sender", "the all-zero address sends only deposits")
    need = compute_min_fee(stx.size, params)
    if tx.fee < need:
        raise FeeTooLow(need, tx.fee)
    validate_body(tx.body)
    if check_signature and not stx.verify_signature():
        raise BadSignature("signature does not verify for the sender's key")


def validate_body(body: Body) -> None:
    """A body's stateless field rules; raises ``InvalidField`` (CREATE_TASK: ``validate_create_task``)."""
    if isinstance(body, (Transfer, Stake, Unstake, Withdraw, DepositBody)):
        if body.amount == 0:
            raise InvalidField("amount", "must be positive")
    elif isinstance(body, (CommitUpdate, RevealUpdate)):
        if body.round == 0:
            raise InvalidField("round", "rounds are numbered from 1")
        if isinstance(body, RevealUpdate) and (len(body.delta) == 0 or len(body.delta) % 2):
            raise InvalidField("delta", "must be a non-empty whole number of int16 values")
    elif isinstance(body, CreateTask):
        validate_create_task(body)


def _check(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise InvalidField(field, why)


def validate_create_task(body: CreateTask) -> None:
    """CREATE_TASK's stateless limits (``limits.py``); raises ``InvalidField`` naming the first field
    out of range, which makes the tx invalid (never included)."""
    arch = body.arch
    _check(2 <= len(arch) <= MAX_LAYERS, "arch", f"needs 2..{MAX_LAYERS} layer widths")
    _check(all(w >= 1 for w in arch), "arch", "every width must be at least 1")
    _check(all(w <= MAX_FAN_IN for w in arch[:-1]), "arch", f"layer fan-in must be <= {MAX_FAN_IN}")
    _check(2 <= arch[-1] <= MAX_CLASSES, "arch", f"the output layer needs 2..{MAX_CLASSES} classes")
    n_params = param_count(arch)
    _check(n_params <= MAX_PARAMS, "arch", f"{n_params} parameters exceeds the limit of {MAX_PARAMS}")
    _check(body.scale_bits <= MAX_SCALE_BITS, "scale_bits", f"must be 0..{MAX_SCALE_BITS}")
    _check(
        len(body.init_weights) == 4 * n_params,
        "init_weights",
        f"must be {4 * n_params} bytes (int32 per parameter), got {len(body.init_weights)}",
    )
    weights = np.frombuffer(body.init_weights, dtype="<i4")
    _check(
        bool(np.all(np.abs(weights.astype(np.int64)) <= MODEL_CLAMP)),
        "init_weights",
        f"every weight must be within +-{MODEL_CLAMP}",
    )
    _check(1 <= body.target_accuracy_bps <= MAX_BPS, "target_accuracy_bps", f"must be 1..{MAX_BPS}")
    _check(1 <= body.max_rounds <= MAX_ROUNDS, "max_rounds", f"must be 1..{MAX_ROUNDS}")
    _check(body.max_clients <= MAX_CLIENTS, "max_clients", f"must be <= {MAX_CLIENTS}")
    _check(body.min_clients >= 2 * body.byzantine_f + 3, "min_clients", "must be >= 2 * byzantine_f + 3")
    _check(body.min_clients <= body.max_clients, "min_clients", "must be <= max_clients")
    _check(
        body.aggregator in set(Aggregator),
        "aggregator",
        "must be " + " or ".join(f"{int(a)} ({a.name.lower()})" for a in Aggregator),
    )
    _check(1 <= body.join_blocks <= MAX_BLOCKS, "join_blocks", f"must be 1..{MAX_BLOCKS}")
    _check(1 <= body.round_blocks <= MAX_BLOCKS, "round_blocks", f"must be 1..{MAX_BLOCKS}")
    _check(1 <= body.local_epochs <= MAX_LOCAL_EPOCHS, "local_epochs", f"must be 1..{MAX_LOCAL_EPOCHS}")
    samples = len(body.val_y)
    _check(samples >= 1, "val_y", "the validation set needs at least one sample")
    _check(
        samples <= MAX_VALIDATION_SAMPLES,
        "val_y",
        f"{samples} validation samples exceeds the limit of {MAX_VALIDATION_SAMPLES}",
    )
    _check(
        len(body.val_x) == 2 * samples * arch[0],
        "val_x",
        f"must be {2 * samples * arch[0]} bytes (int16, {samples} samples x {arch[0]} inputs)",
    )
    labels = np.frombuffer(body.val_y, dtype=np.uint8)
    _check(int(labels.max()) < arch[-1], "val_y", f"labels must be < {arch[-1]} (the output width)")
