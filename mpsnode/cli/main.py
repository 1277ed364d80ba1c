"""The ``mpsnode`` command line: parse (``parsers``), run the chosen command, turn errors into one line.

Each subcommand's parser names its command as ``"module:function"`` of this package; the module
is imported when the command runs (``importlib``), so that ``--help`` and the light commands do not
load numpy, numba, the store or the daemons. This is the one place the CLI imports late, and
``tests/test_cli.py`` resolves every command so that a wrong name cannot hide.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

import trio

from mpsnode.cli.parsers import COMMAND, build_parser
from mpsnode.consensus.errors import MpsError
from mpsnode.node.connection import ConnectionLost

Command = Callable[[argparse.Namespace], int]


def resolve(target: str) -> Command:
    """The function a parser's ``"module:function"`` names, under ``mpsnode.cli``."""
    module, _, name = target.partition(":")
    command: Command = getattr(importlib.import_module(f"mpsnode.cli.{module}"), name)
    return command


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(resolve(getattr(args, COMMAND))(args) or 0)
    except MpsError as exc:
        print(f"mpsnode: error {exc.code} ({type(exc).__name__}): {exc.reason}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionLost) as exc:
        print(f"mpsnode: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # connection refused and the like
        print(f"mpsnode: cannot reach the node: {exc}", file=sys.stderr)
        return 3
    except trio.TooSlowError:
        print("mpsnode: timed out waiting for the node", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
