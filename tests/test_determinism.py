"""Determinism, proven: one chain, replayed in fresh processes under three numba configurations.

The chain has three tasks and covers every path of round closing: honest rounds, boosted and noise
outliers flagged and slashed, a void round, a completed task (billing, rewards, refund), a task
expiring at max_rounds and one expiring at its join deadline. Each replay decodes the blocks,
re-executes them from genesis and prints the state root and receipts root at every height:

- ``NUMBA_DISABLE_JIT=1``: every kernel runs as plain Python (the kernels' own source, interpreted);
- JIT with ``NUMBA_NUM_THREADS=1``;
- JIT with ``NUMBA_NUM_THREADS=2`` (the parallel kernels split their columns two ways).

All three must print exactly the producer's roots, height by height.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpsnode.consensus import model
from mpsnode.consensus.block import decode_block
from mpsnode.consensus.events import RoundClosed, Slashed, TaskCompleted, TaskExpired
from mpsnode.consensus.params import Params
from mpsnode.consensus.receipt import decode_receipts
from mpsnode.consensus.state import TaskStatus
from mpsnode.consensus.tx import CreateTask, JoinTask, Stake
from mpsnode.node.files import save_genesis

from chainkit import Kit

REPO = Path(__file__).resolve().parent.parent
ARCH = (16, 24, 10)
N = model.param_count(ARCH)

REPLAY = """
import json, sys
from mpsnode.consensus.block import decode_block
from mpsnode.node.chain import Chain
from mpsnode.node.files import load_genesis
from mpsnode.node.store import MemoryStore

genesis = load_genesis(sys.argv[1])
chain = Chain(MemoryStore(), genesis)
roots = []
for line in open(sys.argv[2]).read().split():
    result = chain.apply(decode_block(bytes.fromhex(line)))
    roots.append([chain.head.height, chain.head.state_root.hex(), chain.head.block_hash.hex()])
