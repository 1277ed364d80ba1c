"""Crash safety of the sequencer: SIGKILL the daemon at random moments under load, restart, check.

A loader drives several wallets (``mpsnode.client.Wallet``) that sign transfers and submit them
pipelined, recording every tx id whose durable ack arrived. The daemon is SIGKILLed at a random
moment (during admission, group commits, block building or commits) and restarted; each wallet
recovers (resubmits what was not acked). At the end:

* every acked tx id has exactly one receipt in exactly one block, and no tx appears twice;
* each sender's included nonces are exactly 0..n-1: nothing skipped, nothing reused;
* the store is whole: replaying every block from genesis on a fresh in-memory chain reproduces
  every header's roots and every stored receipt list, the final state equals the stored state,
  and no included tx is still in the mempool table.

``MPS_CRASH_SEED`` replays a run; ``-m soak`` runs many more kills.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest
import trio

from mpsnode.client.wallet import Wallet
from mpsnode.consensus.block import decode_block
from mpsnode.consensus.errors import MpsError
from mpsnode.consensus.params import Params
from mpsnode.consensus.receipt import encode_receipts
from mpsnode.consensus.tx import Transfer
from mpsnode.node.chain import Chain
from mpsnode.node.connection import ConnectionLost, connect
from mpsnode.node.store import LmdbStore, MemoryStore

from nodekit import Daemon, make_home

SENDERS = 12
PER_WALLET_INFLIGHT = 8


async def load(
    daemon: Daemon, g, wallets: list[Wallet], acked: set[bytes], rng: random.Random, kill_after: float | None
) -> None:
    """Submit transfers until the daemon dies (SIGKILLed after ``kill_after`` s) or, if None, recover only."""
    try:
        async with connect(daemon.address, genesis=g, timeout=30) as client:
            for wallet in wallets:
                before = dict(wallet.unacked)
                refused = await wallet.recover(client)
                assert not refused, refused
                acked.update(stx.tx_id for n, stx in before.items() if n not in wallet.unacked)
            if kill_after is None:
                return

            async def one(wallet: Wallet) -> None:
                sink = g.treasury
                while True:
                    stx = wallet.sign(Transfer(sink, rng.randint(1, 3)))
                    await wallet.submit(client, stx)
                    acked.add(stx.tx_id)

            async def killer() -> None:
                await trio.sleep(kill_after)
                daemon.kill()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                for wallet in wallets:
                    for _ in range(PER_WALLET_INFLIGHT):
                        nursery.start_soon(one, wallet)
    except (ConnectionLost, OSError, trio.BrokenResourceError, MpsError):
        pass  # the daemon died under us
    except BaseExceptionGroup as group:
        leaves = group.exceptions
        if not all(
            isinstance(e, (ConnectionLost, OSError, trio.BrokenResourceError, MpsError, BaseExceptionGroup))
            for e in leaves
        ):
            raise


def run_crashes(tmp_path: Path, daemons: list[Daemon], kills: int) -> None:
    seed = int(os.environ.get("MPS_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    net = make_home(tmp_path, clients=SENDERS, params=Params(block_time_ms=40))
    g = net.genesis
    daemon = Daemon(tmp_path)
    daemons.append(daemon)
    wallets = [Wallet(k, g.chain_id, g.params) for k in net.clients]
    acked: set[bytes] = set()
    for _ in range(kills):
        daemon.start()
        trio.run(load, daemon, g, wallets, acked, rng, rng.uniform(0.05, 1.2))
        daemon.kill()
        assert daemon.proc is not None and daemon.proc.returncode in (-9, 0), f"seed {seed}"

    # a last clean run: resubmit what is unacked, let the mempool drain, stop with SIGTERM
    daemon.start()
    trio.run(load, daemon, g, wallets, acked, rng, None)

    async def drain() -> None:
        async with connect(daemon.address, genesis=g) as client:
            for wallet in wallets:
                if wallet.next_nonce:
                    last = await client.nonce(wallet.address)
                    assert last.next_nonce == wallet.next_nonce, (
                        f"seed {seed}: {wallet.address.hex()} has a gap"
                    )
            with trio.fail_after(120):
                while (await client.status()).mempool_txs:
                    await trio.sleep(0.05)

    trio.run(drain)
    assert daemon.stop() == 0, f"seed {seed}: {daemon.log_text()[-2000:]}"
    check_store(tmp_path / "data", g, wallets, acked, seed)


def check_store(path: Path, g, wallets: list[Wallet], acked: set[bytes], seed: int) -> None:
    store = LmdbStore(path)
    try:
        head = store.head()
        assert head is not None
        replay = Chain(MemoryStore(), g)
        seen: Counter[bytes] = Counter()
        nonces: dict[bytes, list[int]] = {}
        for height in range(1, head.height + 1):
            block = decode_block(store.get_block(height) or b"")
            result = replay.apply(block)  # checks the header's tx, receipts and state roots
            assert encode_receipts(list(result.receipts)) == store.get_receipts(height), (
                f"seed {seed}: {height}"
            )
            for index, stx in enumerate(block.txs):
                seen[stx.tx_id] += 1
                nonces.setdefault(stx.tx.sender, []).append(stx.tx.nonce)
                assert store.get_tx_location(stx.tx_id) == (height, index)
                assert result.receipts[index].tx_id == stx.tx_id
        assert replay.head.state_root == head.state_root
        assert dict(replay.store.iter_state()) == dict(store.iter_state()), f"seed {seed}: state differs"
        assert all(n == 1 for n in seen.values()), f"seed {seed}: a tx is in two blocks"
        missing = acked - set(seen)
        assert not missing, f"seed {seed}: {len(missing)} acked txs have no receipt"
        for wallet in wallets:
            got = nonces.get(wallet.address, [])
            assert got == list(range(len(got))), f"seed {seed}: nonces of {wallet.address.hex()}: {got}"
            assert len(got) == (wallet.next_nonce or 0)
        assert store.mempool_items() == []
        assert len(acked) > 100, f"seed {seed}: the loader hardly ran ({len(acked)} acks)"
    finally:
        store.close()


def test_sigkill_under_load(tmp_path: Path, daemons: list[Daemon]) -> None:
    run_crashes(tmp_path, daemons, kills=10)


@pytest.mark.soak
def test_sigkill_under_load_soak(tmp_path: Path, daemons: list[Daemon]) -> None:
    run_crashes(tmp_path, daemons, kills=int(os.environ.get("MPS_CRASH_KILLS", "60")))
