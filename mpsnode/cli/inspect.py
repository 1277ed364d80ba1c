"""``mpsnode inspect``: read a node's store, no node running."""

from __future__ import annotations

import argparse

from mpsnode.cli.common import print_fields
from mpsnode.node.inspect import inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    print_fields(inspect(args.home, args.what), args.json)
    return 0
