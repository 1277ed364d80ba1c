"""Settlement for a chain's users: deposit on L1, see it credited, prove a withdrawal, read the
state of both sides. ``mpsnode l1 ...`` and the demo run these; so can any program.

Blocking L1 calls (``L1``, web3) run on a worker thread here, so every function is async and
takes an open node connection (``mpsnode.node.connection.Client``) where it needs the L2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import trio
from eth_account.signers.local import LocalAccount

from mpsnode.consensus.events import Withdrawn
from mpsnode.consensus.settlement import WEI_PER_UNIT, Settlement
from mpsnode.consensus.state import SETTLEMENT_KEY, decode_settlement
from mpsnode.node.connection import Client
from mpsnode.node.l1.client import L1, L1Error, Output


class SettlementError(ValueError):
    """A settlement step cannot be done now or at all; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class DepositMade:
    index: int
    l1_block: int
    units: int
    tx_hash: str
    gas: int

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "l1_block": self.l1_block,
            "units": self.units,
            "l1_tx": self.tx_hash,
            "gas": self.gas,
        }


async def settlement_record(node: Client) -> tuple[Settlement, int]:
    """The chain's proven settlement record and the height it was proven at."""
    proven = await node.get_state(SETTLEMENT_KEY)
    record = Settlement() if proven.value is None else decode_settlement(proven.value)
    return record, proven.height


async def deposit(l1: L1, payer: LocalAccount, recipient: bytes, units: int) -> DepositMade:
    """Lock ``units`` (gwei) in the portal for L2 address ``recipient``."""
    if units <= 0:
        raise SettlementError("deposit a positive amount")
    receipt = await trio.to_thread.run_sync(l1.deposit, payer, recipient, units)
    logs = l1.contract("Portal").events.Deposited().process_receipt(receipt)
    if not logs:
        raise L1Error("the deposit's receipt has no Deposited event")
    index = int(logs[0]["args"]["index"])
    return DepositMade(
        index, int(receipt["blockNumber"]), units, receipt["transactionHash"].hex(), int(receipt["gasUsed"])
    )


async def wait_credited(node: Client, index: int, timeout: float = 60.0) -> int:
    """Wait until the L2 has credited deposit ``index``; the height it was seen at."""
    with trio.fail_after(timeout):
        while True:
            record, height = await settlement_record(node)
            if record.deposits > index:
                return height
            await trio.sleep(0.2)


async def withdrawal_of(node: Client, tx_id: bytes) -> tuple[Withdrawn, int]:
    """The ``Withdrawn`` event of WITHDRAW tx ``tx_id`` and its block height (proven receipt)."""
    outcome = await node.receipt(tx_id)
    if outcome.state != "included" or outcome.receipt is None:
        raise SettlementError(f"tx {tx_id.hex()} is {outcome.state}, not in a block")
    event = next((e for e in outcome.receipt.events if isinstance(e, Withdrawn)), None)
    if event is None:
        why = "it failed" if not outcome.receipt.ok else "it is not a WITHDRAW"
        raise SettlementError(f"tx {tx_id.hex()} recorded no withdrawal: {why}")
    return event, outcome.height


def first_output_from(l1: L1, height: int) -> Output | None:
    """The first posted output at L2 height ``height`` or above (outputs are in height order)."""
    low, high = 0, l1.output_count()
    while low < high:
        mid = (low + high) // 2
        if l1.output(mid).l2_height < height:
            low = mid + 1
        else:
            high = mid
    return l1.output(low) if low < l1.output_count() else None


