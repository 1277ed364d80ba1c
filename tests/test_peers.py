"""Misbehaving peers cost the sequencer nothing lasting; a well-behaved client is served after each.

The daemon runs with short timeouts (1 s for the handshake, a frame, and a peer that stops
reading) and a 64 KiB outbox, so each case resolves quickly.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import trio

from mpsnode.client.wallet import Wallet
from mpsnode.consensus.encoding import encode
from mpsnode.consensus.genesis import Genesis
from mpsnode.consensus.params import Params
from mpsnode.consensus.tx import CreateTask, Transfer
from mpsnode.node.connection import connect
from mpsnode.node.errors import FrameTooLarge, ProtocolViolation
from mpsnode.node.messages import REPLY, Msg
from mpsnode.node.wire import ERROR, LENGTH, encode_frame

from nodekit import Daemon, hello_frame, make_home, raw_connect, read_message, read_until_closed

PARAMS = Params(block_time_ms=50)
TIMEOUTS = [
    "--handshake-timeout",
    "1",
    "--frame-timeout",
    "1",
    "--slow-peer-timeout",
    "1",
    "--outbox-bytes",
    "65536",
    "--metrics",
    "127.0.0.1:0",
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Genesis, dict]]:
    home = tmp_path_factory.mktemp("peers")
    net = make_home(home, clients=4, params=PARAMS)
    daemon = Daemon(home, TIMEOUTS)
    try:
        daemon.start()
        yield daemon, net.genesis, net.keys
    finally:
        daemon.kill()


def metric(daemon: Daemon, name: str, labels: str = "") -> float:
    return daemon.metrics().get(name + (("{" + labels + "}") if labels else ""), 0.0)


def wait_metric(daemon: Daemon, name: str, labels: str, ok, timeout: float = 30.0) -> float:
    """Poll a metric of the other process until ``ok(value)`` (the daemon is a separate process)."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric(daemon, name, labels)
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def idle_connections(daemon: Daemon) -> float:
    """Open connections once the previous test's client is gone (its close reaches the node a little later)."""
    return wait_metric(daemon, "mps_connections", "", lambda v: v == 0)


def assert_serves(daemon: Daemon, g: Genesis, keys: dict) -> None:
    """A well-behaved client connects, reads status and gets a transfer included."""

    async def main() -> None:
        async with connect(daemon.address, genesis=g) as client:
            await client.status()
            wallet = Wallet(keys["client-0"], g.chain_id, g.params)
            await wallet.recover(client)
            stx = await wallet.send(client, Transfer(keys["user"].address, 1))
            assert (await client.wait_receipt(stx.tx_id, timeout=30)).ok

    trio.run(main)


def error_then_eof(sock: socket.socket) -> int:
    """The node's parting error frame (its code), then the end of the stream."""
    msg = read_message(sock)
    assert msg is not None and msg[0] == ERROR, msg
    assert read_until_closed(sock) == b""
    return msg[2]


