"""Qianfan API v2 with an IAM access key pair: bearer tokens from the mock's `BCE-BEARER`
endpoint, shared through the pool (one fetch for a herd), renewed near expiry and after the
service refuses them, and secrets kept out of every message."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

import llmstreams
from llmstreams import (
    AuthenticationError,
    InvalidParameterError,
    OpenAICompatibleClient,
    Pool,
    Timeout,
)
from llmstreams.mock import MockCredentials, MockServer
from llmstreams.mock.qianfan_auth import TokenState, TokenStore
from llmstreams.providers import PROVIDERS, credentials_from_environment
from llmstreams.qianfan.auth import AccessToken
from llmstreams.qianfan.iam import BearerToken, parse_bearer_response
from llmstreams.qianfan.signing import bce_authorization, bce_timestamp
from tests.reliability.helpers import RecordingProxy
from tests.support import ROOT

ACCESS_KEY = "SECRET-iam-accesskey-5c21"
SECRET_KEY = "SECRET-iam-secretkey-a9e7"
CREDENTIALS = MockCredentials(access_key=ACCESS_KEY, secret_access_key=SECRET_KEY)
USER = [{"role": "user", "content": "hello"}]
MODEL = "ernie-speed-8k"
CHAT = "qianfan.v2.chat"
TOKEN = "iam.token"
IAM_VARIABLES = (
    "QIANFAN_API_KEY", "QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY", "QIANFAN_SECRET_ACCESS_KEY",
    "QIANFAN_BASE_URL",
)


@pytest.fixture
def mock_credentials() -> MockCredentials:
    return CREDENTIALS


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in IAM_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def without_credentials() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in IAM_VARIABLES}


def iam_client(server: MockServer, pool: Pool, **options: Any) -> OpenAICompatibleClient:
    given = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, **options}
    return qianfan_client(server, pool, **given)


def qianfan_client(server: MockServer, pool: Pool, **options: Any) -> OpenAICompatibleClient:
    """`client_for("qianfan")` with the mock as its IAM service and its API."""
    client = llmstreams.client_for(
        "qianfan", iam_url=server.url, base_url=server.url + "/v2", pool=pool, **options
    )
    assert isinstance(client, OpenAICompatibleClient) and client.vendor.name == "qianfan"
    return client


def bearer_tokens(authorizations: set[str]) -> set[str]:
    return {value for value in authorizations if value.startswith("Bearer ")}


async def signed_token_request(server: MockServer, query: dict[str, str]) -> dict[str, Any]:
    """The mock's answer to a `BCE-BEARER` token request signed here, as a peer would send it."""
    host = f"127.0.0.1:{server.port}"
    date = bce_timestamp(datetime.now(UTC))
    headers = {"Host": host, "x-bce-date": date}
    headers["Authorization"] = bce_authorization(
        access_key=ACCESS_KEY, secret_access_key=SECRET_KEY, method="GET",
        path="/v1/BCE-BEARER/token", query=query, headers=headers, timestamp=date,
        signed_headers=("host", "x-bce-date"),
    )
    async with aiohttp.ClientSession() as session, session.get(
        f"{server.url}/v1/BCE-BEARER/token", params=query, headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


# --- streaming with a key pair ---------------------------------------------------------------


async def test_a_stream_through_client_for_with_an_iam_key_pair(server: MockServer, pool: Pool) -> None:
    client = iam_client(server, pool)
    async with client.stream_chat(USER, model=MODEL) as stream:
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].is_end and "".join(chunk.text for chunk in chunks)
    assert server.stats.requests[TOKEN] == 1 and server.stats.requests[CHAT] == 1
    # The token is kept: later calls of any client of the pool send it without fetching.
    await iam_client(server, pool).chat(USER, model=MODEL)
    assert server.stats.requests[TOKEN] == 1 and server.stats.requests[CHAT] == 2


async def test_the_registry_mock_client_fetches_its_token_from_the_mock(pool: Pool) -> None:
    provider = PROVIDERS["qianfan"]
    assert provider.mock_credentials["access_key"]["iam_url"] == "{mock}"
    async with MockServer() as server:
        client = provider.mock_client(server.url, auth="access_key", pool=pool)
        completion = await client.complete_call(llmstreams.Call(prompt="Hi", model=MODEL))
        assert completion.is_complete
        assert server.stats.requests[TOKEN] == 1 and server.stats.tokens_issued == 1


async def test_a_herd_of_50_streams_fetches_one_token(server: MockServer, pool: Pool) -> None:
    client = iam_client(server, pool)
    streams = [client.stream_chat(USER, model=MODEL) for _ in range(50)]
    completions = await asyncio.gather(*(stream.collect() for stream in streams))
    assert all(completion.is_complete for completion in completions)
    assert server.stats.requests[TOKEN] == 1
    assert server.stats.requests[CHAT] == 50
    assert all(stream.attempts == 1 for stream in streams)


