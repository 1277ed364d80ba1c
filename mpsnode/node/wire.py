"""The wire protocol: length-prefixed frames of canonical msgpack messages over TCP.

A frame is a 4-byte big-endian length ``n`` (1 <= n <= the receiver's limit) and ``n`` bytes of
canonical msgpack (``mpsnode.encoding``). Every message is an array whose first two fields are
the message type and a request id chosen by the client; a reply carries the request's id. The
full message table is in ``docs/WIRE.md`` and each message is a typed value in
``mpsnode.node.messages``; this module holds the framing, the codec, the error replies and the
limits, for the server (``mpsnode.node.server``) and the client (``mpsnode.node.connection``) alike.

Limits: a node accepts request frames up to ``max_tx_bytes + 64 KiB`` (a request holds at most
one tx) and refuses a longer length prefix before reading its body. Replies can be larger (a
block, a model): a client accepts reply frames up to ``max(max_block_bytes, 64 MiB) + 1 MiB``.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from mpsnode.consensus.encoding import decode, encode, expect_list, expect_uint
from mpsnode.consensus.errors import DecodeError, MpsError, error_classes
from mpsnode.consensus.params import Params
from mpsnode.node.errors import FrameTooLarge, ListenFailed, ProtocolViolation, SlowPeer, TruncatedFrame

PROTOCOL_VERSION = 1
LENGTH = struct.Struct(">I")
KIB, MIB = 1 << 10, 1 << 20
REQUEST_SLACK = 64 * KIB
REPLY_SLACK = 1 * MIB
MAX_MODEL_BYTES = 64 * MIB  # a 2^22-parameter int32 model is 16 MiB; room for the proof and task record
MAX_REQ_ID = 2**64 - 1
MAX_REASON = 1000  # characters of an error reason put on the wire


def max_request_frame(params: Params) -> int:
    """The largest frame a node reads from a peer: one tx plus the message around it."""
    return params.max_tx_bytes + REQUEST_SLACK


def max_reply_frame(params: Params) -> int:
    """The largest frame a client reads: a whole block, or a model with its proofs."""
    return max(params.max_block_bytes, MAX_MODEL_BYTES) + REPLY_SLACK


ERROR = 0xFF  # [ERROR, request id (0 if none), code, reason]


# ---------------------------------------------------------------------------------------------
# Messages


def encode_frame(msg: list[Any]) -> bytes:
    """The frame of one message: length prefix and canonical msgpack."""
    body = encode(msg)
    return LENGTH.pack(len(body)) + body


def decode_message(body: bytes, max_bytes: int) -> list[Any]:
    """A message's array; ``ProtocolViolation`` for anything that is not ``[type, request id, ...]``."""
    try:
        obj = decode(body, max_bytes=max_bytes, max_str_len=4 * MAX_REASON, max_array_len=1 << 16)
        msg = expect_list(obj, None, "message")
        if len(msg) < 2:
            raise DecodeError("a message is [type, request id, ...]")
        expect_uint(msg[0], "message type", 0xFF)
        expect_uint(msg[1], "request id", MAX_REQ_ID)
    except DecodeError as exc:
        raise ProtocolViolation(f"malformed message: {exc.reason}") from None
    return msg


def error_message(req_id: int, exc: MpsError) -> list[Any]:
    reason = exc.reason if len(exc.reason) <= MAX_REASON else exc.reason[: MAX_REASON - 3] + "..."
    return [ERROR, req_id, exc.code, reason]


def error_from_wire(code: int, reason: str) -> MpsError:
    """Rebuild the exception a node reported: same class (by stable code) and reason."""
    cls = error_classes().get(code)
    if cls is None:
        exc = MpsError(f"error {code}: {reason}")
        exc.code = code
        return exc
    exc = cls.__new__(cls)
    MpsError.__init__(exc, reason)
    return exc


def parse_error(msg: list[Any]) -> MpsError:
    if len(msg) != 4 or type(msg[2]) is not int or type(msg[3]) is not str:
        return ProtocolViolation("malformed error reply")
    return error_from_wire(msg[2], msg[3])


# ---------------------------------------------------------------------------------------------
# Framing over a trio stream


