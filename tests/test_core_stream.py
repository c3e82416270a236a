"""The vendor-free core (Pool, transport, ChunkStream) against a real loopback server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

import llmstreams
from llmstreams import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    Pool,
    RetryPolicy,
    StreamInterruptedError,
    StreamTimeoutError,
    Timeout,
)
from llmstreams.streams import ChunkStream
from llmstreams.transport import HttpRequest, parse_retry_after
from tests.support import LinesExchange

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAST_RETRY = RetryPolicy(max_retries=2, backoff_base=0.001, backoff_max=0.001)


def line(text: str, end: bool = False) -> bytes:
    return json.dumps({"text": text, "end": end}).encode() + b"\n"


class LineServer:
    """A loopback server whose handler each test sets; counts requests and aborted streams."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.requests = 0
        self.aborted = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        assert self.handler is not None
        try:
            return await self.handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.set()
            raise


@pytest.fixture
async def server() -> AsyncIterator[LineServer]:
    state = LineServer()
    app = web.Application()
    app.router.add_post("/gen", state.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/gen"
    yield state
    await runner.cleanup()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    async with Pool(retry=FAST_RETRY) as shared:
        yield shared


def open_stream(pool: Pool, url: str, timeout: Timeout | None = None, retry: RetryPolicy = FAST_RETRY) -> tuple[ChunkStream, LinesExchange]:
    exchange = LinesExchange(url)
    stream = ChunkStream(pool, exchange, timeout=timeout or Timeout(), retry=retry)
    return stream, exchange


async def streamed(request: web.Request, *parts: bytes, then: Callable[[], Awaitable[None]] | None = None) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    if then is not None:
        await then()
    return response


async def forever() -> None:
    await asyncio.Event().wait()


async def test_stream_yields_chunks_and_collects_the_whole(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, line("Hel"), line("lo, "), line("world", end=True))
    stream, _ = open_stream(pool, server.url)
    async with stream:
        texts = [chunk.text async for chunk in stream]
    assert texts == ["Hel", "lo, ", "world"]
    assert stream.completion.text == "Hello, world"
    assert stream.completion.is_complete and stream.completion.chunk_count == 3
    assert pool.stats() == llmstreams.PoolStats(open_streams=0, connections_in_use=0)


async def test_collect_after_partial_iteration_keeps_earlier_chunks(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, line("a"), line("b"), line("c", end=True))
    stream, _ = open_stream(pool, server.url)
    first = await stream.__anext__()
    completion = await stream.collect()
    assert first.text == "a"
    assert completion.text == "abc"


async def test_events_split_across_reads_are_reassembled(server: LineServer, pool: Pool) -> None:
    body = line("one") + line("two", end=True)
    server.handler = lambda request: streamed(request, *[body[i : i + 3] for i in range(0, len(body), 3)])
    stream, _ = open_stream(pool, server.url)
    assert (await stream.collect()).text == "onetwo"


async def test_leaving_early_closes_the_connection_at_once(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, line("first"), then=forever)
    stream, _ = open_stream(pool, server.url)
    async with stream:
        async for chunk in stream:
            assert chunk.text == "first"
            break
    assert pool.stats().connections_in_use == 0
    assert pool.stats().open_streams == 0
    await asyncio.wait_for(server.aborted.wait(), 5)


async def test_cancelling_the_reading_task_closes_the_connection(server: LineServer, pool: Pool) -> None:
    first_chunk = asyncio.Event()
    server.handler = lambda request: streamed(request, line("first"), then=forever)

    async def consume() -> None:
        stream, _ = open_stream(pool, server.url)
        async for _ in stream:
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats() == llmstreams.PoolStats(open_streams=0, connections_in_use=0)
    await asyncio.wait_for(server.aborted.wait(), 5)


async def test_broken_stream_raises_with_exactly_the_text_received(server: LineServer, pool: Pool) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = await streamed(request, line("kept "), line("too"))
        assert request.transport is not None
        request.transport.abort()
        return response

    server.handler = cut
    stream, exchange = open_stream(pool, server.url)
    with pytest.raises(StreamInterruptedError) as caught:
        await stream.collect()
    assert caught.value.partial is not None
    assert caught.value.partial.text == "kept too"
    assert not caught.value.partial.is_complete
    assert server.requests == 1 and exchange.requests_built == 1
    assert "8 characters in 2 chunks" in str(caught.value)


async def test_stream_ending_without_end_marker_is_interrupted(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, line("only"))
    stream, _ = open_stream(pool, server.url)
    with pytest.raises(StreamInterruptedError) as caught:
        await stream.collect()
    assert caught.value.partial is not None and caught.value.partial.text == "only"
    assert server.requests == 1


async def test_idle_timeout_mid_stream_is_not_retried(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, line("before stall"), then=forever)
    stream, _ = open_stream(pool, server.url, Timeout(idle=0.2))
    with pytest.raises(StreamTimeoutError) as caught:
        await stream.collect()
    error = caught.value
    assert isinstance(error, StreamInterruptedError) and isinstance(error, APITimeoutError)
    assert error.phase == "idle"
    assert error.partial is not None and error.partial.text == "before stall"
    assert server.requests == 1
    assert pool.stats().connections_in_use == 0


async def test_stall_after_headers_before_first_byte_is_not_resent(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, then=forever)
    stream, _ = open_stream(pool, server.url, Timeout(first_chunk=0.2))
    with pytest.raises(APITimeoutError) as caught:
        await stream.collect()
    assert caught.value.phase == "first_chunk"
    assert not isinstance(caught.value, StreamInterruptedError)
    assert caught.value.partial is not None and caught.value.partial.text == ""
    assert server.requests == 1


async def test_no_response_headers_in_time_is_retried_then_raised(server: LineServer, pool: Pool) -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        await forever()
        raise AssertionError("unreachable")

    server.handler = silent
    stream, exchange = open_stream(pool, server.url, Timeout(first_chunk=0.2))
    with pytest.raises(APITimeoutError) as caught:
        await stream.collect()
    assert caught.value.phase == "first_chunk"
    assert exchange.requests_built == FAST_RETRY.max_retries + 1


async def test_total_timeout_bounds_a_trickling_stream(server: LineServer, pool: Pool) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            await response.write(line("x"))
            await asyncio.sleep(0.05)

    server.handler = handler
    stream, _ = open_stream(pool, server.url, Timeout(idle=5, total=0.3))
    with pytest.raises(StreamTimeoutError) as caught:
        await stream.collect()
    assert caught.value.phase == "total"
    assert caught.value.partial is not None and caught.value.partial.text.startswith("x")


async def test_connection_refused_is_retried_as_configured() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Pool() as pool:
        stream, exchange = open_stream(pool, f"http://127.0.0.1:{port}/gen")
        with pytest.raises(APIConnectionError) as caught:
            await stream.collect()
    assert not isinstance(caught.value, APITimeoutError)
    assert exchange.requests_built == FAST_RETRY.max_retries + 1
    assert "could not reach" in str(caught.value)


async def test_retryable_error_is_retried_until_success(server: LineServer, pool: Pool) -> None:
    async def flaky(request: web.Request) -> web.StreamResponse:
        if server.requests <= 2:
            return web.Response(
                status=503, body=json.dumps({"error": 503, "retryable": True}) + "\n",
                headers={"Retry-After": "0"},
            )
        return await streamed(request, line("ok", end=True))

    server.handler = flaky
    stream, _ = open_stream(pool, server.url)
    assert (await stream.collect()).text == "ok"
    assert server.requests == 3
    assert stream.attempts == 3


async def test_retries_stop_at_the_limit(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, b'{"error": 18, "retryable": true}\n')
    stream, _ = open_stream(pool, server.url, retry=RetryPolicy(max_retries=1, backoff_base=0.001))
    with pytest.raises(APIError) as caught:
        await stream.collect()
    assert caught.value.code == 18
    assert server.requests == 2


async def test_max_retries_zero_sends_once(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, b'{"error": 18, "retryable": true}\n')
    stream, _ = open_stream(pool, server.url, retry=RetryPolicy(max_retries=0))
    with pytest.raises(APIError):
        await stream.collect()
    assert server.requests == 1


async def test_non_retryable_error_is_raised_at_once(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, b'{"error": 336003, "retryable": false}\n')
    stream, _ = open_stream(pool, server.url)
    with pytest.raises(APIError) as caught:
        await stream.collect()
    assert caught.value.code == 336003
    assert server.requests == 1


async def test_recover_resends_once_without_spending_a_retry(server: LineServer, pool: Pool) -> None:
    async def expired_once(request: web.Request) -> web.StreamResponse:
        if server.requests == 1:
            return await streamed(request, b'{"error": 111}\n')
        return await streamed(request, line("fresh", end=True))

    server.handler = expired_once
    stream, exchange = open_stream(pool, server.url, retry=RetryPolicy(max_retries=0))
    exchange.recover_code = 111
    assert (await stream.collect()).text == "fresh"
    assert exchange.recoveries == 1 and server.requests == 2


async def test_recover_is_asked_only_once(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, b'{"error": 111}\n')
    stream, exchange = open_stream(pool, server.url, retry=RetryPolicy(max_retries=0))
    exchange.recover_code = 111
    with pytest.raises(APIError):
        await stream.collect()
    assert exchange.recoveries == 1 and server.requests == 2


async def test_error_after_first_chunk_is_never_resent(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, line("partial"), b'{"error": 2, "retryable": true}\n')
    stream, _ = open_stream(pool, server.url)
    with pytest.raises(APIError) as caught:
        await stream.collect()
    assert caught.value.partial is not None and caught.value.partial.text == "partial"
    assert server.requests == 1


async def test_logs_and_reprs_hold_no_secrets(server: LineServer, pool: Pool, caplog: pytest.LogCaptureFixture) -> None:
    server.handler = lambda request: streamed(request, b'{"error": 18, "retryable": true}\n')
    caplog.set_level(logging.DEBUG, logger="llmstreams")
    stream, exchange = open_stream(pool, server.url)
    with pytest.raises(APIError) as caught:
        await stream.collect()
    request = await exchange.build_request()
    texts = [repr(request), repr(caught.value), str(caught.value), repr(stream), repr(pool), caplog.text]
    assert "retry 1 of 2" in caplog.text
    for text in texts:
        assert "secret-token-value" not in text and "secret-header-value" not in text


def test_http_request_repr_names_fields_but_hides_values() -> None:
    request = HttpRequest(
        method="POST", url="http://h/x", body=b"{}",
        headers={"Authorization": "bce-auth-v1/ak/sig"}, params={"access_token": "24.tok"},
    )
    assert repr(request) == "<HttpRequest POST http://h/x params=[access_token] headers=[Authorization]>"


def test_pool_connector_is_sized_for_thousands_of_streams() -> None:
    async def check() -> int:
        async with Pool() as pool:
            connector = pool.session().connector
            assert connector is not None
            return connector.limit

    assert asyncio.run(check()) >= 5000


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0.0), ("2.5", 2.5), ("-3", 0.0), ("soon", None), (None, None)]
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_backoff_is_jittered_within_its_ceiling_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=3.0, max_retry_after=10.0)
    delays = [policy.delay(n) for n in range(6) for _ in range(50)]
    assert all(0.0 <= d <= 3.0 for d in delays)
    assert len(set(delays)) > 1
    assert policy.delay(0, retry_after=4.0) == 4.0
    assert policy.delay(0, retry_after=99.0) == 10.0


