"""Errors outside consensus: the store, the wire protocol, a node's admission policy, proofs a
client cannot trust. Each is an ``MpsError`` leaf with a stable code (wire replies carry it) and a
reason a user can act on; see ``mpsnode.consensus.errors`` for the root and the consensus leaves.
"""

from __future__ import annotations

from mpsnode.consensus.errors import MpsError


class ConnectionLost(ConnectionError):
    """The connection to the node ended while a request was in flight (not an ``MpsError``: an OS-level
    loss, retried by the clients that reconnect)."""


class StoreError(MpsError):
    code = 500


class StoreFull(StoreError):
    code = 501


class StoreCorrupt(StoreError):
    code = 502


class HomeInUse(StoreError):
    """Another process holds the home (or the client journal) this one was to use."""

    code = 504


class WrongGenesis(StoreError):
    """The chain at hand is not of the genesis the caller pinned."""

    code = 505


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


class TruncatedFrame(ProtocolViolation):
    """The connection closed inside a frame: the peer went away mid-message (reconnect and retry)."""

    code = 611


class ListenFailed(NodeError):
    """A node cannot listen where it was told to (the port is taken, the address is not this host's)."""

    code = 612


class WouldFail(NodeError):
    """Client side, nothing sent: the tx would not do what it asks on the node's current state."""

    code = 613


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
        super().__init__(
            f"nonce {nonce} is more than {window} ahead of the account's next nonce {next_nonce}; "
            f"submit the missing nonces first"
        )
        self.nonce, self.next_nonce, self.window = nonce, next_nonce, window


class NonceConflict(AdmissionRejected):
    code = 623

    def __init__(self, nonce: int, pending_tx: bytes) -> None:
        super().__init__(
            f"another tx with nonce {nonce} is already pending ({pending_tx.hex()}); "
            f"wait for it or use the next nonce"
        )
        self.nonce, self.pending_tx = nonce, pending_tx


class SenderLimit(AdmissionRejected):
    code = 624


class MempoolFull(AdmissionRejected):
    code = 625


class VerificationFailed(MpsError):
    """Client side: a reply's header signature or Merkle proof does not check out; do not trust it."""

    code = 700


# ---------------------------------------------------------------------------------------------
# The L1 (settlement mode)


class L1Error(MpsError):
    """Something on L1 went wrong; the reason is one line for a person."""

    code = 900


class L1Revert(L1Error):
    """An L1 call or transaction reverted; ``reason`` is the contract's revert string."""

    code = 901


class L1Unavailable(L1Error):
    """The L1 endpoint did not answer (or did not mine a transaction in time)."""

    code = 902


class AnvilError(L1Error):
    """The devnet L1 node (anvil) is not installed, did not start, or stopped answering."""

    code = 903
