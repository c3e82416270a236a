"""DashScopeClient against the local mock server (and a recording server) over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

import llmstreams
from llmstreams import (
    APIError,
    AuthenticationError,
    Chunk,
    ContentFilterError,
    DashScopeClient,
    InvalidParameterError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Pool,
    ProtocolError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StreamInterruptedError,
)
from llmstreams.mock import Behaviour, MockCredentials, MockServer

API_KEY = "sk-dashscope-test-0123456789abcdef"
MODEL = "billa-7b-sft-v1"
PROMPT = "翻译成英文:春天来了,花朵都开了。"
FAST_RETRY = RetryPolicy(max_retries=2, backoff_base=0.001, backoff_max=0.001)
ROUTE = "dashscope.generation"


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer(credentials=MockCredentials(dashscope_api_key=API_KEY)) as mock:
        yield mock


@pytest.fixture
async def client(server: MockServer) -> AsyncIterator[DashScopeClient]:
    async with DashScopeClient(api_key=API_KEY, base_url=server.url, retry=FAST_RETRY) as made:
        yield made


def knobs(**values: Any) -> dict[str, str]:
    """The per-request header that sets mock knobs."""
    return {"X-Mock-Behaviour": "; ".join(f"{name}={value}" for name, value in values.items())}


def requests_seen(server: MockServer) -> int:
    return server.stats.requests[ROUTE]


# Streaming and not


async def test_stream_cumulative_mode_yields_only_new_text(
    client: DashScopeClient, server: MockServer
) -> None:
    async with client.stream_generate(PROMPT, model=MODEL) as stream:
        chunks = [chunk async for chunk in stream]
    so_far = ""
    for chunk in chunks:
        # The server sent the whole text so far; the chunk holds only what is new.
        assert chunk.raw["output"]["text"] == so_far + chunk.text
        assert chunk.text
        so_far += chunk.text
    assert len(chunks) == 10
    assert [chunk.sentence_id for chunk in chunks] == list(range(10))
    assert [chunk.is_end for chunk in chunks] == [False] * 9 + [True]
    assert chunks[-1].finish_reason == "stop"
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])
    whole = await client.generate(PROMPT, model=MODEL)
    assert so_far == whole.text
    assert len(whole.text) == 240
    assert stream.completion.text == whole.text
    assert stream.completion.is_complete
    assert requests_seen(server) == 2


async def test_stream_incremental_mode_gives_the_same_text(client: DashScopeClient) -> None:
    async with client.stream_generate(PROMPT, model=MODEL, incremental_output=True) as stream:
        chunks = [chunk async for chunk in stream]
    assert all(chunk.text == chunk.raw["output"]["text"] for chunk in chunks)
    streamed = "".join(chunk.text for chunk in chunks)
    collected = await client.stream_generate(PROMPT, model=MODEL, incremental_output=True).collect()
    whole = await client.generate(PROMPT, model=MODEL, incremental_output=True)
    assert streamed == collected.text == whole.text
    assert len(whole.text) == 240


async def test_collect_is_not_doubled_in_cumulative_mode(client: DashScopeClient) -> None:
    completion = await client.stream_generate(PROMPT, model=MODEL).collect()
    whole = await client.generate(PROMPT, model=MODEL)
    assert completion.text == whole.text
    assert len(completion.text) == 240
    assert completion.chunk_count == 10
    assert completion.finish_reason == "stop"
    assert completion.usage == whole.usage
    assert completion.usage is not None and completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.request_id


async def test_collect_after_reading_some_chunks(client: DashScopeClient) -> None:
    stream = client.stream_generate(PROMPT, model=MODEL)
    first = await stream.__anext__()
    completion = await stream.collect()
    assert completion.text.startswith(first.text)
    assert completion.text == (await client.generate(PROMPT, model=MODEL)).text


async def test_generate(client: DashScopeClient, server: MockServer) -> None:
    completion = await client.generate(PROMPT, model=MODEL, max_tokens=5)
    assert completion.is_complete
    assert completion.chunk_count == 1
    assert completion.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert server.stats.streams_started == 0


@pytest.mark.parametrize("incremental", [None, True])
async def test_message_format_stream_and_not(client: DashScopeClient, incremental: bool | None) -> None:
    messages = [
        {"role": "system", "content": "You are a translator."},
        {"role": "user", "content": PROMPT},
    ]
    arguments: dict[str, Any] = {
        "messages": messages, "model": "qwen-turbo", "result_format": "message",
        "incremental_output": incremental,
    }
    async with client.stream_generate(**arguments) as stream:
        chunks = [chunk async for chunk in stream]
    contents = [chunk.raw["output"]["choices"][0]["message"]["content"] for chunk in chunks]
    if incremental:
        assert [chunk.text for chunk in chunks] == contents
    else:
        assert contents[-1] == "".join(chunk.text for chunk in chunks)
    whole = await client.generate(**arguments)
    assert "".join(chunk.text for chunk in chunks) == whole.text
    assert whole.finish_reason == chunks[-1].finish_reason == "stop"
    assert len(whole.text) == 240


async def test_trickled_bytes_give_the_same_text(client: DashScopeClient) -> None:
    completion = await client.stream_generate(
        PROMPT, model=MODEL, extra_headers=knobs(trickle="true", answer_chars=60)
    ).collect()
    short = await client.generate(PROMPT, model=MODEL, extra_headers=knobs(answer_chars=60))
    assert completion.text == short.text
    assert len(completion.text) == 60
    assert completion.chunk_count == 3


async def test_huge_event_line(client: DashScopeClient) -> None:
    completion = await client.stream_generate(
        PROMPT, model=MODEL, extra_headers=knobs(huge_line_bytes=300_000)
    ).collect()
    assert len(completion.text.encode()) > 250_000
    assert completion.is_complete


async def test_any_model_name_is_sent_and_the_service_judges_it(
    client: DashScopeClient, server: MockServer
) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        await client.generate(PROMPT, model="qwen-turbbo")
    assert raised.value.code == "InvalidParameter" and raised.value.http_status == 400
    assert "Model not exist." in str(raised.value) and requests_seen(server) == 1
    server.set_behaviour(Behaviour(any_model=True))
    completion = await client.generate(PROMPT, model="some-future-model-v9")
    assert completion.is_complete


async def test_a_key_without_sk_is_refused_as_dashscope_refuses_it(server: MockServer) -> None:
    async with DashScopeClient(api_key="definitely-not-a-valid-key", base_url=server.url) as bad:
        with pytest.raises(AuthenticationError) as raised:
            await bad.generate(PROMPT, model=MODEL)
    assert raised.value.code == "InvalidApiKey" and raised.value.http_status == 401
    assert requests_seen(server) == 1


# Errors before the stream


PRE_STREAM_ERRORS = [
    ("InvalidApiKey", 401, AuthenticationError),
    ("AccessDenied", 403, PermissionDeniedError),
    ("ModelNotFound", 404, NotFoundError),
    ("InvalidParameter", 400, InvalidRequestError),
    ("BadRequest.EmptyInput", 400, InvalidRequestError),
    ("BadRequest.TooLarge", 413, InvalidRequestError),
    ("DataInspectionFailed", 400, ContentFilterError),
    ("Throttling", 429, RateLimitError),
    ("Throttling.RateQuota", 429, RateLimitError),
    ("Throttling.AllocationQuota", 429, RateLimitError),
    ("InternalError", 500, ServerError),
    ("SystemError", 500, ServerError),
    ("ModelUnavailable", 503, ServerError),
    ("RequestTimeOut", 408, ServerError),
]


@pytest.mark.parametrize(("code", "status", "error_class"), PRE_STREAM_ERRORS)
@pytest.mark.parametrize("streaming", [True, False])
async def test_error_codes_before_the_stream(
    server: MockServer, code: str, status: int, error_class: type[APIError], streaming: bool
) -> None:
    async with DashScopeClient(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        headers = knobs(fail_code=code)
        with pytest.raises(APIError) as raised:
            if streaming:
                async for _ in client.stream_generate(PROMPT, model=MODEL, extra_headers=headers):
                    pass
            else:
                await client.generate(PROMPT, model=MODEL, extra_headers=headers)
    error = raised.value
    assert type(error) is error_class
    assert (error.code, error.http_status, error.provider) == (code, status, "dashscope")
    assert error.request_id
    assert error.message
    assert error.retryable is (status in (408, 429) or status >= 500)
    assert error.partial is not None and error.partial.text == ""
    assert requests_seen(server) == 1
    assert server.stats.streams_started == 0


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [(400, InvalidRequestError, "InvalidParameter"), (401, AuthenticationError, "InvalidApiKey"),
     (403, PermissionDeniedError, "AccessDenied"), (404, NotFoundError, "ModelNotFound"),
     (413, InvalidRequestError, "BadRequest.TooLarge"), (429, RateLimitError, "Throttling"),
     (500, ServerError, "InternalError"), (502, ServerError, "InternalError"),
     (503, ServerError, "ModelUnavailable")],
)
async def test_http_status_knob(
    server: MockServer, status: int, error_class: type[APIError], code: str
) -> None:
    async with DashScopeClient(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        with pytest.raises(error_class) as raised:
            await client.stream_generate(
                PROMPT, model=MODEL, extra_headers=knobs(http_status=status)
            ).collect()
    assert (raised.value.http_status, raised.value.code) == (status, code)


async def test_wrong_api_key(server: MockServer) -> None:
    async with DashScopeClient(api_key="sk-wrong", base_url=server.url) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.generate(PROMPT, model=MODEL)
    assert raised.value.code == "InvalidApiKey"
    assert requests_seen(server) == 1


async def test_content_inspection_of_the_input(client: DashScopeClient) -> None:
    with pytest.raises(ContentFilterError) as raised:
        await client.stream_generate("tell me [[unsafe]] things", model=MODEL).collect()
    assert raised.value.code == "DataInspectionFailed"


# Errors mid-stream


MID_STREAM_ERRORS = [
    ("InternalError", 500, ServerError),
    ("ModelUnavailable", 503, ServerError),
    ("Throttling", 429, RateLimitError),
    ("DataInspectionFailed", 400, ContentFilterError),
    ("InvalidParameter", 400, InvalidRequestError),
    ("AccessDenied", 403, PermissionDeniedError),
]


@pytest.mark.parametrize(("code", "status", "error_class"), MID_STREAM_ERRORS)
@pytest.mark.parametrize("incremental", [None, True])
async def test_error_event_mid_stream(
    client: DashScopeClient, server: MockServer, code: str, status: int,
    error_class: type[APIError], incremental: bool | None,
) -> None:
    received: list[Chunk] = []
    headers = knobs(error_after=3, error_code=code)
    with pytest.raises(APIError) as raised:
        async with client.stream_generate(
            PROMPT, model=MODEL, incremental_output=incremental, extra_headers=headers
        ) as stream:
            async for chunk in stream:
                received.append(chunk)
    error = raised.value
    assert type(error) is error_class
    assert (error.code, error.http_status) == (code, status)
    assert len(received) == 3
    assert error.partial is not None
    assert error.partial.text == "".join(chunk.text for chunk in received)
    assert len(error.partial.text) == 72
    assert error.partial.chunk_count == 3
    assert not error.partial.is_complete
    assert requests_seen(server) == 1
    assert client.pool.stats().connections_in_use == 0


async def test_error_event_mid_stream_trickled(client: DashScopeClient, server: MockServer) -> None:
    with pytest.raises(RateLimitError) as raised:
        await client.stream_generate(
            PROMPT, model=MODEL,
            extra_headers=knobs(error_after=2, error_code="Throttling.RateQuota", trickle="true"),
        ).collect()
    assert raised.value.http_status == 429
    assert raised.value.partial is not None and len(raised.value.partial.text) == 48
    assert requests_seen(server) == 1


async def test_error_event_before_the_first_chunk_is_retried_when_retryable(
    client: DashScopeClient, server: MockServer
) -> None:
    with pytest.raises(ServerError) as raised:
        await client.stream_generate(
            PROMPT, model=MODEL, extra_headers=knobs(error_after=0)
        ).collect()
    assert raised.value.http_status == 500
    assert requests_seen(server) == 3


async def test_error_event_before_the_first_chunk_not_retryable(
    client: DashScopeClient, server: MockServer
) -> None:
    with pytest.raises(InvalidRequestError):
        await client.stream_generate(
            PROMPT, model=MODEL, extra_headers=knobs(error_after=0, error_code="InvalidParameter")
        ).collect()
    assert requests_seen(server) == 1


async def test_malformed_event(client: DashScopeClient, server: MockServer) -> None:
    received: list[Chunk] = []
    with pytest.raises(ProtocolError) as raised:
        async for chunk in client.stream_generate(
            PROMPT, model=MODEL, extra_headers=knobs(malformed_after=2)
        ):
            received.append(chunk)
    assert len(received) == 2
    assert '"finish_reason":"null"' in str(raised.value)
    assert raised.value.partial is not None
    assert raised.value.partial.text == "".join(chunk.text for chunk in received)
    assert requests_seen(server) == 1


async def test_non_sse_body(client: DashScopeClient, server: MockServer) -> None:
    with pytest.raises(ProtocolError) as raised:
        await client.stream_generate(
            PROMPT, model=MODEL, extra_headers=knobs(non_sse_body="true")
        ).collect()
    assert "text/html" in str(raised.value)
    assert "Network sign-in" in str(raised.value)
    assert requests_seen(server) == 1


async def test_disconnect_mid_stream(client: DashScopeClient, server: MockServer) -> None:
    with pytest.raises(StreamInterruptedError) as raised:
        await client.stream_generate(
            PROMPT, model=MODEL, extra_headers=knobs(disconnect_after=4)
        ).collect()
    assert raised.value.partial is not None
    assert len(raised.value.partial.text) == 96
    assert requests_seen(server) == 1
    assert client.pool.stats().connections_in_use == 0


# Retries


async def test_429_with_retry_after_is_retried(server: MockServer) -> None:
    # A backoff of an hour: only the server's Retry-After of 0 lets this finish.
    retry = RetryPolicy(max_retries=2, backoff_base=3600, backoff_max=3600)
    async with DashScopeClient(api_key=API_KEY, base_url=server.url, retry=retry) as client:
        stream = client.stream_generate(
            PROMPT, model=MODEL,
            extra_headers=knobs(fail_code="Throttling", fail_times=2, retry_after=0),
        )
        async with asyncio.timeout(30):
            completion = await stream.collect()
    assert completion.is_complete
    assert stream.attempts == 3
    assert requests_seen(server) == 3


async def test_retry_after_is_kept_on_the_error(server: MockServer) -> None:
    async with DashScopeClient(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        with pytest.raises(RateLimitError) as raised:
            await client.generate(
                PROMPT, model=MODEL, extra_headers=knobs(http_status=429, retry_after=7)
            )
    assert raised.value.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("streaming", [True, False])
async def test_server_errors_are_retried_then_succeed(
    client: DashScopeClient, server: MockServer, status: int, streaming: bool
) -> None:
    headers = knobs(http_status=status, fail_times=2)
    if streaming:
        completion = await client.stream_generate(PROMPT, model=MODEL, extra_headers=headers).collect()
    else:
        completion = await client.generate(PROMPT, model=MODEL, extra_headers=headers)
    assert len(completion.text) == 240
    assert requests_seen(server) == 3


@pytest.mark.parametrize(("status", "error_class"), [(429, RateLimitError), (500, ServerError),
                                                     (503, ServerError)])
async def test_retries_stop_at_the_limit(
    client: DashScopeClient, server: MockServer, status: int, error_class: type[APIError]
) -> None:
    with pytest.raises(error_class) as raised:
        await client.stream_generate(
            PROMPT, model=MODEL, extra_headers=knobs(http_status=status, fail_times=10)
        ).collect()
    assert raised.value.http_status == status
    assert requests_seen(server) == 3


async def test_max_retries_zero_turns_retries_off(server: MockServer) -> None:
    async with DashScopeClient(api_key=API_KEY, base_url=server.url, max_retries=0) as client:
        with pytest.raises(ServerError):
            await client.generate(PROMPT, model=MODEL, extra_headers=knobs(http_status=503))
    assert requests_seen(server) == 1


async def test_client_errors_are_not_retried(client: DashScopeClient, server: MockServer) -> None:
    with pytest.raises(InvalidRequestError):
        await client.generate(PROMPT, model=MODEL, extra_headers=knobs(fail_code="InvalidParameter"))
    assert requests_seen(server) == 1


# Early exit and connections


async def test_break_releases_the_connection(client: DashScopeClient, server: MockServer) -> None:
    async with client.stream_generate(
        PROMPT, model=MODEL, extra_headers=knobs(stall_after=2)
    ) as stream:
        async for chunk in stream:
            assert chunk.sentence_id == 0
            break
    assert client.pool.stats().connections_in_use == 0
    assert client.pool.stats().open_streams == 0
    stats = await server.wait_for(lambda stats: stats.streams_aborted == 1)
    assert stats.streams_completed == 0


async def test_a_completed_stream_returns_its_connection(client: DashScopeClient) -> None:
    async with client.stream_generate(PROMPT, model=MODEL) as stream:
        async for _ in stream:
            assert client.pool.stats().connections_in_use == 1
    assert client.pool.stats().connections_in_use == 0


async def test_client_on_a_shared_pool_leaves_it_open(server: MockServer) -> None:
    async with Pool() as pool:
        async with DashScopeClient(api_key=API_KEY, base_url=server.url, pool=pool) as client:
            await client.generate(PROMPT, model=MODEL)
        assert not pool.closed
        assert client.pool is pool


# Headers and body on the wire


class Recorder:
    """A loopback server that records each request and answers with a canned response."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        payload = {
            "output": {"text": "ok", "finish_reason": "stop"},
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
            "request_id": "r",
        }
        data = json.dumps(payload).encode()
        if request.headers.get("X-DashScope-SSE") == "enable":
            frame = b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:" + data + b"\n\n"
            return web.Response(body=frame, content_type="text/event-stream")
        return web.Response(body=data, content_type="application/json")


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    state = Recorder()
    app = web.Application()
    app.router.add_post("/{tail:.*}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


async def test_stream_request_on_the_wire(recorder: Recorder) -> None:
    async with DashScopeClient(
        api_key=API_KEY, base_url=recorder.url + "/", workspace="ws-123",
        extra_headers={"X-Client-Tag": "a", "X-Both": "client"},
    ) as client:
        completion = await client.stream_generate(
            PROMPT, model=MODEL, top_p=0.8, extra_params={"repetition_window": 3},
            extra_headers={"X-Both": "call"},
        ).collect()
    assert completion.text == "ok"
    ((path, headers, body),) = recorder.requests
    assert path == "/api/v1/services/aigc/text-generation/generation"
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "text/event-stream"
    assert headers["X-DashScope-SSE"] == "enable"
    assert headers["X-DashScope-WorkSpace"] == "ws-123"
    assert headers["X-Client-Tag"] == "a"
    assert headers["X-Both"] == "call"
    assert json.loads(body) == {
        "model": MODEL,
        "input": {"prompt": PROMPT},
        "parameters": {"top_p": 0.8, "repetition_window": 3},
    }


async def test_non_stream_request_on_the_wire(recorder: Recorder) -> None:
    async with DashScopeClient(api_key=API_KEY, base_url=recorder.url) as client:
        await client.generate(messages=[{"role": "user", "content": "hi"}], model=MODEL)
    ((_, headers, body),) = recorder.requests
    assert "X-DashScope-SSE" not in headers
    assert "X-DashScope-WorkSpace" not in headers
    assert headers["Accept"] == "application/json"
    assert json.loads(body) == {
        "model": MODEL, "input": {"messages": [{"role": "user", "content": "hi"}]}, "parameters": {},
    }


async def test_call_headers_override_case_insensitively(recorder: Recorder) -> None:
    async with DashScopeClient(api_key=API_KEY, base_url=recorder.url, workspace="ws-1") as client:
        await client.generate(
            PROMPT, model=MODEL, extra_headers={"x-dashscope-workspace": "ws-2"}
        )
    ((_, headers, _),) = recorder.requests
    assert [value for name, value in headers.items() if name.lower() == "x-dashscope-workspace"] == [
        "ws-2"
    ]


async def test_key_and_base_url_from_the_environment(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-from-env")
    monkeypatch.setenv("DASHSCOPE_BASE_URL", recorder.url)
    async with DashScopeClient() as client:
        assert client.base_url == recorder.url
        await client.generate(PROMPT, model=MODEL)
    ((_, headers, _),) = recorder.requests
    assert headers["Authorization"] == "Bearer sk-from-env"


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_BASE_URL", raising=False)
    client = DashScopeClient(api_key=API_KEY)
    assert client.base_url == "https://dashscope.aliyuncs.com"


# Validation: InvalidParameterError before anything is sent


MESSAGES_OK = [{"role": "user", "content": "hi"}]

INVALID_CALLS: list[tuple[dict[str, Any], str]] = [
    ({}, "prompt"),
    ({"prompt": "hi", "messages": MESSAGES_OK}, "messages"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"model": None}, "model"),
    ({"model": ""}, "model"),
    ({"model": 3}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi", "name": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "user", "content": "c"}]}, "messages[1].role"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": "0.5"}, "top_p"),
    ({"temperature": 2}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": -1}, "repetition_penalty"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"presence_penalty": -2.01}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10.0}, "max_tokens"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"seed": "1"}, "seed"),
    ({"result_format": "json"}, "result_format"),
    ({"incremental_output": "yes"}, "incremental_output"),
    ({"incremental_output": 1}, "incremental_output"),
    ({"enable_search": 0}, "enable_search"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"extra_params": ["x"]}, "extra_params"),
    ({"extra_params": {"temperature": 5}}, "extra_params"),
    ({"extra_params": {"incremental_output": True}}, "extra_params"),
    ({"extra_headers": {"X-A": "b\r\nEvil: 1"}}, "extra_headers"),
    ({"extra_headers": ["X-A"]}, "extra_headers"),
    ({"temprature": 0.5}, "temprature"),
    ({"stream": True}, "stream"),
]


