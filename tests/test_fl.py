"""Client-side federated learning: data splits, the float MLP in the on-chain layout, local learning,
quantization, CREATE_TASK building, and the (evaluation-only) attacks."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from mpsnode import fl
from mpsnode.consensus import model
from mpsnode.consensus.errors import InvalidField
from mpsnode.consensus.events import RoundClosed
from mpsnode.consensus.state import TaskStatus
from mpsnode.consensus.tx import CreateTask, JoinTask, Stake
from mpsnode.fl import attacks, mlp, quantize

from chainkit import Kit

ARCH = (64, 32, 10)
S = 12


@cache
def digits() -> fl.Dataset:
    return fl.load_digits()


# ---------------------------------------------------------------------------------------------
# data


def test_digits_ship_with_the_package_and_are_scaled_to_unit_range() -> None:
    d = digits()
    assert d.x.shape == (1797, 64) and d.x.dtype == np.float64 and d.n_classes == 10
    assert d.x.min() == 0.0 and d.x.max() == 1.0
    assert np.array_equal(np.unique(d.y), np.arange(10))


def test_from_arrays_checks_its_input() -> None:
    ds = fl.from_arrays(np.ones((4, 3), dtype=np.int32), np.array([0, 1, 2, 1]))
    assert ds.n_classes == 3 and ds.x.dtype == np.float64 and len(ds) == 4
    with pytest.raises(ValueError, match="NaN"):
        fl.from_arrays(np.array([[np.nan, 1.0]]), np.array([0]), 2)
    with pytest.raises(ValueError, match="labels must lie"):
        fl.from_arrays(np.ones((2, 2)), np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="2 inputs but 3 labels"):
        fl.from_arrays(np.ones((2, 2)), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="integer array"):
        fl.from_arrays(np.ones((2, 2)), np.array([0.5, 1.0]))


@pytest.mark.parametrize("alpha", [None, 1.0, 0.1])
def test_split_is_a_partition_disjoint_from_validation_and_reproducible(alpha: float | None) -> None:
    split = fl.make_split(digits(), 20, alpha=alpha, seed=3)
    again = fl.make_split(digits(), 20, alpha=alpha, seed=3)
    assert len(split.clients) == 20

    # clients and validation together hold every sample exactly once (compared as sorted multisets)
    def table(parts: list[fl.Dataset]) -> np.ndarray:
        rows = np.concatenate([np.column_stack([p.x, p.y]) for p in parts])
        return rows[np.lexsort(rows.T[::-1])]

    assert np.array_equal(table([*split.clients, split.validation]), table([digits()]))
    assert min(len(c) for c in split.clients) >= 10
    assert all(
        np.array_equal(a.y, b.y) and np.array_equal(a.x, b.x)
        for a, b in zip(split.clients, again.clients, strict=True)
    )
    # the validation set is stratified: every class holds back about 20%
    assert np.all(np.abs(split.validation.label_counts() - 0.2 * digits().label_counts()) <= 1)


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def mean_top_share(alpha: float | None) -> float:
        split = fl.make_split(digits(), 20, alpha=alpha, seed=0)
        return float(np.mean([c.label_counts().max() / len(c) for c in split.clients]))

    iid, mild, strong = mean_top_share(None), mean_top_share(1.0), mean_top_share(0.1)
    assert iid < 0.2 < mild < strong and strong > 0.6


def test_impossible_split_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot give"):
        fl.partition_iid(10, 20)
    with pytest.raises(ValueError, match="alpha must be positive"):
        fl.partition_dirichlet(np.zeros(100, dtype=np.int64), 5, 0.0)
    with pytest.raises(ValueError, match="no Dirichlet"):
        fl.partition_dirichlet(np.repeat(np.arange(10), 30), 20, 0.001, min_samples=15)


def test_validation_set_quantizes_to_the_task_scale_and_refuses_clipping() -> None:
    val = fl.make_split(digits(), 5, seed=0).validation
    val_x, val_y = fl.quantize_validation(val, S)
    x, y = fl.decode_validation(val_x, val_y, ARCH)
    assert x.dtype == np.int16 and x.shape == (len(val), 64) and int(x.max()) == 1 << S
    assert np.array_equal(x, quantize.quantize_inputs(val.x, S)) and np.array_equal(y, val.y.astype(np.uint8))
    with pytest.raises(ValueError, match="beyond int16"):
        fl.quantize_validation(val, 15)  # 1.0 * 2^15 does not fit int16


# ---------------------------------------------------------------------------------------------
# the float MLP


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    arch = (5, 4, 3, 3)
    p = mlp.init_params(arch, rng)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    _, g = mlp.loss_and_grad(p, arch, x, y)
    eps = 1e-6
    for i in rng.choice(p.size, 25, replace=False):
        e = np.zeros_like(p)
        e[i] = eps
        numeric = (mlp.loss_and_grad(p + e, arch, x, y)[0] - mlp.loss_and_grad(p - e, arch, x, y)[0]) / (
            2 * eps
        )
        assert abs(numeric - g[i]) < 1e-6, (i, numeric, g[i])


def test_float_layout_is_the_on_chain_layout() -> None:
    """Quantized float parameters predict (almost) the same classes under the chain's integer forward pass."""
    d = digits()
    params, _ = mlp.train_sgd(
        mlp.init_params(ARCH, np.random.default_rng(1)),
        ARCH,
        d.x[:600],
        d.y[:600],
        epochs=5,
        lr=0.3,
        batch_size=16,
        rng=np.random.default_rng(2),
    )
    float_pred = mlp.predict(params, ARCH, d.x)
    int_pred = model.predict(quantize.quantize_weights(params, S), ARCH, S, quantize.quantize_inputs(d.x, S))
    assert np.mean(float_pred == int_pred) > 0.99
    assert mlp.accuracy(params, ARCH, d.x, d.y) > 0.85
    # a permuted layout (weights read column-major) would not agree
    W, _ = model.layer_slices(ARCH)[0]
    wrong = params.copy()
    wrong[W] = params[W].reshape(32, 64).T.reshape(-1)
    assert np.mean(mlp.predict(wrong, ARCH, d.x) == float_pred) < 0.5


