"""What the demo shows: a line per closed round, and the table of clients at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsnode.client.daemon import ClientResult
from mpsnode.consensus.events import RemovalReason
from mpsnode.consensus.limits import MIN_SCORED_UPDATES
from mpsnode.demo.options import DemoOptions
from mpsnode.demo.processes import mpsnode_command
from verifier.replay.audit import Audit


@dataclass
class ClientInfo:
    index: int
    name: str
    address: bytes
    attack: str | None
    stake_before: int = 0
    stake_after: int = 0
    jailed: bool = False
    slashed: int = 0
    selected: int = 0
    units: int = 0  # contribution units earned over the task (RoundClosed.contributions)
    reward: int = 0
    result: ClientResult | None = None
    error: str = ""

    @property
    def role(self) -> str:
        return f"ATTACKER ({self.attack})" if self.attack else "honest"


@dataclass
class Progress:
    """The task's story as read from checked blocks, folded into an ``Audit`` for the plot."""

    task_id: int
    names: dict[bytes, str]
    attackers: set[bytes]
    audit: Audit
    started_at: float
    status: str = "joining"
    rounds: int = 0
    accuracy_bps: int = 0
    head: int = 0
    staked: dict[bytes, int] = field(default_factory=dict)  # bonded after each client's last STAKE


def _name(progress: Progress, address: bytes) -> str:
    name = progress.names.get(address, address.hex()[:8])
    return f"{name}*" if address in progress.attackers else name


def round_line(progress: Progress, ev: Any, slashes: list[Any], height: int) -> str:

    took = time.monotonic() - progress.started_at
    if ev.void:
        return (
            f"  round {ev.round:>3}  void: {len(ev.participants)} updates, fewer than {MIN_SCORED_UPDATES} "
            f"(block {height}, {took:5.1f} s)"
        )
    flagged = ", ".join(_name(progress, a) for a in ev.flagged) or "-"
    if ev.excluded:
        flagged += "; left out " + ", ".join(_name(progress, a) for a in ev.excluded)
    slashed = (
        ", ".join(
            f"{_name(progress, s.address)} -{s.amount} ({RemovalReason.describe(s.reason)})" for s in slashes
        )
        or "-"
    )
    return (
        f"  round {ev.round:>3}  accuracy {ev.accuracy_bps / 100:6.2f}%  f {ev.tolerated_f}  selected "
        f"{len(ev.selected):>2}/{len(ev.participants):<2}  flagged {flagged:<24}  slashed {slashed}"
        f"   (block {height}, {took:5.1f} s)"
    )


@dataclass
class DemoOutcome:
    task_status: str = "not created"
    rounds: int = 0
    accuracy_bps: int = 0
    head_height: int = 0
    head_hash: bytes = b""
    state_root: bytes = b""
    clients: list[ClientInfo] = field(default_factory=list)
    verdict: str = "not checked"
    verifier_ok: bool = False
    plot: Path | None = None
    seconds: float = 0.0


def print_summary(opts: DemoOptions, outcome: DemoOutcome, root: Path, out: Any) -> None:
    clients = outcome.clients
    out("")
    width = max([len("role")] + [len(c.role) for c in clients])
    earned = sum(max(0, c.units) for c in clients) or 1
    out(
        f"  {'client':<10} {'address':<9} {'role':<{width}} {'stake before':>12} {'stake after':>16} {'slashed':>8} "
        f"{'selected':>8} {'contribution':>12} {'reward':>9}"
    )
    for c in clients:
        after = f"{'(jailed) ' if c.jailed else ''}{c.stake_after}"
        share = f"{100 * max(0, c.units) / earned:.1f}%"
        out(
            f"  {c.name:<10} {c.address.hex()[:8]:<9} {c.role:<{width}} {c.stake_before:>12} {after:>16} "
            f"{c.slashed or '-':>8} {c.selected:>8} {share:>12} {c.reward:>9}"
            + (f"   stopped: {c.error}" if c.error else "")
        )
    attackers = [c for c in clients if c.attack]
    honest = [c for c in clients if not c.attack]
    out("")
    if attackers:
        out(
            f"  attackers slashed   {sum(1 for c in attackers if c.slashed)}/{len(attackers)}; "
            f"honest clients slashed {sum(1 for c in honest if c.slashed)}/{len(honest)}"
        )
        per_attacker = sum(max(0, c.units) for c in attackers) / len(attackers)
        per_honest = sum(max(0, c.units) for c in honest) / max(1, len(honest))
        out(
            f"  contribution        {100 * per_attacker / earned:.1f}% per attacker, "
            f"{100 * per_honest / earned:.1f}% per honest client (pay follows it)"
        )
    target = f"target {opts.target:.0%}"
    if outcome.task_status == "completed":
        out(
            f"  task                completed in {outcome.rounds} rounds, accuracy "
            f"{outcome.accuracy_bps / 100:.2f}% ({target})"
        )
    else:
        out(
            f"  task                {outcome.task_status} after {outcome.rounds} rounds, accuracy "
            f"{outcome.accuracy_bps / 100:.2f}% ({target})"
        )
    out(f"  verifier            {outcome.verdict}")
    if outcome.plot is not None:
        out(f"  plot                {outcome.plot}")
    out(
        f"  chain kept in       {root}  (sequencer store {root / 'data'}, verifier store {root / 'verifier' / 'data'})"
    )
    out(f"  audit it again      {mpsnode_command()} replay --home {root} --plot {root / 'audit.png'}")
    out(f"  logs                {root / 'logs'}")
    out(f"  took                {outcome.seconds:.1f} s")
