"""Transactions: the nine kinds, their canonical encoding, signing and stateless validation.

``Tx = [version=1, kind, chain_id, sender, nonce, fee, body]`` and ``SignedTx = [Tx, signature]``.
The signature is over ``signing_hash = H(mps-tx-sign, encode(Tx))``, which is also the tx id.
``decode_signed_tx`` raises ``InvalidTransaction`` (``DecodeError``) for any bad input.

DEPOSIT is a system tx: the copy of one L1 portal event, put in a block by the sequencer, never
signed by a user (``deposit_tx``: sender, nonce, fee and signature all zero). Its validity is the
L1 event, which the STF checks against the ``L1Facts`` a node read (docs/SETTLEMENT.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any, ClassVar

from mpsnode.consensus import crypto
from mpsnode.consensus.encoding import (
    decode,
    encode,
    expect_bytes,
    expect_list,
    expect_str,
    expect_uint,
)
from mpsnode.consensus.errors import (
    DecodeError,
    InvalidTransaction,
)
from mpsnode.consensus.hashing import COMMIT, TX_LEAF, TX_SIGN, UPDATE, H
from mpsnode.consensus.params import Params
from mpsnode.consensus.records import NamedCode
from mpsnode.consensus.settlement import L1_ADDRESS_LEN

TX_VERSION = 1
MAX_TX_BYTES_HARD = 64 << 20  # decoding bound when no params are at hand
ADDR = crypto.ADDRESS_LEN


class Kind(IntEnum):
    TRANSFER = 1
    STAKE = 2
    UNSTAKE = 3
    CREATE_TASK = 4
    JOIN_TASK = 5
    COMMIT_UPDATE = 6
    REVEAL_UPDATE = 7
    DEPOSIT = 8
    WITHDRAW = 9


SYSTEM_SENDER = bytes(ADDR)  # the sender of a system tx (DEPOSIT): no key signs for it
SYSTEM_SIGNATURE = bytes(crypto.SIGNATURE_LEN)


# ---------------------------------------------------------------------------------------------
# Bodies


@dataclass(frozen=True, slots=True)
class Transfer:
    KIND: ClassVar[Kind] = Kind.TRANSFER
    to: bytes
    amount: int

    def encode_obj(self) -> list[Any]:
        """The body as ``[to, amount]``."""
        return [self.to, self.amount]

    @classmethod
    def decode_obj(cls, obj: Any) -> Transfer:
        """The body of ``[to, amount]``; ``DecodeError`` for a malformed field."""
        to, amount = expect_list(obj, 2, "transfer body")
        return cls(expect_bytes(to, "to", ADDR), expect_uint(amount, "amount"))


@dataclass(frozen=True, slots=True)
class Stake:
    KIND: ClassVar[Kind] = Kind.STAKE
    amount: int

    def encode_obj(self) -> list[Any]:
        """The body as ``[amount]``."""
        return [self.amount]

    @classmethod
    def decode_obj(cls, obj: Any) -> Stake:
        """The body of ``[amount]``; ``DecodeError`` for a malformed field."""
        (amount,) = expect_list(obj, 1, "stake body")
        return cls(expect_uint(amount, "amount"))


@dataclass(frozen=True, slots=True)
class Unstake:
    KIND: ClassVar[Kind] = Kind.UNSTAKE
    amount: int

    def encode_obj(self) -> list[Any]:
        """The body as ``[amount]``."""
        return [self.amount]

    @classmethod
    def decode_obj(cls, obj: Any) -> Unstake:
        """The body of ``[amount]``; ``DecodeError`` for a malformed field."""
        (amount,) = expect_list(obj, 1, "unstake body")
        return cls(expect_uint(amount, "amount"))


class Aggregator(NamedCode):
    """``CreateTask.aggregator``: how a round's remaining updates are pre-aggregated before
    Multi-Krum (docs/PROTOCOL.md section 7, ``mpsnode.consensus.robust``)."""

    MULTI_KRUM = 1  # Multi-Krum on the raw updates
    NNM_MULTI_KRUM = 2  # nearest-neighbour mixing, then Multi-Krum


DEFAULT_AGGREGATOR = int(Aggregator.NNM_MULTI_KRUM)  # a plain int: the codec takes no enums


@dataclass(frozen=True, slots=True)
class CreateTask:
    KIND: ClassVar[Kind] = Kind.CREATE_TASK
    arch: tuple[int, ...]
    scale_bits: int
    init_weights: bytes  # int32 little-endian, units of 2^-scale_bits
    target_accuracy_bps: int
    max_rounds: int
    min_clients: int
    max_clients: int
    byzantine_f: int
    join_blocks: int
    round_blocks: int
    fee_per_round: int
    local_epochs: int
    val_x: bytes  # int16 little-endian, samples x in, row-major
    val_y: bytes  # uint8 labels
    aggregator: int = DEFAULT_AGGREGATOR  # Aggregator

    def encode_obj(self) -> list[Any]:
        """The body's 15 fields in protocol order."""
        return [
            list(self.arch),
            self.scale_bits,
            self.init_weights,
            self.target_accuracy_bps,
            self.max_rounds,
            self.min_clients,
            self.max_clients,
            self.byzantine_f,
            self.join_blocks,
            self.round_blocks,
            self.fee_per_round,
            self.local_epochs,
            self.val_x,
            self.val_y,
            self.aggregator,
        ]

    @classmethod
    def decode_obj(cls, obj: Any) -> CreateTask:
        """The body of its 15 fields; ``DecodeError`` for a malformed field (the limits are
        ``validate_create_task``'s)."""
        f = expect_list(obj, 15, "create_task body")
        arch = tuple(expect_uint(w, "arch width") for w in expect_list(f[0], None, "arch"))
        names = (
            "scale_bits",
            "target_accuracy_bps",
            "max_rounds",
            "min_clients",
            "max_clients",
            "byzantine_f",
            "join_blocks",
            "round_blocks",
            "fee_per_round",
            "local_epochs",
        )
        ints = {n: expect_uint(v, n) for v, n in zip([f[1], *f[3:12]], names, strict=True)}
        return cls(
            arch=arch,
            init_weights=expect_bytes(f[2], "init_weights"),
            val_x=expect_bytes(f[12], "val_x"),
            val_y=expect_bytes(f[13], "val_y"),
            aggregator=expect_uint(f[14], "aggregator"),
            **ints,
        )


