"""The state transition: one block in, its receipts, events, writes and roots out.

``state_transition`` is the one entry point every node verifies with (the verifier daemon,
``mpsnode replay``, the replay of a divergence bundle, ``Chain.apply`` and the golden vectors).
It reads like the spec (ethereum/execution-specs' ``state_transition``): check what the block's
bytes alone decide, build the block's environment, apply the body, recompute every root and
compare it with the header. Every failure is a named ``InvalidBlock`` leaf whose ``check`` is one
of ``CHECKS``, in the order they run; the first failing check is the one reported:

============================  ===================================================================
canonical_encoding            the bytes decode as a block and re-encode to the same bytes
                              (``block.decode_block``, before the transition)
sequencer_signature           the header is signed by the genesis sequencer key
chain_id                      the header names this chain
height                        the header's height is the parent's + 1
parent_hash                   the header names the parent's hash
timestamp                     the timestamp is strictly after the parent's
l1_origin                     settlement mode: the header names an L1 origin, not before the
                              parent's, that the node's L1 view reaches (else: not judged yet)
block_size                    the txs total at most ``max_block_bytes``
tx_chain_id ... tx_signature  each tx in order: its chain id, size, fee, fields, then signature
tx_root                       the header's tx_root commits to exactly these txs in this order
tx_nonce, tx_fee_unpayable    each tx, as it runs, is valid against the state it runs on
deposits                      each DEPOSIT is the next L1 deposit as L1 holds it, and the block
                              leaves out none that its L1 origin made overdue
receipts_root                 the re-executed receipts hash to the header's receipts_root
state_root                    the re-executed state hashes to the header's state_root
============================  ===================================================================

``build_block`` is the sequencer's side of the same transition: it runs candidate txs through
the same ``process_transaction`` and ``process_end_of_block``, leaves out the candidates that
are invalid (where ``state_transition`` would reject the block), and signs a header over the
roots it computed; ``state_transition`` accepts every block it builds (the golden vectors hold
both to the same bytes).

What needs neither the parent nor the state (the signatures, the tx root) may be computed ahead,
on another thread or in a batch kernel, and handed in as ``Verdicts``: the outcome never depends
on how that work was split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mpsnode.consensus import crypto
from mpsnode.consensus.block import Block, Header, compute_tx_root, sign_header
from mpsnode.consensus.errors import (
    BadBlockSignature,
    BadL1Origin,
    BadSignature,
    BadTimestamp,
    BlockHasInvalidTx,
    BlockTooLarge,
    DepositOverdue,
    FeeUnpayable,
    InvalidTransaction,
    L1OriginUnknown,
    NonceMismatch,
    RootMismatch,
    SystemTxRefused,
    TxFailure,
    WrongBlockChain,
    WrongHeight,
    WrongParent,
)
from mpsnode.consensus.events import Event
from mpsnode.consensus.receipt import END_OF_BLOCK_ID, Receipt, root_and_encoding
from mpsnode.consensus.settlement import L1Facts
from mpsnode.consensus.smt import SparseMerkleTree
from mpsnode.consensus.state import Account, Config, State
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.stf.round import process_round_phases
from mpsnode.consensus.stf.settlement import process_deposit, process_withdraw
from mpsnode.consensus.stf.stake import process_stake, process_unbonding_release, process_unstake
from mpsnode.consensus.stf.task import process_create_task, process_join_task, process_task_starts
from mpsnode.consensus.stf.transfer import process_transfer
from mpsnode.consensus.stf.update import process_commit_update, process_reveal_update
from mpsnode.consensus.tx import DepositBody, Kind, SignedTx, deposit_tx
from mpsnode.consensus.validation import validate_transaction

CANONICAL_ENCODING = "canonical_encoding"
SEQUENCER_SIGNATURE = "sequencer_signature"
CHAIN_ID = "chain_id"
HEIGHT = "height"
PARENT_HASH = "parent_hash"
TIMESTAMP = "timestamp"
L1_ORIGIN = "l1_origin"
BLOCK_SIZE = "block_size"
TX_CHAIN_ID = "tx_chain_id"
TX_SIZE = "tx_size"
TX_FEE = "tx_fee"
TX_FIELD = "tx_field"
TX_SIGNATURE = "tx_signature"
TX_ROOT = "tx_root"
TX_NONCE = "tx_nonce"
TX_FEE_UNPAYABLE = "tx_fee_unpayable"
DEPOSITS = "deposits"
RECEIPTS_ROOT = "receipts_root"
STATE_ROOT = "state_root"

#: Every check, in the order it runs.
CHECKS: tuple[str, ...] = (
    CANONICAL_ENCODING,
    SEQUENCER_SIGNATURE,
    CHAIN_ID,
    HEIGHT,
    PARENT_HASH,
    TIMESTAMP,
    L1_ORIGIN,
    BLOCK_SIZE,
    TX_CHAIN_ID,
    TX_SIZE,
    TX_FEE,
    TX_FIELD,
    TX_SIGNATURE,
    TX_ROOT,
    TX_NONCE,
    TX_FEE_UNPAYABLE,
    DEPOSITS,
    RECEIPTS_ROOT,
    STATE_ROOT,
)

Processor = Callable[[State, BlockEnv, bytes, Any], list[Event]]
PROCESSORS: dict[Kind, Processor] = {
    Kind.TRANSFER: process_transfer,
    Kind.STAKE: process_stake,
    Kind.UNSTAKE: process_unstake,
    Kind.CREATE_TASK: process_create_task,
    Kind.JOIN_TASK: process_join_task,
    Kind.COMMIT_UPDATE: process_commit_update,
    Kind.REVEAL_UPDATE: process_reveal_update,
    Kind.WITHDRAW: process_withdraw,
}


@dataclass(frozen=True, slots=True)
class BlockResult:
    """What applying a block computed: its receipts (the end-of-block receipt last), the state
    writes and tree nodes to commit, and the three roots."""

    receipts: tuple[Receipt, ...]
    state_writes: dict[bytes, bytes | None]
    node_writes: dict[bytes, bytes]
    state_root: bytes
    receipts_root: bytes
    tx_root: bytes
    receipts_encoded: bytes  # encode_receipts(receipts), made with the root (the store keeps it)

    @property
    def events(self) -> list[Event]:
        """Every event of the block, in receipt order."""
        return [e for r in self.receipts for e in r.events]


#: Checks (address, message, signature) triples, one verdict each, in order.
Verify = Callable[[Sequence[tuple[bytes, bytes, bytes]]], list[bool]]


def verify_each(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """The reference ``Verify``: ``crypto.verify`` on each triple."""
    return [crypto.verify(address, message, signature) for address, message, signature in items]


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What a block's bytes alone decide: whether the sequencer's and each tx's signature verify,
    and the root of its txs. ``compute_verdicts`` computes them; a node may do it ahead."""

    sequencer_signature: bool
    tx_signatures: tuple[bool, ...]
    tx_root: bytes


