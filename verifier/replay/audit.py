"""The audit of a replayed chain: a fold over the events the re-execution produced.

For every task: who created it and when, who joined, each round (submitters in score order, Krum
scores, the Multi-Krum selection, the flagged, the slashed and by how much, accuracy, void), and
how it ended (completed: charged, protocol fee and each client's payment; expired: why), and the
refunds. The events come from this node's own re-execution, never from the chain's claims, so
the audit holds exactly when every root matched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mpsnode.consensus.events import (
    Event,
    ParticipantRemoved,
    Refunded,
    RemovalReason,
    Rewarded,
    RoundClosed,
    Slashed,
    TaskCompleted,
    TaskCreated,
    TaskExpired,
    TaskJoined,
    TaskStarted,
)
from mpsnode.consensus.receipt import Receipt
from mpsnode.consensus.state import Task

EXPIRY_REASONS = {1: "not enough clients joined", 2: "max_rounds reached without the target"}


def short(address: bytes) -> str:
    return address.hex()[:8]


def slash_reason(reason: int) -> str:
    """``Slashed.reason`` by name: ``krum_score`` or ``direction`` (docs/PROTOCOL.md, section 7)."""
    return RemovalReason.describe(reason)


@dataclass
class RoundAudit:
    round: int
    height: int
    participants: tuple[bytes, ...]
    scores: tuple[int, ...]
    selected: tuple[bytes, ...]
    flagged: tuple[bytes, ...]
    accuracy_bps: int
    void: bool
    slashed: list[tuple[bytes, int, int]] = field(default_factory=list)  # (address, amount burned, reason)
    tolerated_f: int = 0
    excluded: tuple[bytes, ...] = ()
    contributions: tuple[int, ...] = ()  # reward units per participant (docs/PROTOCOL.md section 8)

    def units_of(self, address: bytes) -> int:
        """The reward units ``address`` earned in this round (0 if it sent nothing, or nothing useful)."""
        for a, u in zip(self.participants, self.contributions, strict=False):
            if a == address:
                return u
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "height": self.height,
            "void": self.void,
            "accuracy_bps": self.accuracy_bps,
            "participants": [a.hex() for a in self.participants],
            "scores": list(self.scores),
            "selected": [a.hex() for a in self.selected],
            "flagged": [a.hex() for a in self.flagged],
            "tolerated_f": self.tolerated_f,
            "excluded": [a.hex() for a in self.excluded],
            "contributions": {
                a.hex(): u for a, u in zip(self.participants, self.contributions, strict=False)
            },
            "slashed": [
                {"address": a.hex(), "amount": n, "reason": slash_reason(why)} for a, n, why in self.slashed
            ],
        }


@dataclass
class TaskAudit:
    task_id: int
    creator: bytes
    created_height: int
    params: int
    escrow: int
    base_fee: int
    joined: list[bytes] = field(default_factory=list)
    started_height: int | None = None
    rounds: list[RoundAudit] = field(default_factory=list)
    removed: list[tuple[bytes, int]] = field(default_factory=list)
    status: str = "joining"
    finished_height: int | None = None
    expired_reason: int | None = None
    accuracy_bps: int | None = None
    charged: int = 0
    protocol_fee: int = 0
    payments: dict[bytes, int] = field(default_factory=dict)
    refunded: int = 0
    arch: tuple[int, ...] = ()  # from the task record (``Audit.describe``)
    target_accuracy_bps: int | None = None
    max_rounds: int | None = None
    byzantine_f: int | None = None

    def contribution_units(self) -> dict[bytes, int]:
        """Reward units per address over the task, summed from the rounds' ``RoundClosed`` events
        (removed participants included: on chain they forfeit theirs)."""
        totals: dict[bytes, int] = {}
        for r in self.rounds:
            for a, u in zip(r.participants, r.contributions, strict=False):
                if u:
                    totals[a] = totals.get(a, 0) + u
        return totals

    def expected_payments(self) -> dict[bytes, int] | None:
        """What the completion rule pays from the contribution events alone (docs/PROTOCOL.md section
        7, "Completion"): None unless the task completed and its fee is known."""
        billed = sum(1 for r in self.rounds if not r.void)
        if self.status != "completed" or not self.max_rounds or not billed:
            return None
        fee_per_round = self.escrow // self.max_rounds
        pool = fee_per_round * billed - self.protocol_fee
        removed = {a for a, _ in self.removed}
        out = {}
        for a, units in sorted(self.contribution_units().items()):
            amount = pool * units // (1_000_000 * billed) if a not in removed else 0
            if amount:
                out[a] = amount
        return out

    def to_json(self) -> dict[str, Any]:
        expected = self.expected_payments()
        return {
            "task_id": self.task_id,
            "creator": self.creator.hex(),
            "created_height": self.created_height,
            "params": self.params,
            "arch": list(self.arch),
            "target_accuracy_bps": self.target_accuracy_bps,
            "max_rounds": self.max_rounds,
            "byzantine_f": self.byzantine_f,
            "escrow": self.escrow,
            "base_fee": self.base_fee,
            "joined": [a.hex() for a in self.joined],
            "started_height": self.started_height,
            "status": self.status,
            "finished_height": self.finished_height,
            "expired_reason": EXPIRY_REASONS.get(self.expired_reason or 0),
            "final_accuracy_bps": self.accuracy_bps,
            "charged": self.charged,
            "protocol_fee": self.protocol_fee,
            "payments": {a.hex(): n for a, n in sorted(self.payments.items())},
            "contribution_units": {a.hex(): n for a, n in sorted(self.contribution_units().items())},
            "payments_match_contributions": None if expected is None else expected == self.payments,
            "refunded": self.refunded,
            "removed": [{"address": a.hex(), "reason": r} for a, r in self.removed],
            "rounds": [r.to_json() for r in self.rounds],
        }


class Audit:
    """Folds each block's receipts into per-task audits and chain totals."""

    def __init__(self) -> None:
        self.tasks: dict[int, TaskAudit] = {}
        self.blocks = 0
        self.txs = 0
        self.failed_txs = 0
        self.transfers = 0
        self._slashes: dict[tuple[int, int], list[tuple[bytes, int, int]]] = {}
        self.undescribed: list[int] = []  # tasks created whose record was not read yet

    def describe(self, task_id: int, task: Task) -> None:
        """Take the task's fixed settings (target, arch) from its record in state."""
        audit = self.tasks.get(task_id)
        if audit is not None:
            audit.arch, audit.target_accuracy_bps = task.arch, task.target_accuracy_bps
            audit.max_rounds, audit.byzantine_f = task.max_rounds, task.byzantine_f

    def fold_block(self, height: int, receipts: Iterable[Receipt]) -> None:
        receipts = list(receipts)
        self.blocks += 1
        self.txs += len(receipts) - 1  # the last receipt is the end-of-block step's
        self.failed_txs += sum(1 for r in receipts[:-1] if not r.ok)
        for receipt in receipts:
            for event in receipt.events:
                self.fold_event(height, event)

    def fold_event(self, height: int, event: Event) -> None:
        if isinstance(event, TaskCreated):
            self.tasks[event.task_id] = TaskAudit(
                event.task_id, event.creator, height, event.params, event.escrow, event.base_fee
            )
            self.undescribed.append(event.task_id)
            return
        task = self.tasks.get(getattr(event, "task_id", -1))
        if task is None:
            if event.name == "Transferred":
                self.transfers += 1
            return
        if isinstance(event, TaskJoined):
            task.joined.append(event.address)
        elif isinstance(event, TaskStarted):
            task.started_height, task.status = height, "active"
        elif isinstance(event, Slashed):
            self._slashes.setdefault((event.task_id, event.round), []).append(
                (event.address, event.amount, event.reason)
            )
        elif isinstance(event, RoundClosed):
            task.rounds.append(
                RoundAudit(
                    event.round,
                    height,
                    event.participants,
                    event.scores,
                    event.selected,
                    event.flagged,
                    event.accuracy_bps,
                    bool(event.void),
                    self._slashes.pop((event.task_id, event.round), []),
                    event.tolerated_f,
                    event.excluded,
                    event.contributions,
                )
            )
            if not event.void:
                task.accuracy_bps = event.accuracy_bps
        elif isinstance(event, ParticipantRemoved):
            task.removed.append((event.address, event.reason))
        elif isinstance(event, Rewarded):
            task.payments[event.address] = task.payments.get(event.address, 0) + event.amount
        elif isinstance(event, TaskCompleted):
            task.status, task.finished_height = "completed", height
            task.charged, task.protocol_fee = event.charged, event.protocol_fee
            task.accuracy_bps = event.accuracy_bps
        elif isinstance(event, TaskExpired):
            task.status, task.finished_height, task.expired_reason = "expired", height, event.reason
        elif isinstance(event, Refunded):
            task.refunded += event.amount
        # slashes reported after their round closed (the STF emits them before): attach now
        for (task_id, round_), items in list(self._slashes.items()):
            owner = self.tasks.get(task_id)
            done = owner is not None and next((r for r in owner.rounds if r.round == round_), None)
            if done:
                done.slashed.extend(items)
                del self._slashes[(task_id, round_)]

    def to_json(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "txs": self.txs,
            "failed_txs": self.failed_txs,
            "transfers": self.transfers,
            "tasks": [t.to_json() for _, t in sorted(self.tasks.items())],
        }

    # text -------------------------------------------------------------------------------------------
    def format_text(self) -> str:
        lines = [
            f"chain: {self.blocks} blocks, {self.txs} txs ({self.failed_txs} failed), "
            f"{len(self.tasks)} task{'s' if len(self.tasks) != 1 else ''}"
        ]
        for _, task in sorted(self.tasks.items()):
            lines += [""] + _task_text(task)
        return "\n".join(lines)


