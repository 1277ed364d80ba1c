"""EVALUATION ONLY: a dishonest sequencer, for `mpsnode demo --dishonest-sequencer` and nothing
else. Never run it against anything of value.

Its blocks stay honest (every verifier accepts them); what it lies about is L1. Once a withdrawal
has been paid on L1 (the honest part of the demo is over), it posts, instead of the head's true
output, the output of a state in which it has recorded a withdrawal of ``FORGED_UNITS`` to its
own L1 account that it never had: it credits itself more than it holds. It writes what a proof of
that withdrawal needs to ``HOME/evaluation/forged-output.json``, so the demo can try to take the
money and show L1 refusing it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from mpsnode.consensus.block import Header
from mpsnode.consensus.encoding import encode
from mpsnode.consensus.settlement import WithdrawalRecord, incremental_append, output_root, tree_proof
from mpsnode.consensus.smt import SparseMerkleTree
from mpsnode.consensus.state import SETTLEMENT_KEY, State, withdrawal_key
from mpsnode.node.outputs import leaves_of, withdrawals_at
from mpsnode.node.store import Store

FORGED_UNITS = 10**9  # 1 ETH the sequencer never had


def forge_output(
    store: Store, header: Header, sender: bytes, l1_address: bytes
) -> tuple[bytes, dict[str, Any]]:
    """The forged output root of the head block and the material that would prove its withdrawal."""
    view = store.snapshot()
    try:
        state = State(view.get_state)
        record = state.get_settlement()
        index = record.withdrawals
        forged = WithdrawalRecord(sender, bytes(12) + l1_address, FORGED_UNITS, header.height)
        leaves = [*leaves_of(withdrawals_at(view, header.height)), forged.leaf(index)]
        settlement = replace(
            record,
            withdrawals=index + 1,
            withdrawn=record.withdrawn + FORGED_UNITS,
            branch=incremental_append(record.branch, index, forged.leaf(index)),
        )
        writes: dict[bytes, bytes | None] = {
            withdrawal_key(index): encode(forged.to_obj()),
            SETTLEMENT_KEY: encode(settlement.to_obj()),
        }
        state_root = SparseMerkleTree(view, header.state_root).update(writes)  # never committed
    finally:
        view.close()
    wroot = settlement.withdrawals_root()
    root = output_root(state_root, wroot, header.hash())
    material = {
        "evaluation_only": True,
        "l2_height": header.height,
        "output_root": root.hex(),
        "true_state_root": header.state_root.hex(),
        "state_root": state_root.hex(),
        "withdrawals_root": wroot.hex(),
        "block_hash": header.hash().hex(),
        "withdrawal": {
            "index": index,
            "l1_address": "0x" + l1_address.hex(),
            "amount": FORGED_UNITS,
            "sender": sender.hex(),
        },
        "proof": [p.hex() for p in tree_proof(leaves, index)],
    }
    return root, material


def write_material(path: Path, material: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(material, indent=2) + "\n")
    tmp.replace(path)
