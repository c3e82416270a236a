"""The OpenAI-compatible dialect over loopback, against the mock's five routes: Qianfan v2,
DashScope's compatible mode and a generic /v1 server, streamed and whole."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest

from llmstreams import (
    AuthenticationError,
    ChunkStream,
    Completion,
    ContentFilterError,
    DashScopeClient,
    InvalidParameterError,
    InvalidRequestError,
    NotFoundError,
    OpenAICompatibleClient,
    PermissionDeniedError,
    Pool,
    ProtocolError,
    QianfanClient,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
    StreamTimeoutError,
    Timeout,
)
from llmstreams.mock import BEHAVIOUR_HEADER, MockCredentials, MockServer

V2_KEY = "bce-v3/ALTAK-test/0123456789abcdef"
DASHSCOPE_KEY = "sk-test-key"
OPENAI_KEY = "sk-generic-key"
MESSAGES = [{"role": "user", "content": "Tell me about the Great Wall"}]
TOOLS = [{"type": "function", "function": {
    "name": "search", "description": "web search",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}}]
Client = OpenAICompatibleClient


@attrs.frozen
class Route:
    name: str
    model: str
    make: Callable[[str, Pool], Client]
    stats_key: str
    completions: bool = True

    def __repr__(self) -> str:
        return self.name


ROUTES = [
    Route("generic", "mock-model",
          lambda url, pool: OpenAICompatibleClient(base_url=url + "/v1", api_key=OPENAI_KEY, pool=pool),
          "openai"),
    Route("qianfan-v2", "ernie-speed-8k",
          lambda url, pool: OpenAICompatibleClient(
              vendor="qianfan", api_key=V2_KEY, base_url=url, pool=pool
          ), "qianfan.v2"),
    Route("dashscope-compatible", "qwen-plus",
          lambda url, pool: OpenAICompatibleClient(
              vendor="dashscope-compatible", api_key=DASHSCOPE_KEY, base_url=url, pool=pool
          ),
          "dashscope.compatible", completions=False),
]
COMPLETION_ROUTES = [route for route in ROUTES if route.completions]


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    async with Pool(max_retries=0) as shared:
        yield shared


def knobs(**values: Any) -> dict[str, str]:
    return {BEHAVIOUR_HEADER: "; ".join(f"{name}={value}" for name, value in values.items())}


async def collect(stream: ChunkStream) -> Completion:
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert sum(chunk.is_end for chunk in chunks) == 1 and chunks[-1].is_end
    assert [chunk.sentence_id for chunk in chunks] == list(range(len(chunks)))
    return stream.completion


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_chat_stream_and_whole_answer_agree(route: Route, server: MockServer, pool: Pool) -> None:
    client = route.make(server.url, pool)
    streamed = await collect(client.stream_chat(MESSAGES, model=route.model))
    whole = await client.chat(MESSAGES, model=route.model)
    assert len(streamed.text) == 240 and streamed.text == whole.text
    assert streamed.finish_reason == whole.finish_reason == "stop"
    assert streamed.usage is not None and streamed.usage == whole.usage
    assert streamed.is_complete and whole.is_complete
    assert streamed.chunk_count == 11  # ten pieces of 24 characters, then the end chunk
    assert streamed.model == route.model
    assert server.stats.requests[f"{route.stats_key}.chat"] == 2
    assert pool.stats().connections_in_use == 0


@pytest.mark.parametrize("route", COMPLETION_ROUTES, ids=repr)
async def test_completions_stream_and_whole_answer_agree(
    route: Route, server: MockServer, pool: Pool
) -> None:
    client = route.make(server.url, pool)
    assert isinstance(client, (QianfanClient, OpenAICompatibleClient))
    streamed = await collect(client.stream_complete("def fib(n):", model=route.model))
    whole = await client.complete("def fib(n):", model=route.model)
    assert len(streamed.text) == 240 and streamed.text == whole.text
    assert streamed.usage == whole.usage and streamed.usage is not None
    assert server.stats.requests[f"{route.stats_key}.completions"] == 2


async def test_usage_is_asked_by_default_and_can_be_left_out(server: MockServer, pool: Pool) -> None:
    client = ROUTES[0].make(server.url, pool)
    assert isinstance(client, OpenAICompatibleClient)
    asked = await collect(client.stream_chat(MESSAGES, model="m"))
    without = await collect(client.stream_chat(MESSAGES, model="m", include_usage=False))
    assert asked.usage is not None and without.usage is None
    assert asked.text == without.text


async def test_qianfan_v2_chunks_carry_the_request_id_and_appid_is_sent(server: MockServer, pool: Pool) -> None:
    client = OpenAICompatibleClient(
        vendor="qianfan", api_key=V2_KEY, extra_headers={"appid": "app-123"}, base_url=server.url,
        pool=pool,
    )
    stream = client.stream_chat(
        [{"role": "system", "content": "Be brief."}, *MESSAGES], model="ernie-speed-8k"
    )
    completion = await collect(stream)
    assert completion.request_id is not None and completion.request_id.startswith("as-")
    assert completion.id == completion.request_id
    assert client.provider == "qianfan" and client.base_url == server.url + "/v2"


async def test_qianfan_v2_trigger_phrase_clears_history(server: MockServer, pool: Pool) -> None:
    client = OpenAICompatibleClient(vendor="qianfan", api_key=V2_KEY, base_url=server.url, pool=pool)
    messages = [{"role": "user", "content": "tell me [[unsafe]] things"}]
    streamed = await collect(client.stream_chat(messages, model="ernie-speed-8k"))
    whole = await client.chat(messages, model="ernie-speed-8k")
    for completion in (streamed, whole):
        assert completion.finish_reason == "content_filter" and completion.text == ""
        assert completion.need_clear_history


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_reasoning_models_stream_their_reasoning(route: Route, server: MockServer, pool: Pool) -> None:
    client = route.make(server.url, pool)
    streamed = await collect(client.stream_chat(MESSAGES, model="deepseek-r1"))
    whole = await client.chat(MESSAGES, model="deepseek-r1")
    assert len(streamed.reasoning) == 120 and streamed.reasoning == whole.reasoning
    assert streamed.text == whole.text and len(streamed.text) == 240


async def test_dashscope_enable_thinking_streams_and_is_refused_whole_before_sending(
    server: MockServer, pool: Pool
) -> None:
    client = OpenAICompatibleClient(
        vendor="dashscope-compatible", api_key=DASHSCOPE_KEY, base_url=server.url, pool=pool
    )
    completion = await collect(client.stream_chat(MESSAGES, model="qwen-plus", enable_thinking=True))
    assert len(completion.reasoning) == 120
    with pytest.raises(InvalidParameterError) as caught:
        await client.chat(MESSAGES, model="qwen-plus", enable_thinking=True)
    assert caught.value.field == "enable_thinking"
    assert server.stats.requests["dashscope.compatible.chat"] == 1


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_tool_calls_are_assembled(route: Route, server: MockServer, pool: Pool) -> None:
    client = route.make(server.url, pool)
    streamed = await collect(client.stream_chat(
        MESSAGES, model=route.model, tools=TOOLS, tool_choice="required"
    ))
    whole = await client.chat(MESSAGES, model=route.model, tools=TOOLS, tool_choice="required")
    assert streamed.finish_reason == "tool_calls" and streamed.text == ""
    [call] = streamed.tool_calls
    assert call.name == "search" and call.id and call.arguments.startswith('{"query": ')
    assert streamed.tool_calls == whole.tool_calls


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("InvalidApiKey", AuthenticationError),
        ("AccessDenied", PermissionDeniedError),
        ("ModelNotFound", NotFoundError),
        ("InvalidParameter", InvalidRequestError),
        ("DataInspectionFailed", ContentFilterError),
        ("Throttling", RateLimitError),
        ("Throttling.AllocationQuota", RateLimitError),
        ("InternalError", ServerError),
        ("ModelUnavailable", ServerError),
    ],
)
@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_errors_before_the_stream_are_typed(
    route: Route, code: str, expected: type[Exception], server: MockServer, pool: Pool
) -> None:
    client = route.make(server.url, pool)
    with pytest.raises(expected) as caught:
        await collect(client.stream_chat(MESSAGES, model=route.model, extra_headers=knobs(fail_code=code)))
    error = caught.value
    assert error.provider == client.provider  # type: ignore[attr-defined]
    assert error.partial is not None and error.partial.text == ""  # type: ignore[attr-defined]
    if route.name != "generic":
        assert error.request_id  # type: ignore[attr-defined]


async def test_a_rate_limit_is_retried_honouring_retry_after(server: MockServer) -> None:
    async with OpenAICompatibleClient(base_url=server.url + "/v1", max_retries=2) as client:
        completion = await collect(client.stream_chat(
            MESSAGES, model="m",
            extra_headers=knobs(fail_code="Throttling", fail_times=2, retry_after=0),
        ))
    assert len(completion.text) == 240
    assert server.stats.requests["openai.chat"] == 3


async def test_an_exhausted_quota_is_not_retried(server: MockServer) -> None:
    async with OpenAICompatibleClient(base_url=server.url + "/v1", max_retries=2) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.chat(MESSAGES, model="m", extra_headers=knobs(fail_code="Throttling.AllocationQuota"))
    assert caught.value.code == "insufficient_quota" and not caught.value.retryable
    assert server.stats.requests["openai.chat"] == 1


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_an_error_mid_stream_keeps_the_text_so_far(route: Route, server: MockServer, pool: Pool) -> None:
    client = route.make(server.url, pool)
    stream = client.stream_chat(
        MESSAGES, model=route.model, extra_headers=knobs(error_after=3)
    )
    texts: list[str] = []
    with pytest.raises(ServerError) as caught:
        async with stream:
            async for chunk in stream:
                texts.append(chunk.text)
    assert caught.value.partial is not None and caught.value.partial.text == "".join(texts)
    assert len(texts) == 2 and not caught.value.retryable  # the role chunk counts as one event
    assert pool.stats().connections_in_use == 0


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_broken_streams_keep_their_partial(route: Route, server: MockServer, pool: Pool) -> None:
    client = route.make(server.url, pool)
    with pytest.raises(StreamInterruptedError) as interrupted:
        await collect(client.stream_chat(MESSAGES, model=route.model, extra_headers=knobs(disconnect_after=4)))
    assert interrupted.value.partial is not None and len(interrupted.value.partial.text) == 72
    with pytest.raises(ProtocolError):
        await collect(client.stream_chat(MESSAGES, model=route.model, extra_headers=knobs(malformed_after=2)))
    with pytest.raises(ProtocolError, match="text/html"):
        await collect(client.stream_chat(MESSAGES, model=route.model, extra_headers=knobs(non_sse_body="true")))


async def test_a_stalled_stream_times_out_with_its_partial(server: MockServer) -> None:
    async with OpenAICompatibleClient(
        base_url=server.url + "/v1", timeout=Timeout(idle=0.2), max_retries=0
    ) as client:
        with pytest.raises(StreamTimeoutError) as caught:
            await collect(client.stream_chat(MESSAGES, model="m", extra_headers=knobs(stall_after=3)))
    assert caught.value.partial is not None and len(caught.value.partial.text) == 48


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_leaving_early_releases_the_connection(route: Route, server: MockServer, pool: Pool) -> None:
    client = route.make(server.url, pool)
    async with client.stream_chat(MESSAGES, model=route.model, extra_headers=knobs(stall_after=3)) as stream:
        async for chunk in stream:
            assert chunk.text
            break
    assert pool.stats().connections_in_use == 0 and pool.stats().open_streams == 0
    stats = await server.wait_for(lambda stats: stats.streams_aborted == 1)
    assert stats.streams_completed == 0


async def test_wrong_keys_are_authentication_errors_that_never_show_the_key(pool: Pool) -> None:
    credentials = MockCredentials(qianfan_v2_api_key=V2_KEY, openai_api_key=OPENAI_KEY)
    async with MockServer(credentials=credentials) as server:
        wrong_v2 = "bce-v3/ALTAK-wrong/secret-wrong"
        qianfan = OpenAICompatibleClient(vendor="qianfan", api_key=wrong_v2, base_url=server.url, pool=pool)
        generic = OpenAICompatibleClient(base_url=server.url + "/v1", api_key="sk-wrong-key", pool=pool)
        for client, key in ((qianfan, wrong_v2), (generic, "sk-wrong-key")):
            with pytest.raises(AuthenticationError) as caught:
                await client.chat(MESSAGES, model="ernie-speed-8k")
            assert key not in str(caught.value) and key not in repr(caught.value)
            assert key not in repr(client)
        unauthenticated = OpenAICompatibleClient(base_url=server.url + "/v1", pool=pool)
        with pytest.raises(AuthenticationError):
            await unauthenticated.chat(MESSAGES, model="m")


async def test_no_key_is_fine_for_a_server_that_wants_none(server: MockServer, pool: Pool) -> None:
    client = OpenAICompatibleClient(base_url=server.url + "/v1", pool=pool)
    assert repr(client) == (
        f"<OpenAICompatibleClient vendor='openai' base_url='{server.url}/v1' no api_key>"
    )
    assert len((await client.chat(MESSAGES, model="m")).text) == 240


async def test_base_url_and_key_from_the_environment(
    server: MockServer, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    client = OpenAICompatibleClient(pool=pool)
    assert client.base_url == server.url + "/v1" and client.has_api_key
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(InvalidParameterError) as caught:
        OpenAICompatibleClient(pool=pool)
    assert caught.value.field == "base_url"


async def test_extra_body_and_extra_headers_reach_the_server(server: MockServer, pool: Pool) -> None:
    client = OpenAICompatibleClient(
        base_url=server.url + "/v1", pool=pool, extra_headers=knobs(answer_chars=48)
    )
    completion = await client.chat(MESSAGES, model="m", extra_body={"top_k": 20})
    assert len(completion.text) == 48
    call_knobs = knobs(answer_chars=24)
    assert len((await client.chat(MESSAGES, model="m", extra_headers=call_knobs)).text) == 24


async def test_max_tokens_cuts_the_answer(server: MockServer, pool: Pool) -> None:
    client = OpenAICompatibleClient(base_url=server.url + "/v1", pool=pool)
    completion = await collect(client.stream_chat(MESSAGES, model="m", max_tokens=5))
    assert completion.finish_reason == "length" and completion.usage is not None
    assert completion.usage.completion_tokens == 5


# Bad input is refused before anything is sent.


@pytest.mark.parametrize(
    ("make", "call", "field"),
    [
        (lambda url: OpenAICompatibleClient(vendor="qianfan", api_key=V2_KEY, base_url=url),
         lambda c: c.stream_chat(MESSAGES, model="m", endpoint="my_service"), "endpoint"),
        (lambda url: OpenAICompatibleClient(vendor="qianfan", api_key=V2_KEY, base_url=url),
         lambda c: c.stream_chat(MESSAGES, model="ERNIE-Speed-8K"), "model"),
        (lambda url: OpenAICompatibleClient(vendor="qianfan", api_key=V2_KEY, base_url=url),
         lambda c: c.stream_chat(MESSAGES, model="ernie-speed-8k", top_k=3), "top_k"),
        (lambda url: OpenAICompatibleClient(vendor="qianfan", api_key=V2_KEY, base_url=url),
         lambda c: c.stream_chat(MESSAGES, model="ernie-speed-8k", penalty_score=3), "penalty_score"),
        (lambda url: OpenAICompatibleClient(vendor="qianfan", api_key=V2_KEY, base_url=url),
         lambda c: c.stream_chat([*MESSAGES, {"role": "system", "content": "x"}], model="ernie-speed-8k"),
         "messages[1].role"),
        (lambda url: QianfanClient(api_key="v1-key", secret_key="v1-secret", base_url=url),
         lambda c: c.stream_chat(MESSAGES, model="ERNIE-Speed-8K", max_completion_tokens=5),
         "max_completion_tokens"),
        (lambda url: OpenAICompatibleClient(
            vendor="dashscope-compatible", api_key=DASHSCOPE_KEY, base_url=url
        ), lambda c: c.stream_chat(MESSAGES, model="qwen-plus", thinking_budget=0), "thinking_budget"),
        (lambda url: OpenAICompatibleClient(base_url=url + "/v1"),
         lambda c: c.stream_chat(MESSAGES, model="m", n=2), "n"),
        (lambda url: OpenAICompatibleClient(base_url=url + "/v1"),
         lambda c: c.stream_chat([{"role": "tool", "content": "42"}], model="m"), "messages[0].tool_call_id"),
        (lambda url: OpenAICompatibleClient(base_url=url + "/v1"),
         lambda c: c.stream_chat(MESSAGES, model="m", extra_headers={"Authorization": "x"}), "extra_headers"),
    ],
)
async def test_bad_calls_are_refused_before_sending(
    make: Callable[[str], Any], call: Callable[[Any], Any], field: str, server: MockServer
) -> None:
    async with make(server.url) as client:
        with pytest.raises(InvalidParameterError) as caught:
            call(client)
    assert caught.value.field == field
    assert sum(server.stats.requests.values()) == 0


@pytest.mark.parametrize(
    ("make", "field", "names"),
    [
        (lambda: QianfanClient(api_key=V2_KEY), "api_key", "OpenAICompatibleClient(vendor='qianfan')"),
        (lambda: QianfanClient(api_key=V2_KEY, secret_key="v1-secret"), "api_key", "vendor='qianfan'"),
        (lambda: OpenAICompatibleClient(vendor="qianfan", api_key="v1-secret"), "api_key", "bce-v3/"),
        (lambda: DashScopeClient(api_key=DASHSCOPE_KEY, base_url="https://h.example/compatible-mode/v1"),
         "base_url", "vendor='dashscope-compatible'"),
    ],
)
def test_a_credential_for_another_api_is_refused_naming_the_right_client(
    make: Callable[[], Any], field: str, names: str
) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        make()
    assert caught.value.field == field and names in str(caught.value)
    for secret in ("v1-secret", V2_KEY):
        assert secret not in str(caught.value)


async def test_the_v2_key_variable_feeds_the_qianfan_vendor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QIANFAN_BASE_URL", raising=False)
    monkeypatch.setenv("QIANFAN_API_KEY", V2_KEY)
    async with OpenAICompatibleClient(vendor="qianfan") as client:
        assert client.has_api_key and client.base_url == "https://qianfan.baidubce.com/v2"
        assert V2_KEY not in repr(client)


@pytest.mark.parametrize(("knob", "status"), [("fail_code=336005", None), ("http_status=404", 404)])
async def test_a_v1_api_that_is_gone_says_how_to_move_to_v2(
    knob: str, status: int | None, server: MockServer, pool: Pool
) -> None:
    client = QianfanClient(api_key="v1-key", secret_key="v1-secret", base_url=server.url, pool=pool)
    with pytest.raises(NotFoundError, match="move to v2") as caught:
        await client.chat(MESSAGES, model="ERNIE-Speed-8K", extra_headers={BEHAVIOUR_HEADER: knob})
    assert "bce-v3/" in str(caught.value)
    if status is not None:
        assert caught.value.http_status == status


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_a_body_trickling_byte_by_byte_gives_the_same_answer(
    route: Route, server: MockServer, pool: Pool
) -> None:
    client = route.make(server.url, pool)
    trickled = await collect(client.stream_chat(
        MESSAGES, model="deepseek-r1", extra_headers=knobs(trickle="true")
    ))
    whole = await client.chat(MESSAGES, model="deepseek-r1")
    assert (trickled.text, trickled.reasoning, trickled.usage) == (whole.text, whole.reasoning, whole.usage)


# The official openai SDK, unchanged but for base_url, gets what llmstreams gets.

SDK_BASES = {"generic": ("/v1", OPENAI_KEY), "qianfan-v2": ("/v2", V2_KEY),
             "dashscope-compatible": ("/compatible-mode/v1", DASHSCOPE_KEY)}


@pytest.mark.parametrize("route", ROUTES, ids=repr)
@pytest.mark.parametrize("reasons", [True, False], ids=["deepseek-r1", "plain-model"])
async def test_the_openai_sdk_streams_what_llmstreams_streams(
    route: Route, reasons: bool, server: MockServer, pool: Pool
) -> None:
    openai = pytest.importorskip("openai")
    model = "deepseek-r1" if reasons else route.model
    prefix, key = SDK_BASES[route.name]
    sdk = openai.AsyncOpenAI(base_url=server.url + prefix, api_key=key, max_retries=0)
    text, reasoning = [], []
    usage = None
    async with sdk:
        async for event in await sdk.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        ):
            if event.usage is not None:
                usage = event.usage
            for choice in event.choices:
                text.append(choice.delta.content or "")
                reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
    completion = await collect(route.make(server.url, pool).stream_chat(MESSAGES, model=model))
    assert completion.text == "".join(text) and len(completion.text) == 240
    assert completion.reasoning == "".join(reasoning)
    assert usage is not None and completion.usage is not None
    assert completion.usage.total_tokens == usage.total_tokens


@pytest.mark.parametrize("route", ROUTES, ids=repr)
async def test_the_openai_sdk_calls_the_tools_llmstreams_assembles(
    route: Route, server: MockServer, pool: Pool
) -> None:
    openai = pytest.importorskip("openai")
    prefix, key = SDK_BASES[route.name]
    async with openai.AsyncOpenAI(base_url=server.url + prefix, api_key=key, max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(
            model=route.model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
        )
    [sdk_call] = answer.choices[0].message.tool_calls
    completion = await collect(route.make(server.url, pool).stream_chat(
        MESSAGES, model=route.model, tools=TOOLS, tool_choice="required"
    ))
    [call] = completion.tool_calls
    assert (call.id, call.name, call.arguments) == (
        sdk_call.id, sdk_call.function.name, sdk_call.function.arguments
    )


async def test_switching_vendors_is_switching_the_client(server: MockServer, pool: Pool) -> None:
    """Every client takes stream_chat(messages, model=...) and chat(messages, model=...)."""
    clients: list[tuple[Client, str]] = [
        (OpenAICompatibleClient(vendor="qianfan", api_key=V2_KEY, base_url=server.url, pool=pool),
         "ernie-speed-8k"),
        (QianfanClient(api_key="v1-key", secret_key="v1-secret", base_url=server.url, pool=pool),
         "ERNIE-Speed-8K"),
        (OpenAICompatibleClient(
            vendor="dashscope-compatible", api_key=DASHSCOPE_KEY, base_url=server.url, pool=pool
        ), "qwen-plus"),
        (DashScopeClient(api_key=DASHSCOPE_KEY, base_url=server.url, pool=pool), "qwen-plus"),
        (OpenAICompatibleClient(base_url=server.url + "/v1", pool=pool), "any-model"),
    ]
    for client, model in clients:
        streamed = await collect(client.stream_chat(MESSAGES, model=model))
        whole = await client.chat(MESSAGES, model=model)
        assert len(streamed.text) == 240 and streamed.text == whole.text, client
        assert streamed.is_complete and whole.is_complete
    assert server.stats.requests["qianfan.chat"] == 2
    assert server.stats.requests["dashscope.generation"] == 2