# ---------------------------------------------------------------------------------------------
# local learning and quantization


def test_quantize_update_rounds_clips_and_counts() -> None:
    change = np.array([0.0, 1.0 / 4096, -3.6 / 4096, 9.0, -100.0, 7.99])
    q, clipped = fl.quantize_update(change, S)
    assert q.dtype == np.int16 and q.tolist() == [0, 1, -4, 32767, -32767, 32727]
    assert clipped == 2
    with pytest.raises(ValueError, match="NaN"):
        fl.quantize_update(np.array([np.nan]), S)


def test_learner_returns_the_quantized_change_from_the_global_model() -> None:
    split = fl.make_split(digits(), 5, seed=0)
    w = fl.initial_weights(ARCH, S, seed=0)
    learner = fl.LocalLearner(split.clients[0], ARCH, seed=7)
    up = learner.train_round(w, S, 2)
    assert up.delta.dtype == np.int16 and up.delta.shape == (model.param_count(ARCH),)
    assert np.array_equal(up.delta, quantize.quantize_delta(up.change, S)) and up.clipped == 0
    assert np.isfinite(up.loss) and up.samples == len(split.clients[0])
    assert up.to_bytes() == up.delta.astype("<i2").tobytes()
    # same seed, same global model: the same delta
    assert np.array_equal(
        fl.LocalLearner(split.clients[0], ARCH, seed=7).train_round(w, S, 2).delta, up.delta
    )
    with pytest.raises(ValueError, match="features"):
        fl.LocalLearner(fl.from_arrays(np.ones((3, 5)), np.array([0, 1, 0])), ARCH)
    with pytest.raises(ValueError, match="weights"):
        learner.train_round(np.zeros(10, dtype=np.int32), S, 1)


