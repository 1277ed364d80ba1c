"""The permissionless fraud proof's pieces, as Python: chunk commitments of an update and the one
step an L1 contract redoes (docs/SETTLEMENT.md, "A permissionless fraud proof").

An update (int16 little-endian, as REVEAL_UPDATE carries it) is cut into chunks of ``CHUNK``
values, the last one zero-padded; its chunk root is the keccak-256 Merkle root over
``keccak256(chunk)`` in a tree of fixed depth ``DEPTH`` (empty leaves zero). A Gram entry is the
sum over chunks of the chunks' dot products, so two parties who disagree on one can bisect the
running sums to the first chunk where they part, and ``GramStep.check_step`` on L1 redoes that
chunk alone. This module is the reference the contract is held to in the tests; the chain does
not commit to chunk roots yet (the design says where they would go).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpsnode.consensus.settlement import keccak256

CHUNK = 1024  # int16 values per chunk
CHUNK_BYTES = 2 * CHUNK
DEPTH = 12  # 4096 chunks: 2^22 parameters


def _zeros() -> tuple[bytes, ...]:
    out = [bytes(32)]
    for _ in range(DEPTH):
        out.append(keccak256(out[-1] + out[-1]))
    return tuple(out)


ZEROS = _zeros()


def chunks(delta: bytes) -> list[bytes]:
    """The update's chunks, the last zero-padded to ``CHUNK_BYTES``."""
    if len(delta) % 2:
        raise ValueError("an update is a whole number of int16 values")
    if len(delta) > CHUNK_BYTES << DEPTH:
        raise ValueError(f"an update has at most {CHUNK << DEPTH} values")
    out = [delta[i : i + CHUNK_BYTES] for i in range(0, len(delta), CHUNK_BYTES)] or [b""]
    out[-1] = out[-1].ljust(CHUNK_BYTES, b"\0")
    return out


def _levels(delta: bytes) -> list[list[bytes]]:
    level = [keccak256(c) for c in chunks(delta)]
    levels = [level]
    for height in range(DEPTH):
        if len(level) % 2:
            level = [*level, ZEROS[height]]
        level = [keccak256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def chunk_root(delta: bytes) -> bytes:
    """The chunk root of an update."""
    return _levels(delta)[-1][0]


def chunk_proof(delta: bytes, index: int) -> tuple[bytes, ...]:
    """The ``DEPTH`` siblings of chunk ``index``, bottom up (``GramStep.check_step``'s proofs)."""
    levels = _levels(delta)
    if not 0 <= index < len(levels[0]):
        raise ValueError(f"no chunk {index}")
    proof, position = [], index
    for height in range(DEPTH):
        level = levels[height]
        sibling = position ^ 1
        proof.append(level[sibling] if sibling < len(level) else ZEROS[height])
        position >>= 1
    return tuple(proof)


def chunk_dot(a: bytes, b: bytes) -> int:
    """The exact dot product of two chunks (or any two equal-length int16 byte strings)."""
    x = np.frombuffer(a, dtype="<i2").astype(np.int64)
    y = np.frombuffer(b, dtype="<i2").astype(np.int64)
    return int(x @ y)


def running_sums(a: bytes, b: bytes) -> list[int]:
    """``S[j]``: the dot product of the first ``j`` chunks; ``S[-1]`` is the Gram entry."""
    sums = [0]
    for ca, cb in zip(chunks(a), chunks(b), strict=True):
        sums.append(sums[-1] + chunk_dot(ca, cb))
    return sums


def bisect(claimed: Sequence[int], honest: Sequence[int]) -> int:
    """The chunk the game ends on: both sides agree ``S[0] = 0`` and disagree on the last sum;
    halving the interval keeps one end agreed and the other not, until they are one chunk apart.
    Returns ``j`` with ``claimed[j] == honest[j]`` and ``claimed[j + 1] != honest[j + 1]``: the
    one step ``check_step`` then decides (``honest[j + 1] - honest[j]`` is the chunk's dot)."""
    if claimed[0] != honest[0] or claimed[-1] == honest[-1]:
        raise ValueError("a game starts from an agreed 0 and a disputed total")
    low, high = 0, len(honest) - 1  # agreed at low, disputed at high
    while high - low > 1:
        mid = (low + high) // 2
        if claimed[mid] == honest[mid]:
            low = mid
        else:
            high = mid
    return low
