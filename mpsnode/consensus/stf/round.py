"""End of a round's phases: opening the reveal phase, and closing the round.

A round's commit phase ends at the end of a block when every active participant has committed, or
when the block's height has reached the phase's deadline; the reveal phase opens (the contribution
direction is computed: ``mpsnode.consensus.contribution``), or, with no commitment at all, the round
closes void. The reveal phase ends when every committer has revealed or at its deadline, and the
round closes. Closing a round with at least 3 updates: decide it (``mpsnode.consensus.robust``:
Krum and direction flags with the round's tolerance, then nearest-neighbour mixing and Multi-Krum),
slash and remove the flagged, aggregate into the global model, credit each aggregated update its
contribution units, evaluate the model on the task's validation set, remove the participants
silent too long, then complete the task (billing and rewards), expire it (refund) or open the next
round.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mpsnode.consensus import contribution, krum, model, robust
from mpsnode.consensus.events import (
    Event,
    Jailed,
    ParticipantRemoved,
    RemovalReason,
    RevealOpened,
    Rewarded,
    RoundClosed,
    RoundOpened,
    Slashed,
    TaskCompleted,
    TaskExpired,
)
from mpsnode.consensus.limits import MIN_SCORED_UPDATES
from mpsnode.consensus.params import Params
from mpsnode.consensus.state import RoundPhase, State, Task, TaskStatus
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.stf.task import (
    EXPIRED_MAX_ROUNDS,
    EXPIRED_TOO_FEW_PARTICIPANTS,
    clear_previous_updates,
    clear_round,
    finish_task,
    refund_escrow,
)


def is_phase_due(task: Task, height: int) -> bool:
    """Whether ``task``'s open phase ends at this block: everyone who can act has acted (every
    participant committed; every committer revealed), or the phase's deadline passed."""
    if task.status != TaskStatus.ACTIVE:
        return False
    if task.phase == RoundPhase.COMMIT:
        complete = len(task.committed) == len(task.participants)
    else:
        complete = len(task.submitted) == len(task.committed)
    return complete or height >= task.round_deadline


def process_round_phases(state: State, env: BlockEnv) -> list[Event]:
    """End every due phase, in task id order: open the reveal phase, or close the round."""
    events: list[Event] = []
    for task_id in state.get_globals().open_tasks:
        task = state.get_task(task_id)
        if task is None or not is_phase_due(task, env.height):
            continue
        if task.phase == RoundPhase.COMMIT and task.committed:
            events += open_reveal(state, env, task)
        else:
            events += close_round(state, env, task)
    return events


def open_reveal(state: State, env: BlockEnv, task: Task) -> list[Event]:
    """Open the reveal phase: compute the round's contribution direction (the validation margin
    gradient off the span of the last round's updates and the global change they made), then drop
    that basis."""
    weights = np.frombuffer(state.get_model(task.task_id), dtype="<i4")
    g = contribution.margin_gradient(weights, task.arch, task.scale_bits, *validation_set(state, task))
    change = state.get_last_change(task.task_id)  # the last global change is public too
    P = get_updates(state, task, task.previous, spare_rows=0 if change is None else 1)
    k = len(task.previous)
    stored = state.get_basis_gram(task.task_id)
    if k and (stored is None or len(stored) != 8 * k * k):  # the close of that round wrote it
        raise RuntimeError(f"task {task.task_id}: the last round's Gram matrix is missing or malformed")
    H = np.frombuffer(stored or b"", dtype="<i8").reshape(k, k).astype(np.int64)
    if change is not None:  # a replay of it is no work either: one more basis row
        P[k] = np.frombuffer(change, dtype="<i2")
        H = contribution.extend_gram(P, H)
    direction = contribution.orthogonal_direction(contribution.to_direction(g), P, H)
    state.set_direction(task.task_id, direction.astype("<i4").tobytes())
    clear_previous_updates(state, task)
    deadline = env.height + env.params.reveal_blocks
    state.set_task(replace(task, phase=RoundPhase.REVEAL, round_deadline=deadline, previous=()))
    return [RevealOpened(task.task_id, task.round, deadline, task.committed)]


