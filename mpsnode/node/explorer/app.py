"""The explorer's web server: a Starlette app on the node's own trio loop, served by hypercorn.

Read-only and bounded (docs/EXPLORER.md): only GET and HEAD; no secrets (it sees only the store,
never a key); loopback unless told otherwise; every response carries a content-security policy
that allows the page's own script and style and nothing else, and the page writes data as text,
never as markup. At most ``max_requests`` requests and ``max_streams`` live streams at once (503
beyond); a response that a client does not read within ``send_timeout`` ends its connection, and
hypercorn drops a connection that sends nothing for ``read_timeout``. The node's work never waits
for a browser: views are short reads of the store at its head, and live updates wait on the
node's ``HeadWatch``.

Live updates are server-sent events (``GET /api/stream``): ``head`` on every new block (height,
hash, state root, time) and ``round`` for every round that closed in it (the task's round entry,
as in ``/api/tasks/ID``), so a page follows the chain without reloads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mpsnode.consensus.errors import MpsError
from mpsnode.consensus.events import RoundClosed
from mpsnode.node.errors import BadRequest, ListenFailed, NotFound
from mpsnode.node.explorer.views import AccountIndex, Views, decode_events, parse_hash
from mpsnode.node.messages import TxState
from mpsnode.node.server import HeadWatch, NodeServer

log = logging.getLogger("mpsnode.explorer")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
STATIC = ("index.html", "app.js", "style.css")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


@dataclass(slots=True)
class ExplorerConfig:
    max_requests: int = 64  # requests being answered at once
    max_streams: int = 16  # live event streams at once
    send_timeout: float = 10.0  # seconds a client may leave a response unread
    # seconds a connection may send nothing (hypercorn): ends half-sent requests, and also an event
    # stream, whose browser sends nothing after its request; the browser reconnects by itself with
    # the Last-Event-ID it saw, and the stream resumes after that block, so nothing is lost
    read_timeout: int = 30
    keepalive_s: float = 15.0  # a comment on an idle stream, so proxies and browsers keep it


class _Guard:
    """ASGI middleware: GET/HEAD only, the security headers, concurrency caps, send timeouts."""

    def __init__(self, app: ASGIApp, config: ExplorerConfig) -> None:
        self.app = app
        self.config = config
        self.requests = 0
        self.streams = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, "the explorer is read-only: GET only", [(b"allow", b"GET, HEAD")])
            return
        stream = scope["path"] == "/api/stream"
        if self.requests >= self.config.max_requests or (stream and self.streams >= self.config.max_streams):
            await _plain(send, 503, "the explorer is busy; retry shortly", [(b"retry-after", b"2")])
            return
        self.requests += 1
        self.streams += stream

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            with trio.fail_after(self.config.send_timeout):  # a reader that stalls loses its connection
                await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except trio.TooSlowError:
            log.info("explorer client too slow; connection dropped")
        except BaseExceptionGroup as group:  # the same, from inside a streaming response's task group
            rest = group.subgroup(lambda e: not isinstance(e, trio.TooSlowError))
            if rest is not None:
                raise rest from None
            log.info("explorer client too slow; stream dropped")
        finally:
            self.requests -= 1
            self.streams -= stream


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers, *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Explorer:
    """The app over one node: its store (through ``server``), its head, and what the daemon adds."""

    def __init__(
        self,
        server: NodeServer,
        *,
        block_time_ms: int,
        node_extra: Callable[[], dict[str, Any]] | None = None,
        reports_dir: Path | None = None,
        config: ExplorerConfig | None = None,
    ) -> None:
        self.server = server
        self.watch: HeadWatch = server.watch
        self.views = Views(server.store, block_time_ms)
        self.index = AccountIndex(self.views)
        self.node_extra = node_extra
        self.reports_dir = reports_dir
        self.config = config or ExplorerConfig()
        self.static = {
            name: resources.files(__package__).joinpath("static", name).read_bytes() for name in STATIC
        }
        routes = [
            Route("/", self.page),
            Route("/app.js", self.asset),
            Route("/style.css", self.asset),
            Route("/favicon.ico", lambda r: Response(status_code=204)),
            Route("/api/node", self.api(self.node)),
            Route("/api/tasks", self.api(lambda r: self.views.tasks())),
            Route("/api/tasks/{task_id:int}", self.api(lambda r: self.views.task(r.path_params["task_id"]))),
            Route("/api/accounts/{address}", self.api(self.account)),
            Route("/api/blocks", self.api(self.blocks)),
            Route("/api/blocks/{height:int}", self.api(lambda r: self.views.block(r.path_params["height"]))),
            Route("/api/txs/{tx_id}", self.api(self.tx)),
            Route("/api/reports/{height:int}", self.api(self.report)),
            Route("/api/stream", self.stream),
        ]
        self.app = _Guard(Starlette(routes=routes), self.config)

    # pages -----------------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        return Response(self.static["index.html"], media_type=CONTENT_TYPES[".html"])

    async def asset(self, request: Request) -> Response:
        name = request.url.path.lstrip("/")
        return Response(
            self.static[name],
            media_type=CONTENT_TYPES[Path(name).suffix],
            headers={"cache-control": "no-cache"},
        )

    def api(self, view: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                self._index_to_head()
                body = view(request)
            except MpsError as exc:  # NotFound, BadRequest: the caller's mistake, said in one line
                status = 404 if isinstance(exc, NotFound) else 400
                return JSONResponse({"error": exc.reason, "code": exc.code}, status_code=status)
            return JSONResponse(body, headers={"cache-control": "no-store"})

        return endpoint

    def _index_to_head(self) -> None:
        head = self.server.store.head()
        if head is not None and self.index.indexed_height < head.height:
            for height in range(
                self.index.indexed_height + 1, min(head.height, self.index.indexed_height + 2000) + 1
            ):
                self.index.fold(height)

    # views that need more than the store -----------------------------------------------------------
    def node(self, request: Request) -> dict[str, Any]:
        out = self.server.status().to_json()
        out["block_time_ms"] = self.views.block_time_ms
        out["explorer"] = {"indexed_height": self.index.indexed_height}
        if self.server.genesis.l1 is not None:  # a chain that settles on L1: what its state says of it
            record = self.views.settlement()
            out["l2_settlement"] = record
        if self.node_extra is not None:
            extra = self.node_extra()
            if "settlement" in extra and "l2_settlement" in out:
                extra["settlement"] = {**out.pop("l2_settlement"), **extra["settlement"]}
            out.update(extra)
        if self.reports_dir is not None and self.reports_dir.is_dir():
            out["reports"] = sorted(int(p.stem) for p in self.reports_dir.glob("*.json") if p.stem.isdigit())[
                -50:
            ]
        return out

    def account(self, request: Request) -> dict[str, Any]:
        return self.views.account(parse_hash(request.path_params["address"], "an address"), self.index)

    def blocks(self, request: Request) -> dict[str, Any]:
        before = request.query_params.get("before")
        if before is not None and not before.isdigit():
            raise BadRequest(f"before must be a block height; got {before[:40]!r}")
        return self.views.blocks(int(before) if before else None)

    def tx(self, request: Request) -> dict[str, Any]:
        tx_id = parse_hash(request.path_params["tx_id"], "a tx id")
        found = self.views.tx(tx_id)
        if found is not None:
            return found
        reply = self.server.receipt_status(tx_id)  # a sequencer knows the txs it holds or dropped
        if reply.state == TxState.UNKNOWN:
            raise NotFound(f"no tx {tx_id.hex()} on this node")
        out: dict[str, Any] = {"tx_id": tx_id.hex(), "state": reply.state.name.lower()}
        if reply.state == TxState.DROPPED:
            out.update(height=reply.height, code=reply.code, reason=reply.reason)
        return out

    def report(self, request: Request) -> dict[str, Any]:
        path = (self.reports_dir or Path("/nonexistent")) / f"{request.path_params['height']}.json"
        if not path.is_file() or path.stat().st_size > 4 << 20:
            raise NotFound(f"no divergence report for height {request.path_params['height']}")
        return dict(json.loads(path.read_text()))

    # live updates ----------------------------------------------------------------------------------
    async def stream(self, request: Request) -> Response:
        since = request.headers.get("last-event-id") or request.query_params.get("since", "")
        start = min(int(since), self.watch.height) if since.isdigit() else self.watch.height
        return StreamingResponse(
            self._events(start),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _events(self, seen: int) -> AsyncIterator[bytes]:
        yield f"retry: 2000\nevent: hello\ndata: {json.dumps({'height': self.watch.height})}\n\n".encode()
        while True:
            with trio.move_on_after(self.config.keepalive_s):
                while self.watch.height <= seen:
                    await self.watch.wait_change()
            if self.watch.height <= seen:
                yield b": keepalive\n\n"
                continue
            top = self.watch.height
            for height in range(max(seen + 1, top - 50), top + 1):  # a reader far behind gets the newest 50
                for chunk in self._block_events(height):
                    yield chunk
            seen = top

    def _block_events(self, height: int) -> list[bytes]:
        raw = self.server.store.get_header(height)
        if raw is None:
            return []
        self._index_to_head()
        out = []
        blob = self.server.store.get_events(height)
        for ev in decode_events(blob) if blob else []:
            if isinstance(ev, RoundClosed):
                out.append(_sse("round", {"task_id": ev.task_id, **self.views.round_entry(ev, height)}))
        # the block's head last, with its id: a browser that reconnects resumes after a block it saw whole
        out.append(_sse("head", self.views.block_summary(height) or {"height": height}, event_id=height))
        return out


def _sse(kind: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One server-sent event; ``event_id`` (a block height) is what a reconnecting browser resumes after."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def serve_explorer(
    explorer: Explorer, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``explorer`` on ``host:port`` (0: a free port) until cancelled; reports the bound port.
    ``ListenFailed`` in one line when the address cannot be had."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("mpsnode.explorer.http")
    config.read_timeout = explorer.config.read_timeout
    config.keep_alive_timeout = 5
    config.include_server_header = False
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        try:
            binds = await nursery.start(_hypercorn, explorer.app, config)
        except (OSError, BaseExceptionGroup) as exc:  # hypercorn binds inside a nursery of its own
            bind_error = exc if isinstance(exc, OSError) else _first_os_error(exc)
            if bind_error is None:
                raise
            raise ListenFailed(
                f"cannot listen on {host}:{port} for the explorer (--http): "
                f"{bind_error.strerror or bind_error}; choose another address or stop the process that holds it"
            ) from None
        bound = int(binds[0].rsplit(":", 1)[1])
        task_status.started(bound)


def _first_os_error(group: BaseExceptionGroup) -> OSError | None:
    match = group.subgroup(lambda e: isinstance(e, OSError))
    while isinstance(match, BaseExceptionGroup):
        match = match.exceptions[0]  # type: ignore[assignment]
    return match if isinstance(match, OSError) else None


async def _hypercorn(app: ASGIApp, config: HypercornConfig, *, task_status: trio.TaskStatus[Any]) -> None:
    await hypercorn_serve(app, config, task_status=task_status)  # type: ignore[arg-type]
