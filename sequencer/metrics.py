"""Prometheus metrics of the sequencer, and a small trio HTTP endpoint that serves them.

Each daemon has its own ``CollectorRegistry`` (several daemons can run in one test process).
The endpoint answers any GET with the text exposition format; it is served in the daemon's
nursery, so it stops with the daemon.
"""

from __future__ import annotations

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.height = Gauge("mps_height", "Height of the newest committed block", registry=r)
        self.mempool_txs = Gauge("mps_mempool_txs", "Txs pending in the mempool (admitted, not yet in a block)",
                                 registry=r)
        self.mempool_bytes = Gauge("mps_mempool_bytes", "Bytes of the txs pending in the mempool", registry=r)
        self.admitted = Counter("mps_txs_admitted", "Txs admitted and acked (durable)", registry=r)
        self.rejected = Counter("mps_txs_rejected", "Txs refused at admission, by error code", ["code"], registry=r)
        self.included = Counter("mps_txs_included", "Txs included in blocks", registry=r)
        self.dropped = Counter("mps_txs_dropped", "Admitted txs left out for good at block building, by code",
                               ["code"], registry=r)
        self.blocks = Counter("mps_blocks", "Blocks committed", registry=r)
        self.build_seconds = Histogram("mps_block_build_seconds", "Time to build and sign a block (STF, roots)",
                                       buckets=_TIME_BUCKETS, registry=r)
        self.commit_seconds = Histogram("mps_block_commit_seconds", "Time of the block's one LMDB write transaction",
                                        buckets=_TIME_BUCKETS, registry=r)
        self.group_commit_seconds = Histogram("mps_mempool_commit_seconds",
                                              "Time of one mempool group commit", buckets=_TIME_BUCKETS,
                                              registry=r)
        self.group_commit_txs = Histogram("mps_mempool_commit_txs", "Txs per mempool group commit",
                                          buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
                                          registry=r)
        self.verify_batch_txs = Histogram("mps_verify_batch_txs", "Signatures per verification batch",
                                          buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000), registry=r)
        self.ack_seconds = Histogram("mps_ack_seconds", "Submit to durable ack, as seen by the node",
                                     buckets=_TIME_BUCKETS, registry=r)
        self.rounds_closed = Counter("mps_rounds_closed", "Task rounds closed (void ones included)", registry=r)
        self.slashes = Counter("mps_slashes", "Clients slashed", registry=r)
        self.connections = Gauge("mps_connections", "Open client connections", registry=r)
        self.connections_closed = Counter("mps_connections_closed", "Closed connections, by reason", ["reason"],
                                          registry=r)

    # ServerStats --------------------------------------------------------------------------------
    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self, reason: str) -> None:
        if reason != "overloaded":
            self.connections.dec()
        self.connections_closed.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: Metrics, host: str, port: int, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``metrics`` over HTTP on ``host:port``; reports the bound port when listening."""
    listeners = await trio.open_tcp_listeners(port, host=host)
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
                    await stream.send_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n"
                                          b"Connection: close\r\n\r\n")
                    return
                body = metrics.exposition()
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
