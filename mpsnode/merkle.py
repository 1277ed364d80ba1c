"""RFC 6962-style list roots with personalized leaf and node hashes.

``root([]) = H(mps-list-node, b"")``, ``root([d]) = H(mps-list-leaf, d)``, and for n > 1 the list
splits at k, the largest power of two below n: ``H(mps-list-node, root(d[:k]) || root(d[k:]))``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mpsnode.hashing import LIST_LEAF, LIST_NODE, H

EMPTY_LIST_ROOT = H(LIST_NODE, b"")


def list_root(items: Sequence[bytes]) -> bytes:
    if not items:
        return EMPTY_LIST_ROOT
    return _root([H(LIST_LEAF, d) for d in items])


def _root(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two strictly below n
    return H(LIST_NODE, _root(leaves[:k]) + _root(leaves[k:]))
