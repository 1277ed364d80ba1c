"""A verifier's verdict on one block: the state transition's named failure, as a ``Divergence``.

The verifier daemon, ``mpsnode replay`` and the replay of a divergence bundle all check a block
with ``verify_block``, and ``verify_block`` is ``state_transition`` (``mpsnode.consensus.stf``),
the one entry point every node applies blocks with. Nothing here restates a consensus rule or
orders the checks: the transition raises the first failure as an ``InvalidBlock`` leaf naming
its check (``CHECKS``), and ``divergence_from`` writes that leaf's typed fields down as
"computed locally" vs "claimed by the block" for the report.

Work that needs neither the parent nor the state (decoding, the sequencer's and every tx's
signature, the tx root) is done by ``precheck_many``, which a caller may run ahead on another
thread: its signatures are checked in one batch (``mpsnode.consensus.sigverify``, outside the
GIL), and the transition takes the results as its ``Verdicts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mpsnode.consensus.block import Block, Header, decode_block
from mpsnode.consensus.errors import (
    BadBlockSignature,
    BadL1Origin,
    BadTimestamp,
    BlockDecodeError,
    BlockHasInvalidTx,
    BlockTooLarge,
    DepositOverdue,
    FeeTooLow,
    FeeUnpayable,
    InvalidBlock,
    InvalidField,
    InvalidTransaction,
    MpsError,
    NonceMismatch,
    RootMismatch,
    TxTooLarge,
    WrongBlockChain,
    WrongChain,
    WrongHeight,
    WrongParent,
)
from mpsnode.consensus.settlement import L1Facts
from mpsnode.consensus.sigverify import verify_batch
from mpsnode.consensus.smt import SparseMerkleTree
from mpsnode.consensus.state import Config, State
from mpsnode.consensus.stf.transition import (
    BLOCK_SIZE,
    CANONICAL_ENCODING,
    CHAIN_ID,
    CHECKS,
    HEIGHT,
    PARENT_HASH,
    RECEIPTS_ROOT,
    SEQUENCER_SIGNATURE,
    STATE_ROOT,
    TIMESTAMP,
    TX_CHAIN_ID,
    TX_FEE,
    TX_FEE_UNPAYABLE,
    TX_FIELD,
    TX_NONCE,
    TX_ROOT,
    TX_SIGNATURE,
    TX_SIZE,
    BlockResult,
    Verdicts,
    Verify,
    assemble_verdicts,
    compute_signature_items,
    state_transition,
    verify_each,
)
from mpsnode.consensus.tx import hash_ahead

__all__ = [
    "BLOCK_SIZE",
    "CANONICAL_ENCODING",
    "CHAIN_ID",
    "CHECKS",
    "HEIGHT",
    "PARENT_HASH",
    "RECEIPTS_ROOT",
    "SEQUENCER_SIGNATURE",
    "STATE_ROOT",
    "TIMESTAMP",
    "TX_CHAIN_ID",
    "TX_FEE",
    "TX_FEE_UNPAYABLE",
    "TX_FIELD",
    "TX_NONCE",
    "TX_ROOT",
    "TX_SIGNATURE",
    "TX_SIZE",
    "Divergence",
    "Prechecked",
    "divergence_from",
    "precheck",
    "precheck_many",
    "verify_block",
    "verify_signatures",
    "verify_unsplit",
]


class Divergence(MpsError):
    """A block failed a check: ``check`` names which (``CHECKS``), at ``height``.

    ``computed`` is what this node derived, ``claimed`` what the block says (JSON-able values);
    ``tx_index`` names the offending tx for tx checks; ``block`` is the decoded block (None when it
    does not decode), ``result`` the local execution's result when the roots were compared, and
    ``cause`` the state transition's own failure (an ``InvalidBlock`` leaf); ``l1`` the L1 facts
    the block was judged with (settlement mode), which a replay bundle carries.
    """

    code = 720

    def __init__(
        self,
        check: str,
        height: int,
        reason: str,
        *,
        computed: object = None,
        claimed: object = None,
        tx_index: int | None = None,
        block: Block | None = None,
        result: BlockResult | None = None,
        cause: InvalidBlock | None = None,
        l1: L1Facts | None = None,
    ) -> None:
        super().__init__(f"block {height} fails {check}: {reason}")
        self.check, self.height, self.detail = check, height, reason
        self.computed, self.claimed, self.tx_index = computed, claimed, tx_index
        self.block, self.result, self.cause = block, result, cause
        self.l1 = l1  # the L1 facts the block was judged with (settlement mode)


#: Below this many signatures a block is checked one signature at a time: the batch kernel costs
#: a JIT compile (about half a second) on first use, which small blocks never earn back.
BATCH_MIN = 64
SPLIT_MIN = 512  # from here a batch is checked in two halves at once


def verify_unsplit(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """A ``Verify`` equal to ``verify_each``, batched when it pays, all on the calling thread."""
    if len(items) < BATCH_MIN:
        return verify_each(items)
    return verify_batch(items)


def verify_signatures(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """A ``Verify`` equal to ``verify_each``, batched when it pays.

    A large batch is split in two, the second half checked on a helper thread at the same time
    (the kernel runs outside the GIL), which halves a big block's wait on a free core.
    """
    if len(items) < SPLIT_MIN:
        return verify_unsplit(items)
    half = len(items) // 2
    second = _helper().submit(verify_batch, items[half:])
    first = verify_batch(items[:half])
    return first + second.result()


_HELPER: ThreadPoolExecutor | None = None


def _helper() -> ThreadPoolExecutor:
    global _HELPER
    if _HELPER is None:
        _HELPER = ThreadPoolExecutor(1, thread_name_prefix="signatures")
    return _HELPER


@dataclass(frozen=True, slots=True)
class Prechecked:
    """What a block's bytes alone decide: the block (or why it does not decode) and its ``Verdicts``."""

    height: int  # the height the block was served as
    data: bytes
    block: Block | None
    decode_error: BlockDecodeError | None
    verdicts: Verdicts | None


