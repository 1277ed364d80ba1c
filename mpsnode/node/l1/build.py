"""Compile the contracts with the pinned Vyper compiler and write ``contracts/artifacts.json``.

``python -m mpsnode.node.l1.build`` rewrites the artifacts; ``--check`` recompiles and exits 1 if
they differ from what is committed (a test runs the same comparison). The artifacts hold each
contract's ABI, deploy bytecode, a hash of its source and the compiler version, so a node never
needs the compiler to deploy or talk to the contracts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

import vyper
from vyper.compiler import compile_code

from mpsnode.node.l1.artifacts import ARTIFACTS_PATH, CONTRACTS, CONTRACTS_DIR


def compile_all() -> dict[str, Any]:
    """Every contract compiled afresh, as the artifacts file holds them."""
    out: dict[str, Any] = {"compiler": f"vyper {vyper.__version__}", "contracts": {}}
    for name in CONTRACTS:
        source = (CONTRACTS_DIR / f"{name}.vy").read_text()
        compiled = compile_code(source, output_formats=["abi", "bytecode"])
        out["contracts"][name] = {
            "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "abi": compiled["abi"],
            "bytecode": compiled["bytecode"],
        }
    return out


def render(artifacts: dict[str, Any]) -> str:
    """The artifacts file's exact text."""
    return json.dumps(artifacts, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed artifacts")
    args = parser.parse_args(argv)
    text = render(compile_all())
    if args.check:
        same = ARTIFACTS_PATH.exists() and ARTIFACTS_PATH.read_text() == text
        print("artifacts match the sources" if same else f"{ARTIFACTS_PATH} is stale: run make contracts")
        return 0 if same else 1
    ARTIFACTS_PATH.write_text(text)
    print(f"wrote {ARTIFACTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
