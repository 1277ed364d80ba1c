"""The ``mpsnode`` command line: parse (``parsers``), run the chosen command, turn errors into one line.

Each subcommand's parser names its command as ``"module:function"`` of this package; the module
is imported when the command runs (``importlib``), so that ``--help`` and the light commands do not
load numpy, numba, the store or the daemons. This is the one place the CLI imports late, and
``tests/test_cli.py`` resolves every command so that a wrong name cannot hide.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from mpsnode.cli.parsers import COMMAND, build_parser
from mpsnode.consensus.errors import MpsError
from mpsnode.node.errors import ConnectionLost

Command = Callable[[argparse.Namespace], int]


def resolve(target: str) -> Command:
    """The function a parser's ``"module:function"`` names, under ``mpsnode.cli``."""
    module, _, name = target.partition(":")
    command: Command = getattr(importlib.import_module(f"mpsnode.cli.{module}"), name)
    return command


#: Exit codes (README, "CLI"): 0 done; 1 done, but what was asked for failed (a failed receipt, a
#: divergence found by replay, a task that did not complete); 2 refused: bad input, or the node or the
#: chain said no; 3 the node cannot be reached; 4 timed out waiting for the node; 130 interrupted.
EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 2, 3, 4, 130


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def explain(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and the one line for an expected failure; None for a bug (its traceback shows)."""
    if isinstance(exc, MpsError):
        return EXIT_REFUSED, f"mpsnode: error {exc.code} ({type(exc).__name__}): {exc.reason}"
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, ConnectionLost)):
        return EXIT_REFUSED, f"mpsnode: {exc}"
    if isinstance(exc, PermissionError):
        return EXIT_REFUSED, f"mpsnode: {exc.strerror}: {exc.filename}" if exc.filename else f"mpsnode: {exc}"
    if isinstance(exc, OSError):  # connection refused and the like
        return EXIT_UNREACHABLE, f"mpsnode: cannot reach the node: {exc.strerror or exc}"
    trio = sys.modules.get("trio")  # a trio timeout can only come from a command that loaded trio
    if trio is not None and isinstance(exc, trio.TooSlowError):
        return EXIT_TIMEOUT, "mpsnode: timed out waiting for the node"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(resolve(getattr(args, COMMAND))(args) or 0)
    except BaseException as exc:  # sorted below; a bug's traceback is re-raised
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            print("mpsnode: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if any(isinstance(e, BrokenPipeError) for e in leaves):  # stdout closed early (| head): quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
            return 0
        if isinstance(exc, SystemExit):
            raise
        explained = [explain(e) for e in leaves]
        first = explained[0]
        if first is None or not all(explained):
            raise
        print(first[1], file=sys.stderr)
        return first[0]


if __name__ == "__main__":
    sys.exit(main())