def _task_text(t: TaskAudit) -> list[str]:
    end = {
        "completed": f"completed at height {t.finished_height}",
        "expired": f"expired at height {t.finished_height} ({EXPIRY_REASONS.get(t.expired_reason or 0)})",
        "active": f"active since height {t.started_height}",
        "joining": "joining",
    }[t.status]
    arch = "x".join(str(w) for w in t.arch) if t.arch else "?"
    target = f"target {t.target_accuracy_bps / 100:.2f}%" if t.target_accuracy_bps is not None else ""
    lines = [
        f"task {t.task_id}  creator {short(t.creator)}  arch {arch} ({t.params} params)  {target}  "
        f"f={t.byzantine_f}  created at height {t.created_height}  {end}",
        f"  participants ({len(t.joined)}): {' '.join(short(a) for a in t.joined)}",
    ]
    if t.rounds:
        lines.append("  round  height  updates  f  void  accuracy  selected  flagged  slashed")
    for r in t.rounds:
        slashed = " ".join(f"{short(a)}(-{n}, {slash_reason(why)})" for a, n, why in r.slashed) or "-"
        flagged = " ".join(short(a) for a in r.flagged) or "-"
        acc = "-" if r.void else f"{r.accuracy_bps / 100:.2f}%"
        void = "yes" if r.void else "no"
        lines.append(
            f"  {r.round:>5}  {r.height:>6}  {len(r.participants):>7}  {r.tolerated_f}  {void:>4}"
            f"  {acc:>8}  {len(r.selected):>8}  {flagged}  {slashed}"
            + (f"  excluded {' '.join(short(a) for a in r.excluded)}" if r.excluded else "")
        )
        if r.scores:
            chosen = set(r.selected)
            scores = "  ".join(
                f"{short(a)}={s}{'' if a in chosen else '*'}"
                for a, s in zip(r.participants, r.scores, strict=True)
            )
            lines.append(f"         krum scores (* = not selected): {scores}")
        if r.contributions:
            shares = "  ".join(
                f"{short(a)}={u / 10_000:.1f}%" for a, u in zip(r.participants, r.contributions, strict=True)
            )
            lines.append(f"         contribution (share of the round's pay): {shares}")
    if t.status == "completed":
        lines.append(
            f"  billed {t.charged} (protocol fee {t.protocol_fee}), final accuracy "
            f"{(t.accuracy_bps or 0) / 100:.2f}%"
        )
    if t.payments:
        lines.append("  payments: " + "  ".join(f"{short(a)}={n}" for a, n in sorted(t.payments.items())))
    units = t.contribution_units()
    if units:
        total = sum(max(0, u) for u in units.values()) or 1
        lines.append(
            "  contribution over the task (share of the units earned): "
            + "  ".join(f"{short(a)}={100 * u / total:.1f}%" for a, u in sorted(units.items()))
        )
    expected = t.expected_payments()
    if expected is not None:
        verdict = "yes" if expected == t.payments else f"NO (the contribution events give {expected})"
        lines.append(f"  payments match the contribution events: {verdict}")
    if t.refunded:
        lines.append(f"  refunded to the creator: {t.refunded}")
    return lines