def test_garbage_bytes(node) -> None:
    daemon, g, keys = node
    with raw_connect(daemon.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " read as a length: far over the limit
        assert error_then_eof(sock) == FrameTooLarge.code
    with raw_connect(daemon.port) as sock:
        sock.sendall(LENGTH.pack(6) + b"\xc1\xff\x00garb")  # a frame of bytes that are not msgpack
        assert error_then_eof(sock) == ProtocolViolation.code
    with raw_connect(daemon.port) as sock:
        sock.sendall(hello_frame(g))
        assert read_message(sock)[0] == Msg.HELLO | REPLY
        sock.sendall(encode_frame([int(Msg.STATUS)]))  # an array too short to be a message
        assert error_then_eof(sock) == ProtocolViolation.code
    assert_serves(daemon, g, keys)


def test_length_over_the_limit(node) -> None:
    daemon, g, keys = node
    limit = g.params.max_tx_bytes + 64 * 1024
    with raw_connect(daemon.port) as sock:
        sock.sendall(hello_frame(g))
        read_message(sock)
        sock.sendall(LENGTH.pack(limit + 1) + b"\x00" * 1000)
        assert error_then_eof(sock) == FrameTooLarge.code
    assert_serves(daemon, g, keys)


def test_half_a_frame_then_silence_or_disconnect(node) -> None:
    daemon, g, keys = node
    base = idle_connections(daemon)
    with raw_connect(daemon.port) as sock:
        sock.sendall(hello_frame(g))
        read_message(sock)
        t0 = time.monotonic()
        sock.sendall(LENGTH.pack(100) + b"\x92\x03")  # 2 of 100 bytes, then nothing
        assert error_then_eof(sock) == ProtocolViolation.code
        assert 0.5 < time.monotonic() - t0 < 20
    with raw_connect(daemon.port) as sock:  # silence before the handshake
        assert error_then_eof(sock) == ProtocolViolation.code
    for _ in range(20):  # half a frame, then gone
        with raw_connect(daemon.port) as sock:
            sock.sendall(hello_frame(g)[:7])
    assert wait_metric(daemon, "mps_connections", "", lambda v: v <= base) <= base
    assert_serves(daemon, g, keys)


def test_200_concurrent_connections(node) -> None:
    daemon, g, keys = node
    base = idle_connections(daemon)
    socks = [raw_connect(daemon.port) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(hello_frame(g, req_id=i + 1))
        for i, sock in enumerate(socks):
            msg = read_message(sock)
            assert msg is not None and msg[:2] == [Msg.HELLO | REPLY, i + 1]
        for sock in socks[::2]:  # half of them ask something, pipelined
            sock.sendall(encode_frame([int(Msg.STATUS), 7]) + encode_frame([int(Msg.PING), 8]))
        for sock in socks[::2]:
            assert read_message(sock)[:2] == [Msg.STATUS | REPLY, 7]
            assert read_message(sock)[:2] == [Msg.PING | REPLY, 8]
        assert metric(daemon, "mps_connections") >= base + 200
        assert_serves(daemon, g, keys)  # while all 200 are open
    finally:
        for sock in socks:
            sock.close()
    assert wait_metric(daemon, "mps_connections", "", lambda v: v <= base) <= base
    assert_serves(daemon, g, keys)


def test_subscriber_that_stops_reading_is_dropped(node) -> None:
    daemon, g, keys = node
    slow_before = metric(daemon, "mps_connections_closed_total", 'reason="slow"')
    rss_before = daemon.rss_kib()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # before connect: no receive autotuning
    sock.settimeout(10)
    sock.connect(daemon.address)
    try:
        sock.sendall(hello_frame(g))
        read_message(sock)
        start = 1
        sock.sendall(encode_frame([int(Msg.SUBSCRIBE), 5, start, 1]))
        # ... and never read again, while about 14 MB of blocks are made
        rng = np.random.default_rng(3)
        arch, samples = (1000, 2), 500
        bodies = [
            CreateTask(
                arch,
                8,
                rng.integers(-100, 100, 2002).astype("<i4").tobytes(),
                9000,
                2,
                3,
                3,
                0,
                5,
                5,
                1,
                1,
                rng.integers(-100, 100, samples * arch[0]).astype("<i2").tobytes(),
                rng.integers(0, 2, samples).astype(np.uint8).tobytes(),
            )
            for _ in range(14)
        ]
        pushed = 0

        async def make_blocks() -> int:
            async with connect(daemon.address, genesis=g) as client:
                wallet = Wallet(keys["user"], g.chain_id, g.params)
                await wallet.recover(client)
                sent = [await wallet.send(client, body) for body in bodies]
                for stx in sent:
                    assert (await client.wait_receipt(stx.tx_id, timeout=60)).state == "included"
                head = (await client.status()).height
                total, height = 0, start
                while height <= head:
                    items = await client.blocks(height, head - height + 1)
                    total += sum(len(b) for _, b in items)
                    height = items[-1][0] + 1
                return total

        pushed = trio.run(make_blocks)
        assert pushed > 12_000_000
        slow = wait_metric(daemon, "mps_connections_closed_total", 'reason="slow"', lambda v: v > slow_before)
        assert slow > slow_before
        received = len(read_until_closed(sock))  # what was in flight, then the end
        assert received < pushed
    finally:
        sock.close()
    assert daemon.rss_kib() - rss_before < 200_000
    assert_serves(daemon, g, keys)
    _ = encode
