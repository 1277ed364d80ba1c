"""End of a round: which rounds close in this block, and closing them.

A round closes at the end of a block when every active participant has submitted, or when the
block's height has reached the round's deadline. Closing a round with ``k >= 2f + 3`` updates:
score them with Krum and the direction statistic, slash and remove the flagged, aggregate the Multi-Krum selection
into the global model, evaluate it on the task's validation set, then complete the task (billing
and rewards), expire it (refund) or open the next round.
"""

from __future__ import annotations

from dataclasses import replace
from enum import IntEnum

import numpy as np

from mpsnode.consensus import krum, model
from mpsnode.consensus.events import (
    Event,
    Jailed,
    ParticipantRemoved,
    Rewarded,
    RoundClosed,
    RoundOpened,
    Slashed,
    TaskCompleted,
    TaskExpired,
)
from mpsnode.consensus.params import Params
from mpsnode.consensus.state import State, Task, TaskStatus
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.stf.task import EXPIRED_MAX_ROUNDS, clear_pending_updates, finish_task, refund_escrow


class SlashReason(IntEnum):
    """``Slashed.reason`` and ``ParticipantRemoved.reason``: the rule that flagged the update."""

    KRUM_SCORE = 1  # Krum score above slash_score_ratio_pct (coherent round: ..._coherent_pct) of the median
    DIRECTION = 2  # coherent round, update points against the sum of the others (slash_direction_bps)

    @classmethod
    def describe(cls, code: int) -> str:
        """The rule's name for people and JSON (``krum_score``, ``direction``), or the code itself."""
        try:
            return cls(code).name.lower()
        except ValueError:
            return str(code)


def is_round_due(task: Task, height: int) -> bool:
    """Whether ``task``'s open round closes at this block: every participant submitted, or the deadline
    passed."""
    if task.status != TaskStatus.ACTIVE:
        return False
    complete = len(task.submitted) == len(task.participants)
    return complete or height >= task.round_deadline


def process_round_closes(state: State, env: BlockEnv) -> list[Event]:
    """Close every due round, in task id order."""
    events: list[Event] = []
    for task_id in state.get_globals().open_tasks:
        task = state.get_task(task_id)
        if task is not None and is_round_due(task, env.height):
            events += close_round(state, env, task)
    return events


def get_round_updates(state: State, task: Task) -> np.ndarray:
    """The open round's deltas as a k x d int16 matrix, rows in submission order."""
    d = model.param_count(task.arch)
    Q = np.empty((len(task.submitted), d), dtype=np.int16)
    for row, address in enumerate(task.submitted):
        stored = state.get_update_stored(task.task_id, address)  # H(delta) || delta: no slice copy
        if (
            stored is None or len(stored) != 32 + 2 * d
        ):  # admission guarantees both; a broken store must not pass
            raise RuntimeError(
                f"task {task.task_id}: pending update of {address.hex()} is missing or malformed"
            )
        Q[row] = np.frombuffer(stored, dtype="<i2", offset=32)
    return Q