# --- expiry and renewal ----------------------------------------------------------------------


async def test_an_expired_token_is_fetched_again_and_the_request_sent_once_more(
    server: MockServer, pool: Pool
) -> None:
    client = iam_client(server, pool)
    await client.chat(USER, model=MODEL)
    server.expire_tokens()
    async with client.stream_chat(USER, model=MODEL) as stream:
        completion = await stream.collect()
    assert completion.is_complete
    # Refused once (401, token expired), a new token fetched, the request sent once more.
    assert stream.attempts == 2
    assert server.stats.requests[TOKEN] == 2 and server.stats.requests[CHAT] == 3


async def test_a_herd_after_expiry_renews_the_token_once(server: MockServer, pool: Pool) -> None:
    client = iam_client(server, pool)
    await client.chat(USER, model=MODEL)
    server.expire_tokens()
    streams = [client.stream_chat(USER, model=MODEL) for _ in range(50)]
    completions = await asyncio.gather(*(stream.collect() for stream in streams))
    assert all(completion.is_complete for completion in completions)
    assert server.stats.requests[TOKEN] == 2
    assert server.stats.requests[CHAT] == 1 + 2 * 50
    assert all(stream.attempts == 2 for stream in streams)


async def test_a_token_expired_while_50_requests_are_on_their_way_is_renewed_once(
    server: MockServer, pool: Pool
) -> None:
    async with RecordingProxy(server.url).running() as proxy:
        client = llmstreams.client_for(
            "qianfan", access_key=ACCESS_KEY, secret_key=SECRET_KEY, iam_url=proxy.url,
            base_url=proxy.url + "/v2", pool=pool,
        )
        await client.complete_call(llmstreams.Call(prompt="warm-up", model=MODEL))
        proxy.hold()
        streams = [client.stream_call(llmstreams.Call(prompt="hi", model=MODEL)) for _ in range(50)]
        pending = [asyncio.ensure_future(stream.collect()) for stream in streams]
        # Every request has left the client with the cached token and waits at the proxy.
        await proxy.wait_held(50)
        assert len(bearer_tokens(proxy.authorizations)) == 1
        server.expire_tokens()
        proxy.release()
        completions = await asyncio.gather(*pending)
    assert all(completion.is_complete for completion in completions)
    assert server.stats.requests[TOKEN] == 2 and server.stats.requests[CHAT] == 1 + 2 * 50
    assert len(bearer_tokens(proxy.authorizations)) == 2
    assert all(stream.attempts == 2 for stream in streams)


async def test_a_token_refused_again_after_renewal_is_an_error(server: MockServer, pool: Pool) -> None:
    client = iam_client(server, pool)
    refused = {"X-Mock-Behaviour": "http_status=401; fail_times=9"}
    with pytest.raises(AuthenticationError) as caught:
        await client.chat(USER, model=MODEL, extra_headers=refused)
    assert caught.value.http_status == 401
    assert server.stats.requests[TOKEN] == 2 and server.stats.requests[CHAT] == 2


async def test_a_given_key_refused_is_not_sent_again(server: MockServer, pool: Pool) -> None:
    client = OpenAICompatibleClient(
        vendor="qianfan", api_key="bce-v3/ALTAK-given/key", base_url=server.url + "/v2", pool=pool
    )
    with pytest.raises(AuthenticationError):
        await client.chat(USER, model=MODEL, extra_headers={"X-Mock-Behaviour": "http_status=401"})
    assert server.stats.requests[CHAT] == 1 and server.stats.requests[TOKEN] == 0


async def test_a_token_near_its_expiry_is_renewed_before_use(server: MockServer, pool: Pool) -> None:
    source = BearerToken(ACCESS_KEY, SECRET_KEY, iam_url=server.url)
    fetched = await source.fetch(pool, Timeout())
    # The pool holds that token, due for renewal but still valid.
    due = AccessToken(fetched.value, refresh_at=time.monotonic() - 1, expires_at=fetched.expires_at)

    async def cached() -> AccessToken:
        return due

    assert await source.cache(pool).get(cached) is due
    client = OpenAICompatibleClient(
        vendor="qianfan", api_key=source, base_url=server.url + "/v2", pool=pool
    )
    await client.chat(USER, model=MODEL)
    assert server.stats.requests[TOKEN] == 2 and server.stats.requests[CHAT] == 1
    renewed = await source.cache(pool).get(cached)
    assert renewed is not due and renewed.value != due.value
    await client.chat(USER, model=MODEL)
    assert server.stats.requests[TOKEN] == 2