@dataclass(frozen=True, slots=True)
class JoinTask:
    KIND: ClassVar[Kind] = Kind.JOIN_TASK
    task_id: int

    def encode_obj(self) -> list[Any]:
        """The body as ``[task_id]``."""
        return [self.task_id]

    @classmethod
    def decode_obj(cls, obj: Any) -> JoinTask:
        """The body of ``[task_id]``; ``DecodeError`` for a malformed field."""
        (task_id,) = expect_list(obj, 1, "join_task body")
        return cls(expect_uint(task_id, "task_id"))


@dataclass(frozen=True, slots=True)
class CommitUpdate:
    """Round phase 1: a participant binds itself to its delta without showing it."""

    KIND: ClassVar[Kind] = Kind.COMMIT_UPDATE
    task_id: int
    round: int
    commitment: bytes  # update_commitment(...) of the delta it will reveal

    def encode_obj(self) -> list[Any]:
        """The body as ``[task_id, round, commitment]``."""
        return [self.task_id, self.round, self.commitment]

    @classmethod
    def decode_obj(cls, obj: Any) -> CommitUpdate:
        """The body of ``[task_id, round, commitment]``; ``DecodeError`` for a malformed field."""
        task_id, round_, commitment = expect_list(obj, 3, "commit_update body")
        return cls(
            expect_uint(task_id, "task_id"),
            expect_uint(round_, "round"),
            expect_bytes(commitment, "commitment", 32),
        )


