"""Divergence reports: what failed, computed locally vs claimed by the header, and a replay bundle.

When a block fails a check (``verifier.checks``) the verifier daemon and ``mpsnode replay`` both
build the same report with ``Investigation``:

* the failed check, its reason, and the two sides: what this node computed, what the block claims;
* every root computed so far, each with its claimed value and whether they match;
* the receipts that differ from the ones the upstream (or the export) claims, event by event;
* when the state root differs, the first diverging state keys: the keys the block touched
  locally, plus the accounts and tasks named by the claimed receipts, each compared by value
  hash against a sparse-Merkle proof from the claimed side for the claimed state root;
* a replay bundle: the block bytes, the parent header, the genesis, the claimed receipts and
  proofs, and the witness of the re-execution (every state value and tree node it read), so
  ``mpsnode replay BUNDLE`` re-runs the block without the chain and prints the same report.

The report is JSON (format ``mps-divergence-report/1``); docs/VERIFIER.md describes each field.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsnode.consensus.block import Block, Header, decode_header
from mpsnode.consensus.encoding import decode, encode, expect_bytes, expect_list, expect_uint
from mpsnode.consensus.errors import DecodeError, InvalidBlock, MpsError
from mpsnode.consensus.events import Event
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.hashing import ZERO32
from mpsnode.consensus.receipt import Receipt, decode_receipts, receipts_root
from mpsnode.consensus.settlement import Deposit, L1Facts
from mpsnode.consensus.smt import (
    DEPTH,
    Proof,
    SparseMerkleTree,
    TreeNodeError,
    compute_key_hash,
    compute_leaf_hash,
    compute_node_hash,
    compute_value_hash,
)
from mpsnode.consensus.state import (
    ACCOUNT,
    CONFIG_KEY,
    DUPLICATE,
    GLOBALS_KEY,
    MODEL,
    TASK,
    UNBONDING_QUEUE,
    UPDATE,
    VALSET,
    Account,
    Globals,
    State,
    Task,
    account_key,
    model_key,
    task_key,
)
from mpsnode.consensus.stf.transition import BlockResult, state_transition
from mpsnode.node.errors import StoreError
from verifier.checks import STATE_ROOT, Divergence, precheck, verify_block

REPORT_FORMAT = "mps-divergence-report/1"
BUNDLE_MAGIC = "mps-replay-bundle"
BUNDLE_VERSION = 2  # 2: the L1 facts the block was judged with (settlement mode)
MAX_DIVERGING_KEYS = 32  # the report lists the first ones, in key order
MAX_CANDIDATE_KEYS = 4096
MAX_BUNDLE_BYTES = 1 << 31

Getter = Callable[[bytes], "bytes | None"]


# ---------------------------------------------------------------------------------------------
# Reading a claimed proof without the claimed value


def claimed_value_hash(root: bytes, key: bytes, proof: Proof) -> tuple[bool, bytes | None]:
    """``(proof is valid for root, value hash it shows for key)``; ``None``: it shows the key absent.

    ``smt.verify_proof`` needs the value itself; a verifier holds only the claimed root, so it
    reads the value hash out of the proof's leaf and folds the siblings up to the root (the same
    rule; tests/test_divergence.py holds the two equal).
    """
    siblings = proof.siblings
    n = len(siblings)
    if n > DEPTH:
        return False, None
    kh = compute_key_hash(key)
    path = int.from_bytes(kh, "big")
    leaf = proof.leaf
    if leaf is None:
        node, value_hash = ZERO32, None
    elif leaf[0] == kh:
        node, value_hash = compute_leaf_hash(kh, leaf[1]), leaf[1]
    else:
        other = int.from_bytes(leaf[0], "big")
        if (other ^ path) >> (DEPTH - n) != 0:  # the other leaf must share the path down to here
            return False, None
        node, value_hash = compute_leaf_hash(leaf[0], leaf[1]), None
    for depth in range(n - 1, -1, -1):
        if (path >> (255 - depth)) & 1:
            node = compute_node_hash(siblings[depth], node)
        else:
            node = compute_node_hash(node, siblings[depth])
    return node == root, value_hash


# ---------------------------------------------------------------------------------------------
# Naming keys and values for people


def describe_key(key: bytes) -> str:
    """A state key in words: ``account 3fa2...``, ``task 1``, ``globals``."""
    tag, rest = key[:1], key[1:]
    if key == CONFIG_KEY:
        return "config"
    if key == GLOBALS_KEY:
        return "globals"
    if tag == ACCOUNT and len(rest) == 32:
        return f"account {rest.hex()}"
    ids = {TASK: "task", MODEL: "model of task", VALSET: "validation set of task"}
    if tag in ids and len(rest) == 8:
        return f"{ids[tag]} {int.from_bytes(rest, 'big')}"
    if tag == UPDATE and len(rest) == 40:
        return f"update of task {int.from_bytes(rest[:8], 'big')} by {rest[8:].hex()}"
    if tag == DUPLICATE and len(rest) == 40:
        return f"duplicate index of task {int.from_bytes(rest[:8], 'big')} ({rest[8:].hex()[:16]}...)"
    if tag == UNBONDING_QUEUE and len(rest) == 8:
        return f"unbonding queue at height {int.from_bytes(rest, 'big')}"
    return f"key {key.hex()}"


def describe_value(key: bytes, value: bytes | None) -> Any:
    """A readable form of a stored value: records decoded, blobs as length and hash."""
    if value is None:
        return None
    tag = key[:1]
    try:
        if tag == ACCOUNT and len(key) == 33:
            a = Account.decode(value)
            return {
                "balance": a.balance,
                "nonce": a.nonce,
                "bonded": a.bonded,
                "unbonding": [[u.amount, u.release_height] for u in a.unbonding],
                "jailed": a.jailed,
                "tasks": list(a.tasks),
            }
        if key == GLOBALS_KEY:
            g = Globals.decode(value)
            return {"next_task_id": g.next_task_id, "burned": g.burned, "open_tasks": list(g.open_tasks)}
        if tag == TASK and len(key) == 9:
            t = Task.decode(value)
            return {
                "status": t.status.name,
                "round": t.round,
                "rounds_closed": t.rounds_closed,
                "participants": [p.hex() for p in t.participants],
                "submitted": [p.hex() for p in t.submitted],
                "escrow": t.escrow,
                "accuracy_bps": t.accuracy_bps,
                "reward_units": [[a.hex(), n] for a, n in t.reward_units],
            }
    except (DecodeError, ValueError):
        pass
    return {"bytes": len(value), "value_hash": compute_value_hash(value).hex()}


# ---------------------------------------------------------------------------------------------
# Witness: what one re-execution read


@dataclass
class Witness:
    """State values (``None``: absent) and tree node records a block's re-execution read."""

    state: dict[bytes, bytes | None] = field(default_factory=dict)
    nodes: dict[bytes, bytes] = field(default_factory=dict)

    def recording(self, get_state: Getter, get_node: Getter) -> tuple[Getter, _NodeReader]:
        def state_reader(key: bytes) -> bytes | None:
            if key not in self.state:
                self.state[key] = get_state(key)
            return self.state[key]

        return state_reader, _NodeReader(get_node, self.nodes)

    def replaying(self) -> tuple[Getter, _NodeReader]:
        """Readers that serve only what was recorded; anything else means the bundle is incomplete."""

        def state_reader(key: bytes) -> bytes | None:
            if key not in self.state:
                raise StoreError(f"the bundle's witness lacks state key {key.hex()}")
            return self.state[key]

        return state_reader, _NodeReader(None, self.nodes)


