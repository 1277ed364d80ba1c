"""Benchmark: the L1 gas of settlement, per call, on a real anvil (127.0.0.1).

Measured on the committed contracts (``mpsnode/node/l1/contracts``):

* deploying the oracle (with the sequencer's bond) and the portal;
* ``deposit`` (the first one, which creates the counters, and a later one);
* ``post_output`` (the first and a later one);
* ``prove_withdrawal`` and its payout (a tree of 1 withdrawal, and of 1,000: the branch is always
  32 hashes, so the cost does not grow with the tree).

And the choice the issue asked for: proving a withdrawal against the keccak tree (32 keccak-256
levels) against proving it against the state's own blake2b sparse-Merkle root through the BLAKE2
F precompile (0x09). The bench compiles two small contracts that walk a Merkle path of ``d``
levels, one with keccak-256, one with personalized blake2b-256 through the precompile (checked
against Python's hashlib on the same inputs), and measures both per level; a state proof of a
withdrawal record needs ``depth + 3`` blake2b hashes (key path, value, leaf, then one per level;
``depth`` is about log2 of the state's keys) and a msgpack decoder for the record in the EVM,
which is not counted here (a lower bound for that side).

    python bench/settlement_gas.py [--quick]     prints one JSON object
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vyper import compile_code

from mpsnode.consensus import settlement as S
from mpsnode.consensus.hashing import SMT_NODE
from mpsnode.node.l1.anvil import Anvil, rpc
from mpsnode.node.l1.client import L1, account

PATHS = """
# pragma version 0.4.3
# pragma evm-version cancun
H0A: immutable(bytes32)
H0B: immutable(bytes32)
ROUNDS: constant(bytes4) = 0x0000000c
T_BLOCK: constant(bytes16) = 0x40000000000000000000000000000000
FINAL: constant(bytes1) = 0x01

@deploy
def __init__(h0a: bytes32, h0b: bytes32):
    H0A = h0a
    H0B = h0b

@view
@internal
def _blake(left: bytes32, right: bytes32) -> bytes32:
    data: Bytes[213] = concat(ROUNDS, H0A, H0B, left, right, empty(bytes32), empty(bytes32), T_BLOCK, FINAL)
    out: Bytes[64] = raw_call(0x0000000000000000000000000000000000000009, data, max_outsize=64, is_static_call=True)
    return extract32(out, 0)

@view
@external
def blake_node(left: bytes32, right: bytes32) -> bytes32:
    return self._blake(left, right)

@view
@external
def blake_path(leaf: bytes32, path: uint256, siblings: DynArray[bytes32, 256]) -> bytes32:
    node: bytes32 = leaf
    bit: uint256 = 0
    for s: bytes32 in siblings:
        if (path >> bit) & 1 == 1:
            node = self._blake(s, node)
        else:
            node = self._blake(node, s)
        bit += 1
    return node

@view
@external
def keccak_path(leaf: bytes32, path: uint256, siblings: DynArray[bytes32, 256]) -> bytes32:
    node: bytes32 = leaf
    bit: uint256 = 0
    for s: bytes32 in siblings:
        if (path >> bit) & 1 == 1:
            node = keccak256(concat(s, node))
        else:
            node = keccak256(concat(node, s))
        bit += 1
    return node
