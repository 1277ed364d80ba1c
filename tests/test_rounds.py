"""Closing rounds in the STF: Krum scoring, slashing, aggregation, evaluation, billing, expiry.

Every expected value is recomputed here from the plain reference twins (krum_*_reference,
aggregate_reference, predict_reference), never from the fast kernels the STF uses."""

from __future__ import annotations

import numpy as np
import pytest

from mpsnode.consensus import contribution, krum, model, robust
from mpsnode.consensus.events import (
    Jailed,
    ParticipantRemoved,
    Refunded,
    RemovalReason,
    Rewarded,
    RoundClosed,
    Slashed,
    TaskCompleted,
    TaskExpired,
)
from mpsnode.consensus.state import TaskStatus
from mpsnode.consensus.stf.task import EXPIRED_TOO_FEW_PARTICIPANTS
from mpsnode.consensus.tx import JoinTask, Stake, Unstake
from mpsnode.node.inspect import task_fields

from chainkit import Kit, small_task

ARCH = (4, 5, 3)
N = model.param_count(ARCH)


def start_task(kit: Kit, n_clients: int = 5, **kw: int) -> int:
    body = small_task(
        arch=ARCH, samples=16, f=1, min_clients=5, max_clients=n_clients, join_blocks=1, round_blocks=5, **kw
    )
    _, res = kit.block([kit.tx(kit.user, body)] + [kit.tx(c, Stake(2000)) for c in kit.clients])
    task_id = res.receipts[0].events[0].task_id
    kit.block([kit.tx(c, JoinTask(task_id)) for c in kit.clients[:n_clients]])
    assert kit.chain.state().get_task(task_id).status == TaskStatus.ACTIVE
    return task_id


