"""Whole-state invariants: the supply equation, checked by tests after every block.

Every unit is held somewhere: ``balances + bonded + unbonding + escrows + burned + withdrawn``
equals the genesis supply plus what deposits credited. On a chain that settles on L1 the genesis
supply is 0, ``withdrawn`` is what WITHDRAW txs moved into withdrawal records (paid on L1 or
still pending there), and the portal on L1 holds exactly ``deposited - paid`` (the settlement
check of ``mpsnode replay`` and the demo compares the two sides).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mpsnode.consensus.state import (
    ACCOUNT,
    CONFIG_KEY,
    GLOBALS_KEY,
    SETTLEMENT_KEY,
    TASK,
    Account,
    Config,
    Globals,
    Task,
    decode_settlement,
)


@dataclass(frozen=True, slots=True)
class SupplyBreakdown:
    balances: int
    bonded: int
    unbonding: int
    escrows: int
    burned: int
    withdrawn: int = 0  # moved into withdrawal records (settlement mode)
    deposited: int = 0  # credited by deposits (settlement mode)

    @property
    def held(self) -> int:
        """What is on L2 now: balances + bonded + unbonding + escrows + burned."""
        return self.balances + self.bonded + self.unbonding + self.escrows + self.burned

    @property
    def total(self) -> int:
        """``held + withdrawn``: must equal the supply (genesis supply + deposited)."""
        return self.held + self.withdrawn


def compute_supply(items: Iterable[tuple[bytes, bytes]]) -> tuple[SupplyBreakdown, int]:
    """(breakdown of everything held or withdrawn, the supply it must add up to) over all state
    items; the supply is the genesis supply plus every unit deposits credited."""
    balances = bonded = unbonding = escrows = burned = withdrawn = deposited = 0
    supply = -1
    for key, value in items:
        prefix = key[:1]
        if prefix == ACCOUNT:
            a = Account.decode(value)
            balances += a.balance
            bonded += a.bonded
            unbonding += a.unbonding_total
        elif prefix == TASK:
            escrows += Task.decode(value).escrow
        elif key == GLOBALS_KEY:
            burned = Globals.decode(value).burned
        elif key == CONFIG_KEY:
            supply = Config.decode(value).supply
        elif key == SETTLEMENT_KEY:
            record = decode_settlement(value)
            withdrawn, deposited = record.withdrawn, record.deposited
    breakdown = SupplyBreakdown(balances, bonded, unbonding, escrows, burned, withdrawn, deposited)
    return breakdown, supply + deposited
