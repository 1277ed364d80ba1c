"""Ed25519 keys and signatures (PyNaCl). An address is the 32-byte public key, shown as hex."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

ADDRESS_LEN = 32
SIGNATURE_LEN = 64


@dataclass(frozen=True, slots=True)
class Keypair:
    seed: bytes  # 32-byte secret seed

    @classmethod
    def generate(cls) -> Keypair:
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        if len(seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")
        return cls(bytes(seed))

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def address(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Keypair({self.address.hex()[:16]}...)"


def verify(address: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is ``address``'s ed25519 signature of ``message``."""
    if len(address) != ADDRESS_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.signing.VerifyKey(address).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def address_hex(address: bytes) -> str:
    return address.hex()


def parse_address(text: str) -> bytes:
    """Parse a 64-hex-digit address; ValueError with a clear message otherwise."""
    try:
        raw = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise ValueError(f"address {text!r} is not hex") from None
    if len(raw) != ADDRESS_LEN:
        raise ValueError(f"address {text!r} must be {ADDRESS_LEN} bytes ({2 * ADDRESS_LEN} hex digits)")
    return raw


# Key files: JSON {"address": hex, "seed": hex}, written 0600.


def save_key(path: str | Path, key: Keypair) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"address": key.address.hex(), "seed": key.seed.hex()}, fh)
        fh.write("\n")


def load_key(path: str | Path) -> Keypair:
    try:
        doc = json.loads(Path(path).read_text())
        key = Keypair.from_seed(bytes.fromhex(doc["seed"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read key file {path}: {exc}") from None
    if "address" in doc and doc["address"] != key.address.hex():
        raise ValueError(f"key file {path}: address does not match the seed")
    return key
