"""The sequencer's side of settlement: follow L1 for deposits, post output roots to the oracle.

``Settler.run`` is two loops in the sequencer's nursery:

* **follow**: every ``poll_s``, read the confirmed L1 head and the new deposits
  (``L1Follower``); wake the block builder when deposits wait or the head's L1 origin is half a
  deposit window old (an empty block then refreshes the origin, which the oracle requires fresh).
* **post**: when the head is ``output_blocks`` past the last posted output, or ``output_s`` have
  passed and the head moved, post the head's output root. The oracle's own record decides what
  was posted (read before every post), so a restart, a kill -9 between sending and the receipt,
  or an L1 error never posts a height twice or skips one that is due; an error is retried on the
  next turn.

Every L1 call runs on a worker thread; a failure is logged and counted, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from eth_account.signers.local import LocalAccount

from mpsnode.consensus.block import Header
from mpsnode.consensus.settlement import L1Config, L1Facts
from mpsnode.node.l1.client import L1, L1Error, L1Revert
from mpsnode.node.l1.follower import L1Follower
from mpsnode.node.log import event
from sequencer.evaluation import write_material
from sequencer.metrics import Metrics

log = logging.getLogger("sequencer.l1")


@dataclass(frozen=True, slots=True)
class OutputAt:
    """The output of one committed block: what the oracle is given."""

    height: int
    root: bytes
    l1_origin: int
    deposits: int


@dataclass(frozen=True, slots=True)
class SequencerHooks:
    """What the settler reads of the sequencer and asks of it."""

    head_header: Callable[[], Header]
    credited_deposits: Callable[[], int]  # deposits the head state has credited
    wake: Callable[[], None]  # have the builder make a block soon
    output_at_head: Callable[[], Awaitable[OutputAt]]  # the head's output, read consistently
    # EVALUATION ONLY (sequencer.evaluation): the head's forged output and its proof material
    forge_at_head: Callable[[], Awaitable[tuple[OutputAt, dict[str, Any]]]] | None = None


@dataclass
class SettlementConfig:
    url: str
    key: LocalAccount  # the sequencer's L1 account: registered in the oracle at deployment
    confirmations: int = 0
    poll_s: float = 0.25
    output_blocks: int = 20
    output_s: float = 5.0
    dishonest_material: Path | None = None  # EVALUATION ONLY: forge an output, write its proof here


class Settler:
    def __init__(
        self, l1_config: L1Config, config: SettlementConfig, hooks: SequencerHooks, metrics: Metrics
    ):
        self.hooks = hooks
        self.metrics = metrics
        self.config = config
        self.window = l1_config.deposit_window
        if config.confirmations >= self.window // 2:
            raise ValueError(
                f"--l1-confirmations {config.confirmations} must be below half the deposit window "
                f"({self.window} L1 blocks), or honest blocks would fall behind it"
            )
        self.follower = L1Follower(config.url, l1_config, config.confirmations)
        self.poster = L1(config.url, l1_config)
        self.last_posted_height = 0
        self._last_post = 0.0
        self.forged = False

    # -- what the builder asks ----------------------------------------------------------------

    def facts(self, credited: int) -> L1Facts:
        """The facts of the next block: origin at the confirmed head as last read (no L1 call)."""
        origin = max(self.follower.head, self.hooks.head_header().l1_origin or 0)
        return self.follower.facts(origin, credited)

    def has_work(self, credited: int) -> bool:
        """Deposits wait, or the head's origin is half a window behind L1: a block is due."""
        if self.follower.pending(credited):
            return True
        origin = self.hooks.head_header().l1_origin or 0
        return self.follower.head - origin >= max(1, self.window // 2)

    # -- the loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        await trio.to_thread.run_sync(self._check)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow)
            nursery.start_soon(self._post)

    def _check(self) -> None:
        try:
            self.follower.check_chain()
            self.follower.refresh()
        except L1Error as exc:
            event(log, "l1_unavailable", logging.WARNING, error=str(exc))

    async def _follow(self) -> None:
        metrics = self.metrics
        while True:
            try:
                head = await trio.to_thread.run_sync(self.follower.refresh)
                metrics.l1_head.set(head)
                credited = self.hooks.credited_deposits()
                metrics.l1_deposits_pending.set(self.follower.pending(credited))
                if self.has_work(credited):
                    self.hooks.wake()
            except L1Error as exc:
                metrics.l1_errors.labels("follow").inc()
                event(log, "l1_error", logging.WARNING, loop="follow", error=str(exc))
            await trio.sleep(self.config.poll_s)

    async def _post(self) -> None:
        metrics = self.metrics
        while True:
            await trio.sleep(self.config.poll_s)
            try:
                await self._post_once()
            except L1Revert as exc:
                metrics.l1_errors.labels("post").inc()
                event(log, "output_refused", logging.WARNING, reason=exc.reason)
            except L1Error as exc:
                metrics.l1_errors.labels("post").inc()
                event(log, "l1_error", logging.WARNING, loop="post", error=str(exc))
            metrics.l1_output_height.set(self.last_posted_height)

    async def _turns_dishonest(self) -> bool:
        """EVALUATION ONLY: the first output after a withdrawal was paid on L1 is forged."""
        if self.config.dishonest_material is None or self.forged:
            return False
        return await trio.to_thread.run_sync(lambda: self.poster.portal_totals()["paid"] > 0)

    async def _post_once(self) -> None:
        count = await trio.to_thread.run_sync(self.poster.output_count)
        if count:
            last = await trio.to_thread.run_sync(self.poster.output, count - 1)
            self.last_posted_height = last.l2_height
        header = self.hooks.head_header()
        height = header.height
        if height <= self.last_posted_height:
            return
        now = trio.current_time()
        if (
            height - self.last_posted_height < self.config.output_blocks
            and now - self._last_post < self.config.output_s
        ):
            return
        if header.l1_origin is None or header.l1_origin + self.window <= self.follower.head + 1:
            self.hooks.wake()  # an origin too old for the oracle: wait for a block with a fresh one
            return
        output = await self.hooks.output_at_head()
        if output.height <= self.last_posted_height:
            return
        if await self._turns_dishonest():
            assert self.hooks.forge_at_head is not None and self.config.dishonest_material is not None
            output, material = await self.hooks.forge_at_head()
            write_material(self.config.dishonest_material, material)
            self.forged = True
            event(
                log, "evaluation_forged_output", logging.WARNING, height=output.height, root=output.root.hex()
            )
        receipt = await trio.to_thread.run_sync(
            self.poster.post_output,
            self.config.key,
            output.height,
            output.root,
            output.l1_origin,
            output.deposits,
        )
        self._last_post = now
        self.last_posted_height = output.height
        self.metrics.l1_outputs_posted.inc()
        event(
            log,
            "output_posted",
            height=output.height,
            root=output.root.hex(),
            l1_origin=output.l1_origin,
            deposits=output.deposits,
            l1_block=int(receipt["blockNumber"]),
            gas=int(receipt["gasUsed"]),
        )