class _NodeReader:
    def __init__(self, get: Getter | None, seen: dict[bytes, bytes]) -> None:
        self._get, self._seen = get, seen

    def get_node(self, h: bytes) -> bytes | None:
        rec = self._seen.get(h)
        if rec is None and self._get is not None:
            rec = self._get(h)
            if rec is not None:
                self._seen[h] = rec
        return rec


# ---------------------------------------------------------------------------------------------
# The claimed side of the state


@dataclass(frozen=True, slots=True)
class ClaimedProofs:
    """Proofs of state keys against the claimed root, or why there are none."""

    source: str
    proofs: Mapping[bytes, Proof] = field(default_factory=dict)
    note: str = ""


def proofs_from_store(store: Any, root: bytes, keys: Iterable[bytes], source: str) -> ClaimedProofs:
    """Claimed proofs out of a node store that holds the tree at ``root`` (a home's LMDB store)."""
    tree = SparseMerkleTree(store, root)
    try:
        return ClaimedProofs(source, {key: tree.prove(key) for key in keys})
    except TreeNodeError as exc:
        return ClaimedProofs(source, note=f"{source} does not hold the tree of the claimed root: {exc}")


# ---------------------------------------------------------------------------------------------
# The investigation of one failed block


def _events_json(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [e.to_json() for e in events]


def _multiset_minus(a: list[Event], b: list[Event]) -> list[Event]:
    left = [encode(e.encode_obj()) for e in b]
    out = []
    for e in a:
        enc = encode(e.encode_obj())
        if enc in left:
            left.remove(enc)
        else:
            out.append(e)
    return out


def _event_keys(events: Iterable[Event]) -> set[bytes]:
    """State keys an event names: the accounts and tasks it concerns."""
    keys: set[bytes] = set()
    for event in events:
        for name in ("sender", "to", "address", "creator"):
            value = getattr(event, name, None)
            if isinstance(value, bytes) and len(value) == 32:
                keys.add(account_key(value))
        for name in ("participants", "selected", "flagged"):
            for value in getattr(event, name, ()) or ():
                if isinstance(value, bytes) and len(value) == 32:
                    keys.add(account_key(value))
        task_id = getattr(event, "task_id", None)
        if isinstance(task_id, int):
            keys.update((task_key(task_id), model_key(task_id)))
    return keys


@dataclass
class Investigation:
    """Everything known about one failed block; ``report()`` and ``bundle()`` write it down."""

    failure: Divergence
    genesis: Genesis
    parent: Header
    data: bytes
    claimed_receipts: bytes | None
    witness: Witness
    source: str

    @property
    def height(self) -> int:
        return self.failure.height

    @property
    def block(self) -> Block | None:
        return self.failure.block

    @property
    def result(self) -> BlockResult | None:
        return self.failure.result

    @classmethod
    def start(
        cls,
        failure: Divergence,
        *,
        genesis: Genesis,
        parent: Header,
        data: bytes,
        claimed_receipts: bytes | None,
        get_state: Getter,
        get_node: Getter,
        source: str,
    ) -> Investigation:
        """Re-execute the failed block on the parent state, recording what it reads (the witness)."""
        witness = Witness()
        inv = cls(failure, genesis, parent, data, claimed_receipts, witness, source)
        block = inv.block
        if block is not None and failure.result is not None:
            state_reader, nodes = witness.recording(get_state, get_node)
            with contextlib.suppress(InvalidBlock):  # the same failure again, now with every read recorded
                state_transition(
                    State(state_reader),
                    SparseMerkleTree(nodes, parent.state_root),
                    block,
                    parent,
                    genesis.config(),
                    l1=failure.l1,
                )
            # keys named only by the claimed side kept their parent value here: record it too
            for key in inv.state_keys():
                if key not in failure.result.state_writes and key not in witness.state:
                    witness.state[key] = get_state(key)
        return inv

    def claimed_receipt_list(self) -> list[Receipt] | None:
        if not self.claimed_receipts:
            return None
        try:
            return decode_receipts(self.claimed_receipts)
        except (MpsError, ValueError):
            return None

    def state_keys(self) -> list[bytes]:
        """Keys to compare with the claimed state: touched locally, or named by the claimed receipts."""
        result = self.result
        if result is None or result.state_root == (self.block.header.state_root if self.block else None):
            return []
        keys = set(result.state_writes) | {GLOBALS_KEY}
        claimed = self.claimed_receipt_list() or []
        keys |= _event_keys(e for r in claimed for e in r.events)
        keys |= _event_keys(result.events)
        return sorted(keys)[:MAX_CANDIDATE_KEYS]

    # the report --------------------------------------------------------------------------------
    def report(self, claimed: ClaimedProofs | None) -> dict[str, Any]:
        f, block = self.failure, self.block
        header = block.header if block is not None else None
        tx_id = None
        if block is not None and f.tx_index is not None and f.tx_index < len(block.txs):
            tx_id = block.txs[f.tx_index].tx_id.hex()
        return {
            "format": REPORT_FORMAT,
            "chain_id": self.genesis.chain_id,
            "genesis_hash": self.genesis.hash().hex(),
            "height": f.height,
            "block_hash": header.hash().hex() if header is not None else None,
            "check": f.check,
            "reason": f.detail,
            "computed": f.computed,
            "claimed": f.claimed,
            "tx_index": f.tx_index,
            "tx_id": tx_id,
            "header": header.to_json() if header is not None else None,
            "parent": {
                "height": self.parent.height,
                "hash": self.parent.hash().hex(),
                "state_root": self.parent.state_root.hex(),
                "timestamp_ms": self.parent.timestamp_ms,
            },
            "roots": self._roots(),
            "receipts": self._receipts(),
            "state": self._state(claimed),
            "source": self.source,
            "bundle": f"{f.height}.bundle",
        }

    def _roots(self) -> dict[str, Any]:
        block, result = self.block, self.result
        out: dict[str, Any] = {}
        if block is None:
            return out
        h = block.header
        if result is not None:
            pairs = [
                ("tx_root", result.tx_root, h.tx_root),
                ("receipts_root", result.receipts_root, h.receipts_root),
                ("state_root", result.state_root, h.state_root),
            ]
        elif self.failure.check == "tx_root":
            pairs = [("tx_root", bytes.fromhex(str(self.failure.computed)), h.tx_root)]
        else:
            pairs = []
        for name, computed, claimed in pairs:
            out[name] = {"computed": computed.hex(), "claimed": claimed.hex(), "match": computed == claimed}
        return out

    def _receipts(self) -> dict[str, Any] | None:
        result, block = self.result, self.block
        if result is None or block is None:
            return None
        computed = list(result.receipts)
        claimed = self.claimed_receipt_list()
        out: dict[str, Any] = {
            "computed_count": len(computed),
            "claimed_count": None,
            "claimed_match_header": None,
            "differ": [],
        }
        if claimed is None:
            out["note"] = (
                "no claimed receipts were available"
                if not self.claimed_receipts
                else "the claimed receipts do not decode"
            )
            return out
        out["claimed_count"] = len(claimed)
        out["claimed_match_header"] = receipts_root(claimed) == block.header.receipts_root
        differ = out["differ"]
        for index in range(max(len(computed), len(claimed))):
            mine = computed[index] if index < len(computed) else None
            theirs = claimed[index] if index < len(claimed) else None
            if mine is not None and theirs is not None and mine.hash() == theirs.hash():
                continue
            entry: dict[str, Any] = {
                "index": index,
                "computed": mine.to_json() if mine is not None else None,
                "claimed": theirs.to_json() if theirs is not None else None,
            }
            if mine is not None and theirs is not None:
                ours, others = list(mine.events), list(theirs.events)
                entry["events_only_computed"] = _events_json(_multiset_minus(ours, others))
                entry["events_only_claimed"] = _events_json(_multiset_minus(others, ours))
            differ.append(entry)
        return out

    def _state(self, claimed: ClaimedProofs | None) -> dict[str, Any] | None:
        result, block = self.result, self.block
        if result is None or block is None:
            return None
        root = block.header.state_root
        out: dict[str, Any] = {
            "computed_root": result.state_root.hex(),
            "claimed_root": root.hex(),
            "match": result.state_root == root,
            "keys_compared": 0,
            "diverging": [],
            "source": None,
            "note": None,
        }
        if result.state_root == root:
            return out
        keys = self.state_keys()
        if claimed is None:
            out["note"] = "no claimed state was available to compare keys with"
            return out
        out["source"] = claimed.source
        if claimed.note:
            out["note"] = claimed.note
            return out
        writes = result.state_writes
        invalid: list[str] = []
        diverging: list[dict[str, Any]] = []
        for key in keys:
            proof = claimed.proofs.get(key)
            if proof is None:
                continue
            out["keys_compared"] += 1
            valid, claimed_hash = claimed_value_hash(root, key, proof)
            if not valid:
                invalid.append(key.hex())
                continue
            before = self.witness.state.get(key)
            value = writes.get(key, before)
            local_hash = None if value is None else compute_value_hash(value)
            if local_hash != claimed_hash:
                diverging.append(
                    {
                        "key": key.hex(),
                        "what": describe_key(key),
                        "computed_value_hash": local_hash.hex() if local_hash else None,
                        "claimed_value_hash": claimed_hash.hex() if claimed_hash else None,
                        "computed_value": describe_value(key, value),
                        "value_before": describe_value(key, before),
                    }
                )
        out["diverging"] = diverging[:MAX_DIVERGING_KEYS]
        out["diverging_total"] = len(diverging)
        if invalid:
            out["note"] = (
                f"{len(invalid)} of the claimed proofs do not verify against the claimed state "
                "root "
                f"(the claimed side cannot back its own header), e.g. key {invalid[0]}"
            )
        return out

    # the bundle --------------------------------------------------------------------------------
    def bundle(self, claimed: ClaimedProofs | None) -> bytes:
        """The replay bundle: canonical msgpack (see ``Bundle``)."""
        proofs = [] if claimed is None else [[k, p.encode()] for k, p in sorted(claimed.proofs.items())]
        source = "" if claimed is None else claimed.source
        note = "" if claimed is None else claimed.note
        genesis_json = json.dumps(self.genesis.to_json(), sort_keys=True).encode()
        state = [[k, v] for k, v in sorted(self.witness.state.items()) if v is not None]
        absent = sorted(k for k, v in self.witness.state.items() if v is None)
        nodes = [[h, rec] for h, rec in sorted(self.witness.nodes.items())]
        return encode(
            [
                BUNDLE_MAGIC,
                BUNDLE_VERSION,
                self.height,
                genesis_json,
                self.parent.encode(),
                self.data,
                self.claimed_receipts or b"",
                state,
                absent,
                nodes,
                proofs,
                [source, note[:1000]],
                encode_facts(self.failure.l1),
            ]
        )


def encode_facts(facts: L1Facts | None) -> list[Any]:
    """L1 facts as the bundle holds them: ``[origin, [[index, l1_block, recipient, amount]...],
    origin_known]``, or ``[]`` on a chain without L1."""
    if facts is None:
        return []
    deposits = [[d.index, d.l1_block, d.recipient, d.amount] for d in facts.deposits]
    return [facts.origin, deposits, int(facts.origin_known)]


def decode_facts(obj: Any) -> L1Facts | None:
    """The facts of ``encode_facts``; ``DecodeError`` for a malformed field."""
    items = expect_list(obj, None, "l1 facts")
    if not items:
        return None
    origin, deposits, known = expect_list(items, 3, "l1 facts")
    out = []
    for item in expect_list(deposits, None, "l1 deposits"):
        index, l1_block, recipient, amount = expect_list(item, 4, "l1 deposit")
        out.append(
            Deposit(
                expect_uint(index, "index"),
                expect_uint(l1_block, "l1_block"),
                expect_bytes(recipient, "recipient", 32),
                expect_uint(amount, "amount"),
            )
        )
    return L1Facts(expect_uint(origin, "origin"), tuple(out), bool(expect_uint(known, "origin_known", 1)))


def write_report(directory: str | Path, report: Mapping[str, Any], bundle: bytes) -> Path:
    """``directory/<height>.json`` and ``directory/<height>.bundle``, each written whole (rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    height = report["height"]
    _write_atomic(directory / f"{height}.bundle", bundle)
    path = directory / f"{height}.json"
    _write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Replaying a bundle


@dataclass(frozen=True, slots=True)
class Bundle:
    height: int
    genesis: Genesis
    parent: Header
    data: bytes
    claimed_receipts: bytes
    witness: Witness
    claimed: ClaimedProofs
    l1: L1Facts | None = None

    @classmethod
    def decode(cls, raw: bytes) -> Bundle:
        """Parse a bundle; ``DecodeError`` with a reason if it is not one."""
        try:
            obj = decode(raw, max_bytes=MAX_BUNDLE_BYTES, max_array_len=1 << 24, max_str_len=1 << 12)
            obj = expect_list(obj, 13, "bundle")
        except DecodeError as exc:
            raise DecodeError(f"not a replay bundle: {exc.reason}") from None
        (
            magic,
            version,
            height,
            genesis_json,
            parent,
            data,
            receipts,
            state,
            absent,
            nodes,
            proofs,
            meta,
            l1,
        ) = obj
        if magic != BUNDLE_MAGIC or version != BUNDLE_VERSION:
            raise DecodeError(f"not a version-{BUNDLE_VERSION} replay bundle")
        witness = Witness()
        for item in expect_list(state, None, "witness state"):
            k, v = expect_list(item, 2, "witness entry")
            witness.state[expect_bytes(k, "key")] = expect_bytes(v, "value")
        for k in expect_list(absent, None, "witness absent keys"):
            witness.state[expect_bytes(k, "key")] = None
        for item in expect_list(nodes, None, "witness nodes"):
            h, rec = expect_list(item, 2, "witness node")
            witness.nodes[expect_bytes(h, "node hash", 32)] = expect_bytes(rec, "node record")
        claimed_proofs: dict[bytes, Proof] = {}
        for item in expect_list(proofs, None, "claimed proofs"):
            k, p = expect_list(item, 2, "claimed proof")
            try:
                claimed_proofs[expect_bytes(k, "key")] = Proof.decode(p)
            except ValueError as exc:
                raise DecodeError(f"claimed proof: {exc}") from None
        source, note = expect_list(meta, 2, "claimed source")
        try:
            genesis = Genesis.from_json(json.loads(expect_bytes(genesis_json, "genesis")))
        except (ValueError, MpsError) as exc:
            raise DecodeError(f"bundle genesis: {exc}") from None
        parent_header = decode_header(expect_bytes(parent, "parent header"))
        return cls(
            expect_uint(height, "height"),
            genesis,
            parent_header,
            expect_bytes(data, "block"),
            expect_bytes(receipts, "receipts"),
            witness,
            ClaimedProofs(str(source), claimed_proofs, str(note)),
            decode_facts(l1),
        )

    def rerun(self) -> Investigation | None:
        """Re-run every check on the bundled block; the investigation if it fails again, else None."""
        config = self.genesis.config()
        state_reader, nodes = self.witness.replaying()
        try:
            tree = SparseMerkleTree(nodes, self.parent.state_root)
            verify_block(
                precheck(self.height, self.data, config),
                self.parent,
                State(state_reader),
                tree,
                config,
                self.l1,
            )
        except Divergence as failure:
            return Investigation(
                failure,
                self.genesis,
                self.parent,
                self.data,
                self.claimed_receipts or None,
                self.witness,
                "bundle",
            )
        except TreeNodeError as exc:
            raise StoreError(f"the bundle's witness lacks a tree node: {exc}") from None
        return None


__all__ = [
    "STATE_ROOT",
    "Bundle",
    "ClaimedProofs",
    "Investigation",
    "Witness",
    "claimed_value_hash",
    "describe_key",
    "describe_value",
    "proofs_from_store",
    "write_report",
]
