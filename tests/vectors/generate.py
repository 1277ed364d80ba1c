"""Write the golden vectors: ``python tests/vectors/generate.py [OUT_DIR]``.

Each case is a folder: ``genesis.json`` (the devnet, with the case's parameters), ``blocks.hex``
(one canonical block per line, hex) and ``expected.json``: the L1 as data for a settlement case
(``l1_deposits``: the portal's deposits; a block's L1 facts are ``settlement.facts_for`` of them at
its origin), per valid block its hash and roots, receipt
statuses, every event (as JSON) and the blake2b-256 hash of every task's model after the block,
and for a case ending in a bad block, the error it must raise (``"error": {"type": ..., "match":
...}``). The ``rounds`` case pins round closing: Krum scores, selection, flagging and slashing,
aggregation (model hashes), evaluation, completion billing and payments, expiry refunds. Everything is deterministic (devnet keys, fixed
timestamps, deterministic ed25519), so regenerating must reproduce the checked-in files byte for
byte: a difference is a consensus change.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import genesis as genesis_tool  # noqa: E402
from mpsnode.node.files import save_genesis
from mpsnode.consensus.block import Block, compute_tx_root, sign_header  # noqa: E402
from mpsnode.node.chain import Chain  # noqa: E402
from mpsnode.consensus.hashing import MODEL, H  # noqa: E402
from mpsnode.consensus.model import param_count, predict_reference  # noqa: E402
from mpsnode.consensus.params import Params  # noqa: E402
from mpsnode.node.store import MemoryStore  # noqa: E402
from mpsnode.consensus.state import RoundPhase  # noqa: E402
from mpsnode.consensus.settlement import Deposit, L1Config, L1Facts, facts_for  # noqa: E402
from mpsnode.consensus.tx import CreateTask, JoinTask, SignedTx, Stake, Transfer, Tx, Unstake, Withdraw, commit_reveal  # noqa: E402

PARAMS = Params(unbonding_blocks=3, min_stake=1000)
CLIENTS = 6


L1 = L1Config(chain_id=31337, portal=bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512"),
              oracle=bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"), start_block=2, deposit_window=4)


class Builder:
    def __init__(self, clients: int = CLIENTS, l1: L1Config | None = None) -> None:
        self.genesis, self.keys = genesis_tool.devnet(clients, PARAMS, l1)
        self.chain = Chain(MemoryStore(), self.genesis)
        self.deposits: list[Deposit] = []
        self.l1_head = l1.start_block if l1 is not None else 0
        self.nonces: dict[bytes, int] = {}
        self.time_ms = self.genesis.genesis_time_ms
        self.blocks: list[bytes] = []
        self.expected: list[dict] = []

    def c(self, i: int):  # noqa: ANN201
        return self.keys[f"client-{i}"]

    def tx(self, name: str, body, fee: int = 1, nonce: int | None = None) -> SignedTx:  # noqa: ANN001
        key = self.keys[name]
        if nonce is None:
            nonce = self.nonces.get(key.address, 0)
            self.nonces[key.address] = nonce + 1
        return Tx(self.genesis.chain_id, key.address, nonce, fee, body).sign(key)

    def deposit(self, name: str, amount: int, blocks: int = 1) -> Deposit:
        """A deposit for ``name`` on the L1 of the data, ``blocks`` L1 blocks after the last one."""
        self.l1_head += blocks
        made = Deposit(len(self.deposits), self.l1_head, self.keys[name].address, amount)
        self.deposits.append(made)
        return made

    def facts(self, origin: int | None = None) -> L1Facts | None:
        if self.genesis.l1 is None:
            return None
        credited = self.chain.state().get_settlement().deposits
        return facts_for(self.l1_head if origin is None else origin, credited, self.deposits)

    def block(self, txs: list[SignedTx] = ()) -> Block:  # type: ignore[assignment]
        self.time_ms += 1000
        block, result, rejected = self.chain.build(list(txs), self.time_ms, self.keys["sequencer"], l1=self.facts())
        if rejected:
            raise RuntimeError(f"generator built an invalid tx: {rejected[0][1].reason}")
        self.blocks.append(block.encode().hex())
        self.expected.append({"height": block.height, "hash": block.hash().hex(),
                              "state_root": block.header.state_root.hex(),
                              "receipts_root": block.header.receipts_root.hex(),
                              "statuses": [r.status for r in result.receipts],
                              "events": [e.to_json() for r in result.receipts for e in r.events],
                              "models": model_hashes(self.chain)})
        return block

    def submit(self, items: list[tuple[str, int, int, bytes]], extra: list[tuple[str, object]] = ()) -> Block:  # type: ignore[assignment]
        """Commit every (name, task, round, delta) in one block (with ``extra``), add empty blocks until
        each of those rounds is in its reveal phase (or over), then reveal them in one block."""
        pairs = []
        for name, task_id, round_, d in items:
            salt = H(b"vector-salt", name.encode() + bytes([task_id, round_]))
            pairs.append((name, task_id, round_, commit_reveal(self.genesis.chain_id, task_id, round_,
                                                              self.keys[name].address, d, salt)))
        commits = [self.tx(name, c) for name, _, _, (c, _) in pairs]
        self.block(commits + [self.tx(name, body) for name, body in extra])

        def phase_of(task_id: int, round_: int) -> RoundPhase | None:
            task = self.chain.state().get_task(task_id)
            if task is None or task.round != round_ or task.status.name != "ACTIVE":
                return None
            return task.phase

        while any(phase_of(t, r) == RoundPhase.COMMIT for _, t, r, _ in pairs):
            self.block()
        return self.block([self.tx(name, rv) for name, t, r, (_, rv) in pairs if phase_of(t, r) == RoundPhase.REVEAL])

    def bad(self, block_bytes: bytes, error: str, match: str) -> dict:
        self.blocks.append(block_bytes.hex())
        return {"type": error, "match": match}

    def next_header(self, txs: tuple[SignedTx, ...]):  # noqa: ANN201
        """A header on top of the head whose tx_root fits ``txs`` (other roots zero)."""
        from mpsnode.consensus.block import Header

        head = self.chain.head_header
        return Header(head.chain_id, head.height + 1, head.hash(), head.timestamp_ms + 1000,
                      compute_tx_root(txs), bytes(32), bytes(32))


def forged(b: Builder, facts: L1Facts, txs: list[SignedTx] = ()) -> Block:  # type: ignore[assignment]
    """A block the sequencer signs on facts of its own choosing (to record a bad block)."""
    from mpsnode.consensus.stf.transition import build_block

    chain = b.chain
    block, _, _ = build_block(chain.state(), chain.tree(), chain.head_header, chain.config, list(txs),
                              b.time_ms + 1000, b.keys["sequencer"], l1=facts)
    return block


def model_hashes(chain: Chain) -> dict[str, str]:
    """Every task's current model as ``{task_id: H(mps-model, weights)}``."""
    state = chain.state()
    out = {}
    for task_id in range(1, state.get_globals().next_task_id):
        weights = state.get_model(task_id)
        if weights is not None:
            out[str(task_id)] = H(MODEL, weights).hex()
    return out


