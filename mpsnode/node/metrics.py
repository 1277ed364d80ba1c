"""Prometheus metrics shared by the node daemons, and a small trio HTTP endpoint that serves them.

Each daemon has its own ``CollectorRegistry`` (several daemons can run in one test process).
The endpoint answers any GET with the text exposition format; it is served in the daemon's
nursery, so it stops with the daemon.
"""

from __future__ import annotations

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mpsnode.node.wire import open_listeners

TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """A daemon's registry with the connection metrics ``mpsnode.server.Server`` reports (``ServerStats``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("mps_connections", "Open client connections", registry=r)
        self.connections_closed = Counter(
            "mps_connections_closed", "Closed connections, by reason", ["reason"], registry=r
        )

    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self, reason: str) -> None:
        if reason != "overloaded":
            self.connections.dec()
        self.connections_closed.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(
    metrics: NodeMetrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics`` over HTTP on ``host:port``; reports the bound port when listening."""
    listeners = await open_listeners(host, port, "Prometheus metrics (--metrics)")
    bound = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    request += data
                if not request.startswith(b"GET "):
                    await stream.send_all(
                        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    return
                body = metrics.exposition()
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
