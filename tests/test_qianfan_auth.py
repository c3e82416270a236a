"""Qianfan authentication against the mock: token cache, single flight, renewal, AK/SK, secrets."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmstreams import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    LLMStreamsError,
    Pool,
    ProtocolError,
    RetryPolicy,
    ServerError,
    Timeout,
)
from llmstreams.mock import MockCredentials, MockServer
from llmstreams.qianfan import QianfanClient
from llmstreams.qianfan.auth import AccessToken, TokenCache, parse_token_response
from llmstreams.qianfan.signing import bce_authorization
from tests.support import FAST_RETRY

API_KEY = "app-key-3f9a"
SECRET_KEY = "app-secret-77c1"
ACCESS_KEY = "iam-ak-51d0"
SECRET_ACCESS_KEY = "iam-sk-e02b"
SECRETS = (API_KEY, SECRET_KEY, ACCESS_KEY, SECRET_ACCESS_KEY)
CREDENTIALS = MockCredentials(
    api_key=API_KEY, secret_key=SECRET_KEY, access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY
)
USER = [{"role": "user", "content": "hello"}]
MODEL = "ERNIE-Speed-8K"


@pytest.fixture
def mock_credentials() -> MockCredentials:
    return CREDENTIALS


def token_client(server: MockServer, pool: Pool | None = None, **overrides: str) -> QianfanClient:
    credentials: dict[str, Any] = {"api_key": API_KEY, "secret_key": SECRET_KEY, **overrides}
    return QianfanClient(**credentials, base_url=server.url, pool=pool, retry=FAST_RETRY)


async def fetch_raw_token(server: MockServer) -> str:
    async with aiohttp.ClientSession() as session, session.post(
        f"{server.url}/oauth/2.0/token",
        params={"grant_type": "client_credentials", "client_id": API_KEY, "client_secret": SECRET_KEY},
    ) as response:
        token: str = (await response.json())["access_token"]
        return token


# --- access tokens ------------------------------------------------------------------------------


async def test_clients_of_one_pool_share_one_token(server: MockServer, pool: Pool) -> None:
    first, second = token_client(server, pool), token_client(server, pool)
    await first.chat(USER, model=MODEL)
    await second.stream_chat(USER, model=MODEL).collect()
    await second.complete("x", model="SQLCoder-7B")
    assert server.stats.requests["token"] == 1
    async with token_client(server) as own_pool:
        await own_pool.chat(USER, model=MODEL)
    assert server.stats.requests["token"] == 2


async def test_500_concurrent_requests_fetch_one_token(server: MockServer, pool: Pool) -> None:
    client = token_client(server, pool)
    completions = await asyncio.gather(*(client.chat(USER, model=MODEL) for _ in range(500)))
    assert all(completion.is_complete for completion in completions)
    assert server.stats.requests["token"] == 1
    assert server.stats.requests["qianfan.chat"] == 500


async def test_expired_tokens_are_renewed_once_for_200_concurrent_requests(server: MockServer, pool: Pool) -> None:
    client = token_client(server, pool)
    await client.chat(USER, model=MODEL)
    server.expire_tokens()
    streams = [client.stream_chat(USER, model=MODEL) for _ in range(200)]
    completions = await asyncio.gather(*(stream.collect() for stream in streams))
    assert all(completion.is_complete for completion in completions)
    assert server.stats.requests["token"] == 2
    # Each request was refused once (code 111) and sent again once with the new token.
    assert server.stats.requests["qianfan.chat"] == 1 + 2 * 200
    # Two requests each (refused once, then resent with the new token); the repair is no retry.
    assert all(stream.attempts == 2 for stream in streams)


async def test_tokens_expired_while_streams_run(server: MockServer, pool: Pool) -> None:
    client = token_client(server, pool)
    paced = {"X-Mock-Behaviour": "stall_after=1"}
    first_wave = [client.stream_chat(USER, model=MODEL, extra_headers=paced) for _ in range(20)]
    firsts = await asyncio.gather(*(stream.__anext__() for stream in first_wave))
    assert all(chunk.sentence_id == 0 for chunk in firsts)
    server.expire_tokens()
    second_wave = await asyncio.gather(*(client.chat(USER, model=MODEL) for _ in range(200)))
    assert all(completion.is_complete for completion in second_wave)
    for stream in first_wave:
        await stream.aclose()
    assert server.stats.requests["token"] == 2


async def test_an_invalid_token_is_renewed_too(server: MockServer, pool: Pool) -> None:
    client = token_client(server, pool)
    # 110 (token invalid) is injected once: the token is dropped, fetched anew, the request resent.
    completion = await client.chat(USER, model=MODEL, extra_headers={"X-Mock-Behaviour": "fail_code=110"})
    assert completion.is_complete
    assert server.stats.requests["token"] == 2
    assert server.stats.requests["qianfan.chat"] == 2


async def test_a_token_refused_again_after_renewal_is_an_error(server: MockServer, pool: Pool) -> None:
    client = token_client(server, pool)
    with pytest.raises(AuthenticationError, match="freshly fetched access token was refused too") as caught:
        await client.chat(USER, model=MODEL, extra_headers={"X-Mock-Behaviour": "fail_code=111; fail_times=9"})
    assert caught.value.code == 111
    assert server.stats.requests["token"] == 2
    assert server.stats.requests["qianfan.chat"] == 2


async def test_tokens_are_renewed_before_they_expire() -> None:
    # A token living less than the one-minute margin is used while valid, not fetched anew for
    # every request: it is renewed in the last tenth of its life.
    async with MockServer(credentials=CREDENTIALS, token_ttl=30) as server, token_client(server) as client:
        await client.chat(USER, model=MODEL)
        await client.chat(USER, model=MODEL)
        assert server.stats.requests["token"] == 1
        assert server.stats.requests["qianfan.chat"] == 2
    # An hour-long token is renewed in its last 6 minutes only.
    async with MockServer(credentials=CREDENTIALS, token_ttl=3600) as server, token_client(server) as client:
        await client.chat(USER, model=MODEL)
        await client.chat(USER, model=MODEL)
        assert server.stats.requests["token"] == 1


async def test_a_given_access_token_is_used_as_is_and_never_renewed(server: MockServer) -> None:
    token = await fetch_raw_token(server)
    async with QianfanClient(access_token=token, base_url=server.url) as client:
        assert (await client.chat(USER, model=MODEL)).is_complete
        server.expire_tokens()
        with pytest.raises(AuthenticationError, match="pass api_key and secret_key instead") as caught:
            await client.chat(USER, model=MODEL)
        assert caught.value.code == 111
        assert token not in str(caught.value)
    assert server.stats.requests["token"] == 1  # only the test's own
    assert server.stats.requests["qianfan.chat"] == 2


async def test_an_unknown_api_key_is_named(server: MockServer, pool: Pool) -> None:
    client = token_client(server, pool, api_key="not-the-key")
    with pytest.raises(AuthenticationError, match="API key not recognised") as caught:
        await client.chat(USER, model=MODEL)
    assert caught.value.http_status == 401
    assert caught.value.code == "invalid_client"
    assert "not-the-key" not in str(caught.value)
    assert server.stats.requests["qianfan.chat"] == 0


async def test_a_wrong_secret_key_is_named_and_fetched_once_for_many(server: MockServer, pool: Pool) -> None:
    client = token_client(server, pool, secret_key="not-the-secret")
    results = await asyncio.gather(
        *(client.chat(USER, model=MODEL) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(result, AuthenticationError) for result in results)
    error = results[0]
    assert isinstance(error, AuthenticationError)
    assert "secret key rejected" in str(error)
    assert "not-the-secret" not in str(error) and "not-the-secret" not in repr(error)
    assert server.stats.requests["token"] == 1
    assert server.stats.requests["qianfan.chat"] == 0


async def test_credentials_from_the_environment_reach_the_server(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QIANFAN_API_KEY", API_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("QIANFAN_BASE_URL", server.url)
    async with QianfanClient() as client:
        assert (await client.chat(USER, model=MODEL)).is_complete
    assert server.stats.requests["token"] == 1


# --- AK/SK --------------------------------------------------------------------------------------


async def test_signed_requests_stream_and_not(server: MockServer) -> None:
    async with QianfanClient(access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY, base_url=server.url) as client:
        chunks = [chunk async for chunk in client.stream_chat(USER, model=MODEL)]
        assert chunks[-1].is_end
        assert (await client.complete("x", model="CodeLlama-7b-Instruct")).is_complete
    assert server.stats.requests["token"] == 0
    assert server.stats.requests["qianfan.chat"] == 1


async def test_each_attempt_is_signed_afresh(server: MockServer) -> None:
    async with QianfanClient(
        access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY, base_url=server.url, retry=FAST_RETRY
    ) as client:
        stream = client.stream_chat(USER, model=MODEL, extra_headers={"X-Mock-Behaviour": "fail_code=18"})
        assert (await stream.collect()).is_complete
        assert stream.attempts == 2


async def test_base_url_with_a_path_prefix_is_signed_as_sent(server: MockServer) -> None:
    # Behind a proxy under a path, the path signed is the one in the URL.
    async with QianfanClient(
        access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY, base_url=f"{server.url}/proxy"
    ) as client:
        stream = client.stream_chat(USER, model=MODEL)
        request = await stream._exchange.build_request()
        await stream.aclose()
    path = "/proxy/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ernie_speed"
    assert request.url == f"{server.url}{path}"
    headers = request.headers
    assert headers["Host"] == server.url.removeprefix("http://")
    assert headers["Authorization"] == bce_authorization(
        access_key=ACCESS_KEY,
        secret_access_key=SECRET_ACCESS_KEY,
        method="POST",
        path=path,
        query={},
        headers=headers,
        timestamp=headers["x-bce-date"],
        expiration_seconds=1800,
        signed_headers=("host", "content-type", "x-bce-date"),
    )


@pytest.mark.parametrize(
    ("access_key", "secret_access_key"),
    [(ACCESS_KEY, "wrong-secret-access-key"), ("wrong-access-key", SECRET_ACCESS_KEY)],
)
async def test_wrong_access_key_or_secret_is_rejected(
    server: MockServer, access_key: str, secret_access_key: str
) -> None:
    async with QianfanClient(
        access_key=access_key, secret_access_key=secret_access_key, base_url=server.url, retry=FAST_RETRY
    ) as client:
        with pytest.raises(AuthenticationError, match="check access_key and secret_access_key") as caught:
            await client.stream_chat(USER, model=MODEL).collect()
    assert caught.value.code == 14
    assert "wrong" not in str(caught.value)
    assert server.stats.requests["qianfan.chat"] == 1  # not retried


# --- the token endpoint failing -----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_unreachable_token_endpoint_is_a_connection_error() -> None:
    async with QianfanClient(
        api_key=API_KEY, secret_key=SECRET_KEY, base_url=f"http://127.0.0.1:{closed_port()}"
    ) as client:
        with pytest.raises(APIConnectionError, match="for an access token") as caught:
            await client.chat(USER, model=MODEL)
    assert not isinstance(caught.value, APIError)
    assert SECRET_KEY not in str(caught.value)


class TokenServer:
    """A token endpoint that answers 503, or never when `hang` is set."""

    def __init__(self) -> None:
        self.url = ""
        self.hits = 0
        self.hang = False
        self.release = asyncio.Event()

    async def token(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.hang:
            await self.release.wait()
        return web.Response(status=503, text="<html>busy</html>", content_type="text/html")


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    state = TokenServer()
    app = web.Application()
    app.router.add_post("/oauth/2.0/token", state.token)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    state.release.set()
    await runner.cleanup()


async def test_token_endpoint_overload_is_retried_then_raised(token_server: TokenServer) -> None:
    async with QianfanClient(
        api_key=API_KEY, secret_key=SECRET_KEY, base_url=token_server.url, retry=FAST_RETRY
    ) as client:
        with pytest.raises(ServerError, match="token endpoint answered HTTP 503") as caught:
            await client.chat(USER, model=MODEL)
    assert caught.value.retryable is True
    assert token_server.hits == 3


@pytest.mark.parametrize("backoff", [0.001, 0.05])
async def test_200_callers_share_a_failing_token_fetch_and_its_retries(
    token_server: TokenServer, backoff: float
) -> None:
    retry = RetryPolicy(max_retries=2, backoff_base=backoff, backoff_max=backoff)
    async with QianfanClient(
        api_key=API_KEY, secret_key=SECRET_KEY, base_url=token_server.url, retry=retry
    ) as client:
        results = await asyncio.gather(
            *(client.chat(USER, model=MODEL) for _ in range(100)),
            *(client.stream_chat(USER, model=MODEL).collect() for _ in range(100)),
            return_exceptions=True,
        )
    assert all(isinstance(result, ServerError) for result in results)
    # One fetch and its two retries, whatever the callers' backoffs (it was about 150).
    assert token_server.hits == 3


async def test_a_silent_token_endpoint_times_out(token_server: TokenServer) -> None:
    token_server.hang = True
    async with QianfanClient(
        api_key=API_KEY, secret_key=SECRET_KEY, base_url=token_server.url,
        timeout=Timeout(first_chunk=0.2), retry=FAST_RETRY,
    ) as client:
        with pytest.raises(APITimeoutError, match="no access token") as caught:
            await client.chat(USER, model=MODEL)
    assert caught.value.phase == "first_chunk"
    # Fetching a token sends nothing of the generation, so it is retried like a failed connect.
    assert token_server.hits == FAST_RETRY.max_retries + 1


# --- token responses and the cache, without a server --------------------------------------------


def test_token_response_parsing() -> None:
    token = parse_token_response(200, b'{"access_token":"24.abc","expires_in":2592000}', None, now=1000.0)
    assert token.value == "24.abc"
    assert token.expires_at == 1000.0 + 2592000
    assert token.refresh_at == token.expires_at - 86400  # a day before, for a 30-day token
    assert "24.abc" not in repr(token)
    forever = parse_token_response(200, b'{"access_token":"24.abc"}', None, now=0.0)
    assert forever.refresh_at == float("inf")
    with pytest.raises(ProtocolError, match="without a usable access_token") as caught:
        parse_token_response(500 - 100, b'{"access_token":"24.secret-token"}', None, now=0.0)
    assert "secret-token" not in str(caught.value)
    with pytest.raises(ProtocolError, match="<html>"):
        parse_token_response(200, b"<html>sign in</html>", None, now=0.0)
    with pytest.raises(ServerError) as overloaded:
        parse_token_response(502, b'{"error":"temporarily_unavailable"}', 2.0, now=0.0)
    assert overloaded.value.retry_after == 2.0 and overloaded.value.retryable
    with pytest.raises(APIError, match="invalid_scope") as other:
        parse_token_response(400, b'{"error":"invalid_scope","error_description":"no scope"}', None, now=0.0)
    assert type(other.value) is APIError


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [("30", 30.0), ("0.5", 0.5), ("NaN", None), ("Infinity", None), ("-5", None), ("1" * 400, None),
     ('"3600"', None), ("true", None)],
)
def test_a_token_is_used_while_it_is_valid(expires_in: str, lifetime: float | None) -> None:
    body = f'{{"access_token":"24.abc","expires_in":{expires_in}}}'.encode()
    token = parse_token_response(200, body, None, now=1000.0)
    if lifetime is None:
        # Unknown lifetime: used until the service refuses it (110/111), then renewed.
        assert token.refresh_at == token.expires_at == float("inf")
    else:
        assert token.expires_at == 1000.0 + lifetime
        assert token.refresh_at == token.expires_at - lifetime * 0.1


async def test_cache_drops_only_the_token_that_failed() -> None:
    cache = TokenCache()
    issued: list[AccessToken] = []

    async def fetch() -> AccessToken:
        issued.append(AccessToken(f"t{len(issued)}", float("inf"), float("inf")))
        return issued[-1]

    old = await cache.get(fetch)
    cache.invalidate(old)
    new = await cache.get(fetch)
    cache.invalidate(old)  # a late failure of the old token must not drop the new one
    assert await cache.get(fetch) is new
    assert len(issued) == 2


async def test_cache_keeps_a_still_valid_token_when_renewal_fails() -> None:
    cache = TokenCache()
    loop = asyncio.get_running_loop()
    stale = AccessToken("old", refresh_at=0.0, expires_at=loop.time() + 3600)

    async def first() -> AccessToken:
        return stale

    async def failing() -> AccessToken:
        raise APIConnectionError("down")

    assert await cache.get(first) is stale
    assert await cache.get(failing) is stale  # renewal due but failed: the old token still works
    cache.invalidate(stale)
    with pytest.raises(APIConnectionError):
        await cache.get(failing)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    cache = TokenCache()
    gate = asyncio.Event()
    calls = 0

    async def slow() -> AccessToken:
        nonlocal calls
        calls += 1
        await gate.wait()
        return AccessToken("t", float("inf"), float("inf"))

    impatient = asyncio.create_task(cache.get(slow))
    patient = asyncio.create_task(cache.get(slow))
    await asyncio.sleep(0)
    impatient.cancel()
    gate.set()
    assert (await patient).value == "t"
    assert calls == 1


# --- secrets stay secret ------------------------------------------------------------------------


async def test_no_secret_in_logs_reprs_or_errors(
    server: MockServer, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="llmstreams")
    given_token = await fetch_raw_token(server)
    errors: list[LLMStreamsError] = []

    token_auth = token_client(server, pool)
    await token_auth.stream_chat(USER, model=MODEL, extra_headers={"X-Mock-Behaviour": "fail_code=18"}).collect()
    server.expire_tokens()
    await token_auth.chat(USER, model=MODEL)
    for overrides in ({"api_key": "bad-key-0001"}, {"secret_key": "bad-secret-0002"}):
        try:
            await token_client(server, pool, **overrides).chat(USER, model=MODEL)
        except LLMStreamsError as error:
            errors.append(error)
    signed = QianfanClient(access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY, base_url=server.url, pool=pool)
    await signed.chat(USER, model=MODEL)
    badly_signed = QianfanClient(access_key=ACCESS_KEY, secret_access_key="bad-sk-0003", base_url=server.url, pool=pool)
    static = QianfanClient(access_token=given_token, base_url=server.url, pool=pool)
    for client in (badly_signed, static):
        try:
            await client.chat(USER, model=MODEL)
        except LLMStreamsError as error:
            errors.append(error)

    assert len(errors) == 4
    secrets = (*SECRETS, given_token, "bad-key-0001", "bad-secret-0002", "bad-sk-0003")
    logged = [record.getMessage() for record in caplog.records]
    assert any("retry 1 of 2" in message for message in logged)  # the logs did cover the retry
    assert any("sending again after repairing" in message for message in logged)
    texts = [
        *logged,
        *(repr(error) for error in errors),
        *(str(error) for error in errors),
        *(repr(client) for client in (token_auth, signed, badly_signed, static)),
    ]
    for text in texts:
        assert "access_token=" not in text and "client_secret" not in text
        for secret in secrets:
            assert secret not in text, text
