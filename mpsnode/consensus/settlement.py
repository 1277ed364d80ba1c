"""Settlement on L1: what the L2 agrees on about deposits, withdrawals and output roots.

A chain in settlement mode (its genesis names an ``L1Config``) takes value in only through
DEPOSIT system txs, each the copy of one ``Deposited`` event of the L1 portal, and lets it out
only through WITHDRAW txs, each appended to a keccak-256 Merkle tree of depth ``TREE_DEPTH``
that L1 checks with 32 hashes (docs/SETTLEMENT.md). The output root the sequencer posts to L1 is
``keccak256(OUTPUT_VERSION || state_root || withdrawals_root || block_hash)``, the layout of OP
Stack's output root. Everything here is integer and byte arithmetic: no I/O, no clock.

``L1Facts`` is what a node read from L1 for one block (the deposits it may or must include, up
to the block's L1 origin); the STF checks the block against them, so the verdict on a block is a
pure function of the block, its parent state and those facts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpsnode.consensus.encoding import expect_bytes, expect_list, expect_uint
from mpsnode.consensus.records import HASH, UINT, Record, list_of, wire

WEI_PER_UNIT = 10**9  # one L2 unit is one gwei
TREE_DEPTH = 32
MAX_WITHDRAWALS = 1 << TREE_DEPTH
OUTPUT_VERSION = bytes(32)
L1_ADDRESS_LEN = 20


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (not NIST SHA3-256)."""
    return _keccak().new(data=data, digest_bits=256).digest()


@functools.cache
def _keccak() -> Any:
    # pycryptodome sets up its C bindings through cffi, whose declaration parser costs about 50 ms
    # at import: the light CLI commands (inspect, keys, --help) load this module but never hash.
    from Crypto.Hash import keccak  # noqa: PLC0415 - heavy to import, needed only by a first hash

    return keccak


def _u256(value: int) -> bytes:
    return value.to_bytes(32, "big")


# ---------------------------------------------------------------------------------------------
# The L1 side as the L2 sees it


@dataclass(frozen=True, slots=True)
class L1Config:
    """What genesis records of the L1 a settlement-mode chain settles on."""

    chain_id: int  # the L1's EIP-155 chain id
    portal: bytes  # 20-byte address of the staking portal
    oracle: bytes  # 20-byte address of the output oracle
    start_block: int  # the L1 block the contracts were deployed in: no deposit is older
    deposit_window: int  # a deposit must be on L2 within this many L1 blocks

    def encode_obj(self) -> list[object]:
        """``[chain_id, portal, oracle, start_block, deposit_window]``."""
        return [self.chain_id, self.portal, self.oracle, self.start_block, self.deposit_window]

    @classmethod
    def decode_obj(cls, obj: Any) -> L1Config:
        """The config of its array; ``DecodeError`` for a malformed field."""
        chain_id, portal, oracle, start, window = expect_list(obj, 5, "l1 config")
        return cls(
            expect_uint(chain_id, "l1.chain_id"),
            expect_bytes(portal, "l1.portal", L1_ADDRESS_LEN),
            expect_bytes(oracle, "l1.oracle", L1_ADDRESS_LEN),
            expect_uint(start, "l1.start_block"),
            expect_uint(window, "l1.deposit_window"),
        )

    def to_json(self) -> dict[str, Any]:
        """The config as a genesis file spells it (addresses as 0x-hex)."""
        return {
            "chain_id": self.chain_id,
            "portal": "0x" + self.portal.hex(),
            "oracle": "0x" + self.oracle.hex(),
            "start_block": self.start_block,
            "deposit_window": self.deposit_window,
        }


@dataclass(frozen=True, slots=True)
class Deposit:
    """One ``Deposited`` event of the portal: the ``index``-th deposit, made in L1 block
    ``l1_block``, crediting ``amount`` units to L2 address ``recipient``."""

    index: int
    l1_block: int
    recipient: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class L1Facts:
    """What a node read from L1 for one L2 block with L1 origin ``origin``.

    ``deposits`` are the portal's deposits from the first one the parent state has not credited,
    in index order, every one made at or before ``origin`` (and none after it: the node stops
    reading there). ``origin_known`` is whether the node's L1 view reaches ``origin`` at all; when
    it does not, the block is not judged yet.
    """

    origin: int
    deposits: tuple[Deposit, ...]
    origin_known: bool = True

    def overdue(self, credited: int, window: int) -> Deposit | None:
        """The first deposit the block must have credited and did not: index ``>= credited``
        (the deposits credited once the block ran) and made ``window`` or more blocks before
        the origin."""
        for deposit in self.deposits:
            if deposit.index >= credited and deposit.l1_block + window <= self.origin:
                return deposit
        return None


def facts_for(origin: int, credited: int, deposits: Sequence[Deposit], origin_known: bool = True) -> L1Facts:
    """The ``L1Facts`` of a block with L1 origin ``origin`` on a parent state that credited
    ``credited`` deposits, from ``deposits`` (the portal's, in index order, as far as known)."""
    chosen = tuple(d for d in deposits if d.index >= credited and d.l1_block <= origin)
    return L1Facts(origin, chosen, origin_known)


# ---------------------------------------------------------------------------------------------
# The L2 side: the settlement record and withdrawals


