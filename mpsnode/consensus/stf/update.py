"""COMMIT_UPDATE and REVEAL_UPDATE: a round's two phases, one commitment and one delta per participant.

In the commit phase a participant sends only a commitment to its delta; no delta of the round is
visible until every commitment is fixed, so nobody can copy the current round. In the reveal phase
a committer sends the delta and salt that open its commitment (``tx.update_commitment``).
"""

from __future__ import annotations

from dataclasses import replace

from mpsnode.consensus.errors import (
    AlreadyCommitted,
    AlreadySubmitted,
    CommitmentMismatch,
    DuplicateUpdate,
    NotCommitted,
    NotParticipant,
    TaskNotActive,
    UnknownTask,
    WrongPhase,
    WrongRound,
    WrongUpdateSize,
)
from mpsnode.consensus.events import Event, UpdateCommitted, UpdateRevealed
from mpsnode.consensus.model import param_count
from mpsnode.consensus.state import RoundPhase, State, Task, TaskStatus, duplicate_key
from mpsnode.consensus.stf.env import BlockEnv
from mpsnode.consensus.tx import CommitUpdate, RevealUpdate, commitment_of_hash


def _open_round(state: State, sender: bytes, task_id: int, round_: int, phase: RoundPhase) -> Task:
    task = state.get_task(task_id)
    if task is None:
        raise UnknownTask(task_id)
    if task.status != TaskStatus.ACTIVE:
        raise TaskNotActive(task.task_id)
    if round_ != task.round:
        raise WrongRound(task.round, round_)
    if sender not in task.participants:
        raise NotParticipant(task.task_id)
    if task.phase != phase:
        raise WrongPhase(task.task_id, phase.name.lower(), RoundPhase(task.phase).name.lower())
    return task


def process_commit_update(state: State, env: BlockEnv, sender: bytes, body: CommitUpdate) -> list[Event]:
    """COMMIT_UPDATE: record the sender's commitment for the open round; ``UnknownTask``,
    ``TaskNotActive``, ``WrongRound``, ``NotParticipant``, ``WrongPhase``, ``AlreadyCommitted``."""
    task = _open_round(state, sender, body.task_id, body.round, RoundPhase.COMMIT)
    if sender in task.committed:
        raise AlreadyCommitted(task.task_id, task.round)
    state.set_commitment(task.task_id, sender, body.commitment)
    state.set_task(replace(task, committed=(*task.committed, sender)))
    return [UpdateCommitted(task.task_id, task.round, sender, body.commitment)]


def process_reveal_update(state: State, env: BlockEnv, sender: bytes, body: RevealUpdate) -> list[Event]:
    """REVEAL_UPDATE: check the delta and salt against the sender's commitment and store the delta;
    ``UnknownTask``, ``TaskNotActive``, ``WrongRound``, ``NotParticipant``, ``WrongPhase``,
    ``NotCommitted``, ``AlreadySubmitted``, ``WrongUpdateSize``, ``CommitmentMismatch``,
    ``DuplicateUpdate``."""
    task = _open_round(state, sender, body.task_id, body.round, RoundPhase.REVEAL)
    if sender not in task.committed:
        raise NotCommitted(task.task_id, task.round)
    if sender in task.submitted:
        raise AlreadySubmitted(task.task_id, task.round)
    expected = 2 * param_count(task.arch)
    if len(body.delta) != expected:
        raise WrongUpdateSize(expected, len(body.delta))
    delta_hash = body.delta_hash()
    opened = commitment_of_hash(env.chain_id, task.task_id, task.round, sender, delta_hash, body.salt)
    if opened != state.get_commitment(task.task_id, sender):
        raise CommitmentMismatch()
    dup = duplicate_key(task.task_id, delta_hash)
    if state.get(dup) is not None:
        # Two committers with byte-identical deltas: colluders, or a copy made before the round.
        raise DuplicateUpdate()
    state.set(dup, sender)
    state.set_update(task.task_id, sender, delta_hash, body.delta)
    state.set_task(replace(task, submitted=(*task.submitted, sender)))
    return [UpdateRevealed(task.task_id, task.round, sender, delta_hash)]
