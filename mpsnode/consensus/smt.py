"""The state commitment: a compact binary sparse Merkle tree over ``H(mps-smt-key, key)`` paths.

A state key maps to the 256-bit path ``kh = H(SMT_KEY, key)``, read most significant bit first; bit
``i`` picks the child at depth ``i`` (0 = left, 1 = right). The hash of a subtree is

- ``ZERO32`` when it holds no leaf,
- ``H(SMT_LEAF, kh || H(SMT_VAL, value))`` when it holds exactly one leaf, at whatever depth,
- ``H(SMT_NODE, left || right)`` when it holds two or more leaves.

So the root is a function of the contents alone: two leaves sharing a long prefix sit under a chain
of nodes with a ``ZERO32`` sibling down to the bit where their paths part, and deleting one of them
collapses the chain back into the other leaf.

``SparseMerkleTree`` updates the tree incrementally, touching only the paths of changed keys, and
keeps the node records it creates in memory (``pending_nodes``) until the caller writes them to its
store in the same transaction as the state. Node records are never deleted, so a tree object
opened at any earlier root still proves. ``compute_root_reference`` is the plain version of the
same function that the tests hold the incremental tree to.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mpsnode.consensus.hashing import SMT_KEY, SMT_LEAF, SMT_NODE, SMT_VAL, ZERO32, H, prepared

DEPTH = 256
MAX_SIBLINGS = DEPTH  # a path has 256 bits, so no leaf sits deeper than that
LEAF_TAG = 0
NODE_TAG = 1
RECORD_SIZE = 65  # tag byte + two 32-byte fields

# Copying a keyed hasher is about twice as fast as constructing one with a personalization string,
# and the tree spends most of its time hashing. test_smt holds these equal to ``H``.
_LEAF_HASHER = prepared(SMT_LEAF)
_NODE_HASHER = prepared(SMT_NODE)
_KEY_HASHER = prepared(SMT_KEY)
_VAL_HASHER = prepared(SMT_VAL)


def _hash_with(base: Any, data: bytes) -> bytes:
    h = base.copy()
    h.update(data)
    return h.digest()


def compute_key_hash(key: bytes) -> bytes:
    """The 256-bit path of ``key``."""
    return _hash_with(_KEY_HASHER, key)


def compute_value_hash(value: bytes) -> bytes:
    """``H(mps-smt-val, value)``."""
    return _hash_with(_VAL_HASHER, value)


def compute_leaf_hash(kh: bytes, value_hash: bytes) -> bytes:
    """A one-leaf subtree: ``H(mps-smt-leaf, key_hash || value_hash)``."""
    return _hash_with(_LEAF_HASHER, kh + value_hash)


def compute_node_hash(left: bytes, right: bytes) -> bytes:
    """An inner node: ``H(mps-smt-node, left || right)``."""
    return _hash_with(_NODE_HASHER, left + right)


class TreeNodeError(Exception):
    """A node record the tree needs is missing or malformed: the store does not hold this root's tree."""


# ``[H(SMT_VAL, v) for v in values]`` by other means (the node's hashes large values on a few threads
# at once); the tree falls back to hashing them one by one
ValueHashes = Callable[[Sequence[bytes]], list[bytes]]


class NodeStore(Protocol):
    """Storage for tree nodes: the record of a node by its hash, ``None`` if unknown."""

    def get_node(self, h: bytes) -> bytes | None:
        """The node record stored under hash ``h``, or None."""
        ...


class MemoryNodeStore:
    """A dict-backed ``NodeStore`` for tests, benchmarks and throwaway trees."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Mapping[bytes, bytes] | None = None) -> None:
        self._nodes: dict[bytes, bytes] = dict(nodes) if nodes else {}

    def get_node(self, h: bytes) -> bytes | None:
        """The node record stored under hash ``h``, or None."""
        return self._nodes.get(h)

    def put_nodes(self, nodes: Mapping[bytes, bytes]) -> None:
        """Keep ``nodes`` (hash -> record), as a store's commit would."""
        self._nodes.update(nodes)

    def __len__(self) -> int:
        return len(self._nodes)