def validation_set(state: State, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """The task's validation inputs (int16, samples x in) and labels (uint8), as stored."""
    val_x, val_y = state.get_valset(task.task_id)
    return np.frombuffer(val_x, dtype="<i2").reshape(-1, task.arch[0]), np.frombuffer(val_y, dtype=np.uint8)


def get_round_updates(state: State, task: Task) -> np.ndarray:
    """The open round's deltas as a k x d int16 matrix, rows in reveal order."""
    return get_updates(state, task, task.submitted)


def get_updates(state: State, task: Task, addresses: tuple[bytes, ...], spare_rows: int = 0) -> np.ndarray:
    """The stored deltas of ``addresses`` in ``task`` as a k x d int16 matrix, rows in that order,
    with ``spare_rows`` more rows after them for the caller to fill."""
    d = model.param_count(task.arch)
    Q = np.empty((len(addresses) + spare_rows, d), dtype="<i2")  # the stored byte order
    # copied from the store's pages straight into the rows (LMDB: one copy, no bytes objects)
    lengths = state.read_updates_into(task.task_id, addresses, Q[: len(addresses)])
    for address, n in zip(addresses, lengths, strict=True):
        if n != 2 * d:  # admission guarantees both; a broken store must not pass
            raise RuntimeError(
                f"task {task.task_id}: stored update of {address.hex()} is missing or malformed"
            )
    return Q


def close_round(state: State, env: BlockEnv, task: Task) -> list[Event]:
    """Close ``task``'s open round (docs/PROTOCOL.md section 7): score, slash, aggregate, evaluate,
    take attendance, then complete, expire or open the next round; returns the events."""
    k = len(task.submitted)
    if k < MIN_SCORED_UPDATES:
        # No robust rule can tell honest from Byzantine: no aggregation, no slash, no bill.
        if k:  # the updates are still the next round's public basis
            state.set_basis_gram(
                task.task_id, krum.gram_matrix(get_round_updates(state, task)).astype("<i8").tobytes()
            )
        task = replace(task, rounds_closed=task.rounds_closed + 1)
        state.set_task(task)
        events: list[Event] = [
            RoundClosed(task.task_id, task.round, task.submitted, (), (), (), task.accuracy_bps, 1, 0, (), ())
        ]
        events += take_attendance(state, env.params, task)
        return events + advance_round(state, env, state.get_task(task.task_id) or task)

    f = robust.flag_f(task.byzantine_f, k)
    keep_f = robust.tolerated_f(task.byzantine_f, task.removed, k)
    Q = get_round_updates(state, task)
    params = env.params
    G = krum.gram_matrix(Q)
    state.set_basis_gram(
        task.task_id, G.astype("<i8").tobytes()
    )  # for the next round's contribution direction
    decision = robust.decide_round(G, f, task.submitted, robust.round_rules(params), task.aggregator, keep_f)
    selected = tuple(task.submitted[i] for i in decision.selected)
    flagged = tuple(task.submitted[i] for i in decision.flagged)

    events = []
    by_direction = set(decision.flagged_direction)
    for i in decision.flagged:
        reason = int(RemovalReason.DIRECTION if i in by_direction else RemovalReason.KRUM_SCORE)
        events += slash_participant(state, params, task, task.submitted[i], reason)
    task = state.get_task(task.task_id) or task  # participants changed if anyone was slashed

    stored = state.get_direction(task.task_id)
    if stored is None or len(stored) != 4 * Q.shape[1]:  # the reveal phase always wrote it
        raise RuntimeError(f"task {task.task_id}: the round's contribution direction is missing")
    direction = np.frombuffer(stored, dtype="<i4")
    weights = np.frombuffer(state.get_model(task.task_id), dtype="<i4")
    # the aggregate and every update's gain (contribution.gains) in one pass over the k x d matrix
    new_weights, round_gains = model.aggregate_and_dots(weights, Q, direction, weights=decision.weights)
    state.set_model(task.task_id, np.asarray(new_weights, dtype="<i4").tobytes())  # no copy: it is int32
    # a mean of int16 rows, rounded, then clamped towards the old weight: it fits int16 (and the
    # difference of two weights within 2^24 is exact in int32)
    change = np.subtract(new_weights, weights, dtype=np.int32)
    state.set_last_change(task.task_id, change.astype("<i2").tobytes())
    accuracy = model.accuracy_bps(new_weights, task.arch, task.scale_bits, *validation_set(state, task))
    # Every update neither flagged nor left out shares the round by its (significant, capped) gain.
    left_out = set(decision.flagged) | set(decision.excluded)
    units = contribution.round_contributions(
        round_gains.tolist(),
        G.tolist(),
        contribution.squared_norm(direction.astype(np.int64)),
        decision.weights,
        [i not in left_out for i in range(k)],
        params,
    )
    counts = dict(task.reward_units)
    for address, u in zip(task.submitted, units, strict=True):
        if u:
            counts[address] = counts.get(address, 0) + u
    task = replace(
        task,
        rounds_closed=task.rounds_closed + 1,
        billed_rounds=task.billed_rounds + 1,
        accuracy_bps=accuracy,
        reward_units=tuple(sorted(counts.items())),
    )
    state.set_task(task)
    events.append(
        RoundClosed(
            task.task_id,
            task.round,
            task.submitted,
            decision.scores,
            selected,
            flagged,
            accuracy,
            0,
            keep_f,
            tuple(task.submitted[i] for i in decision.excluded),
            units,
        )
    )
    events += take_attendance(state, params, task)
    task = state.get_task(task.task_id) or task
    if accuracy >= task.target_accuracy_bps:
        return events + complete_task(state, env, task)
    return events + advance_round(state, env, task)


def take_attendance(state: State, params: Params, task: Task) -> list[Event]:
    """Count a missed round for every participant that did not submit, reset it for those that did,
    and remove (without a slash) those that have now missed ``max_missed_rounds`` in a row."""
    submitted = set(task.submitted)
    before = dict(task.missed)
    missed = {a: before.get(a, 0) + 1 for a in task.participants if a not in submitted}
    silent = sorted(a for a, n in missed.items() if n >= params.max_missed_rounds)
    events: list[Event] = []
    for address in silent:
        del missed[address]
        events += remove_participant(state, task, address, int(RemovalReason.SILENT))
    current = state.get_task(task.task_id) or task
    state.set_task(replace(current, missed=tuple(sorted(missed.items()))))
    return events


def slash_participant(state: State, params: Params, task: Task, address: bytes, reason: int) -> list[Event]:
    """Burn ``slash_bps`` of the bonded stake, jail, and remove from the task (forfeiting its rewards)."""
    acct = state.get_account(address)
    amount = acct.bonded * params.slash_bps // 10_000
    state.set_account(address, replace(acct, bonded=acct.bonded - amount, jailed=True))
    state.increase_burned(amount)
    events: list[Event] = [Slashed(task.task_id, address, amount, reason, task.round), Jailed(address)]
    return events + remove_participant(state, task, address, reason)


def remove_participant(state: State, task: Task, address: bytes, reason: int) -> list[Event]:
    """Take ``address`` out of the task: no longer a participant, its reward weight forfeited, the task
    no longer among its open tasks; it counts as one of the task's ``f`` from now on."""
    acct = state.get_account(address)
    state.set_account(address, replace(acct, tasks=tuple(t for t in acct.tasks if t != task.task_id)))
    current = state.get_task(task.task_id) or task
    state.set_task(
        replace(
            current,
            participants=tuple(a for a in current.participants if a != address),
            reward_units=tuple((a, n) for a, n in current.reward_units if a != address),
            missed=tuple((a, n) for a, n in current.missed if a != address),
            removed=current.removed + 1,
        )
    )
    return [ParticipantRemoved(task.task_id, address, reason)]


def complete_task(state: State, env: BlockEnv, task: Task) -> list[Event]:
    """Bill the rounds: the protocol fee of ``fee_per_round * billed_rounds`` to the treasury, each
    participant its share of the rest by its reward units, and refund what was not earned."""
    params = env.params
    bill = task.fee_per_round * task.billed_rounds  # billed_rounds <= max_rounds: within escrow
    protocol_fee = bill * params.protocol_fee_bps // 10_000
    pool = bill - protocol_fee
    # Each billed round shares at most ROUND_UNITS, so the units earned never exceed this total.
    total_units = contribution.ROUND_UNITS * task.billed_rounds
    events: list[Event] = []
    paid = 0
    for address, units in task.reward_units:  # sorted by address
        amount = pool * units // total_units if units > 0 else 0
        if amount:
            state.increase_balance(address, amount)
            events.append(Rewarded(task.task_id, address, amount))
            paid += amount
    state.increase_balance(env.config.treasury, protocol_fee)
    charged = protocol_fee + paid  # what nobody earned (and integer dust) goes back with the escrow
    finish_task(state, replace(task, escrow=task.escrow - charged), TaskStatus.COMPLETED)
    events.append(TaskCompleted(task.task_id, task.rounds_closed, task.accuracy_bps, charged, protocol_fee))
    return events + refund_escrow(state, task)


def advance_round(state: State, env: BlockEnv, task: Task) -> list[Event]:
    """After a closed round that did not complete the task: expire it (its last round, or too few
    participants left for any robust rule) or open the next round."""
    reason = 0
    if task.rounds_closed >= task.max_rounds:
        reason = EXPIRED_MAX_ROUNDS
    elif len(task.participants) < MIN_SCORED_UPDATES:
        reason = EXPIRED_TOO_FEW_PARTICIPANTS
    if reason:
        finish_task(state, task, TaskStatus.EXPIRED)
        events: list[Event] = [TaskExpired(task.task_id, reason, task.rounds_closed)]
        return events + refund_escrow(state, task)
    clear_round(state, task)
    deadline = env.height + task.round_blocks
    revealed = task.phase == RoundPhase.REVEAL  # else the round had no commitment: keep the older basis
    state.set_task(
        replace(
            task,
            round=task.round + 1,
            round_deadline=deadline,
            phase=RoundPhase.COMMIT,
            committed=(),
            submitted=(),
            previous=task.submitted if revealed else task.previous,
        )
    )
    return [RoundOpened(task.task_id, task.round + 1, deadline)]
