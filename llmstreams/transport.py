"""Sending one generation request: connections, deadlines and retries.

This layer knows nothing of vendors. A vendor module describes one generation as an
`Exchange`: how to build the HTTP request (again for every attempt, so that tokens and
signatures are fresh) and how to turn the response body into chunks (`ResponseParser`).
`open_exchange` sends it, retrying only while nothing of the generation has arrived, and
returns the open response with its first chunks.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
import attrs

from llmstreams.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    InvalidParameterError,
    LLMStreamsError,
    ProtocolError,
    StreamInterruptedError,
    StreamTimeoutError,
    TLSCertificateError,
    redact_url,
    snippet,
)
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import ArrivalStampingHandler, Pool, connect_timeout
from llmstreams.ratelimit import Limiter
from llmstreams.types import Chunk

logger = logging.getLogger("llmstreams")

_READ_ERRORS = (aiohttp.ClientError, OSError)
# After the generation's end: the longest wait for the body's end, and how many bytes after the
# last event are read before giving up on the connection.
_END_WAIT = 5.0
_MAX_TAIL = 64 * 1024


@attrs.frozen(slots=True, repr=False)
class HttpRequest:
    """One HTTP request as a vendor module built it.

    The repr names the query parameters and headers but never shows their values, since
    those carry access tokens and signatures.
    """

    method: str
    url: str
    body: bytes
    headers: Mapping[str, str] = attrs.field(factory=dict)
    params: Mapping[str, str] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        params = ", ".join(self.params)
        headers = ", ".join(self.headers)
        return (
            f"<HttpRequest {self.method} {redact_url(self.url)} params=[{params}] headers=[{headers}]>"
        )


@attrs.frozen(slots=True)
class ResponseHead:
    """Status line and headers of a response, for the vendor's parser."""

    status: int
    headers: Mapping[str, str]
    content_type: str
    retry_after: float | None


class ResponseParser(Protocol):
    """Turns one response body into chunks, raising `APIError` for the vendor's error bodies.

    `feed` and `close` return iterables that the caller exhausts, in order, before it feeds
    again. A parser may (and the stream parsers do) decode each event only when its chunk is
    asked for, so a bad event raises its error from the iterator in its turn: after the good
    chunks before it, before anything after it is decoded.
    """

    @property
    def finished(self) -> bool:
        """True once the generation's end was seen (set before that last chunk is yielded)."""

    def feed(self, data: bytes) -> Iterable[Chunk]: ...

    def close(self) -> Iterable[Chunk]:
        """The body ended (or `finished` is True): the last chunks, or the error that ended it,
        or `StreamInterruptedError` if the generation's end never came."""


class Exchange(Protocol):
    """One generation in a vendor's dialect."""

    provider: str

    async def build_request(self) -> HttpRequest: ...

    def parser(self, head: ResponseHead) -> ResponseParser: ...

    async def recover(self, error: APIError) -> bool:
        """Repair what `error` says is wrong (e.g. fetch a new access token).

        True means: send the request again at once. Asked at most once per generation.
        """


class _NoResponse(Exception):
    """Nothing of the response arrived, so the request may be sent again."""

    def __init__(self, error: APIConnectionError) -> None:
        super().__init__(str(error))
        self.error = error


class _ReadDeadline(Exception):
    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


