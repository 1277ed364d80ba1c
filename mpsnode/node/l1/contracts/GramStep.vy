# pragma version 0.4.3
# pragma evm-version cancun
"""
@title mpsnode one-step verifier: one chunk of one Gram-matrix entry
@notice The last step of the bisection game of docs/SETTLEMENT.md ("A permissionless fraud
        proof"). Two updates are committed as keccak Merkle roots over chunks of CHUNK int16
        values (little-endian, as the chain stores them; the last chunk zero-padded), in a tree
        of fixed depth DEPTH. A Gram entry G_ab is the sum over chunks of the chunks' dot
        products; when two parties disagree on G_ab they bisect the running sums down to one
        chunk j, and this contract redoes that one step: it checks both chunks against their
        roots and computes their dot product exactly.
"""

CHUNK: constant(uint256) = 1024  # int16 values per chunk: 2 KiB
CHUNK_BYTES: constant(uint256) = 2048
DEPTH: constant(uint256) = 12  # 4096 chunks: 2^22 parameters, the chain's largest model
WORDS: constant(uint256) = 64  # 32-byte words per chunk


@pure
@internal
def _root_of(leaf: bytes32, index: uint256, proof: bytes32[DEPTH]) -> bytes32:
    node: bytes32 = leaf
    for level: uint256 in range(DEPTH):
        if (index >> level) & 1 == 1:
            node = keccak256(concat(proof[level], node))
        else:
            node = keccak256(concat(node, proof[level]))
    return node


LOW_BYTES: constant(uint256) = 450552876409790643671482431940419874915447411150352389258589821042463539455  # 0x00ff repeated in 16 lanes


@pure
@internal
def _swap(word: uint256) -> uint256:
    # the chunk's int16 values are little-endian: swap the bytes of every 16-bit lane at once
    return ((word & LOW_BYTES) << 8) | ((word >> 8) & LOW_BYTES)


@pure
@internal
def _dot(a: Bytes[CHUNK_BYTES], b: Bytes[CHUNK_BYTES]) -> int256:
    # Two's complement in uint256: each lane is sign-extended (wrapping), the
    # products and the sum wrap mod 2^256, and the total (|total| < 2^40) is read back as int256.
    # Every step is unchecked on purpose: the bounds above make overflow impossible.
    total: uint256 = 0
    for w: uint256 in range(WORDS):
        wa: uint256 = self._swap(convert(extract32(a, w * 32), uint256))
        wb: uint256 = self._swap(convert(extract32(b, w * 32), uint256))
        for k: uint256 in range(16):
            # lane k, sign-extended without a branch: (x xor 2^15) - 2^15, wrapping
            xa: uint256 = unsafe_sub(((wa >> unsafe_sub(240, k << 4)) & 65535) ^ 32768, 32768)
            xb: uint256 = unsafe_sub(((wb >> unsafe_sub(240, k << 4)) & 65535) ^ 32768, 32768)
            total = unsafe_add(total, unsafe_mul(xa, xb))
    return convert(convert(total, bytes32), int256)


@pure
@external
def chunk_dot(a: Bytes[CHUNK_BYTES], b: Bytes[CHUNK_BYTES]) -> int256:
    """@notice The exact dot product of two chunks of CHUNK little-endian int16 values."""
    assert len(a) == CHUNK_BYTES and len(b) == CHUNK_BYTES, "gram: a chunk is CHUNK_BYTES long"
    return self._dot(a, b)


@pure
@external
def check_step(
    root_a: bytes32,
    root_b: bytes32,
    index: uint256,
    a: Bytes[CHUNK_BYTES],
    proof_a: bytes32[DEPTH],
    b: Bytes[CHUNK_BYTES],
    proof_b: bytes32[DEPTH],
    claimed: int256,
) -> bool:
    """
    @notice Whether chunk `index` of the updates committed by `root_a` and `root_b` has dot
            product `claimed`: the one step a disputed Gram entry bisects down to. Reverts when
            a chunk is not the committed one, so a false step cannot be made to look true.
    """
    assert len(a) == CHUNK_BYTES and len(b) == CHUNK_BYTES, "gram: a chunk is CHUNK_BYTES long"
    assert index < 2**DEPTH, "gram: chunk index out of range"
    assert self._root_of(keccak256(a), index, proof_a) == root_a, "gram: chunk a is not in its update"
    assert self._root_of(keccak256(b), index, proof_b) == root_b, "gram: chunk b is not in its update"
    return self._dot(a, b) == claimed
