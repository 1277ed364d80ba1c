"""What the explorer shows, as JSON, read from a node's own store: no I/O beyond it, no web stack.

Every view is a dict of the fields the CLI's ``--json`` prints for the same thing (``task_fields``,
``event_json``, the header's ``to_json``, the receipt's), plus what only a page needs (a task's
rounds as a curve, an account's history). State is read at the store's head and every view says
at which height and state root (``proven_at_height``, ``state_root``): the node serves what it
itself verified or built, so the proof is the node's own tree. Responses are bounded: lists are
capped (``MAX_LIST``) and a block's txs are listed without their payloads.

``AccountIndex`` keeps, per address, the events that name it (rewards, slashes, joins, transfers,
deposits, withdrawals), each with its block's height and state root: the chain has no index by
address, so the explorer folds every block's events once as the node makes or verifies them, and
keeps the newest ``per_address`` of each address.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from typing import Any

from mpsnode.consensus.block import decode_block, decode_header
from mpsnode.consensus.encoding import decode
from mpsnode.consensus.events import (
    Event,
    RoundClosed,
    Slashed,
    TaskCompleted,
    TaskExpired,
    decode_event,
)
from mpsnode.consensus.receipt import decode_receipts
from mpsnode.consensus.state import State, TaskStatus
from mpsnode.node.errors import BadRequest, NotFound
from mpsnode.node.inspect import account_fields, event_json, task_fields, tx_fields
from mpsnode.node.store import StoreReader

MAX_LIST = 200  # items in any list a view returns
RECENT_BLOCKS = 25
ADDRESS_FIELDS = frozenset(
    {"address", "sender", "to", "creator", "recipient"}
)  # event fields that hold an account


def parse_hash(text: str, what: str) -> bytes:
    """32 bytes from 64 hex digits (``what``: "an address", "a tx id"); ``BadRequest`` otherwise."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BadRequest(f"{what} is 64 hex digits; got {text[:80]!r}")
    return raw


def decode_events(blob: bytes) -> list[Event]:
    return [decode_event(e) for e in decode(blob, max_bytes=len(blob), max_array_len=1 << 24)]


