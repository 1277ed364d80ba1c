"""Bring your own client: an unchanged Flower NumPyClient (scikit-learn MLPClassifier inside,
examples/flower_sklearn_client.py) trains for a real task next to native clients, against a real
sequencer on 127.0.0.1; the task completes and the Flower clients are paid by the contribution
rule. A client whose model does not fit the task, or whose module does not import, signs nothing."""

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

N = 5  # clients: three native, two Flower


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


def test_flower_sklearn_clients_complete_a_task_beside_native_ones_and_are_paid(node: Daemon) -> None:
    created = cli(node, "client", "create-task", "--from", "user", "--digits-clients", str(N), "--alpha", "iid",
                  "--seed", "0", "--target", "0.5", "--max-rounds", "20", "--join-blocks", "400")  # fmt: skip
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)["task_id"]
    flower = "examples/flower_sklearn_client.py:make_client"
    procs = {}
    for i in range(N):
        name = f"client-{i}"
        if i < 3:
            procs[name] = client_run(
                node, name, task, "--digits-shard", f"{i}/{N}", "--alpha", "iid", "--seed", "0"
            )
        else:
            procs[name] = client_run(node, name, task, "--flower", flower,
                                     env={"SHARD": f"{i}/{N}", "ALPHA": "iid", "SEED": "0"})  # fmt: skip
    outs = {}
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, (name, err[-2000:])
            outs[name] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    done = {name: lines[-1] for name, lines in outs.items()}
    shown = json.loads(cli(node, "query", "task", str(task)).stdout)
    assert all(d["event"] == "done" and d["status"] == "completed" for d in done.values()), (done, shown)
    units = shown["reward_units"]
    for name in ("client-3", "client-4"):  # the Flower clients earned by the same rule as the others
        address = json.loads(cli(node, "query", "account", name).stdout)["address"]
        assert units.get(address, 0) > 0, (name, units)


def test_a_flower_client_that_does_not_fit_or_import_signs_nothing(node: Daemon, tmp_path: Path) -> None:
    created = cli(
        node, "client", "create-task", "--from", "user", "--digits-clients", str(N), "--join-blocks", "100"
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