def deltas(seed: int, n_clients: int, outliers: dict[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(-40, 40, N)
    out = []
    for i in range(n_clients):
        d = base + rng.integers(-5, 5, N)
        if i in outliers:
            d = d * outliers[i]
        out.append(np.clip(d, -32768, 32767).astype("<i2"))
    return out


def submit_round(kit: Kit, task_id: int, round_: int, ds: list[np.ndarray], who: list[int] | None = None):
    who = list(range(len(ds))) if who is None else who
    _, res = kit.submit(task_id, round_, [(kit.clients[i], ds[i].tobytes()) for i in who])
    assert all(r.status == 0 for r in res.receipts[:-1])
    return res


def expected_close(kit: Kit, task_id: int, ds: list[np.ndarray], who: list[int]):
    """The round's decision, new model and accuracy from the reference twins."""
    task = kit.chain.state().get_task(task_id)
    Q = np.stack([ds[i] for i in who]).astype(np.int16)
    addresses = [kit.clients[i].address for i in who]
    f = robust.flag_f(task.byzantine_f, len(who))
    keep = robust.tolerated_f(task.byzantine_f, task.removed, len(who))
    result = robust.decide_round_reference(
        Q, f, addresses, robust.round_rules(kit.genesis.params), task.aggregator, keep
    )
    weights = np.frombuffer(kit.chain.state().get_model(task_id), dtype="<i4")
    new = model.aggregate_reference(weights, Q, result.weights)
    val_x, val_y = kit.chain.state().get_valset(task_id)
    x = np.frombuffer(val_x, dtype="<i2").reshape(-1, ARCH[0])
    y = np.frombuffer(val_y, dtype=np.uint8)
    preds = model.predict_reference(new, ARCH, task.scale_bits, x)
    acc = int(sum(int(p) == int(t) for p, t in zip(preds, y, strict=True))) * 10000 // len(y)
    return result, np.asarray(new, dtype=np.int32), acc


def test_outlier_is_slashed_and_selection_is_aggregated() -> None:
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=3)
    ds = deltas(1, 5, {4: 60})
    result, new_weights, acc = expected_close(kit, task_id, ds, [0, 1, 2, 3, 4])
    bad = kit.clients[4].address
    assert result.flagged and [kit.clients[i].address for i in result.flagged] == [bad]
    bonded = kit.account(bad).bonded
    burned = kit.chain.state().get_globals().burned
    res = submit_round(kit, task_id, 1, ds)  # all 5 submitted: the round closes in this block
    events = res.receipts[-1].events
    closed = next(e for e in events if isinstance(e, RoundClosed))
    assert closed.void == 0 and closed.scores == result.scores
    assert closed.flagged == (bad,) and len(closed.selected) == 4 and bad not in closed.selected
    assert closed.accuracy_bps == acc
    slash = bonded * kit.genesis.params.slash_bps // 10_000
    assert Slashed(task_id, bad, slash, 1, 1) in events and Jailed(bad) in events
    assert ParticipantRemoved(task_id, bad, 1) in events
    acct = kit.account(bad)
    assert acct.bonded == bonded - slash and acct.jailed and acct.tasks == ()
    assert kit.chain.state().get_globals().burned == burned + slash
    state = kit.chain.state()
    assert np.array_equal(np.frombuffer(state.get_model(task_id), dtype="<i4"), new_weights)
    task = state.get_task(task_id)
    assert bad not in task.participants and task.round == 2 and task.accuracy_bps == acc
    # the slashed client may now unstake (no longer in a task) but cannot join anything while jailed
    _, res = kit.block([kit.tx(kit.clients[4], Unstake(1))])
    assert res.receipts[0].status == 0


def expected_units(kit: Kit, task_id: int, ds: list[np.ndarray], who: list[int], weights_of_rows, eligible):
    """Each update's reward units, from the reference twins (first round: no public basis)."""
    state = kit.chain.state()
    task = state.get_task(task_id)
    val_x, val_y = state.get_valset(task_id)
    x = np.frombuffer(val_x, dtype="<i2").reshape(-1, ARCH[0])
    y = np.frombuffer(val_y, dtype=np.uint8)
    weights = np.frombuffer(state.get_model(task_id), dtype="<i4")
    g = contribution.margin_gradient_reference(weights, ARCH, task.scale_bits, x, y)
    direction = contribution.orthogonal_direction_reference(
        contribution.to_direction(g), np.zeros((0, N), np.int16)
    )
    Q = np.stack([ds[i] for i in who]).astype(np.int16)
    gains = contribution.gains_reference(direction, Q).tolist()
    norm = sum(int(v) * int(v) for v in direction)
    G = krum.gram_matrix_reference(Q).tolist()
    return contribution.round_contributions(gains, G, norm, weights_of_rows, eligible, kit.genesis.params)


def test_completion_pays_each_client_its_contribution_and_refunds_the_rest() -> None:
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=1, max_rounds=5, fee_per_round=3333)
    ds = deltas(2, 5, {})
    treasury_before = kit.account(kit.genesis.treasury).balance
    user_before = kit.account(kit.user).balance
    result, _, _ = expected_close(kit, task_id, ds, [0, 1, 2, 3, 4])
    selected = tuple(kit.clients[i].address for i in result.selected)
    left_out = set(result.flagged) | set(result.excluded)
    eligible = [i not in left_out for i in range(5)]
    units = expected_units(kit, task_id, ds, [0, 1, 2, 3, 4], result.weights, eligible)
    everyone = tuple(kit.clients[i].address for i in range(5))
    res = submit_round(kit, task_id, 1, ds)
    events = res.receipts[-1].events
    closed = next(e for e in events if isinstance(e, RoundClosed))
    assert closed.selected == selected and closed.contributions == units
    assert any(u > 0 for u in units) and sum(max(0, u) for u in units) <= contribution.ROUND_UNITS
    done = [e for e in events if isinstance(e, TaskCompleted)]
    assert done, events
    bill = 3333 * 1
    protocol_fee = bill * kit.genesis.params.protocol_fee_bps // 10_000
    pool = bill - protocol_fee
    expected = {
        a: pool * u // contribution.ROUND_UNITS for a, u in zip(everyone, units, strict=True) if u > 0
    }
    rewards = {e.address: e.amount for e in events if isinstance(e, Rewarded)}
    assert rewards == {a: n for a, n in expected.items() if n}
    paid = sum(rewards.values())
    assert done[0].charged == protocol_fee + paid and done[0].protocol_fee == protocol_fee
    assert kit.account(kit.genesis.treasury).balance == treasury_before + protocol_fee
    refund = next(e for e in events if isinstance(e, Refunded))
    assert refund.amount == 3333 * 5 - protocol_fee - paid  # unearned units and dust go back
    assert kit.account(kit.user).balance == user_before + refund.amount
    task = kit.chain.state().get_task(task_id)
    assert task.status == TaskStatus.COMPLETED and task.escrow == 0
    for c in kit.clients[:5]:
        assert kit.account(c).tasks == ()


def test_unreached_target_expires_with_full_refund() -> None:
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=2, fee_per_round=100)
    user_before = kit.account(kit.user).balance
    for round_ in (1, 2):
        res = submit_round(kit, task_id, round_, deltas(10 + round_, 5, {}))
    events = res.receipts[-1].events
    assert TaskExpired(task_id, 2, 2) in events
    assert Refunded(task_id, kit.user.address, 200) in events
    assert kit.account(kit.user).balance == user_before + 200
    assert not [e for e in events if isinstance(e, Rewarded)]