def precheck(height: int, data: bytes, config: Config, verify: Verify = verify_signatures) -> Prechecked:
    """Decode ``data`` and check its signatures and tx root; never raises for bad input."""
    return precheck_many([(height, data)], config, verify)[0]


def precheck_many(
    items: Sequence[tuple[int, bytes]], config: Config, verify: Verify = verify_signatures
) -> list[Prechecked]:
    """``precheck`` of many blocks, with every signature (sequencer's and txs') in one batch, and
    their revealed deltas hashed on the same thread (``hash_deltas``)."""
    decoded, triples = decode_many(items, config)
    oks = verify(triples)
    hash_deltas(decoded)
    return assemble(decoded, oks)


Decoded = tuple[int, bytes, "Block | None", "BlockDecodeError | None"]  # (height, data, block, decode error)


def decode_many(
    items: Sequence[tuple[int, bytes]], config: Config
) -> tuple[list[Decoded], list[tuple[bytes, bytes, bytes]]]:
    """The first half of ``precheck_many``: decoded blocks, and the signatures to check, in order.

    A caller can check the signatures elsewhere (the batch kernel runs outside the GIL) and
    hand the results to ``assemble``.
    """
    decoded: list[Decoded] = []
    triples: list[tuple[bytes, bytes, bytes]] = []
    for height, data in items:
        try:
            block = decode_block(data, max_bytes=max(config.params.max_block_bytes, len(data)))
        except BlockDecodeError as exc:
            decoded.append((height, data, None, exc))
            continue
        decoded.append((height, data, block, None))
        triples.extend(compute_signature_items(block, config.sequencer))
    return decoded, triples


def hash_deltas(decoded: list[Decoded]) -> None:
    """The decoded blocks' REVEAL_UPDATE deltas hashed now (``tx.hash_ahead``): a precheck runs
    off the thread that executes blocks, which then finds the hashes done."""
    for _, _, block, _ in decoded:
        if block is not None:
            hash_ahead(block.txs)


def assemble(decoded: list[Decoded], oks: Sequence[bool]) -> list[Prechecked]:
    """The second half: each block with its signature results (in ``decode_many``'s order)."""
    out: list[Prechecked] = []
    at = 0
    for height, data, block, error in decoded:
        if block is None:
            out.append(Prechecked(height, data, None, error, None))
            continue
        n = 1 + len(block.txs)
        out.append(Prechecked(height, data, block, None, assemble_verdicts(block, oks[at : at + n])))
        at += n
    return out


