"""The wire protocol's framing, codec, error codes and bounded outbox; list proofs; batch signatures."""

from __future__ import annotations

import os
import random

import pytest
import trio
import trio.testing

from mpsnode.consensus import crypto
from mpsnode.consensus.errors import MpsError, NonceMismatch, error_classes
from mpsnode.consensus.merkle import list_proof, list_root, list_root_reference, verify_list_proof
from mpsnode.consensus.sigverify import verify_batch
from mpsnode.node.errors import FrameTooLarge, ProtocolViolation, SlowPeer
from mpsnode.node.files import generate_key
from mpsnode.node.wire import (
    ERROR,
    LENGTH,
    FrameReader,
    Outbox,
    decode_message,
    encode_frame,
    error_from_wire,
    error_message,
    parse_error,
    parse_hostport,
)


async def _reader_over(
    chunks: list[bytes], max_frame: int = 1000, frame_timeout: float = 5.0, close: bool = True
) -> tuple[FrameReader, trio.testing.MemorySendStream]:
    send, recv = trio.testing.memory_stream_one_way_pair()
    for chunk in chunks:
        await send.send_all(chunk)
    if close:
        await send.aclose()
    return FrameReader(recv, max_frame, frame_timeout=frame_timeout, chunk=7), send


def test_frames_split_and_joined_arbitrarily() -> None:
    msgs = [[1, i, b"x" * i, "reason"] for i in range(40)]
    data = b"".join(encode_frame(m) for m in msgs)
    rng = random.Random(1)
    cuts = sorted(rng.sample(range(1, len(data)), 60))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    async def main() -> None:
        reader, _ = await _reader_over(chunks)
        got = []
        while (body := await reader.read_frame()) is not None:
            got.append(decode_message(body, 1000))
        assert got == msgs

    trio.run(main)


@pytest.mark.parametrize(
    "data,error",
    [
        (LENGTH.pack(1001) + b"x", FrameTooLarge),
        (LENGTH.pack(0), ProtocolViolation),
        (LENGTH.pack(10) + b"abc", ProtocolViolation),  # closed mid-frame
    ],
)
def test_bad_frames(data: bytes, error: type[MpsError]) -> None:
    async def main() -> None:
        reader, _ = await _reader_over([data])
        with pytest.raises(error):
            await reader.read_frame()

    trio.run(main)


def test_half_a_frame_then_silence_times_out() -> None:
    async def main() -> None:
        reader, _ = await _reader_over([LENGTH.pack(10) + b"abc"], frame_timeout=3.0, close=False)
        t0 = trio.current_time()
        with pytest.raises(ProtocolViolation, match="not completed"):
            await reader.read_frame()
        assert trio.current_time() - t0 == pytest.approx(3.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize(
    "body", [b"\x90", b"\x91\x01", b"\x92\x01\xa1x", b"\x81\x01\x01", b"\xcb" + bytes(8), b"\x92\xcc\x01\x01"]
)
def test_malformed_messages_are_protocol_violations(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_message(body, 100)


def test_error_codes_round_trip() -> None:
    for code, cls in error_classes().items():
        exc = error_from_wire(code, "the reason")
        assert error_message(9, exc) == [ERROR, 9, code, "the reason"]
        assert type(exc) is cls and exc.code == code and exc.reason == "the reason"
    assert isinstance(parse_error([ERROR, 1, NonceMismatch.code, "n"]), NonceMismatch)
    unknown = error_from_wire(9999, "new")
    assert unknown.code == 9999


def test_outbox_is_bounded_and_drops_slow_peers() -> None:
    async def main() -> None:
        box = Outbox(max_bytes=100, timeout=2.0)
        await box.put(b"a" * 60)
        await box.put(b"b" * 60)  # over the bound now: the next put waits
        with pytest.raises(SlowPeer):
            await box.put(b"c")
        assert await box.take() == b"a" * 60 + b"b" * 60  # coalesced into one write
        await box.put(b"d")
        box.put_nowait(b"e" * 500)  # replies already bounded by requests in flight skip the bound
        assert box.queued_bytes == 501

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:7070") == ("127.0.0.1", 7070)
    assert parse_hostport(":0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError):
        parse_hostport("host:http")


def test_list_root_level_by_level_equals_the_recursive_definition() -> None:
    rng = random.Random(11)
    for n in [*range(0, 70), 127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025, 2500]:
        items = [rng.randbytes(rng.randrange(0, 48)) for _ in range(n)]
        assert list_root(items) == list_root_reference(items), n
    assert list_root([b"a", b"b"]) != list_root([b"b", b"a"])  # order matters: not a set root


def test_list_proofs() -> None:
    for n in range(1, 34):
        items = [os.urandom(5) for _ in range(n)]
        root = list_root(items)
        for i in range(n):
            path = list_proof(items, i)
            assert verify_list_proof(root, items[i], i, n, path)
            assert not verify_list_proof(root, items[i] + b"!", i, n, path)
            if n > 1:
                assert not verify_list_proof(root, items[i], (i + 1) % n, n, path)


def test_batch_verify_equals_pynacl() -> None:
    rng = random.Random(5)
    keys = [generate_key() for _ in range(4)]
    items = []
    for i in range(300):
        key = rng.choice(keys)
        msg = os.urandom(32)
        sig = key.sign(msg)
        kind = i % 6
        if kind == 1:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        elif kind == 2:
            msg = bytes([msg[0] ^ 0x80]) + msg[1:]
        elif kind == 3:
            items.append((rng.choice(keys).address, msg, sig))
            continue
        elif kind == 4:
            sig = sig[:32] + (2**256 - 1).to_bytes(32, "little")  # s not reduced: refused
        elif kind == 5:
            items.append((bytes(32), msg, sig))  # a small-order key
            continue
        items.append((key.address, msg, sig))
    expected = [crypto.verify(a, m, s) for a, m, s in items]
    assert verify_batch(items) == expected
    assert any(expected) and not all(expected)
    assert verify_batch([]) == []
