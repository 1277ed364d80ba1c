"""Settlement mode in the STF: deposits as the L1 holds them, forced inclusion by the L1 origin,
withdrawals into the keccak tree, and the supply equation with both (the L1 here is data; the
end-to-end tests run a real anvil)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mpsnode.consensus import settlement as S
from mpsnode.consensus.block import compute_tx_root, sign_header
from mpsnode.consensus.errors import (
    BadL1Origin,
    BlockHasInvalidTx,
    DepositOverdue,
    GenesisError,
    InvalidField,
    L1OriginUnknown,
    SystemTxRefused,
)
from mpsnode.consensus.events import Deposited, Withdrawn
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.invariants import compute_supply
from mpsnode.consensus.settlement import Deposit, L1Config, L1Facts, facts_for
from mpsnode.consensus.state import ACCOUNT, Account, State, account_key
from mpsnode.consensus.stf.transition import build_block
from mpsnode.consensus.tx import DepositBody, Stake, Transfer, Withdraw, deposit_tx
from mpsnode.consensus.validation import validate_transaction

from chainkit import Kit

L1 = L1Config(chain_id=31337, portal=b"\x01" * 20, oracle=b"\x02" * 20, start_block=10, deposit_window=4)
TO = b"\xaa" * 20


def kits() -> tuple[Kit, Kit]:
    """A builder (the sequencer's chain) and a follower (a verifier's) on one settlement genesis."""
    return Kit(clients=3, l1=L1), Kit(clients=3, l1=L1)


def forge(builder: Kit, facts: L1Facts, txs=()):
    """A block the builder's sequencer signs with ``facts`` of its own choosing (a lie, perhaps)."""
    builder.time_ms += 1000
    chain = builder.chain
    block, _, rejected = build_block(
        chain.state(), chain.tree(), chain.head_header, chain.config, list(txs), builder.time_ms,
        builder.keys["sequencer"], l1=facts,
    )  # fmt: skip
    assert not rejected
    return block


def test_a_settlement_genesis_allocates_nothing_and_names_its_l1() -> None:
    kit = Kit(clients=2, l1=L1)
    assert kit.genesis.allocations == () and kit.genesis.supply == 0
    assert kit.chain.head_header.l1_origin == L1.start_block
    doc = kit.genesis.to_json()
    assert doc["l1"]["portal"] == "0x" + "01" * 20
    assert Genesis.from_json(doc) == kit.genesis
    funded = Kit(clients=2).genesis.to_json()
    with pytest.raises(GenesisError, match="allocates nothing"):
        Genesis.from_json({**funded, "l1": doc["l1"]})
    with pytest.raises(GenesisError, match="deposit_window"):
        Genesis.from_json({**doc, "l1": {**doc["l1"], "deposit_window": 0}})
    with pytest.raises(GenesisError, match=r"l1\.portal"):
        Genesis.from_json({**doc, "l1": {**doc["l1"], "portal": "0x12"}})


def test_deposits_are_credited_in_order_and_the_supply_is_what_came_in() -> None:
    kit = Kit(clients=2, l1=L1)
    user, client = kit.user, kit.clients[0]
    kit.l1_deposit(user.address, 5000)
    kit.l1_deposit(client.address, 3000)
    block, result = kit.block()
    assert [stx.tx.body for stx in block.txs] == [
        DepositBody(0, 11, user.address, 5000),
        DepositBody(1, 12, client.address, 3000),
    ]
    assert block.header.l1_origin == 12
    assert [e for e in result.events if isinstance(e, Deposited)] == [
        Deposited(0, user.address, 5000, 11),
        Deposited(1, client.address, 3000, 12),
    ]
    assert kit.account(user).balance == 5000 and kit.account(client).balance == 3000
    record = kit.chain.state().get_settlement()
    assert (record.deposits, record.deposited) == (2, 8000)
    # credited once: the next block takes none again, and the money moves as any other
    block, _ = kit.block([kit.tx(client, Stake(1000)), kit.tx(user, Transfer(client.address, 10))])
    assert not any(stx.tx.kind == 8 for stx in block.txs)
    breakdown, supply = compute_supply(kit.store.iter_state())
    assert supply == 8000 == breakdown.total


