"""The command line's dispatch: every subcommand names a command that exists, and bad input is one line."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from mpsnode.cli.common import SERVER_FLAGS
from mpsnode.cli.main import main, resolve
from mpsnode.cli.parsers import COMMAND, build_parser
from mpsnode.node.server import ServerConfig

from nodekit import REPO, make_home


def _leaves(parser: argparse.ArgumentParser, inherited: str | None = None) -> list[tuple[str, str | None]]:
    """(prog, command) of every leaf parser; a command set on a parent applies to its children."""
    target = parser.get_default(COMMAND) or inherited
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(parser.prog, target)]
    return [leaf for sub in subs for child in sub.choices.values() for leaf in _leaves(child, target)]


def test_every_subcommand_resolves_to_a_function() -> None:
    leaves = _leaves(build_parser())
    assert len(leaves) >= 20
    for prog, target in leaves:
        assert target, prog
        assert callable(resolve(target)), target


def test_every_flag_and_argument_has_help() -> None:
    def missing(parser: argparse.ArgumentParser, path: str) -> list[str]:
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += missing(sub, f"{path} {name}")
            elif not action.help and action.dest != "help":
                out.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return out

    assert missing(build_parser(), "mpsnode") == []


def test_help_does_not_load_the_heavy_modules() -> None:
    code = (
        "import sys, mpsnode.cli.main; from mpsnode.cli.parsers import build_parser; build_parser(); "
        "print(','.join(m for m in ('numpy', 'numba', 'lmdb', 'sequencer.daemon', 'mpsnode.fl') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


@pytest.mark.parametrize(
    "module", ["mpsnode.cli.main", "mpsnode.cli.inspect", "mpsnode.cli.keys", "mpsnode.cli.common"]
)
def test_the_light_commands_load_neither_the_network_nor_the_kernels(module: str) -> None:
    """``--help``, ``inspect`` and ``keys`` start at once (bench/startup.py): no trio, numpy, numba, web3,
    and no pycryptodome, whose cffi set-up parses C declarations at import (keccak loads on first use)."""
    heavy = (
        "Crypto",
        "pycparser",
        "trio",
        "numpy",
        "numba",
        "web3",
        "eth_account",
        "sequencer",
        "verifier",
        "mpsnode.consensus.stf",
    )
    code = f"import sys, {module}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


def test_server_flags_are_server_config_fields() -> None:
    assert set(SERVER_FLAGS) <= {f.name for f in fields(ServerConfig)}


def test_a_missing_key_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["keys", "show", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read key file" in err


# ---------------------------------------------------------------------------------------------
# Bad input: one line, a documented exit code, never a traceback


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    net = make_home(root / "home", clients=2)
    from mpsnode.node.chain import Chain
    from mpsnode.node.store import LmdbStore

    store = LmdbStore(root / "home" / "data", map_size=1 << 26)  # a chain to inspect, whatever runs first
    Chain(store, net.genesis)
    store.close()
    (root / "garbage").write_text("not msgpack, not a key, not an array\n")
    (root / "empty").mkdir()
    return {"home": root / "home", "garbage": root / "garbage", "empty": root / "empty"}


BAD = [
    # (name, argv with {home} {garbage} {empty} {busy}, expected exit code[, what the line must say])
    ("sequencer-no-home", ["sequencer", "--home", "{empty}"], 2),
    ("sequencer-busy-port", ["sequencer", "--home", "{home}", "--listen", "127.0.0.1:{busy}"], 2),
    (
        "sequencer-busy-metrics",
        ["sequencer", "--home", "{home}", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:{busy}"],
        2,
    ),
    ("sequencer-bad-listen", ["sequencer", "--home", "{home}", "--listen", "nowhere:port"], 2),
    ("verifier-bad-upstream", ["verifier", "--home", "{empty}", "--upstream", "x:y"], 2),
    (
        "verifier-no-genesis",
        ["verifier", "--home", "{empty}", "--upstream", "127.0.0.1:1"],
        2,
        "--genesis FILE",
    ),
    ("query-unreachable", ["query", "status", "--node", "127.0.0.1:1"], 3),
    ("query-bad-node", ["query", "status", "--node", "127.0.0.1:notaport"], 2),
    (
        "tx-bad-address",
        [
            "tx",
            "transfer",
            "--to",
            "zz",
            "--amount",
            "1",
            "--home",
            "{home}",
            "--from",
            "user",
            "--node",
            "127.0.0.1:1",
        ],
        2,
    ),
    ("tx-no-signer", ["tx", "stake", "--amount", "1", "--node", "127.0.0.1:1"], 2),
    (
        "tx-delta-not-npy",
        [
            "tx",
            "reveal-update",
            "--salt",
            "00" * 32,
            "--task",
            "1",
            "--round",
            "1",
            "--delta",
            "{garbage}",
            "--home",
            "{home}",
            "--from",
            "user",
            "--node",
            "127.0.0.1:1",
        ],
        2,
    ),
    ("keys-missing", ["keys", "show", "{empty}/nope.json"], 2),
    ("keys-not-a-key", ["keys", "show", "{garbage}"], 2),
    ("inspect-no-home", ["inspect", "--home", "{empty}"], 2),
    ("replay-missing", ["replay", "{empty}/nope"], 2),
    ("replay-garbage", ["replay", "{garbage}"], 2),
    ("replay-dir", ["replay", "{empty}"], 2),
    ("export-no-home", ["export", "--home", "{empty}", "--out", "{empty}/x"], 2),
    (
        "client-bad-shard",
        [
            "client",
            "run",
            "--task",
            "1",
            "--digits-shard",
            "9/3",
            "--home",
            "{home}",
            "--from",
            "client-0",
            "--node",
            "127.0.0.1:1",
        ],
        2,
    ),
    (
        "client-missing-data",
        [
            "client",
            "run",
            "--task",
            "1",
            "--data",
            "{empty}/nope.npz",
            "--home",
            "{home}",
            "--from",
            "client-0",
            "--node",
            "127.0.0.1:1",
        ],
        2,
    ),
    (
        "client-text-data",
        [
            "client",
            "run",
            "--task",
            "1",
            "--data",
            "{garbage}",
            "--home",
            "{home}",
            "--from",
            "client-0",
            "--node",
            "127.0.0.1:1",
        ],
        2,
    ),
    ("init-negative-clients", ["init", "--home", "{empty}/new", "--clients", "-3"], 2),
    ("demo-too-few-clients", ["demo", "--clients", "2", "--malicious", "0"], 2),
    (
        "client-unreachable",
        [
            "client",
            "run",
            "--task",
            "1",
            "--digits-shard",
            "0/3",
            "--home",
            "{home}",
            "--from",
            "client-0",
            "--node",
            "127.0.0.1:1",
        ],
        2,
        "cannot reach the node at 127.0.0.1:1",
    ),
    ("inspect-bad-account", ["inspect", "--home", "{home}", "account", "nobody"], 2, "nor a key name"),
    ("events-no-selector", ["query", "events", "--node", "127.0.0.1:1"], 2, "--height H"),
    ("unknown-flag", ["query", "status", "--frobnicate"], 2),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_no_traceback(case: tuple, bad_inputs: dict[str, Path]) -> None:
    name, argv, code, *says = case
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {k: str(v) for k, v in bad_inputs.items()} | {"busy": str(busy.getsockname()[1])}
        done = subprocess.run(
            [sys.executable, "-m", "mpsnode.cli", *(a.format(**values) for a in argv)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith('{"ts":')]
    assert lines, "a refusal says why"
    if name != "unknown-flag":  # argparse prints its usage line too
        assert len(lines) == 1, done.stderr
    assert "allow_pickle" not in done.stderr  # never suggest unsafe loading
    for text in says:
        assert text in done.stderr, done.stderr


def test_a_closed_stdout_exits_quietly(bad_inputs: dict[str, Path]) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` that has already gone
    done = subprocess.run(
        [sys.executable, "-m", "mpsnode.cli", "init", "--home", str(bad_inputs["empty"] / "p")],
        cwd=REPO,
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(writer)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_new_keys_and_networks_are_their_own(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "mpsnode.cli", "keys", "new", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    key = json.loads(shown.stdout)
    assert shown.returncode == 0 and len(key["seed"]) == 64 and "not saved" in shown.stderr
    made = subprocess.run(
        [sys.executable, "-m", "mpsnode.cli", "init", "--home", str(tmp_path / "net"), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["chain_id"] != "mps-devnet"  # only --devnet uses the public devnet's id


def test_text_output_is_aligned_fields(capsys: pytest.CaptureFixture[str]) -> None:
    from mpsnode.cli.common import print_fields

    print_fields(
        {
            "height": 7,
            "verifier": {"upstream": "127.0.0.1:1", "lag": 0},
            "blocks": [{"height": 1, "events": 2}, {"height": 2, "events": 0}],
        },
        as_json=False,
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["height", "7"]
    assert lines[1].split() == ["verifier.upstream", "127.0.0.1:1"] and lines[2].split() == [
        "verifier.lag",
        "0",
    ]
    assert lines[3].split() == ["blocks", "2"] and lines[4].strip() == "height 1  events 2"
    assert len({line.index(line.split()[1]) for line in lines[:4]}) == 1  # one column for the values


def test_slash_rules_are_named_in_event_output() -> None:
    from mpsnode.cli.node import event_json
    from mpsnode.consensus.events import ParticipantRemoved, RemovalReason, Slashed

    slashed = Slashed(1, b"\x01" * 32, 500, int(RemovalReason.DIRECTION), 3)
    assert event_json(slashed)["rule"] == "direction" and event_json(slashed)["reason"] == 2
    removed = ParticipantRemoved(1, b"\x01" * 32, int(RemovalReason.KRUM_SCORE))
    assert event_json(removed)["rule"] == "krum_score"


def test_cli_aggregator_names_match_the_protocol() -> None:
    from mpsnode.cli.parsers import AGGREGATORS
    from mpsnode.consensus.tx import Aggregator

    assert sorted(AGGREGATORS.values()) == sorted(int(a) for a in Aggregator)
    assert (
        AGGREGATORS["nnm"] == Aggregator.NNM_MULTI_KRUM and AGGREGATORS["multi-krum"] == Aggregator.MULTI_KRUM
    )