def close_by_deadline(kit: Kit, res=None) -> list:
    """The end-of-block events of the block where the round closes: ``res``'s (the reveal block of
    ``submit_round``, where every committer has revealed) or, if it did not close there, the next."""
    while True:
        if res is not None:
            events = res.receipts[-1].events
            if any(isinstance(e, RoundClosed) for e in events):
                return events
        _, res = kit.block()


def test_void_round_only_below_three_updates() -> None:
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=3)
    ds = deltas(3, 5, {})
    res = submit_round(kit, task_id, 1, ds, who=[0, 1])
    model_before = kit.chain.state().get_model(task_id)
    closed = next(e for e in close_by_deadline(kit, res) if isinstance(e, RoundClosed))
    assert closed.void == 1 and closed.scores == () and closed.tolerated_f == 0
    assert kit.chain.state().get_model(task_id) == model_before
    assert kit.chain.state().get_task(task_id).billed_rounds == 0


def test_a_round_with_silent_participants_is_scored_with_what_k_allows() -> None:
    """4 of 5 updates: f = 1 would need 5, so the round runs with f = 0 instead of being void."""
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=3)
    ds = deltas(3, 5, {})
    result, new_weights, acc = expected_close(kit, task_id, ds, [0, 1, 2, 3])
    assert result.tolerated_f == 0
    res = submit_round(kit, task_id, 1, ds, who=[0, 1, 2, 3])
    closed = next(e for e in close_by_deadline(kit, res) if isinstance(e, RoundClosed))
    assert closed.void == 0 and closed.tolerated_f == 0 and closed.accuracy_bps == acc
    assert np.array_equal(np.frombuffer(kit.chain.state().get_model(task_id), dtype="<i4"), new_weights)
    task = kit.chain.state().get_task(task_id)
    assert task.billed_rounds == 1 and task.missed == ((kit.clients[4].address, 1),)
    shown = task_fields(task)  # what `query task` and `inspect task` print
    assert shown["missed"] == {kit.clients[4].address.hex(): 1} and shown["removed"] == 0
    assert shown["aggregator"] == "nnm_multi_krum" and shown["phase"] == "commit" and shown["committed"] == []
    assert shown["reward_units"] == {a.hex(): n for a, n in task.reward_units} and task.reward_units


def test_a_participant_silent_too_long_is_removed_without_a_slash() -> None:
    kit = Kit()
    limit = kit.genesis.params.max_missed_rounds
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=limit + 2)
    quiet = kit.clients[4].address
    bonded = kit.account(quiet).bonded
    for round_ in range(1, limit + 1):
        res = submit_round(kit, task_id, round_, deltas(20 + round_, 5, {}), who=[0, 1, 2, 3])
        events = close_by_deadline(kit, res)
        task = kit.chain.state().get_task(task_id)
        if round_ < limit:
            assert dict(task.missed)[quiet] == round_ and quiet in task.participants
            assert not [e for e in events if isinstance(e, ParticipantRemoved)]
    assert ParticipantRemoved(task_id, quiet, int(RemovalReason.SILENT)) in events
    assert not [e for e in events if isinstance(e, Slashed)]
    task = kit.chain.state().get_task(task_id)
    assert quiet not in task.participants and task.removed == 1 and task.missed == ()
    assert quiet not in dict(task.reward_units)
    acct = kit.account(quiet)
    assert acct.bonded == bonded and not acct.jailed and task_id not in acct.tasks
    # The removed participant is one of the f: the next round of the other four runs with f = 0.
    res = submit_round(kit, task_id, limit + 1, deltas(40, 5, {}), who=[0, 1, 2, 3])  # all who are left
    closed = next(e for e in res.receipts[-1].events if isinstance(e, RoundClosed))
    assert closed.tolerated_f == 0 and len(closed.selected) == 4


def test_resubmitting_resets_the_missed_count() -> None:
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=6)
    quiet = kit.clients[4].address
    limit = kit.genesis.params.max_missed_rounds
    for round_ in range(1, 2 * limit + 1):
        who = [0, 1, 2, 3] if round_ % limit else [0, 1, 2, 3, 4]  # back just in time, every time
        res = submit_round(kit, task_id, round_, deltas(60 + round_, 5, {}), who=who)
        if len(who) == 4:
            close_by_deadline(kit, res)
        task = kit.chain.state().get_task(task_id)
        if task.status != TaskStatus.ACTIVE:
            break
        assert quiet in task.participants
    assert kit.chain.state().get_task(task_id).removed == 0


def test_a_slashed_client_is_one_of_the_f() -> None:
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=3)
    res = submit_round(kit, task_id, 1, deltas(1, 5, {4: 60}))
    closed = next(e for e in res.receipts[-1].events if isinstance(e, RoundClosed))
    assert closed.tolerated_f == 1 and closed.flagged == (kit.clients[4].address,)
    task = kit.chain.state().get_task(task_id)
    assert task.removed == 1
    res = submit_round(kit, task_id, 2, deltas(2, 5, {}), who=[0, 1, 2, 3])
    closed = next(e for e in res.receipts[-1].events if isinstance(e, RoundClosed))
    assert closed.tolerated_f == 0 and closed.void == 0 and len(closed.selected) == 4


