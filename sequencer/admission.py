"""Admission: whether the sequencer takes a decoded, signature-checked tx into its mempool.

The consensus checks come first and elsewhere (``decode_signed_tx``, ``validate_transaction``,
the signature). Here is what is judged against the latest state and what is pending:

1. not a duplicate: the tx id is neither pending nor included (``AlreadyKnown``);
2. the nonce is not below the account's next nonce (``NonceMismatch``), not ``nonce_window`` or
   more ahead of it (``NonceTooFarAhead``), and no other pending tx holds it (``NonceConflict``);
3. the fee is payable: the balance covers this fee plus the fees of the sender's pending txs
   (``FeeUnpayable``);
4. the caps: per sender (txs and bytes, ``SenderLimit``) and global (txs and bytes, ``MempoolFull``).

A tx ahead of the account's nonce is admitted and waits in the mempool for the gap to fill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mpsnode.consensus.errors import FeeUnpayable, NonceMismatch
from mpsnode.consensus.state import Account
from mpsnode.consensus.tx import SignedTx
from mpsnode.node.errors import AlreadyKnown, MempoolFull, NonceConflict, NonceTooFarAhead, SenderLimit
from sequencer.mempool import MempoolIndex

GIB, MIB = 1 << 30, 1 << 20


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    nonce_window: int = 64  # how far ahead of the account's next nonce a tx may be
    max_sender_txs: int = 64
    max_sender_bytes: int = 256 * MIB
    max_txs: int = 200_000
    max_bytes: int = 2 * GIB


def check_admission(
    stx: SignedTx,
    size: int,
    account: Account,
    index: MempoolIndex,
    policy: AdmissionPolicy,
    included_at: Callable[[bytes], int | None],
) -> None:
    """Raise the reason ``stx`` is refused, or return if it may enter the mempool."""
    tx = stx.tx
    if stx.tx_id in index:
        raise AlreadyKnown(stx.tx_id, "pending")
    if tx.nonce < account.nonce:
        # an included tx has a nonce below the account's: only then can it be a resubmission
        height = included_at(stx.tx_id)
        if height is not None:
            raise AlreadyKnown(stx.tx_id, f"included in block {height}")
        raise NonceMismatch(account.nonce, tx.nonce)
    if tx.nonce >= account.nonce + policy.nonce_window:
        raise NonceTooFarAhead(tx.nonce, account.nonce, policy.nonce_window)
    other = index.by_nonce(tx.sender, tx.nonce)
    if other is not None:
        raise NonceConflict(tx.nonce, other.tx_id)
    pending_fees = index.sender_fees(tx.sender)
    if account.balance < pending_fees + tx.fee:
        if pending_fees:
            raise FeeUnpayable(tx.fee, max(account.balance - pending_fees, 0))
        raise FeeUnpayable(tx.fee, account.balance)
    if index.sender_count(tx.sender) >= policy.max_sender_txs:
        raise SenderLimit(
            f"sender has {index.sender_count(tx.sender)} pending txs, the limit; wait for a block"
        )
    if index.sender_bytes(tx.sender) + size > policy.max_sender_bytes:
        raise SenderLimit(
            f"sender's pending txs would exceed {policy.max_sender_bytes} bytes; wait for a block"
        )
    if index.count >= policy.max_txs or index.bytes + size > policy.max_bytes:
        raise MempoolFull(f"mempool holds {index.count} txs / {index.bytes} bytes, the limit; retry later")