"""

IV = (
    0x6A09E667F3BCC908,
    0xBB67AE8584CAA73B,
    0x3C6EF372FE94F82B,
    0xA54FF53A5F1D36F1,
    0x510E527FADE682D1,
    0x9B05688C2B3E6C1F,
    0x1F83D9ABFB41BD6B,
    0x5BE0CD19137E2179,
)


def blake_h0(person: bytes) -> bytes:
    """The initial state of blake2b-256 with ``person``: the IV xor the parameter block (RFC 7693)."""
    params = bytes([32, 0, 1, 1]) + bytes(44) + person.ljust(16, b"\0")
    words = [IV[i] ^ int.from_bytes(params[8 * i : 8 * i + 8], "little") for i in range(8)]
    return b"".join(w.to_bytes(8, "little") for w in words)


def gas_of(receipt: Any) -> int:
    return int(receipt["gasUsed"])


def committee_gas(url: str, private_keys: list[str]) -> dict[str, int]:
    """Admission, registration, a challenge, an attestation, and the attestation that resolves it
    (an upheld challenge: the root replaced, the bond paid, the sequencer halted)."""
    l1 = L1(url)
    deployer, sequencer, v1, v2, v3 = (account(k) for k in private_keys[4:9])
    l1.deploy(deployer, sequencer.address, 10**18, 3600, 64, 10**17, 2)
    out = {
        "admit_gas": gas_of(l1.admit(deployer, v1.address)),
        "register_gas": gas_of(l1.register_verifier(v1)),
    }
    for v in (v2, v3):
        l1.admit(deployer, v.address)
        l1.register_verifier(v)
    l1.post_output(sequencer, 10, b"\x01" * 32, l1.head(), 0)
    l1.post_output(sequencer, 20, b"\x02" * 32, l1.head(), 0)
    out["challenge_gas"] = gas_of(l1.challenge(v1, 0, b"\x03" * 32, b"\x04" * 32))
    out["attest_resolve_upheld_gas"] = gas_of(l1.attest(v2, 0, b"\x03" * 32))
    out["challenge_second_gas"] = gas_of(l1.challenge(v3, 1, b"\x05" * 32, b"\x06" * 32))
    out["attest_gas"] = gas_of(l1.attest(v1, 1, b"\x07" * 32))  # a third root: no quorum yet
    return out


def gram_step_gas(l1: L1, deployer: Any) -> dict[str, Any]:
    """The one-step verifier of one Gram chunk: both chunks' inclusion and their exact dot."""
    import numpy as np

    from mpsnode.consensus import fraud
    from mpsnode.node.l1.artifacts import artifact

    art = artifact("GramStep")
    factory = l1.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    receipt = l1.transact(deployer, lambda p: factory.constructor().build_transaction(p))
    gram = l1.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)
    rng = np.random.default_rng(0)
    n = 4096 * fraud.CHUNK  # the largest model: a full depth-12 tree
    a = rng.integers(-2000, 2000, n).astype("<i2").tobytes()
    b = rng.integers(-2000, 2000, n).astype("<i2").tobytes()
    j = 1234
    ca, cb = fraud.chunks(a)[j], fraud.chunks(b)[j]
    claimed = fraud.chunk_dot(ca, cb)
    call = gram.functions.check_step(
        fraud.chunk_root(a), fraud.chunk_root(b), j, ca, list(fraud.chunk_proof(a, j)), cb,
        list(fraud.chunk_proof(b, j)), claimed,
    )  # fmt: skip
    assert call.call() is True
    return {
        "check_step_gas": int(call.estimate_gas()),
        "chunk_dot_gas": int(gram.functions.chunk_dot(ca, cb).estimate_gas()),
        "chunk_values": fraud.CHUNK,
        "tree_depth": fraud.DEPTH,
        "deploy_gas": gas_of(receipt),
        "note": "estimate_gas of the call as a transaction: 21,000 base and the 4,096 bytes of chunks included",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer withdrawals in the large tree")
    args = parser.parse_args()
    out: dict[str, Any] = {"bench": "settlement_gas", "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp, Anvil().start(Path(tmp)) as node:
        l1 = L1(node.url)
        keys = [account(k) for k in node.private_keys[:4]]
        deployer, sequencer, alice, bob = keys
        before = int(rpc(node.url, "eth_blockNumber"), 16)
        config = l1.deploy(deployer, sequencer.address, 10**18, 0, 64)
        deploys = [
            int(l1.w3.eth.get_transaction_receipt(tx)["gasUsed"])
            for n in range(before + 1, int(rpc(node.url, "eth_blockNumber"), 16) + 1)
            for tx in l1.w3.eth.get_block(n)["transactions"]
        ]
        out["deploy_oracle_gas"], out["deploy_portal_gas"] = deploys[-2:]
        out["deposit_first_gas"] = gas_of(l1.deposit(alice, b"\x01" * 32, 10**9))
        out["deposit_gas"] = gas_of(l1.deposit(bob, b"\x02" * 32, 10**9))

        to, sender = bytes.fromhex(alice.address[2:]), b"\x09" * 32
        sizes = {"1": 1, "1000": 200 if args.quick else 1000}
        proofs: dict[str, int] = {}
        posts: list[int] = []
        height = 0
        for label, n in sizes.items():
            leaves = [S.withdrawal_leaf(i, to, 1000, sender) for i in range(n)]
            wroot, state_root, block_hash = S.tree_root_reference(leaves), os.urandom(32), os.urandom(32)
            height += 10
            posts.append(
                gas_of(
                    l1.post_output(
                        sequencer, height, S.output_root(state_root, wroot, block_hash), l1.head(), 2
                    )
                )
            )
            index = n - 1
            proof = S.tree_proof(leaves, index)
            output = l1.output_count() - 1
            proofs[label] = gas_of(
                l1.prove_withdrawal(
                    bob, output, (state_root, wroot, block_hash), index, to, 1000, sender, proof
                )
            )
        out["post_output_first_gas"], out["post_output_gas"] = posts
        # the first payout also turns the portal's paid total from zero (a fresh storage slot)
        out["prove_withdrawal_first_gas"] = proofs["1"]  # in a tree of 1
        out["prove_withdrawal_gas"] = proofs["1000"]  # in a tree of 1,000: the same 32 levels

        # keccak tree against the blake2b sparse-Merkle state root through the F precompile
        h0 = blake_h0(SMT_NODE)
        compiled = compile_code(PATHS, output_formats=["abi", "bytecode"])
        factory = l1.w3.eth.contract(abi=compiled["abi"], bytecode=compiled["bytecode"])
        receipt = l1.transact(deployer, lambda p: factory.constructor(h0[:32], h0[32:]).build_transaction(p))
        paths = l1.w3.eth.contract(address=receipt["contractAddress"], abi=compiled["abi"])
        left, right = os.urandom(32), os.urandom(32)
        onchain = bytes(paths.functions.blake_node(left, right).call())
        expected = hashlib.blake2b(left + right, digest_size=32, person=SMT_NODE).digest()
        assert onchain == expected, "the precompile's blake2b differs from hashlib's"
        per_depth: dict[str, dict[str, int]] = {}
        for depth in (0, 32, 64, 256):
            siblings = [os.urandom(32) for _ in range(depth)]
            leaf, path = os.urandom(32), int.from_bytes(os.urandom(32), "big")
            per_depth[str(depth)] = {
                "keccak_gas": int(paths.functions.keccak_path(leaf, path, siblings).estimate_gas()),
                "blake2b_gas": int(paths.functions.blake_path(leaf, path, siblings).estimate_gas()),
            }
        base_k, base_b = per_depth["0"]["keccak_gas"], per_depth["0"]["blake2b_gas"]
        keccak_level = (per_depth["256"]["keccak_gas"] - base_k) / 256
        blake_level = (per_depth["256"]["blake2b_gas"] - base_b) / 256
        state_keys = 1_000_000  # a large chain's state: accounts, tasks, updates, withdrawals
        smt_hashes = math.ceil(math.log2(state_keys)) + 3
        out["merkle_path"] = {
            "per_depth": per_depth,
            "keccak_gas_per_level": round(keccak_level, 1),
            "blake2b_gas_per_level": round(blake_level, 1),
            "withdrawal_tree_levels": S.TREE_DEPTH,
            "keccak_tree_path_gas": round(keccak_level * S.TREE_DEPTH),
            "smt_hashes_at_1e6_keys": smt_hashes,
            "blake2b_smt_path_gas_lower_bound": round(blake_level * smt_hashes),
            "note": "the blake2b side also needs a msgpack decoder for the record in the EVM (not counted)",
        }
        out["committee"] = committee_gas(node.url, node.private_keys)
        out["gram_step"] = gram_step_gas(l1, deployer)
        out["l1_chain_id"] = config.chain_id
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
