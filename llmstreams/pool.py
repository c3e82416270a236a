"""`Pool`: the one aiohttp session and connector that every client and request shares."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import urllib.request
import weakref
from collections.abc import Callable
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import SplitResult, urlsplit

import aiohttp
import attrs
from aiohttp.client_proto import ResponseHandler

from llmstreams.errors import InvalidParameterError, LLMStreamsError, redact_url
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.origin import call_from_finalizer
from llmstreams.ratelimit import Limiter, RateLimit, RateLimiter
from llmstreams.validation import check_bool, check_encodable, check_number, check_optional

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

T = TypeVar("T")

logger = logging.getLogger("llmstreams")

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


class ArrivalStampingHandler(ResponseHandler):
    """aiohttp's connection protocol, noting when bytes last arrived from the socket.

    `data_received_at` is the `time.monotonic()` of the last `data_received`: a read of the
    body returns bytes that arrived no later than that, however long the reading task then
    waited for its turn on a busy loop. (`time.monotonic()` rather than `loop.time()`, which
    is the same clock in asyncio's loop but whole milliseconds in uvloop's.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.data_received_at = time.monotonic()

    def data_received(self, data: bytes) -> None:
        # aiohttp calls it with no data when it resumes reading from its own buffer.
        if data:
            self.data_received_at = time.monotonic()
        super().data_received(data)


class _CountingConnector(aiohttp.TCPConnector):
    """A `TCPConnector` that counts the connections it hands out and how many of them are new,
    on connections that note when their bytes arrived (`ArrivalStampingHandler`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp has no public hook for the protocol class: `_factory` is what its connectors
        # call to make one for each new connection.
        self._factory = cast(
            "functools.partial[ResponseHandler]",
            functools.partial(ArrivalStampingHandler, loop=self._loop),
        )
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

    Proxies: `proxy="http://host:port"` sends every request through that HTTP proxy (HTTPS
    targets through a CONNECT tunnel). Without it, and unless `trust_env=False`, the
    HTTP_PROXY / HTTPS_PROXY / NO_PROXY environment variables apply, as in curl, requests and
    httpx. Redirects are never followed.

    TLS: certificates are checked against the system's CA store, or the file that
    SSL_CERT_FILE names (set it before the program starts: aiohttp makes its default context
    when it is imported). `ssl=` an
    `ssl.SSLContext` replaces that, e.g. `ssl.create_default_context(cafile="corporate-ca.pem")`
    behind a TLS-inspecting proxy. A certificate that is not trusted raises
    `TLSCertificateError`, which is never retried.
    Every generation is an OpenTelemetry span, with the GenAI metrics, once the application has
    set up the OpenTelemetry SDK (docs/telemetry.md); `telemetry=False` leaves this pool's out.
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
        proxy: str | None = None,
        trust_env: bool = True,
        ssl: SSLContext | None = None,
        telemetry: bool = True,
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
        check_optional("timeout", timeout, Timeout)
        check_optional("retry", retry, RetryPolicy)
        check_optional("rate_limit", rate_limit, RateLimit)
        check_number("keepalive_timeout", keepalive_timeout, low=0)
        check_optional("ssl", ssl, SSLContext)
        self._ssl: SSLContext | bool = True if ssl is None else ssl
        if proxy is not None:
            proxy = _check_proxy(proxy)
        self._proxy = proxy
        self.telemetry = check_bool("telemetry", telemetry)
        self._env_proxies = _environment_proxies() if check_bool("trust_env", trust_env) else {}
        self._proxy_by_origin: dict[tuple[str, str], str | None] = {}
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
        self._loop: asyncio.AbstractEventLoop | None = None
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

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_use(self) -> bool:
        """True from the first request until `close()`: connections may be open."""
        return self._session is not None

    def session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use inside the running event loop.

        A pool is bound to one event loop at a time. Used from a new loop after its first loop
        was closed (two `asyncio.run` calls, a restarted notebook kernel), it starts afresh there:
        connections of the closed loop cannot be used, and are dropped.
        """
        if self._closed:
            raise LLMStreamsError(
                "this Pool is closed (a client without pool= closes its own at the end of "
                "`async with`): create a new Pool or client"
            )
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is not loop:
            self._leave_loop()
        if self._session is None:
            self._loop = loop
            connector = self._connector = _CountingConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections_per_host,
                keepalive_timeout=self._keepalive_timeout,
                ttl_dns_cache=300,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=connect_timeout(self.timeout.connect),
                auto_decompress=True,
            )
        return self._session

    def _leave_loop(self) -> None:
        assert self._session is not None and self._loop is not None
        if not self._loop.is_closed():
            raise LLMStreamsError(
                "this Pool is in use by another event loop that is still running: make one "
                "Pool (and its clients) per event loop"
            )
        logger.debug("pool: its event loop was closed; starting afresh in the running one")
        session, self._session = self._session, None
        # Its connections belong to the closed loop and can neither be used nor closed there;
        # detaching tells aiohttp the session is finished with.
        session.detach()
        if isinstance(self.rate_limiter, RateLimiter):
            # Its lock belongs to the closed loop (a shared limiter held elsewhere has none here).
            self.rate_limiter.rebind()

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            if self._loop is not None and self._loop.is_closed():
                session.detach()
            else:
                await session.close()

    def close_from_finalizer(self) -> None:
        """Close at once, from the finalizer of this pool's owner, which was never closed and
        has warned about it already. Collected unclosed, aiohttp's session and connector would
        warn twice more (about themselves, naming no line of the caller's code) as they drop
        their connections; this drops them first, on the pool's loop."""
        self._closed = True
        session, self._session = self._session, None
        if session is None or self._loop is None:
            return
        connector = session.connector
        session.detach()  # a detached session counts as closed
        if connector is not None:
            # What aiohttp's own finalizer does: close every connection without waiting
            # (`close()` returns an awaitable that no finalizer can await).
            call_from_finalizer(self._loop, connector._close)

    def proxy_for(self, url: str) -> str | None:
        """The proxy a request to `url` goes through: `proxy=`, else HTTP_PROXY / HTTPS_PROXY
        unless NO_PROXY names the host (read once, when the pool was made), else None."""
        if self._proxy is not None or not self._env_proxies:
            return self._proxy
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        try:
            return self._proxy_by_origin[origin]
        except KeyError:
            pass
        proxy = self._env_proxies.get(parts.scheme)
        if proxy is not None and _bypassed(parts, self._env_proxies.get("no", "")):
            proxy = None
        self._proxy_by_origin[origin] = proxy
        return proxy

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