def test_error_feedback_carries_what_quantization_lost() -> None:
    split = fl.make_split(digits(), 5, seed=0)
    w = fl.initial_weights(ARCH, 4, seed=0)  # 4 scale bits: steps of 1/16, most of an update rounds away
    plain = fl.LocalLearner(split.clients[1], ARCH, fl.TrainConfig(error_feedback=False), seed=1)
    ef = fl.LocalLearner(split.clients[1], ARCH, fl.TrainConfig(error_feedback=True), seed=1)
    up = ef.train_round(w, 4, 1)
    assert np.allclose(ef.residual, up.change - quantize.dequantize(up.delta, 4))
    assert np.abs(ef.residual).max() <= 0.5 / 16 + 1e-12
    sent_plain = sent_ef = 0
    for _ in range(3):
        sent_plain += np.count_nonzero(plain.train_round(w, 4, 1).delta)
        sent_ef += np.count_nonzero(ef.train_round(w, 4, 1).delta)
    assert sent_ef > sent_plain  # carried residuals cross the rounding threshold
    ef.reset()
    assert not ef.residual.any()


def test_federated_rounds_raise_on_chain_accuracy() -> None:
    """Five clients, integer aggregation and integer evaluation exactly as the chain does them."""
    split = fl.make_split(digits(), 5, alpha=1.0, seed=0)
    body = fl.create_task_body(split.validation, min_clients=5, max_clients=5, byzantine_f=1)
    w = np.frombuffer(body.init_weights, dtype="<i4").astype(np.int32)
    vx, vy = fl.decode_validation(body.val_x, body.val_y, ARCH)
    before = model.accuracy_bps(w, ARCH, S, vx, vy)
    learners = [fl.LocalLearner(c, ARCH, seed=i) for i, c in enumerate(split.clients)]
    for _ in range(4):
        w = model.aggregate(w, np.stack([lr.train_round(w, S, 2).delta for lr in learners]))
    assert before < 3000 and model.accuracy_bps(w, ARCH, S, vx, vy) > 8500


# ---------------------------------------------------------------------------------------------
# CREATE_TASK and the chain


def test_create_task_body_is_valid_and_refuses_what_the_chain_would() -> None:
    split = fl.make_split(digits(), 10, seed=0)
    body = fl.create_task_body(split.validation, seed=5)
    assert isinstance(body, CreateTask) and body.arch == ARCH and body.scale_bits == S
    assert body.init_weights == fl.initial_weights(ARCH, S, 5).astype("<i4").tobytes()
    assert len(body.val_y) == len(split.validation)
    with pytest.raises(InvalidField, match="min_clients"):
        fl.create_task_body(split.validation, min_clients=4, byzantine_f=1)
    with pytest.raises(ValueError, match="features"):
        fl.create_task_body(split.validation, arch=(10, 10))


def test_learner_updates_close_a_round_on_the_chain() -> None:
    kit = Kit(clients=5)
    split = fl.make_split(digits(), 5, seed=0)
    body = fl.create_task_body(
        split.validation,
        min_clients=5,
        max_clients=5,
        byzantine_f=1,
        join_blocks=1,
        target_accuracy_bps=10_000,
        max_rounds=2,
    )
    _, res = kit.block([kit.tx(kit.user, body)] + [kit.tx(c, Stake(2000)) for c in kit.clients])
    task_id = res.receipts[0].events[0].task_id
    kit.block([kit.tx(c, JoinTask(task_id)) for c in kit.clients])
    task = kit.chain.state().get_task(task_id)
    assert task.status == TaskStatus.ACTIVE
    w = fl.weights_from_bytes(kit.chain.state().get_model(task_id), ARCH)
    updates = [
        fl.LocalLearner(c, ARCH, seed=i).train_round(w, S, task.local_epochs)
        for i, c in enumerate(split.clients)
    ]
    _, res = kit.submit(task_id, 1, [(c, u.to_bytes()) for c, u in zip(kit.clients, updates, strict=True)])
    closed = next(e for e in res.receipts[-1].events if isinstance(e, RoundClosed))
    assert closed.flagged == () and len(closed.selected) == 4
    vx, vy = fl.decode_validation(*kit.chain.state().get_valset(task_id), ARCH)
    new = fl.weights_from_bytes(kit.chain.state().get_model(task_id), ARCH)
    assert (
        closed.accuracy_bps
        == model.accuracy_bps(new, ARCH, S, vx, vy)
        > model.accuracy_bps(w, ARCH, S, vx, vy)
    )


