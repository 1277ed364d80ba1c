"""``mpsnode demo``: the whole job on the embedded devnet."""

from __future__ import annotations

import argparse
import sys

from mpsnode.demo.options import DemoOptions
from mpsnode.demo.run import run_demo
from mpsnode.fl.data import parse_alpha


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        alpha = parse_alpha(args.alpha)
    except ValueError as exc:
        print(f"mpsnode demo: {exc}", file=sys.stderr)
        return 2
    opts = DemoOptions(
        clients=args.clients,
        malicious=args.malicious,
        attack=args.attack,
        alpha=alpha,
        target=args.target,
        max_rounds=args.max_rounds,
        seed=args.seed,
        home=args.home,
        byzantine_f=args.byzantine_f,
        plot=args.plot,
        dishonest_sequencer=args.dishonest_sequencer,
        keep=args.keep,
    )
    return run_demo(opts)