def close_round(state: State, env: BlockEnv, task: Task) -> list[Event]:
    """Close ``task``'s open round (docs/PROTOCOL.md section 7): score, slash, aggregate, evaluate, then
    complete, expire or open the next round; returns the events."""
    k, f = len(task.submitted), task.byzantine_f
    if k < 2 * f + 3:
        # Too few updates for Krum to tell honest from Byzantine: no aggregation, no slash, no bill.
        task = replace(task, rounds_closed=task.rounds_closed + 1)
        state.set_task(task)
        events: list[Event] = [
            RoundClosed(task.task_id, task.round, task.submitted, (), (), (), task.accuracy_bps, 1)
        ]
        return events + advance_round(state, env, task)

    Q = get_round_updates(state, task)
    params = env.params
    rules = krum.RoundRules(
        params.slash_direction_bps, params.coherence_gate_bps, params.slash_score_ratio_coherent_pct
    )
    result = krum.multi_krum(Q, f, task.submitted, params.slash_score_ratio_pct, rules)
    selected = tuple(task.submitted[i] for i in result.selected)
    flagged = tuple(task.submitted[i] for i in result.flagged)

    events = []
    by_direction = set(result.flagged_direction)
    for i in result.flagged:
        reason = int(SlashReason.DIRECTION if i in by_direction else SlashReason.KRUM_SCORE)
        events += slash_participant(state, params, task, task.submitted[i], reason)
    task = state.get_task(task.task_id) or task  # participants changed if anyone was slashed

    weights = np.frombuffer(state.get_model(task.task_id), dtype="<i4")
    new_weights = model.aggregate(weights, Q, rows=result.selected)
    state.set_model(task.task_id, new_weights.astype("<i4").tobytes())
    val_x, val_y = state.get_valset(task.task_id)
    accuracy = model.accuracy_bps(
        new_weights,
        task.arch,
        task.scale_bits,
        np.frombuffer(val_x, dtype="<i2").reshape(-1, task.arch[0]),
        np.frombuffer(val_y, dtype=np.uint8),
    )
    counts = dict(task.rewards_weight)
    for address in selected:
        counts[address] = counts.get(address, 0) + 1
    task = replace(
        task,
        rounds_closed=task.rounds_closed + 1,
        billed_rounds=task.billed_rounds + 1,
        accuracy_bps=accuracy,
        rewards_weight=tuple(sorted(counts.items())),
    )
    state.set_task(task)
    events.append(
        RoundClosed(task.task_id, task.round, task.submitted, result.scores, selected, flagged, accuracy, 0)
    )
    if accuracy >= task.target_accuracy_bps:
        return events + complete_task(state, env, task)
    return events + advance_round(state, env, task)


def slash_participant(state: State, params: Params, task: Task, address: bytes, reason: int) -> list[Event]:
    """Burn ``slash_bps`` of the bonded stake, jail, and remove from the task (forfeiting its rewards)."""
    acct = state.get_account(address)
    amount = acct.bonded * params.slash_bps // 10_000
    state.set_account(
        address,
        replace(
            acct,
            bonded=acct.bonded - amount,
            jailed=True,
            tasks=tuple(t for t in acct.tasks if t != task.task_id),
        ),
    )
    state.increase_burned(amount)
    current = state.get_task(task.task_id) or task
    state.set_task(
        replace(
            current,
            participants=tuple(a for a in current.participants if a != address),
            rewards_weight=tuple((a, n) for a, n in current.rewards_weight if a != address),
        )
    )
    return [
        Slashed(task.task_id, address, amount, reason, task.round),
        Jailed(address),
        ParticipantRemoved(task.task_id, address, reason),
    ]


def complete_task(state: State, env: BlockEnv, task: Task) -> list[Event]:
    """Bill ``fee_per_round * billed_rounds`` from escrow, pay the treasury and the clients, refund the rest."""
    params = env.params
    charged = task.fee_per_round * task.billed_rounds  # billed_rounds <= max_rounds: within escrow
    protocol_fee = charged * params.protocol_fee_bps // 10_000
    pool = charged - protocol_fee
    total_weight = sum(n for _, n in task.rewards_weight)
    events: list[Event] = []
    paid = 0
    if total_weight:
        for address, n in task.rewards_weight:  # sorted by address
            amount = pool * n // total_weight
            if amount:
                state.increase_balance(address, amount)
                events.append(Rewarded(task.task_id, address, amount))
                paid += amount
    # integer dust (and the whole pool if nobody is left to pay) goes to the treasury
    state.increase_balance(env.config.treasury, protocol_fee + pool - paid)
    finish_task(state, replace(task, escrow=task.escrow - charged), TaskStatus.COMPLETED)
    events.append(TaskCompleted(task.task_id, task.rounds_closed, task.accuracy_bps, charged, protocol_fee))
    return events + refund_escrow(state, task)


def advance_round(state: State, env: BlockEnv, task: Task) -> list[Event]:
    """After a closed round that did not complete the task: expire it or open the next round."""
    if task.rounds_closed >= task.max_rounds:
        finish_task(state, task, TaskStatus.EXPIRED)
        events: list[Event] = [TaskExpired(task.task_id, EXPIRED_MAX_ROUNDS, task.rounds_closed)]
        return events + refund_escrow(state, task)
    clear_pending_updates(state, task)
    deadline = env.height + task.round_blocks
    state.set_task(replace(task, round=task.round + 1, round_deadline=deadline, submitted=()))
    return [RoundOpened(task.task_id, task.round + 1, deadline)]
