"""The state: a key-value map with typed records, and the overlay the STF writes through.

Keys (first byte names the table; ids are u64 big-endian so byte order is numeric order):

| key                         | value                                                         |
|-----------------------------|---------------------------------------------------------------|
| ``C``                       | Config: chain id, params, sequencer, fee recipient, treasury, genesis time, supply, L1 |
| ``G``                       | Globals: next task id, burned total, open task ids            |
| ``S``                       | Settlement: deposits credited, withdrawals and their tree's frontier (settlement mode) |
| ``W`` + index               | a withdrawal record: sender, L1 address, amount, height (settlement mode) |
| ``A`` + address             | Account: balance, nonce, bonded, unbonding, jailed, tasks     |
| ``T`` + task_id             | Task record                                                   |
| ``M`` + task_id             | global model, int32 little-endian                             |
| ``V`` + task_id             | validation set ``[val_x, val_y]``                             |
| ``K`` + task_id + address   | the open round's commitment of a participant (32 bytes)       |
| ``U`` + task_id + address   | a revealed update, ``H(mps-update, delta) || delta`` (below)  |
| ``D`` + task_id + hash      | duplicate index of the open round: H(mps-update, delta) -> sender |
| ``Y`` + task_id             | the open round's contribution direction, int32 little-endian (reveal phase) |
| ``L`` + task_id             | the last closed round's global change (new model minus old), int16 little-endian |
| ``B`` + task_id             | the Gram matrix of ``Task.previous``'s updates, int64 little-endian |
| ``Q`` + height              | addresses with unbonding entries maturing at that height      |

A ``U`` entry holds the open round's revealed update, or, from the close of a round until the next
reveal phase opens, the closed round's (``Task.previous``: the public basis of the contribution
direction). An account equal to the empty account is deleted rather than stored, so the state holds no
zero records. ``State`` reads through an injected reader and collects writes in layers: one
for the block and one per tx, so a failed tx is dropped whole (``begin``/``commit``/``rollback``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from mpsnode.consensus.encoding import encode, expect_bytes, expect_list, expect_str, expect_uint, u64be
from mpsnode.consensus.errors import DecodeError, InsufficientBalance
from mpsnode.consensus.params import Params
from mpsnode.consensus.records import HASH, UINT, Record, enum_of, list_of, pair, wire
from mpsnode.consensus.settlement import L1Config, Settlement, WithdrawalRecord

if TYPE_CHECKING:  # annotations only: `inspect` and `keys` read state without loading numpy
    import numpy as np

CONFIG_KEY = b"C"
GLOBALS_KEY = b"G"
ACCOUNT, TASK, MODEL, VALSET, UPDATE, DUPLICATE, UNBONDING_QUEUE = b"A", b"T", b"M", b"V", b"U", b"D", b"Q"
COMMITMENT, DIRECTION, BASIS_GRAM, LAST_CHANGE = b"K", b"Y", b"B", b"L"
SETTLEMENT_KEY, WITHDRAWAL = b"S", b"W"

_MAX_VALUE = 1 << 26  # the largest value (a 2^22-parameter int32 model) is 16 MiB


def account_key(address: bytes) -> bytes:
    """State key of an account: ``A`` + address."""
    return ACCOUNT + address


def task_key(task_id: int) -> bytes:
    """State key of a task record: ``T`` + u64be(task id)."""
    return TASK + u64be(task_id)


def model_key(task_id: int) -> bytes:
    """State key of a task's global model: ``M`` + u64be(task id)."""
    return MODEL + u64be(task_id)


def valset_key(task_id: int) -> bytes:
    """State key of a task's validation set: ``V`` + u64be(task id)."""
    return VALSET + u64be(task_id)


def update_key(task_id: int, address: bytes) -> bytes:
    """State key of a participant's pending update: ``U`` + u64be(task id) + address."""
    return UPDATE + u64be(task_id) + address