@dataclass(frozen=True, slots=True)
class RevealUpdate:
    """Round phase 2: the delta and the salt that open the participant's commitment."""

    KIND: ClassVar[Kind] = Kind.REVEAL_UPDATE
    task_id: int
    round: int
    delta: bytes  # int16 little-endian, one per parameter
    salt: bytes  # 32 bytes the client chose at random when it committed
    # H(mps-update, delta), kept once computed: not part of the value
    _delta_hash: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def encode_obj(self) -> list[Any]:
        """The body as ``[task_id, round, delta, salt]``."""
        return [self.task_id, self.round, self.delta, self.salt]

    def delta_hash(self) -> bytes:
        """``H(mps-update, delta)``, hashed once per body (a node may hash it ahead, on another
        thread, so that the state transition finds it done)."""
        h = self._delta_hash
        if h is None:
            h = H(UPDATE, self.delta)
            object.__setattr__(self, "_delta_hash", h)
        return h

    @classmethod
    def decode_obj(cls, obj: Any) -> RevealUpdate:
        """The body of ``[task_id, round, delta, salt]``; ``DecodeError`` for a malformed field."""
        task_id, round_, delta, salt = expect_list(obj, 4, "reveal_update body")
        return cls(
            expect_uint(task_id, "task_id"),
            expect_uint(round_, "round"),
            expect_bytes(delta, "delta"),
            expect_bytes(salt, "salt", 32),
        )


def update_commitment(
    chain_id: str, task_id: int, round_: int, sender: bytes, delta: bytes, salt: bytes
) -> bytes:
    """``H(mps-commit, encode([chain_id, task_id, round, sender, H(mps-update, delta), salt]))``: binds
    the chain, the task, the round, the sender and the delta; the salt hides the delta."""
    return commitment_of_hash(chain_id, task_id, round_, sender, H(UPDATE, delta), salt)


def commitment_of_hash(
    chain_id: str, task_id: int, round_: int, sender: bytes, delta_hash: bytes, salt: bytes
) -> bytes:
    """``update_commitment`` from ``H(mps-update, delta)`` (a node hashes a revealed delta once)."""
    return H(COMMIT, encode([chain_id, task_id, round_, sender, delta_hash, salt]))


def commit_reveal(
    chain_id: str, task_id: int, round_: int, sender: bytes, delta: bytes, salt: bytes
) -> tuple[CommitUpdate, RevealUpdate]:
    """The two bodies that submit ``delta`` in a round: the commitment, then its opening."""
    commitment = update_commitment(chain_id, task_id, round_, sender, delta, salt)
    return CommitUpdate(task_id, round_, commitment), RevealUpdate(task_id, round_, delta, salt)


@dataclass(frozen=True, slots=True)
class DepositBody:
    """DEPOSIT: the ``index``-th deposit of the L1 portal, made in L1 block ``l1_block``."""

    KIND: ClassVar[Kind] = Kind.DEPOSIT
    index: int
    l1_block: int
    recipient: bytes
    amount: int

    def encode_obj(self) -> list[Any]:
        """The body as ``[index, l1_block, recipient, amount]``."""
        return [self.index, self.l1_block, self.recipient, self.amount]

    @classmethod
    def decode_obj(cls, obj: Any) -> DepositBody:
        """The body of ``[index, l1_block, recipient, amount]``; ``DecodeError`` for a malformed field."""
        index, l1_block, recipient, amount = expect_list(obj, 4, "deposit body")
        return cls(
            expect_uint(index, "index"),
            expect_uint(l1_block, "l1_block"),
            expect_bytes(recipient, "recipient", ADDR),
            expect_uint(amount, "amount"),
        )


@dataclass(frozen=True, slots=True)
class Withdraw:
    """WITHDRAW: move ``amount`` from the sender's balance into a withdrawal record payable to
    ``l1_address`` on L1 once an output holding it finalizes."""

    KIND: ClassVar[Kind] = Kind.WITHDRAW
    l1_address: bytes
    amount: int

    def encode_obj(self) -> list[Any]:
        """The body as ``[l1_address, amount]``."""
        return [self.l1_address, self.amount]

    @classmethod
    def decode_obj(cls, obj: Any) -> Withdraw:
        """The body of ``[l1_address, amount]``; ``DecodeError`` for a malformed field."""
        l1_address, amount = expect_list(obj, 2, "withdraw body")
        return cls(expect_bytes(l1_address, "l1_address", L1_ADDRESS_LEN), expect_uint(amount, "amount"))


