"""Personalized blake2b-256: one domain per kind of thing hashed, so no two kinds can collide."""

from __future__ import annotations

import hashlib

TX_SIGN = b"mps-tx-sign"
TX_LEAF = b"mps-tx-leaf"
RECEIPT = b"mps-receipt"
HEADER = b"mps-header"
LIST_LEAF = b"mps-list-leaf"
LIST_NODE = b"mps-list-node"
SMT_KEY = b"mps-smt-key"
SMT_VAL = b"mps-smt-val"
SMT_LEAF = b"mps-smt-leaf"
SMT_NODE = b"mps-smt-node"
UPDATE = b"mps-update"  # digest of a revealed delta (duplicate detection, commitments)
COMMIT = b"mps-commit"  # COMMIT_UPDATE's commitment to a delta
MODEL = b"mps-model"  # a task's model weights, for display and golden vectors (not in state)

ZERO32 = bytes(32)


def H(domain: bytes, data: bytes) -> bytes:
    """blake2b with a 32-byte digest and ``domain`` as the personalization string."""
    return hashlib.blake2b(data, digest_size=32, person=domain).digest()