def commitment_key(task_id: int, address: bytes) -> bytes:
    """State key of a participant's commitment in the open round: ``K`` + u64be(task id) + address."""
    return COMMITMENT + u64be(task_id) + address


def direction_key(task_id: int) -> bytes:
    """State key of the open round's contribution direction: ``Y`` + u64be(task id)."""
    return DIRECTION + u64be(task_id)


def basis_gram_key(task_id: int) -> bytes:
    """State key of the Gram matrix of the last closed round's updates: ``B`` + u64be(task id)."""
    return BASIS_GRAM + u64be(task_id)


def last_change_key(task_id: int) -> bytes:
    """State key of the last closed round's global change: ``L`` + u64be(task id)."""
    return LAST_CHANGE + u64be(task_id)


def withdrawal_key(index: int) -> bytes:
    """State key of a withdrawal record: ``W`` + u64be(index)."""
    return WITHDRAWAL + u64be(index)


def duplicate_key(task_id: int, delta_hash: bytes) -> bytes:
    """State key of the open round's duplicate index entry: ``D`` + u64be(task id) + delta hash."""
    return DUPLICATE + u64be(task_id) + delta_hash


def unbonding_queue_key(height: int) -> bytes:
    """State key of the addresses whose unbonding matures at ``height``: ``Q`` + u64be(height)."""
    return UNBONDING_QUEUE + u64be(height)


