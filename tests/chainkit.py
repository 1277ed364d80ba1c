"""Test kit: a devnet chain over any store, with per-key nonces and invariant checks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

import genesis as genesis_tool
from mpsnode.consensus import crypto
from mpsnode.consensus.block import Block
from mpsnode.consensus.hashing import H
from mpsnode.consensus.invariants import compute_supply
from mpsnode.consensus.params import Params
from mpsnode.consensus.settlement import Deposit, L1Config, L1Facts, facts_for
from mpsnode.consensus.smt import compute_root_reference
from mpsnode.consensus.state import RoundPhase
from mpsnode.consensus.stf.transition import BlockResult
from mpsnode.consensus.tx import Body, CreateTask, SignedTx, Tx, commit_reveal
from mpsnode.node.chain import Chain
from mpsnode.node.store import MemoryStore, Store


class Kit:
    def __init__(
        self,
        store: Store | None = None,
        clients: int = 10,
        params: Params | None = None,
        l1: L1Config | None = None,
    ) -> None:
        self.genesis, self.keys = genesis_tool.devnet(clients, params, l1)
        self.store = store if store is not None else MemoryStore()
        self.chain = Chain(self.store, self.genesis)
        self.nonces: dict[bytes, int] = {}
        self.time_ms = self.genesis.genesis_time_ms
        # settlement mode: an L1 as data (the portal's deposits and its head), for the STF alone;
        # the end-to-end tests run a real anvil
        self.l1_deposits: list[Deposit] = []
        self.l1_head = l1.start_block if l1 is not None else 0

    def l1_deposit(self, recipient: bytes, amount: int, blocks: int = 1) -> Deposit:
        """A deposit on the L1 of the data, ``blocks`` L1 blocks after the last."""
        self.l1_head += blocks
        deposit = Deposit(len(self.l1_deposits), self.l1_head, recipient, amount)
        self.l1_deposits.append(deposit)
        return deposit

    def facts(self, origin: int | None = None) -> L1Facts | None:
        """The L1 facts of a next block with ``origin`` (default: the L1 head)."""
        if self.genesis.l1 is None:
            return None
        credited = self.chain.state().get_settlement().deposits
        return facts_for(self.l1_head if origin is None else origin, credited, self.l1_deposits)

    @property
    def user(self) -> crypto.Keypair:
        return self.keys["user"]

    @property
    def clients(self) -> list[crypto.Keypair]:
        return [self.keys[f"client-{i}"] for i in range(sum(k.startswith("client-") for k in self.keys))]

    def tx(
        self, key: crypto.Keypair, body: Body, *, fee: int | None = None, nonce: int | None = None
    ) -> SignedTx:
        if nonce is None:
            nonce = self.nonces.get(key.address, 0)
            self.nonces[key.address] = nonce + 1
        if fee is None:
            fee = self.genesis.params.tx_base_fee
        return Tx(self.genesis.chain_id, key.address, nonce, fee, body).sign(key)

    def block(self, txs: Iterable[SignedTx] = ()) -> tuple[Block, BlockResult]:
        self.time_ms += 1000
        block, result, rejected = self.chain.build(
            list(txs), self.time_ms, self.keys["sequencer"], l1=self.facts()
        )
        if rejected:
            raise AssertionError(f"txs rejected: {[(e.reason) for _, e in rejected]}")
        self.check_invariants()
        return block, result

    def pair(self, key: crypto.Keypair, task_id: int, round_: int, delta: bytes) -> tuple[SignedTx, SignedTx]:
        """A signed COMMIT_UPDATE and REVEAL_UPDATE of ``delta`` (salt derived from the inputs)."""
        salt = H(b"test-salt", key.address + task_id.to_bytes(8, "big") + round_.to_bytes(8, "big"))
        commit, reveal = commit_reveal(self.genesis.chain_id, task_id, round_, key.address, delta, salt)
        return self.tx(key, commit), self.tx(key, reveal)

    def submit(
        self,
        task_id: int,
        round_: int,
        updates: Sequence[tuple[crypto.Keypair, bytes]],
        extra: Iterable[SignedTx] = (),
    ) -> tuple[Block, BlockResult]:
        """Commit every update in one block (with ``extra``), wait for the reveal phase (blocks until the
        commit deadline if some participant did not commit), then reveal them all in one block; returns
        that last block, at whose end the round closes unless a reveal was refused."""
        return self.submit_many([(key, task_id, round_, delta) for key, delta in updates], extra)

    def submit_many(
        self, items: Sequence[tuple[crypto.Keypair, int, int, bytes]], extra: Iterable[SignedTx] = ()
    ) -> tuple[Block, BlockResult]:
        """``submit`` for updates of several tasks at once: (key, task, round, delta) each."""
        pairs = [
            (task_id, round_, self.pair(key, task_id, round_, delta)) for key, task_id, round_, delta in items
        ]
        self.block([c for _, _, (c, _) in pairs] + list(extra))

        def waiting() -> bool:
            for task_id, round_, _ in pairs:
                task = self.chain.state().get_task(task_id)
                if task is not None and task.round == round_ and task.phase == RoundPhase.COMMIT:
                    return True
            return False

        while waiting():
            self.block()
        reveals = []
        for task_id, round_, (_, r) in pairs:
            task = self.chain.state().get_task(task_id)
            if task is not None and task.round == round_ and task.phase == RoundPhase.REVEAL:
                reveals.append(r)
        return self.block(reveals)

    def check_invariants(self) -> None:
        items = list(self.store.iter_state())
        breakdown, supply = compute_supply(items)
        assert breakdown.total == supply, f"supply broken: {breakdown} != {supply}"
        assert compute_root_reference(dict(items)) == self.chain.head.state_root

    def account(self, key: crypto.Keypair | bytes):
        address = key if isinstance(key, bytes) else key.address
        return self.chain.state().get_account(address)


def small_task(
    *,
    arch: Sequence[int] = (4, 3),
    samples: int = 8,
    f: int = 0,
    min_clients: int = 3,
    max_clients: int = 10,
    max_rounds: int = 3,
    join_blocks: int = 2,
    round_blocks: int = 3,
    fee_per_round: int = 100,
    scale_bits: int = 8,
    seed: int = 0,
    target_accuracy_bps: int = 5000,
) -> CreateTask:
    from mpsnode.consensus.model import param_count

    rng = np.random.default_rng(seed)
    n = param_count(arch)
    weights = rng.integers(-1000, 1000, n, dtype=np.int32).astype("<i4").tobytes()
    val_x = rng.integers(-500, 500, samples * arch[0], dtype=np.int16).astype("<i2").tobytes()
    val_y = rng.integers(0, arch[-1], samples, dtype=np.uint8).tobytes()
    return CreateTask(
        tuple(arch),
        scale_bits,
        weights,
        target_accuracy_bps,
        max_rounds,
        min_clients,
        max_clients,
        f,
        join_blocks,
        round_blocks,
        fee_per_round,
        1,
        val_x,
        val_y,
    )


def random_delta(n_params: int, seed: int, scale: int = 100) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-scale, scale, n_params, dtype=np.int16).astype("<i2").tobytes()
