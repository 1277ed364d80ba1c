"""STAKE, UNSTAKE and the release of matured unbonding entries."""

from __future__ import annotations

from dataclasses import replace

from mpsnode.consensus.errors import InsufficientBonded, StakeLocked
from mpsnode.consensus.events import Event, Staked, UnbondingReleased, Unjailed, UnstakeStarted
from mpsnode.consensus.state import State, Unbonding
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import Stake, Unstake


def process_stake(state: State, env: BlockEnv, sender: bytes, body: Stake) -> list[Event]:
    """STAKE: balance -> bonded (unjails at ``min_stake``); ``InsufficientBalance``."""
    state.decrease_balance(sender, body.amount)
    acct = state.get_account(sender)
    bonded = acct.bonded + body.amount
    events: list[Event] = [Staked(sender, body.amount, bonded)]
    jailed = acct.jailed
    if jailed and bonded >= env.params.min_stake:
        # A slashed client is released once its stake is topped back up to min_stake.
        jailed = False
        events.append(Unjailed(sender))
    state.set_account(sender, replace(acct, bonded=bonded, jailed=jailed))
    return events


def process_unstake(state: State, env: BlockEnv, sender: bytes, body: Unstake) -> list[Event]:
    """UNSTAKE: bonded -> an unbonding entry released at ``height + unbonding_blocks``;
    ``InsufficientBonded``, ``StakeLocked``."""
    acct = state.get_account(sender)
    if body.amount > acct.bonded:
        raise InsufficientBonded(body.amount, acct.bonded)
    left = acct.bonded - body.amount
    if acct.tasks and left < env.params.min_stake:
        raise StakeLocked(acct.tasks[0], env.params.min_stake, left)
    release = env.height + env.params.unbonding_blocks
    entries = (*acct.unbonding, Unbonding(body.amount, release))
    state.set_account(sender, replace(acct, bonded=left, unbonding=entries))
    queue = state.get_unbonding_queue(release)
    if sender not in queue:
        state.set_unbonding_queue(release, (*queue, sender))
    return [UnstakeStarted(sender, body.amount, release)]


def process_unbonding_release(state: State, env: BlockEnv) -> list[Event]:
    """Move every unbonding entry maturing at this height back to its owner's balance."""
    events: list[Event] = []
    queue = state.get_unbonding_queue(env.height)
    for address in queue:
        acct = state.get_account(address)
        matured = sum(u.amount for u in acct.unbonding if u.release_height <= env.height)
        kept = tuple(u for u in acct.unbonding if u.release_height > env.height)
        if matured:
            state.set_account(address, replace(acct, balance=acct.balance + matured, unbonding=kept))
            events.append(UnbondingReleased(address, matured))
    if queue:
        state.set_unbonding_queue(env.height, ())
    return events
