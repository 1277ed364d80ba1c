"""The exception hierarchy: every way an input can be refused, one leaf per reason.

Three families:

* ``InvalidTransaction``: the tx must never be included (malformed, badly signed, wrong chain,
  out of nonce order, fee unpayable). A block holding one is an ``InvalidBlock``.
* ``InvalidBlock``: the block must be rejected as a whole.
* ``TxFailure``: a *valid* tx whose effect failed. It is included with a failed receipt carrying
  ``code``; its fee is charged and its nonce consumed, nothing else changes.

Every leaf has a stable numeric ``code`` (part of receipts and of the wire protocol) and a
short ``reason`` a user can act on. Any other exception escaping the STF is a bug.
"""

from __future__ import annotations


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


class DecodeError(InvalidTransaction):
    """Bytes that are not the canonical encoding of the expected value."""

    code = 101


class BadSignature(InvalidTransaction):
    code = 102


class WrongChain(InvalidTransaction):
    code = 103

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"tx is for chain {got!r}, this chain is {expected!r}")
        self.expected, self.got = expected, got


class NonceMismatch(InvalidTransaction):
    code = 104

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"nonce {got} but the account's next nonce is {expected}")
        self.expected, self.got = expected, got


class FeeTooLow(InvalidTransaction):
    code = 105

    def __init__(self, need: int, got: int) -> None:
        super().__init__(f"fee {got} is below the minimum {need} for this tx size")
        self.need, self.got = need, got


class FeeUnpayable(InvalidTransaction):
    code = 106

    def __init__(self, fee: int, balance: int) -> None:
        super().__init__(f"fee {fee} exceeds the sender's balance {balance}")
        self.fee, self.balance = fee, balance


class TxTooLarge(InvalidTransaction):
    code = 107

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"tx is {size} bytes, the limit is {limit}")
        self.size, self.limit = size, limit


class InvalidField(InvalidTransaction):
    """A field that can be judged without state is out of its allowed range."""

    code = 108

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


# ---------------------------------------------------------------------------------------------
# Invalid blocks (rejected whole)


class InvalidBlock(MpsError):
    code = 200


class BlockDecodeError(InvalidBlock):
    code = 201


class BadBlockSignature(InvalidBlock):
    code = 202


class WrongParent(InvalidBlock):
    code = 203


class WrongHeight(InvalidBlock):
    code = 204


class BadTimestamp(InvalidBlock):
    code = 205


class RootMismatch(InvalidBlock):
    """A root in the header differs from the one computed locally."""

    code = 206

    def __init__(self, which: str, computed: bytes, claimed: bytes) -> None:
        super().__init__(f"{which} mismatch: computed {computed.hex()}, header claims {claimed.hex()}")
        self.which, self.computed, self.claimed = which, computed, claimed


class BlockTooLarge(InvalidBlock):
    code = 207


class BlockHasInvalidTx(InvalidBlock):
    """A tx in the block is invalid; ``cause`` says why and ``index`` which one."""

    code = 208

    def __init__(self, index: int, cause: InvalidTransaction) -> None:
        super().__init__(f"tx {index} is invalid: {cause.reason}")
        self.index, self.cause = index, cause


class WrongBlockChain(InvalidBlock):
    code = 209


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
        super().__init__(f"sender already submitted an update for task {task_id} round {round_}")
        self.task_id, self.round = task_id, round_


class WrongUpdateSize(TxFailure):
    code = 314

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"delta is {got} bytes, the model needs {expected}")
        self.expected, self.got = expected, got


class DuplicateUpdate(TxFailure):
    code = 315

    def __init__(self) -> None:
        super().__init__("delta is an exact copy of an update already submitted this round")


# ---------------------------------------------------------------------------------------------
# Outside consensus


class GenesisError(MpsError):
    """A malformed or inconsistent genesis; ``field`` names the culprit."""

    code = 400

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"genesis field {field!r}: {why}")
        self.field, self.why = field, why


class StoreError(MpsError):
    code = 500


class StoreFull(StoreError):
    code = 501


class StoreCorrupt(StoreError):
    code = 502


class ExportError(StoreError):
    """A chain export file that is not one, or is truncated or out of order; ``reason`` says where."""

    code = 503


# ---------------------------------------------------------------------------------------------
# Nodes: the wire protocol and the sequencer's admission policy (never consensus)


