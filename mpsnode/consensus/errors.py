"""The exception hierarchy: every way an input can be refused, one leaf per reason.

Three families:

* ``InvalidTransaction``: the tx must never be included (malformed, badly signed, wrong chain,
  out of nonce order, fee unpayable). A block holding one is an ``InvalidBlock``.
* ``InvalidBlock``: the block must be rejected as a whole.
* ``TxFailure``: a *valid* tx whose effect failed. It is included with a failed receipt carrying
  ``code``; its fee is charged and its nonce consumed, nothing else changes.

Every leaf has a stable numeric ``code`` (part of receipts and of the wire protocol) and a
short ``reason`` a user can act on. Any other exception escaping the STF is a bug.

Each way a block can fail names the check that failed (``check``, one of the names of
``mpsnode.consensus.stf.transition.CHECKS``) and carries what was computed and what the block
claimed as typed fields, so that a verifier's divergence report is read off the failure itself.
Errors outside consensus (store, wire, admission) live in ``mpsnode.node.errors``.
"""

from __future__ import annotations

from typing import ClassVar


class MpsError(Exception):
    """Root of every error mpsnode raises on purpose."""

    code: int = 1

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or type(self).__name__)
        self.reason = reason or type(self).__name__


# ---------------------------------------------------------------------------------------------
# Invalid transactions (never included)


class InvalidTransaction(MpsError):
    code = 100
    check: ClassVar[str] = "tx_field"  # the check a block holding this tx fails


class DecodeError(InvalidTransaction):
    """Bytes that are not the canonical encoding of the expected value."""

    code = 101


class BadSignature(InvalidTransaction):
    code = 102
    check = "tx_signature"


class WrongChain(InvalidTransaction):
    code = 103
    check = "tx_chain_id"

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"tx is for chain {got!r}, this chain is {expected!r}")
        self.expected, self.got = expected, got


class NonceMismatch(InvalidTransaction):
    code = 104
    check = "tx_nonce"

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"nonce {got} but the account's next nonce is {expected}")
        self.expected, self.got = expected, got


class FeeTooLow(InvalidTransaction):
    code = 105
    check = "tx_fee"

    def __init__(self, need: int, got: int) -> None:
        super().__init__(f"fee {got} is below the minimum {need} for this tx size")
        self.need, self.got = need, got


class FeeUnpayable(InvalidTransaction):
    code = 106
    check = "tx_fee_unpayable"

    def __init__(self, fee: int, balance: int) -> None:
        super().__init__(f"fee {fee} exceeds the sender's balance {balance}")
        self.fee, self.balance = fee, balance


class TxTooLarge(InvalidTransaction):
    code = 107
    check = "tx_size"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"tx is {size} bytes, the limit is {limit}")
        self.size, self.limit = size, limit


class InvalidField(InvalidTransaction):
    """A field that can be judged without state is out of its allowed range."""

    code = 108

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


class DepositMismatch(InvalidTransaction):
    """A DEPOSIT tx that is not the next deposit of the L1 portal as the L1 holds it."""

    code = 109
    check = "deposits"

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class SystemTxRefused(InvalidTransaction):
    """A system tx (DEPOSIT) offered by a user: only the sequencer puts one in, from L1."""

    code = 110

    def __init__(self) -> None:
        super().__init__("deposits come from the L1 portal, not from users: use `mpsnode l1 deposit`")


# ---------------------------------------------------------------------------------------------
# Invalid blocks (rejected whole)


class InvalidBlock(MpsError):
    code = 200

    @property
    def check(self) -> str:
        """The name of the check that failed (``stf.transition.CHECKS``)."""
        return type(self).CHECK

    CHECK: ClassVar[str] = "block"


class BlockDecodeError(InvalidBlock):
    """The bytes are not the canonical encoding of a block."""

    code = 201
    CHECK = "canonical_encoding"


class BadBlockSignature(InvalidBlock):
    code = 202
    CHECK = "sequencer_signature"

    def __init__(self, sequencer: bytes, block_hash: bytes, signature: bytes) -> None:
        super().__init__("the header is not signed by the genesis sequencer key")
        self.sequencer, self.block_hash, self.signature = sequencer, block_hash, signature