Body = (
    Transfer | Stake | Unstake | CreateTask | JoinTask | CommitUpdate | RevealUpdate | DepositBody | Withdraw
)
BODY_TYPES: dict[int, Any] = {
    t.KIND: t
    for t in (
        Transfer,
        Stake,
        Unstake,
        CreateTask,
        JoinTask,
        CommitUpdate,
        RevealUpdate,
        DepositBody,
        Withdraw,
    )
}


def deposit_tx(chain_id: str, body: DepositBody) -> SignedTx:
    """The DEPOSIT system tx carrying ``body``: no sender, nonce, fee or signature."""
    tx = Tx(chain_id, SYSTEM_SENDER, 0, 0, body)
    obj = [tx.encode_obj(), SYSTEM_SIGNATURE]
    return SignedTx(tx, SYSTEM_SIGNATURE, tx.signing_hash(), len(encode(obj)))


# ---------------------------------------------------------------------------------------------
# Tx and SignedTx


@dataclass(frozen=True, slots=True)
class Tx:
    chain_id: str
    sender: bytes
    nonce: int
    fee: int
    body: Body
    version: int = TX_VERSION

    @property
    def kind(self) -> Kind:
        """The tx kind, from its body's type."""
        return self.body.KIND

    def encode_obj(self) -> list[Any]:
        """The tx as ``[version, kind, chain_id, sender, nonce, fee, body]``."""
        return [
            self.version,
            int(self.kind),
            self.chain_id,
            self.sender,
            self.nonce,
            self.fee,
            self.body.encode_obj(),
        ]

    def encode(self) -> bytes:
        """The tx's canonical bytes (what is signed, through ``signing_hash``)."""
        return encode(self.encode_obj())

    def signing_hash(self) -> bytes:
        """``H(mps-tx-sign, encode(tx))``: the message signed, and the tx id."""
        return H(TX_SIGN, self.encode())

    def sign(self, key: crypto.Keypair) -> SignedTx:
        """The tx signed by ``key`` (the sender's key)."""
        if key.address != self.sender:
            raise ValueError("signing key does not match the tx sender")
        tx_bytes = self.encode()
        tx_id = H(TX_SIGN, tx_bytes)
        signature = key.sign(tx_id)
        return SignedTx(self, signature, tx_id, len(encode([self.encode_obj(), signature])))

    @classmethod
    def decode_obj(cls, obj: Any) -> Tx:
        """A tx from its decoded array; ``DecodeError`` for an unknown version or kind or a malformed field."""
        version, kind, chain_id, sender, nonce, fee, body = expect_list(obj, 7, "tx")
        expect_uint(version, "version")
        if version != TX_VERSION:
            raise DecodeError(f"unknown tx version {version}")
        kind = expect_uint(kind, "kind")
        body_type = BODY_TYPES.get(kind)
        if body_type is None:
            raise DecodeError(f"unknown tx kind {kind}")
        return cls(
            expect_str(chain_id, "chain_id"),
            expect_bytes(sender, "sender", ADDR),
            expect_uint(nonce, "nonce"),
            expect_uint(fee, "fee"),
            body_type.decode_obj(body),
            version,
        )


