"""``mpsnode keys``: make a key, or show a key file's address."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpsnode.cli.common import print_fields
from mpsnode.node.files import generate_key, load_key, save_key


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_cmd == "new":
        key = generate_key()
        if args.out:
            if Path(args.out).exists():
                raise SystemExit(f"mpsnode: {args.out} exists; refusing to overwrite a key")
            save_key(args.out, key)
        if args.out:
            print_fields({"address": key.address.hex(), "file": args.out}, args.json)
        else:  # nowhere to keep it: show the secret once, and say what it is
            print_fields({"address": key.address.hex(), "seed": key.seed.hex()}, args.json)
            print(
                "mpsnode: this key is not saved anywhere: the seed above is its secret; keep it safe, or use "
                "--out FILE next time",
                file=sys.stderr,
            )
    else:
        key = load_key(args.file)
        print_fields({"address": key.address.hex(), "file": args.file}, args.json)
    return 0
