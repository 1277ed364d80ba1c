"""Whole-state invariants: the supply equation, checked by tests after every block."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mpsnode.consensus.state import ACCOUNT, CONFIG_KEY, GLOBALS_KEY, TASK, Account, Config, Globals, Task


@dataclass(frozen=True, slots=True)
class SupplyBreakdown:
    balances: int
    bonded: int
    unbonding: int
    escrows: int
    burned: int

    @property
    def total(self) -> int:
        """Balances + bonded + unbonding + escrows + burned: must equal the genesis supply."""
        return self.balances + self.bonded + self.unbonding + self.escrows + self.burned


def compute_supply(items: Iterable[tuple[bytes, bytes]]) -> tuple[SupplyBreakdown, int]:
    """(breakdown of everything held, genesis supply) over all state items."""
    balances = bonded = unbonding = escrows = burned = 0
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
    return SupplyBreakdown(balances, bonded, unbonding, escrows, burned), supply
