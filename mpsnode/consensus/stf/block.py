"""Applying a block: header checks, each tx in order, the end-of-block step, every root.

``apply_block`` is the verifier's entry point (every check, ``InvalidBlock`` on any mismatch);
``build_block`` is the sequencer's (it runs candidate txs, leaves out the invalid ones, and signs
a header over the roots it computed). Both go through the same ``execute_txs`` and
``process_end_of_block``, so the two paths cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from mpsnode.consensus import crypto
from mpsnode.consensus.block import Block, Header, compute_tx_root, sign_header
from mpsnode.consensus.errors import (
    BadBlockSignature,
    BadTimestamp,
    BlockHasInvalidTx,
    BlockTooLarge,
    FeeUnpayable,
    InvalidTransaction,
    NonceMismatch,
    RootMismatch,
    TxFailure,
    WrongBlockChain,
    WrongHeight,
    WrongParent,
)
from mpsnode.consensus.events import Event
from mpsnode.consensus.receipt import END_OF_BLOCK_ID, Receipt, receipts_root
from mpsnode.consensus.smt import SparseMerkleTree
from mpsnode.consensus.state import Config, State
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.stf.round import process_round_closes
from mpsnode.consensus.stf.stake import process_stake, process_unbonding_release, process_unstake
from mpsnode.consensus.stf.task import process_create_task, process_join_task, process_task_starts
from mpsnode.consensus.stf.transfer import process_transfer
from mpsnode.consensus.stf.update import process_submit_update
from mpsnode.consensus.tx import Kind, SignedTx, validate_transaction

Processor = Callable[[State, BlockEnv, bytes, Any], list[Event]]
PROCESSORS: dict[Kind, Processor] = {
    Kind.TRANSFER: process_transfer,
    Kind.STAKE: process_stake,
    Kind.UNSTAKE: process_unstake,
    Kind.CREATE_TASK: process_create_task,
    Kind.JOIN_TASK: process_join_task,
    Kind.SUBMIT_UPDATE: process_submit_update,
}


@dataclass(frozen=True, slots=True)
class BlockResult:
    receipts: tuple[Receipt, ...]
    state_writes: dict[bytes, bytes | None]
    node_writes: dict[bytes, bytes]
    state_root: bytes
    receipts_root: bytes
    tx_root: bytes

    @property
    def events(self) -> list[Event]:
        return [e for r in self.receipts for e in r.events]


# ---------------------------------------------------------------------------------------------
# One transaction


def check_transaction(state: State, stx: SignedTx) -> None:
    """Validity against state: the nonce is next and the fee is payable."""
    acct = state.get_account(stx.tx.sender)
    if stx.tx.nonce != acct.nonce:
        raise NonceMismatch(acct.nonce, stx.tx.nonce)
    if acct.balance < stx.tx.fee:
        raise FeeUnpayable(stx.tx.fee, acct.balance)


def process_transaction(state: State, env: BlockEnv, stx: SignedTx) -> Receipt:
    """Run one valid tx. Raises ``InvalidTransaction`` (before writing anything) if it is not valid."""
    check_transaction(state, stx)
    tx = stx.tx
    acct = state.get_account(tx.sender)
    state.set_account(tx.sender, replace(acct, balance=acct.balance - tx.fee, nonce=acct.nonce + 1))
    state.increase_balance(env.config.fee_recipient, tx.fee)
    state.begin()
    try:
        events = PROCESSORS[tx.kind](state, env, tx.sender, tx.body)
    except TxFailure as failure:
        state.rollback()
        return Receipt(stx.tx_id, failure.code, tx.fee, ())
    state.commit()
    return Receipt(stx.tx_id, 0, tx.fee, tuple(events))


def process_end_of_block(state: State, env: BlockEnv) -> Receipt:
    """Release matured unbonding, start ready tasks, close due rounds: in that order."""
    events = process_unbonding_release(state, env)
    events += process_task_starts(state, env)
    events += process_round_closes(state, env)
    return Receipt(END_OF_BLOCK_ID, 0, 0, tuple(events))


# ---------------------------------------------------------------------------------------------
# A whole block


def _finish(state: State, tree: SparseMerkleTree, env: BlockEnv, receipts: list[Receipt],
            txs: tuple[SignedTx, ...]) -> BlockResult:
    receipts.append(process_end_of_block(state, env))
    writes = state.writes()
    root = tree.update(writes)
    nodes = tree.pending_nodes()
    tree.clear_pending()
    return BlockResult(tuple(receipts), writes, nodes, root, receipts_root(receipts), compute_tx_root(txs))


def execute_block(state: State, tree: SparseMerkleTree, env: BlockEnv, txs: Iterable[SignedTx], *,
                  signatures_checked: bool = False) -> BlockResult:
    """Run every tx (each must be valid, else ``BlockHasInvalidTx``) and the end-of-block step."""
    txs = tuple(txs)
    receipts: list[Receipt] = []
    for index, stx in enumerate(txs):
        try:
            validate_transaction(stx, env.chain_id, env.params, check_signature=not signatures_checked)
            receipts.append(process_transaction(state, env, stx))
        except InvalidTransaction as exc:
            raise BlockHasInvalidTx(index, exc) from None
    return _finish(state, tree, env, receipts, txs)


def validate_header(header: Header, parent: Header, config: Config) -> None:
    if header.chain_id != config.chain_id:
        raise WrongBlockChain(f"block is for chain {header.chain_id!r}, this chain is {config.chain_id!r}")
    if header.height != parent.height + 1:
        raise WrongHeight(f"height {header.height} does not follow the parent's {parent.height}")
    if header.parent_hash != parent.hash():
        raise WrongParent(f"parent hash {header.parent_hash.hex()} is not the head {parent.hash().hex()}")
    if header.timestamp_ms <= parent.timestamp_ms:
        raise BadTimestamp(f"timestamp {header.timestamp_ms} is not after the parent's {parent.timestamp_ms}")


def apply_block(state: State, tree: SparseMerkleTree, block: Block, parent: Header, config: Config, *,
                signatures_checked: bool = False) -> BlockResult:
    """Check ``block`` against its parent and re-execute it; ``InvalidBlock`` on any mismatch.

    ``state`` and ``tree`` must be at ``parent``'s state root. On success the result holds the
    writes and tree nodes to commit; on failure nothing must be committed.
    """
    header = block.header
    validate_header(header, parent, config)
    if not block.verify_signature(config.sequencer):
        raise BadBlockSignature("the block is not signed by the genesis sequencer key")
    size = sum(t.size for t in block.txs)
    if size > config.params.max_block_bytes:
        raise BlockTooLarge(f"txs total {size} bytes, the limit is {config.params.max_block_bytes}")
    tx_root = compute_tx_root(block.txs)
    if tx_root != header.tx_root:
        raise RootMismatch("tx_root", tx_root, header.tx_root)
    env = BlockEnv(config, header.height, header.timestamp_ms)
    result = execute_block(state, tree, env, block.txs, signatures_checked=signatures_checked)
    if result.receipts_root != header.receipts_root:
        raise RootMismatch("receipts_root", result.receipts_root, header.receipts_root)
    if result.state_root != header.state_root:
        raise RootMismatch("state_root", result.state_root, header.state_root)
    return result


def build_block(state: State, tree: SparseMerkleTree, parent: Header, config: Config,
                candidates: Iterable[SignedTx], timestamp_ms: int, key: crypto.Keypair, *,
                signatures_checked: bool = False,
                ) -> tuple[Block, BlockResult, list[tuple[SignedTx, InvalidTransaction]]]:
    """The sequencer's path: include candidates in order, leave out the invalid, sign the header."""
    timestamp_ms = max(timestamp_ms, parent.timestamp_ms + 1)
    env = BlockEnv(config, parent.height + 1, timestamp_ms)
    included: list[SignedTx] = []
    receipts: list[Receipt] = []
    rejected: list[tuple[SignedTx, InvalidTransaction]] = []
    budget = config.params.max_block_bytes
    for stx in candidates:
        if stx.size > budget:
            continue  # stays pending for a later block
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
    header = Header(config.chain_id, env.height, parent.hash(), timestamp_ms, result.tx_root,
                    result.receipts_root, result.state_root)
    return sign_header(header, key, txs), result, rejected