@pytest.mark.parametrize(("arguments", "field"), INVALID_CALLS)
async def test_invalid_parameters_are_refused_before_sending(
    client: DashScopeClient, server: MockServer, arguments: dict[str, Any], field: str
) -> None:
    call: dict[str, Any] = {"model": MODEL}
    if "messages" not in arguments and "prompt" not in arguments and arguments:
        call["prompt"] = PROMPT
    call.update(arguments)
    # Checked when the stream is made, synchronously: nothing is awaited.
    with pytest.raises(InvalidParameterError) as raised:
        client.stream_generate(**call)
    assert raised.value.field == field
    assert raised.value.rule
    with pytest.raises(InvalidParameterError) as raised_again:
        await client.generate(**call)
    assert raised_again.value.field == field
    assert requests_seen(server) == 0
    assert server.stats.connections_opened == 0


def test_unknown_argument_suggests_the_right_name() -> None:
    client = DashScopeClient(api_key=API_KEY)
    with pytest.raises(InvalidParameterError, match="did you mean 'temperature'") as raised:
        client.stream_generate(PROMPT, model=MODEL, temprature=0.5)
    assert "extra_params=" in str(raised.value)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"api_key": ""}, "api_key"),
        ({"api_key": "  "}, "api_key"),
        ({"api_key": "sk bad"}, "api_key"),
        ({"api_key": 5}, "api_key"),
        ({"base_url": "dashscope.aliyuncs.com"}, "base_url"),
        ({"workspace": ""}, "workspace"),
        ({"workspace": "ws\nX: y"}, "workspace"),
        ({"extra_headers": {"Bad Name": "x"}}, "extra_headers"),
    ],
)
def test_invalid_client_settings(arguments: dict[str, Any], field: str) -> None:
    settings: dict[str, Any] = {"api_key": API_KEY}
    settings.update(arguments)
    with pytest.raises(InvalidParameterError) as raised:
        DashScopeClient(**settings)
    assert raised.value.field == field