def task_body(arch=(4, 3), f: int = 1, min_clients: int = 5, max_rounds: int = 2) -> CreateTask:  # noqa: ANN001
    rng = np.random.default_rng(42)
    n = param_count(arch)
    return CreateTask(tuple(arch), 8, rng.integers(-999, 999, n).astype("<i4").tobytes(), 9000, max_rounds,
                      min_clients, 6, f, 1, 2, 50, 1, rng.integers(-300, 300, 6 * arch[0]).astype("<i2").tobytes(),
                      rng.integers(0, arch[-1], 6).astype(np.uint8).tobytes())


def delta(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(-50, 50, n).astype("<i2").tobytes()


# ---------------------------------------------------------------------------------------------
# cases


def case_transfers(b: Builder) -> dict | None:
    b.block([b.tx("client-0", Transfer(b.c(1).address, 100)), b.tx("client-1", Transfer(b.c(2).address, 5), fee=7)])
    b.block([b.tx("client-0", Transfer(b.c(1).address, 10**9))])  # fails: insufficient balance
    b.block([b.tx("client-2", Stake(1500)), b.tx("client-2", Unstake(500))])
    b.block([b.tx("client-2", Unstake(2000))])  # fails: insufficient bonded
    b.block()
    b.block()  # unbonding released here (3 blocks later)
    return None


def case_task_lifecycle(b: Builder) -> dict | None:
    b.block([b.tx("user", task_body())] + [b.tx(f"client-{i}", Stake(1000)) for i in range(CLIENTS)])
    b.block([b.tx(f"client-{i}", JoinTask(1)) for i in range(5)] + [b.tx("client-5", JoinTask(1))])
    n = param_count((4, 3))
    # client-1 reveals client-0's delta (refused as a duplicate), client-2 commits to round 2 (refused),
    # client-0's unstake fails (bonded in a task): round 1 is void with one update, round 2 void with
    # none, and the task expires with a refund.
    b.submit([("client-0", 1, 1, delta(n, 0)), ("client-1", 1, 1, delta(n, 0)), ("client-2", 1, 2, delta(n, 2))],
             [("client-0", Unstake(1))])
    for _ in range(8):
        b.block()
    return None


ROUNDS_ARCH = (4, 5, 3)


def _rounds_case(b: Builder, target_bps: int) -> list[int]:
    """Two tasks. Task 1 (f=1, 7 clients): round 1 all submit and client-6 sends a boosted update
    (Krum flags it: slashed, jailed, removed); round 2 five of the six left commit, the reveal phase
    opens at the commit deadline (the contribution direction now off the span of round 1's seven
    updates), and the round closes when the five have revealed; the model reaches ``target_bps`` and
    the task completes (billing by contribution units, refund of what was not earned). Client-6 then tops its stake up and is unjailed. Task 2 (f=0,
    3 clients, one round, unreachable target) closes one scored round and expires with a refund.

    Honest updates move the model halfway towards a teacher model (plus noise) whose predictions are
    the validation labels, so accuracy rises round by round. Returns each scored round's accuracy."""
    rng = np.random.default_rng(2024)
    n = param_count(ROUNDS_ARCH)
    teacher = rng.integers(-600, 600, n).astype(np.int32)
    samples = 24
    val_x = rng.integers(-300, 300, (samples, ROUNDS_ARCH[0])).astype("<i2")
    val_y = predict_reference(teacher, ROUNDS_ARCH, 8, val_x).astype(np.uint8)
    init = rng.integers(-600, 600, n).astype("<i4")
    task1 = CreateTask(ROUNDS_ARCH, 8, init.tobytes(), target_bps, 3, 5, 7, 1, 1, 3, 777, 1, val_x.tobytes(),
                       val_y.tobytes())
    task2 = CreateTask((3, 2), 8, rng.integers(-99, 99, 8).astype("<i4").tobytes(), 10_000, 1, 3, 3, 0, 1, 3,
                       50, 1, rng.integers(-99, 99, 12).astype("<i2").tobytes(), bytes([0, 1, 1, 0]))
    b.block([b.tx("user", task1), b.tx("user", task2)] + [b.tx(f"client-{i}", Stake(2000)) for i in range(10)])
    b.block([b.tx(f"client-{i}", JoinTask(1)) for i in range(7)] + [b.tx(f"client-{i}", JoinTask(2)) for i in (7, 8, 9)])

    def honest(seed: int) -> bytes:
        w = np.frombuffer(b.chain.state().get_model(1), dtype="<i4").astype(np.int64)
        noise = np.random.default_rng(seed).integers(-6, 7, n)
        return np.clip((teacher - w) // 2 + noise, -32768, 32767).astype("<i2").tobytes()

    accuracies = []
    round1 = [(f"client-{i}", 1, 1, honest(100 + i)) for i in range(6)]
    boosted = np.clip(np.frombuffer(honest(106), dtype="<i2").astype(np.int64) * 40, -32768, 32767)
    round1.append(("client-6", 1, 1, boosted.astype("<i2").tobytes()))
    round1 += [(f"client-{i}", 2, 1, delta(8, i)) for i in (7, 8, 9)]
    b.submit(round1)  # every participant committed and revealed: both rounds close in the reveal block
    accuracies.append(b.chain.state().get_task(1).accuracy_bps)
    b.submit([(f"client-{i}", 1, 2, honest(200 + i)) for i in range(5)])  # reveal waits for the commit deadline
    accuracies.append(b.chain.state().get_task(1).accuracy_bps)
    b.block([b.tx("client-6", Stake(500))])  # back above min_stake: unjailed
    return accuracies


def case_rounds(b: Builder) -> dict | None:
    scratch = Builder(CASE_CLIENTS["rounds"])
    first, second = _rounds_case(scratch, 10_000)
    if not first < second:
        raise RuntimeError(f"rounds case: accuracy must rise between rounds to pin completion, got {first}, {second}")
    _rounds_case(b, second)  # the same chain, with the target met exactly in round 2
    return None


def case_liveness(b: Builder) -> dict | None:
    """One task (f=1, 5 clients, arch (4, 3)): round 1 client-4 sends a boosted update and is slashed
    (the task has now removed one of its f: later rounds run with f = 0); client-3 stops submitting
    from round 2 and is removed, without a slash, when round 4 closes (3 missed rounds in a row);
    client-2 stops from round 5, so rounds 5.. have 2 updates (void), and when it is removed the task
    has 2 participants, fewer than any round needs: it expires (reason 3) with a refund."""
    rng = np.random.default_rng(77)
    arch = (4, 3)
    n = param_count(arch)
    body = CreateTask(arch, 8, rng.integers(-500, 500, n).astype("<i4").tobytes(), 10_000, 12, 5, 5, 1, 1, 2,
                      40, 1, rng.integers(-300, 300, 8 * arch[0]).astype("<i2").tobytes(),
                      rng.integers(0, 3, 8).astype(np.uint8).tobytes())
    b.block([b.tx("user", body)] + [b.tx(f"client-{i}", Stake(1500)) for i in range(5)])
    b.block([b.tx(f"client-{i}", JoinTask(1)) for i in range(5)])
    base = rng.integers(-40, 41, n)  # a common direction: the rounds are coherent, so Krum's flag slashes
    for round_ in range(1, 13):
        task = b.chain.state().get_task(1)
        if task.status.name != "ACTIVE":
            break
        who = [i for i in range(5) if b.c(i).address in task.participants]
        who = [i for i in who if not (i == 3 and round_ >= 2) and not (i == 2 and round_ >= 5)]
        items = []
        for i in who:
            d = base + np.random.default_rng(1000 * round_ + i).integers(-10, 11, n)
            if i == 4:
                d = d * 300
            items.append((f"client-{i}", 1, round_, np.clip(d, -32768, 32767).astype("<i2").tobytes()))
        b.submit(items)
        while b.chain.state().get_task(1).round == round_ and b.chain.state().get_task(1).status.name == "ACTIVE":
            b.block()
    if b.chain.state().get_task(1).status.name != "EXPIRED":
        raise RuntimeError("liveness case: the task must expire with too few participants")
    return None


CASE_CLIENTS = {"rounds": 10}
SETTLED = {"settlement", "invalid_deposit_overdue", "invalid_deposit_mismatch"}


def _one_valid(b: Builder) -> None:
    b.block([b.tx("client-0", Transfer(b.c(1).address, 100))])


def case_invalid_bad_tx_signature(b: Builder) -> dict:
    _one_valid(b)
    stx = b.tx("client-0", Stake(10))
    sig = bytearray(stx.signature)
    sig[0] ^= 1
    bad = SignedTx(stx.tx, bytes(sig), stx.tx_id, stx.size)
    block = sign_header(b.next_header((bad,)), b.keys["sequencer"], (bad,))
    return b.bad(block.encode(), "BlockHasInvalidTx", "signature")


def case_invalid_wrong_nonce(b: Builder) -> dict:
    _one_valid(b)
    stx = b.tx("client-0", Stake(10), nonce=5)
    block = sign_header(b.next_header((stx,)), b.keys["sequencer"], (stx,))
    return b.bad(block.encode(), "BlockHasInvalidTx", "nonce")


def case_invalid_unpayable_fee(b: Builder) -> dict:
    _one_valid(b)
    stx = b.tx("client-0", Stake(10), fee=10**12)
    block = sign_header(b.next_header((stx,)), b.keys["sequencer"], (stx,))
    return b.bad(block.encode(), "BlockHasInvalidTx", "fee")


def case_invalid_wrong_parent(b: Builder) -> dict:
    _one_valid(b)
    header = replace(b.next_header(()), parent_hash=bytes(32))
    return b.bad(sign_header(header, b.keys["sequencer"], ()).encode(), "WrongParent", "parent")


def case_invalid_wrong_state_root(b: Builder) -> dict:
    _one_valid(b)
    stx = b.tx("client-0", Stake(10))
    # build the honest block on a scratch chain, then lie about the state root only
    scratch = Chain(MemoryStore(), b.genesis)
    for hexblock in b.blocks:
        from mpsnode.consensus.block import decode_block

        scratch.apply(decode_block(bytes.fromhex(hexblock)))
    honest, _, _ = scratch.build([stx], b.chain.head_header.timestamp_ms + 1000, b.keys["sequencer"])
    header = replace(honest.header, state_root=bytes(31) + b"\x01")
    return b.bad(sign_header(header, b.keys["sequencer"], honest.txs).encode(), "RootMismatch", "state_root")


def case_invalid_bad_sequencer_signature(b: Builder) -> dict:
    _one_valid(b)
    return b.bad(sign_header(b.next_header(()), b.c(0), ()).encode(), "BadBlockSignature", "sequencer")


def case_invalid_timestamp(b: Builder) -> dict:
    _one_valid(b)
    header = replace(b.next_header(()), timestamp_ms=b.chain.head_header.timestamp_ms)
    return b.bad(sign_header(header, b.keys["sequencer"], ()).encode(), "BadTimestamp", "timestamp")


def case_invalid_noncanonical(b: Builder) -> dict:
    _one_valid(b)
    block = sign_header(b.next_header(()), b.keys["sequencer"], ())
    data = block.encode()
    # the header's version 1 as a uint8 (0xcc 0x01) instead of a positive fixint: same value, other bytes
    obj_start = data.index(b"\x93\x98\x01") + 2
    data = data[:obj_start] + b"\xcc\x01" + data[obj_start + 1:]
    return b.bad(data, "BlockDecodeError", "non-canonical")


def case_settlement(b: Builder) -> dict | None:
    """Deposits credited in order (two in one block), a stake and a transfer from deposited value,
    withdrawals into the keccak tree (one failing: beyond the balance), a block naming a later
    origin with no new deposit."""
    b.deposit("user", 50_000)
    b.deposit("client-0", 3000)
    b.block()
    b.deposit("client-1", 2500, blocks=2)
    b.block([b.tx("client-0", Stake(1000)), b.tx("user", Transfer(b.c(2).address, 700))])
    b.block([b.tx("user", Withdraw(bytes.fromhex("70997970c51812dc3a010c7d01b50e0d17dc79c8"), 1234)),
             b.tx("client-1", Withdraw(bytes.fromhex("3c44cdddb6a900fa2b585dd299e03d12fa4293bc"), 2000))])
    b.block([b.tx("client-2", Withdraw(bytes(19) + b"\x01", 10**6))])  # fails: insufficient balance
    b.l1_head += 3
    b.block()
    return None


def case_invalid_deposit_overdue(b: Builder) -> dict:
    b.deposit("user", 50_000)
    b.block()
    b.deposit("client-0", 3000)
    b.l1_head += L1.deposit_window
    block = forged(b, L1Facts(b.l1_head, ()))  # names an origin past the deposit's window without it
    return b.bad(block.encode(), "DepositOverdue", "deposit 1")


def case_invalid_deposit_mismatch(b: Builder) -> dict:
    b.deposit("user", 50_000)
    b.block()
    made = b.deposit("client-0", 3000)
    block = forged(b, L1Facts(b.l1_head, (replace(made, amount=30_000),)))  # ten times what L1 holds
    return b.bad(block.encode(), "BlockHasInvalidTx", "differs from L1")


CASES: dict[str, Callable[[Builder], dict | None]] = {
    name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")
}


def generate(out: Path) -> list[str]:
    names = []
    for name, fn in CASES.items():
        b = Builder(CASE_CLIENTS.get(name, CLIENTS), L1 if name in SETTLED else None)
        error = fn(b)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        save_genesis(b.genesis, folder / "genesis.json")
        (folder / "blocks.hex").write_text("\n".join(b.blocks) + "\n")
        expected = {"sequencer_key": "devnet:sequencer", "blocks": b.expected, "error": error}
        if b.genesis.l1 is not None:
            expected["l1_deposits"] = [[d.index, d.l1_block, d.recipient.hex(), d.amount] for d in b.deposits]
        (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        names.append(name)
    return names


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    print("\n".join(generate(target)))
