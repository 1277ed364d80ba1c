"""The demo's settlement story: value in from L1, a reward out to L1, and both sides compared.

Before the task, the user and every client deposit ETH in the portal on the devnet L1 (anvil,
started by the demo); the L2 credits each deposit and the clients stake from it. After the task,
the honest client paid the most withdraws its reward: a WITHDRAW on L2, then, once an output
holding it has finalized on L1, a proof the portal checks and pays. At the end a replay of the
verifier's chain against L1 compares every posted output with the replayed roots and the portal's
balance with what the L2 holds (``verifier.replay.engine``), which the ``settlement:`` line says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_account.signers.local import LocalAccount

from mpsnode.client import settlement
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.settlement import WEI_PER_UNIT
from mpsnode.consensus.tx import Withdraw
from mpsnode.demo.processes import DemoFailed
from mpsnode.demo.report import ClientInfo
from mpsnode.node.connection import Client
from mpsnode.node.files import load_l1_key
from mpsnode.node.l1.client import L1, account
from mpsnode.node.l1.follower import L1Follower
from verifier.replay.engine import HomeSource, replay

USER_MARGIN = 100_000_000  # units (gwei): 0.1 ETH on top of the task's escrow, for fees
CLIENT_DEPOSIT = 20_000_000  # 0.02 ETH each: the stake (0.01 ETH) and the fees
PROVE_WAIT = 120.0  # seconds for the withdrawal's output to be posted and to finalize


def eth(wei: int) -> str:
    return f"{wei / 10**18:.9f}"


@dataclass
class DemoL1:
    url: str
    l1: L1
    accounts: dict[str, LocalAccount]  # role -> its L1 account (keys/l1/ROLE.json)
    before: dict[str, int] = field(default_factory=dict)  # wei on L1 before the run
    after: dict[str, int] = field(default_factory=dict)
    deposited: dict[str, int] = field(default_factory=dict)  # units
    withdrawal: dict[str, Any] | None = None
    settlement: dict[str, Any] | None = None
    outputs: tuple[int, int] = (0, 0)  # posted, finalized

    @classmethod
    def open(cls, home: Path, url: str, names: list[str], l1: L1) -> DemoL1:
        accounts = {n: account(load_l1_key(home / "keys" / "l1" / f"{n}.json")) for n in names}
        return cls(url, l1, accounts)

    def balances(self) -> dict[str, int]:
        return {n: self.l1.balance(a.address) for n, a in self.accounts.items()}


async def fund(node: Client, demo: DemoL1, l2_addresses: dict[str, bytes], escrow: int, out: Any) -> None:
    """Every role deposits on L1 at once (the user the task's ``escrow`` and a margin for fees);
    wait until the L2 has credited them all."""
    user_deposit = escrow + USER_MARGIN
    demo.before = await trio.to_thread.run_sync(demo.balances)
    made: dict[str, settlement.DepositMade] = {}

    async def one(name: str) -> None:
        units = user_deposit if name == "user" else CLIENT_DEPOSIT
        made[name] = await settlement.deposit(demo.l1, demo.accounts[name], l2_addresses[name], units)
        demo.deposited[name] = units

    async with trio.open_nursery() as nursery:
        for name in l2_addresses:
            nursery.start_soon(one, name)
    last = max(m.index for m in made.values())
    height = await settlement.wait_credited(node, last, timeout=120)
    total = sum(demo.deposited.values())
    out(
        f"  L1 deposits: the user {user_deposit} units and each client {CLIENT_DEPOSIT} (1 unit = 1 gwei; "
        f"{eth(total * WEI_PER_UNIT)} ETH in all, {len(made)} deposits in L1 blocks "
        f"{min(m.l1_block for m in made.values())}..{max(m.l1_block for m in made.values())}); "
        f"all credited on L2 by block {height}"
    )


async def withdraw_reward(
    node: Client, demo: DemoL1, genesis: Any, keys: dict[str, Any], infos: list[ClientInfo], out: Any
) -> None:
    """The honest client paid the most withdraws its reward to its own L1 account, and proves it."""
    paid = [c for c in infos if not c.attack and c.reward > 0]
    if not paid:
        raise DemoFailed("no honest client was paid: nothing to withdraw")
    who = max(paid, key=lambda c: (c.reward, -c.index))
    payee = demo.accounts[who.name]
    wallet = Wallet(keys[who.name], genesis.chain_id, genesis.params)
    await wallet.recover(node)
    stx = await wallet.send(node, Withdraw(bytes.fromhex(payee.address[2:]), who.reward))
    outcome = await node.wait_receipt(stx.tx_id)
    if not outcome.ok:
        raise DemoFailed(f"{who.name}'s WITHDRAW failed: {outcome.to_json()}")
    out(
        f"  {who.name} withdraws its reward of {who.reward} units to L1 {payee.address} (L2 block {outcome.height}); "
        "waiting for an output that holds it to be posted and to finalize"
    )
    result = await settlement.prove_withdrawal(node, demo.l1, payee, stx.tx_id, wait=PROVE_WAIT)
    demo.withdrawal = {"client": who.name, **result}
    out(
        f"  proven on L1 against output {result['output']} (L2 block {result['output_l2_height']}): the portal paid "
        f"{result['units']} units to {who.name}'s L1 account (proof gas {result['gas']})"
    )


def final_check(verifier_home: Path, demo: DemoL1, genesis: Any) -> None:
    """Replay the verifier's chain against L1: outputs against replayed roots, portal against L2."""
    assert genesis.l1 is not None
    source = HomeSource(verifier_home)
    try:
        outcome = replay(source, progress=False, l1=L1Follower(demo.url, genesis.l1))
    finally:
        source.close()
    if not outcome.ok:
        raise DemoFailed(f"the replay of the verifier's chain failed: {(outcome.report or {}).get('reason')}")
    demo.settlement = outcome.settlement
    count = demo.l1.output_count()
    finalized = sum(1 for i in range(count) if demo.l1.is_finalized(i))
    demo.outputs = (count, finalized)
    demo.after = demo.balances()


def print_settlement(demo: DemoL1, out: Any) -> bool:
    """The L1 table and the ``settlement:`` line; whether both sides agree."""
    out("")
    out(f"  {'L1 account':<10} {'address':<12} {'ETH before':>16} {'ETH after':>16} {'change':>14}")
    for name, address in ((n, a.address) for n, a in demo.accounts.items()):
        before, after = demo.before.get(name, 0), demo.after.get(name, 0)
        out(f"  {name:<10} {address[:10]:<12} {eth(before):>16} {eth(after):>16} {eth(after - before):>14}")
    out("  (changes are deposits out, the withdrawal in, and gas)")
    posted, finalized = demo.outputs
    match = bool(demo.settlement and demo.settlement["outputs_match"])
    verdict = "every one equal to the replayed root" if match else "SOME DIFFER from the replayed roots"
    out(f"  outputs             {posted} posted to the L1 oracle, {finalized} finalized, {verdict}")
    s = demo.settlement or {}
    ok = bool(s.get("ok"))
    held, pending, flight = (
        s.get("l2_held_units", 0),
        s.get("withdrawals_pending_units", 0),
        s.get("deposits_in_flight_units", 0),
    )
    supply = held + pending + flight
    out(
        f"settlement: portal holds {eth(s.get('portal_balance_wei', 0))} ETH; L2 supply {supply} units "
        f"= {eth(supply * WEI_PER_UNIT)} ETH (held {held}, pending withdrawals {pending}, deposits "
        f"in flight {flight}): {'EQUAL' if s.get('portal_equals_l2') else 'NOT EQUAL'}"
        + ("" if ok else " (a settlement check failed)")
    )
    return ok
