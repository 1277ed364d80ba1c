"""Following the L1: the portal's deposits and the confirmed head, read once and kept.

The sequencer asks it which deposits a new block must carry; verifiers and replay ask it for the
``L1Facts`` of each block they check. Every call blocks (run it on a worker thread from trio).
What a node trusts its L1 endpoint for is in docs/SETTLEMENT.md: the events and the head it
reports are the L1's.
"""

from __future__ import annotations

import threading

from eth_utils import to_checksum_address

from mpsnode.consensus.settlement import Deposit, L1Config, L1Facts, facts_for
from mpsnode.node.l1.client import L1, L1Error


class L1Follower:
    """The portal's deposits in index order, complete up to L1 block ``scanned_to``, and the
    head ``confirmations`` blocks below the endpoint's latest block."""

    def __init__(self, url: str, config: L1Config, confirmations: int = 0, timeout: float = 10.0):
        self.l1 = L1(url, config, timeout=timeout)
        self.config = config
        self.confirmations = confirmations
        self.deposits: list[Deposit] = []
        self.scanned_to = config.start_block - 1
        self.head = config.start_block - 1
        self._lock = threading.Lock()  # refresh may run on two worker threads at once

    def check_chain(self) -> None:
        """``L1Error`` unless the endpoint is the genesis's L1 with the portal deployed."""
        chain_id = self.l1.chain_id()
        if chain_id != self.config.chain_id:
            raise L1Error(
                f"the L1 endpoint {self.l1.url} is chain {chain_id}; this chain settles on {self.config.chain_id}"
            )
        code = self.l1.call(lambda: self.l1.w3.eth.get_code(to_checksum_address(self.config.portal)))
        if not code:
            raise L1Error(f"no portal contract at 0x{self.config.portal.hex()} on {self.l1.url}")

    def refresh(self) -> int:
        """Read the new confirmed head and every deposit up to it; the head."""
        with self._lock:
            head = self.l1.head() - self.confirmations
            if head > self.scanned_to:
                new = self.l1.deposit_logs(self.scanned_to + 1, head)
                expected = len(self.deposits)
                for deposit in new:
                    if deposit.index != expected:
                        raise L1Error(
                            f"the L1 endpoint skipped deposit {expected} (next it gave: {deposit.index})"
                        )
                    expected += 1
                self.deposits.extend(new)
                self.scanned_to = head
            self.head = max(self.head, head)
            return self.head

    def facts(self, origin: int, credited: int) -> L1Facts:
        """The facts of a block naming L1 origin ``origin`` on a parent state that credited
        ``credited`` deposits; refreshes first if ``origin`` is past what was read."""
        if origin > self.scanned_to:
            self.refresh()
        with self._lock:
            if origin > self.scanned_to:
                return L1Facts(origin, (), origin_known=False)
            return facts_for(origin, credited, self.deposits)

    def pending(self, credited: int) -> int:
        """Deposits read from L1 that are not credited on L2 yet."""
        return max(0, len(self.deposits) - credited)
