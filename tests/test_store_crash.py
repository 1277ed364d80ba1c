"""Crash consistency of LmdbStore: SIGKILL a block-committing process at random moments.

A child process commits blocks in a loop, as a sequencer would: it takes the pending mempool
txs (adding a few new ones first, in their own group-commit transaction), writes a few hundred
random state sets and deletes (some values 100 KB), computes the new state root with the sparse
Merkle tree and commits everything in one ``BlockCommit``. The parent kills it at random moments,
reopens the store and checks that it is exactly the state after some whole block:

* the head's state root is the reference root of the stored state, and the tree rebuilt from the
  stored nodes proves present and absent keys against it (and refuses wrong values);
* the state equals the fold of every stored block's writes (each block records digests of them);
* every height up to the head has its block, header, receipts and hash index, none above it; the
  header names the head's root; the head is the last block the child reported or the one after;
* no tx of a committed block is still in the mempool, and the mempool's counters match its items.

Then a new child resumes from the reopened head. Set ``MPS_CRASH_SEED`` to replay a run.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest

from mpsnode.node.store import LmdbStore

REPO = Path(__file__).resolve().parent.parent
KEYS = 1200

CHILD = textwrap.dedent("""
    import hashlib, random, sys
    import msgpack
    from mpsnode.consensus.hashing import HEADER, H, ZERO32
    from mpsnode.consensus.smt import SparseMerkleTree
    from mpsnode.node.store import BlockCommit, Head, LmdbStore

    path, seed, n_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    keys = [b"key/%05d" % i for i in range(n_keys)]

    def digest(value):
        return b"" if value is None else hashlib.blake2b(value, digest_size=16).digest()

    with LmdbStore(path) as store:
        head = store.head()
        height = 0 if head is None else head.height + 1
        tree = SparseMerkleTree(store, ZERO32 if head is None else head.state_root)
        print("ready", height, flush=True)
        while True:
            store.mempool_put([(rng.randbytes(32), rng.randbytes(rng.randint(50, 3000)))
                               for _ in range(rng.randint(0, 6))])
            txs = store.mempool_items(limit=8)
            tx_ids = tuple(tx_id for tx_id, _ in txs)
            writes = {}
            for _ in range(rng.randint(100, 300)):
                r = rng.random()
                if r < 0.3:
                    value = None
                elif r < 0.33:
                    value = rng.randbytes(100_000)
                else:
                    value = rng.randbytes(rng.randint(1, 300))
                writes[rng.choice(keys)] = value
            root = tree.update(writes)
            block = msgpack.packb([list(tx_ids), sorted([k, digest(v)] for k, v in writes.items())])
            header = msgpack.packb([height, root])
            store.commit(BlockCommit(
                head=Head(height, H(HEADER, header), root, 1000 * height),
                block=block, header=header, tx_ids=tx_ids,
                receipts=msgpack.packb([height, len(tx_ids)]), events=msgpack.packb([height]),
                state_writes=writes, node_writes=tree.pending_nodes(),
                task_events={height % 3: msgpack.packb([height])},
                mempool_remove=tx_ids,
            ))
            tree.clear_pending()
            print("committed", height, flush=True)
            height += 1