@dataclass(frozen=True, slots=True)
class Proof:
    """The path from the root to where ``key``'s path ends.

    ``siblings`` are the hashes beside the path, root first; ``leaf`` is ``(kh, value_hash)`` of the
    single leaf whose subtree the path ends in, or ``None`` if it ends in an empty subtree. The leaf
    is the key's own for an inclusion proof, another key's for an exclusion proof.
    """

    siblings: tuple[bytes, ...]
    leaf: tuple[bytes, bytes] | None

    def encode(self) -> list[Any]:
        """``[[sibling, ...], []]`` or ``[[sibling, ...], [kh, value_hash]]``: arrays and bin only."""
        return [list(self.siblings), [] if self.leaf is None else [self.leaf[0], self.leaf[1]]]

    @classmethod
    def decode(cls, obj: Any) -> Proof:
        """The inverse of ``encode``; ``ValueError`` on anything ``encode`` cannot have produced."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 2:
            raise ValueError("a proof is an array of two: siblings and leaf")
        raw_siblings, raw_leaf = obj
        if not isinstance(raw_siblings, (list, tuple)):
            raise ValueError("proof siblings must be an array")
        if len(raw_siblings) > MAX_SIBLINGS:
            raise ValueError(f"{len(raw_siblings)} siblings exceeds the tree depth of {MAX_SIBLINGS}")
        for s in raw_siblings:
            if not _is_hash(s):
                raise ValueError("each proof sibling must be 32 bytes")
        if not isinstance(raw_leaf, (list, tuple)) or len(raw_leaf) not in (0, 2):
            raise ValueError("proof leaf must be an empty array or [kh, value_hash]")
        if raw_leaf and not (_is_hash(raw_leaf[0]) and _is_hash(raw_leaf[1])):
            raise ValueError("proof leaf kh and value_hash must be 32 bytes each")
        leaf = (bytes(raw_leaf[0]), bytes(raw_leaf[1])) if raw_leaf else None
        return cls(tuple(bytes(s) for s in raw_siblings), leaf)


def _is_hash(x: Any) -> bool:
    # Exactly bytes: msgpack decodes bin to bytes, so a str, bytearray or int here did not come
    # from an encoded proof.
    return type(x) is bytes and len(x) == 32


class SparseMerkleTree:
    """The tree at ``root`` over ``nodes``, updated in place by ``update``."""

    __slots__ = ("_nodes", "_pending", "_root", "_value_hashes")

    def __init__(
        self, nodes: NodeStore, root: bytes = ZERO32, value_hashes: ValueHashes | None = None
    ) -> None:
        if type(root) is not bytes or len(root) != 32:
            raise ValueError("a root is 32 bytes")
        self._nodes = nodes
        self._root = root
        self._pending: dict[bytes, bytes] = {}
        self._value_hashes = value_hashes

    @property
    def root(self) -> bytes:
        """The current root."""
        return self._root

    def pending_nodes(self) -> dict[bytes, bytes]:
        """Node records (hash -> record) created since the last ``clear_pending``: a copy."""
        return dict(self._pending)

    def clear_pending(self) -> None:
        """Forget pending records. Only once the store holds them: later lookups go to the store."""
        self._pending = {}

    # reads -----------------------------------------------------------------------------------

    def _record(self, h: bytes) -> bytes:
        rec = self._pending.get(h)
        return self._stored_record(h) if rec is None else rec

    def _stored_record(self, h: bytes) -> bytes:
        rec = self._nodes.get_node(h)
        if rec is None:
            raise TreeNodeError(f"node {h.hex()} is not in the store")
        if len(rec) != RECORD_SIZE or rec[0] > NODE_TAG:
            raise TreeNodeError(f"node {h.hex()} has a malformed record")
        return rec

    def _is_leaf(self, h: bytes) -> bool:
        return self._record(h)[0] == LEAF_TAG

    def prove(self, key: bytes) -> Proof:
        """An inclusion proof if ``key`` is present, an exclusion proof otherwise."""
        path = int.from_bytes(compute_key_hash(key), "big")
        siblings: list[bytes] = []
        node = self._root
        for depth in range(DEPTH + 1):
            if node == ZERO32:
                return Proof(tuple(siblings), None)
            rec = self._record(node)
            if rec[0] == LEAF_TAG:
                return Proof(tuple(siblings), (rec[1:33], rec[33:65]))
            if depth == DEPTH:
                break
            if (path >> (255 - depth)) & 1:
                siblings.append(rec[1:33])
                node = rec[33:65]
            else:
                siblings.append(rec[33:65])
                node = rec[1:33]
        raise TreeNodeError("an internal node below depth 256: the store is corrupt")

    def get_value_hash(self, key: bytes) -> bytes | None:
        """``H(SMT_VAL, value)`` of ``key`` in this tree, ``None`` if absent."""
        kh = compute_key_hash(key)
        leaf = self.prove(key).leaf
        return leaf[1] if leaf is not None and leaf[0] == kh else None

    # writes ----------------------------------------------------------------------------------

    def update(self, changes: Mapping[bytes, bytes | None]) -> bytes:
        """Set each key to its value, or delete it where the value is ``None``; the new root.

        Deleting an absent key and re-setting a present value are no-ops. On an exception (a node
        missing from the store) the root is unchanged; pending may hold a few unreferenced records.
        """
        if not changes:
            return self._root
        key_hasher, val_hasher = _KEY_HASHER, _VAL_HASHER
        hashed = None
        if self._value_hashes is not None:  # e.g. a round's model and global change side by side
            hashed = iter(self._value_hashes([v for v in changes.values() if v is not None]))
        entries: list[bytes] = []
        for key, value in changes.items():
            h = key_hasher.copy()
            h.update(key)
            kh = h.digest()
            if value is None:
                entries.append(kh)
            elif hashed is not None:
                entries.append(kh + next(hashed))
            else:
                h = val_hasher.copy()
                h.update(value)
                entries.append(kh + h.digest())
        # An entry is ``kh || value_hash`` (a set: exactly a leaf record's body) or ``kh`` alone (a
        # delete). Paths are distinct, so byte order of entries is path order, and sorting plain
        # bytes is much cheaper than sorting tuples.
        entries.sort()
        paths = [int.from_bytes(e[:32], "big") for e in entries]
        root, _ = self._update(self._root, 0, paths, entries, 0, len(entries))
        self._root = root
        return root

    def _update(
        self, node: bytes, depth: int, paths: list[int], entries: list[bytes], lo: int, hi: int
    ) -> tuple[bytes, bool | None]:
        """New (hash, is_leaf) of the subtree ``node`` at ``depth`` after the changes ``[lo, hi)``.

        ``is_leaf`` is ``None`` when it is not known without a read.
        """
        if hi - lo == 1:
            return self._update_one(node, depth, paths[lo], entries[lo])
        if node == ZERO32:
            return self._build_sets(depth, paths, entries, lo, hi)
        rec = self._record(node)
        if rec[0] == LEAF_TAG:
            return self._merge_into_leaf(node, rec, depth, paths, entries, lo, hi)
        if depth >= DEPTH:
            raise TreeNodeError("an internal node below depth 256: the store is corrupt")
        left, right = rec[1:33], rec[33:65]
        shift = 255 - depth
        # All paths in [lo, hi) share their first ``depth`` bits; the right half starts at that
        # prefix followed by a 1 and then zeros.
        mid = bisect_left(paths, ((paths[lo] >> shift) | 1) << shift, lo, hi)
        new_left, left_leaf = (
            self._update(left, depth + 1, paths, entries, lo, mid) if mid > lo else (left, None)
        )
        new_right, right_leaf = (
            self._update(right, depth + 1, paths, entries, mid, hi) if mid < hi else (right, None)
        )
        if new_left == left and new_right == right:
            return node, False
        return self._join(new_left, left_leaf, new_right, right_leaf)

    def _update_one(self, top: bytes, depth: int, path: int, entry: bytes) -> tuple[bytes, bool | None]:
        """``_update`` for a single change: most of every batch's paths end this way, so no recursion."""
        siblings: list[bytes] = []
        pending = self._pending
        get_node = self._nodes.get_node
        node = top
        d = depth
        while node != ZERO32:
            found = pending.get(node) or get_node(node)
            if found is None or len(found) != RECORD_SIZE or found[0] > NODE_TAG:
                found = self._stored_record(node)  # raises for a missing or malformed record
            rec = found
            if rec[0] == LEAF_TAG:
                break
            if d >= DEPTH:
                raise TreeNodeError("an internal node below depth 256: the store is corrupt")
            if (path >> (255 - d)) & 1:
                siblings.append(rec[1:33])
                node = rec[33:65]
            else:
                siblings.append(rec[33:65])
                node = rec[1:33]
            d += 1
        is_leaf: bool | None
        if node == ZERO32:
            if len(entry) == 32:  # deleting an absent key
                return top, None
            h, is_leaf = self._make_leaf(entry), True
        elif rec[1:33] == entry[:32]:  # the key's own leaf
            if len(entry) == 32:
                h, is_leaf = ZERO32, False
            elif rec[33:65] == entry[32:]:
                return top, None
            else:
                h, is_leaf = self._make_leaf(entry), True
        else:  # another key's leaf where this path ends
            if len(entry) == 32:
                return top, None
            other = int.from_bytes(rec[1:33], "big")
            pair = ([other, path], [rec[1:], entry]) if other < path else ([path, other], [entry, rec[1:]])
            h, is_leaf = self._build(d, pair[0], pair[1], 0, 2)
        join = self._join
        for i in range(len(siblings) - 1, -1, -1):
            sibling = siblings[i]
            right = (path >> (255 - depth - i)) & 1
            if sibling == ZERO32 or h == ZERO32:  # may collapse; rare, so out of line
                h, is_leaf = join(sibling, None, h, is_leaf) if right else join(h, is_leaf, sibling, None)
                continue
            body = sibling + h if right else h + sibling
            hasher = _NODE_HASHER.copy()
            hasher.update(body)
            h = hasher.digest()
            pending[h] = b"\x01" + body
            is_leaf = False
        return h, is_leaf

    def _join(
        self, left: bytes, left_leaf: bool | None, right: bytes, right_leaf: bool | None
    ) -> tuple[bytes, bool | None]:
        # A subtree holding one leaf is that leaf, so a node left with one leaf and an empty side
        # collapses into the leaf (and so does each node of the chain above it).
        if left == ZERO32:
            if right == ZERO32:
                return ZERO32, False
            if right_leaf is None:
                right_leaf = self._is_leaf(right)
            if right_leaf:
                return right, True
        elif right == ZERO32:
            if left_leaf is None:
                left_leaf = self._is_leaf(left)
            if left_leaf:
                return left, True
        body = left + right
        h = _NODE_HASHER.copy()
        h.update(body)
        digest = h.digest()
        self._pending[digest] = b"\x01" + body
        return digest, False

    def _make_leaf(self, entry: bytes) -> bytes:
        h = _LEAF_HASHER.copy()
        h.update(entry)
        digest = h.digest()
        self._pending[digest] = b"\x00" + entry
        return digest

    def _merge_into_leaf(
        self, node: bytes, rec: bytes, depth: int, paths: list[int], entries: list[bytes], lo: int, hi: int
    ) -> tuple[bytes, bool | None]:
        """Several changes reach a subtree holding one leaf: rebuild it from the leaf and the sets."""
        leaf_entry = rec[1:65]
        leaf_path = int.from_bytes(rec[1:33], "big")
        at = bisect_left(paths, leaf_path, lo, hi)
        keep = [i for i in range(lo, hi) if len(entries[i]) == 64]
        new_paths = [paths[i] for i in keep]
        new_entries = [entries[i] for i in keep]
        if not (at < hi and paths[at] == leaf_path):  # the leaf stays unless a change names its key
            pos = bisect_left(keep, at)  # the old leaf goes among the kept changes
            new_paths.insert(pos, leaf_path)
            new_entries.insert(pos, leaf_entry)
        if not new_paths:
            return ZERO32, False
        if len(new_entries) == 1 and new_entries[0] == leaf_entry:
            return node, True  # only no-ops reached this leaf (its own value, deletes of absent keys)
        return self._build(depth, new_paths, new_entries, 0, len(new_paths))

    def _build_sets(
        self, depth: int, paths: list[int], entries: list[bytes], lo: int, hi: int
    ) -> tuple[bytes, bool]:
        """A subtree from scratch out of the sets (not the deletes) among the changes ``[lo, hi)``."""
        keep = [i for i in range(lo, hi) if len(entries[i]) == 64]
        if not keep:
            return ZERO32, False
        if len(keep) == hi - lo:
            return self._build(depth, paths, entries, lo, hi)
        return self._build(depth, [paths[i] for i in keep], [entries[i] for i in keep], 0, len(keep))

    def _build(
        self, depth: int, paths: list[int], entries: list[bytes], lo: int, hi: int
    ) -> tuple[bytes, bool]:
        """The subtree at ``depth`` holding exactly the leaves ``entries[lo:hi]`` (at least one)."""
        if hi - lo == 1:
            return self._make_leaf(entries[lo]), True
        pending = self._pending
        first = paths[lo]
        # The highest bit where the smallest and the largest path differ is where the leaves part;
        # every level from ``depth`` down to it is a node with one empty side.
        split_bit = (first ^ paths[hi - 1]).bit_length() - 1
        mid = bisect_left(paths, ((first >> split_bit) | 1) << split_bit, lo, hi)
        split_depth = 255 - split_bit
        # A lone leaf skips the recursive call: leaves are half of all subtrees in a bulk build.
        left = (
            self._make_leaf(entries[lo])
            if mid - lo == 1
            else self._build(split_depth + 1, paths, entries, lo, mid)[0]
        )
        right = (
            self._make_leaf(entries[mid])
            if hi - mid == 1
            else self._build(split_depth + 1, paths, entries, mid, hi)[0]
        )
        body = left + right
        h = _NODE_HASHER.copy()
        h.update(body)
        digest = h.digest()
        pending[digest] = b"\x01" + body
        for d in range(split_depth - 1, depth - 1, -1):
            body = ZERO32 + digest if (first >> (255 - d)) & 1 else digest + ZERO32
            h = _NODE_HASHER.copy()
            h.update(body)
            digest = h.digest()
            pending[digest] = b"\x01" + body
        return digest, False