def test_a_verifier_rejects_a_deposit_that_is_not_the_l1s() -> None:
    builder, follower = kits()
    for kit in (builder, follower):
        kit.l1_deposit(kit.user.address, 5000)
    real = builder.l1_deposits[0]
    lies = {
        "another amount": replace(real, amount=50_000),
        "another recipient": replace(real, recipient=builder.clients[0].address),
        "another L1 block": replace(real, l1_block=real.l1_block + 1),
    }
    for why, lie in lies.items():
        block = forge(builder, L1Facts(builder.l1_head + 1, (lie,)))
        with pytest.raises(BlockHasInvalidTx) as info:
            follower.chain.apply(block, l1=follower.facts(block.header.l1_origin))
        assert info.value.check == "deposits", why
        assert "differs from L1" in info.value.reason
    # twice: a second copy under the next index, which L1 does not have
    twice = forge(builder, L1Facts(builder.l1_head, (real, replace(real, index=1))))
    with pytest.raises(BlockHasInvalidTx, match="not on L1") as info:
        follower.chain.apply(twice, l1=follower.facts(twice.header.l1_origin))
    assert info.value.check == "deposits"
    # a deposit from after the block's own origin
    early = forge(builder, L1Facts(real.l1_block - 1, (real,)))  # names an origin before the deposit
    with pytest.raises(BlockHasInvalidTx, match="not on L1 at or before"):
        follower.chain.apply(early, l1=follower.facts(early.header.l1_origin))
    assert follower.account(follower.user).balance == 0
    # the honest block passes
    honest = forge(builder, builder.facts())
    follower.chain.apply(honest, l1=follower.facts(honest.header.l1_origin))
    assert follower.account(follower.user).balance == 5000


def test_deposits_out_of_order_are_refused() -> None:
    builder, follower = kits()
    for kit in (builder, follower):
        kit.l1_deposit(kit.user.address, 10)
        kit.l1_deposit(kit.clients[0].address, 20)
    block = forge(builder, builder.facts())
    swapped = (block.txs[1], block.txs[0])
    header = replace(block.header, tx_root=compute_tx_root(swapped))
    bad = sign_header(header, builder.keys["sequencer"], swapped)
    with pytest.raises(BlockHasInvalidTx, match="out of order: the next deposit to credit is 0") as info:
        follower.chain.apply(bad, l1=follower.facts(bad.header.l1_origin))
    assert info.value.check == "deposits"


def test_a_deposit_may_wait_within_the_window_and_no_longer() -> None:
    builder, follower = kits()
    for kit in (builder, follower):
        kit.l1_deposit(kit.user.address, 700)
    made = builder.l1_deposits[0].l1_block
    # a sequencer that ignores the deposit: fine while its origin is within the window ...
    for origin in range(made, made + L1.deposit_window):
        block = forge(builder, L1Facts(origin, ()))
        follower.chain.apply(block, l1=follower.facts(origin))
        builder.chain.apply(block, l1=builder.facts(origin))  # keep the builder on the same head
    # ... and the block whose origin reaches made + window without it is invalid
    late = forge(builder, L1Facts(made + L1.deposit_window, ()))
    with pytest.raises(DepositOverdue, match="deposit 0") as info:
        follower.chain.apply(late, l1=follower.facts(made + L1.deposit_window))
    assert info.value.check == "deposits"
    assert follower.chain.head.height == L1.deposit_window


