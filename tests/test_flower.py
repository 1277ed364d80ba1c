"""Bring your own client: unchanged Flower NumPyClients (a scikit-learn MLPClassifier inside,
examples/flower_sklearn_client.py; a PyTorch MLP inside, examples/flower_torch_client.py) train for
real tasks next to native clients, against a real sequencer on 127.0.0.1; the tasks complete and
every client is paid by the contribution rule. A client whose model does not fit the task, or
whose module does not import, signs nothing; one still training when the commit phase ends signs
nothing for that round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_tx import PARAMS, account, cli

from nodekit import LOCALHOST, REPO, Daemon, make_home

pytest.importorskip("flwr", reason="the [flower] extra is not installed (make setup installs it)")

N = 6  # clients in a task
SKLEARN = "examples/flower_sklearn_client.py:make_client"
TORCH = "examples/flower_torch_client.py:make_client"


def client_run(
    node: Daemon, name: str, task: int, *how: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mpsnode.cli", "client", "run", "--home", str(node.home), "--node",
         f"{LOCALHOST}:{node.port}", "--from", name, "--task", str(task), "--json", *how],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def node(tmp_path: Path, daemons: list) -> Daemon:
    make_home(tmp_path, clients=N + 1, params=PARAMS)
    daemon = Daemon(tmp_path)
    daemons.append(daemon.start())
    return daemon


def run_task(node: Daemon, kinds: list[str]) -> tuple[dict, dict[str, list[dict]], list[dict]]:
    """A task of ``len(kinds)`` clients, client-i of kind ``kinds[i]`` (native, sklearn, torch),
    run to its end: (the task as queried, each client's JSON lines, the task's events).

    The join window is 100 s (2000 blocks of 50 ms): six processes importing torch, flwr and
    scikit-learn beside another test worker took over 20 s to join in CI; a full task starts at
    once, so the long window costs nothing when they are quick."""
    created = cli(node, "client", "create-task", "--from", "user", "--digits-clients", str(len(kinds)),
                  "--alpha", "iid", "--seed", "0", "--target", "0.5", "--max-rounds", "20",
                  "--join-blocks", "2000", "--round-blocks", "150")  # fmt: skip
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)["task_id"]
    procs = {}
    for i, kind in enumerate(kinds):
        name, shard = f"client-{i}", f"{i}/{len(kinds)}"
        if kind == "native":
            procs[name] = client_run(
                node, name, task, "--digits-shard", shard, "--alpha", "iid", "--seed", "0"
            )
        else:
            procs[name] = client_run(node, name, task, "--flower", SKLEARN if kind == "sklearn" else TORCH,
                                     env={"SHARD": shard, "ALPHA": "iid", "SEED": "0"})  # fmt: skip
    outs = {}
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, (name, err[-2000:])
            outs[name] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    shown = json.loads(cli(node, "query", "task", str(task)).stdout)
    done = {name: lines[-1] for name, lines in outs.items()}
    if not all(d["event"] == "done" and d["status"] == "completed" for d in done.values()):
        pytest.fail(f"the task did not complete: {json.dumps({'task': shown, 'clients': done})}")
    blocks = json.loads(cli(node, "query", "events", "--task", str(task), "--count", "100000").stdout)[
        "blocks"
    ]
    return shown, outs, [e for b in blocks for e in b["events"]]


def assert_paid_by_the_contribution_rule(
    node: Daemon, shown: dict, events: list[dict], outs: dict[str, list[dict]], kinds: list[str]
) -> None:
    """Every client had every update it committed included and revealed, and was paid exactly
    ``pool * units // (10^6 * billed_rounds)`` (nothing for a client whose updates never improved
    the model: an honest update can, in a round or two); every kind of client earned."""
    (completed,) = [e for e in events if e["event"] == "TaskCompleted"]
    paid = {e["address"]: e["amount"] for e in events if e["event"] == "Rewarded"}
    billed = shown["billed_rounds"]
    pool = shown["fee_per_round"] * billed - completed["protocol_fee"]
    units = shown["reward_units"]
    closed = [(e["round"], e["contributions"]) for e in events if e["event"] == "RoundClosed"]
    earned = dict.fromkeys(kinds, 0)
    for name, kind in zip(outs, kinds, strict=True):
        done = outs[name][-1]
        if not done["updates_ok"] == done["rounds_committed"] >= 1:
            pytest.fail(f"{name}: {json.dumps(outs[name])}")
        address = json.loads(cli(node, "query", "account", name).stdout)["address"]
        owed = pool * units.get(address, 0) // (1_000_000 * billed)
        assert paid.get(address, 0) == owed, (name, paid, units, pool)
        earned[kind] += owed
    assert all(v > 0 for v in earned.values()), (earned, units, closed)


def test_flower_sklearn_clients_complete_a_task_beside_native_ones_and_are_paid(node: Daemon) -> None:
    kinds = ["native"] * 3 + ["sklearn"] * 3
    shown, outs, events = run_task(node, kinds)
    assert_paid_by_the_contribution_rule(node, shown, events, outs, kinds)
    committed = [line for line in outs["client-3"] if line["event"] == "committed"]
    assert committed and all("accuracy" in line["metrics"] and line["train_s"] >= 0 for line in committed)


def test_a_task_of_native_sklearn_and_torch_clients_completes_and_pays_all(node: Daemon) -> None:
    pytest.importorskip("torch", reason="the [torch] extra is not installed (make setup installs it)")
    kinds = ["native", "sklearn", "torch"] * 2
    shown, outs, events = run_task(node, kinds)
    assert_paid_by_the_contribution_rule(node, shown, events, outs, kinds)
    for i, kind in enumerate(kinds):
        committed = [line for line in outs[f"client-{i}"] if line["event"] == "committed"]
        assert committed, (kind, outs[f"client-{i}"])
        assert all(("metrics" in line) == (kind != "native") for line in committed), (kind, committed)


def test_a_flower_client_that_does_not_fit_or_import_signs_nothing(node: Daemon, tmp_path: Path) -> None:
    created = cli(
        node, "client", "create-task", "--from", "user", "--digits-clients", str(N), "--join-blocks", "2000"
    )
    task = json.loads(created.stdout)["task_id"]
    bad = tmp_path / "small_client.py"
    bad.write_text(
        "import numpy as np\n"
        "class Small:\n"
        "    def get_parameters(self, config):\n"
        "        return [np.zeros((64, 16)), np.zeros((16, 10)), np.zeros(16), np.zeros(10)]\n"
        "    def fit(self, parameters, config):\n"
        "        return parameters, 1, {}\n"
        "client = Small()\n"
    )
    cases = [
        (f"{bad}:client", "the task's arch [64, 32, 10] needs"),
        ("no_such_module_anywhere:client", "importing no_such_module_anywhere failed"),
        (f"{bad}:nothing", "has no 'nothing'"),
        ("justamodule", "expected MODULE:ATTR"),
    ]
    for spec, why in cases:
        p = client_run(node, "client-0", task, "--flower", spec)
        _, err = p.communicate(timeout=120)
        assert p.returncode != 0 and why in err and err.count("\n") == 1 and "Traceback" not in err, (
            spec,
            err,
        )
    assert account(node, "client-0")["nonce"] == 0 and account(node, "client-0")["pending_txs"] == 0


def slow_client(tmp_path: Path, seconds: float) -> str:
    """A Flower client of the task's arch whose fit takes ``seconds`` and changes nothing."""
    path = tmp_path / "slow_client.py"
    path.write_text(
        "import time\n"
        "import numpy as np\n"
        "class Slow:\n"
        "    def get_parameters(self, config):\n"
        "        return [np.zeros((32, 64)), np.zeros(32), np.zeros((10, 32)), np.zeros(10)]\n"
        "    def fit(self, parameters, config):\n"
        f"        time.sleep({seconds})\n"
        "        return parameters, 1, {}\n"
        "client = Slow()\n"
    )
    return f"{path}:client"


