"""The explicit environment of one block: every external input the transition may read."""

from __future__ import annotations

from dataclasses import dataclass

from mpsnode.consensus.params import Params
from mpsnode.consensus.settlement import L1Facts
from mpsnode.consensus.state import Config


@dataclass(frozen=True, slots=True)
class BlockEnv:
    config: Config
    height: int
    timestamp_ms: int
    l1: L1Facts | None = None  # settlement mode: what the node read from L1 for this block

    @property
    def params(self) -> Params:
        """The chain's params."""
        return self.config.params

    @property
    def chain_id(self) -> str:
        """The chain's id."""
        return self.config.chain_id