def test_the_l1_origin_is_required_monotonic_and_known() -> None:
    builder, follower = kits()
    builder.l1_head = follower.l1_head = 20
    first = forge(builder, builder.facts())
    follower.chain.apply(first, l1=follower.facts(first.header.l1_origin))
    builder.chain.apply(first, l1=builder.facts(20))
    back = forge(builder, L1Facts(25, ()))
    back = sign_header(replace(back.header, l1_origin=19), builder.keys["sequencer"], back.txs)
    with pytest.raises(BadL1Origin, match="before the parent's 20") as info:
        follower.chain.apply(back, l1=follower.facts(19))
    assert info.value.check == "l1_origin"
    ahead = forge(builder, L1Facts(30, ()))
    with pytest.raises(L1OriginUnknown, match="L1 block 30"):
        follower.chain.apply(ahead, l1=L1Facts(30, (), origin_known=False))
    missing = sign_header(replace(ahead.header, l1_origin=None), builder.keys["sequencer"], ahead.txs)
    with pytest.raises(BadL1Origin, match="names no L1 origin"):
        follower.chain.apply(missing, l1=follower.facts(30))
    plain = Kit(clients=1)
    block, _ = plain.block()
    assert block.header.l1_origin is None
    stray = sign_header(replace(block.header, l1_origin=3), plain.keys["sequencer"], block.txs)
    other = Kit(clients=1)
    with pytest.raises(BadL1Origin, match="settles on no L1"):
        other.chain.apply(stray)


def test_withdrawals_enter_the_tree_and_leave_the_supply_together() -> None:
    kit = Kit(clients=2, l1=L1)
    user, client = kit.user, kit.clients[0]
    kit.l1_deposit(user.address, 10_000)
    kit.l1_deposit(client.address, 500)
    kit.block()
    fee = kit.genesis.params.tx_base_fee
    _, result = kit.block([kit.tx(user, Withdraw(TO, 1234)), kit.tx(client, Withdraw(b"\xbb" * 20, 99))])
    assert [e for e in result.events if isinstance(e, Withdrawn)] == [
        Withdrawn(0, user.address, TO, 1234),
        Withdrawn(1, client.address, b"\xbb" * 20, 99),
    ]
    state = kit.chain.state()
    assert kit.account(user).balance == 10_000 - 1234 - fee
    records = [state.get_withdrawal(i) for i in range(2)]
    assert records[0] == S.WithdrawalRecord(user.address, bytes(12) + TO, 1234, kit.chain.head.height)
    leaves = [r.leaf(i) for i, r in enumerate(records)]
    record = state.get_settlement()
    assert (record.withdrawals, record.withdrawn) == (2, 1333)
    assert record.withdrawals_root() == S.tree_root_reference(leaves)
    assert S.verify_branch(leaves[1], 1, S.tree_proof(leaves, 1), record.withdrawals_root())
    breakdown, supply = compute_supply(kit.store.iter_state())
    assert breakdown.withdrawn == 1333 and breakdown.held == 10_500 - 1333 and supply == 10_500
    # more than the balance: a failed receipt, nothing recorded
    _, result = kit.block([kit.tx(client, Withdraw(TO, 10_000))])
    assert result.receipts[0].status == 301
    assert kit.chain.state().get_settlement().withdrawals == 2


def test_the_supply_tracker_equals_a_full_count_after_every_block() -> None:
    from mpsnode.consensus.invariants import SupplyTracker

    kit = Kit(clients=2, l1=L1)
    tracker = SupplyTracker(kit.store.iter_state())
    user, client = kit.user, kit.clients[0]
    kit.l1_deposit(user.address, 9000)
    kit.l1_deposit(client.address, 4000)
    plans = [
        [],
        [kit.tx(client, Stake(1000))],
        [kit.tx(user, Withdraw(TO, 500)), kit.tx(user, Transfer(client.address, 7))],
    ]
    fed = SupplyTracker(kit.store.iter_state())  # given the written accounts decoded, as a replay does
    for txs in plans:
        before = dict(kit.store.iter_state())
        _, result = kit.block(txs)
        old = {k: before.get(k) for k in result.state_writes}
        tracker.apply(old, result.state_writes)
        accounts = {k: Account.decode(v) for k, v in result.state_writes.items() if k[:1] == ACCOUNT and v}
        assert accounts  # every block pays its fees
        fed.apply(old, result.state_writes, accounts)
        assert tracker.breakdown() == fed.breakdown() == compute_supply(kit.store.iter_state())


