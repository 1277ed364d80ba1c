"""DEPOSIT and WITHDRAW: value in from the L1 portal and out to it (docs/SETTLEMENT.md).

A DEPOSIT must be the next deposit the state has not credited, exactly as the L1 holds it (the
block's ``L1Facts``); anything else makes the block invalid. A WITHDRAW moves balance into a
withdrawal record and appends its leaf to the withdrawal tree whose root the output commits to.
"""

from __future__ import annotations

from dataclasses import replace

from mpsnode.consensus.errors import DepositMismatch, NoSettlement, WithdrawalTreeFull
from mpsnode.consensus.events import Deposited, Event, Withdrawn
from mpsnode.consensus.settlement import MAX_WITHDRAWALS, Deposit, WithdrawalRecord, incremental_append
from mpsnode.consensus.state import State
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import DepositBody, Withdraw


def process_deposit(state: State, env: BlockEnv, body: DepositBody) -> list[Event]:
    """Credit the next L1 deposit; ``DepositMismatch`` (the block is invalid) if ``body`` is not it."""
    if env.config.l1 is None or env.l1 is None:
        raise DepositMismatch("this chain settles on no L1: it takes no deposits")
    record = state.get_settlement()
    if body.index != record.deposits:
        raise DepositMismatch(
            f"deposit {body.index} out of order: the next deposit to credit is {record.deposits}"
        )
    expected = next((d for d in env.l1.deposits if d.index == body.index), None)
    if expected is None:
        raise DepositMismatch(
            f"deposit {body.index} is not on L1 at or before the block's L1 origin {env.l1.origin}"
        )
    got = Deposit(body.index, body.l1_block, body.recipient, body.amount)
    if got != expected:
        raise DepositMismatch(
            f"deposit {body.index} differs from L1: block has {_describe(got)}, L1 has {_describe(expected)}"
        )
    state.increase_balance(body.recipient, body.amount)
    state.set_settlement(
        replace(record, deposits=record.deposits + 1, deposited=record.deposited + body.amount)
    )
    return [Deposited(body.index, body.recipient, body.amount, body.l1_block)]


def _describe(d: Deposit) -> str:
    return f"{d.amount} units to {d.recipient.hex()[:16]}.. from L1 block {d.l1_block}"


def process_withdraw(state: State, env: BlockEnv, sender: bytes, body: Withdraw) -> list[Event]:
    """WITHDRAW: move ``amount`` into withdrawal record number ``withdrawals``; ``NoSettlement``
    on a chain without L1, ``WithdrawalTreeFull``, ``InsufficientBalance``."""
    if env.config.l1 is None:
        raise NoSettlement()
    record = state.get_settlement()
    index = record.withdrawals
    if index >= MAX_WITHDRAWALS:
        raise WithdrawalTreeFull()
    state.decrease_balance(sender, body.amount)
    withdrawal = WithdrawalRecord(sender, bytes(12) + body.l1_address, body.amount, env.height)
    state.set_withdrawal(index, withdrawal)
    state.set_settlement(
        replace(
            record,
            withdrawals=index + 1,
            withdrawn=record.withdrawn + body.amount,
            branch=incremental_append(record.branch, index, withdrawal.leaf(index)),
        )
    )
    return [Withdrawn(index, sender, body.l1_address, body.amount)]
