"""Ed25519 keys and signatures (PyNaCl). An address is the 32-byte public key, shown as hex."""

from __future__ import annotations

from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

ADDRESS_LEN = 32
SIGNATURE_LEN = 64


@dataclass(frozen=True, slots=True)
class Keypair:
    seed: bytes  # 32-byte secret seed

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        """The key of a 32-byte ed25519 seed; ``ValueError`` for another length."""
        if len(seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")
        return cls(bytes(seed))

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def address(self) -> bytes:
        """The 32-byte public key: the account's address."""
        return bytes(self._signing_key.verify_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte ed25519 signature of ``message``."""
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


def parse_address(text: str) -> bytes:
    """Parse a 64-hex-digit address; ValueError with a clear message otherwise."""
    try:
        raw = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise ValueError(f"address {text!r} is not hex") from None
    if len(raw) != ADDRESS_LEN:
        raise ValueError(f"address {text!r} must be {ADDRESS_LEN} bytes ({2 * ADDRESS_LEN} hex digits)")
    return raw
