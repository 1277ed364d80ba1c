"""The state transition: every tx kind's effects and failures, end-of-block steps, block checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mpsnode.consensus import errors
from mpsnode.consensus.block import Header, sign_header
from mpsnode.consensus.errors import (
    BadBlockSignature,
    BadTimestamp,
    BlockHasInvalidTx,
    FeeTooLow,
    FeeUnpayable,
    InvalidField,
    NonceMismatch,
    RootMismatch,
    WrongChain,
    WrongHeight,
    WrongParent,
)
from mpsnode.consensus.events import (
    RevealOpened,
    RoundClosed,
    RoundOpened,
    TaskExpired,
    TaskStarted,
    UnbondingReleased,
    Unjailed,
)
from mpsnode.consensus.model import param_count
from mpsnode.consensus.state import RoundPhase, TaskStatus
from mpsnode.consensus.stf.task import EXPIRED_MAX_ROUNDS, EXPIRED_NOT_ENOUGH_CLIENTS
from mpsnode.consensus.tx import JoinTask, RevealUpdate, Stake, Transfer, Tx, Unstake, commit_reveal

from chainkit import Kit, random_delta, small_task


@pytest.fixture
def kit() -> Kit:
    return Kit()


def status(result, i: int = 0) -> int:
    return result.receipts[i].status


def test_transfer_moves_balance_and_pays_fee(kit: Kit) -> None:
    a, b = kit.clients[0], kit.clients[1]
    before_a, before_b = kit.account(a).balance, kit.account(b).balance
    _, res = kit.block([kit.tx(a, Transfer(b.address, 500), fee=3)])
    assert status(res) == 0
    assert kit.account(a).balance == before_a - 503
    assert kit.account(b).balance == before_b + 500
    assert kit.account(a).nonce == 1
    assert kit.account(kit.genesis.fee_recipient).balance == 3


def test_failed_tx_changes_only_fee_and_nonce(kit: Kit) -> None:
    a = kit.clients[0]
    before = kit.account(a)
    _, res = kit.block([kit.tx(a, Transfer(kit.clients[1].address, before.balance + 1))])
    assert status(res) == errors.InsufficientBalance.code
    after = kit.account(a)
    assert after == replace(before, balance=before.balance - 1, nonce=1)
    assert res.receipts[0].fee_paid == 1 and res.receipts[0].events == ()


def test_stake_unstake_release(kit: Kit) -> None:
    a = kit.clients[0]
    kit.block([kit.tx(a, Stake(5000))])
    assert kit.account(a).bonded == 5000
    _, res = kit.block([kit.tx(a, Unstake(2000))])
    release = res.receipts[0].events[0].release_height
    assert release == kit.chain.head.height + kit.genesis.params.unbonding_blocks
    acct = kit.account(a)
    assert acct.bonded == 3000 and acct.unbonding_total == 2000
    _, res = kit.block([kit.tx(a, Unstake(4000))])
    assert status(res) == errors.InsufficientBonded.code
    balance = kit.account(a).balance
    while kit.chain.head.height < release - 1:
        kit.block()
    assert kit.account(a).unbonding_total == 2000
    _, res = kit.block()
    assert UnbondingReleased(a.address, 2000) in res.receipts[-1].events
    assert kit.account(a).balance == balance + 2000 and kit.account(a).unbonding == ()


def test_invalid_txs_are_never_included(kit: Kit) -> None:
    a = kit.clients[0]
    cases = [
        (Tx("other-chain", a.address, 0, 1, Stake(5)).sign(a), WrongChain),
        (kit.tx(a, Stake(5), nonce=3), NonceMismatch),
        (kit.tx(a, Stake(5), fee=0, nonce=0), FeeTooLow),
        (kit.tx(a, Stake(5), fee=10**12, nonce=0), FeeUnpayable),
        (kit.tx(a, Stake(0), nonce=0), InvalidField),
    ]
    for stx, err in cases:
        block, _res, rejected = kit.chain.build([stx], kit.time_ms + 1, kit.keys["sequencer"])
        kit.time_ms += 1
        assert block.txs == () and isinstance(rejected[0][1], err)
    assert kit.account(a).nonce == 0


def _task_flow(kit: Kit, **task_kw: int) -> int:
    user = kit.user
    _, res = kit.block([kit.tx(user, small_task(**task_kw))])
    assert status(res) == 0, res.receipts[0]
    task_id = res.receipts[0].events[0].task_id
    kit.block([kit.tx(c, Stake(1000)) for c in kit.clients])
    return task_id


def test_create_task_escrow_and_base_fee(kit: Kit) -> None:
    before = kit.account(kit.user).balance
    task_id = _task_flow(kit, max_rounds=3, fee_per_round=100)
    task = kit.chain.state().get_task(task_id)
    assert task.escrow == 300 and task.status == TaskStatus.JOINING
    assert kit.account(kit.user).balance == before - 1 - 100 - 300
    assert kit.account(kit.genesis.treasury).balance == 100


def test_join_rules(kit: Kit) -> None:
    task_id = _task_flow(kit, min_clients=3, max_clients=4, join_blocks=50)
    c = kit.clients
    _, res = kit.block(
        [
            kit.tx(c[0], JoinTask(task_id)),
            kit.tx(c[0], JoinTask(task_id)),
            kit.tx(kit.user, JoinTask(task_id)),
            kit.tx(c[1], JoinTask(99)),
        ]
    )
    assert [r.status for r in res.receipts[:-1]] == [
        0,
        errors.AlreadyJoined.code,
        errors.StakeBelowMinimum.code,
        errors.UnknownTask.code,
    ]
    # unstaking below min_stake while in a task is refused
    _, res = kit.block([kit.tx(c[0], Unstake(1))])
    assert status(res) == errors.StakeLocked.code
    # max_clients joined: the task starts at the end of that block, later joins fail
    _, res = kit.block([kit.tx(x, JoinTask(task_id)) for x in c[1:5]])
    assert [r.status for r in res.receipts[:-1]] == [0, 0, 0, errors.TaskFull.code]
    assert any(isinstance(e, TaskStarted) for e in res.receipts[-1].events)
    _, res = kit.block([kit.tx(c[6], JoinTask(task_id))])
    assert status(res) == errors.TaskNotJoining.code


def test_task_expires_without_enough_clients(kit: Kit) -> None:
    before = kit.account(kit.user).balance
    task_id = _task_flow(kit, min_clients=3, join_blocks=3)
    kit.block([kit.tx(kit.clients[0], JoinTask(task_id))])
    _, res = kit.block()
    events = res.receipts[-1].events
    assert TaskExpired(task_id, EXPIRED_NOT_ENOUGH_CLIENTS, 0) in events
    assert kit.chain.state().get_task(task_id).status == TaskStatus.EXPIRED
    assert kit.account(kit.user).balance == before - 1 - 100  # escrow refunded, base fee kept
    assert kit.account(kit.clients[0]).tasks == ()


def test_commit_reveal_rules_void_rounds_and_expiry(kit: Kit) -> None:
    arch = (4, 3)
    n = param_count(arch)
    task_id = _task_flow(
        kit, arch=arch, f=1, min_clients=5, max_clients=5, join_blocks=5, round_blocks=3, max_rounds=2
    )
    c = kit.clients
    _, res = kit.block([kit.tx(x, JoinTask(task_id)) for x in c[:5]])
    opened = [e for e in res.receipts[-1].events if isinstance(e, RoundOpened)]
    assert opened and opened[0].round == 1
    d0 = random_delta(n, 0)
    cid, salt = kit.genesis.chain_id, bytes(range(32))
    commit0, reveal0 = commit_reveal(cid, task_id, 1, c[0].address, d0, salt)
    commit1, reveal1 = commit_reveal(cid, task_id, 1, c[1].address, d0, salt)  # the same delta: refused
    commit2, reveal2 = commit_reveal(cid, task_id, 1, c[2].address, random_delta(n, 2), salt)
    commit3, _ = commit_reveal(cid, task_id, 2, c[3].address, random_delta(n, 3), salt)
    commit6, _ = commit_reveal(cid, task_id, 1, c[6].address, random_delta(n, 4), salt)
    _, res = kit.block(
        [
            kit.tx(c[0], commit0),
            kit.tx(c[0], commit0),
            kit.tx(c[0], reveal0),
            kit.tx(c[1], commit1),
            kit.tx(c[2], commit2),
            kit.tx(c[3], commit3),
            kit.tx(c[6], commit6),
        ]
    )
    assert [r.status for r in res.receipts[:-1]] == [
        0,
        errors.AlreadyCommitted.code,
        errors.WrongPhase.code,  # no reveal in the commit phase
        0,
        0,
        errors.WrongRound.code,
        errors.NotParticipant.code,
    ]
    task = kit.chain.state().get_task(task_id)
    assert task.committed == (c[0].address, c[1].address, c[2].address) and task.phase == RoundPhase.COMMIT
    while kit.chain.state().get_task(task_id).phase == RoundPhase.COMMIT:  # c[3], c[4] never commit
        _, res = kit.block()
    assert any(isinstance(e, RevealOpened) for e in res.receipts[-1].events)
    wrong_salt = RevealUpdate(task_id, 1, reveal2.delta, bytes(32))
    bad_size = RevealUpdate(task_id, 1, reveal2.delta[:-2], salt)
    _, res = kit.block(
        [
            kit.tx(c[3], commit3),
            kit.tx(c[0], reveal0),
            kit.tx(c[0], reveal0),
            kit.tx(c[1], reveal1),
            kit.tx(c[2], wrong_salt),
            kit.tx(c[2], bad_size),
            kit.tx(c[4], reveal0),
        ]
    )
    assert [r.status for r in res.receipts[:-1]] == [
        errors.WrongRound.code,
        0,
        errors.AlreadySubmitted.code,
        errors.DuplicateUpdate.code,
        errors.CommitmentMismatch.code,
        errors.WrongUpdateSize.code,
        errors.NotCommitted.code,
    ]
    # only 1 of 5 revealed (k < 3): the round is void at the reveal deadline
    while True:
        _, res = kit.block()
        closed = [e for e in res.receipts[-1].events if isinstance(e, RoundClosed)]
        if closed:
            break
    assert closed[0].void == 1 and closed[0].round == 1
    state = kit.chain.state()
    task = state.get_task(task_id)
    assert task.round == 2 and task.previous == (c[0].address,) and task.committed == ()
    assert state.get_update(task_id, c[0].address) == d0  # kept: the next round's public basis
    assert state.get_commitment(task_id, c[0].address) is None and state.get_direction(task_id) is None
    before = kit.account(kit.user).balance
    while True:
        _, res = kit.block()
        if any(isinstance(e, TaskExpired) for e in res.receipts[-1].events):
            break
    assert TaskExpired(task_id, EXPIRED_MAX_ROUNDS, 2) in res.receipts[-1].events
    assert kit.account(kit.user).balance == before + 200
    assert kit.account(c[0]).tasks == ()
    assert kit.chain.state().get_update(task_id, c[0].address) is None  # a finished task keeps no update
    _, res = kit.block([kit.tx(c[0], Unstake(1000))])
    assert status(res) == 0


def test_jailed_account_unjails_on_top_up(kit: Kit) -> None:
    from mpsnode.consensus.stf.env import BlockEnv
    from mpsnode.consensus.stf.transition import process_transaction

    a = kit.clients[0]
    state = kit.chain.state()
    # jailing comes from slashing (round closing); set it on a scratch state to test the STAKE rule
    state.set_account(a.address, replace(state.get_account(a.address), bonded=400, jailed=True))
    env = BlockEnv(kit.genesis.config(), 5, 0)
    r = process_transaction(state, env, kit.tx(a, Stake(500)))
    assert r.status == 0 and not [e for e in r.events if isinstance(e, Unjailed)]
    assert state.get_account(a.address).jailed
    r = process_transaction(state, env, kit.tx(a, Stake(100)))
    assert Unjailed(a.address) in r.events and not state.get_account(a.address).jailed


# ---------------------------------------------------------------------------------------------
# apply_block: the verifier's checks


def _fresh_pair() -> tuple[Kit, Kit]:
    return Kit(), Kit()


def test_apply_replays_builder_blocks() -> None:
    builder, follower = _fresh_pair()
    a, b = builder.clients[0], builder.clients[1]
    for i in range(3):
        block, _ = builder.block([builder.tx(a, Transfer(b.address, 10 + i)), builder.tx(b, Stake(100))])
        follower.chain.apply(block)
        assert follower.chain.head == builder.chain.head


@pytest.mark.parametrize(
    "mutate, err",
    [
        (lambda h, p: replace(h, state_root=bytes(32)), RootMismatch),
        (lambda h, p: replace(h, receipts_root=bytes(32)), RootMismatch),
        (lambda h, p: replace(h, tx_root=bytes(32)), RootMismatch),
        (lambda h, p: replace(h, parent_hash=bytes(32)), WrongParent),
        (lambda h, p: replace(h, height=h.height + 1), WrongHeight),
        (lambda h, p: replace(h, timestamp_ms=p.timestamp_ms), BadTimestamp),
    ],
)
def test_apply_rejects_bad_headers(mutate, err) -> None:
    builder, follower = _fresh_pair()
    parent = follower.chain.head_header
    block, _ = builder.block([builder.tx(builder.clients[0], Stake(100))])
    bad = sign_header(mutate(block.header, parent), builder.keys["sequencer"], block.txs)
    head = follower.chain.head
    with pytest.raises(err):
        follower.chain.apply(bad)
    assert follower.chain.head == head
    follower.chain.apply(block)


def test_apply_rejects_bad_sequencer_signature_and_invalid_tx() -> None:
    builder, follower = _fresh_pair()
    block, _ = builder.block([builder.tx(builder.clients[0], Stake(100))])
    forged = sign_header(block.header, builder.clients[5], block.txs)
    with pytest.raises(BadBlockSignature):
        follower.chain.apply(forged)
    # a block carrying a tx with a wrong nonce
    k = Kit()
    stx = k.tx(k.clients[0], Stake(100), nonce=1)
    header = Header(
        k.genesis.chain_id, 1, k.chain.head.block_hash, k.time_ms + 5, bytes(32), bytes(32), bytes(32)
    )
    from mpsnode.consensus.block import compute_tx_root

    header = replace(header, tx_root=compute_tx_root((stx,)))
    with pytest.raises(BlockHasInvalidTx) as info:
        k.chain.apply(sign_header(header, k.keys["sequencer"], (stx,)))
    assert isinstance(info.value.cause, NonceMismatch)
