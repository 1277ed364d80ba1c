"""The sequencer daemon end to end: the real ``mpsnode sequencer`` process on 127.0.0.1, the client library.

One daemon serves the module (starting one costs about a second); tests that stop or restart a
daemon start their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio

from mpsnode.client.wallet import Wallet, make_tx
from mpsnode.consensus import crypto
from mpsnode.consensus.errors import (
    BadSignature,
    DecodeError,
    FeeTooLow,
    FeeUnpayable,
    NonceMismatch,
    WrongChain,
)
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.params import Params
from mpsnode.consensus.state import TaskStatus
from mpsnode.consensus.tx import JoinTask, Stake, Transfer, Tx
from mpsnode.node.connection import Client, connect
from mpsnode.node.errors import (
    AlreadyKnown,
    NonceConflict,
    NonceTooFarAhead,
    VerificationFailed,
    WrongNetwork,
)
from mpsnode.node.messages import Msg, StateReply
from sequencer.daemon import ID_ON_THREAD_BYTES

from chainkit import small_task
from nodekit import REPO, Daemon, make_home

PARAMS = Params(block_time_ms=50)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Genesis, dict]]:
    home = tmp_path_factory.mktemp("seq")
    net = make_home(home, clients=8, params=PARAMS)
    daemon = Daemon(home, ["--metrics", "127.0.0.1:0"])
    try:
        daemon.start()
        yield daemon, net.genesis, net.keys
    finally:
        daemon.kill()


def run(fn, *args):
    return trio.run(fn, *args)


async def _wallet(client: Client, key: crypto.Keypair) -> Wallet:
    wallet = Wallet(key, client.chain_id, client.params)
    await wallet.recover(client)
    return wallet


def test_transfer_is_acked_included_and_proven(node) -> None:
    daemon, g, keys = node
    user, dest = keys["user"], keys["client-0"]

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            before = (await client.account(dest.address)).value.balance
            wallet = await _wallet(client, user)
            stx = await wallet.send(client, Transfer(dest.address, 777))
            outcome = await client.wait_receipt(stx.tx_id, timeout=30)
            assert outcome.state == "included" and outcome.ok, outcome
            assert outcome.receipt is not None and outcome.receipt.tx_id == stx.tx_id
            after = await client.account(dest.address)
            assert after.height >= outcome.height
            assert after.value.balance == before + 777
            # the node already holds it: resubmitting is an idempotent ack
            assert await client.submit(stx) == stx.tx_id
            with pytest.raises(AlreadyKnown):
                await client.request(Msg.SUBMIT_TX, stx.encode())
            status = await client.status()
            assert status.height >= outcome.height and status.kind == "sequencer"
            # the block, its signature and receipts
            _, block, receipts = await client.block(outcome.height)
            assert block is not None and stx.tx_id in [t.tx_id for t in block.txs]
            assert receipts[outcome.index].tx_id == stx.tx_id
            events = await client.events(height=outcome.height, count=1)
            assert events and events[0][0] == outcome.height

    run(main)


def test_rejections_have_codes_and_reasons(node) -> None:
    daemon, g, keys = node
    sender, dest = keys["client-1"], keys["client-2"].address

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            nonce = (await client.nonce(sender.address)).next_nonce
            p = g.params

            def tx(**kw) -> bytes:
                fields = {
                    "chain_id": g.chain_id,
                    "sender": sender.address,
                    "nonce": nonce,
                    "fee": p.tx_base_fee,
                    "body": Transfer(dest, 1),
                }
                fields.update(kw)
                return Tx(**fields).sign(sender).encode()

            cases = [
                (b"\x93\x01\x02", DecodeError),
                (tx(chain_id="other-chain"), WrongChain),
                (tx(fee=0), FeeTooLow),
                (tx(fee=10**15), FeeUnpayable),
                (tx(nonce=nonce + 64), NonceTooFarAhead),
            ]
            good = Tx(g.chain_id, sender.address, nonce, p.tx_base_fee, Transfer(dest, 1)).sign(sender)
            forged = good.encode()[:-1] + bytes([good.encode()[-1] ^ 1])
            cases.append((forged, BadSignature))
            for raw, exc_type in cases:
                with pytest.raises(exc_type) as info:
                    await client.submit(raw)
                assert info.value.code == exc_type.code and info.value.reason
            # A second tx at a nonce a pending tx holds: NonceConflict. Blocks keep coming every
            # block_time_ms, so under load the first may be included before the second arrives (then
            # the answer is NonceMismatch, also right); try a few nonces until the conflict is seen.
            conflicts = 0
            for attempt in range(5):
                if attempt:
                    nonce = (await client.nonce(sender.address)).next_nonce
                    good = Tx(g.chain_id, sender.address, nonce, p.tx_base_fee, Transfer(dest, 1)).sign(
                        sender
                    )
                await client.submit(good)
                other = Tx(g.chain_id, sender.address, nonce, p.tx_base_fee, Transfer(dest, 2)).sign(sender)
                try:
                    await client.submit(other)
                except NonceConflict:
                    conflicts += 1
                except NonceMismatch:
                    assert (await client.wait_receipt(good.tx_id, timeout=30)).ok  # already included
                else:
                    raise AssertionError("a second tx at a held nonce was admitted")
                outcome = await client.wait_receipt(good.tx_id, timeout=30)
                assert outcome.ok
                with pytest.raises(NonceMismatch):
                    await client.submit(other)
                if conflicts:
                    break
            assert conflicts == 1

    run(main)


def test_admission_after_a_block_sees_the_balance_and_nonce_the_block_left(node) -> None:
    daemon, g, keys = node
    sender = crypto.Keypair.from_seed(b"admission-after-a-block".ljust(32, b"."))  # its own: drained below
    dest = keys["client-7"].address
    fee = g.params.tx_base_fee
    left = 2 * fee + 1  # what the block leaves the sender: its next tx's fee may be at most that

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            funder = await _wallet(client, keys["client-7"])
            funded = await funder.send(client, Transfer(sender.address, 100 * fee))
            assert (await client.wait_receipt(funded.tx_id, timeout=30)).ok
            account = (await client.account(sender.address)).value
            assert account.balance == 100 * fee
            spend = Tx(
                g.chain_id, sender.address, account.nonce, fee, Transfer(dest, account.balance - fee - left)
            )
            first = spend.sign(sender)
            await client.submit(first.encode())
            assert (await client.wait_receipt(first.tx_id, timeout=30)).ok
            too_much = Tx(g.chain_id, sender.address, account.nonce + 1, left + 1, Transfer(dest, 1)).sign(
                sender
            )
            with pytest.raises(FeeUnpayable):
                await client.submit(too_much.encode())
            with pytest.raises(NonceMismatch):  # the nonce the block used
                await client.submit(
                    Tx(g.chain_id, sender.address, account.nonce, fee, Transfer(dest, 1))
                    .sign(sender)
                    .encode()
                )
            last = Tx(g.chain_id, sender.address, account.nonce + 1, left - 1, Transfer(dest, 1)).sign(sender)
            await client.submit(last.encode())
            assert (await client.wait_receipt(last.tx_id, timeout=30)).ok
            assert (await client.account(sender.address)).value.balance == 0

    run(main)


def test_nonce_ahead_waits_for_the_gap(node) -> None:
    daemon, g, keys = node
    sender = keys["client-3"]

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            n = (await client.nonce(sender.address)).next_nonce
            txs = [
                make_tx(sender, g.chain_id, n + i, Transfer(keys["user"].address, 1), g.params)
                for i in range(3)
            ]
            # later nonces first: they are admitted and wait
            assert await client.submit(txs[2]) == txs[2].tx_id
            assert await client.submit(txs[1]) == txs[1].tx_id
            assert (await client.receipt(txs[2].tx_id)).state == "pending"
            info = await client.nonce(sender.address)
            assert (info.next_nonce, info.pending) == (n, 2)
            await client.submit(txs[0])
            outcomes = [await client.wait_receipt(t.tx_id, timeout=30) for t in txs]
            assert all(o.ok for o in outcomes)
            assert [(o.height, o.index) for o in outcomes] == sorted((o.height, o.index) for o in outcomes)

    run(main)


def test_subscribe_pushes_signed_blocks_as_made(node) -> None:
    daemon, g, keys = node
    sender = keys["client-4"]

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            start = (await client.status()).height + 1
            wallet = await _wallet(client, sender)
            sent = [await wallet.send(client, Transfer(keys["user"].address, i + 1)) for i in range(5)]
            want = {s.tx_id for s in sent}
            async with client.subscribe(start, with_receipts=True) as blocks:
                expect = start
                async for pushed in blocks:
                    assert pushed.height == expect
                    expect += 1
                    block = pushed.block()
                    assert block.verify_signature(g.sequencer)
                    receipts = pushed.receipt_list()
                    assert len(receipts) == len(block.txs) + 1
                    want -= {t.tx_id for t in block.txs}
                    if not want:
                        break

    run(main)


def test_a_lossy_subscriber_that_reads_nothing_never_holds_up_the_connections_replies(node) -> None:
    """The client daemon's case: a round's training outlasts the subscription's buffer while the
    chain moves on; its next request on the same connection still gets its reply at once."""
    daemon, g, keys = node

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client, connect(daemon.address, genesis=g) as other:
            start = (await client.status()).height + 1
            wallet = await _wallet(other, keys["client-6"])
            async with client.subscribe(start, buffer=2, lossy=True) as blocks:
                for i in range(10):  # a block each, on the other connection: 5x the buffer, none read
                    stx = await wallet.send(other, Transfer(keys["user"].address, i + 1))
                    await other.wait_receipt(stx.tx_id, timeout=10)
                with trio.fail_after(5):
                    status = await client.status()
                assert status.height >= start + 9
                first = blocks.receive_nowait()
                assert first.height == start  # what fit is kept, in order; the rest was dropped
                newest = await blocks.receive()  # and new pushes arrive again once there is room
                assert newest.height > start

    run(main)


def test_task_and_model_queries_are_proven(node) -> None:
    daemon, g, keys = node

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            # 16,100 weights: a tx of more than 64 KiB, whose id the sequencer hashes on a verify
            # thread and whose bytes its store keeps apart from the block's record
            arch = (160, 100)
            body = small_task(arch=arch, min_clients=3, max_clients=3, join_blocks=1000, round_blocks=1000)
            user = await _wallet(client, keys["user"])
            nonce = (await client.nonce(keys["user"].address)).next_nonce
            good = Tx(g.chain_id, keys["user"].address, nonce, g.params.tx_base_fee * 1000, body)
            raw = good.sign(keys["user"]).encode()
            assert len(raw) >= ID_ON_THREAD_BYTES
            with pytest.raises(BadSignature):
                await client.submit(raw[:-1] + bytes([raw[-1] ^ 1]))
            stx = await user.send(client, body)
            outcome = await client.wait_receipt(stx.tx_id, timeout=30)
            assert outcome.ok, outcome
            task_id = next(e.task_id for e in outcome.receipt.events if e.name == "TaskCreated")
            proven = await client.task(task_id)
            assert proven.value.status == TaskStatus.JOINING and proven.value.arch == arch
            task, model = (await client.model(task_id)).value
            assert model == body.init_weights and task.task_id == task_id
            assert (await client.task(10_000)).value is None  # proven absent
            events = await client.events(task_id=task_id)
            assert events and events[0][1][0].name == "TaskCreated"

            # a tampered answer does not pass
            reply = await client.request(Msg.GET_STATE, b"T" + task_id.to_bytes(8, "big"))
            reply[4] = reply[4][:-1] + bytes([reply[4][-1] ^ 1])
            with pytest.raises(VerificationFailed):
                client._proven_values(StateReply.from_fields(reply), [b"T" + task_id.to_bytes(8, "big")])
            reply = await client.request(Msg.GET_STATE, b"T" + task_id.to_bytes(8, "big"))
            reply[2] = bytes(64)
            with pytest.raises(VerificationFailed):
                client._proven_values(StateReply.from_fields(reply), [b"T" + task_id.to_bytes(8, "big")])

    run(main)


def test_wrong_chain_is_refused_and_anonymous_client_learns_genesis(node, tmp_path: Path) -> None:
    daemon, g, _ = node
    other = make_home(tmp_path / "other", clients=2, params=Params(block_time_ms=51)).genesis

    async def main() -> None:
        with pytest.raises(WrongNetwork):
            async with connect(daemon.address, genesis=other):
                pass
        async with connect(daemon.address) as client:
            assert client.genesis is not None and client.genesis.hash() == g.hash()
        with pytest.raises(WrongNetwork):
            async with connect(daemon.address, genesis_hash=other.hash()):
                pass

    run(main)


def test_metrics_endpoint(node) -> None:
    daemon, g, keys = node
    sender = keys["client-6"]

    async def reject_one() -> None:
        async with connect(daemon.address, genesis=g) as client:
            good = make_tx(sender, g.chain_id, 0, Transfer(sender.address, 1), g.params).encode()
            with pytest.raises(BadSignature):
                await client.submit(good[:-1] + bytes([good[-1] ^ 1]))

    def admitted() -> float:
        line = next(x for x in daemon.metrics_text().splitlines() if x.startswith("mps_txs_admitted_total "))
        return float(line.split()[1])

    before = admitted()

    async def admit_two() -> None:
        async with connect(daemon.address, genesis=g) as client:
            wallet = await _wallet(client, sender)
            for amount in (1, 2):
                await wallet.send(client, Transfer(keys["user"].address, amount))

    run(admit_two)
    assert admitted() == before + 2  # counted once per group commit, one per tx acked
    run(reject_one)
    text = daemon.metrics_text()
    for name in (
        "mps_height",
        "mps_mempool_txs",
        "mps_mempool_bytes",
        "mps_txs_admitted_total",
        "mps_block_build_seconds",
        "mps_block_commit_seconds",
        "mps_rounds_closed_total",
        "mps_slashes_total",
    ):
        assert name in text, name
    assert 'mps_txs_rejected_total{code="102"}' in text


def test_cli_tx_and_query(node) -> None:
    daemon, _, keys = node
    home = daemon.home
    addr = f"127.0.0.1:{daemon.port}"

    def cli(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "mpsnode.cli", *args, "--home", str(home), "--node", addr, "--json"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    sent = cli("tx", "stake", "--from", "client-5", "--amount", "1500", "--wait")
    assert sent["state"] == "included" and sent["status"] == "ok", sent
    acct = cli("query", "account", "client-5")
    assert acct["bonded"] == 1500 and acct["address"] == keys["client-5"].address.hex()
    receipt = cli("query", "receipt", sent["tx_id"])
    assert receipt["state"] == "included" and receipt["height"] == sent["height"]
    block = cli("query", "block", str(sent["height"]))
    assert sent["tx_id"] in [t["tx_id"] for t in block["txs"]]
    status = cli("query", "status")
    assert status["height"] >= sent["height"]
    # human-readable by default, and errors are a code and a reason
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpsnode.cli",
            "tx",
            "join",
            "--task",
            "1",
            "--from",
            "client-5",
            "--home",
            str(home),
            "--node",
            addr,
            "--nonce",
            "0",
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "error 104 (NonceMismatch)" in out.stderr


def test_restart_resumes_mempool_and_sigterm_stops_cleanly(tmp_path: Path, daemons: list[Daemon]) -> None:
    net = make_home(tmp_path, clients=3, params=PARAMS)
    g = net.genesis
    daemon = Daemon(tmp_path)
    daemons.append(daemon)
    daemon.start()
    sender = net.keys["client-0"]
    txs = [make_tx(sender, g.chain_id, i, Stake(100 + i), g.params) for i in range(4)]

    async def first() -> int:
        async with connect(daemon.address, genesis=g) as client:
            for stx in txs[1:]:  # a gap at nonce 0: these wait in the mempool
                await client.submit(stx)
            return (await client.status()).mempool_txs

    assert run(first) == 3
    assert daemon.stop() == 0
    assert '"event":"stopping"' in daemon.log_text()
    daemon.start()

    async def second() -> None:
        async with connect(daemon.address, genesis=g) as client:
            status = await client.status()
            assert status.mempool_txs == 3
            assert (await client.nonce(sender.address)).pending == 3
            await client.submit(txs[0])
            for stx in txs:
                assert (await client.wait_receipt(stx.tx_id, timeout=30)).ok
            assert (await client.account(sender.address)).value.bonded == sum(100 + i for i in range(4))

    run(second)
    assert daemon.stop() == 0


def test_wallet_recovers_across_reconnects(tmp_path: Path, daemons: list[Daemon]) -> None:
    net = make_home(tmp_path, clients=2, params=PARAMS)
    g = net.genesis
    daemon = Daemon(tmp_path)
    daemons.append(daemon)
    daemon.start()
    key = net.keys["client-1"]

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            wallet = await _wallet(client, key)
            await wallet.send(client, Transfer(net.keys["user"].address, 1))
            lost = wallet.sign(Transfer(net.keys["user"].address, 2))  # signed, never sent: the link dropped
            assert lost.tx.nonce == 1
        async with connect(daemon.address, genesis=g) as client:
            refused = await wallet.recover(client)  # resubmits nonce 1, carries on after it
            assert refused == [] and wallet.unacked == {}
            third = await wallet.send(client, JoinTask(1))
            assert third.tx.nonce == 2
            assert (await client.wait_receipt(third.tx_id, timeout=30)).state == "included"
        async with connect(daemon.address, genesis=g) as client:
            fresh = await _wallet(client, key)  # a new wallet learns the next nonce from the node
            assert fresh.next_nonce == 3

    run(main)
    _ = np  # numpy is imported for chainkit's task builder
