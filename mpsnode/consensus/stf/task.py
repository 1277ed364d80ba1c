"""CREATE_TASK and JOIN_TASK, and the end-of-block start or expiry of tasks that are joining.

The limits here keep every integer sum of round closing in range (see docs/PROTOCOL.md):
at most 2^22 parameters, layer fan-in <= 16384, at most 256 clients, weights within the model
clamp +-(2^24 - 1), scale_bits <= 24.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mpsnode.consensus.errors import (
    AlreadyJoined,
    InvalidField,
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
from mpsnode.consensus.state import State, Task, TaskStatus, duplicate_key, update_key
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import CreateTask, JoinTask

MAX_PARAMS = 1 << 22  # with |delta| < 2^15 and k <= 256 keeps Krum distances below 2^63
MAX_FAN_IN = 16384  # 2^14 * 2^24 * 2^24 products stay below 2^63 in the forward pass
MAX_CLIENTS = 256
MAX_LAYERS = 16
MAX_CLASSES = 256  # labels are uint8
MODEL_CLAMP = (1 << 24) - 1
MAX_SCALE_BITS = 24
MAX_ROUNDS = 100_000
MAX_BLOCKS = 1_000_000  # join_blocks and round_blocks
MAX_LOCAL_EPOCHS = 1000

# TaskExpired.reason
EXPIRED_NOT_ENOUGH_CLIENTS = 1
EXPIRED_MAX_ROUNDS = 2


def _check(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise InvalidField(field, why)


def validate_create_task(body: CreateTask) -> None:
    """Stateless limits of CREATE_TASK; a violation makes the tx invalid (never included)."""
    arch = body.arch
    _check(2 <= len(arch) <= MAX_LAYERS, "arch", f"needs 2..{MAX_LAYERS} layer widths")
    _check(all(w >= 1 for w in arch), "arch", "every width must be at least 1")
    _check(all(w <= MAX_FAN_IN for w in arch[:-1]), "arch", f"layer fan-in must be <= {MAX_FAN_IN}")
    _check(2 <= arch[-1] <= MAX_CLASSES, "arch", f"the output layer needs 2..{MAX_CLASSES} classes")
    n_params = param_count(arch)
    _check(n_params <= MAX_PARAMS, "arch", f"{n_params} parameters exceeds the limit of {MAX_PARAMS}")
    _check(body.scale_bits <= MAX_SCALE_BITS, "scale_bits", f"must be 0..{MAX_SCALE_BITS}")
    _check(len(body.init_weights) == 4 * n_params, "init_weights",
           f"must be {4 * n_params} bytes (int32 per parameter), got {len(body.init_weights)}")
    weights = np.frombuffer(body.init_weights, dtype="<i4")
    _check(bool(np.all(np.abs(weights.astype(np.int64)) <= MODEL_CLAMP)), "init_weights",
           f"every weight must be within +-{MODEL_CLAMP}")
    _check(1 <= body.target_accuracy_bps <= 10_000, "target_accuracy_bps", "must be 1..10000")
    _check(1 <= body.max_rounds <= MAX_ROUNDS, "max_rounds", f"must be 1..{MAX_ROUNDS}")
    _check(body.max_clients <= MAX_CLIENTS, "max_clients", f"must be <= {MAX_CLIENTS}")
    _check(body.min_clients >= 2 * body.byzantine_f + 3, "min_clients", "must be >= 2 * byzantine_f + 3")
    _check(body.min_clients <= body.max_clients, "min_clients", "must be <= max_clients")
    _check(1 <= body.join_blocks <= MAX_BLOCKS, "join_blocks", f"must be 1..{MAX_BLOCKS}")
    _check(1 <= body.round_blocks <= MAX_BLOCKS, "round_blocks", f"must be 1..{MAX_BLOCKS}")
    _check(1 <= body.local_epochs <= MAX_LOCAL_EPOCHS, "local_epochs", f"must be 1..{MAX_LOCAL_EPOCHS}")
    samples = len(body.val_y)
    _check(samples >= 1, "val_y", "the validation set needs at least one sample")
    _check(len(body.val_x) == 2 * samples * arch[0], "val_x",
           f"must be {2 * samples * arch[0]} bytes (int16, {samples} samples x {arch[0]} inputs)")
    labels = np.frombuffer(body.val_y, dtype=np.uint8)
    _check(int(labels.max()) < arch[-1], "val_y", f"labels must be < {arch[-1]} (the output width)")


def process_create_task(state: State, env: BlockEnv, sender: bytes, body: CreateTask) -> list[Event]:
    params = env.params
    escrow = body.fee_per_round * body.max_rounds
    state.decrease_balance(sender, params.task_base_fee + escrow)
    state.increase_balance(env.config.treasury, params.task_base_fee)
    g = state.get_globals()
    task_id = g.next_task_id
    state.set_globals(replace(g, next_task_id=task_id + 1, open_tasks=(*g.open_tasks, task_id)))
    task = Task(task_id=task_id, creator=sender, arch=body.arch, scale_bits=body.scale_bits,
                target_accuracy_bps=body.target_accuracy_bps, max_rounds=body.max_rounds,
                min_clients=body.min_clients, max_clients=body.max_clients, byzantine_f=body.byzantine_f,
                join_blocks=body.join_blocks, round_blocks=body.round_blocks, fee_per_round=body.fee_per_round,
                local_epochs=body.local_epochs, status=TaskStatus.JOINING, created_height=env.height,
                escrow=escrow)
    state.set_task(task)
    state.set_model(task_id, body.init_weights)
    state.set_valset(task_id, body.val_x, body.val_y)
    return [TaskCreated(task_id, sender, escrow, params.task_base_fee, param_count(body.arch))]


def process_join_task(state: State, env: BlockEnv, sender: bytes, body: JoinTask) -> list[Event]:
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


def clear_pending_updates(state: State, task: Task) -> None:
    """Delete the open round's updates and their duplicate index."""
    for address in task.submitted:
        delta_hash = state.get_update_hash(task.task_id, address)
        if delta_hash is not None:
            state.delete(duplicate_key(task.task_id, delta_hash))
        state.delete(update_key(task.task_id, address))


def finish_task(state: State, task: Task, status: TaskStatus) -> None:
    """Close a task for good: release its participants and drop it from the open list."""
    clear_pending_updates(state, task)
    for address in task.participants:
        acct = state.get_account(address)
        state.set_account(address, replace(acct, tasks=tuple(t for t in acct.tasks if t != task.task_id)))
    g = state.get_globals()
    state.set_globals(replace(g, open_tasks=tuple(t for t in g.open_tasks if t != task.task_id)))
    state.set_task(replace(task, status=status, submitted=(), round_deadline=0))


def refund_escrow(state: State, task: Task) -> list[Event]:
    """Return what is left of the task's escrow to its creator."""
    current = state.get_task(task.task_id)
    amount = current.escrow if current is not None else 0
    if amount == 0:
        return []
    state.increase_balance(task.creator, amount)
    state.set_task(replace(current, escrow=0))
    return [Refunded(task.task_id, task.creator, amount)]