def test_missing_api_key_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(InvalidParameterError) as raised:
        DashScopeClient()
    assert raised.value.field == "api_key"
    assert "DASHSCOPE_API_KEY" in str(raised.value)


# Secrets


def test_key_is_not_in_reprs_or_validation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    client = DashScopeClient(api_key=API_KEY, workspace="ws")
    assert API_KEY not in repr(client)
    assert API_KEY not in str(client)
    with pytest.raises(InvalidParameterError) as raised:
        DashScopeClient(api_key=API_KEY + " tail")
    assert API_KEY not in str(raised.value) and API_KEY not in repr(raised.value)
    with pytest.raises(InvalidParameterError) as raised:
        client.stream_generate(PROMPT, model=MODEL, extra_headers={"Authorization": "x\n" + API_KEY})
    assert API_KEY not in str(raised.value)


async def test_key_is_not_logged_at_any_level(
    server: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmstreams")
    async with DashScopeClient(api_key=API_KEY, base_url=server.url, retry=FAST_RETRY) as client:
        await client.generate(PROMPT, model=MODEL)
        await client.stream_generate(PROMPT, model=MODEL).collect()
        errors: list[BaseException] = []
        # Injected failures are counted per request body: each case gets its own prompt.
        for number, headers in enumerate((knobs(http_status=503, fail_times=5),
                                          knobs(error_after=1), knobs(fail_code="InvalidApiKey"))):
            with pytest.raises(APIError) as raised:
                await client.stream_generate(
                    f"{PROMPT} {number}", model=MODEL, extra_headers=headers
                ).collect()
            errors.append(raised.value)
    async with DashScopeClient(api_key="sk-other-secret-key", base_url=server.url) as wrong:
        with pytest.raises(AuthenticationError) as raised:
            await wrong.generate(PROMPT, model=MODEL)
        errors.append(raised.value)
    assert any(record.levelno == logging.DEBUG for record in caplog.records)
    assert any(record.levelno == logging.WARNING for record in caplog.records)
    for record in caplog.records:
        text = record.getMessage()
        assert API_KEY not in text and "sk-other-secret-key" not in text
        assert "Bearer" not in text
    for error in errors:
        assert API_KEY not in str(error) and API_KEY not in repr(error)
        assert "sk-other-secret-key" not in str(error)


def test_exported_from_the_package() -> None:
    assert llmstreams.DashScopeClient is DashScopeClient
    assert "DashScopeClient" in llmstreams.__all__


async def test_server_wide_behaviour(server: MockServer, client: DashScopeClient) -> None:
    server.set_behaviour(Behaviour(chunk_chars=100))
    completion = await client.stream_generate(PROMPT, model=MODEL).collect()
    assert completion.chunk_count == 3
    assert len(completion.text) == 240
