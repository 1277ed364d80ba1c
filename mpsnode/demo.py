"""``mpsnode demo``: the most complete end-to-end path that exists today, run in one process.

What it does now (core chain only; the networked demo with a sequencer, a verifier and training
clients comes with the later issues): creates a devnet home, commits blocks to LMDB through the
STF (transfers, stakes, a task, joins, updates, rounds to their deadline, expiry and refund), then
replays every block from genesis into a fresh in-memory state and checks every root.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from mpsnode.block import decode_block
from mpsnode.chain import Chain
from mpsnode.events import Event
from mpsnode.invariants import compute_supply
from mpsnode.model import param_count
from mpsnode.store import LmdbStore, MemoryStore
from mpsnode.tx import CreateTask, JoinTask, SignedTx, Stake, SubmitUpdate, Transfer, Tx


def run_demo(home: str | None = None, clients: int = 10, seed: int = 7) -> int:
    from genesis import make_network

    if clients < 5:
        print("mpsnode demo: needs at least 5 clients")
        return 2
    root = Path(home) if home else Path(tempfile.mkdtemp(prefix="mpsnode-demo-"))
    print("mpsnode demo (core chain, in one process: the networked FL demo arrives with later issues)")
    net = make_network(root, clients=clients, devnet_keys=True)
    g = net.genesis
    print(f"  home          {root}")
    print(f"  chain         {g.chain_id}  genesis {g.hash().hex()[:16]}...  supply {g.supply}")
    store = LmdbStore(root / "data")
    chain = Chain(store, g)
    seq = net.keys["sequencer"]
    nonces: dict[bytes, int] = {}
    clock = [g.genesis_time_ms]
    rng = np.random.default_rng(seed)

    def tx(name: str, body) -> SignedTx:  # noqa: ANN001
        key = net.keys[name]
        n = nonces.get(key.address, 0)
        nonces[key.address] = n + 1
        return Tx(g.chain_id, key.address, n, g.params.tx_base_fee, body).sign(key)

    def block(txs: list[SignedTx], note: str) -> list[Event]:
        clock[0] += g.params.block_time_ms
        t0 = time.perf_counter()
        b, result, rejected = chain.build(txs, clock[0], seq)
        ms = (time.perf_counter() - t0) * 1000
        failed = sum(1 for r in result.receipts[:-1] if r.status)
        events = result.events
        names = sorted({e.name for e in events})
        print(f"  block {b.height:3d}  txs {len(b.txs):3d}  failed {failed}  {ms:6.1f} ms  root "
              f"{b.header.state_root.hex()[:12]}  {note}  [{', '.join(names)}]")
        if rejected:
            raise RuntimeError(f"demo built an invalid tx: {rejected[0][1].reason}")
        return events

    names = [f"client-{i}" for i in range(clients)]
    block([tx(n, Stake(2 * g.params.min_stake)) for n in names], "clients stake")
    arch = (8, 6, 3)
    n_params = param_count(arch)
    body = CreateTask(arch, 8, rng.integers(-200, 200, n_params).astype("<i4").tobytes(), 9000, 3, 5, clients, 1,
                      1, 2, 100, 1, rng.integers(-256, 256, 20 * arch[0]).astype("<i2").tobytes(),
                      rng.integers(0, arch[-1], 20).astype(np.uint8).tobytes())
    block([tx("user", body), tx("user", Transfer(net.keys["client-0"].address, 1234))], "user creates task 1")
    block([tx(n, JoinTask(1)) for n in names], "clients join; the task starts")
    for round_ in (1, 2, 3):
        # Only two updates per round: fewer than 2f+3, so each round is void (scoring arrives with "Rounds").
        deltas = [rng.integers(-100, 100, n_params).astype("<i2").tobytes() for _ in range(2)]
        block([tx(names[i], SubmitUpdate(1, round_, deltas[i])) for i in range(2)], f"round {round_}: 2 updates")
        events = block([], "deadline")
        if any(e.name == "TaskExpired" for e in events):
            break
    breakdown, supply = compute_supply(store.iter_state())
    print(f"  supply check  {breakdown.total} == genesis {supply}: {'ok' if breakdown.total == supply else 'BROKEN'}")

    # an independent replay of everything committed, from genesis, into a fresh state
    replay = Chain(MemoryStore(), g)
    head = chain.head
    for h in range(1, head.height + 1):
        replay.apply(decode_block(store.get_block(h) or b""))
    ok = replay.head == head
    print(f"  replay        {head.height} blocks re-executed from genesis: "
          f"{'all roots match' if ok else 'DIVERGED'}")
    store.close()
    print(f"  inspect with  mpsnode inspect --home {root} task 1")
    return 0 if ok and breakdown.total == supply else 1