@dataclass(frozen=True, slots=True)
class SignedTx:
    tx: Tx
    signature: bytes
    tx_id: bytes  # = tx.signing_hash(), computed once
    size: int  # length of the canonical SignedTx encoding
    # the canonical bytes it was decoded from, kept so that a block is encoded without encoding its
    # txs again; not part of the value (two equal txs are equal whether or not they hold them)
    encoded: bytes | None = field(default=None, compare=False, repr=False)

    def encode_obj(self) -> list[Any]:
        """The signed tx as ``[tx, signature]``."""
        return [self.tx.encode_obj(), self.signature]

    def encode(self) -> bytes:
        """The signed tx's canonical bytes."""
        return self.encoded if self.encoded is not None else encode(self.encode_obj())

    def delta_span(self) -> tuple[int, int] | None:
        """Where a REVEAL_UPDATE's delta lies in ``encode()`` (None for other kinds): the body's
        last fields, the 32-byte salt and then the 64-byte signature, follow it, 2-byte headers each."""
        body = self.tx.body
        if type(body) is not RevealUpdate:
            return None
        data = self.encode()
        stop = len(data) - (2 + 32) - (2 + crypto.SIGNATURE_LEN)
        start = stop - len(body.delta)
        return (start, stop) if start >= 0 and data.startswith(body.delta, start) else None

    def with_id(self) -> SignedTx:
        """This tx with its id hashed, if ``from_obj`` left it to hash (else itself)."""
        if self.tx_id or self.encoded is None:
            return self
        return replace(self, tx_id=_id_of(self.encoded))

    def leaf(self) -> bytes:
        """The item committed in a block's tx_root."""
        return H(TX_LEAF, self.tx_id + self.signature)

    def verify_signature(self) -> bool:
        """Whether the signature is the sender's over the tx id."""
        return crypto.verify(self.tx.sender, self.tx_id, self.signature)

    @classmethod
    def from_obj(
        cls, obj: Any, size: int | None = None, encoded: bytes | None = None, *, hash_id: bool = True
    ) -> SignedTx:
        """Build from an already-decoded (canonical) object; raises DecodeError. ``encoded``: the
        canonical bytes ``obj`` was decoded from, ``[tx, signature]``: an array header byte, the tx's
        bytes, then the 64-byte signature's 2-byte header and itself; the tx id hashes that middle.
        ``hash_id=False`` (with ``encoded``) leaves the id to hash later: ``tx_id`` is empty until
        ``with_id()`` (a node hashes a large tx's id on another thread than the one decoding it)."""
        tx_obj, signature = expect_list(obj, 2, "signed tx")
        tx = Tx.decode_obj(tx_obj)
        expect_bytes(signature, "signature", crypto.SIGNATURE_LEN)
        if encoded is None:
            tx_id = H(TX_SIGN, encode(tx_obj))
        elif not hash_id:
            tx_id = b""
        else:
            tx_id = _id_of(encoded)
        if size is None:
            size = len(encoded) if encoded is not None else len(encode(obj))
        return cls(tx, signature, tx_id, size, encoded)


def _id_of(encoded: bytes) -> bytes:
    """The tx id of a SignedTx's canonical bytes: the hash of the tx's own, between the array header
    and the signature (a view: no copy of the tx)."""
    return H(TX_SIGN, memoryview(encoded)[1 : -2 - crypto.SIGNATURE_LEN])


def hash_ahead(txs: Iterable[SignedTx]) -> None:
    """Hash every REVEAL_UPDATE's delta now (``RevealUpdate.delta_hash``): hashlib lets go of the
    GIL for large inputs, so a node calls this on a worker thread and the state transition, on
    another, finds the hashes done."""
    for stx in txs:
        body = stx.tx.body
        if type(body) is RevealUpdate:
            body.delta_hash()


def decode_signed_tx(data: bytes, max_bytes: int = MAX_TX_BYTES_HARD, *, hash_id: bool = True) -> SignedTx:
    """Decode a canonical SignedTx; ``InvalidTransaction`` with a reason for any bad input.
    ``hash_id=False``: the id is left to hash (``SignedTx.from_obj``)."""
    try:
        obj = decode(data, max_bytes=max_bytes)
        return SignedTx.from_obj(obj, len(data), bytes(data), hash_id=hash_id)
    except InvalidTransaction:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract is: never another exception type
        raise DecodeError(f"malformed tx: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Stateless validation


def compute_min_fee(size: int, params: Params) -> int:
    """The least fee a tx of ``size`` bytes pays: ``tx_base_fee + fee_per_kib * ceil(size / 1024)``."""
    return params.tx_base_fee + params.fee_per_kib * math.ceil(size / 1024)