class FrameReader:
    """Reads whole frames from a stream, enforcing the length limit and a per-frame deadline.

    ``frame_timeout`` bounds how long a frame may take once its first byte arrived, so half a
    frame followed by silence costs the reader nothing lasting. Between frames there is no limit
    (``idle_timeout`` applies there when given).
    """

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        max_frame: int,
        *,
        frame_timeout: float = 30.0,
        chunk: int = 256 * KIB,
    ) -> None:
        self._stream = stream
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self._chunk = chunk
        self._buf = bytearray()
        self._pos = 0

    def _available(self) -> int:
        return len(self._buf) - self._pos

    async def _fill(self, deadline: float | None) -> bool:
        """Read one chunk; False on EOF."""
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        if deadline is None:
            data = await self._stream.receive_some(self._chunk)
        else:
            with trio.move_on_at(deadline) as scope:
                data = await self._stream.receive_some(self._chunk)
            if scope.cancelled_caught:
                raise ProtocolViolation(f"frame not completed within {self.frame_timeout:g} s")
        if not data:
            return False
        self._buf += data
        return True

    def next_buffered(self) -> bytes | None:
        """A complete frame already in the buffer, without reading (None if there is none)."""
        if self._available() < 4:
            return None
        (n,) = LENGTH.unpack_from(self._buf, self._pos)
        self._check_length(n)
        if self._available() < 4 + n:
            return None
        start = self._pos + 4
        with memoryview(self._buf) as view:
            body = bytes(view[start : start + n])
        self._pos = start + n
        return body

    def _check_length(self, n: int) -> None:
        if n == 0:
            raise ProtocolViolation("empty frame")
        if n > self.max_frame:
            raise FrameTooLarge(n, self.max_frame)

    async def read_frame(self, idle_timeout: float | None = None) -> bytes | None:
        """The next frame's body; None on a clean end of stream between frames."""
        body = self.next_buffered()
        if body is not None:
            return body
        if self._available() == 0:
            if idle_timeout is None:
                got = await self._fill(None)
            else:
                with trio.move_on_after(idle_timeout) as scope:
                    got = await self._fill(None)
                if scope.cancelled_caught:
                    raise ProtocolViolation(f"no message within {idle_timeout:g} s")
            if not got:
                return None
        deadline = trio.current_time() + self.frame_timeout
        while True:
            body = self.next_buffered()
            if body is not None:
                return body
            if self._available() >= 4:
                (n,) = LENGTH.unpack_from(self._buf, self._pos)
                # a large frame: read the rest in chunks as large as what is missing
                self._chunk = max(self._chunk, min(n + 4 - self._available(), 16 * MIB))
            if not await self._fill(deadline):
                raise TruncatedFrame(f"connection closed mid-frame ({self._available()} bytes buffered)")


class Outbox:
    """A connection's outgoing frames, bounded in bytes; one writer task drains it.

    ``put`` waits while the queue holds ``max_bytes`` or more, up to ``timeout`` seconds, then
    raises ``SlowPeer``: a peer that stops reading is dropped instead of growing memory.
    ``put_nowait`` skips the bound; it is for replies whose number is already bounded (one per
    request in flight, and requests in flight are capped per connection).
    """

    def __init__(self, max_bytes: int, timeout: float) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._frames: deque[bytes] = deque()
        self.queued_bytes = 0
        self._not_empty = trio.lowlevel.ParkingLot()
        self._not_full = trio.lowlevel.ParkingLot()
        self.closed = False

    def put_nowait(self, frame: bytes) -> None:
        if self.closed:
            return
        self._frames.append(frame)
        self.queued_bytes += len(frame)
        if self._not_empty:  # unpark_all costs 1.6 us even with no one parked; a reply burst puts many
            self._not_empty.unpark_all()

    async def put(self, frame: bytes) -> None:
        if self.queued_bytes >= self.max_bytes:
            with trio.move_on_after(self.timeout):
                while self.queued_bytes >= self.max_bytes and not self.closed:
                    await self._not_full.park()
            if self.queued_bytes >= self.max_bytes and not self.closed:
                raise SlowPeer(
                    f"peer did not read {self.queued_bytes} queued bytes within {self.timeout:g} s"
                )
        self.put_nowait(frame)

    async def take(self, limit: int = 256 * KIB) -> bytes:
        """Queued frames joined into one write of about ``limit`` bytes (at least one frame)."""
        while not self._frames:
            await self._not_empty.park()
        first = self._frames.popleft()
        if not self._frames or len(first) >= limit:
            out = first
        else:
            parts, size = [first], len(first)
            while self._frames and size + len(self._frames[0]) <= limit:
                frame = self._frames.popleft()
                parts.append(frame)
                size += len(frame)
            out = b"".join(parts)
        self.queued_bytes -= len(out)
        if self._not_full:
            self._not_full.unpark_all()
        return out

    def close(self) -> None:
        self.closed = True
        self._frames.clear()
        self.queued_bytes = 0
        self._not_full.unpark_all()


async def write_loop(
    stream: trio.abc.SendStream,
    outbox: Outbox,
    on_written: Callable[[int], None] | None = None,
) -> None:
    """Drain ``outbox`` into ``stream`` until cancelled (or the stream breaks)."""
    while True:
        data = await outbox.take()
        await stream.send_all(data)
        if on_written is not None:
            on_written(len(data))


async def open_listeners(host: str, port: int, what: str) -> list[trio.SocketListener]:
    """TCP listeners on ``host:port`` (0: a free port); ``ListenFailed`` saying why not, in one line."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ListenFailed(
            f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}; "
            "choose another address or stop the process that holds it"
        ) from None


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` or ``PORT``; ValueError with a clear message otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"address {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"address {text!r}: port must be 0..65535")
    return (host.strip("[]") or default_host), number