def run_beside_natives(node: Daemon, flower: str, *task_args: str) -> tuple[list[dict], dict]:
    """Three native clients and the Flower client ``flower`` (client-3) in a 4-client task."""
    created = cli(node, "client", "create-task", "--from", "user", "--digits-clients", "4", "--alpha", "iid",
                  "--seed", "0", "--target", "0.99", "--join-blocks", "2000", *task_args)  # fmt: skip
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)["task_id"]
    procs = {f"client-{i}": client_run(node, f"client-{i}", task, "--digits-shard", f"{i}/4", "--alpha", "iid",
                                       "--seed", "0") for i in range(3)}  # fmt: skip
    procs["client-3"] = client_run(node, "client-3", task, "--flower", flower)
    try:
        outs = {name: p.communicate(timeout=240) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    lines = [json.loads(line) for line in outs["client-3"][0].splitlines() if line.startswith("{")]
    return lines, account(node, "client-3")


def test_a_client_still_training_when_the_commit_phase_ends_signs_nothing_for_that_round(
    node: Daemon, tmp_path: Path
) -> None:
    # fit takes 6 s; the commit phase is 10 blocks (0.5 s at the test chain's 50 ms blocks)
    lines, acct = run_beside_natives(
        node, slow_client(tmp_path, 6), "--max-rounds", "2", "--round-blocks", "10"
    )
    late = [line for line in lines if line["event"] == "late"]
    assert late and not [line for line in lines if line["event"] == "committed"], lines
    assert acct["nonce"] == 2, lines  # its stake and its join, no commitment


def test_a_client_training_for_longer_than_its_subscription_buffers_still_commits_and_reveals(
    node: Daemon, tmp_path: Path
) -> None:
    # fit takes 5 s: 100 blocks pushed meanwhile, beyond the 64 the client's subscription buffers;
    # before lossy subscriptions its next request waited behind them for ever
    lines, _ = run_beside_natives(
        node, slow_client(tmp_path, 5), "--max-rounds", "1", "--round-blocks", "600"
    )
    done = lines[-1]
    assert done["event"] == "done" and done["updates_ok"] == done["rounds_committed"] == 1, lines