class WrongParent(InvalidBlock):
    code = 203
    CHECK = "parent_hash"

    def __init__(self, expected: bytes, got: bytes) -> None:
        super().__init__(f"parent hash {got.hex()} is not the head {expected.hex()}")
        self.expected, self.got = expected, got


class WrongHeight(InvalidBlock):
    code = 204
    CHECK = "height"

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"height {got} does not follow the parent's {expected - 1}")
        self.expected, self.got = expected, got


class BadTimestamp(InvalidBlock):
    code = 205
    CHECK = "timestamp"

    def __init__(self, parent_ms: int, got: int) -> None:
        super().__init__(f"timestamp {got} is not after the parent's {parent_ms}")
        self.parent_ms, self.got = parent_ms, got


class RootMismatch(InvalidBlock):
    """A root in the header differs from the one computed locally; ``which`` names it.

    For the receipts and state roots, ``result`` is the local ``BlockResult`` (receipts, writes,
    roots) that the header disagrees with: a verifier's report compares the two.
    """

    code = 206

    def __init__(self, which: str, computed: bytes, claimed: bytes, result: object = None) -> None:
        super().__init__(f"{which} mismatch: computed {computed.hex()}, header claims {claimed.hex()}")
        self.which, self.computed, self.claimed, self.result = which, computed, claimed, result

    @property
    def check(self) -> str:
        """The root that differs: ``tx_root``, ``receipts_root`` or ``state_root``."""
        return self.which


class BlockTooLarge(InvalidBlock):
    code = 207
    CHECK = "block_size"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"txs total {size} bytes, the limit is {limit}")
        self.size, self.limit = size, limit


class BlockHasInvalidTx(InvalidBlock):
    """A tx in the block is invalid; ``cause`` says why and ``index`` which one."""

    code = 208

    def __init__(self, index: int, cause: InvalidTransaction) -> None:
        super().__init__(f"tx {index} is invalid: {cause.reason}")
        self.index, self.cause = index, cause

    @property
    def check(self) -> str:
        """The check the tx failed (its cause's)."""
        return self.cause.check


class WrongBlockChain(InvalidBlock):
    code = 209
    CHECK = "chain_id"

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"block is for chain {got!r}, this chain is {expected!r}")
        self.expected, self.got = expected, got


class BadL1Origin(InvalidBlock):
    """The header's ``l1_origin`` is missing, present on a chain without L1, or before the parent's."""

    code = 210
    CHECK = "l1_origin"

    def __init__(self, why: str, parent: int | None = None, got: int | None = None) -> None:
        super().__init__(why)
        self.why, self.parent, self.got = why, parent, got


class L1OriginUnknown(InvalidBlock):
    """The node's L1 view does not reach the block's L1 origin yet: the block cannot be judged."""

    code = 211
    CHECK = "l1_origin"

    def __init__(self, origin: int) -> None:
        super().__init__(
            f"L1 block {origin} (the block's L1 origin) is not known to this node's L1 endpoint yet"
        )
        self.origin = origin


class DepositOverdue(InvalidBlock):
    """The block leaves out a deposit that was due by its L1 origin."""

    code = 212
    CHECK = "deposits"

    def __init__(self, index: int, l1_block: int, origin: int, window: int) -> None:
        super().__init__(
            f"deposit {index} (L1 block {l1_block}) was due by L1 block {l1_block + window}, "
            f"and the block's L1 origin {origin} has passed it without crediting it"
        )
        self.index, self.l1_block, self.origin, self.window = index, l1_block, origin, window


# ---------------------------------------------------------------------------------------------
# Failed effects (included, fee charged, nothing else changes)


class TxFailure(MpsError):
    code = 300


class InsufficientBalance(TxFailure):
    code = 301

    def __init__(self, need: int, have: int) -> None:
        super().__init__(f"needs {need} units, the balance is {have}")
        self.need, self.have = need, have


class InsufficientBonded(TxFailure):
    code = 302

    def __init__(self, need: int, have: int) -> None:
        super().__init__(f"needs {need} bonded units, {have} are bonded")
        self.need, self.have = need, have


class StakeLocked(TxFailure):
    """UNSTAKE would leave bonded stake below min_stake while the sender is in a task."""

    code = 303

    def __init__(self, task_id: int, min_stake: int, left: int) -> None:
        super().__init__(f"in task {task_id}: bonded would drop to {left}, below min_stake {min_stake}")
        self.task_id, self.min_stake, self.left = task_id, min_stake, left