async def prove_withdrawal(
    node: Client, l1: L1, payer: LocalAccount, tx_id: bytes, wait: float = 0.0
) -> dict[str, Any]:
    """Prove WITHDRAW ``tx_id`` on L1 against the first output that holds it, once it finalizes,
    and have the portal pay; ``wait`` seconds for that output to be posted and to finalize."""
    event, height = await withdrawal_of(node, tx_id)
    if await trio.to_thread.run_sync(l1.withdrawal_paid, event.index):
        raise SettlementError(f"withdrawal {event.index} is paid already")
    deadline = time.monotonic() + wait
    while True:
        output = await trio.to_thread.run_sync(first_output_from, l1, height)
        finalized = output is not None and await trio.to_thread.run_sync(l1.is_finalized, output.index)
        if finalized:
            break
        if time.monotonic() >= deadline:
            if output is None:
                raise SettlementError(
                    f"withdrawal {event.index} (L2 block {height}) is in no posted output yet: the sequencer "
                    "posts one every few blocks; try again soon, or give --wait SECONDS"
                )
            period = await trio.to_thread.run_sync(
                lambda: int(l1.contract("OutputOracle").functions.CHALLENGE_PERIOD().call())
            )
            raise SettlementError(
                f"withdrawal {event.index} is in output {output.index} (L2 block {output.l2_height}), which "
                f"finalizes at L1 time {output.posted_at + period}; try again then, or give --wait SECONDS"
            )
        await trio.sleep(0.5)
    assert output is not None
    proof = await node.withdrawal(event.index, output.l2_height)
    if proof.output_root != output.root:
        raise SettlementError(
            f"the node's block {output.l2_height} gives output root {proof.output_root.hex()}, and L1 holds "
            f"{output.root.hex()}: this node's chain is not the one that settled (ask another node)"
        )
    header = proof.header
    receipt = await trio.to_thread.run_sync(
        l1.prove_withdrawal,
        payer,
        output.index,
        (header.state_root, proof.withdrawals_root, header.hash()),
        event.index,
        event.l1_address,
        event.amount,
        event.sender,
        proof.proof,
    )
    return {
        "withdrawal": event.index,
        "paid_to": "0x" + event.l1_address.hex(),
        "units": event.amount,
        "eth": event.amount * WEI_PER_UNIT / 10**18,
        "output": output.index,
        "output_l2_height": output.l2_height,
        "l1_tx": receipt["transactionHash"].hex(),
        "gas": int(receipt["gasUsed"]),
    }


async def status(node: Client | None, l1: L1) -> dict[str, Any]:
    """Both sides at a glance: the contracts, the outputs, the deposits and the portal's balance
    against what the L2 says it holds (without ``node``: the L1 side only)."""
    config = l1.config
    if config is None:
        raise SettlementError("this chain settles on no L1")

    def read_l1() -> dict[str, Any]:
        oracle = l1.contract("OutputOracle").functions
        count = l1.output_count()
        last = l1.output(count - 1) if count else None
        finalized = _last_finalized(l1, count)
        totals = l1.portal_totals()
        return {
            "l1": {"url": l1.url, "chain_id": l1.chain_id(), "head": l1.head()},
            "contracts": {
                "portal": "0x" + config.portal.hex(),
                "oracle": "0x" + config.oracle.hex(),
                "sequencer": oracle.SEQUENCER().call(),
                "bond_eth": int(oracle.bond().call()) / 10**18,
                "challenge_period_s": int(oracle.CHALLENGE_PERIOD().call()),
                "deposit_window_blocks": config.deposit_window,
            },
            "outputs": {
                "posted": count,
                "last_l2_height": last.l2_height if last else None,
                "last_age_s": l1.block_timestamp(l1.head()) - last.posted_at if last else None,
                "finalized": finalized + 1,
                "last_finalized_l2_height": l1.output(finalized).l2_height if finalized >= 0 else None,
            },
            "challenges": _challenges(l1, count),
            "sequencer_halted": bool(oracle.halted().call()),
            "portal": totals,
        }

    out = await trio.to_thread.run_sync(read_l1)
    totals = out["portal"]
    out["portal"] = {
        "balance_eth": totals["balance_wei"] / 10**18,
        "deposits": totals["deposit_count"],
        "deposited_units": totals["deposited"],
        "paid_units": totals["paid"],
    }
    if node is not None:
        record, height = await settlement_record(node)
        held = record.deposited - record.withdrawn  # the L2 supply equation (checked by replay)
        pending = record.withdrawn - totals["paid"]
        in_flight = totals["deposited"] - record.deposited
        backed = (held + pending + in_flight) * WEI_PER_UNIT
        out["l2"] = {
            "height": height,
            "deposits_credited": record.deposits,
            "deposits_pending": totals["deposit_count"] - record.deposits,
            "held_units": held,
            "withdrawals": record.withdrawals,
            "withdrawals_pending_units": pending,
            "portal_equals_l2": backed == totals["balance_wei"],
        }
    return out


RECENT_OUTPUTS = 256  # outputs whose challenges `status` lists


def _challenges(l1: L1, count: int) -> dict[str, Any]:
    """The challenges of the last ``RECENT_OUTPUTS`` outputs, by state, and the open ones' outputs."""
    names = {1: "open", 2: "upheld", 3: "rejected"}
    tally = {"open": 0, "upheld": 0, "rejected": 0}
    open_outputs = []
    for index in range(max(0, count - RECENT_OUTPUTS), count):
        status = l1.challenge_of(index)[3]
        if status in names:
            tally[names[status]] += 1
            if status == 1:
                open_outputs.append(index)
    return {**tally, "open_outputs": open_outputs}


def _last_finalized(l1: L1, count: int) -> int:
    """The index of the last finalized output, -1 if none (finality is monotonic in the index)."""
    low, high = -1, count - 1
    while low < high:
        mid = (low + high + 1) // 2
        if l1.is_finalized(mid):
            low = mid
        else:
            high = mid - 1
    return low