class BodyReader:
    """Reads a response body with the first-byte, idle and total deadlines.

    One timer per response watches the deadline and is only moved when it would fire too
    late, so a read costs a clock lookup rather than a timer of its own. When a deadline
    passes during a read, the read fails with `_ReadDeadline`.
    """

    __slots__ = (
        "_response", "_pool", "_loop", "_idle", "_total_deadline", "_first_deadline",
        "_waiting_until", "_timer", "_timer_when", "_released", "_protocol", "bytes_received",
        "arrived_at",
    )

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        pool: Pool,
        *,
        first_deadline: float | None,
        idle: float | None,
        total_deadline: float | None,
    ) -> None:
        self._response = response
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._first_deadline = first_deadline
        self._idle = idle
        self._total_deadline = total_deadline
        self._waiting_until: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._released = False
        connection = response.connection
        protocol = None if connection is None else connection.protocol
        self._protocol = protocol if isinstance(protocol, ArrivalStampingHandler) else None
        self.bytes_received = 0
        # The `time.monotonic()` by which the bytes of the last read had arrived (see
        # ArrivalStampingHandler).
        self.arrived_at = time.monotonic()
        pool.connection_acquired()

    async def read(self) -> bytes:
        """The next bytes of the body; b"" at its end."""
        content = self._response.content
        # What has already arrived needs no wait, so no deadline either.
        data = content.read_nowait()
        if data or content.at_eof():
            self.bytes_received += len(data)
            self._note_arrival()
            return data
        deadline = self._next_deadline()
        if deadline is not None:
            self._waiting_until = deadline
            if self._timer is None or self._timer_when > deadline:
                self._arm(deadline)
        try:
            data = await content.readany()
        finally:
            self._waiting_until = None
        self.bytes_received += len(data)
        self._note_arrival()
        return data

    def _note_arrival(self) -> None:
        protocol = self._protocol
        self.arrived_at = time.monotonic() if protocol is None else protocol.data_received_at

    def _next_deadline(self) -> float | None:
        if self.bytes_received:
            deadline = None if self._idle is None else self._loop.time() + self._idle
        else:
            deadline = self._first_deadline
        total = self._total_deadline
        if total is not None and (deadline is None or total < deadline):
            return total
        return deadline

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiting_until = self._waiting_until
        if waiting_until is None:
            return
        if self._loop.time() < waiting_until:
            self._arm(waiting_until)
            return
        if self._total_deadline is not None and waiting_until >= self._total_deadline:
            phase = "total"
        else:
            phase = "idle" if self.bytes_received else "first_chunk"
        self._response.content.set_exception(_ReadDeadline(phase))

    def release(self) -> None:
        """Return the connection to the pool (the body was read to its end)."""
        self._finish(self._response.release)

    async def release_at_end(self) -> None:
        """The generation has ended: read the body to its end, then release the connection.

        The body's end (a chunked body's last, empty chunk) may come in a read of its own
        after the last event; a connection released before it is closed rather than reused,
        and the next request pays for a new one. The wait is bounded by the idle timeout, at
        most `_END_WAIT` (a reused connection is not worth a longer wait), and at most
        `_MAX_TAIL` bytes are read; a body that does not end within them is closed.
        """
        content = self._response.content
        if not content.at_eof():
            if self._idle is None or self._idle > _END_WAIT:
                self._idle = _END_WAIT
            tail = 0
            try:
                while (data := await self.read()) and tail <= _MAX_TAIL:
                    tail += len(data)
            except (_ReadDeadline, *_READ_ERRORS):
                self.abort()
                return
            except BaseException:
                self.abort()
                raise
            if tail > _MAX_TAIL:
                self.abort()
                return
        self.release()

    def abort(self) -> None:
        """Close the connection at once (the body was not read to its end)."""
        self._finish(self._response.close)

    def _finish(self, how: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._released:
            self._released = True
            self._pool.connection_released()
            how()  # type: ignore[operator]


@attrs.define(slots=True)
class OpenExchange:
    """A response whose first chunk has arrived (or whose body has ended).

    `first_chunks` yields that chunk, then the rest of the chunks of the same read.
    """

    reader: BodyReader
    parser: ResponseParser
    first_chunks: Iterator[Chunk]
    ended: bool
    attempts: int


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None for
    anything else, whatever the server sent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - time.time()
    except (TypeError, ValueError, OverflowError, IndexError, OSError):
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def read_head(response: aiohttp.ClientResponse) -> ResponseHead:
    """The status and the headers the parsers use, from any headers a server may send.

    `content_type` is the media type alone, lowercased, or "" when the server sent none. It is
    cut from the header here rather than taken from aiohttp's `content_type`, which runs the
    stdlib email parser on every response and names a missing type "application/octet-stream".
    """
    headers = response.headers
    return ResponseHead(
        status=response.status,
        headers=headers,
        content_type=headers.get("Content-Type", "").partition(";")[0].strip().lower(),
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def is_redirect(status: int) -> bool:
    return 300 <= status < 400 and status != 304


def redirect_error(status: int, location: str, *, where: str, provider: str) -> ProtocolError:
    """The error for a redirect llmstreams did not follow, naming the host it pointed to."""
    try:
        target = urlsplit(urljoin(where, location)).netloc.rpartition("@")[2] if location else ""
    except ValueError:
        target = ""
    destination = f"to {snippet(target, 80)}" if target else "without a usable Location"
    return ProtocolError(
        f"{where} answered HTTP {status}, a redirect {destination}; llmstreams does not "
        "follow redirects (that would send the request and its credentials again, maybe to "
        "another host): set base_url to where the service really is",
        provider=provider,
    )


async def open_exchange(
    pool: Pool,
    exchange: Exchange,
    *,
    timeout: Timeout,
    retry: RetryPolicy,
    on_attempt: Callable[[int], None] | None = None,
    on_retry: Callable[[int, float, LLMStreamsError], None] | None = None,
) -> OpenExchange:
    """Send `exchange` until its first chunk arrives, retrying what may be retried.

    Retried, up to `retry.max_retries` times: connection failures and timeouts before any
    byte of the response arrived, and `APIError`s marked `retryable` (HTTP 408/409/429/5xx, the
    vendor's overload codes), which the server sends instead of a generation. Never retried:
    anything that goes wrong once the body of a generation has begun. `on_attempt(n)` is
    told the number of each attempt (from 1) as it starts, so that it is known on failure too,
    and `on_retry(n, delay, cause)` that attempt `n` follows in `delay` seconds because of
    `cause` (a retry, or the re-send after a repair by `exchange.recover`).
    """
    loop = asyncio.get_running_loop()
    total_deadline = None if timeout.total is None else loop.time() + timeout.total
    retries = 0
    recovered = False
    attempts = 0
    while True:
        attempts += 1
        if on_attempt is not None:
            on_attempt(attempts)
        try:
            opened = await _attempt(pool, exchange, timeout, total_deadline)
            opened.attempts = attempts
            return opened
        except APIError as error:
            if not recovered and await exchange.recover(error):
                recovered = True
                logger.info("%s: sending again after repairing: %s", exchange.provider, error)
                if on_retry is not None:
                    on_retry(attempts + 1, 0.0, error)
                continue
            if not error.retryable or retries >= retry.max_retries:
                raise
            wait = retry.delay(retries, error.retry_after)
            last_error: LLMStreamsError = error
        except _NoResponse as failure:
            if retries >= retry.max_retries:
                raise failure.error from None
            wait = retry.delay(retries)
            last_error = failure.error
        if total_deadline is not None and loop.time() + wait >= total_deadline:
            raise last_error
        retries += 1
        logger.warning(
            "%s: retry %d of %d in %.2fs after: %s",
            exchange.provider, retries, retry.max_retries, wait, last_error,
        )
        if on_retry is not None:
            on_retry(attempts + 1, wait, last_error)
        await asyncio.sleep(wait)


async def _attempt(
    pool: Pool, exchange: Exchange, timeout: Timeout, total_deadline: float | None
) -> OpenExchange:
    """One sending of `exchange`: pass the rate limit, build the request, send it, read the
    response's head, then its body up to the first chunk (or the body's end)."""
    provider = exchange.provider
    if pool.rate_limiter is not None:
        await _pass_rate_limit(pool.rate_limiter, total_deadline, provider)
    request = await _build_request(exchange)
    loop = asyncio.get_running_loop()
    first_deadline = None if timeout.first_chunk is None else loop.time() + timeout.first_chunk
    response = await _send(pool, request, provider, timeout, first_deadline, total_deadline)
    head = _response_head(response, request, provider)
    reader = BodyReader(
        response, pool, first_deadline=first_deadline, idle=timeout.idle,
        total_deadline=total_deadline,
    )
    try:
        return await _read_to_first_chunk(reader, exchange.parser(head), provider)
    except BaseException:
        reader.abort()
        raise


async def _pass_rate_limit(limiter: Limiter, total_deadline: float | None, provider: str) -> None:
    try:
        async with asyncio.timeout_at(total_deadline):
            await limiter.acquire()
    except TimeoutError:
        raise APITimeoutError(
            "the pool's rate limit held the request back past the total timeout",
            phase="total", provider=provider,
        ) from None


async def _build_request(exchange: Exchange) -> HttpRequest:
    try:
        request = await exchange.build_request()
    except APIConnectionError as error:
        # Preparing the request (e.g. fetching an access token) never reached the generation.
        raise _unanswered(error) from None
    if _has_url_credentials(request.url) and any(
        name.lower() == "authorization" for name in request.headers
    ):
        raise InvalidParameterError(
            "base_url",
            "carries user:password@, but this client sends its own Authorization header: "
            "remove the credentials from base_url",
        )
    return request


async def _send(
    pool: Pool,
    request: HttpRequest,
    provider: str,
    timeout: Timeout,
    first_deadline: float | None,
    total_deadline: float | None,
) -> aiohttp.ClientResponse:
    """Send `request`; its response once the head arrived, within the first_chunk and total
    deadlines (`_NoResponse` for a failure that may be retried)."""
    header_deadline = _earliest(first_deadline, total_deadline)
    logger.debug("%s: sending %r", provider, request)
    try:
        async with asyncio.timeout_at(header_deadline):
            # Never redirected: following one would send the prompt and credentials elsewhere.
            return await pool.session().request(
                request.method, request.url, params=request.params,
                headers=request.headers, data=request.body, allow_redirects=False,
                proxy=pool.proxy_for(request.url), timeout=connect_timeout(timeout.connect),
            )
    except (TimeoutError, *_READ_ERRORS) as error:
        timeout_phase = "total" if header_deadline == total_deadline else "first_chunk"
        failure = request_failure(
            error, where=_where(request), provider=provider, timeout_phase=timeout_phase
        )
        if isinstance(failure, APIConnectionError):
            raise _unanswered(failure) from None
        raise failure from None


def _response_head(
    response: aiohttp.ClientResponse, request: HttpRequest, provider: str
) -> ResponseHead:
    """The head of `response`, refusing a redirect (the response is closed on failure)."""
    try:
        head = read_head(response)
        if is_redirect(head.status):
            raise redirect_error(
                head.status, head.headers.get("Location", ""), where=_where(request),
                provider=provider,
            )
    except BaseException:
        response.close()
        raise
    return head


async def _read_to_first_chunk(
    reader: BodyReader, parser: ResponseParser, provider: str
) -> OpenExchange:
    """Read the body until its first chunk is decoded, or to its end."""
    while True:
        data = await read_body(reader, provider)
        if not data:
            # An error body is decoded here, so that the retry decision can see it.
            chunks = list(parser.close())
            reader.release()
            return OpenExchange(reader, parser, iter(chunks), ended=True, attempts=0)
        # The first chunk is decoded here: an error event before it is still retryable.
        rest = iter(parser.feed(data))
        first = next(rest, None)
        if first is not None:
            return OpenExchange(
                reader, parser, itertools.chain((first,), rest), ended=False, attempts=0
            )


def _unanswered(error: APIConnectionError) -> Exception:
    """What to raise for a request the server never answered: a failure that may be sent
    again, unless sending again cannot change it (a certificate gets the same verdict)."""
    return error if isinstance(error, TLSCertificateError) else _NoResponse(error)


def request_failure(
    error: BaseException,
    *,
    where: str,
    provider: str,
    timeout_phase: str,
    wanted: str = "response",
    purpose: str = "",
) -> LLMStreamsError:
    """The llmstreams error for a request that failed before its response began.

    `error` is a TimeoutError (the caller's `timeout_phase` deadline, or aiohttp's connect
    timeout), a non-HTTP answer, or a connection failure. `wanted` names what did not come.
    Messages quote `where` (a URL without its query, which may carry secrets), never the request.
    """
    if isinstance(error, TimeoutError):
        phase = "connect" if isinstance(error, aiohttp.ServerTimeoutError) else timeout_phase
        return APITimeoutError(
            f"no {wanted} from {where} within the {phase} timeout", phase=phase, provider=provider
        )
    if isinstance(error, aiohttp.ClientHttpProxyError):
        # The proxy's answer to CONNECT, not the service's (the proxy URL may hold a password).
        return APIConnectionError(
            f"could not reach {where}{purpose}: the proxy refused the tunnel "
            f"(HTTP {error.status} {snippet(error.message, 80)})",
            provider=provider,
        )
    if isinstance(error, aiohttp.ClientResponseError):
        reason = error.message or "its answer could not be read as an HTTP response"
        return ProtocolError(f"{where} did not answer in HTTP: {reason}", provider=provider)
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return TLSCertificateError(
            f"could not reach {where}{purpose}: its TLS certificate was refused "
            f"({_certificate_failure(error.certificate_error)})",
            provider=provider,
        )
    return APIConnectionError(
        f"could not reach {where}{purpose}: {_describe(error)}", provider=provider
    )


async def read_body(reader: BodyReader, provider: str) -> bytes:
    """`reader.read()` with transport failures turned into llmstreams errors."""
    try:
        return await reader.read()
    except _ReadDeadline as deadline:
        if deadline.phase == "first_chunk":
            raise APITimeoutError(
                "the response began but no body arrived within the first_chunk timeout",
                phase="first_chunk", provider=provider,
            ) from None
        if deadline.phase == "total":
            message = "the stream was stopped: the total timeout ran out before it ended"
        else:
            message = f"the stream stopped: nothing arrived within the {deadline.phase} timeout"
        raise StreamTimeoutError(message, phase=deadline.phase, provider=provider) from None
    except _READ_ERRORS as error:
        raise StreamInterruptedError(
            f"the stream broke off before its end: {_broken(error)}", provider=provider
        ) from None


def _earliest(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    if second is None:
        return first
    return min(first, second)


def _has_url_credentials(url: str) -> bool:
    return "@" in url.partition("://")[2].partition("/")[0]


def _where(request: HttpRequest) -> str:
    return redact_url(request.url.split("?", 1)[0])


def _broken(error: BaseException) -> str:
    """What cut a body short, in words about the stream (aiohttp's own text names its parser
    states and classes, e.g. "TransferEncodingError: 400", which reads like an HTTP status)."""
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "the connection closed in the middle of the response body"
    if isinstance(error, OSError) and error.strerror:
        return f"the connection failed ({error.strerror})"
    return "the connection failed"


def _certificate_failure(error: BaseException) -> str:
    """OpenSSL's verdict, e.g. "certificate verify failed: unable to get local issuer
    certificate", without the source file and line that `str(error)` adds."""
    reason = getattr(error, "reason", None) or "certificate verify failed"
    detail = getattr(error, "verify_message", None)
    return f"{reason.replace('_', ' ').lower()}: {detail}" if detail else str(error)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if str(error) else text
