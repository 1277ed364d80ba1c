"""Start-up time of the light commands, as whole processes: ``mpsnode --help``, ``keys``, ``inspect``.

Makes a devnet home (``mpsnode init``) and a chain on it (the genesis block and a block of
transfers, written in-process through ``Chain``), then runs each command ``--runs`` times as a
fresh ``mpsnode`` process (the venv's console script) and reports the median wall time (target <= 0.3 s), with
``python -c pass`` measured beside it: the interpreter's own start, which no change here can cut.
The commands run as on an ordinary install, bytecode cached: ``PYTHONDONTWRITEBYTECODE`` is
dropped from their environment (a machine that sets it compiles every module on every start,
0.35-0.38 s for ``inspect`` on the AVX2 machine instead of 0.21-0.28 s), and the first run of
each, which writes the cache, is reported apart (``first_run_s``) and not in the median.
Prints one JSON object per command.

    python bench/startup.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_S = 0.3


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - t0


def wall(cmd: Callable[[int], list[str]], runs: int) -> tuple[float, float]:
    """(the first run, the median of ``runs`` after it); run ``i`` is ``cmd(i)``."""
    times = [timed(cmd(i)) for i in range(runs + 1)]
    return times[0], statistics.median(times[1:])


def make_chain(home: Path) -> str:
    """A home with a chain of two blocks; returns an account address on it."""
    from mpsnode.consensus.tx import Transfer, Tx
    from mpsnode.node.chain import Chain
    from mpsnode.node.files import load_key
    from mpsnode.node.home import Home
    from mpsnode.node.store import LmdbStore

    subprocess.run(
        [sys.executable, "-m", "mpsnode.cli", "init", "--home", str(home), "--devnet"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    h = Home.open(home)
    g = h.genesis()
    user, seq = load_key(home / "keys" / "user.json"), load_key(home / "keys" / "sequencer.json")
    chain = Chain(LmdbStore(h.data_path, map_size=h.map_size), g)
    txs = [Tx(g.chain_id, user.address, n, 1, Transfer(seq.address, 1)).sign(user) for n in range(20)]
    chain.build(txs, g.genesis_time_ms + 1000, seq)
    chain.store.close()
    return user.address.hex()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="3 runs each")
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        home = Path(tmp) / "home"
        address = make_chain(home)
        script = Path(sys.executable).with_name("mpsnode")  # the console script a user runs
        cli = [str(script)] if script.exists() else [sys.executable, "-m", "mpsnode.cli"]
        _, interpreter = wall(lambda _: [sys.executable, "-c", "pass"], runs)
        commands: dict[str, Callable[[int], list[str]]] = {
            "help": lambda _: ["--help"],
            # a fresh file each run: keys new refuses to overwrite
            "keys_new": lambda i: ["keys", "new", "--out", str(Path(tmp) / f"k{i}.json")],
            "inspect_head": lambda _: ["inspect", "--home", str(home), "head"],
            "inspect_block": lambda _: ["inspect", "--home", str(home), "block", "1"],
            "inspect_account": lambda _: ["inspect", "--home", str(home), "account", address],
        }
        for name, argv in commands.items():
            first, median = wall(lambda i, argv=argv: [*cli, *argv(i)], runs)
            print(
                json.dumps(
                    {
                        "bench": f"startup_{name}",
                        "median_s": round(median, 3),
                        "first_run_s": round(first, 3),
                        "python_pass_s": round(interpreter, 3),
                        "runs": runs,
                        "target_s": TARGET_S,
                        "meets_target": median <= TARGET_S,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