def test_a_task_left_with_fewer_than_three_participants_expires_with_a_refund() -> None:
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=50, fee_per_round=10)
    user_before = kit.account(kit.user).balance
    limit = kit.genesis.params.max_missed_rounds
    events: list = []
    for round_ in range(1, limit + 1):
        res = submit_round(kit, task_id, round_, deltas(80 + round_, 5, {}), who=[0, 1])
        events = close_by_deadline(kit, res)
    removed = [e for e in events if isinstance(e, ParticipantRemoved)]
    assert len(removed) == 3 and all(e.reason == RemovalReason.SILENT for e in removed)
    expired = [e for e in events if isinstance(e, TaskExpired)]
    assert expired == [TaskExpired(task_id, EXPIRED_TOO_FEW_PARTICIPANTS, limit)]
    task = kit.chain.state().get_task(task_id)
    assert task.status == TaskStatus.EXPIRED and task.escrow == 0
    assert kit.account(kit.user).balance == user_before + 10 * 50  # void rounds are never billed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_agrees_on_scored_rounds(seed: int) -> None:
    builder, follower = Kit(), Kit()
    task_id = start_task(builder, target_accuracy_bps=10_000, max_rounds=2)
    for round_ in (1, 2):
        submit_round(
            builder,
            task_id,
            round_,
            deltas(seed * 7 + round_, 5, {3: 80} if round_ == 1 else {}),
            who=[0, 1, 2, 3, 4] if round_ == 1 else [0, 1, 2, 4],
        )
        while (
            builder.chain.state().get_task(task_id).round == round_
            and builder.chain.state().get_task(task_id).status == TaskStatus.ACTIVE
        ):
            builder.block()
    for h in range(1, builder.chain.head.height + 1):
        from mpsnode.consensus.block import decode_block

        follower.chain.apply(decode_block(builder.store.get_block(h)))
    assert follower.chain.head == builder.chain.head


def test_sign_flipped_update_is_slashed_by_direction_and_no_honest_client_is() -> None:
    """A reversed update keeps its norm, so Krum's distance rule cannot see it; the direction rule does."""
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=3)
    rng = np.random.default_rng(8)
    base = rng.integers(-40, 40, N)
    ds = [np.clip(base + rng.integers(-30, 30, N), -32768, 32767).astype("<i2") for _ in range(5)]
    ds[2] = (-ds[2].astype(np.int64)).astype("<i2")
    result, new_weights, acc = expected_close(kit, task_id, ds, [0, 1, 2, 3, 4])
    bad = kit.clients[2].address
    scores = result.scores
    assert (
        100 * max(scores) <= kit.genesis.params.slash_score_ratio_coherent_pct * result.median
    )  # Krum: no flag
    assert result.coherent and result.flagged_direction == (2,) == result.flagged
    bonded = kit.account(bad).bonded
    res = submit_round(kit, task_id, 1, ds)
    events = res.receipts[-1].events
    closed = next(e for e in events if isinstance(e, RoundClosed))
    assert closed.flagged == (bad,) and bad not in closed.selected
    assert closed.selected == tuple(kit.clients[i].address for i in result.selected)
    slash = bonded * kit.genesis.params.slash_bps // 10_000
    assert Slashed(task_id, bad, slash, 2, 1) in events and ParticipantRemoved(task_id, bad, 2) in events
    assert [e.address for e in events if isinstance(e, Slashed)] == [bad]  # nobody honest
    assert np.array_equal(np.frombuffer(kit.chain.state().get_model(task_id), dtype="<i4"), new_weights)
    assert closed.accuracy_bps == acc


def test_disagreeing_round_slashes_nobody_by_direction() -> None:
    """Unrelated updates (no common direction): the median cosine is below the gate, nobody is flagged."""
    kit = Kit()
    task_id = start_task(kit, target_accuracy_bps=10_000, max_rounds=3)
    rng = np.random.default_rng(9)
    ds = [rng.integers(-50, 50, N).astype("<i2") for _ in range(5)]
    ds[1] = (-ds[0].astype(np.int64)).astype("<i2")  # exactly opposite to client 0, yet no common direction
    result, _, _ = expected_close(kit, task_id, ds, [0, 1, 2, 3, 4])
    assert not result.coherent
    res = submit_round(kit, task_id, 1, ds)
    assert not [e for e in res.receipts[-1].events if isinstance(e, Slashed)]