class UnknownTask(TxFailure):
    code = 304

    def __init__(self, task_id: int) -> None:
        super().__init__(f"no task {task_id}")
        self.task_id = task_id


class TaskNotJoining(TxFailure):
    code = 305

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} no longer accepts participants")
        self.task_id = task_id


class TaskFull(TxFailure):
    code = 306

    def __init__(self, task_id: int, max_clients: int) -> None:
        super().__init__(f"task {task_id} already has max_clients={max_clients} participants")
        self.task_id, self.max_clients = task_id, max_clients


class AlreadyJoined(TxFailure):
    code = 307


class Jailed(TxFailure):
    code = 308

    def __init__(self) -> None:
        super().__init__("account is jailed: stake back up to min_stake to be released")


class StakeBelowMinimum(TxFailure):
    code = 309

    def __init__(self, min_stake: int, bonded: int) -> None:
        super().__init__(f"bonded stake {bonded} is below min_stake {min_stake}")
        self.min_stake, self.bonded = min_stake, bonded


class TaskNotActive(TxFailure):
    code = 310

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} has no open round")
        self.task_id = task_id


class WrongRound(TxFailure):
    code = 311

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"update for round {got}, the open round is {expected}")
        self.expected, self.got = expected, got


class NotParticipant(TxFailure):
    code = 312

    def __init__(self, task_id: int) -> None:
        super().__init__(f"sender is not an active participant of task {task_id}")
        self.task_id = task_id


class AlreadySubmitted(TxFailure):
    code = 313

    def __init__(self, task_id: int, round_: int) -> None:
        super().__init__(f"sender already revealed its update for task {task_id} round {round_}")
        self.task_id, self.round = task_id, round_


class WrongUpdateSize(TxFailure):
    code = 314

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"delta is {got} bytes, the model needs {expected}")
        self.expected, self.got = expected, got


class DuplicateUpdate(TxFailure):
    code = 315

    def __init__(self) -> None:
        super().__init__("delta is an exact copy of an update already revealed this round")


class WrongPhase(TxFailure):
    code = 316

    def __init__(self, task_id: int, expected: str, got: str) -> None:
        super().__init__(f"task {task_id}'s round is in its {got} phase, not {expected}")
        self.task_id, self.expected, self.got = task_id, expected, got


class AlreadyCommitted(TxFailure):
    code = 317

    def __init__(self, task_id: int, round_: int) -> None:
        super().__init__(f"sender already committed to an update for task {task_id} round {round_}")
        self.task_id, self.round = task_id, round_


class NotCommitted(TxFailure):
    code = 318

    def __init__(self, task_id: int, round_: int) -> None:
        super().__init__(f"sender has no commitment in task {task_id} round {round_} to reveal")
        self.task_id, self.round = task_id, round_


class CommitmentMismatch(TxFailure):
    code = 319

    def __init__(self) -> None:
        super().__init__("delta and salt do not open the sender's commitment")


class NoSettlement(TxFailure):
    code = 320

    def __init__(self) -> None:
        super().__init__("this chain settles on no L1: there is nowhere to withdraw to")


class WithdrawalTreeFull(TxFailure):
    code = 321

    def __init__(self) -> None:
        super().__init__("the withdrawal tree holds 2^32 withdrawals: it is full")


# ---------------------------------------------------------------------------------------------
# Genesis


class GenesisError(MpsError):
    """A malformed or inconsistent genesis; ``field`` names the culprit."""

    code = 400

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"genesis field {field!r}: {why}")
        self.field, self.why = field, why


def error_classes() -> dict[int, type[MpsError]]:
    """Stable numeric code -> exception class, over every ``MpsError`` leaf defined so far
    (receipts and wire replies carry the code); a code given twice is a bug and raises."""
    codes: dict[int, type[MpsError]] = {}
    stack: list[type[MpsError]] = [MpsError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.code in codes and codes[cls.code] is not cls:
            raise RuntimeError(f"duplicate error code {cls.code}: {cls.__name__}, {codes[cls.code].__name__}")
        codes[cls.code] = cls
    return codes


def describe_code(code: int) -> str:
    """Short human name for a receipt status code (0 is success)."""
    if code == 0:
        return "ok"
    cls = error_classes().get(code)
    return cls.__name__ if cls else f"unknown code {code}"
