"""Benchmark: the sparse Merkle state tree at 10^5 and 10^6 keys.

Prints one JSON object per tree size:

- ``build_s``: one ``update`` inserting all N keys (32-byte keys, 64-byte values) into an empty tree,
  including hashing the keys and values;
- ``updates_per_s``: changed keys per second over batches of ``BATCH`` random changes on the N-key
  tree (half modify existing keys, half insert new ones), timing ``update`` alone; after each
  batch the pending records move into the store, as a block commit would do;
- ``proof_bytes_avg``: mean msgpack size of an encoded proof, over present and absent keys alike;
- ``prove_us`` / ``verify_us``: mean time of ``prove`` and of ``verify_proof`` per key.

    python bench/smt.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpsnode.consensus.encoding import encode
from mpsnode.consensus.smt import MemoryNodeStore, SparseMerkleTree, verify_proof

BATCH = 1000
UPDATE_BATCHES = 20
PROOF_SAMPLES = 2000


def run(n: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    items = {rng.randbytes(32): rng.randbytes(64) for _ in range(n)}
    keys = list(items)

    store = MemoryNodeStore()
    tree = SparseMerkleTree(store)
    gc.collect()
    t0 = time.perf_counter()
    tree.update(items)
    build_s = time.perf_counter() - t0
    store.put_nodes(tree.pending_nodes())
    tree.clear_pending()

    update_s = 0.0
    for _ in range(UPDATE_BATCHES):
        changes: dict[bytes, bytes | None] = {}
        for _ in range(BATCH // 2):
            changes[rng.choice(keys)] = rng.randbytes(64)
        while len(changes) < BATCH:
            key = rng.randbytes(32)
            changes[key] = rng.randbytes(64)
        t0 = time.perf_counter()
        tree.update(changes)
        update_s += time.perf_counter() - t0
        store.put_nodes(tree.pending_nodes())
        tree.clear_pending()
        for k, v in changes.items():
            if k not in items:
                keys.append(k)
            items[k] = v  # type: ignore[assignment]

    samples: list[tuple[bytes, bytes | None]] = [(k, items[k]) for k in rng.sample(keys, PROOF_SAMPLES // 2)]
    samples += [(rng.randbytes(32), None) for _ in range(PROOF_SAMPLES - len(samples))]
    t0 = time.perf_counter()
    proofs = [tree.prove(k) for k, _ in samples]
    prove_s = time.perf_counter() - t0
    root = tree.root
    t0 = time.perf_counter()
    ok = [verify_proof(root, k, v, p) for (k, v), p in zip(samples, proofs, strict=True)]
    verify_s = time.perf_counter() - t0
    if not all(ok):
        raise SystemExit("a proof failed to verify")
    proof_bytes = sum(len(encode(p.encode())) for p in proofs) / len(proofs)

    return {
        "bench": "smt",
        "n_keys": n,
        "build_s": round(build_s, 3),
        "updates_per_s": round(UPDATE_BATCHES * BATCH / update_s),
        "batch": BATCH,
        "batch_ms": round(update_s / UPDATE_BATCHES * 1e3, 2),
        "proof_bytes_avg": round(proof_bytes, 1),
        "prove_us": round(prove_s / len(samples) * 1e6, 2),
        "verify_us": round(verify_s / len(samples) * 1e6, 2),
        "store_nodes": len(store),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 keys only")
    args = parser.parse_args()
    sizes = [10**4] if args.quick else [10**5, 10**6]
    for n in sizes:
        print(json.dumps(run(n, seed=n)), flush=True)


if __name__ == "__main__":
    main()
