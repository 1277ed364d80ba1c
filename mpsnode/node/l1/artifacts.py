"""The compiled contracts (``contracts/artifacts.json``, written by ``mpsnode.node.l1.build``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
ARTIFACTS_PATH = CONTRACTS_DIR / "artifacts.json"
CONTRACTS = ("OutputOracle", "Portal", "GramStep")


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def artifact(name: str) -> Artifact:
    """The committed ABI and bytecode of contract ``name``."""
    data = json.loads(ARTIFACTS_PATH.read_text())["contracts"][name]
    return Artifact(name, data["abi"], data["bytecode"])
