"""``mpsnode demo`` as a user runs it: a real sequencer and verifier process, clients, a verdict, a plot.

A small run (6 clients, 1 attacker, target 80%) keeps it to a few seconds; the default run (10
clients, 2 attackers, 90%) is what ``make demo`` does and is timed in the README.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpsnode.demo.run import DemoOptions, run_demo

from nodekit import REPO


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"^\s+(?:sequencer|verifier)\s+pid (\d+)", output, re.MULTILINE)]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone for our purpose only once reaped; the demo waits for its children
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    """`mpsnode demo` with 6 clients, one attacking, seed 7, and ``args``; output captured."""
    command = [
        sys.executable,
        "-m",
        "mpsnode.cli",
        "demo",
        "--clients",
        "6",
        "--malicious",
        "1",
        "--seed",
        "7",
    ]
    return subprocess.run(
        [*command, *args], check=False, cwd=REPO, capture_output=True, text=True, env=_env(), timeout=300
    )


def test_small_demo_completes_slashes_the_attacker_and_the_verifier_agrees(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    done = _demo("--target", "0.8", "--max-rounds", "8", "--home", str(home))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "RESULT: OK" in out
    assert re.search(r"task 1 COMPLETED after \d+ rounds", out)
    assert "attackers slashed   1/1; honest clients slashed 0/5" in out
    assert re.search(r"verifier\s+\d+ blocks verified, all roots match", out)
    assert re.search(r"round\s+1\s+accuracy", out)
    attacker = re.search(
        r"(client-\d) +\w+ +ATTACKER \(scaled\) +10000000 +\(jailed\) 5000000 +5000000 +0 +0\.0% +0", out
    )
    assert attacker, out
    assert re.search(r"contribution +0\.0% per attacker, \d+\.\d% per honest client", out), out
    assert (home / "demo.png").stat().st_size > 10_000
    assert (home / "data").is_dir() and (home / "verifier" / "data").is_dir()
    assert f"mpsnode replay --home {home}" in out
    pids = _pids(out)
    assert len(pids) == 2 and all(_gone(p) for p in pids)


def test_a_free_rider_is_paid_nothing(tmp_path: Path) -> None:
    """Zeros are never slashed (they sit in the middle of the crowd); pay follows contribution."""
    done = _demo(
        "--attack", "free_rider_zeros", "--target", "0.9", "--max-rounds", "12", "--no-plot",
        "--home", str(tmp_path / "demo"),
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    rider = re.search(
        r"client-\d +\w+ +ATTACKER \(free_rider_zeros\) +10000000 +10000000 +- +\d+ +0\.0% +0\b", out
    )
    assert rider, out  # never slashed, paid nothing
    honest = re.findall(r"client-\d +\w+ +honest +10000000 +10000000 +- +\d+ +(\d+\.\d)% +(\d+)", out)
    assert len(honest) == 5 and all(int(paid) > 0 for _, paid in honest), out


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_demo_ctrl_c_stops_every_process(tmp_path: Path, presses: int) -> None:
    """Ctrl-C stops the run; a second one, while the demo stops its daemons, kills them instead."""
    home = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpsnode.cli",
            "demo",
            "--clients",
            "6",
            "--malicious",
            "1",
            "--target",
            "1.0",
            "--max-rounds",
            "200",
            "--no-plot",
            "--home",
            str(home),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 120
    try:
        while "round   2" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "round   2" in seen, seen
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            while "stopping the verifier" not in seen:
                line = proc.stdout.readline()
                if not line:
                    break
                seen += line
            proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, seen + rest
    assert "interrupted" in seen + rest and "Traceback" not in seen + rest, seen + rest
    pids = _pids(seen)
    assert len(pids) == 2 and all(_gone(p) for p in pids)


def test_demo_refuses_options_that_cannot_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(DemoOptions(clients=4)) == 2
    assert run_demo(DemoOptions(clients=6, malicious=3)) == 2  # 6 clients tolerate f = 1 < 3 attackers
    assert run_demo(DemoOptions(attack="nope")) == 2
    (tmp_path / "x").write_text("taken")
    assert run_demo(DemoOptions(home=str(tmp_path))) == 2
    out = capsys.readouterr().err  # refusals go to stderr, as every command's do
    assert "--clients must be" in out and "tolerate at most f = 1" in out and "--attack must be" in out
    assert "is not empty" in out


def test_demo_dishonest_sequencer_is_caught_on_l1(tmp_path: Path) -> None:
    """EVALUATION ONLY: after the task the sequencer posts a forged output; the run must end with
    the committee's challenge upheld, the forged withdrawal refused, the bond paid, and say so."""
    done = _demo(
        "--dishonest-sequencer",
        "--max-rounds",
        "8",
        "--target",
        "0.8",
        "--no-plot",
        "--home",
        str(tmp_path / "d"),
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("challenge:"))
    assert "upheld by 2 of 2" in line and "portal: the output does not match its root" in line
    assert "went to the challenger" in line and "halted: OK" in line
    assert any(x.startswith("settlement:") and "EQUAL" in x for x in out.splitlines())