def verify_proof(root: bytes, key: bytes, value: bytes | None, proof: Proof) -> bool:
    """Whether ``proof`` shows ``key`` holding ``value`` (``None``: absent) in the tree at ``root``."""
    siblings = proof.siblings
    n = len(siblings)
    if n > MAX_SIBLINGS or not all(_is_hash(s) for s in siblings):
        return False
    kh = compute_key_hash(key)
    path = int.from_bytes(kh, "big")
    leaf = proof.leaf
    if leaf is not None and not (
        isinstance(leaf, tuple) and len(leaf) == 2 and _is_hash(leaf[0]) and _is_hash(leaf[1])
    ):
        return False
    if value is not None:
        if leaf is None or leaf[0] != kh or leaf[1] != compute_value_hash(value):
            return False
        node = compute_leaf_hash(kh, leaf[1])
    elif leaf is None:
        node = ZERO32
    else:
        # Exclusion through another leaf: the path ends in a subtree that holds only that leaf, so
        # it must be a different key sharing the first ``n`` bits of our path.
        other = int.from_bytes(leaf[0], "big")
        if other == path or (other ^ path) >> (DEPTH - n) != 0:
            return False
        node = compute_leaf_hash(leaf[0], leaf[1])
    for depth in range(n - 1, -1, -1):
        if (path >> (255 - depth)) & 1:
            node = compute_node_hash(siblings[depth], node)
        else:
            node = compute_node_hash(node, siblings[depth])
    return node == root


def compute_root_reference(items: Mapping[bytes, bytes]) -> bytes:
    """The root of a tree holding exactly ``items``, from the rules and nothing else (no node store)."""
    leaves = sorted((H(SMT_KEY, k), H(SMT_VAL, v)) for k, v in items.items())
    return _reference_subtree([(int.from_bytes(kh, "big"), kh, vh) for kh, vh in leaves], 0)


def _reference_subtree(leaves: list[tuple[int, bytes, bytes]], depth: int) -> bytes:
    if not leaves:
        return ZERO32
    if len(leaves) == 1:
        _, kh, vh = leaves[0]
        return H(SMT_LEAF, kh + vh)
    bit = 255 - depth
    left = [leaf for leaf in leaves if not (leaf[0] >> bit) & 1]
    right = [leaf for leaf in leaves if (leaf[0] >> bit) & 1]
    return H(SMT_NODE, _reference_subtree(left, depth + 1) + _reference_subtree(right, depth + 1))
