"""The demo's settlement story: value in from L1, a reward out to L1, and both sides compared.

Before the task, the user and every client deposit ETH in the portal on the devnet L1 (anvil,
started by the demo); the L2 credits each deposit and the clients stake from it. After the task,
the honest client paid the most withdraws its reward: a WITHDRAW on L2, then, once an output
holding it has finalized on L1, a proof the portal checks and pays. At the end a replay of the
verifier's chain against L1 compares every posted output with the replayed roots and the portal's
balance with what the L2 holds (``verifier.replay.engine``), which the ``settlement:`` line says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_account.signers.local import LocalAccount

from mpsnode.client import settlement
from mpsnode.client.wallet import Wallet
from mpsnode.consensus.settlement import WEI_PER_UNIT
from mpsnode.consensus.tx import Transfer, Withdraw
from mpsnode.demo.processes import DemoFailed
from mpsnode.demo.report import ClientInfo
from mpsnode.node.connection import Client
from mpsnode.node.files import load_l1_key
from mpsnode.node.l1.client import L1, L1Revert, account
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
    challenge: dict[str, Any] | None = None  # --dishonest-sequencer: what became of the forged output
    challenge_ok: bool = False

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


FORGERY_WAIT = 120.0  # seconds for the forged output to be posted, and then for its challenge to be upheld


async def expose_forgery(node: Client, demo: DemoL1, net: Any, out: Any) -> None:
    """EVALUATION ONLY (--dishonest-sequencer): make a block, so that the sequencer posts its forged
    output; wait for the committee to uphold the challenge; try the forged withdrawal on L1."""
    genesis = net.genesis
    material_path = net.home / "evaluation" / "forged-output.json"
    wallet = Wallet(net.keys["user"], genesis.chain_id, genesis.params)
    await wallet.recover(node)
    stx = await wallet.send(node, Transfer(net.keys["user"].address, 1))  # a new head to post
    await node.wait_receipt(stx.tx_id)
    with trio.fail_after(FORGERY_WAIT):
        while not material_path.exists():
            await trio.sleep(0.2)
    forged = json.loads(material_path.read_text())
    forged_root = bytes.fromhex(forged["output_root"])
    l1 = demo.l1

    def find() -> int | None:
        for index in range(l1.output_count() - 1, -1, -1):
            o = l1.output(index)
            if o.l2_height == forged["l2_height"]:
                return index
        return None

    with trio.fail_after(FORGERY_WAIT):
        while (index := await trio.to_thread.run_sync(find)) is None:
            await trio.sleep(0.3)
    out(
        f"  EVALUATION ONLY: the sequencer posted output {index} (L2 block {forged['l2_height']}) with a forged "
        f"root {forged_root.hex()[:16]}..: its state records a withdrawal of {forged['withdrawal']['amount']} "
        "units (1 ETH) to the sequencer's own L1 account, which it never had"
    )
    with trio.fail_after(FORGERY_WAIT):
        while (status := await trio.to_thread.run_sync(l1.challenge_of, index))[3] != 2:
            await trio.sleep(0.3)
    challenger = status[0]
    oracle = l1.contract("OutputOracle")
    attested = int(oracle.functions.votes(index, l1.output(index).root).call())
    quorum = int(oracle.functions.QUORUM().call())
    resolved = [
        e
        for e in oracle.events.ChallengeResolved().get_logs(from_block=0)
        if int(e["args"]["index"]) == index
    ]
    bond_paid = int(resolved[0]["args"]["amount"]) if resolved else 0
    thief = account(load_l1_key(net.home / "keys" / "l1" / "sequencer.json"))
    w = forged["withdrawal"]
    refused = ""
    try:
        await trio.to_thread.run_sync(
            lambda: l1.prove_withdrawal(
                thief,
                index,
                (
                    bytes.fromhex(forged["state_root"]),
                    bytes.fromhex(forged["withdrawals_root"]),
                    bytes.fromhex(forged["block_hash"]),
                ),
                w["index"],
                bytes.fromhex(w["l1_address"][2:]),
                w["amount"],
                bytes.fromhex(w["sender"]),
                tuple(bytes.fromhex(p) for p in forged["proof"]),
            )
        )
    except L1Revert as exc:
        refused = exc.reason
    replaced = l1.output(index).root != forged_root
    halted = bool(oracle.functions.halted().call())
    demo.challenge = {
        "output": index,
        "challenger": challenger,
        "attestations": attested,
        "quorum": quorum,
        "root_replaced": replaced,
        "forged_withdrawal_refused": refused,
        "bond_paid_wei": bond_paid,
        "sequencer_halted": halted,
    }
    demo.challenge_ok = bool(replaced and refused and bond_paid > 0 and halted and resolved)
    out(
        f"  the committee upheld the challenge ({attested} of the quorum {quorum}); the forged withdrawal "
        f"on L1: {refused or 'PAID (it should not have been)'}"
    )


def challenge_line(demo: DemoL1) -> str:
    """The demo's ``challenge:`` line (--dishonest-sequencer)."""
    c = demo.challenge
    if c is None:
        return "challenge: NOT RESOLVED: the forged output was not posted or not challenged in time"
    verdict = "upheld" if c["root_replaced"] else "NOT upheld"
    return (
        f"challenge: the forged output {c['output']} was challenged by {c['challenger']} and {verdict} by "
        f"{c['attestations']} of {c['quorum']} committee verifiers: it never finalized with the forged root "
        f"(replaced by the true one), the forged withdrawal was refused "
        f"({c['forged_withdrawal_refused'] or 'NOT refused'}), "
        f"the sequencer's bond of {eth(c['bond_paid_wei'])} ETH went to the challenger, and the sequencer is "
        f"{'halted' if c['sequencer_halted'] else 'NOT halted'}: {'OK' if demo.challenge_ok else 'FAILED'}"
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
