"""`Pool`: the one aiohttp session and connector that every client and request shares."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import attrs

from llmstreams.errors import InvalidParameterError
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.ratelimit import Limiter, RateLimit, RateLimiter

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

T = TypeVar("T")

DEFAULT_MAX_CONNECTIONS = 10_000


@attrs.frozen(slots=True)
class PoolStats:
    """What the pool holds right now.

    `open_streams`: requests started and not yet finished or closed.
    `connections_in_use`: HTTP responses open on a connection (released at the end of each body).
    `requests_sent`: HTTP requests sent through the pool so far (retries and token fetches
    included), and `connections_opened`: how many of them had to open a new connection;
    `connections_opened / requests_sent` is the connections opened per request (0 once warm).
    These two count history, not holdings, so equality compares only the first two.
    """

    open_streams: int
    connections_in_use: int
    requests_sent: int = attrs.field(default=0, eq=False)
    connections_opened: int = attrs.field(default=0, eq=False)


class _CountingConnector(aiohttp.TCPConnector):
    """A `TCPConnector` that counts the connections it hands out and how many of them are new."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connections_requested = 0
        self.connections_opened = 0
        self._known: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        self.connections_requested += 1
        protocol = connection.protocol
        if protocol is not None and protocol not in self._known:
            self._known.add(protocol)
            self.connections_opened += 1
        return connection


class Pool:
    """One `aiohttp.ClientSession` with one `TCPConnector`, shared by every client using it.

    Limits are sized for thousands of concurrent streams: aiohttp's default of 100
    connections would silently queue the rest. `timeout` and `retry` are the defaults of the
    clients that use this pool (a client may override them). `rate_limit` holds back every
    request sent through the pool, whichever client sends it; `rate_limiter` instead shares a
    limiter held elsewhere (e.g. `llmstreams.ray.ClusterRateLimiter`, one for a whole cluster). Use `async with Pool() as pool`
    or call `await pool.close()`.
    """

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_host: int = 0,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        keepalive_timeout: float = 30.0,
        rate_limit: RateLimit | None = None,
        rate_limiter: Limiter | None = None,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise InvalidParameterError("max_connections", "must be a whole number >= 1", max_connections)
        if (
            isinstance(max_connections_per_host, bool)
            or not isinstance(max_connections_per_host, int)
            or max_connections_per_host < 0
        ):
            raise InvalidParameterError(
                "max_connections_per_host", "must be a whole number >= 0 (0: no per-host limit)",
                max_connections_per_host,
            )
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.timeout = timeout if timeout is not None else Timeout()
        self.retry = resolve_retry(retry if retry is not None else RetryPolicy(), max_retries)
        self._keepalive_timeout = keepalive_timeout
        if rate_limit is not None and rate_limiter is not None:
            raise InvalidParameterError("rate_limiter", "give rate_limit or rate_limiter, not both")
        self.rate_limiter: Limiter | None = (
            RateLimiter(rate_limit) if rate_limit is not None else rate_limiter
        )
        self._session: aiohttp.ClientSession | None = None
        self._connector: _CountingConnector | None = None
        self._closed = False
        self._shared: dict[Any, Any] = {}
        self._open_streams = 0
        self._connections_in_use = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Pool {state} max_connections={self.max_connections} "
            f"open_streams={self._open_streams} connections_in_use={self._connections_in_use}>"
        )

    async def __aenter__(self) -> Pool:
        self.session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_use(self) -> bool:
        """True from the first request until `close()`: connections may be open."""
        return self._session is not None

    def session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use inside the running event loop."""
        if self._closed:
            raise RuntimeError("this Pool is closed; create a new one")
        if self._session is None:
            connector = self._connector = _CountingConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections_per_host,
                keepalive_timeout=self._keepalive_timeout,
                ttl_dns_cache=300,
            )
            # Per-phase deadlines are enforced by the transport; aiohttp only bounds the socket connect.
            client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout.connect)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=client_timeout, auto_decompress=True
            )
        return self._session

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def shared(self, key: Any, factory: Callable[[], T]) -> T:
        """The pool-wide object stored under `key`, made by `factory` on first use.

        This is how state such as an access-token cache is shared by every client of a pool.
        """
        try:
            value: T = self._shared[key]
        except KeyError:
            value = self._shared[key] = factory()
        return value

    def stats(self) -> PoolStats:
        connector = self._connector
        return PoolStats(
            open_streams=self._open_streams,
            connections_in_use=self._connections_in_use,
            requests_sent=0 if connector is None else connector.connections_requested,
            connections_opened=0 if connector is None else connector.connections_opened,
        )

    def stream_opened(self) -> None:
        self._open_streams += 1

    def stream_closed(self) -> None:
        self._open_streams -= 1

    def connection_acquired(self) -> None:
        self._connections_in_use += 1

    def connection_released(self) -> None:
        self._connections_in_use -= 1


def resolve_retry(retry: RetryPolicy, max_retries: int | None) -> RetryPolicy:
    """`retry` with `max_retries` applied when one was given."""
    if max_retries is None:
        return retry
    return attrs.evolve(retry, max_retries=max_retries)

