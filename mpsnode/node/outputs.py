"""The output of a committed block, from a node's store: what the sequencer posts to the L1 oracle
and what a verifier compares with what was posted (docs/SETTLEMENT.md).

The state is kept only at the head, but an output needs nothing else: the header of the block
(state root, hash) and the withdrawal records, which are written once and never change, so the
records with ``height <= h`` are block ``h``'s withdrawal tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsnode.consensus.block import decode_header
from mpsnode.consensus.settlement import WithdrawalRecord, output_root, tree_root_reference
from mpsnode.consensus.state import State
from mpsnode.node.errors import BadRequest, NotFound
from mpsnode.node.store import StoreReader

MAX_WITHDRAWAL_TREE = 1 << 20  # leaves a tree is rebuilt from (O(n) keccaks per call)


def withdrawals_at(view: StoreReader, height: int) -> list[WithdrawalRecord]:
    """The withdrawal records of block ``height``'s tree, in index order."""
    state = State(view.get_state)
    records: list[WithdrawalRecord] = []
    while True:
        record = state.get_withdrawal(len(records))
        if record is None or record.height > height:
            return records
        records.append(record)
        if len(records) > MAX_WITHDRAWAL_TREE:
            raise BadRequest(f"the withdrawal tree at {height} has over {MAX_WITHDRAWAL_TREE} leaves")


def leaves_of(records: list[WithdrawalRecord]) -> list[bytes]:
    return [r.leaf(i) for i, r in enumerate(records)]


@dataclass(frozen=True, slots=True)
class BlockOutput:
    height: int
    root: bytes
    state_root: bytes
    withdrawals_root: bytes
    block_hash: bytes


def output_at(view: StoreReader, height: int) -> BlockOutput:
    """Block ``height``'s output; ``NotFound`` if the store has no such block."""
    raw = view.get_header(height)
    if raw is None:
        raise NotFound(f"no block at height {height}")
    header = decode_header(raw)
    wroot = tree_root_reference(leaves_of(withdrawals_at(view, height)))
    block_hash = header.hash()
    return BlockOutput(
        height, output_root(header.state_root, wroot, block_hash), header.state_root, wroot, block_hash
    )