# ---------------------------------------------------------------------------------------------
# attacks (evaluation only)


def _own(a: int = 3, d: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.01, (a, d))


def test_simple_attacks() -> None:
    own, rng = _own(), np.random.default_rng(0)
    assert np.array_equal(attacks.craft("sign_flip", own, n_clients=20, rng=rng), -own)
    assert np.allclose(attacks.craft("scaled", own, n_clients=20, rng=rng), 20 * own)
    assert np.allclose(
        attacks.craft("scaled", own, n_clients=20, rng=rng, options=attacks.AttackOptions(boost=3)), 3 * own
    )
    g = attacks.craft("gaussian", own, n_clients=20, rng=rng, options=attacks.AttackOptions(gaussian_std=0.5))
    assert g.shape == own.shape and 0.4 < g.std() < 0.6
    assert not attacks.craft("free_rider_zeros", own, n_clients=20, rng=rng).any()
    assert np.array_equal(attacks.craft("label_flip", own, n_clients=20, rng=rng), own)
    assert not attacks.needs_training("free_rider_copy") and attacks.needs_training("alie")
    assert attacks.poisons_data("label_flip") and not attacks.poisons_data("sign_flip")
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.craft("nope", own, n_clients=20, rng=rng)


def test_flip_labels() -> None:
    ds = fl.from_arrays(np.zeros((4, 2)), np.array([0, 1, 8, 9]), 10)
    assert attacks.flip_labels(ds).y.tolist() == [9, 8, 1, 0]


def test_alie_uses_the_papers_z_and_the_colluders_statistics() -> None:
    assert attacks.alie_z(20, 4) == pytest.approx(0.3853, abs=1e-4)  # s = 11 - 4 = 7, Phi^-1(13/20)
    assert attacks.alie_z(50, 24) == pytest.approx(1.7507, abs=1e-4)  # the paper's n=50, m=24: Phi^-1(0.96)
    own = _own(4)
    out = attacks.craft("alie", own, n_clients=20, rng=np.random.default_rng(0))
    expected = own.mean(axis=0) - attacks.alie_z(20, 4) * own.std(axis=0)
    assert out.shape == own.shape and np.allclose(out, expected[None, :])


def test_ipm_uses_the_honest_mean() -> None:
    own, honest = _own(2), _own(6, seed=1)
    for name, eps in (("ipm_0.1", 0.1), ("ipm_2", 2.0)):
        out = attacks.craft(name, own, honest, n_clients=8, rng=np.random.default_rng(0))
        assert np.allclose(out, -eps * honest.mean(axis=0)[None, :])
        assert np.allclose(
            attacks.craft(name, own, None, n_clients=8, rng=np.random.default_rng(0)),
            -eps * own.mean(axis=0)[None, :],
        )  # no view of the others: own estimate