def test_a_state_hands_out_the_accounts_it_wrote_decoded_and_each_encodes_to_its_write() -> None:
    kit = Kit(clients=2)
    user, client = kit.user, kit.clients[0]
    state = State(kit.chain.state().get)
    sender = state.get_account(user.address)
    state.set_account(user.address, replace(sender, balance=sender.balance - 5))
    state.set_account(client.address, replace(state.get_account(client.address), balance=0, nonce=0))
    state.set_account(b"\x07" * 32, replace(state.get_account(b"\x07" * 32), balance=9))
    state.set(b"z-not-an-account", b"bytes")
    written = state.written_accounts()
    writes = state.writes()
    assert {k: a.encode() for k, a in written.items()} == {
        k: v for k, v in writes.items() if k[:1] == ACCOUNT and v is not None
    }
    assert (
        len(written) == 2 and writes[account_key(client.address)] is None
    )  # emptied: deleted, not handed out


def test_a_state_given_the_last_blocks_decoded_accounts_reads_them_without_decoding() -> None:
    kit = Kit(clients=2)
    user = kit.user
    key = account_key(user.address)
    items = dict(kit.store.iter_state())
    decoded: dict[bytes, tuple[bytes, Account]] = {}
    first = State(items.get, decoded)
    before = first.get_account(user.address)
    first.set_account(user.address, before.with_balance(before.balance - 5))
    writes = first.writes()
    assert decoded[key] == (writes[key], first.written_accounts()[key])
    cached = decoded[key][1]
    items.update(writes)
    assert State(items.get, decoded).get_account(user.address) is cached
    items[key] = bytes(bytearray(writes[key]))  # equal bytes in another object (a store's read): the same
    assert State(items.get, decoded).get_account(user.address) is cached
    items[key] = cached.with_balance(7).encode()  # other bytes: decoded anew
    again = State(items.get, decoded).get_account(user.address)
    assert again.balance == 7 and again.nonce == cached.nonce and decoded[key] == (items[key], again)


def test_withdraw_on_a_chain_without_l1_fails_and_deposits_are_never_user_txs() -> None:
    kit = Kit(clients=1)
    _, result = kit.block([kit.tx(kit.user, Withdraw(TO, 5))])
    assert result.receipts[0].status == 320  # NoSettlement
    stx = deposit_tx(kit.genesis.chain_id, DepositBody(0, 1, kit.user.address, 5))
    validate_transaction(stx, kit.genesis.chain_id, kit.genesis.params)  # well-formed as a system tx
    _, _, rejected = kit.chain.build([stx], kit.time_ms + 1000, kit.keys["sequencer"])
    assert [type(e) for _, e in rejected] == [SystemTxRefused]
    signed = kit.tx(kit.user, DepositBody(0, 1, kit.user.address, 5))
    with pytest.raises(InvalidField, match="system tx"):
        validate_transaction(signed, kit.genesis.chain_id, kit.genesis.params)


def test_facts_select_the_uncredited_deposits_up_to_the_origin() -> None:
    deposits = [Deposit(i, 10 + 2 * i, b"\x01" * 32, 1) for i in range(5)]
    facts = facts_for(14, 1, deposits)
    assert [d.index for d in facts.deposits] == [1, 2]
    assert facts.overdue(1, 4) is None  # deposit 1 was made at 12: due by 16
    assert facts.overdue(1, 2) == deposits[1]  # due by 14: the origin
    assert facts.overdue(2, 2) is None
