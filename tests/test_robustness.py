"""The robustness benchmark's runs on the real in-process chain, as tests: the liveness, slashing and
payment targets of docs/PROTOCOL.md sections 7 and 8 on a few cells (CI), and long tasks (soak, run before an
issue closes: ``pytest tests/test_robustness.py -m soak``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import robustness


def run(attack: str, fraction: int, alpha: str, **kw: object) -> dict:
    setup = robustness.Setup(attack, fraction, alpha, 0, fedavg=False, **kw)  # type: ignore[arg-type]
    return robustness.run(setup)


def test_withholding_attackers_never_void_a_round_and_the_task_completes() -> None:
    # 6 of 20 withhold, f = 6 = the number of attackers: before, every round was void
    r = run("withhold", 30, "0.5", rounds=12, byzantine_f=None)
    assert r["void_rounds"] == 0 and r["silent_removed"] == 6 and r["honest_slashed"] == 0
    assert r["completed"], r["accuracy"]


def test_caught_attackers_do_not_kill_the_task() -> None:
    # 6 noise attackers slashed in round 1 with f = 6: the task goes on with f = 0 (FedAvg of the rest)
    r = run("gaussian", 30, "iid", rounds=8, byzantine_f=None)
    assert r["attackers_slashed"] == 6 and r["attacker_slash_rounds"] == [1] * 6
    assert r["void_rounds"] == 0 and r["honest_slashed"] == 0 and r["completed"]


@pytest.mark.parametrize("attack", ["free_rider_zeros", "free_rider_copy", "free_rider_replay"])
def test_free_riders_are_paid_next_to_nothing(attack: str) -> None:
    # the task completes at 90% and pays by contribution: measured in the grid, at most 4.2% (replay)
    r = run(attack, 20, "1.0", rounds=30, pay=True)
    assert r["paid"] and r["honest_slashed"] == 0
    assert r["reward_per_attacker_over_honest"] <= 0.05, r["rewards"]
    assert r["honest_reward_min_over_mean"] >= 0.2, r["rewards"]


def test_sign_flippers_are_slashed_in_the_first_rounds() -> None:
    r = run("sign_flip", 20, "1.0", rounds=4)
    assert r["attackers_slashed"] == 4 and max(r["attacker_slash_rounds"]) <= 2
    assert r["honest_slashed"] == 0


@pytest.mark.soak
@pytest.mark.parametrize("alpha", ["iid", "1.0", "0.5", "0.1"])
def test_long_tasks_slash_no_honest_client(alpha: str) -> None:
    # Before: 5 IID clients with f = 1, and Multi-Krum left one honest client out round after round
    # until its distance crossed the threshold (slashed in round 80).
    for seed in (0, 1):
        setup = robustness.Setup("none", 0, alpha, seed, clients=5, rounds=120, byzantine_f=1, fedavg=False)
        r = robustness.run(setup)
        assert r["honest_slashed"] == 0 and r["void_rounds"] == 0, (alpha, seed, r["honest_slashed_clients"])