@pytest.mark.parametrize("field", ["connect", "first_chunk", "idle", "total"])
def test_timeout_rejects_non_positive_values(field: str) -> None:
    with pytest.raises(llmstreams.InvalidParameterError, match=f"Timeout.{field}"):
        Timeout(**{field: 0})


def test_invalid_pool_and_retry_settings_name_the_field() -> None:
    with pytest.raises(llmstreams.InvalidParameterError, match="max_connections"):
        Pool(max_connections=0)
    with pytest.raises(llmstreams.InvalidParameterError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="backoff_base"):
        RetryPolicy(backoff_base=-1)


async def test_error_after_good_chunks_in_one_read_surfaces_without_more_data(
    server: LineServer, pool: Pool
) -> None:
    server.handler = lambda request: streamed(
        request, line("a") + line("b") + b'{"error": 336000}\n', then=forever
    )
    stream, _ = open_stream(pool, server.url, Timeout(idle=60))
    received = []
    with pytest.raises(APIError) as caught:
        async for chunk in stream:
            received.append(chunk.text)
    assert received == ["a", "b"]
    assert caught.value.code == 336000
    assert caught.value.partial is not None and caught.value.partial.text == "ab"
    assert server.requests == 1


async def test_pool_rate_limit_counts_every_attempt_and_the_tokens(server: LineServer) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if server.requests == 1:
            return web.Response(status=503, body=b'{"error": 503, "retryable": true}\n')
        return await streamed(request, line("ok", end=True))

    server.handler = answer
    async with Pool(rate_limit=llmstreams.RateLimit(requests_per_minute=1000), retry=FAST_RETRY) as pool:
        for _ in range(3):
            stream, _ = open_stream(pool, server.url)
            await stream.collect()
        assert pool.rate_limiter is not None
        assert pool.rate_limiter.requests_granted == server.requests == 4


async def test_attempts_are_counted_when_every_attempt_failed(server: LineServer, pool: Pool) -> None:
    server.handler = lambda request: streamed(request, b'{"error": 18, "retryable": true}\n')
    stream, _ = open_stream(pool, server.url)
    with pytest.raises(APIError):
        await stream.collect()
    assert stream.attempts == server.requests == FAST_RETRY.max_retries + 1