def verify_block(
    pre: Prechecked,
    parent: Header,
    state: State,
    tree: SparseMerkleTree,
    config: Config,
    l1: L1Facts | None = None,
) -> tuple[Block, BlockResult]:
    """Check and re-execute one block on ``state``/``tree`` (at ``parent``'s root) with the state
    transition: ``(block, result)`` to commit, or the first failed check as a ``Divergence``.
    ``l1``: settlement mode, the L1 facts of the block's origin."""
    height = parent.height + 1
    if pre.block is None or pre.verdicts is None:
        reason = pre.decode_error.reason if pre.decode_error is not None else "the block does not decode"
        raise Divergence(CANONICAL_ENCODING, height, reason, claimed=reason, cause=pre.decode_error)
    try:
        result = state_transition(state, tree, pre.block, parent, config, verdicts=pre.verdicts, l1=l1)
    except InvalidBlock as exc:
        failure = divergence_from(exc, height, pre.block)
        failure.l1 = l1
        raise failure from None
    return pre.block, result


_ROOT_REASONS = {
    TX_ROOT: "the txs do not hash to the header's tx_root",
    RECEIPTS_ROOT: "the re-executed receipts do not hash to the header's receipts_root",
    STATE_ROOT: "the re-executed state does not hash to the header's state_root",
}


def divergence_from(exc: InvalidBlock, height: int, block: Block) -> Divergence:
    """The report's view of a failed check: ``exc``'s typed fields as computed vs claimed."""
    computed: object = None
    claimed: object = None
    reason = exc.reason
    tx_index: int | None = None
    result: BlockResult | None = None
    if isinstance(exc, BadBlockSignature):
        computed = {"sequencer": exc.sequencer.hex(), "block_hash": exc.block_hash.hex()}
        claimed = {"signature": exc.signature.hex()}
    elif isinstance(exc, (WrongBlockChain, WrongHeight)):
        computed, claimed = exc.expected, exc.got
    elif isinstance(exc, WrongParent):
        computed, claimed = exc.expected.hex(), exc.got.hex()
    elif isinstance(exc, BadTimestamp):
        computed, claimed = {"min_timestamp_ms": exc.parent_ms + 1}, exc.got
    elif isinstance(exc, BlockTooLarge):
        computed, claimed = exc.limit, exc.size
    elif isinstance(exc, DepositOverdue):
        computed = {
            "overdue_deposit": exc.index,
            "made_in_l1_block": exc.l1_block,
            "due_by": exc.l1_block + exc.window,
        }
        claimed = {"l1_origin": exc.origin, "credited": False}
    elif isinstance(exc, BadL1Origin):
        computed, claimed = {"parent_l1_origin": exc.parent}, {"l1_origin": exc.got}
    elif isinstance(exc, BlockHasInvalidTx):
        tx_index = exc.index
        stx = block.txs[exc.index]
        computed, claimed = _tx_values(exc.cause, stx.tx.sender, stx.tx_id, stx.signature)
        reason = f"tx {exc.index} ({stx.tx_id.hex()}): {exc.cause.reason}"
    elif isinstance(exc, RootMismatch):
        computed, claimed = exc.computed.hex(), exc.claimed.hex()
        reason = _ROOT_REASONS.get(exc.which, reason)
        result = exc.result if isinstance(exc.result, BlockResult) else None
    return Divergence(
        exc.check,
        height,
        reason,
        computed=computed,
        claimed=claimed,
        tx_index=tx_index,
        block=block,
        result=result,
        cause=exc,
    )


def _tx_values(
    cause: InvalidTransaction, sender: bytes, tx_id: bytes, signature: bytes
) -> tuple[object, object]:
    if cause.check == TX_SIGNATURE:
        return (
            {"signature_valid": False, "sender": sender.hex(), "tx_id": tx_id.hex()},
            {"signature": signature.hex()},
        )
    if isinstance(cause, WrongChain):
        return cause.expected, cause.got
    if isinstance(cause, TxTooLarge):
        return {"limit": cause.limit}, {"size": cause.size}
    if isinstance(cause, FeeTooLow):
        return {"min_fee": cause.need}, {"fee": cause.got}
    if isinstance(cause, InvalidField):
        return {"rule": cause.why}, {"field": cause.field}
    if isinstance(cause, NonceMismatch):
        return {"nonce": cause.expected}, {"nonce": cause.got}
    if isinstance(cause, FeeUnpayable):
        return {"balance": cause.balance}, {"fee": cause.fee}
    return None, cause.reason