class NodeError(MpsError):
    """A request a node refuses; the code travels in the wire protocol's error reply."""

    code = 600


class ProtocolViolation(NodeError):
    """Bytes on the wire that are not a well-formed frame or message; the connection is closed."""

    code = 601


class FrameTooLarge(ProtocolViolation):
    code = 602

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}")
        self.size, self.limit = size, limit


class UnknownMessage(NodeError):
    code = 603


class WrongNetwork(NodeError):
    """The peer is on another chain (chain id or genesis hash differ); the connection is closed."""

    code = 604


class NotFound(NodeError):
    code = 605


class BadRequest(NodeError):
    """A well-formed message whose fields are out of range."""

    code = 606


class Overloaded(NodeError):
    """Too many connections, subscriptions or requests in flight: retry later."""

    code = 607


class NotSupported(NodeError):
    """The node does not offer this (a verifier takes no transactions)."""

    code = 608


class ShuttingDown(NodeError):
    code = 609


class SlowPeer(NodeError):
    """The peer did not read its replies or pushed blocks in time; the connection is dropped."""

    code = 610


class AdmissionRejected(NodeError):
    """The mempool's policy refuses a tx that may be valid (not a consensus rule)."""

    code = 620


class AlreadyKnown(AdmissionRejected):
    """The exact tx is already pending or included: nothing to do (clients treat it as accepted)."""

    code = 621

    def __init__(self, tx_id: bytes, where: str) -> None:
        super().__init__(f"tx {tx_id.hex()} is already {where}")
        self.tx_id, self.where = tx_id, where


class NonceTooFarAhead(AdmissionRejected):
    code = 622

    def __init__(self, nonce: int, next_nonce: int, window: int) -> None:
        super().__init__(f"nonce {nonce} is more than {window} ahead of the account's next nonce {next_nonce}; "
                         f"submit the missing nonces first")
        self.nonce, self.next_nonce, self.window = nonce, next_nonce, window


class NonceConflict(AdmissionRejected):
    code = 623

    def __init__(self, nonce: int, pending_tx: bytes) -> None:
        super().__init__(f"another tx with nonce {nonce} is already pending ({pending_tx.hex()}); "
                         f"wait for it or use the next nonce")
        self.nonce, self.pending_tx = nonce, pending_tx


class SenderLimit(AdmissionRejected):
    code = 624


class MempoolFull(AdmissionRejected):
    code = 625


class VerificationFailed(MpsError):
    """Client side: a reply's header signature or Merkle proof does not check out; do not trust it."""

    code = 700


class Divergence(MpsError):
    """A block failed a verifier check (``verifier.checks``): ``check`` names which, at ``height``.

    ``computed`` is what this node derived, ``claimed`` what the block says (JSON-able values);
    ``tx_index`` names the offending tx for tx checks. The checker attaches the decoded
    ``block`` and, when execution ran, its ``result``, for the divergence report.
    """

    code = 720

    def __init__(self, check: str, height: int, reason: str, *, computed: object = None, claimed: object = None,
                 tx_index: int | None = None) -> None:
        super().__init__(f"block {height} fails {check}: {reason}")
        self.check, self.height, self.detail = check, height, reason
        self.computed, self.claimed, self.tx_index = computed, claimed, tx_index
        self.block: object = None
        self.result: object = None


# ---------------------------------------------------------------------------------------------
# Clients (mpsnode.clientd; never consensus)


class ClientStopped(MpsError):
    """A client daemon cannot go on with its task (not joinable, a tx of its failed, no node reachable)."""

    code = 800


def _all_codes() -> dict[int, type[MpsError]]:
    codes: dict[int, type[MpsError]] = {}
    stack: list[type[MpsError]] = [MpsError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.code in codes and codes[cls.code] is not cls:
            raise RuntimeError(f"duplicate error code {cls.code}: {cls.__name__}, {codes[cls.code].__name__}")
        codes[cls.code] = cls
    return codes


#: Stable numeric code -> exception class (receipts and wire replies carry the code).
ERROR_CODES: dict[int, type[MpsError]] = _all_codes()


def describe_code(code: int) -> str:
    """Short human name for a receipt status code (0 is success)."""
    if code == 0:
        return "ok"
    cls = ERROR_CODES.get(code)
    return cls.__name__ if cls else f"unknown code {code}"
