"""Every check a verifier makes on a block, in one place, each failing with a named reason.

The verifier daemon, ``mpsnode replay`` and the replay of a divergence bundle all go through
this module, and this module goes through the STF itself (``mpsnode.stf.block``): the header
rules are ``validate_header``, the tx rules ``validate_transaction``, and re-execution is
``execute_block``, the very function the sequencer builds blocks with. Nothing here restates a
consensus rule; it only orders the checks and names what failed.

The checks, in the order they run (``CHECKS``); the first that fails raises ``Divergence``:

============================  ===================================================================
canonical_encoding            the bytes decode as a block and re-encode to the same bytes
sequencer_signature           the header is signed by the genesis sequencer key
chain_id                      the header names this chain
height                        the header's height is the parent's + 1
parent_hash                   the header names the parent's hash
timestamp                     the timestamp is strictly after the parent's
block_size                    the txs total at most ``max_block_bytes``
tx_chain_id ... tx_signature  each tx in order: its chain id, size, fee, fields, signature
tx_root                       the header's tx_root commits to exactly these txs in this order
tx_nonce, tx_fee_unpayable    each tx is valid against the state it runs on
receipts_root                 the re-executed receipts hash to the header's receipts_root
state_root                    the re-executed state hashes to the header's state_root
============================  ===================================================================

Work that needs neither the parent nor the state (decoding, the sequencer signature, the tx
signatures as one batch, the tx root) is done by ``precheck``, which a caller may run ahead on
another thread; ``check_block`` then runs the checks above in order from its results, so the
outcome never depends on how the work was split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mpsnode.consensus.block import Block, Header, compute_tx_root, decode_block
from mpsnode.consensus.errors import (
    BadTimestamp,
    BlockDecodeError,
    BlockHasInvalidTx,
    Divergence,
    FeeTooLow,
    FeeUnpayable,
    InvalidField,
    InvalidTransaction,
    NonceMismatch,
    TxTooLarge,
    WrongBlockChain,
    WrongChain,
    WrongHeight,
    WrongParent,
)
from mpsnode.consensus.sigverify import verify_batch
from mpsnode.consensus.smt import SparseMerkleTree
from mpsnode.consensus.state import Config, State
from mpsnode.consensus.stf.block import BlockResult, execute_block, validate_header
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import validate_transaction

CANONICAL_ENCODING = "canonical_encoding"
SEQUENCER_SIGNATURE = "sequencer_signature"
CHAIN_ID = "chain_id"
HEIGHT = "height"
PARENT_HASH = "parent_hash"
TIMESTAMP = "timestamp"
BLOCK_SIZE = "block_size"
TX_CHAIN_ID = "tx_chain_id"
TX_SIZE = "tx_size"
TX_FEE = "tx_fee"
TX_FIELD = "tx_field"
TX_SIGNATURE = "tx_signature"
TX_ROOT = "tx_root"
TX_NONCE = "tx_nonce"
TX_FEE_UNPAYABLE = "tx_fee_unpayable"
RECEIPTS_ROOT = "receipts_root"
STATE_ROOT = "state_root"

#: Every check, in the order it runs.
CHECKS: tuple[str, ...] = (
    CANONICAL_ENCODING, SEQUENCER_SIGNATURE, CHAIN_ID, HEIGHT, PARENT_HASH, TIMESTAMP, BLOCK_SIZE,
    TX_CHAIN_ID, TX_SIZE, TX_FEE, TX_FIELD, TX_SIGNATURE, TX_ROOT, TX_NONCE, TX_FEE_UNPAYABLE,
    RECEIPTS_ROOT, STATE_ROOT,
)

# The STF's own exceptions, named.
_HEADER_CHECKS: dict[type, str] = {
    WrongBlockChain: CHAIN_ID, WrongHeight: HEIGHT, WrongParent: PARENT_HASH, BadTimestamp: TIMESTAMP,
}
_TX_CHECKS: dict[type, str] = {
    WrongChain: TX_CHAIN_ID, TxTooLarge: TX_SIZE, FeeTooLow: TX_FEE, InvalidField: TX_FIELD,
    NonceMismatch: TX_NONCE, FeeUnpayable: TX_FEE_UNPAYABLE,
}

#: Below this many signatures a block is checked one signature at a time: the batch kernel costs
#: a JIT compile (about half a second) on first use, which small blocks never earn back.
BATCH_MIN = 64
SPLIT_MIN = 512  # from here a batch is checked in two halves at once

Verify = Callable[[Sequence[tuple[bytes, bytes, bytes]]], list[bool]]


def verify_signatures(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """``crypto.verify`` over (address, message, signature) triples; batched when it pays.

    A large batch is split in two, the second half checked on a helper thread at the same time
    (the kernel runs outside the GIL), which halves a big block's wait on a free core.
    """
    if len(items) < BATCH_MIN:
        from mpsnode.consensus import crypto

        return [crypto.verify(a, m, s) for a, m, s in items]
    if len(items) < SPLIT_MIN:
        return verify_batch(items)
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
    """What can be derived from a block's bytes alone; ``check_block`` turns it into a verdict."""

    height: int  # the height the block was served as
    data: bytes
    block: Block | None
    decode_error: str
    sequencer_signature_ok: bool
    tx_signatures_ok: tuple[bool, ...]
    tx_root: bytes


