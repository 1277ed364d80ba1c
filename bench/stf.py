"""STF throughput: blocks of signed transfers applied with signature checks, against the raw
ed25519 verify rate measured in the same run. Prints one JSON object per result.

    python bench/stf.py [--blocks N] [--txs-per-block N] [--store memory|lmdb] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import genesis as genesis_tool
from mpsnode.consensus import crypto
from mpsnode.consensus.tx import Transfer, Tx
from mpsnode.node.chain import Chain
from mpsnode.node.files import generate_key
from mpsnode.node.store import LmdbStore, MemoryStore


def raw_verify_rate(n: int = 5000) -> float:
    key = generate_key()
    msgs = [os.urandom(32) for _ in range(n)]
    sigs = [key.sign(m) for m in msgs]
    t0 = time.perf_counter()
    for m, s in zip(msgs, sigs, strict=True):
        if not crypto.verify(key.address, m, s):
            raise RuntimeError("verify failed")
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--txs-per-block", type=int, default=1000)
    ap.add_argument("--store", choices=["memory", "lmdb"], default="memory")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.blocks, args.txs_per_block = 3, 200
    n = args.txs_per_block
    g, keys = genesis_tool.devnet(clients=n)
    senders = [keys[f"client-{i}"] for i in range(n)]
    seq = keys["sequencer"]

    scratch = tempfile.TemporaryDirectory(prefix="bench-stf-")  # both LMDB stores, removed at exit

    def open_store():
        if args.store == "memory":
            return MemoryStore()
        return LmdbStore(Path(tempfile.mkdtemp(dir=scratch.name)))

    # produce the blocks once (sequencer path), then measure the verifier path on a fresh chain
    producer = Chain(open_store(), g)
    blocks = []
    t_ms = g.genesis_time_ms
    for b in range(args.blocks):
        txs = [
            Tx(g.chain_id, k.address, b, 1, Transfer(senders[(i + 1) % n].address, 1 + b)).sign(k)
            for i, k in enumerate(senders)
        ]
        t_ms += 1000
        block, _, rejected = producer.build(txs, t_ms, seq)
        assert not rejected
        blocks.append(block)

    verify_rate = raw_verify_rate()
    follower = Chain(open_store(), g)
    t0 = time.perf_counter()
    for block in blocks:
        follower.apply(block)
    elapsed = time.perf_counter() - t0
    assert follower.head == producer.head
    rate = args.blocks * n / elapsed
    print(
        json.dumps(
            {
                "bench": "stf_apply",
                "store": args.store,
                "blocks": args.blocks,
                "txs_per_block": n,
                "tx_per_s": round(rate),
                "raw_ed25519_verify_per_s": round(verify_rate),
                "ratio": round(rate / verify_rate, 3),
                "target_ratio": 0.5,
                "met": rate / verify_rate >= 0.5,
            }
        )
    )


if __name__ == "__main__":
    main()
