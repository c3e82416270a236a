"""What a user expects of a trusted HTTP client: proxies honoured, redirects never followed
silently, passwords never shown, errors that name the request and speak of the stream, and
any head a server sends handled.

Every server is on 127.0.0.1: the mock, scripted servers, and a small CONNECT-less HTTP
forward proxy of this module's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from llmstreams import (
    InvalidParameterError,
    LLMStreamsError,
    Pool,
    ProtocolError,
    QianfanClient,
    RateLimit,
    StreamInterruptedError,
    StreamTimeoutError,
    Timeout,
)
from llmstreams.mock import MockServer, spawn_mock_workers
from llmstreams.transport import parse_retry_after
from tests.reliability.helpers import (
    ALL_AUTH,
    DASHSCOPE,
    MOCK_CREDENTIALS,
    QIANFAN,
    QIANFAN_SIGNED,
    VENDORS,
    Client,
    Vendor,
    closed_port,
    knobs,
    tcp_server,
    vendor_params,
)
from tests.support import serving


class ForwardProxy:
    """A plain HTTP forward proxy (no CONNECT): takes `POST http://host:port/path HTTP/1.1`,
    sends it on in origin form, and pipes the answer back. `targets` records each request's
    absolute URL."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            self.targets.append(target)
            authority, _, path = target.removeprefix("http://").partition("/")
            host, _, port = authority.partition(":")
            headers = [line for line in header_lines if line and not line.lower().startswith(
                ("connection:", "proxy-", "keep-alive:"))]
            length = next(
                (int(line.split(":", 1)[1]) for line in headers if line.lower().startswith("content-length:")), 0
            )
            body = await reader.readexactly(length)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port or 80))
            upstream_writer.write(
                f"{method} /{path} {version}\r\n".encode("latin-1")
                + "".join(f"{line}\r\n" for line in headers).encode("latin-1")
                + b"Connection: close\r\n\r\n" + body
            )
            while data := await upstream_reader.read(65536):
                writer.write(data)
                await writer.drain()
            upstream_writer.close()
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ForwardProxy]:
        async with tcp_server(self._serve) as self.url:
            yield self


@vendor_params(ALL_AUTH)
async def test_an_explicit_proxy_carries_every_request(mock: MockServer, vendor: Vendor) -> None:
    async with ForwardProxy().running() as proxy, Pool(proxy=proxy.url) as pool:
        completion = await vendor.stream(vendor.client(mock.url, pool=pool)).collect()
    assert completion.is_complete and completion.text
    expected = 2 if vendor.auth == "token" else 1  # the token, then the generation
    assert len(proxy.targets) == expected
    assert all(target.startswith(mock.url + "/") for target in proxy.targets)


@vendor_params()
async def test_proxy_environment_variables_are_honoured(
    mock: MockServer, vendor: Vendor, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ForwardProxy().running() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with Pool() as pool:
            assert (await vendor.stream(vendor.client(mock.url, pool=pool)).collect()).is_complete
        through_proxy = len(proxy.targets)
        async with Pool(trust_env=False) as pool:
            assert (await vendor.stream(vendor.client(mock.url, pool=pool)).collect()).is_complete
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with Pool() as pool:
            assert (await vendor.stream(vendor.client(mock.url, pool=pool)).collect()).is_complete
    assert through_proxy == (2 if vendor.is_qianfan else 1)
    assert len(proxy.targets) == through_proxy


async def test_a_proxy_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="'proxy'") as caught:
        Pool(proxy="http://user:hunter2@:0")
    assert "hunter2" not in str(caught.value)


class Redirector:
    """Answers every request with `status` and a Location on `target` (same path)."""

    def __init__(self, status: int, target: str) -> None:
        self.status = status
        self.target = target
        self.requests = 0
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        location = (self.target or self.url) + request.path_qs
        return web.Response(status=self.status, headers={"Location": location})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Redirector]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        async with serving(app) as self.url:
            yield self


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@vendor_params(ALL_AUTH)
async def test_a_redirect_is_refused_naming_where_it_pointed(
    mock: MockServer, vendor: Vendor, status: int
) -> None:
    async with Redirector(status, mock.url).running() as redirector:
        client = vendor.client(redirector.url)
        with pytest.raises(ProtocolError, match=f"HTTP {status}, a redirect to '127.0.0.1:{mock.port}'"):
            await vendor.stream(client).collect()
        await client.close()
    # One request (the token fetch, for api_key/secret_key), none of it re-sent to the target.
    assert redirector.requests == 1
    assert mock.stats.connections_opened == 0


@vendor_params(VENDORS)
async def test_a_redirect_loop_says_why(vendor: Vendor) -> None:
    async with Redirector(307, "").running() as redirector:
        client = vendor.client(redirector.url)
        with pytest.raises(ProtocolError) as caught:
            await vendor.answer(client)
        await client.close()
    assert "a redirect to" in str(caught.value)
    assert redirector.requests == 1