def precheck(height: int, data: bytes, config: Config, verify: Verify = verify_signatures) -> Prechecked:
    """Decode ``data`` and check its signatures and tx root; never raises for bad input."""
    return precheck_many([(height, data)], config, verify)[0]


def precheck_many(items: Sequence[tuple[int, bytes]], config: Config,
                  verify: Verify = verify_signatures) -> list[Prechecked]:
    """``precheck`` of many blocks, with every signature (sequencer's and txs') in one batch."""
    decoded, triples = decode_many(items, config)
    return assemble(decoded, verify(triples))


Decoded = tuple[int, bytes, "Block | None", str]  # (height, data, block or None, decode error)


def decode_many(items: Sequence[tuple[int, bytes]],
                config: Config) -> tuple[list[Decoded], list[tuple[bytes, bytes, bytes]]]:
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
            decoded.append((height, data, None, exc.reason))
            continue
        decoded.append((height, data, block, ""))
        triples.append((config.sequencer, block.hash(), block.signature))
        triples.extend((t.tx.sender, t.tx_id, t.signature) for t in block.txs)
    return decoded, triples


def assemble(decoded: list[Decoded], oks: Sequence[bool]) -> list[Prechecked]:
    """The second half: each block with its signature results (in ``decode_many``'s order) and tx root."""
    out: list[Prechecked] = []
    at = 0
    for height, data, decoded_block, error in decoded:
        if decoded_block is None:
            out.append(Prechecked(height, data, None, error, False, (), b""))
            continue
        n = len(decoded_block.txs)
        out.append(Prechecked(height, data, decoded_block, "", oks[at], tuple(oks[at + 1:at + 1 + n]),
                              compute_tx_root(decoded_block.txs)))
        at += 1 + n
    return out


def _fail(check: str, height: int, reason: str, block: Block | None = None, *, computed: object = None,
          claimed: object = None, tx_index: int | None = None) -> Divergence:
    exc = Divergence(check, height, reason, computed=computed, claimed=claimed, tx_index=tx_index)
    exc.block = block
    return exc