async def test_the_token_lives_as_long_as_asked_and_is_renewed_in_its_last_tenth(
    server: MockServer, pool: Pool
) -> None:
    before = time.monotonic()
    token = await BearerToken(ACCESS_KEY, SECRET_KEY, iam_url=server.url, lifetime=3600).fetch(
        pool, Timeout()
    )
    assert token.value.startswith("bce-v3/ALTAK-")
    assert token.expires_at - token.refresh_at == 360
    assert before + 3600 <= token.expires_at <= time.monotonic() + 3600


async def test_the_mock_caps_a_token_at_30_days(server: MockServer) -> None:
    answer = await signed_token_request(server, {"expireInSeconds": "99999999"})
    created = datetime.fromisoformat(answer["createTime"])
    expires = datetime.fromisoformat(answer["expireTime"])
    assert (expires - created).total_seconds() == 2_592_000
    assert answer["status"] == "enable" and answer["token"].startswith("bce-v3/ALTAK-")
    assert answer["createTime"].endswith(".000Z") and answer["userId"]


async def test_the_mock_refuses_an_expired_bearer_token_with_qianfan_v2_s_401(
    server: MockServer,
) -> None:
    token = (await signed_token_request(server, {}))["token"]
    server.expire_tokens()
    async with aiohttp.ClientSession() as session, session.post(
        f"{server.url}/v2/chat/completions", json={"model": MODEL, "messages": USER},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 401
        body = await response.json()
    assert body["error"]["code"] == "invalid_iam_token" and body["id"].startswith("as-")


async def test_the_mock_refuses_an_unsigned_token_request(server: MockServer) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        f"{server.url}/v1/BCE-BEARER/token"
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["code"] == "InvalidHTTPAuthHeader" and body["requestId"]
    assert server.stats.requests[TOKEN] == 1 and server.stats.tokens_issued == 0


def test_mock_workers_sharing_a_key_honour_each_other_s_bearer_tokens() -> None:
    issuer, sibling = TokenStore(3600, b"k" * 32), TokenStore(3600, b"k" * 32)
    token = issuer.issue_bearer(60).token
    assert sibling.bearer_state(token) is TokenState.VALID
    assert TokenStore(3600, b"o" * 32).bearer_state(token) is TokenState.UNKNOWN
    assert sibling.bearer_state(token.replace("ALTAK-", "ALTAK-0")) is TokenState.UNKNOWN
    assert sibling.bearer_state(token + "\u00e9") is TokenState.UNKNOWN
    sibling.expire_all()
    assert sibling.bearer_state(token) is TokenState.EXPIRED


def test_a_lifetime_is_read_from_the_service_s_own_times() -> None:
    body = (
        b'{"userId":"u","token":"bce-v3/ALTAK-a/b","status":"enable",'
        b'"createTime":"2024-11-28T06:09:57.000Z","expireTime":"2024-12-28T06:09:57.000Z"}'
    )
    token = parse_bearer_response(200, body, None, now=1000.0)
    assert token.expires_at == 1000.0 + 2_592_000
    assert token.refresh_at == token.expires_at - 86_400  # a day before, for a 30-day token
    unknown = parse_bearer_response(200, b'{"token":"bce-v3/ALTAK-a/b"}', None, now=1000.0)
    assert unknown.refresh_at == unknown.expires_at == float("inf")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (403, b'{"code":"InvalidAccessKeyId","message":"no such key","requestId":"r"}', AuthenticationError),
        (400, b'{"code":"SignatureDoesNotMatch","message":"bad","requestId":"r"}', AuthenticationError),
        (503, b'{"code":"InternalError","message":"busy","requestId":"r"}', llmstreams.ServerError),
        (200, b'{"userId":"u"}', llmstreams.ProtocolError),
        (200, b'{"token":"bce-v3/ALTAK-a/b","status":"disable"}', AuthenticationError),
    ],
)
def test_token_endpoint_errors(status: int, body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_bearer_response(status, body, None, now=0.0)


# --- wrong credentials and secrets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        ({"secret_key": "SECRET-wrong-secret-0b3d"}, "SignatureDoesNotMatch"),
        ({"access_key": "SECRET-wrong-accesskey-77aa"}, "InvalidAccessKeyId"),
    ],
    ids=["wrong-secret", "unknown-access-key"],
)
async def test_wrong_credentials_are_an_authentication_error_naming_no_secret(
    server: MockServer, pool: Pool, caplog: pytest.LogCaptureFixture, credentials: dict[str, str],
    code: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmstreams")
    client = iam_client(server, pool, **credentials)
    with pytest.raises(AuthenticationError) as caught:
        await client.chat(USER, model=MODEL)
    error = caught.value
    assert error.code == code and "access_key/secret_key" in str(error)
    assert server.stats.requests[TOKEN] == 1 and server.stats.requests[CHAT] == 0
    shown = " ".join((str(error), repr(error), repr(client), caplog.text))
    assert "fetching a bearer token" in caplog.text
    for secret in (SECRET_KEY, ACCESS_KEY, *credentials.values()):
        assert secret not in shown


def test_reprs_show_no_credentials() -> None:
    source = BearerToken(ACCESS_KEY, SECRET_KEY)
    client = OpenAICompatibleClient(vendor="qianfan", api_key=source)
    shown = repr(source) + repr(client) + repr(source.session(client.pool, Timeout()))
    assert "iam.bj.baidubce.com" in shown and "api_key set" in shown
    assert ACCESS_KEY not in shown and SECRET_KEY not in shown


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: BearerToken("", SECRET_KEY), "access_key"),
        (lambda: BearerToken(ACCESS_KEY, "with space"), "secret_key"),
        (lambda: BearerToken(ACCESS_KEY, SECRET_KEY, lifetime=2_592_001), "lifetime"),
        (lambda: BearerToken(ACCESS_KEY, SECRET_KEY, iam_url="iam.bj.baidubce.com"), "iam_url"),
        (lambda: llmstreams.client_for("qianfan", access_key=ACCESS_KEY), "secret_key"),
        (lambda: llmstreams.client_for("qianfan", secret_key=SECRET_KEY), "access_key"),
        (
            lambda: llmstreams.client_for(
                "qianfan", api_key="bce-v3/ALTAK-x/y", access_key=ACCESS_KEY, secret_key=SECRET_KEY
            ),
            "api_key",
        ),
        (lambda: llmstreams.client_for("qianfan", api_key="app-key", secret_key=SECRET_KEY), "secret_key"),
        (lambda: OpenAICompatibleClient(vendor="qianfan", api_key=42), "api_key"),  # type: ignore[arg-type]
    ],
)
def test_invalid_credentials_are_refused_before_sending(call: Any, field: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        call()
    assert caught.value.field == field
    assert SECRET_KEY not in str(caught.value)


# --- the environment -------------------------------------------------------------------------


async def test_the_environment_s_key_pair_is_used_without_an_api_key(
    server: MockServer, pool: Pool, clean_environment: pytest.MonkeyPatch
) -> None:
    provider = PROVIDERS["qianfan"]
    assert credentials_from_environment(provider) is None
    clean_environment.setenv("QIANFAN_ACCESS_KEY", ACCESS_KEY)
    clean_environment.setenv("QIANFAN_SECRET_KEY", SECRET_KEY)
    assert credentials_from_environment(provider) == {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}
    assert "QIANFAN_ACCESS_KEY + QIANFAN_SECRET_KEY" in provider.credential_env
    client = qianfan_client(server, pool)
    assert (await client.chat(USER, model=MODEL)).is_complete
    assert server.stats.requests[TOKEN] == 1

    # An API key, when set, is used rather than the pair.
    clean_environment.setenv("QIANFAN_API_KEY", "bce-v3/ALTAK-from-env/key")
    assert credentials_from_environment(provider) == {"api_key": "bce-v3/ALTAK-from-env/key"}
    client = qianfan_client(server, pool)
    assert (await client.chat(USER, model=MODEL)).is_complete
    assert server.stats.requests[TOKEN] == 1 and server.stats.requests[CHAT] == 2


def test_the_environment_s_pair_by_qianfan_client_s_names(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("QIANFAN_ACCESS_KEY", ACCESS_KEY)
    clean_environment.setenv("QIANFAN_SECRET_ACCESS_KEY", SECRET_KEY)
    assert credentials_from_environment(PROVIDERS["qianfan"]) == {
        "access_key": ACCESS_KEY, "secret_key": SECRET_KEY
    }
    client = llmstreams.client_for("qianfan")
    assert isinstance(client, OpenAICompatibleClient) and client.has_api_key


def test_half_a_pair_in_the_environment_names_the_missing_variable(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("QIANFAN_ACCESS_KEY", ACCESS_KEY)
    assert credentials_from_environment(PROVIDERS["qianfan"]) is None
    with pytest.raises(InvalidParameterError) as caught:
        llmstreams.client_for("qianfan")
    assert caught.value.field == "QIANFAN_SECRET_KEY"
    assert ACCESS_KEY not in str(caught.value)


# --- the command line ------------------------------------------------------------------------


async def test_chat_with_the_mock_still_speaks_qianfan_v2() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "chat", "--mock", "--provider", "qianfan", "Hello",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**without_credentials(), "PYTHONPATH": str(ROOT)},
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert len(stdout.decode().strip()) > 10