@pytest.mark.parametrize("auth", ["token", "static", "bearer"])
async def test_a_password_in_base_url_is_never_shown(auth: str) -> None:
    base_url = f"http://someone:hunter2@127.0.0.1:{closed_port()}"
    vendor = QIANFAN if auth != "bearer" else next(v for v in VENDORS if not v.is_qianfan)
    client = (
        QianfanClient(access_token="token-value", base_url=base_url, max_retries=0)
        if auth == "static" else vendor.client(base_url, max_retries=0)
    )
    with pytest.raises(LLMStreamsError) as caught:
        await vendor.answer(client)
    await client.close()
    shown = [repr(client), str(caught.value), repr(caught.value)]
    assert "someone:***@" in repr(client)
    assert not any("hunter2" in text for text in shown)


@vendor_params()
async def test_the_total_timeout_mid_stream_does_not_say_nothing_arrived(
    mock: MockServer, vendor: Vendor
) -> None:
    client = vendor.client(mock.url, timeout=Timeout(total=0.5))
    with pytest.raises(StreamTimeoutError) as caught:
        await vendor.stream(
            client, knobs(chunks_per_second=50, answer_chars=100_000, chunk_chars=1)
        ).collect()
    await client.close()
    error = caught.value
    assert error.phase == "total"
    assert error.partial is not None and error.partial.chunk_count > 0
    assert "nothing arrived" not in str(error)
    assert "total timeout" in str(error)


@vendor_params()
async def test_a_broken_stream_names_its_request_and_speaks_of_the_stream(
    mock: MockServer, vendor: Vendor
) -> None:
    client = vendor.client(mock.url)
    with pytest.raises(StreamInterruptedError) as caught:
        await vendor.stream(client, knobs(disconnect_after=2)).collect()
    await client.close()
    error = caught.value
    assert error.partial is not None and error.partial.request_id
    assert error.request_id == error.partial.request_id
    assert f"request id {error.request_id}" in str(error)
    for internal in ("TransferEncodingError", "ClientPayloadError", "ServerDisconnectedError", "aiohttp"):
        assert internal not in str(error)


@asynccontextmanager
async def raw_http_server(head: bytes, body: bytes) -> AsyncIterator[str]:
    """Answers every connection with `head` (status line and headers, as given) and `body`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    async with tcp_server(answer) as url:
        yield url


@pytest.mark.parametrize("content_type", [";0*", "text/event-stream; a*0*=x'", "\x7f/\x7f; ;=\"", ""])
@vendor_params()
async def test_any_content_type_gives_an_llmstreams_error_or_works(
    vendor: Vendor, content_type: str
) -> None:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        "Retry-After: Mon, 01 Jan 99999 0\r\nConnection: close\r\n"
    ).encode("latin-1")
    async with raw_http_server(head, vendor.whole_body("hello")) as url, Pool() as pool:
        client = vendor.client(url, pool=pool, retry=None, max_retries=0)
        try:
            completion = await vendor.answer(client)
        except LLMStreamsError:
            pass
        else:
            assert completion.text == "hello"
        assert pool.stats().connections_in_use == 0


# Not the token-auth client: its token request would reach this server too.
@vendor_params([QIANFAN_SIGNED, DASHSCOPE])
async def test_a_page_sent_without_a_content_type_is_refused_saying_so(vendor: Vendor) -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
    async with raw_http_server(head, b"<html>" + b"x" * 300 + b"</html>") as url, Pool() as pool:
        client = vendor.client(url, pool=pool, retry=None, max_retries=0)
        with pytest.raises(ProtocolError, match="no content type"):
            await vendor.stream(client).collect()


# Not the token-auth client: its token request would reach this server too.
@vendor_params([QIANFAN_SIGNED, DASHSCOPE])
async def test_the_media_type_of_a_stream_is_read_whatever_its_case_and_parameters(
    vendor: Vendor,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream ; Charset=UTF-8\r\nConnection: close\r\n"
    body = b"".join(vendor.events(["Hel", "lo"]))
    async with raw_http_server(head, body) as url, Pool() as pool:
        client = vendor.client(url, pool=pool, retry=None, max_retries=0)
        completion = await vendor.stream(client).collect()
    assert completion.text == "Hello"
    assert completion.is_complete


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(
        ["Mon,", "01", "Jan", "0001", "9999", "99999", "00:00:00", "GMT", "+2359", "-9999", "1e999",
         "nan", "-1", "24:60:61", ",", "Feb", "31"]
    ), max_size=7).map(" ".join),
))
def test_retry_after_is_total(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or 0 <= seconds < float("inf")


def test_a_pool_used_from_a_second_event_loop_rebinds() -> None:
    # Two asyncio.run calls (a script, a notebook cell run twice) with one pool and client:
    # a token being fetched, a contended rate-limit lock and pooled connections all belong
    # to the first loop, which is closed when the second starts.
    with spawn_mock_workers(1, credentials=MOCK_CREDENTIALS) as url:
        for vendor in ALL_AUTH:
            pool = Pool(rate_limit=RateLimit(requests_per_second=1000))
            client = vendor.client(url, pool=pool)

            async def use(client: Client = client, vendor: Vendor = vendor) -> list[str]:
                completions = await asyncio.gather(*(vendor.answer(client) for _ in range(5)))
                return [completion.text for completion in completions]

            async def close(pool: Pool = pool) -> None:
                await pool.close()

            first = asyncio.run(use())
            second = asyncio.run(use())
            asyncio.run(close())
            assert first == second and all(first), vendor.name