import numba
print(json.dumps({"threads": numba.config.NUMBA_NUM_THREADS, "jit": not numba.config.DISABLE_JIT, "roots": roots}))
"""


def _task(
    rng: np.random.Generator,
    teacher: np.ndarray,
    *,
    f: int,
    min_clients: int,
    max_clients: int,
    max_rounds: int,
    target_bps: int,
    samples: int = 120,
) -> CreateTask:
    x = rng.integers(-400, 400, (samples, ARCH[0])).astype("<i2")
    y = model.predict_reference(teacher.astype(np.int32), ARCH, 8, x).astype(np.uint8)
    init = rng.integers(-500, 500, N).astype("<i4")
    return CreateTask(
        ARCH,
        8,
        init.tobytes(),
        target_bps,
        max_rounds,
        min_clients,
        max_clients,
        f,
        1,
        3,
        100,
        1,
        x.tobytes(),
        y.tobytes(),
    )


def build_chain() -> tuple[Kit, list[bytes]]:
    kit = Kit(clients=14, params=Params(unbonding_blocks=3))
    rng = np.random.default_rng(99)
    teacher = rng.integers(-500, 500, N).astype(np.int64)
    clients = kit.clients
    bodies = [
        _task(rng, teacher, f=2, min_clients=7, max_clients=9, max_rounds=6, target_bps=8_000),  # completes
        _task(rng, teacher, f=1, min_clients=5, max_clients=5, max_rounds=2, target_bps=10_000),  # max_rounds
        _task(
            rng, teacher, f=1, min_clients=5, max_clients=5, max_rounds=2, target_bps=5_000
        ),  # join deadline
    ]
    kit.block([kit.tx(kit.user, b) for b in bodies] + [kit.tx(c, Stake(3000)) for c in clients])
    kit.block(
        [kit.tx(c, JoinTask(1)) for c in clients[:9]]
        + [kit.tx(c, JoinTask(2)) for c in clients[9:14]]
        + [kit.tx(clients[0], JoinTask(3))]
    )

    def honest(task_id: int, seed: int) -> np.ndarray:
        w = np.frombuffer(kit.chain.state().get_model(task_id), dtype="<i4").astype(np.int64)
        noise = np.random.default_rng(seed).integers(-20, 21, N)
        return np.clip((teacher - w) // 3 + noise, -32768, 32767)

    def updates(task_id: int, round_: int, who: list[int], attack: dict[int, str], seed: int) -> list[tuple]:
        txs = []
        for i in who:
            d = honest(task_id, seed + i)
            if attack.get(i) == "boost":
                d = np.clip(d * 50, -32768, 32767)
            elif attack.get(i) == "noise":
                d = np.random.default_rng(seed + 1000 + i).integers(-20000, 20000, N)
            txs.append((clients[i], task_id, round_, d.astype("<i2").tobytes()))
        return txs

    # round 1: task 1 with a boosted and a noise attacker (both slashed); task 2 with 2 updates (void)
    kit.submit_many(
        updates(1, 1, list(range(9)), {7: "boost", 8: "noise"}, 10) + updates(2, 1, [9, 10], {}, 20)
    )
    for _ in range(2):
        kit.block()  # task 2's round 1 reaches its deadline (void)
    # round 2: task 2 scored with one attacker (slashed), then expires at max_rounds
    kit.submit_many(
        updates(1, 2, list(range(7)), {}, 200) + updates(2, 2, [9, 10, 11, 12, 13], {13: "boost"}, 30)
    )
    for round_ in range(3, 7):
        if kit.chain.state().get_task(1).status != TaskStatus.ACTIVE:
            break
        kit.submit_many(updates(1, round_, list(range(7)), {}, 100 * round_))
    kit.block()
    blocks = [kit.store.get_block(h) for h in range(1, kit.chain.head.height + 1)]
    return kit, blocks


@pytest.fixture(scope="module")
def chain() -> tuple[Kit, list[bytes]]:
    return build_chain()


def test_the_chain_covers_every_round_path(chain: tuple[Kit, list[bytes]]) -> None:
    kit, _ = chain
    events = [
        e
        for h in range(1, kit.chain.head.height + 1)
        for r in decode_receipts(kit.store.get_receipts(h))
        for e in r.events
    ]
    closes = [e for e in events if isinstance(e, RoundClosed)]
    assert any(e.void for e in closes) and sum(not e.void for e in closes) >= 3
    slashed = [e for e in events if isinstance(e, Slashed)]
    assert {(e.task_id, e.address) for e in slashed} == {
        (1, kit.clients[7].address),
        (1, kit.clients[8].address),
        (2, kit.clients[13].address),
    }
    assert [e.task_id for e in events if isinstance(e, TaskCompleted)] == [1]
    assert sorted((e.task_id, e.reason) for e in events if isinstance(e, TaskExpired)) == [(2, 2), (3, 1)]


@pytest.mark.parametrize("config", ["nojit", "jit-1-thread", "jit-2-threads"])
def test_replay_in_a_fresh_process_gives_identical_roots(
    config: str, chain: tuple[Kit, list[bytes]], tmp_path: Path
) -> None:
    kit, blocks = chain
    expected = []
    for h, data in enumerate(blocks, start=1):
        block = decode_block(data)
        expected.append([h, block.header.state_root.hex(), block.hash().hex()])
    save_genesis(kit.genesis, tmp_path / "genesis.json")
    (tmp_path / "blocks.hex").write_text("\n".join(b.hex() for b in blocks))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") or k == "NUMBA_CACHE_DIR"}
    env.pop("PYTHONPATH", None)
    if config == "nojit":
        env["NUMBA_DISABLE_JIT"] = "1"
    else:
        env["NUMBA_NUM_THREADS"] = "1" if config == "jit-1-thread" else "2"
    out = subprocess.run(
        [sys.executable, "-c", REPLAY, str(tmp_path / "genesis.json"), str(tmp_path / "blocks.hex")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["jit"] == (config != "nojit")
    if config != "nojit":
        assert report["threads"] == (1 if config == "jit-1-thread" else 2)
    assert report["roots"] == expected
