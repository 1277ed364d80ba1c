"""Read-only views of a node's store for humans and scripts (``mpsnode inspect``)."""

from __future__ import annotations

from typing import Any

from mpsnode.consensus import crypto
from mpsnode.consensus.block import decode_block, decode_header
from mpsnode.consensus.events import Event, ParticipantRemoved, RemovalReason, Slashed
from mpsnode.consensus.hashing import H
from mpsnode.consensus.receipt import decode_receipts
from mpsnode.consensus.smt import SparseMerkleTree, verify_proof
from mpsnode.consensus.state import Account, RoundPhase, State, Task, account_key, task_key
from mpsnode.consensus.tx import Aggregator
from mpsnode.node.files import load_key
from mpsnode.node.home import Home
from mpsnode.node.store import LmdbStore


def event_json(event: Event) -> dict[str, Any]:
    """An event as JSON, a slash's rule by name (``krum_score``, ``direction``) beside its code."""
    out = event.to_json()
    if isinstance(event, (Slashed, ParticipantRemoved)):
        out["rule"] = RemovalReason.describe(event.reason)
    return out


def account_fields(address: bytes, acct: Account) -> dict[str, Any]:
    """An account record as the fields ``inspect account``, ``query account`` and the explorer show."""
    return {
        "address": address.hex(),
        "balance": acct.balance,
        "nonce": acct.nonce,
        "bonded": acct.bonded,
        "unbonding": [[u.amount, u.release_height] for u in acct.unbonding],
        "jailed": acct.jailed,
        "tasks": list(acct.tasks),
    }


def tx_fields(stx: Any) -> dict[str, Any]:
    """A block's signed tx as one line of ``query block`` and the explorer's block (no payload)."""
    return {
        "tx_id": stx.tx_id.hex(),
        "kind": stx.tx.kind.name,
        "sender": stx.tx.sender.hex(),
        "nonce": stx.tx.nonce,
        "fee": stx.tx.fee,
        "size": stx.size,
    }


def task_fields(task: Task) -> dict[str, Any]:
    """A task record as the fields ``inspect task`` and ``query task`` show (addresses as hex)."""
    return {
        "task_id": task.task_id,
        "status": task.status.name,
        "creator": task.creator.hex(),
        "arch": list(task.arch),
        "scale_bits": task.scale_bits,
        "target_accuracy_bps": task.target_accuracy_bps,
        "round": task.round,
        "phase": RoundPhase(task.phase).name.lower(),
        "round_deadline": task.round_deadline,
        "rounds_closed": task.rounds_closed,
        "max_rounds": task.max_rounds,
        "min_clients": task.min_clients,
        "max_clients": task.max_clients,
        "byzantine_f": task.byzantine_f,
        "aggregator": Aggregator.describe(task.aggregator),
        "removed": task.removed,
        "participants": [a.hex() for a in task.participants],
        "missed": {a.hex(): n for a, n in task.missed},
        "committed": [a.hex() for a in task.committed],
        "submitted": [a.hex() for a in task.submitted],
        # contribution units earned so far (10^6 per billed round are shared; docs/PROTOCOL.md section 8)
        "reward_units": {a.hex(): n for a, n in task.reward_units},
        "escrow": task.escrow,
        "fee_per_round": task.fee_per_round,
        "billed_rounds": task.billed_rounds,
        "accuracy_bps": task.accuracy_bps,
        "void_rounds": task.rounds_closed - task.billed_rounds,
        "join_deadline": task.join_deadline,
    }


def inspect(home_path: str, what: list[str]) -> dict[str, Any]:
    home = Home.open(home_path)
    if not home.data_path.exists():
        raise FileNotFoundError(f"{home.data_path} holds no chain yet: start a node on this home first")
    store = LmdbStore(home.data_path, map_size=home.map_size, readonly=True)
    try:
        return _inspect(store, what, home)
    finally:
        store.close()


def _inspect(store: LmdbStore, what: list[str], home: Home) -> dict[str, Any]:
    head = store.head()
    if head is None:
        raise FileNotFoundError("the store is empty")
    cmd, *rest = what or ["head"]
    state = State(store.get_state)
    if cmd == "head" and not rest:
        header = decode_header(store.get_header(head.height) or b"")
        return {
            "height": head.height,
            "hash": head.block_hash.hex(),
            "state_root": head.state_root.hex(),
            "timestamp_ms": head.timestamp_ms,
            "chain_id": header.chain_id,
        }
    if cmd == "block" and len(rest) == 1:
        height = int(rest[0])
        data = store.get_block(height)
        if height == 0:
            return decode_header(store.get_header(0) or b"").to_json()
        if data is None:
            raise ValueError(f"no block at height {height} (head is {head.height})")
        block = decode_block(data)
        receipts = decode_receipts(store.get_receipts(height) or b"")
        return {
            **block.header.to_json(),
            "txs": [
                {
                    "tx_id": t.tx_id.hex(),
                    "kind": t.tx.kind.name,
                    "sender": t.tx.sender.hex(),
                    "nonce": t.tx.nonce,
                    "fee": t.tx.fee,
                }
                for t in block.txs
            ],
            "receipts": [r.to_json() for r in receipts],
        }
    if cmd == "account" and len(rest) == 1:
        try:
            address = crypto.parse_address(rest[0])
        except ValueError:
            key_file = home.key_path(rest[0])
            if not key_file.is_file():
                raise ValueError(
                    f"{rest[0]!r} is neither an address (64 hex digits) nor a key name in "
                    f"{home.path / 'keys'}"
                ) from None
            address = load_key(key_file).address
        acct = state.get_account(address)
        proof_ok = _proof_ok(store, head.state_root, account_key(address))
        return {**account_fields(address, acct), "proof_verified": proof_ok}
    if cmd == "task" and len(rest) == 1:
        task = state.get_task(int(rest[0]))
        if task is None:
            raise ValueError(f"no task {rest[0]}")
        model = state.get_model(task.task_id)
        return {
            **task_fields(task),
            "model_hash": H(b"mps-model", model).hex(),
            "proof_verified": _proof_ok(store, head.state_root, task_key(task.task_id)),
        }
    raise ValueError(f"unknown inspect query {' '.join(what)!r}: use head | block H | account ADDR | task ID")


def _proof_ok(store: LmdbStore, root: bytes, key: bytes) -> bool:
    return verify_proof(root, key, store.get_state(key), SparseMerkleTree(store, root).prove(key))