def check_block(pre: Prechecked, parent: Header, config: Config) -> Block:
    """Every check that needs no state, in order; the block, or ``Divergence`` naming the first failure."""
    height = parent.height + 1
    block = pre.block
    if block is None:
        raise _fail(CANONICAL_ENCODING, height, pre.decode_error, claimed=pre.decode_error)
    header = block.header
    if not pre.sequencer_signature_ok:
        raise _fail(SEQUENCER_SIGNATURE, height, "the header is not signed by the genesis sequencer key",
                    block,
                    computed={"sequencer": config.sequencer.hex(), "block_hash": header.hash().hex()},
                    claimed={"signature": block.signature.hex()})
    try:
        validate_header(header, parent, config)
    except (WrongBlockChain, WrongHeight, WrongParent, BadTimestamp) as exc:
        computed, claimed = _header_values(type(exc), header, parent, config)
        check = _HEADER_CHECKS[type(exc)]
        raise _fail(check, height, exc.reason, block, computed=computed, claimed=claimed) from None
    size, limit = sum(t.size for t in block.txs), config.params.max_block_bytes
    if size > limit:
        raise _fail(BLOCK_SIZE, height, f"txs total {size} bytes, the limit is {limit}", block,
                    computed=limit, claimed=size)
    for index, stx in enumerate(block.txs):
        try:
            validate_transaction(stx, config.chain_id, config.params, check_signature=False)
        except InvalidTransaction as exc:
            raise _tx_failure(exc, index, block) from None
        if not pre.tx_signatures_ok[index]:
            sender = stx.tx.sender.hex()
            reason = f"tx {index} ({stx.tx_id.hex()}): the signature does not verify for its sender {sender}"
            raise _fail(TX_SIGNATURE, height, reason, block, tx_index=index,
                        computed={"signature_valid": False, "sender": sender, "tx_id": stx.tx_id.hex()},
                        claimed={"signature": stx.signature.hex()})
    if pre.tx_root != header.tx_root:
        raise _fail(TX_ROOT, height, "the txs do not hash to the header's tx_root", block,
                    computed=pre.tx_root.hex(), claimed=header.tx_root.hex())
    return block


def _header_values(kind: type, header: Header, parent: Header, config: Config) -> tuple[object, object]:
    if kind is WrongBlockChain:
        return config.chain_id, header.chain_id
    if kind is WrongHeight:
        return parent.height + 1, header.height
    if kind is WrongParent:
        return parent.hash().hex(), header.parent_hash.hex()
    return {"min_timestamp_ms": parent.timestamp_ms + 1}, header.timestamp_ms


def _tx_failure(exc: InvalidTransaction, index: int, block: Block) -> Divergence:
    """A tx check's failure; the STF's exception fields become computed vs claimed."""
    computed: object = None
    claimed: object = exc.reason
    if isinstance(exc, WrongChain):
        computed, claimed = exc.expected, exc.got
    elif isinstance(exc, TxTooLarge):
        computed, claimed = {"limit": exc.limit}, {"size": exc.size}
    elif isinstance(exc, FeeTooLow):
        computed, claimed = {"min_fee": exc.need}, {"fee": exc.got}
    elif isinstance(exc, InvalidField):
        computed, claimed = {"rule": exc.why}, {"field": exc.field}
    elif isinstance(exc, NonceMismatch):
        computed, claimed = {"nonce": exc.expected}, {"nonce": exc.got}
    elif isinstance(exc, FeeUnpayable):
        computed, claimed = {"balance": exc.balance}, {"fee": exc.fee}
    reason = f"tx {index} ({block.txs[index].tx_id.hex()}): {exc.reason}"
    return _fail(_TX_CHECKS.get(type(exc), TX_FIELD), block.height, reason, block, tx_index=index,
                 computed=computed, claimed=claimed)


def execute_checked(block: Block, state: State, tree: SparseMerkleTree, config: Config) -> BlockResult:
    """Re-execute ``block`` with the STF on ``state``/``tree`` (at the parent's root) and compare its roots.

    Signatures were checked by ``check_block``. On a mismatch the ``Divergence`` carries the
    local ``result`` (receipts, writes, roots) for the report.
    """
    header = block.header
    env = BlockEnv(config, header.height, header.timestamp_ms)
    try:
        result = execute_block(state, tree, env, block.txs, signatures_checked=True)
    except BlockHasInvalidTx as exc:
        raise _tx_failure(exc.cause, exc.index, block) from None
    for check, computed, claimed in ((RECEIPTS_ROOT, result.receipts_root, header.receipts_root),
                                     (STATE_ROOT, result.state_root, header.state_root)):
        if computed != claimed:
            what = "receipts do" if check == RECEIPTS_ROOT else "state does"
            failure = _fail(check, block.height, f"the re-executed {what} not hash to the header's {check}",
                            block, computed=computed.hex(), claimed=claimed.hex())
            failure.result = result
            raise failure
    return result


def verify_block(height: int, data: bytes, parent: Header, state: State, tree: SparseMerkleTree,
                 config: Config) -> tuple[Block, BlockResult]:
    """All checks on one block: ``(block, result)`` to commit, or ``Divergence``."""
    block = check_block(precheck(height, data, config), parent, config)
    return block, execute_checked(block, state, tree, config)