@dataclass(frozen=True, slots=True)
class Settlement(Record):
    """The ``S`` record: deposits credited, withdrawals recorded and the withdrawal tree's frontier."""

    deposits: int = wire(UINT, 0)  # deposits credited so far: the next deposit's index
    deposited: int = wire(UINT, 0)  # units credited by deposits, in all
    withdrawals: int = wire(UINT, 0)  # withdrawals recorded so far: the next one's index
    withdrawn: int = wire(UINT, 0)  # units moved into withdrawal records, in all
    branch: tuple[bytes, ...] = wire(list_of(HASH), ())  # the tree's frontier (incremental_append)

    def withdrawals_root(self) -> bytes:
        """The root of the withdrawal tree this record's frontier stands for."""
        return frontier_root(self.branch, self.withdrawals)


@dataclass(frozen=True, slots=True)
class WithdrawalRecord(Record):
    """A ``W`` record: the ``index``-th withdrawal, payable on L1 once its output finalizes."""

    sender: bytes = wire(HASH)
    l1_address: bytes = wire(HASH)  # 20 bytes, left-padded to 32 (as abi.encode lays out an address)
    amount: int = wire(UINT)
    height: int = wire(UINT)

    def leaf(self, index: int) -> bytes:
        """This record's leaf in the withdrawal tree."""
        return withdrawal_leaf(index, self.l1_address[12:], self.amount, self.sender)


def withdrawal_leaf(index: int, l1_address: bytes, amount: int, sender: bytes) -> bytes:
    """``keccak256(abi.encode(uint256 index, address l1_address, uint256 amount, bytes32 sender))``:
    the portal's ``withdrawal_leaf``."""
    if len(l1_address) != L1_ADDRESS_LEN or len(sender) != 32:
        raise ValueError("a withdrawal leaf takes a 20-byte L1 address and a 32-byte sender")
    return keccak256(_u256(index) + bytes(12) + l1_address + _u256(amount) + sender)


@functools.cache
def zero_hashes() -> tuple[bytes, ...]:
    """``zero_hashes()[h]``: the root of an empty subtree of height ``h`` (computed on first use)."""
    zeros = [bytes(32)]
    for _ in range(TREE_DEPTH):
        zeros.append(keccak256(zeros[-1] + zeros[-1]))
    return tuple(zeros)


def incremental_append(branch: Sequence[bytes], count: int, leaf: bytes) -> tuple[bytes, ...]:
    """The frontier after appending ``leaf`` as leaf number ``count`` (the deposit contract's
    incremental Merkle tree: ``branch[h]`` is the last complete left subtree of height ``h``).
    The frontier is stored only as long as it is needed: entries past the highest set bit are
    dropped."""
    if count >= MAX_WITHDRAWALS:
        raise ValueError("the withdrawal tree is full")
    out = list(branch) + [bytes(32)] * (TREE_DEPTH - len(branch))
    node, size = leaf, count + 1
    for height in range(TREE_DEPTH):
        if size & 1:
            out[height] = node
            break
        node = keccak256(out[height] + node)
        size >>= 1
    return tuple(out[: (count + 1).bit_length()])


def frontier_root(branch: Sequence[bytes], count: int) -> bytes:
    """The root of a tree of ``count`` leaves from its frontier."""
    node, size, zeros = bytes(32), count, zero_hashes()
    for height in range(TREE_DEPTH):
        if size & 1:
            node = keccak256(branch[height] + node)
        else:
            node = keccak256(node + zeros[height])
        size >>= 1
    return node


def tree_root_reference(leaves: Sequence[bytes]) -> bytes:
    """The root of the tree of ``leaves`` computed level by level (the frontier's twin)."""
    level, zeros = list(leaves), zero_hashes()
    for height in range(TREE_DEPTH):
        if len(level) % 2:
            level.append(zeros[height])
        level = [keccak256(level[i] + level[i + 1]) for i in range(0, len(level), 2)] or [zeros[height + 1]]
    return level[0]


def tree_proof(leaves: Sequence[bytes], index: int) -> tuple[bytes, ...]:
    """The ``TREE_DEPTH`` siblings of leaf ``index`` in the tree of ``leaves``, bottom up (what
    the portal's ``prove_withdrawal`` takes)."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"no leaf {index} in a tree of {len(leaves)}")
    proof: list[bytes] = []
    level, position, zeros = list(leaves), index, zero_hashes()
    for height in range(TREE_DEPTH):
        if len(level) % 2:
            level.append(zeros[height])
        proof.append(level[position ^ 1])
        level = [keccak256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        position >>= 1
    return tuple(proof)


def verify_branch(leaf: bytes, index: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` takes ``leaf`` at ``index`` to ``root`` (the portal's check, in Python)."""
    node = leaf
    for height, sibling in enumerate(proof):
        node = keccak256(sibling + node) if (index >> height) & 1 else keccak256(node + sibling)
    return len(proof) == TREE_DEPTH and node == root


def output_root(state_root: bytes, withdrawals_root: bytes, block_hash: bytes) -> bytes:
    """The output root of an L2 block: what the sequencer posts to the oracle."""
    return keccak256(OUTPUT_VERSION + state_root + withdrawals_root + block_hash)
