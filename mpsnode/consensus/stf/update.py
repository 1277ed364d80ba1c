"""SUBMIT_UPDATE: one quantized model delta per active participant per open round."""

from __future__ import annotations

from dataclasses import replace

from mpsnode.consensus.errors import (
    AlreadySubmitted,
    DuplicateUpdate,
    NotParticipant,
    TaskNotActive,
    UnknownTask,
    WrongRound,
    WrongUpdateSize,
)
from mpsnode.consensus.events import Event, UpdateSubmitted
from mpsnode.consensus.hashing import UPDATE, H
from mpsnode.consensus.model import param_count
from mpsnode.consensus.state import State, TaskStatus, duplicate_key
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import SubmitUpdate


def process_submit_update(state: State, env: BlockEnv, sender: bytes, body: SubmitUpdate) -> list[Event]:
    """SUBMIT_UPDATE: store the delta for the open round; ``UnknownTask``, ``TaskNotActive``, ``WrongRound``,
    ``NotParticipant``, ``AlreadySubmitted``, ``WrongUpdateSize``, ``DuplicateUpdate``."""
    task = state.get_task(body.task_id)
    if task is None:
        raise UnknownTask(body.task_id)
    if task.status != TaskStatus.ACTIVE:
        raise TaskNotActive(task.task_id)
    if body.round != task.round:
        raise WrongRound(task.round, body.round)
    if sender not in task.participants:
        raise NotParticipant(task.task_id)
    if sender in task.submitted:
        raise AlreadySubmitted(task.task_id, task.round)
    expected = 2 * param_count(task.arch)
    if len(body.delta) != expected:
        raise WrongUpdateSize(expected, len(body.delta))
    delta_hash = H(UPDATE, body.delta)
    dup = duplicate_key(task.task_id, delta_hash)
    if state.get(dup) is not None:
        # A byte-for-byte copy of someone else's update is free-riding, not training.
        raise DuplicateUpdate()
    state.set(dup, sender)
    state.set_update(task.task_id, sender, delta_hash, body.delta)
    state.set_task(replace(task, submitted=(*task.submitted, sender)))
    return [UpdateSubmitted(task.task_id, task.round, sender, delta_hash)]
