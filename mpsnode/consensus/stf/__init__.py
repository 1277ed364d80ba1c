"""The state transition function: blocks in, receipts, events and a new state root out.

No I/O, no clock, no environment, no randomness: time comes from the block header, ids from
counters or hashes, storage and the state tree are injected. Entry points live in
``mpsnode.stf.block``: ``apply_block`` (the verifier's path: check everything, raise
``InvalidBlock`` on any mismatch) and ``execute_block`` (the sequencer's path: run txs, compute
roots, leave header building to the caller).
"""

from mpsnode.consensus.stf.block import BlockResult, apply_block, execute_block, process_transaction
from mpsnode.consensus.stf.env import BlockEnv

__all__ = ["BlockEnv", "BlockResult", "apply_block", "execute_block", "process_transaction"]
