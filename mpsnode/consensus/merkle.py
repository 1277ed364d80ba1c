"""RFC 6962-style list roots with personalized leaf and node hashes.

``root([]) = H(mps-list-node, b"")``, ``root([d]) = H(mps-list-leaf, d)``, and for n > 1 the list
splits at k, the largest power of two below n: ``H(mps-list-node, root(d[:k]) || root(d[k:]))``.

``list_root`` computes the same tree level by level: hash adjacent pairs, carry an odd last node up
unchanged, repeat. Splitting at the largest power of two below n makes every left subtree perfect,
so the pairs of each level are exactly the recursion's nodes of that height, and the odd node at
the end of a level is the root of the right-most, smaller subtree, which the recursion joins
higher up. ``list_root_reference`` is the recursion as written above; tests/test_wire.py holds the
two equal.
"""

from __future__ import annotations

from collections.abc import Sequence

from mpsnode.consensus.hashing import LIST_LEAF, LIST_NODE, H, prepared

EMPTY_LIST_ROOT = H(LIST_NODE, b"")


def list_root(items: Sequence[bytes]) -> bytes:
    """The RFC 6962-shaped root of ``items`` (each hashed as a leaf here): ``EMPTY`` for none."""
    if not items:
        return EMPTY_LIST_ROOT
    leaf, node = prepared(LIST_LEAF), prepared(LIST_NODE)  # the reference hashes through ``H``
    level = []
    for d in items:
        h = leaf.copy()
        h.update(d)
        level.append(h.digest())
    while len(level) > 1:
        up = []
        for i in range(0, len(level) - 1, 2):
            h = node.copy()
            h.update(level[i] + level[i + 1])
            up.append(h.digest())
        if len(level) % 2:
            up.append(level[-1])
        level = up
    return level[0]


def list_root_reference(items: Sequence[bytes]) -> bytes:
    """``list_root`` by the recursive definition (the module doc)."""
    if not items:
        return EMPTY_LIST_ROOT
    return _root([H(LIST_LEAF, d) for d in items])


def _root(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two strictly below n
    return H(LIST_NODE, _root(leaves[:k]) + _root(leaves[k:]))


def list_proof(items: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of ``items[index]`` under ``list_root(items)``: sibling roots, leaf level first."""
    if not 0 <= index < len(items):
        raise IndexError(f"index {index} outside a list of {len(items)}")
    leaves = [H(LIST_LEAF, d) for d in items]
    path: list[bytes] = []
    lo, hi, i = 0, len(leaves), index
    siblings: list[bytes] = []  # top-down while descending
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if i < k:
            siblings.append(_root(leaves[lo + k : hi]))
            hi = lo + k
        else:
            siblings.append(_root(leaves[lo : lo + k]))
            lo, i = lo + k, i - k
    path.extend(reversed(siblings))
    return path


def verify_list_proof(root: bytes, item: bytes, index: int, count: int, path: Sequence[bytes]) -> bool:
    """Whether ``item`` is at ``index`` of a ``count``-item list whose root is ``root``."""
    if not 0 <= index < count:
        return False
    sides: list[bool] = []  # True when the sibling is on the right, top-down
    lo, hi, i = 0, count, index
    while hi - lo > 1:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if i < k:
            sides.append(True)
            hi = lo + k
        else:
            sides.append(False)
            lo, i = lo + k, i - k
    if len(sides) != len(path):
        return False
    node = H(LIST_LEAF, item)
    for sibling, right in zip(path, reversed(sides), strict=True):
        node = H(LIST_NODE, node + sibling) if right else H(LIST_NODE, sibling + node)
    return node == root
