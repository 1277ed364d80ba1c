"""TRANSFER: move balance from the sender to another account."""

from __future__ import annotations

from mpsnode.consensus.events import Event, Transferred
from mpsnode.consensus.state import State
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import Transfer


def process_transfer(state: State, env: BlockEnv, sender: bytes, body: Transfer) -> list[Event]:
    """TRANSFER: move ``amount`` from the sender to ``to``; ``InsufficientBalance``."""
    state.decrease_balance(sender, body.amount)
    state.increase_balance(body.to, body.amount)
    return [Transferred(sender, body.to, body.amount)]
