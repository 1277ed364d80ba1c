"""The verifier's side of settlement part 2: compare every output posted to L1 with its own, and
contest a wrong one on L1 at once (docs/SETTLEMENT.md, "Challenges").

``Challenger.run`` runs in the verifier's nursery when it has an L1 key (``--l1-key``). It bonds
the key into the committee if the oracle's admin admitted it, then, every ``poll`` seconds:

* for each new output, once this node has verified its height, computes the block's output root
  from its own store (``node.outputs.output_at``) and compares. A mismatch is written to
  ``reports/output-<index>.json``; the challenge carries that report's keccak hash. If the output
  is not challenged yet and its period runs, it challenges with its own root; if someone else
  challenged it, it attests its own root; if the period is over, it says so (too late);
* for each output still in its period or under an open challenge, attests its own root when a
  challenge opens (also one it thinks frivolous: then its root is the posted one).

Everything it does is read back from the oracle before it acts (challenged? attested by me?), so
a restart, kill -9 included, between detecting and challenging simply challenges on the next
turn, in time if the period still runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_account.signers.local import LocalAccount

from mpsnode.consensus.settlement import keccak256
from mpsnode.node.errors import L1Error, L1Revert
from mpsnode.node.l1.client import L1
from mpsnode.node.log import event
from mpsnode.node.outputs import BlockOutput, output_at
from mpsnode.node.store import LmdbStore
from verifier.metrics import VerifierMetrics

log = logging.getLogger("mpsnode.verifier.l1")

OPEN, UPHELD, REJECTED = 1, 2, 3


@dataclass
class Challenger:
    l1: L1
    key: LocalAccount
    store: LmdbStore
    reports_dir: Path
    metrics: VerifierMetrics
    verified: Any  # () -> the height this node has verified up to
    poll: float = 0.5
    registered: bool = False
    checked: int = 0  # outputs compared so far (index order)
    watching: dict[int, BlockOutput] = field(default_factory=dict)  # in the period or challenged

    async def run(self) -> None:
        while True:
            try:
                if not self.registered:
                    self.registered = await trio.to_thread.run_sync(self._join)
                await self._turn()
            except L1Error as exc:
                self.metrics.l1_errors.inc()
                event(log, "l1_error", logging.WARNING, error=exc.reason)
            await trio.sleep(self.poll)

    def _join(self) -> bool:
        oracle = self.l1.contract("OutputOracle").functions
        me = self.key.address
        if int(self.l1.call(oracle.verifier_bond(me).call)) > 0:
            return True
        if not self.l1.call(oracle.admitted(me).call):
            event(
                log, "not_admitted", logging.WARNING, l1_address=me, note="compares outputs; cannot challenge"
            )
            return False
        receipt = self.l1.register_verifier(self.key)
        event(
            log,
            "registered",
            l1_address=me,
            bond=int(self.l1.call(oracle.VERIFIER_BOND().call)),
            gas=int(receipt["gasUsed"]),
        )
        return True

    async def _turn(self) -> None:
        count = await trio.to_thread.run_sync(self.l1.output_count)
        while self.checked < count:
            posted = await trio.to_thread.run_sync(self.l1.output, self.checked)
            if posted.l2_height > self.verified():
                break  # not verified that far yet
            mine = self._own(posted.l2_height)
            self.metrics.outputs_checked.inc()
            if mine.root != posted.root:
                self.metrics.outputs_mismatched.inc()
                event(log, "output_mismatch", logging.ERROR, output=posted.index, l2_height=posted.l2_height,
                      posted=posted.root.hex(), computed=mine.root.hex())  # fmt: skip
            self.watching[posted.index] = mine
            self.checked += 1
        for index, mine in list(self.watching.items()):
            await self._judge(index, mine)

    def _own(self, height: int) -> BlockOutput:
        view = self.store.snapshot()
        try:
            return output_at(view, height)
        finally:
            view.close()

    async def _judge(self, index: int, mine: BlockOutput) -> None:
        posted = await trio.to_thread.run_sync(self.l1.output, index)
        _, _, _, status = await trio.to_thread.run_sync(self.l1.challenge_of, index)
        finalized = await trio.to_thread.run_sync(self.l1.is_finalized, index)
        if status in (UPHELD, REJECTED) or (status == 0 and finalized):
            del self.watching[index]
            if status == 0 and posted.root != mine.root:
                event(log, "challenge_too_late", logging.ERROR, output=index, l2_height=posted.l2_height)
            return
        if not self.registered:
            return
        if status == 0 and posted.root != mine.root:
            report = self._report(index, posted.root, mine)
            try:
                receipt = await trio.to_thread.run_sync(self.l1.challenge, self.key, index, mine.root, report)
            except L1Revert as exc:  # someone challenged first, or the period just ended: next turn sees it
                event(log, "challenge_refused", logging.WARNING, output=index, reason=exc.reason)
                return
            self.metrics.challenges.inc()
            event(log, "challenged", logging.WARNING, output=index, l2_height=mine.height, root=mine.root.hex(),
                  report=report.hex(), gas=int(receipt["gasUsed"]))  # fmt: skip
        elif status == OPEN:
            oracle = self.l1.contract("OutputOracle").functions
            mine_attested = await trio.to_thread.run_sync(
                lambda: bytes(self.l1.call(oracle.attestation(index, self.key.address).call))
            )
            if mine_attested != bytes(32):
                return
            try:
                receipt = await trio.to_thread.run_sync(self.l1.attest, self.key, index, mine.root)
            except L1Revert as exc:
                event(log, "attest_refused", logging.WARNING, output=index, reason=exc.reason)
                return
            self.metrics.attestations.inc()
            event(log, "attested", output=index, root=mine.root.hex(), agrees_with_posted=mine.root == posted.root,
                  gas=int(receipt["gasUsed"]))  # fmt: skip

    def _report(self, index: int, posted: bytes, mine: BlockOutput) -> bytes:
        """Write ``reports/output-<index>.json``; its keccak hash goes on L1 with the challenge."""
        report = {
            "kind": "mps-output-challenge/1",
            "output": index,
            "l2_height": mine.height,
            "posted_root": posted.hex(),
            "computed": {
                "root": mine.root.hex(),
                "state_root": mine.state_root.hex(),
                "withdrawals_root": mine.withdrawals_root.hex(),
                "block_hash": mine.block_hash.hex(),
            },
            "note": "the output root posted to L1 is not the one this verifier computed for a block it verified",
        }
        data = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        path = self.reports_dir / f"output-{index}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return keccak256(data)
