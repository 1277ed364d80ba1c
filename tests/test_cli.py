"""The command line's dispatch: every subcommand names a command that exists, and bad input is one line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from mpsnode.cli.main import main, resolve
from mpsnode.cli.parsers import COMMAND, build_parser


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


def test_help_does_not_load_the_heavy_modules() -> None:
    code = (
        "import sys; from mpsnode.cli.parsers import build_parser; build_parser(); "
        "print(','.join(m for m in ('numpy', 'numba', 'lmdb', 'sequencer.daemon', 'mpsnode.fl') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_a_missing_key_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["keys", "show", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read key file" in err
