"""`MockServer`: the Qianfan and DashScope mock on a local socket, with its stats."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from ssl import SSLContext

from aiohttp import web

from llmstreams.mock import dashscope, openai_vendors, qianfan, qianfan_console
from llmstreams.mock.behaviour import Behaviour, BehaviourError
from llmstreams.mock.context import MockContext, ServerClosing
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.delivery import drop_connection, mock_error
from llmstreams.mock.stats import MockStats, SharedCounters, StatsRecorder, stats_json
from llmstreams.mock.vendor_errors import UnmappableCodeError

DEFAULT_TRIGGER_PHRASE = "[[unsafe]]"
HEALTH_PATH = "/health"
STATS_PATH = "/stats"
DEFAULT_TOKEN_TTL = 2592000
# Handlers end promptly on shutdown (their waits watch for it); this only bounds a handler
# stuck writing to a client that stopped reading.
_SHUTDOWN_TIMEOUT = 2.0
# Thousands of clients connect at once in benchmarks; the kernel caps this at somaxconn.
_LISTEN_BACKLOG = 8192

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MockServer:
    """A local HTTP server speaking the Qianfan and DashScope wire protocols.

    Use as `async with MockServer() as server:` (or `await start()` / `await close()`), then point
    a client at `server.url`. Knobs (`Behaviour`) apply server-wide and per request through the
    `X-Mock-Behaviour` header. With `ssl=` a server-side `ssl.SSLContext` holding a certificate,
    it serves HTTPS (`server.url` starts https://).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: Behaviour | None = None,
        credentials: MockCredentials | None = None,
        token_ttl: int = DEFAULT_TOKEN_TTL,
        trigger_phrase: str = DEFAULT_TRIGGER_PHRASE,
        reuse_port: bool = False,
        token_key: bytes | None = None,
        shared_stats: SharedCounters | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self._host = host
        self._ssl = ssl
        self._requested_port = port
        self._reuse_port = reuse_port
        self._context = MockContext(
            behaviour=behaviour or Behaviour(),
            credentials=credentials,
            token_ttl=token_ttl,
            trigger_phrase=trigger_phrase,
            token_key=token_key,
            shared_stats=shared_stats,
        )
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._port: int | None = None
        self._closed = False

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<MockServer {where}>"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the mock server is not started")
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        """The base URL, e.g. "http://127.0.0.1:43123" (no trailing slash)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://{host}:{self.port}"

    @property
    def behaviour(self) -> Behaviour:
        return self._context.behaviour

    def set_behaviour(self, behaviour: Behaviour) -> None:
        """Replace the server-wide knobs for the requests that arrive from now on.

        The attempts `fail_times` counts start again from zero.
        """
        self._context.set_behaviour(behaviour)

    def expire_tokens(self) -> None:
        """Every access token issued so far answers error 111 (expired) from now on, and every
        IAM bearer token HTTP 401 on Qianfan v2."""
        self._context.tokens.expire_all()

    @property
    def stats(self) -> MockStats:
        return self._context.stats.snapshot()

    async def wait_for(
        self, predicate: Callable[[MockStats], bool], timeout: float = 5.0
    ) -> MockStats:
        """Return the first stats snapshot satisfying `predicate`; TimeoutError after `timeout`."""
        return await self._context.stats.wait_for(predicate, timeout)

    async def start(self) -> None:
        if self._runner is not None or self._closed:
            raise RuntimeError("a mock server starts once; create a new one to start again")
        app = web.Application(middlewares=[_mock_outcomes])
        app.router.add_get(HEALTH_PATH, _health)
        app.router.add_get(STATS_PATH, self._stats_route)
        qianfan.add_routes(app, self._context)
        qianfan_console.add_routes(app, self._context)
        dashscope.add_routes(app, self._context)
        openai_vendors.add_routes(app, self._context)
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        self._runner = runner
        try:
            sock = _listening_socket(self._host, self._requested_port, self._reuse_port)
            http_server = runner.server
            assert http_server is not None
            stats = self._context.stats
            self._listener = await asyncio.get_running_loop().create_server(
                lambda: _CountedConnection(http_server(), stats), sock=sock,
                backlog=_LISTEN_BACKLOG, ssl=self._ssl,
            )
        except BaseException:
            await runner.cleanup()
            self._runner = None
            raise
        self._port = sock.getsockname()[1]

    async def _stats_route(self, request: web.Request) -> web.Response:
        stats = self._context.stats
        return web.json_response(stats_json(stats.combined(), workers=stats.workers))

    async def close(self) -> None:
        """Stop: stalled and delayed handlers drop their connections, then everything closes."""
        if self._runner is None:
            return
        self._closed = True
        self._context.begin_closing()
        if self._listener is not None:
            self._listener.close()
        await self._runner.cleanup()
        if self._listener is not None:
            await self._listener.wait_closed()
        self._runner = None
        self._listener = None

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def _mock_outcomes(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Answers that come from the mock itself rather than from a vendor's protocol."""
    try:
        return await handler(request)
    except (BehaviourError, UnmappableCodeError) as error:
        return mock_error(str(error))
    except ServerClosing:
        drop_connection(request)
        return web.Response(status=503)


def _listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _CountedConnection(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol to count connections as they open and close."""

    def __init__(self, inner: asyncio.Protocol, stats: StatsRecorder) -> None:
        self._inner = inner
        self._stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stats.connection_opened()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._stats.connection_closed()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
