"""CREATE_TASK and JOIN_TASK, and the end-of-block start or expiry of tasks that are joining.

CREATE_TASK's stateless limits (``validation.validate_create_task``, bounds in ``limits.py``) keep every
integer sum of round closing in range; a task that exists has passed them.
"""

from __future__ import annotations

from dataclasses import replace

from mpsnode.consensus.errors import (
    AlreadyJoined,
    Jailed,
    StakeBelowMinimum,
    TaskFull,
    TaskNotJoining,
    UnknownTask,
)
from mpsnode.consensus.events import (
    Event,
    Refunded,
    RoundOpened,
    TaskCreated,
    TaskExpired,
    TaskJoined,
    TaskStarted,
)
from mpsnode.consensus.model import param_count
from mpsnode.consensus.state import State, Task, TaskStatus, commitment_key, duplicate_key, update_key
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import CreateTask, JoinTask

# TaskExpired.reason
EXPIRED_NOT_ENOUGH_CLIENTS = 1
EXPIRED_MAX_ROUNDS = 2
EXPIRED_TOO_FEW_PARTICIPANTS = 3  # fewer than 3 participants left: no robust rule applies


def process_create_task(state: State, env: BlockEnv, sender: bytes, body: CreateTask) -> list[Event]:
    """CREATE_TASK: pay the base fee, escrow the round fees, store the task, model and validation set;
    ``InsufficientBalance``."""
    params = env.params
    escrow = body.fee_per_round * body.max_rounds
    state.decrease_balance(sender, params.task_base_fee + escrow)
    state.increase_balance(env.config.treasury, params.task_base_fee)
    g = state.get_globals()
    task_id = g.next_task_id
    state.set_globals(replace(g, next_task_id=task_id + 1, open_tasks=(*g.open_tasks, task_id)))
    task = Task(
        task_id=task_id,
        creator=sender,
        arch=body.arch,
        scale_bits=body.scale_bits,
        target_accuracy_bps=body.target_accuracy_bps,
        max_rounds=body.max_rounds,
        min_clients=body.min_clients,
        max_clients=body.max_clients,
        byzantine_f=body.byzantine_f,
        aggregator=body.aggregator,
        join_blocks=body.join_blocks,
        round_blocks=body.round_blocks,
        fee_per_round=body.fee_per_round,
        local_epochs=body.local_epochs,
        status=TaskStatus.JOINING,
        created_height=env.height,
        escrow=escrow,
    )
    state.set_task(task)
    state.set_model(task_id, body.init_weights)
    state.set_valset(task_id, body.val_x, body.val_y)
    return [TaskCreated(task_id, sender, escrow, params.task_base_fee, param_count(body.arch))]


def process_join_task(state: State, env: BlockEnv, sender: bytes, body: JoinTask) -> list[Event]:
    """JOIN_TASK: add the sender to a joining task; ``UnknownTask``, ``TaskNotJoining``, ``TaskFull``,
    ``AlreadyJoined``, ``Jailed``, ``StakeBelowMinimum``."""
    task = state.get_task(body.task_id)
    if task is None:
        raise UnknownTask(body.task_id)
    if task.status != TaskStatus.JOINING:
        raise TaskNotJoining(task.task_id)
    if sender in task.participants:
        raise AlreadyJoined(f"already a participant of task {task.task_id}")
    if len(task.participants) >= task.max_clients:
        raise TaskFull(task.task_id, task.max_clients)
    acct = state.get_account(sender)
    if acct.jailed:
        raise Jailed()
    if acct.bonded < env.params.min_stake:
        raise StakeBelowMinimum(env.params.min_stake, acct.bonded)
    state.set_task(replace(task, participants=(*task.participants, sender)))
    state.set_account(sender, replace(acct, tasks=tuple(sorted((*acct.tasks, task.task_id)))))
    return [TaskJoined(task.task_id, sender)]


def process_task_starts(state: State, env: BlockEnv) -> list[Event]:
    """Start every joining task that is ready; expire those whose join window passed short of clients."""
    events: list[Event] = []
    for task_id in state.get_globals().open_tasks:
        task = state.get_task(task_id)
        if task is None or task.status != TaskStatus.JOINING:
            continue
        n = len(task.participants)
        if n >= task.max_clients or (n >= task.min_clients and env.height >= task.join_deadline):
            deadline = env.height + task.round_blocks
            state.set_task(replace(task, status=TaskStatus.ACTIVE, round=1, round_deadline=deadline))
            events += [TaskStarted(task_id, task.participants), RoundOpened(task_id, 1, deadline)]
        elif env.height >= task.join_deadline:
            finish_task(state, task, TaskStatus.EXPIRED)
            events.append(TaskExpired(task_id, EXPIRED_NOT_ENOUGH_CLIENTS, 0))
            events += refund_escrow(state, task)
    return events


def clear_round(state: State, task: Task) -> None:
    """Delete the closed round's commitments, duplicate index and contribution direction; its revealed
    updates stay (they are the next round's public basis, ``Task.previous``)."""
    for address in task.submitted:
        delta_hash = state.get_update_hash(task.task_id, address)
        if delta_hash is not None:
            state.delete(duplicate_key(task.task_id, delta_hash))
    for address in task.committed:
        state.delete(commitment_key(task.task_id, address))
    state.set_direction(task.task_id, None)


def clear_previous_updates(state: State, task: Task) -> None:
    """Delete the last closed round's public basis: its revealed updates (``Task.previous``), their
    Gram matrix and the global change they made."""
    for address in task.previous:
        state.delete(update_key(task.task_id, address))
    state.set_basis_gram(task.task_id, None)
    state.set_last_change(task.task_id, None)


def finish_task(state: State, task: Task, status: TaskStatus) -> None:
    """Close a task for good: delete its round state, release its participants, drop it from the open
    list."""
    clear_round(state, task)
    clear_previous_updates(state, task)
    for address in task.submitted:
        state.delete(update_key(task.task_id, address))
    for address in task.participants:
        acct = state.get_account(address)
        state.set_account(address, replace(acct, tasks=tuple(t for t in acct.tasks if t != task.task_id)))
    g = state.get_globals()
    state.set_globals(replace(g, open_tasks=tuple(t for t in g.open_tasks if t != task.task_id)))
    state.set_task(replace(task, status=status, submitted=(), committed=(), previous=(), round_deadline=0))


def refund_escrow(state: State, task: Task) -> list[Event]:
    """Return what is left of the task's escrow to its creator."""
    current = state.get_task(task.task_id)
    if current is None or current.escrow == 0:
        return []
    amount = current.escrow
    state.increase_balance(task.creator, amount)
    state.set_task(replace(current, escrow=0))
    return [Refunded(task.task_id, task.creator, amount)]