@functools.lru_cache(maxsize=64)
def connect_timeout(seconds: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for a request made with `Timeout(connect=seconds)`: it bounds opening
    the connection, TLS handshake and proxy tunnel included. The other deadlines are the
    transport's, per phase."""
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds)


def _check_proxy(proxy: Any) -> str:
    rule = "must be an http:// URL such as http://proxy.example:3128"
    if not isinstance(proxy, str):
        raise InvalidParameterError("proxy", rule, type(proxy).__name__)
    try:
        parts = urlsplit(check_encodable("proxy", proxy))
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid or any(character.isspace() for character in proxy):
        raise InvalidParameterError("proxy", rule, redact_url(proxy))
    return proxy


def _environment_proxies() -> dict[str, str]:
    """HTTP_PROXY, HTTPS_PROXY (lower case wins, as in curl and requests) and NO_PROXY (as "no")."""
    proxies = urllib.request.getproxies_environment()
    return {
        scheme: value for scheme, value in proxies.items()
        if scheme in ("http", "https", "no") and value
    }


def _bypassed(url: SplitResult, no_proxy: str) -> bool:
    """Whether NO_PROXY ("*", or hosts and domains, with an optional port) names `url`'s host."""
    host = (url.hostname or "").lower()
    for entry in no_proxy.lower().replace(" ", "").split(","):
        if entry == "*":
            return True
        name, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if port and port != str(url.port or {"http": 80, "https": 443}.get(url.scheme)):
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def resolve_retry(retry: RetryPolicy, max_retries: int | None) -> RetryPolicy:
    """`retry` with `max_retries` applied when one was given."""
    if max_retries is None:
        return retry
    return attrs.evolve(retry, max_retries=max_retries)