def _decode_value(data: bytes) -> Any:
    """Decode a state value. Values come from our own store and are committed by the state root,
    so the canonical re-encoding check of untrusted input is skipped (it would double the cost of
    every account read); the record decoders still check every field's type and range."""
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, max_map_len=0, max_ext_len=0
        )
    except Exception as exc:  # noqa: BLE001 - a corrupt store must surface as one clear error
        raise DecodeError(f"corrupt state value: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class Config:
    chain_id: str
    params: Params
    sequencer: bytes
    fee_recipient: bytes
    treasury: bytes
    genesis_time_ms: int
    supply: int
    l1: L1Config | None = None  # the L1 this chain settles on; None: it settles nowhere

    def encode(self) -> bytes:
        """The config's canonical bytes (the ``C`` value); the L1 config is the 8th field when set."""
        tail = [] if self.l1 is None else [self.l1.encode_obj()]
        return encode(
            [
                self.chain_id,
                self.params.encode(),
                self.sequencer,
                self.fee_recipient,
                self.treasury,
                self.genesis_time_ms,
                self.supply,
                *tail,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Config:
        """The config of a ``C`` value; ``DecodeError`` for a malformed field."""
        items = expect_list(_decode_value(data), None, "config")
        if len(items) not in (7, 8):
            raise DecodeError(f"config: expected 7 or 8 fields, got {len(items)}")
        c, p, s, f, t, g, n = items[:7]
        return cls(
            expect_str(c, "chain_id"),
            Params.decode(p),
            expect_bytes(s, "sequencer", 32),
            expect_bytes(f, "fee_recipient", 32),
            expect_bytes(t, "treasury", 32),
            expect_uint(g, "genesis_time_ms"),
            expect_uint(n, "supply"),
            L1Config.decode_obj(items[7]) if len(items) == 8 else None,
        )


@dataclass(frozen=True, slots=True)
class Globals(Record):
    next_task_id: int = wire(UINT, 1)
    burned: int = wire(UINT, 0)
    open_tasks: tuple[int, ...] = wire(list_of(UINT), ())  # tasks joining or running, ascending

    def encode(self) -> bytes:
        """The globals' canonical bytes (the ``G`` value)."""
        return encode(self.to_obj())

    @classmethod
    def decode(cls, data: bytes) -> Globals:
        """The globals of a ``G`` value; ``DecodeError`` for a malformed field."""
        return cls.decode_items(expect_list(_decode_value(data), 3, "globals"), "globals")


@dataclass(frozen=True, slots=True)
class Unbonding:
    amount: int
    release_height: int


@dataclass(frozen=True, slots=True)
class Account:
    balance: int = 0
    nonce: int = 0
    bonded: int = 0
    unbonding: tuple[Unbonding, ...] = ()
    jailed: bool = False
    tasks: tuple[int, ...] = ()  # open tasks this account takes part in, ascending

    def with_balance(self, balance: int, nonce: int | None = None) -> Account:
        """This account with another balance (and nonce): ``replace`` without its per-call cost,
        for the moves every tx makes."""
        return _account(
            balance,
            self.nonce if nonce is None else nonce,
            self.bonded,
            self.unbonding,
            self.jailed,
            self.tasks,
        )

    def is_empty(self) -> bool:
        """Whether this is the all-zero account (stored as absent)."""
        return not (self.balance or self.nonce or self.bonded or self.unbonding or self.jailed or self.tasks)

    @property
    def unbonding_total(self) -> int:
        """The sum of the unbonding entries."""
        return sum(u.amount for u in self.unbonding)

    def encode(self) -> bytes:
        """The account's canonical bytes (an ``A`` value)."""
        return encode(
            [
                self.balance,
                self.nonce,
                self.bonded,
                [[u.amount, u.release_height] for u in self.unbonding] if self.unbonding else [],
                int(self.jailed),
                list(self.tasks),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Account:
        """The account of an ``A`` value; ``DecodeError`` for a malformed field."""
        bal, nonce, bonded, unb, jailed, tasks = expect_list(_decode_value(data), 6, "account")
        entries = []
        for e in expect_list(unb, None, "unbonding"):
            a, h = expect_list(e, 2, "unbonding entry")
            entries.append(Unbonding(expect_uint(a, "amount"), expect_uint(h, "release_height")))
        task_ids = expect_list(tasks, None, "tasks")  # most accounts take part in no task: no generator
        return _account(
            expect_uint(bal, "balance"),
            expect_uint(nonce, "nonce"),
            expect_uint(bonded, "bonded"),
            tuple(entries),
            bool(expect_uint(jailed, "jailed", 1)),
            tuple([expect_uint(t, "task") for t in task_ids]) if task_ids else (),
        )


EMPTY_ACCOUNT = Account()

# A frozen dataclass's __init__ sets each field through ``object.__setattr__`` by name; every tx
# builds several accounts, so the two hot paths (``with_balance``, ``decode``) set the slots through
# their descriptors instead, half the cost. ``tests/test_stf_properties.py`` holds it equal to ``Account(...)``.
ACCOUNT_SLOTS = ("balance", "nonce", "bonded", "unbonding", "jailed", "tasks")
_SET_BALANCE, _SET_NONCE, _SET_BONDED, _SET_UNBONDING, _SET_JAILED, _SET_TASKS = (
    getattr(Account, name).__set__ for name in ACCOUNT_SLOTS
)


def _account(
    balance: int,
    nonce: int,
    bonded: int,
    unbonding: tuple[Unbonding, ...],
    jailed: bool,
    tasks: tuple[int, ...],
    new: Callable[[type[Account]], Account] = object.__new__,
) -> Account:
    """``Account(balance, nonce, bonded, unbonding, jailed, tasks)``, built slot by slot."""
    account = new(Account)
    _SET_BALANCE(account, balance)
    _SET_NONCE(account, nonce)
    _SET_BONDED(account, bonded)
    _SET_UNBONDING(account, unbonding)
    _SET_JAILED(account, jailed)
    _SET_TASKS(account, tasks)
    return account


def decode_settlement(data: bytes) -> Settlement:
    """The settlement record of an ``S`` value; ``DecodeError`` for a malformed field."""
    return Settlement.decode_items(expect_list(_decode_value(data), 5, "settlement"), "settlement")


def decode_withdrawal(data: bytes) -> WithdrawalRecord:
    """The withdrawal record of a ``W`` value; ``DecodeError`` for a malformed field."""
    return WithdrawalRecord.decode_items(expect_list(_decode_value(data), 4, "withdrawal"), "withdrawal")


class TaskStatus(IntEnum):
    JOINING = 0
    ACTIVE = 1
    COMPLETED = 2
    EXPIRED = 3


class RoundPhase(IntEnum):
    """The open round's phase: participants commit, then reveal."""

    COMMIT = 0
    REVEAL = 1


@dataclass(frozen=True, slots=True)
class Task(Record):
    """A task's record; encoded from its fields in this order (``records.Record``)."""

    task_id: int = wire(UINT)
    creator: bytes = wire(HASH)
    arch: tuple[int, ...] = wire(list_of(UINT))
    scale_bits: int = wire(UINT)
    target_accuracy_bps: int = wire(UINT)
    max_rounds: int = wire(UINT)
    min_clients: int = wire(UINT)
    max_clients: int = wire(UINT)
    byzantine_f: int = wire(UINT)
    aggregator: int = wire(UINT)  # robust.Aggregator
    join_blocks: int = wire(UINT)
    round_blocks: int = wire(UINT)
    fee_per_round: int = wire(UINT)
    local_epochs: int = wire(UINT)
    status: TaskStatus = wire(enum_of(TaskStatus))
    created_height: int = wire(UINT)
    escrow: int = wire(UINT)
    participants: tuple[bytes, ...] = wire(list_of(HASH), ())  # active participants, in join order
    round: int = wire(UINT, 0)  # the open round (1-based); 0 before the task starts
    round_deadline: int = wire(UINT, 0)  # last height of the open round's current phase
    rounds_closed: int = wire(UINT, 0)
    billed_rounds: int = wire(UINT, 0)  # closed rounds that were not void
    submitted: tuple[bytes, ...] = wire(list_of(HASH), ())  # revealers of the open round, in reveal order
    # address -> reward units earned over the task (contribution.round_units)
    reward_units: tuple[tuple[bytes, int], ...] = wire(list_of(pair(HASH, UINT)), ())
    accuracy_bps: int = wire(UINT, 0)  # accuracy of the global model after the last closed round
    removed: int = wire(UINT, 0)  # participants removed so far (slashed or silent): each is one of the f
    # address -> consecutive rounds missed (only participants that missed the last closed round)
    missed: tuple[tuple[bytes, int], ...] = wire(list_of(pair(HASH, UINT)), ())
    phase: RoundPhase = wire(enum_of(RoundPhase), RoundPhase.COMMIT)
    committed: tuple[bytes, ...] = wire(list_of(HASH), ())  # committers of the open round, in order
    # revealers of the last closed round: their updates stay in state until the next reveal phase opens
    previous: tuple[bytes, ...] = wire(list_of(HASH), ())

    @property
    def join_deadline(self) -> int:
        """The last height at which the task accepts JOIN_TASK."""
        return self.created_height + self.join_blocks

    def encode(self) -> bytes:
        """The task's canonical bytes (a ``T`` value): its fields in declaration order."""
        return encode(self.to_obj())

    @classmethod
    def decode(cls, data: bytes) -> Task:
        """The task of a ``T`` value; ``DecodeError`` naming the first malformed field."""
        return cls.decode_items(expect_list(_decode_value(data), len(fields(cls)), "task"), "task")


# ---------------------------------------------------------------------------------------------
# The overlay


Reader = Callable[[bytes], "bytes | None"]
_DELETED = None


class PartReader(Protocol):
    """Reads of part of a stored value, for a store that can make them without copying the rest
    (LMDB's map): a revealed update is 2 bytes a parameter, and a round close wants its 32-byte
    hash or its delta in a row of a matrix, not a copy of the whole value each time."""

    def get_state_range(self, key: bytes, start: int, stop: int) -> bytes | None:
        """``value[start:stop]`` of ``key``'s value, or None if absent."""
        ...

    def read_states_into(self, reads: Sequence[tuple[bytes, int, np.ndarray]]) -> list[int | None]:
        """For each ``(key, start, out)``: copy ``value[start:]`` into ``out`` (a writable uint8
        array) when it is exactly ``out``'s length; the values' lengths in order (so the caller
        can tell a mismatch), None for an absent key."""
        ...


@dataclass
class State:
    """Reads fall through write layers to ``reader``; writes land in the top layer."""

    reader: Reader
    # decoded accounts by key, each with the value it is the decoding of (used while ``reader``
    # returns those bytes for the key: decoding is a function of the bytes). ``writes`` adds each
    # account it encodes, so a caller can hand one dict to the State of each block in turn (a chain,
    # a replay), and an account written by one block is not decoded again by the next.
    decoded: dict[bytes, tuple[bytes, Account]] = field(default_factory=dict)
    # the same store's reads of part of a value (None: ``reader`` and a slice of its bytes)
    parts: PartReader | None = None
    # a layer's value: bytes, None (deleted) or, for an account key, the Account not yet encoded
    _layers: list[dict[bytes, Any]] = field(default_factory=lambda: [{}])

    # raw access ------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` as this block sees it so far (None: absent)."""
        value = self._lookup(key)
        return value.encode() if isinstance(value, Account) else value

    def _lookup(self, key: bytes) -> Any:
        """What the top-most layer holding ``key`` holds (an Account not yet encoded, for an
        account set in this block), else the reader's bytes."""
        for layer in reversed(self._layers):
            if key in layer:
                return layer[key]
        return self.reader(key)

    def get_range(self, key: bytes, start: int, stop: int) -> bytes | None:
        """``get(key)[start:stop]``, without copying the rest of a stored value where the store can."""
        for layer in reversed(self._layers):
            if key in layer:
                value = self.get(key)
                return None if value is None else value[start:stop]
        if self.parts is None:
            value = self.reader(key)
            return None if value is None else value[start:stop]
        return self.parts.get_state_range(key, start, stop)

    def read_many_into(self, reads: Sequence[tuple[bytes, int, np.ndarray]]) -> list[int | None]:
        """For each ``(key, start, out)``: copy ``get(key)[start:]`` into ``out`` (a writable uint8
        array) when it is exactly ``out.nbytes`` long; the values' lengths in order, None for an
        absent key. Keys the store serves are read in one batch (``PartReader``)."""
        lengths: list[int | None] = [None] * len(reads)
        batch: list[int] = []
        for i, (key, start, out) in enumerate(reads):
            if self.parts is not None and not any(key in layer for layer in self._layers):
                batch.append(i)
                continue
            value = self.get(key)
            if value is not None:
                if len(value) - start == out.nbytes:
                    out[:] = memoryview(value)[start:]
                lengths[i] = len(value)
        if batch:
            assert self.parts is not None
            for i, n in zip(batch, self.parts.read_states_into([reads[i] for i in batch]), strict=True):
                lengths[i] = n
        return lengths

    def set(self, key: bytes, value: bytes | None) -> None:
        """Write ``value`` (None deletes) into the open layer."""
        self._layers[-1][key] = value

    def delete(self, key: bytes) -> None:
        """Delete ``key`` in the open layer."""
        self._layers[-1][key] = _DELETED

    # tx-level atomicity ------------------------------------------------------------------------
    def begin(self) -> None:
        """Open a tx layer: what follows is kept by ``commit`` or dropped whole by ``rollback``."""
        self._layers.append({})

    def commit(self) -> None:
        """Fold the open tx layer into the block's."""
        top = self._layers.pop()
        self._layers[-1].update(top)

    def rollback(self) -> None:
        """Drop the open tx layer."""
        self._layers.pop()

    def writes(self) -> dict[bytes, bytes | None]:
        """Everything written in the block so far (only valid with no tx layer open)."""
        if len(self._layers) != 1:
            raise RuntimeError("a tx layer is still open")
        out: dict[bytes, bytes | None] = {}
        decoded = self.decoded
        for key, value in self._layers[0].items():
            if isinstance(value, Account):
                data = value.encode()
                decoded[key] = (data, value)
                out[key] = data
            else:
                out[key] = value
        return out

    def written_accounts(self) -> dict[bytes, Account]:
        """The accounts written in the block so far, decoded, by key (those ``writes`` encodes from
        an ``Account``; an account deleted or written as bytes is not among them)."""
        return {k: v for k, v in self._layers[0].items() if isinstance(v, Account)}

    # typed helpers ---------------------------------------------------------------------------
    def get_globals(self) -> Globals:
        """The globals (defaults before the first write)."""
        data = self.get(GLOBALS_KEY)
        return Globals() if data is None else Globals.decode(data)

    def set_globals(self, g: Globals) -> None:
        """Write the globals."""
        self.set(GLOBALS_KEY, g.encode())

    def get_account(self, address: bytes) -> Account:
        """The account of ``address`` (the empty account if absent); decoded once per stored value."""
        key = account_key(address)
        data = self._lookup(key)
        if isinstance(data, Account):  # set in this block and not encoded yet
            return data
        return EMPTY_ACCOUNT if data is None else self.decode_account(key, data)

    def decode_account(self, key: bytes, data: bytes) -> Account:
        """The account ``data`` holds under ``key``: from ``decoded`` when it holds those bytes,
        else decoded now and kept there."""
        cached = self.decoded.get(key)
        if cached is not None and cached[0] == data:
            return cached[1]
        account = Account.decode(data)
        self.decoded[key] = (data, account)
        return account

    def set_account(self, address: bytes, account: Account) -> None:
        """Write the account of ``address``; the empty account is deleted."""
        key = account_key(address)
        # kept decoded: a block that moves an account many times (the fee recipient: every tx)
        # encodes it once, when ``get`` or ``writes`` needs its bytes
        self._layers[-1][key] = None if account.is_empty() else account

    def get_task(self, task_id: int) -> Task | None:
        """The task record, or None if there is no such task."""
        data = self.get(task_key(task_id))
        return None if data is None else Task.decode(data)

    def set_task(self, task: Task) -> None:
        """Write the task record."""
        self.set(task_key(task.task_id), task.encode())

    def get_model(self, task_id: int) -> bytes:
        """The task's global model (int32 little-endian); ``KeyError`` if the task has none."""
        data = self.get(model_key(task_id))
        if data is None:
            raise KeyError(f"task {task_id} has no model")
        return data

    def set_model(self, task_id: int, weights: bytes) -> None:
        """Write the task's global model."""
        self.set(model_key(task_id), weights)

    def get_valset(self, task_id: int) -> tuple[bytes, bytes]:
        """The task's ``(val_x, val_y)``; ``KeyError`` if the task has none."""
        data = self.get(valset_key(task_id))
        if data is None:
            raise KeyError(f"task {task_id} has no validation set")
        x, y = expect_list(_decode_value(data), 2, "validation set")
        return expect_bytes(x, "val_x"), expect_bytes(y, "val_y")

    def set_valset(self, task_id: int, val_x: bytes, val_y: bytes) -> None:
        """Write the task's validation set."""
        self.set(valset_key(task_id), encode([val_x, val_y]))

    def get_update(self, task_id: int, address: bytes) -> bytes | None:
        """The pending delta (int16 little-endian bytes), or None."""
        data = self.get(update_key(task_id, address))
        return None if data is None else data[32:]

    def get_update_hash(self, task_id: int, address: bytes) -> bytes | None:
        """``H(mps-update, delta)`` of the pending delta, stored in front of it, or None."""
        return self.get_range(update_key(task_id, address), 0, 32)

    def read_updates_into(
        self, task_id: int, addresses: Sequence[bytes], rows: np.ndarray
    ) -> list[int | None]:
        """Copy the pending delta of ``addresses[i]`` into ``rows[i]`` (a writable int16 matrix, one
        row per address, each exactly a delta long); the deltas' stored lengths in bytes (the
        caller checks them: a row whose length differs is left as it was), None where there is
        none."""
        as_bytes = rows.view("u1")
        reads = [(update_key(task_id, a), 32, as_bytes[i]) for i, a in enumerate(addresses)]
        return [None if n is None else n - 32 for n in self.read_many_into(reads)]

    def set_update(self, task_id: int, address: bytes, delta_hash: bytes, delta: bytes) -> None:
        """Store a participant's pending update as ``delta_hash || delta``."""
        self.set(update_key(task_id, address), delta_hash + delta)

    def get_commitment(self, task_id: int, address: bytes) -> bytes | None:
        """The participant's commitment in the open round, or None."""
        return self.get(commitment_key(task_id, address))

    def set_commitment(self, task_id: int, address: bytes, commitment: bytes) -> None:
        """Store a participant's commitment for the open round."""
        self.set(commitment_key(task_id, address), commitment)

    def get_direction(self, task_id: int) -> bytes | None:
        """The open round's contribution direction (int32 little-endian), or None."""
        return self.get(direction_key(task_id))

    def set_direction(self, task_id: int, direction: bytes | None) -> None:
        """Write (None deletes) the open round's contribution direction."""
        self.set(direction_key(task_id), direction)

    def get_basis_gram(self, task_id: int) -> bytes | None:
        """The Gram matrix of the last closed round's updates (int64 little-endian, row-major), or None."""
        return self.get(basis_gram_key(task_id))

    def set_basis_gram(self, task_id: int, gram: bytes | None) -> None:
        """Write (None deletes) the Gram matrix of the last closed round's updates."""
        self.set(basis_gram_key(task_id), gram)

    def get_last_change(self, task_id: int) -> bytes | None:
        """The last closed round's global change (int16 little-endian), or None."""
        return self.get(last_change_key(task_id))

    def set_last_change(self, task_id: int, change: bytes | None) -> None:
        """Write (None deletes) the last closed round's global change."""
        self.set(last_change_key(task_id), change)

    def get_unbonding_queue(self, height: int) -> tuple[bytes, ...]:
        """The addresses whose unbonding matures at ``height``."""
        data = self.get(unbonding_queue_key(height))
        if data is None:
            return ()
        return tuple(expect_bytes(a, "address", 32) for a in expect_list(_decode_value(data), None, "queue"))

    def set_unbonding_queue(self, height: int, addresses: tuple[bytes, ...]) -> None:
        """Write the addresses maturing at ``height`` (none deletes the key)."""
        self.set(unbonding_queue_key(height), encode(list(addresses)) if addresses else None)

    # balance movers ---------------------------------------------------
    def increase_balance(self, address: bytes, amount: int) -> None:
        """Add ``amount`` to ``address``'s balance."""
        acct = self.get_account(address)
        self.set_account(address, acct.with_balance(acct.balance + amount))

    def decrease_balance(self, address: bytes, amount: int) -> None:
        """Take ``amount`` from ``address``'s balance; ``InsufficientBalance`` if it holds less."""
        acct = self.get_account(address)
        if acct.balance < amount:
            raise InsufficientBalance(amount, acct.balance)
        self.set_account(address, acct.with_balance(acct.balance - amount))

    def get_settlement(self) -> Settlement:
        """The settlement record (all zero before the first deposit)."""
        raw = self.get(SETTLEMENT_KEY)
        return Settlement() if raw is None else decode_settlement(raw)

    def set_settlement(self, record: Settlement) -> None:
        """Write the settlement record."""
        self.set(SETTLEMENT_KEY, encode(record.to_obj()))

    def get_withdrawal(self, index: int) -> WithdrawalRecord | None:
        """Withdrawal record ``index``, if there is one."""
        raw = self.get(withdrawal_key(index))
        return None if raw is None else decode_withdrawal(raw)

    def set_withdrawal(self, index: int, record: WithdrawalRecord) -> None:
        """Write withdrawal record ``index``."""
        self.set(withdrawal_key(index), encode(record.to_obj()))

    def increase_burned(self, amount: int) -> None:
        """Add ``amount`` to the burned total (slashed stake)."""
        g = self.get_globals()
        self.set_globals(replace(g, burned=g.burned + amount))
