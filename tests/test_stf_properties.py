"""Random tx sequences (hypothesis): the supply invariant, nonces, no negative amounts, and two
independent chains (in-memory and LMDB) reaching the same roots, block by block."""

from __future__ import annotations

import tempfile
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsnode.consensus.model import param_count
from mpsnode.consensus.state import ACCOUNT_SLOTS, Account, Unbonding
from mpsnode.consensus.tx import JoinTask, Stake, Transfer, Unstake, commit_reveal
from mpsnode.node.store import LmdbStore

from chainkit import Kit, random_delta, small_task

N_CLIENTS = 6
amounts = st.one_of(st.integers(1, 3000), st.integers(1, 2_000_000))
actions = st.one_of(
    st.tuples(st.just("transfer"), st.integers(0, N_CLIENTS - 1), st.integers(0, N_CLIENTS - 1), amounts),
    st.tuples(st.just("stake"), st.integers(0, N_CLIENTS - 1), amounts),
    st.tuples(st.just("unstake"), st.integers(0, N_CLIENTS - 1), amounts),
    st.tuples(st.just("task"), st.integers(0, 2)),
    st.tuples(st.just("join"), st.integers(0, N_CLIENTS - 1), st.integers(1, 3)),
    st.tuples(
        st.sampled_from(["commit", "reveal"]),
        st.integers(0, N_CLIENTS - 1),
        st.integers(1, 3),
        st.integers(1, 3),
        st.integers(0, 3),
    ),
    st.tuples(st.just("end_block")),
)


def body_for(action: tuple, kit: Kit):
    kind = action[0]
    if kind == "transfer":
        return action[1], Transfer(kit.clients[action[2]].address, action[3])
    if kind == "stake":
        return action[1], Stake(action[2])
    if kind == "unstake":
        return action[1], Unstake(action[2])
    if kind == "task":
        return None, small_task(f=0, min_clients=3, join_blocks=1 + action[1], round_blocks=2, max_rounds=2)
    if kind == "join":
        return action[1], JoinTask(action[2])
    if kind in ("commit", "reveal"):
        key = kit.clients[action[1]]
        delta = random_delta(param_count((4, 3)), action[4])
        commit, reveal = commit_reveal(
            kit.genesis.chain_id, action[2], action[3], key.address, delta, bytes(32)
        )
        return action[1], commit if kind == "commit" else reveal
    raise AssertionError(kind)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, min_size=1, max_size=40))
def test_random_histories_keep_invariants_and_agree(history: list[tuple]) -> None:
    mem = Kit(clients=N_CLIENTS)
    with tempfile.TemporaryDirectory() as tmp:
        disk = Kit(store=LmdbStore(Path(tmp), map_size=1 << 30), clients=N_CLIENTS)
        pending: list = []
        for action in [*history, ("end_block",)]:
            if action[0] == "end_block":
                block, result = mem.block([mem.tx(k, b) for k, b in pending])
                disk.chain.apply(block)  # the other chain re-executes; roots must agree
                disk.check_invariants()
                assert disk.chain.head == mem.chain.head
                for r in result.receipts[:-1]:
                    assert r.fee_paid == 1
                pending = []
                continue
            who, body = body_for(action, mem)
            key = mem.user if who is None else mem.clients[who]
            pending.append((key, body))
        # every sender's nonce counts exactly its included txs
        state = mem.chain.state()
        for key in [mem.user, *mem.clients]:
            assert state.get_account(key.address).nonce == mem.nonces.get(key.address, 0)
        disk.store.close()


uints = st.integers(0, 2**64 - 1)


@given(
    uints,
    uints,
    uints,
    st.lists(st.tuples(uints, uints), max_size=3),
    st.booleans(),
    st.lists(st.integers(1, 2**32), max_size=3),
    st.one_of(st.none(), uints),
)
def test_accounts_built_slot_by_slot_equal_the_dataclass_ones(
    balance, nonce, bonded, unb, jailed, tasks, new
):
    assert tuple(f.name for f in fields(Account)) == ACCOUNT_SLOTS  # a new field needs the fast path too
    entries = tuple(Unbonding(a, h) for a, h in unb)
    made = Account(balance, nonce, bonded, entries, jailed, tuple(tasks))
    decoded = Account.decode(made.encode())  # built slot by slot
    assert decoded == made and hash(decoded) == hash(made) and repr(decoded) == repr(made)
    moved = made.with_balance(new if new is not None else balance, None if new is None else nonce + 1)
    expected = Account(
        moved.balance, nonce if new is None else nonce + 1, bonded, entries, jailed, tuple(tasks)
    )
    assert moved == expected and type(moved) is Account
    with pytest.raises(FrozenInstanceError):
        moved.balance = 1  # type: ignore[misc]
