"""Fidelity: the official `qianfan` and `dashscope` SDKs talk to the mock, unchanged but for the
base URL. Skipped unless the SDKs are installed (`pip install .[sdk]`, in a venv of its own):

    /tmp/sdkvenv/bin/python -m pytest tests/sdk -m sdk -q

The SDKs' synchronous calls block, so the mock runs on an event loop of its own in a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from llmstreams.mock import Behaviour, MockCredentials, MockServer

pytestmark = pytest.mark.sdk

CREDENTIALS = MockCredentials(
    api_key="qianfan-api-key",
    secret_key="qianfan-secret-key",
    access_key="qianfan-access-key",
    secret_access_key="qianfan-secret-access-key",
    dashscope_api_key="sk-dashscope",
)
MESSAGES = [{"role": "user", "content": "Please introduce The Great Wall"}]
# Why a test is skipped, as the end of the test run prints it (tests/conftest.py).
SKIPPED = "needs the official {} SDK: pip install -e '.[test,sdk]' in a venv of its own, then pytest tests/sdk"
STARTUP_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    """A mock server, with every credential enforced, on its own loop in a thread."""
    mock = MockServer(credentials=CREDENTIALS)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mock-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(mock.start(), loop).result(STARTUP_TIMEOUT)
        yield mock
        asyncio.run_coroutine_threadsafe(mock.close(), loop).result(STARTUP_TIMEOUT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STARTUP_TIMEOUT)
        loop.close()


@pytest.fixture(autouse=True)
def default_behaviour(server: MockServer) -> None:
    server.set_behaviour(Behaviour())


@pytest.fixture
def qianfan(server: MockServer, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    sdk = pytest.importorskip("qianfan", reason=SKIPPED.format("qianfan"))
    config = sdk.get_config()
    monkeypatch.setattr(config, "BASE_URL", server.url)
    monkeypatch.setattr(config, "CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setattr(config, "DISABLE_CACHE", True)
    for name in ("AK", "SK", "ACCESS_KEY", "SECRET_KEY", "ACCESS_TOKEN"):
        monkeypatch.setattr(config, name, None)
    return sdk


@pytest.fixture
def dashscope(server: MockServer, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    sdk = pytest.importorskip("dashscope", reason=SKIPPED.format("dashscope"))
    monkeypatch.setattr(sdk, "base_http_api_url", server.url + "/api/v1")
    monkeypatch.setattr(sdk, "api_key", CREDENTIALS.dashscope_api_key)
    return sdk


def use_keys(qianfan: ModuleType, monkeypatch: pytest.MonkeyPatch, auth: str) -> None:
    """Give the SDK API key / secret key (OAuth access tokens) or AK/SK (bce-auth-v1 signing)."""
    config = qianfan.get_config()
    if auth == "access-token":
        monkeypatch.setattr(config, "AK", CREDENTIALS.api_key)
        monkeypatch.setattr(config, "SK", CREDENTIALS.secret_key)
    else:
        monkeypatch.setattr(config, "ACCESS_KEY", CREDENTIALS.access_key)
        monkeypatch.setattr(config, "SECRET_KEY", CREDENTIALS.secret_access_key)


@pytest.fixture(params=["access-token", "ak-sk"])
def auth(
    qianfan: ModuleType, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    use_keys(qianfan, monkeypatch, request.param)
    return str(request.param)


def test_qianfan_chat_completion(qianfan: ModuleType, auth: str) -> None:
    chat = qianfan.ChatCompletion()
    whole = chat.do(messages=MESSAGES)
    assert len(whole["result"]) == 240
    assert whole["usage"]["total_tokens"] > 0
    pieces = list(chat.do(messages=MESSAGES, stream=True))
    assert [piece["is_end"] for piece in pieces] == [False] * 9 + [True]
    assert "".join(piece["result"] for piece in pieces) == whole["result"]


def test_qianfan_refreshes_the_list_of_services_with_ak_sk(
    qianfan: ModuleType, server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(qianfan, monkeypatch, "ak-sk")
    qianfan.ChatCompletion().do(messages=MESSAGES)
    assert server.stats.requests["qianfan.service_list"] >= 1


def test_qianfan_rejects_a_wrong_secret_access_key(
    qianfan: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(qianfan, monkeypatch, "ak-sk")
    monkeypatch.setattr(qianfan.get_config(), "SECRET_KEY", "wrong")
    with pytest.raises(qianfan.errors.APIError) as raised:
        qianfan.ChatCompletion().do(messages=MESSAGES)
    assert raised.value.error_code == 14


def test_qianfan_completion_on_a_custom_endpoint(qianfan: ModuleType, auth: str) -> None:
    completion = qianfan.Completion()
    whole = completion.do(prompt="def is_even(n):", endpoint="my_codellama")
    assert len(whole["result"]) == 240
    pieces = list(completion.do(prompt="def is_even(n):", endpoint="my_codellama", stream=True))
    assert "".join(piece["result"] for piece in pieces) == whole["result"]


def test_qianfan_fetches_a_new_token_when_the_old_one_expires(
    qianfan: ModuleType, server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(qianfan, monkeypatch, "access-token")
    # The SDK refreshes a token at most once an hour unless told otherwise.
    monkeypatch.setattr(qianfan.get_config(), "ACCESS_TOKEN_REFRESH_MIN_INTERVAL", 0)
    chat = qianfan.ChatCompletion()
    chat.do(messages=MESSAGES)
    issued = server.stats.tokens_issued
    server.expire_tokens()
    assert chat.do(messages=MESSAGES)["result"]
    assert server.stats.tokens_issued == issued + 1


def test_qianfan_retries_a_server_high_load_error(
    qianfan: ModuleType, server: MockServer, auth: str
) -> None:
    server.set_behaviour(Behaviour(fail_code="336100", fail_times=1))
    before = server.stats.requests["qianfan.chat"]
    chat = qianfan.ChatCompletion()
    assert chat.do(messages=MESSAGES, retry_count=2, backoff_factor=0)["result"]
    assert server.stats.requests["qianfan.chat"] == before + 2


def test_qianfan_raises_the_error_of_a_stream_request(
    qianfan: ModuleType, server: MockServer, auth: str
) -> None:
    server.set_behaviour(Behaviour(fail_code="336003"))
    with pytest.raises(qianfan.errors.APIError) as raised:
        list(qianfan.ChatCompletion().do(messages=MESSAGES, stream=True))
    assert raised.value.error_code == 336003


async def test_qianfan_async_api(qianfan: ModuleType, auth: str) -> None:
    chat = qianfan.ChatCompletion()
    whole = await chat.ado(messages=MESSAGES)
    pieces = [piece async for piece in await chat.ado(messages=MESSAGES, stream=True)]
    assert "".join(piece["result"] for piece in pieces) == whole["result"]


def test_dashscope_generation(dashscope: ModuleType) -> None:
    whole = dashscope.Generation.call(model="qwen-turbo", prompt="Write a haiku")
    assert whole.status_code == 200
    assert len(whole.output.text) == 240
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens
    events = list(
        dashscope.Generation.call(model="qwen-turbo", prompt="Write a haiku", stream=True)
    )
    assert [event.output.finish_reason for event in events] == ["null"] * 9 + ["stop"]
    assert events[-1].output.text == whole.output.text


def test_dashscope_incremental_messages(dashscope: ModuleType) -> None:
    arguments: dict[str, Any] = {
        "model": "qwen-turbo",
        "messages": MESSAGES,
        "result_format": "message",
        "incremental_output": True,
    }
    whole = dashscope.Generation.call(**arguments)
    events = list(dashscope.Generation.call(**arguments, stream=True))
    pieces = [event.output.choices[0].message.content for event in events]
    assert "".join(pieces) == whole.output.choices[0].message.content


def test_dashscope_reports_errors(dashscope: ModuleType, server: MockServer) -> None:
    wrong_key = dashscope.Generation.call(model="qwen-turbo", prompt="hi", api_key="sk-wrong")
    assert (wrong_key.status_code, wrong_key.code) == (401, "InvalidApiKey")
    server.set_behaviour(Behaviour(fail_code="Throttling"))
    throttled = dashscope.Generation.call(model="qwen-turbo", prompt="throttled")
    assert (throttled.status_code, throttled.code) == (429, "Throttling")


def test_dashscope_mid_stream_error(dashscope: ModuleType, server: MockServer) -> None:
    server.set_behaviour(Behaviour(error_after=2))
    events = list(dashscope.Generation.call(model="qwen-turbo", prompt="hi", stream=True))
    assert [event.status_code for event in events[:2]] == [200, 200]
    # The SDK reads a `status:` line the service does not send, so it reports its default 400.
    assert (len(events), events[-1].status_code, events[-1].code) == (3, 400, "InternalError")


async def test_dashscope_async_api(dashscope: ModuleType) -> None:
    try:
        whole = await dashscope.AioGeneration.call(model="qwen-turbo", prompt="Write a haiku")
        stream = await dashscope.AioGeneration.call(
            model="qwen-turbo", prompt="Write a haiku", stream=True
        )
        events = [event async for event in stream]
    finally:
        await dashscope.close_shared_aio_session()
    assert events[-1].output.text == whole.output.text