def _aligned(n: int, d: int = 50, seed: int = 0) -> np.ndarray:
    """Honest-like changes sharing a direction (as in early rounds)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.05, d)
    return base[None, :] + rng.normal(0, 0.02, (n, d))


def test_min_max_and_min_sum_sit_at_the_edge_of_the_honest_spread() -> None:
    honest = _aligned(12)
    sq = ((honest[:, None, :] - honest[None, :, :]) ** 2).sum(axis=2)
    for rule in ("minmax", "minsum"):
        for direction in ("std", "uv"):
            out = attacks.craft(
                f"{rule}_{direction}", _own(3), honest, n_clients=15, rng=np.random.default_rng(0)
            )
            assert out.shape == (3, 50) and np.allclose(out, out[0][None, :])  # the colluders agree
            dist2 = ((honest - out[0][None, :]) ** 2).sum(axis=1)
            mean = honest.mean(axis=0)
            p = -honest.std(axis=0) if direction == "std" else -mean / np.linalg.norm(mean)
            gamma = float(np.dot(out[0] - mean, p) / np.dot(p, p))
            assert np.allclose(out[0], mean + gamma * p) and gamma > 0
            if rule == "minmax":
                assert dist2.max() <= sq.max() * (1 + 1e-9)
                bigger = ((honest - (mean + 1.01 * gamma * p)[None, :]) ** 2).sum(axis=1).max()
                assert bigger > sq.max()  # gamma is the largest that stays inside
            else:
                assert dist2.sum() <= sq.sum(axis=1).max() * (1 + 1e-9)


def test_fang_points_against_the_honest_direction_and_krum_picks_it() -> None:
    rng = np.random.default_rng(3)
    honest = 0.02 + rng.normal(0, 0.05, (12, 50))  # spread out (non-IID-like): Krum can be fooled
    knowledge = attacks.Knowledge(f=3, scale_bits=S)
    out = attacks.craft(
        "fang_krum", _own(3), honest, n_clients=15, rng=np.random.default_rng(0), knowledge=knowledge
    )
    s = np.sign(honest.mean(axis=0))
    lam = float(-out[0] @ s / (s @ s))
    assert lam > 0 and np.allclose(out, -lam * s[None, :])
    assert attacks._krum_picks_crafted(honest, out, 3)


def test_the_rule_aware_fang_is_never_flagged_or_left_out() -> None:
    from mpsnode.consensus import krum, robust
    from mpsnode.consensus.params import Params

    clients = _aligned(15)
    honest, own = clients[:12], clients[12:]  # own: what the attackers trained, sent when nothing passes
    rules = robust.round_rules(Params())
    knowledge = attacks.Knowledge(f=3, scale_bits=S, rules=rules)
    deltas, _ = attacks.craft_deltas(
        "fang_krum_aware",
        own,
        honest,
        n_clients=15,
        scale_bits=S,
        rng=np.random.default_rng(0),
        knowledge=knowledge,
    )
    Q = np.vstack([np.stack([fl.quantize_update(h, S)[0] for h in honest]), deltas])
    addresses = [i.to_bytes(32, "big") for i in range(15)]
    decision = robust.decide_round(krum.gram_matrix(Q), 3, addresses, rules)
    assert not any(i >= 12 for i in decision.flagged + decision.excluded)


def test_colluders_send_distinct_deltas_the_chain_accepts() -> None:
    own, honest = _own(3), _own(5, seed=2)
    for name in attacks.IDENTICAL:
        deltas, clipped = attacks.craft_deltas(
            name, own, honest, n_clients=8, scale_bits=S, rng=np.random.default_rng(0), first_index=2
        )
        assert deltas.dtype == np.int16 and clipped == [0, 0, 0]
        assert len({r.tobytes() for r in deltas}) == 3, name
        if name == "free_rider_copy":
            honest_q = {fl.quantize_update(h, S)[0].tobytes() for h in honest}
            assert not any(r.tobytes() in honest_q for r in deltas)  # never a byte-for-byte copy
            assert all(
                min(np.abs(r.astype(int) - fl.quantize_update(h, S)[0]).sum() for h in honest) == 1
                for r in deltas
            )


def test_boosted_updates_clip_and_report_it() -> None:
    own = np.full((1, 10), 0.5)
    deltas, clipped = attacks.craft_deltas(
        "scaled", own, n_clients=20, scale_bits=S, rng=np.random.default_rng(0)
    )
    assert clipped == [10] and np.all(deltas == 32767)