""")


@dataclass
class Replay:
    """The fold of the blocks checked so far (blocks are immutable once committed)."""

    height: int = -1
    state: dict[bytes, bytes] = field(default_factory=dict)  # key -> value digest
    txs: set[bytes] = field(default_factory=set)


def check_store(path: Path, low: int, high: int, replay: Replay, rng: random.Random, context: str) -> int:
    """Check every invariant of a store left by a killed writer; return its head height (-1: empty).

    ``low..high`` bounds the head: at least every block whose commit returned, at most one more.
    ``replay`` is advanced to the head.
    """
    from mpsnode.consensus.hashing import HEADER, H
    from mpsnode.consensus.smt import SparseMerkleTree, compute_root_reference, verify_proof

    with LmdbStore(path) as store:
        head = store.head()
        top = -1 if head is None else head.height
        assert low <= top <= high, f"{context}: head at {top}, expected {low}..{high}"
        if head is None:
            assert store.get_block(0) is None and list(store.iter_state()) == []
            return -1

        state = dict(store.iter_state())
        assert head.state_root == compute_root_reference(state), f"{context}: state root != reference"

        for h in range(replay.height + 1, head.height + 1):
            block, header = store.get_block(h), store.get_header(h)
            assert block is not None and header is not None, f"{context}: block {h} missing"
            assert store.get_receipts(h) is not None and store.get_events(h) is not None
            assert store.get_height(H(HEADER, header)) == h
            tx_ids, writes = msgpack.unpackb(block)
            for i, tx_id in enumerate(tx_ids):
                assert store.get_tx_location(tx_id) == (h, i)
            replay.txs.update(tx_ids)
            for key, d in writes:
                if d == b"":
                    replay.state.pop(key, None)
                else:
                    replay.state[key] = d
        replay.height = top
        for getter in (store.get_block, store.get_header, store.get_receipts, store.get_events):
            assert getter(top + 1) is None, f"{context}: data above the head"
        assert msgpack.unpackb(store.get_header(top)) == [top, head.state_root]
        assert {k: hashlib.blake2b(v, digest_size=16).digest() for k, v in state.items()} == replay.state, (
            f"{context}: state is not the fold of the stored blocks"
        )
        assert [h for h, _ in store.get_task_events(top % 3)][-1] == top

        items = store.mempool_items()
        assert store.mempool_size() == (len(items), sum(len(tx) for _, tx in items))
        assert not {tx_id for tx_id, _ in items} & replay.txs, f"{context}: committed tx in mempool"

        tree = SparseMerkleTree(store, head.state_root)
        present = rng.sample(sorted(state), min(4, len(state)))
        absent = [k for k in (b"key/%05d" % i for i in rng.sample(range(KEYS), 20)) if k not in state][:3]
        absent.append(b"never a key")
        for key in present:
            proof = tree.prove(key)
            assert verify_proof(head.state_root, key, state[key], proof), f"{context}: proof of {key!r}"
            assert not verify_proof(head.state_root, key, state[key] + b"!", proof)
            assert not verify_proof(head.state_root, key, None, proof)
        for key in absent:
            proof = tree.prove(key)
            assert verify_proof(head.state_root, key, None, proof), f"{context}: exclusion of {key!r}"
            assert not verify_proof(head.state_root, key, b"v", proof)
        return top


def last_reported(log: Path) -> int | None:
    done = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("committed ")]
    return done[-1] if done else None


def run_crashes(tmp_path: Path, kills: int, max_delay: float) -> None:
    seed = int(os.environ.get("MPS_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    path = tmp_path / "chain"
    height, replay = -1, Replay()
    for i in range(kills):
        context = f"seed {seed}, kill {i}"
        log, err = tmp_path / f"out{i}.log", tmp_path / f"err{i}.log"
        with open(log, "w") as out, open(err, "w") as errf:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path), str(rng.randrange(2**32)), str(KEYS)],
                cwd=REPO,
                stdout=out,
                stderr=errf,
            )
        try:
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0, 0.3))  # sometimes while it starts up or opens the store
            else:
                deadline = time.monotonic() + 30
                while "ready" not in log.read_text():
                    assert child.poll() is None, f"{context}: child died: {err.read_text()}"
                    assert time.monotonic() < deadline, f"{context}: child never got ready"
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, max_delay))
            assert child.poll() is None, f"{context}: child exited early: {err.read_text()}"
            child.send_signal(signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
        assert child.returncode == -signal.SIGKILL, f"{context}: {err.read_text()}"
        ready = [line for line in log.read_text().splitlines() if line.startswith("ready ")]
        if ready:
            assert int(ready[0].split()[1]) == height + 1, f"{context}: child did not resume from the head"
        reported = last_reported(log)
        low = height if reported is None else reported
        high = height + 1 if reported is None else reported + 1
        height = check_store(path, low, high, replay, rng, context)
    assert height >= kills // 2, f"seed {seed}: only {height + 1} blocks in {kills} runs, too few"


def test_sigkill_leaves_a_consistent_store(tmp_path: Path) -> None:
    run_crashes(tmp_path, kills=20, max_delay=0.6)


@pytest.mark.soak
def test_sigkill_soak(tmp_path: Path) -> None:
    run_crashes(tmp_path, kills=200, max_delay=1.0)