def compute_signature_items(block: Block, sequencer: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The block's signatures as (address, message, signature): the sequencer's first, then each tx's."""
    return [
        (sequencer, block.hash(), block.signature),
        *((t.tx.sender, t.tx_id, t.signature) for t in block.txs),
    ]


def compute_verdicts(block: Block, config: Config, verify: Verify = verify_each) -> Verdicts:
    """``Verdicts`` of ``block``, its signatures checked by ``verify``."""
    oks = verify(compute_signature_items(block, config.sequencer))
    return assemble_verdicts(block, oks)


def assemble_verdicts(block: Block, oks: Sequence[bool]) -> Verdicts:
    """``Verdicts`` from the results of checking ``compute_signature_items(block, ...)`` in order."""
    if len(oks) != 1 + len(block.txs):
        raise ValueError(f"{len(oks)} signature verdicts for a block of {len(block.txs)} txs")
    return Verdicts(bool(oks[0]), tuple(bool(ok) for ok in oks[1:]), compute_tx_root(block.txs))


# ---------------------------------------------------------------------------------------------
# One transaction


def check_transaction(state: State, stx: SignedTx) -> Account:
    """Validity against state: the nonce is next and the fee is payable. The sender's account."""
    acct = state.get_account(stx.tx.sender)
    if stx.tx.nonce != acct.nonce:
        raise NonceMismatch(acct.nonce, stx.tx.nonce)
    if acct.balance < stx.tx.fee:
        raise FeeUnpayable(stx.tx.fee, acct.balance)
    return acct


def process_transaction(state: State, env: BlockEnv, stx: SignedTx) -> Receipt:
    """Run one valid tx. Raises ``InvalidTransaction`` (before writing anything) if it is not valid."""
    return run_transaction(state, env, stx)[0]


def run_transaction(state: State, env: BlockEnv, stx: SignedTx) -> tuple[Receipt, TxFailure | None]:
    """``process_transaction``, with the failure itself when the tx's effect failed (its receipt
    carries only the code; a client forecasting a tx wants the reason too)."""
    tx = stx.tx
    if isinstance(tx.body, DepositBody):  # a system tx: no nonce, no fee; invalid unless it is L1's
        return Receipt(stx.tx_id, 0, 0, tuple(process_deposit(state, env, tx.body))), None
    acct = check_transaction(state, stx)
    state.set_account(tx.sender, acct.with_balance(acct.balance - tx.fee, acct.nonce + 1))
    state.increase_balance(env.config.fee_recipient, tx.fee)
    state.begin()
    try:
        events = PROCESSORS[tx.kind](state, env, tx.sender, tx.body)
    except TxFailure as failure:
        state.rollback()
        return Receipt(stx.tx_id, failure.code, tx.fee, ()), failure
    state.commit()
    return Receipt(stx.tx_id, 0, tx.fee, tuple(events)), None


def process_end_of_block(state: State, env: BlockEnv) -> Receipt:
    """Release matured unbonding, start ready tasks, close due rounds: in that order."""
    events = process_unbonding_release(state, env)
    events += process_task_starts(state, env)
    events += process_round_phases(state, env)
    return Receipt(END_OF_BLOCK_ID, 0, 0, tuple(events))


# ---------------------------------------------------------------------------------------------
# A whole block


def validate_header(header: Header, parent: Header, config: Config) -> None:
    """The header follows ``parent`` on this chain: chain id, height, parent hash, later timestamp,
    and (settlement mode) an L1 origin not before the parent's."""
    if header.chain_id != config.chain_id:
        raise WrongBlockChain(config.chain_id, header.chain_id)
    if header.height != parent.height + 1:
        raise WrongHeight(parent.height + 1, header.height)
    if header.parent_hash != parent.hash():
        raise WrongParent(parent.hash(), header.parent_hash)
    if header.timestamp_ms <= parent.timestamp_ms:
        raise BadTimestamp(parent.timestamp_ms, header.timestamp_ms)
    if config.l1 is None:
        if header.l1_origin is not None:
            raise BadL1Origin("the header names an L1 origin, and this chain settles on no L1")
    elif header.l1_origin is None:
        raise BadL1Origin("the header names no L1 origin, and this chain settles on L1")
    elif parent.l1_origin is not None and header.l1_origin < parent.l1_origin:
        why = f"L1 origin {header.l1_origin} is before the parent's {parent.l1_origin}"
        raise BadL1Origin(why, parent.l1_origin, header.l1_origin)


def validate_block(block: Block, parent: Header, config: Config, verdicts: Verdicts) -> None:
    """Every check that needs no state, in ``CHECKS`` order; raises the first failure's leaf."""
    header = block.header
    if not verdicts.sequencer_signature:
        raise BadBlockSignature(config.sequencer, header.hash(), block.signature)
    validate_header(header, parent, config)
    size, limit = sum(t.size for t in block.txs), config.params.max_block_bytes
    if size > limit:
        raise BlockTooLarge(size, limit)
    for index, stx in enumerate(block.txs):
        try:
            validate_transaction(stx, config.chain_id, config.params, check_signature=False)
        except InvalidTransaction as exc:
            raise BlockHasInvalidTx(index, exc) from None
        if not verdicts.tx_signatures[index] and stx.tx.kind != Kind.DEPOSIT:  # a deposit is unsigned
            why = f"the signature does not verify for its sender {stx.tx.sender.hex()}"
            raise BlockHasInvalidTx(index, BadSignature(why))
    if verdicts.tx_root != header.tx_root:
        raise RootMismatch(TX_ROOT, verdicts.tx_root, header.tx_root)


def apply_body(
    state: State,
    tree: SparseMerkleTree,
    env: BlockEnv,
    txs: tuple[SignedTx, ...],
    tx_root: bytes | None = None,
) -> BlockResult:
    """Run each tx (already validated without state) in order, then the end-of-block step.

    A tx that is not valid against the state it runs on raises ``BlockHasInvalidTx``. ``tx_root``:
    ``compute_tx_root(txs)`` when the caller has it already (computed here otherwise).
    """
    receipts: list[Receipt] = []
    for index, stx in enumerate(txs):
        try:
            receipts.append(process_transaction(state, env, stx))
        except InvalidTransaction as exc:
            raise BlockHasInvalidTx(index, exc) from None
    return _finish(state, tree, env, receipts, txs, tx_root)


def _finish(
    state: State,
    tree: SparseMerkleTree,
    env: BlockEnv,
    receipts: list[Receipt],
    txs: tuple[SignedTx, ...],
    tx_root: bytes | None = None,
) -> BlockResult:
    receipts.append(process_end_of_block(state, env))
    writes = state.writes()
    root = tree.update(writes)
    nodes = tree.pending_nodes()
    tree.clear_pending()
    receipts_hash, receipts_encoded = root_and_encoding(receipts)
    return BlockResult(
        tuple(receipts),
        writes,
        nodes,
        root,
        receipts_hash,
        compute_tx_root(txs) if tx_root is None else tx_root,
        receipts_encoded,
    )


def state_transition(
    state: State,
    tree: SparseMerkleTree,
    block: Block,
    parent: Header,
    config: Config,
    *,
    verdicts: Verdicts | None = None,
    l1: L1Facts | None = None,
) -> BlockResult:
    """Check ``block`` against ``parent`` and re-execute it; the first failed check raises its
    ``InvalidBlock`` leaf (``CHECKS`` order).

    ``state`` and ``tree`` must be at ``parent``'s state root. ``verdicts``, when given, are
    ``compute_verdicts(block, config)`` computed ahead. ``l1`` (settlement mode only, and required
    there) is what the node read from L1 for this block's origin. On success the result holds the
    writes and tree nodes to commit; on failure nothing may be committed. A receipts or state root
    mismatch carries the local result (``RootMismatch.result``).
    """
    if verdicts is None:
        verdicts = compute_verdicts(block, config)
    validate_block(block, parent, config, verdicts)
    header = block.header
    check_l1_facts(header, config, l1)
    env = BlockEnv(config, header.height, header.timestamp_ms, l1)
    result = apply_body(state, tree, env, block.txs, header.tx_root)  # validate_block held it equal
    check_deposits_due(state, config, l1)
    if result.receipts_root != header.receipts_root:
        raise RootMismatch(RECEIPTS_ROOT, result.receipts_root, header.receipts_root, result)
    if result.state_root != header.state_root:
        raise RootMismatch(STATE_ROOT, result.state_root, header.state_root, result)
    return result


def check_l1_facts(header: Header, config: Config, l1: L1Facts | None) -> None:
    """Settlement mode: the facts are for this block's origin and reach it (``L1OriginUnknown``)."""
    if config.l1 is None:
        return
    if l1 is None or l1.origin != header.l1_origin:
        raise ValueError(f"block {header.height} needs the L1 facts of its origin {header.l1_origin}")
    if not l1.origin_known:
        raise L1OriginUnknown(l1.origin)


def check_deposits_due(state: State, config: Config, l1: L1Facts | None) -> None:
    """Settlement mode: after the block, no deposit its L1 origin made overdue is left uncredited."""
    if config.l1 is None or l1 is None:
        return
    due = l1.overdue(state.get_settlement().deposits, config.l1.deposit_window)
    if due is not None:
        raise DepositOverdue(due.index, due.l1_block, l1.origin, config.l1.deposit_window)


def build_block(
    state: State,
    tree: SparseMerkleTree,
    parent: Header,
    config: Config,
    candidates: Iterable[SignedTx],
    timestamp_ms: int,
    key: crypto.Keypair,
    *,
    signatures_checked: bool = False,
    l1: L1Facts | None = None,
) -> tuple[Block, BlockResult, list[tuple[SignedTx, InvalidTransaction]]]:
    """The sequencer's path: credit the L1 deposits first, then include candidates in order,
    leave out the invalid, sign the header.

    A candidate larger than what is left of ``max_block_bytes`` stays out (for a later block);
    an invalid one is returned in the rejected list with its reason. ``signatures_checked``:
    the caller verified every candidate's signature already (at admission). ``l1`` (settlement
    mode): the facts of the origin the block will name; every deposit in them is credited.
    """
    timestamp_ms = max(timestamp_ms, parent.timestamp_ms + 1)
    if config.l1 is not None and (l1 is None or (parent.l1_origin or 0) > l1.origin):
        raise ValueError("a settlement-mode block needs L1 facts at or after the parent's origin")
    env = BlockEnv(config, parent.height + 1, timestamp_ms, l1 if config.l1 is not None else None)
    included: list[SignedTx] = []
    receipts: list[Receipt] = []
    rejected: list[tuple[SignedTx, InvalidTransaction]] = []
    budget = config.params.max_block_bytes
    if env.l1 is not None:
        credited = state.get_settlement().deposits
        for deposit in env.l1.deposits:
            if deposit.index < credited:
                continue
            if deposit.index != credited + len(included):
                break  # a gap in what the node read: credit up to it
            body = DepositBody(deposit.index, deposit.l1_block, deposit.recipient, deposit.amount)
            stx = deposit_tx(config.chain_id, body)
            if stx.size > budget:
                break  # the rest in a later block (the window leaves room for it)
            receipts.append(process_transaction(state, env, stx))
            included.append(stx)
            budget -= stx.size
    for stx in candidates:
        if stx.size > budget:
            continue  # stays pending for a later block
        if stx.tx.kind == Kind.DEPOSIT:
            rejected.append((stx, SystemTxRefused()))
            continue
        try:
            validate_transaction(stx, env.chain_id, env.params, check_signature=not signatures_checked)
            receipts.append(process_transaction(state, env, stx))
        except InvalidTransaction as exc:
            rejected.append((stx, exc))
            continue
        included.append(stx)
        budget -= stx.size
    txs = tuple(included)
    result = _finish(state, tree, env, receipts, txs)
    header = Header(
        config.chain_id,
        env.height,
        parent.hash(),
        timestamp_ms,
        result.tx_root,
        result.receipts_root,
        result.state_root,
        l1_origin=None if env.l1 is None else env.l1.origin,
    )
    return sign_header(header, key, txs), result, rejected
