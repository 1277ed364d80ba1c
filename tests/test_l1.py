"""The L1 contracts on a real anvil on 127.0.0.1: deposits, outputs, withdrawals and every refusal,
and the withdrawal tree (frontier, reference and proofs) against the portal's own checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsnode.consensus import settlement as S
from mpsnode.node.l1.anvil import Anvil, rpc
from mpsnode.node.l1.artifacts import ARTIFACTS_PATH
from mpsnode.node.l1.client import L1, L1Revert, account

CHALLENGE = 100  # seconds
WINDOW = 4  # L1 blocks


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    with Anvil().start(tmp_path_factory.mktemp("anvil")) as node:
        yield node


@pytest.fixture
def chain(anvil: Anvil) -> Iterator[tuple[L1, list]]:
    """Freshly deployed contracts; the anvil state is rolled back after the test."""
    snapshot = rpc(anvil.url, "evm_snapshot")
    l1 = L1(anvil.url)
    keys = [account(k) for k in anvil.private_keys[:4]]
    l1.deploy(keys[0], keys[1].address, 10**18, CHALLENGE, WINDOW)
    yield l1, keys
    rpc(anvil.url, "evm_revert", [snapshot])


def mine(anvil_url: str, blocks: int = 1, seconds: int = 0) -> None:
    if seconds:
        rpc(anvil_url, "evm_increaseTime", [seconds])
    for _ in range(blocks):
        rpc(anvil_url, "evm_mine")


def reason(call) -> str:
    with pytest.raises(L1Revert) as info:
        call()
    return info.value.reason


def test_the_committed_artifacts_recompile_byte_for_byte() -> None:
    from mpsnode.node.l1.build import compile_all, render

    assert ARTIFACTS_PATH.read_text() == render(compile_all()), (
        "run `make contracts` and commit the artifacts"
    )


def test_deposits_are_numbered_events_in_whole_gwei(chain) -> None:
    l1, (_, _, alice, bob) = chain
    l1.deposit(alice, b"\x01" * 32, 7)
    l1.deposit(bob, b"\x02" * 32, 3)
    found = l1.deposits(0, l1.head())
    assert [(d.index, d.recipient, d.amount) for d in found] == [(0, b"\x01" * 32, 7), (1, b"\x02" * 32, 3)]
    assert found[0].l1_block < found[1].l1_block
    assert l1.deposits(1, l1.head()) == found[1:]
    assert l1.deposits(0, found[0].l1_block) == found[:1]
    assert l1.deposits(2, l1.head()) == []
    totals = l1.portal_totals()
    assert totals == {"balance_wei": 10 * S.WEI_PER_UNIT, "deposit_count": 2, "deposited": 10, "paid": 0}
    assert reason(lambda: l1.deposit(alice, b"\x01" * 32, 0)) == "portal: nothing deposited"
    assert reason(lambda: l1.deposit(alice, bytes(32), 5)) == "portal: no recipient"
    portal = l1.contract("Portal")
    odd = lambda: l1.transact(alice, lambda p: portal.functions.deposit(b"\x01" * 32).build_transaction(p), 1)
    assert reason(odd) == "portal: the amount is not a whole number of gwei"


def test_outputs_are_posted_by_the_sequencer_only_in_order_and_with_every_overdue_deposit(
    anvil, chain
) -> None:
    l1, (_, sequencer, alice, _) = chain
    root = b"\x07" * 32
    assert (
        reason(lambda: l1.post_output(alice, 1, root, l1.head(), 0))
        == "oracle: only the sequencer posts outputs"
    )
    assert (
        reason(lambda: l1.post_output(sequencer, 0, root, l1.head(), 0))
        == "oracle: height not above the last output"
    )
    assert (
        reason(lambda: l1.post_output(sequencer, 1, root, l1.head() + 5, 0))
        == "oracle: L1 origin not yet mined"
    )
    l1.deposit(alice, b"\x01" * 32, 5)
    made = l1.deposits(0, l1.head())[0].l1_block
    assert (
        reason(lambda: l1.post_output(sequencer, 1, root, made - 1, 1))
        == "oracle: a deposit after the L1 origin"
    )
    assert (
        reason(lambda: l1.post_output(sequencer, 1, root, made, 2))
        == "oracle: more deposits than the portal has"
    )
    l1.post_output(sequencer, 1, root, made, 0)  # not overdue yet: may be left out
    mine(anvil.url, WINDOW)
    overdue = lambda: l1.post_output(sequencer, 2, root, made + WINDOW, 0)
    assert reason(overdue) == "oracle: an overdue deposit is left out"
    l1.post_output(sequencer, 2, root, made + WINDOW, 1)
    assert (
        reason(lambda: l1.post_output(sequencer, 3, root, made, 1))
        == "oracle: L1 origin before the last output's"
    )
    assert (
        reason(lambda: l1.post_output(sequencer, 2, root, l1.head(), 1))
        == "oracle: height not above the last output"
    )
    assert l1.output_count() == 2
    out = l1.output(1)
    assert (out.l2_height, out.root, out.l1_origin, out.deposits) == (2, root, made + WINDOW, 1)
    assert not l1.is_finalized(1)
    mine(anvil.url, 1, CHALLENGE)
    assert l1.is_finalized(1) and not l1.is_finalized(2)
    mine(anvil.url, 2 * WINDOW)
    stale = l1.head() - WINDOW - 1  # mined in head + 1: WINDOW + 2 behind
    assert reason(lambda: l1.post_output(sequencer, 3, root, stale, 1)) == "oracle: L1 origin too old"
    l1.post_output(sequencer, 3, root, stale + 2, 1)


def withdrawal_setup(anvil, l1, sequencer, user, amounts: list[int]):
    """Deposit the total, post an output whose tree holds one withdrawal per amount to ``user``."""
    l1.deposit(user, b"\x05" * 32, sum(amounts))
    to = bytes.fromhex(user.address[2:])
    sender = b"\x09" * 32
    leaves = [S.withdrawal_leaf(i, to, a, sender) for i, a in enumerate(amounts)]
    wroot, state_root, block_hash = S.tree_root_reference(leaves), b"\x03" * 32, b"\x04" * 32
    l1.post_output(sequencer, 10, S.output_root(state_root, wroot, block_hash), l1.head(), 1)
    return to, sender, leaves, (state_root, wroot, block_hash)


def test_a_withdrawal_is_paid_once_after_its_output_finalizes(anvil, chain) -> None:
    l1, (_, sequencer, alice, bob) = chain
    to, sender, leaves, preimage = withdrawal_setup(anvil, l1, sequencer, alice, [4, 6])
    proof = S.tree_proof(leaves, 1)
    prove = lambda: l1.prove_withdrawal(bob, 0, preimage, 1, to, 6, sender, proof)
    assert reason(prove) == "oracle: output not finalized"
    assert (
        reason(lambda: l1.prove_withdrawal(bob, 1, preimage, 1, to, 6, sender, proof))
        == "oracle: unknown output"
    )
    mine(anvil.url, 1, CHALLENGE)
    before = l1.balance(alice.address)
    prove()  # anyone may prove: bob pays the gas, alice is paid
    assert l1.balance(alice.address) - before == 6 * S.WEI_PER_UNIT
    assert l1.withdrawal_paid(1) and not l1.withdrawal_paid(0)
    assert reason(prove) == "portal: withdrawal already paid"
    assert l1.portal_totals()["paid"] == 6
    assert l1.portal_totals()["balance_wei"] == 4 * S.WEI_PER_UNIT


def test_forged_withdrawals_are_refused(anvil, chain) -> None:
    l1, (_, sequencer, alice, bob) = chain
    to, sender, leaves, preimage = withdrawal_setup(anvil, l1, sequencer, alice, [4, 6])
    mine(anvil.url, 1, CHALLENGE)
    proof = list(S.tree_proof(leaves, 0))
    not_in = "portal: the withdrawal is not in the output"
    assert reason(lambda: l1.prove_withdrawal(bob, 0, preimage, 0, to, 5, sender, proof)) == not_in  # amount
    bob_to = bytes.fromhex(bob.address[2:])
    assert (
        reason(lambda: l1.prove_withdrawal(bob, 0, preimage, 0, bob_to, 4, sender, proof)) == not_in
    )  # recipient
    assert reason(lambda: l1.prove_withdrawal(bob, 0, preimage, 1, to, 4, sender, proof)) == not_in  # index
    bad = [proof[0][::-1], *proof[1:]]
    assert reason(lambda: l1.prove_withdrawal(bob, 0, preimage, 0, to, 4, sender, bad)) == not_in
    fake = (preimage[0], S.tree_root_reference([S.withdrawal_leaf(0, to, 10, sender)]), preimage[2])
    fake_proof = S.tree_proof([S.withdrawal_leaf(0, to, 10, sender)], 0)
    forged = lambda: l1.prove_withdrawal(bob, 0, fake, 0, to, 10, sender, fake_proof)
    assert reason(forged) == "portal: the output does not match its root"
    assert l1.portal_totals()["paid"] == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 70), st.data())
def test_the_frontier_tree_equals_the_reference_and_its_proofs_verify(n: int, data) -> None:
    leaves = [os.urandom(32) for _ in range(n)]
    branch: tuple[bytes, ...] = ()
    for count, leaf in enumerate(leaves):
        branch = S.incremental_append(branch, count, leaf)
    root = S.frontier_root(branch, n)
    assert root == S.tree_root_reference(leaves)
    if n:
        i = data.draw(st.integers(0, n - 1))
        assert S.verify_branch(leaves[i], i, S.tree_proof(leaves, i), root)
        assert not S.verify_branch(leaves[i], i ^ 1, S.tree_proof(leaves, i), root)


def test_a_leaf_is_the_portals_leaf(chain) -> None:
    l1, (_, _, alice, _) = chain
    to = bytes.fromhex(alice.address[2:])
    onchain = l1.contract("Portal").functions.withdrawal_leaf(3, alice.address, 12, b"\x08" * 32).call()
    assert bytes(onchain) == S.withdrawal_leaf(3, to, 12, b"\x08" * 32)


def test_anvil_restarts_from_its_state_dump(tmp_path: Path) -> None:
    dump = tmp_path / "l1.json"
    with Anvil(state=dump).start(tmp_path) as node:
        l1 = L1(node.url)
        keys = [account(k) for k in node.private_keys[:3]]
        config = l1.deploy(keys[0], keys[1].address, 10**18, CHALLENGE, WINDOW)
        l1.deposit(keys[2], b"\x01" * 32, 9)
        head = l1.head()
    assert dump.exists()
    with Anvil(state=dump).start(tmp_path) as node:
        l1 = L1(node.url, config)
        assert l1.head() >= head
        assert [(d.index, d.amount) for d in l1.deposits(0, l1.head())] == [(0, 9)]
        assert l1.portal_totals()["balance_wei"] == 9 * S.WEI_PER_UNIT


# ---------------------------------------------------------------------------------------------
# The verifier committee: challenges decided by QUORUM attestations (settlement part 2)

VERIFIER_BOND = 10**17


@pytest.fixture
def committee(anvil: Anvil) -> Iterator[tuple[L1, list, list]]:
    """Contracts with a quorum of 2 and three admitted, bonded verifiers; rolled back after."""
    snapshot = rpc(anvil.url, "evm_snapshot")
    l1 = L1(anvil.url)
    keys = [account(k) for k in anvil.private_keys[:8]]
    deployer, sequencer = keys[0], keys[1]
    l1.deploy(deployer, sequencer.address, 10**18, CHALLENGE, WINDOW, VERIFIER_BOND, 2)
    verifiers = keys[2:5]
    for v in verifiers:
        l1.admit(deployer, v.address)
        l1.register_verifier(v)
    yield l1, keys, verifiers
    rpc(anvil.url, "evm_revert", [snapshot])


def test_joining_the_committee_takes_admission_and_the_exact_bond(committee) -> None:
    l1, keys, _ = committee
    outsider = keys[6]
    assert reason(lambda: l1.admit(outsider, outsider.address)) == "oracle: only the admin admits verifiers"
    assert reason(lambda: l1.register_verifier(outsider)) == "oracle: not admitted to the verifier committee"
    l1.admit(keys[0], outsider.address)
    oracle = l1.contract("OutputOracle")
    short = lambda: l1.transact(outsider, lambda p: oracle.functions.register().build_transaction(p), 5)
    assert reason(short) == "oracle: the bond is not VERIFIER_BOND"
    l1.register_verifier(outsider)
    assert reason(lambda: l1.register_verifier(outsider)) == "oracle: already registered"
    assert int(oracle.functions.verifier_count().call()) == 4
    assert reason(lambda: l1.admit(keys[0], keys[1].address)) == "oracle: not a verifier address"


def test_an_upheld_challenge_replaces_the_root_pays_the_bond_and_halts_the_sequencer(
    anvil, committee
) -> None:
    l1, keys, (v1, v2, v3) = committee
    sequencer = keys[1]
    wrong, right = b"\x0b" * 32, b"\x0c" * 32
    l1.post_output(sequencer, 5, wrong, l1.head(), 0)
    assert (
        reason(lambda: l1.challenge(v1, 0, wrong, b"\x01" * 32))
        == "oracle: the challenge names the posted root"
    )
    assert reason(lambda: l1.attest(v2, 0, right)) == "oracle: output not under an open challenge"
    before = l1.balance(v1.address)
    receipt = l1.challenge(v1, 0, right, b"\x01" * 32)
    assert l1.challenge_of(0)[3] == 1  # open
    assert reason(lambda: l1.challenge(v2, 0, right, b"\x02" * 32)) == "oracle: output already challenged"
    assert reason(lambda: l1.attest(v1, 0, right)) == "oracle: already attested"
    mine(anvil.url, 1, CHALLENGE)  # the period passes: a challenged output does not finalize by time
    assert not l1.is_finalized(0)
    finalized_root = l1.contract("OutputOracle").functions.finalized_root(0).call
    assert reason(lambda: l1.call(finalized_root)) == "oracle: output under challenge"
    l1.deposit(keys[6], b"\x01" * 32, 9)  # deposits go on meanwhile
    l1.attest(v2, 0, right)  # the quorum: upheld
    assert l1.challenge_of(0)[3] == 2
    assert l1.output(0).root == right and l1.is_finalized(0)
    gas = int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
    assert l1.balance(v1.address) - before + gas == 10**18  # the sequencer's whole bond
    assert int(l1.contract("OutputOracle").functions.bond().call()) == 0
    assert reason(lambda: l1.post_output(sequencer, 6, right, l1.head(), 1)) == (
        "oracle: the sequencer is halted (an upheld challenge)"
    )
    assert reason(lambda: l1.attest(v3, 0, right)) == "oracle: output not under an open challenge"


def test_a_frivolous_challenge_loses_its_bond_and_a_late_one_is_refused(anvil, committee) -> None:
    l1, keys, (v1, v2, v3) = committee
    sequencer = keys[1]
    posted = b"\x0d" * 32
    l1.post_output(sequencer, 5, posted, l1.head(), 0)
    seq_before = l1.balance(sequencer.address)
    l1.challenge(v1, 0, b"\x0e" * 32, b"\x01" * 32)
    l1.attest(v2, 0, posted)
    assert l1.challenge_of(0)[3] == 1  # one vote each: still open
    l1.attest(v3, 0, posted)  # two for the posted root: rejected
    assert l1.challenge_of(0)[3] == 3
    assert l1.balance(sequencer.address) - seq_before == VERIFIER_BOND
    oracle = l1.contract("OutputOracle").functions
    assert int(oracle.verifier_bond(v1.address).call()) == 0 and int(oracle.verifier_count().call()) == 2
    assert reason(lambda: l1.attest(v1, 0, posted)) == "oracle: not a registered verifier"
    assert not l1.is_finalized(0)  # the period still runs for a rejected challenge ...
    mine(anvil.url, 1, CHALLENGE)
    assert l1.is_finalized(0) and l1.output(0).root == posted  # ... and the posted root finalizes
    l1.post_output(sequencer, 6, posted, l1.head(), 0)
    late = lambda: l1.challenge(v2, 0, b"\x0f" * 32, b"\x02" * 32)
    assert reason(late) == "oracle: the challenge period is over"
    mine(anvil.url, 1, CHALLENGE)
    assert (
        reason(lambda: l1.challenge(v2, 1, b"\x0f" * 32, b"\x02" * 32))
        == "oracle: the challenge period is over"
    )


def test_send_eth_funds_an_account(chain) -> None:
    l1, (deployer, *_) = chain
    fresh = account("0x" + "42" * 32)
    l1.send_eth(deployer, fresh.address, 12345)
    assert l1.balance(fresh.address) == 12345


# ---------------------------------------------------------------------------------------------
# The one-step verifier of a Gram-matrix chunk (settlement part 2's fraud-proof design)


@pytest.fixture(scope="module")
def gram(anvil: Anvil):
    from mpsnode.node.l1.artifacts import artifact

    l1 = L1(anvil.url)
    deployer = account(anvil.private_keys[7])
    art = artifact("GramStep")
    factory = l1.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    receipt = l1.transact(deployer, lambda p: factory.constructor().build_transaction(p))
    return l1.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)


def test_the_contracts_chunk_dot_is_exact(gram) -> None:
    import numpy as np

    from mpsnode.consensus import fraud

    rng = np.random.default_rng(3)
    extremes = np.array([-32768, 32767, -1, 0, 1] * 205, dtype="<i2")[: fraud.CHUNK]
    cases = [
        (
            rng.integers(-32768, 32768, fraud.CHUNK).astype("<i2"),
            rng.integers(-32768, 32768, fraud.CHUNK).astype("<i2"),
        ),
        (extremes, extremes[::-1].copy()),
        (np.full(fraud.CHUNK, -32768, dtype="<i2"), np.full(fraud.CHUNK, -32768, dtype="<i2")),
    ]
    for x, y in cases:
        a, b = x.tobytes(), y.tobytes()
        assert int(gram.functions.chunk_dot(a, b).call()) == fraud.chunk_dot(a, b)


def test_one_step_decides_a_disputed_gram_entry(gram) -> None:
    import numpy as np

    from mpsnode.consensus import fraud, krum

    rng = np.random.default_rng(5)
    n = 5 * fraud.CHUNK + 300  # six chunks, the last padded
    x = rng.integers(-2000, 2000, n).astype("<i2")
    y = rng.integers(-2000, 2000, n).astype("<i2")
    a, b = x.tobytes(), y.tobytes()
    honest = fraud.running_sums(a, b)
    assert honest[-1] == int(krum.gram_matrix_reference(np.stack([x, y]))[0, 1])  # the chain's own entry
    lie = list(honest)
    for j in range(4, len(lie)):
        lie[j] += 7  # a sequencer that got chunk 3 wrong (and everything after follows)
    j = fraud.bisect(lie, honest)
    assert j == 3
    ra, rb = fraud.chunk_root(a), fraud.chunk_root(b)
    ca, cb = fraud.chunks(a)[j], fraud.chunks(b)[j]
    pa, pb = list(fraud.chunk_proof(a, j)), list(fraud.chunk_proof(b, j))
    check = gram.functions.check_step
    assert check(ra, rb, j, ca, pa, cb, pb, honest[j + 1] - honest[j]).call() is True
    assert check(ra, rb, j, ca, pa, cb, pb, lie[j + 1] - lie[j]).call() is False
    tampered = bytes([ca[0] ^ 1]) + ca[1:]
    with pytest.raises(Exception, match="gram: chunk a is not in its update"):
        check(ra, rb, j, tampered, pa, cb, pb, 0).call()
    with pytest.raises(Exception, match="gram: chunk b is not in its update"):
        check(ra, rb, j, ca, pa, fraud.chunks(b)[j + 1], pb, 0).call()
    # the last chunk, zero-padded, proves as well
    last = len(fraud.chunks(a)) - 1
    assert check(ra, rb, last, fraud.chunks(a)[last], list(fraud.chunk_proof(a, last)), fraud.chunks(b)[last],
                 list(fraud.chunk_proof(b, last)), honest[-1] - honest[-2]).call() is True  # fmt: skip
