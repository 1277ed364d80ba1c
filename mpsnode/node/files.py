"""The files a node keeps outside its store: key files and genesis files.

A key file is JSON ``{"address": hex, "seed": hex}``, written 0600; an L1 key file (an Ethereum
account: the sequencer's, a depositor's) is JSON ``{"l1_address": 0x-hex, "private_key":
0x-hex}``, 0600 too. A genesis file is the JSON of ``Genesis.to_json``. The consensus layer
holds the values; reading and writing them is here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nacl.utils

from mpsnode.consensus.crypto import Keypair
from mpsnode.consensus.errors import GenesisError
from mpsnode.consensus.genesis import Genesis


def generate_key() -> Keypair:
    """A new key from the operating system's random source."""
    return Keypair.from_seed(nacl.utils.random(32))


def save_key(path: str | Path, key: Keypair) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"address": key.address.hex(), "seed": key.seed.hex()}, fh)
        fh.write("\n")


def load_key(path: str | Path) -> Keypair:
    """The key in ``path``; ``ValueError`` naming the file when it is missing or malformed."""
    try:
        doc = json.loads(Path(path).read_text())
        key = Keypair.from_seed(bytes.fromhex(doc["seed"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read key file {path}: {exc}") from None
    if "address" in doc and doc["address"] != key.address.hex():
        raise ValueError(f"key file {path}: address does not match the seed")
    return key


def save_l1_key(path: str | Path, address: str, private_key: str) -> None:
    """Write an L1 key file (0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"l1_address": address, "private_key": private_key}, fh)
        fh.write("\n")


def load_l1_key(path: str | Path) -> str:
    """The hex private key in L1 key file ``path``; ``ValueError`` naming the file otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
        key = doc["private_key"]
        if not isinstance(key, str) or len(bytes.fromhex(key.removeprefix("0x"))) != 32:
            raise ValueError("private_key is not 32 bytes of hex")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read L1 key file {path}: {exc}") from None
    return key


def save_genesis(genesis: Genesis, path: str | Path) -> None:
    Path(path).write_text(json.dumps(genesis.to_json(), indent=2) + "\n")


def load_genesis(path: str | Path) -> Genesis:
    """The genesis in ``path``; ``GenesisError`` when it cannot be read or is not a genesis."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise GenesisError("file", f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise GenesisError("file", f"{path} is not JSON: {exc}") from None
    return Genesis.from_json(doc)
