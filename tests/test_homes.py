"""One process per home: a second sequencer or verifier on a home in use, or a second client daemon
on a journal in use, refuses to start with one line naming the holder's pid, before it opens the
store or says it is ready; after the holder dies (even by SIGKILL) the home is free again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpsnode.consensus.params import Params
from mpsnode.node.errors import HomeInUse
from mpsnode.node.lock import ExclusiveLock

from nodekit import LOCALHOST, REPO, Daemon, make_home, verifier

PARAMS = Params(block_time_ms=50)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpsnode.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused(done: subprocess.CompletedProcess[str], holder_pid: int, role: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "ready" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"in use by pid {holder_pid} ({role})" in lines[0], lines[0]


def test_a_second_sequencer_on_a_home_in_use_refuses(tmp_path: Path, daemons: list[Daemon]) -> None:
    make_home(tmp_path, params=PARAMS)
    first = Daemon(tmp_path)
    daemons.append(first)
    first.start()
    assert first.proc is not None
    assert_refused(
        run_cli("sequencer", "--home", str(tmp_path), "--listen", f"{LOCALHOST}:0"),
        first.proc.pid,
        "sequencer",
    )
    # a verifier on the same home is refused the same way
    assert_refused(
        run_cli(
            "verifier",
            "--home",
            str(tmp_path),
            "--upstream",
            f"{LOCALHOST}:{first.port}",
            "--listen",
            f"{LOCALHOST}:0",
        ),
        first.proc.pid,
        "sequencer",
    )
    first.kill()  # SIGKILL: the kernel drops the lock with the process
    second = Daemon(tmp_path)
    daemons.append(second)
    second.start()
    assert second.stop() == 0


def test_a_second_verifier_on_a_home_in_use_refuses(tmp_path: Path, daemons: list[Daemon]) -> None:
    make_home(tmp_path / "seq", params=PARAMS)
    seq = Daemon(tmp_path / "seq")
    daemons.append(seq)
    seq.start()
    (tmp_path / "v").mkdir()
    shutil.copy(tmp_path / "seq" / "genesis.json", tmp_path / "v" / "genesis.json")
    v = verifier(tmp_path / "v", seq.address)
    daemons.append(v)
    v.start()
    assert v.proc is not None
    assert_refused(
        run_cli(
            "verifier",
            "--home",
            str(tmp_path / "v"),
            "--upstream",
            f"{LOCALHOST}:{seq.port}",
            "--listen",
            f"{LOCALHOST}:0",
        ),
        v.proc.pid,
        "verifier",
    )
    assert v.stop() == 0


def test_a_second_client_daemon_on_a_journal_in_use_refuses(tmp_path: Path, daemons: list[Daemon]) -> None:
    make_home(tmp_path, clients=5, params=PARAMS)
    seq = Daemon(tmp_path)
    daemons.append(seq)
    seq.start()
    node = f"{LOCALHOST}:{seq.port}"
    created = run_cli(
        "client",
        "create-task",
        "--home",
        str(tmp_path),
        "--node",
        node,
        "--from",
        "user",
        "--digits-clients",
        "5",
        "--min-clients",
        "5",
        "--max-clients",
        "5",
        "--byzantine-f",
        "1",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    task_id = str(json.loads(created.stdout)["task_id"])
    client = [
        "client",
        "run",
        "--home",
        str(tmp_path),
        "--node",
        node,
        "--from",
        "client-0",
        "--task",
        task_id,
        "--digits-shard",
        "0/5",
        "--json",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "mpsnode.cli", *client],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    daemons.append(first)
    assert first.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the journal is taken once the first client has connected
        line = first.stdout.readline()
        if not line or json.loads(line)["event"] in ("staked", "joined"):
            break
    assert first.poll() is None, first.stderr.read() if first.stderr else ""
    assert_refused(run_cli(*client), first.pid, "client daemon")
    first.kill()
    first.wait(30)


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    lock = ExclusiveLock(tmp_path / "h" / ".lock", "sequencer").acquire()
    with pytest.raises(HomeInUse, match=r"in use by pid \d+ \(sequencer\)"):
        ExclusiveLock(tmp_path / "h" / ".lock", "verifier").acquire()
    lock.release()
    with ExclusiveLock(tmp_path / "h" / ".lock", "verifier"):
        pass
