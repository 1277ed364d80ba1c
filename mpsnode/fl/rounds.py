"""What a client's update strategy sees of one round, and the shape of an injected attacker.

The client daemon (``mpsnode.client.daemon``) trains honestly unless its config carries an
``Attacker`` (FOR EVALUATION ONLY: the demo and the benchmarks inject
``mpsnode.fl.attacks.Attacker``); the daemon never imports the attacks themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mpsnode.consensus.params import Params
from mpsnode.consensus.state import Task
from mpsnode.fl.data import Dataset
from mpsnode.fl.learner import LocalUpdate


@dataclass(frozen=True, slots=True)
class RoundView:
    """One round as a client sees it: the task, its own address, and two coroutines. ``train`` is
    the honest local update on the client's data; ``observe`` returns whether the round is still in
    its commit phase and the other participants' updates of the last closed round, the only ones
    public before committing (float changes, proven against signed headers; None when none could be
    read)."""

    task: Task
    address: bytes
    train: Callable[[], Awaitable[LocalUpdate]]
    observe: Callable[[], Awaitable[tuple[bool, np.ndarray | None]]]
    params: Params | None = None  # the chain's genesis parameters (adaptive attacks read the rules)
    weights: np.ndarray | None = None  # the global model the round trains from (int32, proven)


class Attacker(Protocol):
    """A poisoning strategy injected into a client for evaluation."""

    @property
    def name(self) -> str: ...

    def poison_data(self, data: Dataset) -> Dataset:
        """The data the client trains on instead of its own."""
        ...

    async def craft(self, view: RoundView) -> tuple[np.ndarray | None, float, int]:
        """The int16 delta to send (None: send nothing this round), the loss and the clipped count."""
        ...