class Views:
    """The explorer's JSON views of ``store`` (a node's ``StoreReader``)."""

    def __init__(self, store: StoreReader, block_time_ms: int) -> None:
        self.store = store
        self.block_time_ms = block_time_ms
        self._roots: OrderedDict[int, str] = OrderedDict()  # height -> state root hex (blocks never change)
        self._summaries: OrderedDict[int, dict[str, Any]] = OrderedDict()  # height -> block_summary

    # helpers ---------------------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        head = self.store.head()
        if head is None:
            raise NotFound("the store is empty")
        return head.height, head.state_root.hex()

    def state_root_at(self, height: int) -> str:
        root = self._roots.get(height)
        if root is None:
            raw = self.store.get_header(height)
            root = decode_header(raw).state_root.hex() if raw else ""
            self._roots[height] = root
            if len(self._roots) > 4096:
                self._roots.popitem(last=False)
        return root

    def _state(self) -> State:
        return State(self.store.get_state)

    # tasks -----------------------------------------------------------------------------------------
    def _time_left(self, deadline: int, height: int) -> dict[str, Any]:
        blocks = max(0, deadline - height)
        return {"blocks_left": blocks, "seconds_left": round(blocks * self.block_time_ms / 1000, 1)}

    def task_summary(self, task: Any, height: int) -> dict[str, Any]:
        out = {
            "task_id": task.task_id,
            "status": task.status.name,
            "round": task.round,
            "phase": task_fields(task)["phase"],
            "rounds_closed": task.rounds_closed,
            "max_rounds": task.max_rounds,
            "accuracy_bps": task.accuracy_bps,
            "target_accuracy_bps": task.target_accuracy_bps,
            "participants": len(task.participants),
            "min_clients": task.min_clients,
            "max_clients": task.max_clients,
            "escrow": task.escrow,
        }
        if task.status == TaskStatus.JOINING:
            out.update(self._time_left(task.join_deadline, height))
        elif task.status == TaskStatus.ACTIVE:
            out.update(self._time_left(task.round_deadline, height))
        return out

    def tasks(self) -> dict[str, Any]:
        height, root = self.head()
        state = self._state()
        newest = state.get_globals().next_task_id - 1
        items = []
        for task_id in range(newest, max(0, newest - MAX_LIST), -1):
            task = state.get_task(task_id)
            if task is not None:
                items.append(self.task_summary(task, height))
        return {"tasks": items, "count": newest, "proven_at_height": height, "state_root": root}

    def task(self, task_id: int) -> dict[str, Any]:
        height, root = self.head()
        task = self._state().get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id} at height {height}")
        rounds: list[dict[str, Any]] = []
        billing: dict[str, Any] = {}
        slashes: list[dict[str, Any]] = []
        removed: list[dict[str, Any]] = []
        for at, blob in self.store.get_task_events(task_id)[-4 * MAX_LIST :]:
            events = [e for e in decode_events(blob) if getattr(e, "task_id", None) == task_id]
            for ev in events:
                if isinstance(ev, RoundClosed):
                    rounds.append(self.round_entry(ev, at))
                elif isinstance(ev, Slashed):
                    slashes.append({**event_json(ev), "height": at, "round": task.round})
                elif ev.name == "ParticipantRemoved":
                    removed.append({**event_json(ev), "height": at})
                elif ev.name in ("Rewarded", "Refunded"):
                    billing.setdefault(ev.name.lower(), []).append({**event_json(ev), "height": at})
                elif isinstance(ev, (TaskCompleted, TaskExpired)):
                    billing[ev.name] = {**event_json(ev), "height": at, "state_root": self.state_root_at(at)}
        by_height = {r["height"]: r for r in rounds}
        for s in slashes:  # a slash happens in the block that closes its round
            if s["height"] in by_height:
                s["round"] = by_height[s["height"]]["round"]
                by_height[s["height"]]["slashed"].append(s)
        return {
            **task_fields(task),
            **self.task_summary(task, height),
            "participants": [a.hex() for a in task.participants],
            "rounds": rounds[-MAX_LIST:],
            "slashes": slashes[-MAX_LIST:],
            "removals": removed[-MAX_LIST:],
            "billing": billing,
            "proven_at_height": height,
            "state_root": root,
        }

    def round_entry(self, ev: RoundClosed, height: int) -> dict[str, Any]:
        order = [a.hex() for a in ev.participants]
        selected, flagged, excluded = (
            {a.hex() for a in group} for group in (ev.selected, ev.flagged, ev.excluded)
        )
        return {
            "round": ev.round,
            "height": height,
            "state_root": self.state_root_at(height),
            "accuracy_bps": ev.accuracy_bps,
            "void": bool(ev.void),
            "tolerated_f": ev.tolerated_f,
            "updates": [
                {
                    "address": a,
                    "score": ev.scores[i] if i < len(ev.scores) else None,
                    "contribution": ev.contributions[i] if i < len(ev.contributions) else None,
                    "selected": a in selected,
                    "flagged": a in flagged,
                    "excluded": a in excluded,
                }
                for i, a in enumerate(order)
            ],
            "slashed": [],
        }

    # settlement ------------------------------------------------------------------------------------
    def settlement(self) -> dict[str, Any]:
        """The settlement record at the head: deposits credited and withdrawals recorded, in all."""
        height, root = self.head()
        record = self._state().get_settlement()
        return {
            "deposits_credited": record.deposits,
            "units_deposited": record.deposited,
            "withdrawals": record.withdrawals,
            "units_withdrawn": record.withdrawn,
            "withdrawals_root": record.withdrawals_root().hex(),
            "proven_at_height": height,
            "state_root": root,
        }

    # accounts --------------------------------------------------------------------------------------
    def account(self, address: bytes, index: AccountIndex) -> dict[str, Any]:
        height, root = self.head()
        acct = self._state().get_account(address)
        return {
            **account_fields(address, acct),
            "proven_at_height": height,
            "state_root": root,
            "history": index.history(address),
            "history_complete": index.indexed_height >= height,
        }

    # blocks and txs --------------------------------------------------------------------------------
    def block_summary(self, height: int) -> dict[str, Any] | None:
        """One line of the block list (None if the store has no block ``height``); remembered,
        since every live stream sends the same line for each new block."""
        line = self._summaries.get(height)
        if line is None:
            raw = self.store.get_block(height)
            if raw is None:
                return None
            block = decode_block(raw)
            line = {
                "height": height,
                "hash": block.header.hash().hex(),
                "timestamp_ms": block.header.timestamp_ms,
                "txs": len(block.txs),
                "bytes": len(raw),
                "state_root": block.header.state_root.hex(),
            }
            self._summaries[height] = line
            if len(self._summaries) > 4 * RECENT_BLOCKS:
                self._summaries.popitem(last=False)
        return line

    def blocks(self, before: int | None = None) -> dict[str, Any]:
        height, _ = self.head()
        top = height if before is None else min(height, before - 1)
        lines = (self.block_summary(h) for h in range(top, max(0, top - RECENT_BLOCKS), -1))
        return {"blocks": [line for line in lines if line is not None], "head": height}

    def block(self, height: int) -> dict[str, Any]:
        raw = self.store.get_block(height)
        if raw is None:
            raise NotFound(f"no block at height {height}")
        block = decode_block(raw)
        receipts = decode_receipts(self.store.get_receipts(height) or b"\x90")
        out = block.header.to_json()
        out["txs"] = [tx_fields(t) for t in block.txs[:MAX_LIST]]
        out["txs_total"] = len(block.txs)
        out["receipts"] = [self._receipt_json(r) for r in receipts[: MAX_LIST + 1]]
        return out

    @staticmethod
    def _receipt_json(r: Any) -> dict[str, Any]:
        out = r.to_json()
        out["events"] = [event_json(e) for e in r.events]
        return out

    def tx(self, tx_id: bytes) -> dict[str, Any] | None:
        """The included tx ``tx_id`` with its receipt; None if this node has not included it."""
        location = self.store.get_tx_location(tx_id)
        if location is None:
            return None
        height, index = location
        block = decode_block(self.store.get_block(height) or b"")
        receipts = decode_receipts(self.store.get_receipts(height) or b"\x90")
        t = block.txs[index]
        body = {
            f.name: _jsonable(getattr(t.tx.body, f.name))
            for f in dataclasses.fields(t.tx.body)
            if not isinstance(getattr(t.tx.body, f.name), (bytes, bytearray))
            or len(getattr(t.tx.body, f.name)) <= 64
        }
        return {
            **tx_fields(t),
            "state": "included",
            "height": height,
            "index": index,
            "state_root": block.header.state_root.hex(),
            "body": body,
            "receipt": self._receipt_json(receipts[index]) if index < len(receipts) else None,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


class AccountIndex:
    """Per address, the newest ``per_address`` events that name it (see the module doc)."""

    def __init__(self, views: Views, per_address: int = MAX_LIST) -> None:
        self.views = views
        self.per_address = per_address
        self.indexed_height = 0
        self._by_address: dict[bytes, deque[dict[str, Any]]] = {}

    def fold(self, height: int) -> None:
        """Index block ``height``'s events (blocks in order, each once)."""
        if height <= self.indexed_height:
            return
        blob = self.views.store.get_events(height)
        if blob:
            root = None
            for ev in decode_events(blob):
                named = {  # the addresses an event names (participants lists aside: RoundClosed is per task)
                    getattr(ev, f.name)
                    for f in dataclasses.fields(ev)
                    if f.name in ADDRESS_FIELDS and isinstance(getattr(ev, f.name), bytes)
                }
                for address in named:
                    root = root or self.views.state_root_at(height)
                    entries = self._by_address.setdefault(address, deque(maxlen=self.per_address))
                    entries.append({**event_json(ev), "height": height, "state_root": root})
        self.indexed_height = height

    def history(self, address: bytes) -> list[dict[str, Any]]:
        return list(reversed(self._by_address.get(address, ())))
