"""Signing txs for one key: consecutive nonces that survive reconnects and restarts.

``Wallet`` hands out nonces for one key and keeps every signed tx until the node acks it, so
after a reconnect (``Wallet.recover``) no nonce is reused or skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpsnode.consensus import crypto
from mpsnode.consensus.errors import MpsError, NonceMismatch
from mpsnode.consensus.params import Params
from mpsnode.consensus.tx import Body, SignedTx, Tx, compute_min_fee
from mpsnode.node.connection import Client


def make_tx(
    key: crypto.Keypair, chain_id: str, nonce: int, body: Body, params: Params, fee: int | None = None
) -> SignedTx:
    """Sign ``body`` with the least fee that covers its size (or ``fee`` if given)."""
    if fee is not None:
        return Tx(chain_id, key.address, nonce, fee, body).sign(key)
    fee = params.tx_base_fee
    for _ in range(8):  # the fee's own encoding length can change the size, and so the fee
        stx = Tx(chain_id, key.address, nonce, fee, body).sign(key)
        need = compute_min_fee(stx.size, params)
        if fee >= need:
            return stx
        fee = need
    return Tx(chain_id, key.address, nonce, fee, body).sign(key)


# ---------------------------------------------------------------------------------------------
# The connection


@dataclass
class Wallet:
    """Signs txs for one key with consecutive nonces and remembers each until the node acks it.

    Call ``recover(client)`` on every new connection (the first included): it resubmits what was
    signed but not acked (a node that already holds one says so, which counts as an ack) and then
    continues after the node's next free nonce. No nonce is used twice; none is skipped unless a
    resubmission is refused for good, in which case the nonces from there on are re-signed.
    """

    key: crypto.Keypair
    chain_id: str
    params: Params
    next_nonce: int | None = None
    unacked: dict[int, SignedTx] = field(default_factory=dict)

    @property
    def address(self) -> bytes:
        return self.key.address

    def sign(self, body: Body, fee: int | None = None) -> SignedTx:
        if self.next_nonce is None:
            raise RuntimeError("call recover(client) first: the wallet does not know its next nonce")
        stx = make_tx(self.key, self.chain_id, self.next_nonce, body, self.params, fee)
        self.unacked[self.next_nonce] = stx
        self.next_nonce += 1
        return stx

    def acked(self, stx: SignedTx) -> None:
        if self.unacked.get(stx.tx.nonce) is stx:
            del self.unacked[stx.tx.nonce]

    async def send(self, client: Client, body: Body, fee: int | None = None) -> SignedTx:
        """Sign, submit and wait for the durable ack; returns the signed tx."""
        stx = self.sign(body, fee)
        await self.submit(client, stx)
        return stx

    async def submit(self, client: Client, stx: SignedTx) -> bytes:
        tx_id = await client.submit(stx)
        self.acked(stx)
        return tx_id

    async def recover(self, client: Client) -> list[tuple[SignedTx, MpsError]]:
        """Bring the wallet in line with the node; returns the unacked txs it refused for good."""
        refused: list[tuple[SignedTx, MpsError]] = []
        for nonce in sorted(self.unacked):
            stx = self.unacked[nonce]
            try:
                await client.submit(stx)
            except NonceMismatch:
                pass  # the nonce is used: the tx (or another with this nonce) is already in a block
            except MpsError as exc:
                # this nonce stays free: everything signed after it must be signed again
                refused.extend((self.unacked[n], exc) for n in sorted(self.unacked) if n >= nonce)
                for n in [n for n in self.unacked if n >= nonce]:
                    del self.unacked[n]
                self.next_nonce = nonce
                break
            self.unacked.pop(nonce, None)
        info = await client.nonce(self.address)
        if self.next_nonce is None or not refused:
            self.next_nonce = max(info.next_nonce, self.next_nonce or 0)
        return refused
