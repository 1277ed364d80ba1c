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


_FIELDS = ("balances", "bonded", "unbonding", "escrows", "burned", "withdrawn", "deposited")


def _contribution(key: bytes, value: bytes | None) -> tuple[tuple[int, ...], int]:
    """What one state item adds to the breakdown's fields, and to the genesis supply."""
    zero = (0,) * len(_FIELDS)
    if value is None:
        return zero, 0
    prefix = key[:1]
    if prefix == ACCOUNT:
        a = Account.decode(value)
        return (a.balance, a.bonded, a.unbonding_total, 0, 0, 0, 0), 0
    if prefix == TASK:
        return (0, 0, 0, Task.decode(value).escrow, 0, 0, 0), 0
    if key == GLOBALS_KEY:
        return (0, 0, 0, 0, Globals.decode(value).burned, 0, 0), 0
    if key == SETTLEMENT_KEY:
        record = decode_settlement(value)
        return (0, 0, 0, 0, 0, record.withdrawn, record.deposited), 0
    if key == CONFIG_KEY:
        return zero, Config.decode(value).supply
    return zero, 0


class SupplyTracker:
    """``compute_supply`` kept up to date write by write: a replay checks the equation after every
    block at the cost of its writes, not of the whole state."""

    def __init__(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        self._totals = [0] * len(_FIELDS)
        self._genesis_supply = 0
        # each account's last value with what it contributes, by key: an account written again is not
        # decoded again for what it held (a value that differs is decoded anew)
        self._accounts: dict[bytes, tuple[bytes, tuple[tuple[int, ...], int]]] = {}
        for key, value in items:
            self._add(key, value, 1)

    def _add(self, key: bytes, value: bytes | None, sign: int, account: Account | None = None) -> None:
        cached = value is not None and key[:1] == ACCOUNT  # most writes are accounts
        known = self._accounts.get(key) if cached else None
        if known is not None and known[0] == value:
            fields, supply = known[1]
        else:
            if account is not None and cached:
                fields, supply = (account.balance, account.bonded, account.unbonding_total, 0, 0, 0, 0), 0
            else:
                fields, supply = _contribution(key, value)
            if cached and sign > 0 and value is not None:  # (None is never cached; for the type checker)
                # what it adds now, it takes away when next written: not decoded again then
                self._accounts[key] = (value, (fields, supply))
        totals = self._totals
        for i, v in enumerate(fields):
            if v:
                totals[i] += sign * v
        if supply:
            self._genesis_supply += sign * supply

    def apply(
        self,
        old: dict[bytes, bytes | None],
        writes: dict[bytes, bytes | None],
        accounts: dict[bytes, Account] | None = None,
    ) -> None:
        """Account for ``writes``; ``old`` holds each written key's value before them. ``accounts``:
        written accounts already decoded, by key (``State.written_accounts``), each the decoding of
        its written value, which is then not decoded again."""
        decoded = accounts or {}
        for key, value in writes.items():
            self._add(key, old.get(key), -1)
            self._add(key, value, 1, decoded.get(key))

    def breakdown(self) -> tuple[SupplyBreakdown, int]:
        """What ``compute_supply`` gives on the tracked state."""
        b = SupplyBreakdown(*self._totals)
        return b, self._genesis_supply + b.deposited
