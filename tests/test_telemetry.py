"""OpenTelemetry GenAI spans and metrics, as an application that set up the SDK sees them.

The SDK's in-memory span exporter and metric reader are the global providers, set once for the
test session (OpenTelemetry lets a process set them only once); each test starts from an empty
exporter and a drained reader. Every stream talks to the mock server over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmstreams import (
    APIError,
    ChunkStream,
    Completion,
    DashScopeClient,
    LLMStreamsError,
    OpenAICompatibleClient,
    Pool,
    QianfanClient,
    RetryPolicy,
    StreamInterruptedError,
    Timeout,
    fan_out,
)
from llmstreams.client import BaseClient
from llmstreams.mock import Behaviour, MockCredentials, MockServer
from llmstreams.sync import SyncClient, run
from llmstreams.telemetry import configure_from_environment, disabled_by_environment, provider_name
from llmstreams.transport import HttpRequest
from tests.support import ROOT, LinesExchange, run_example, serving

# Distinctive enough that finding one anywhere in the telemetry can only be a leak.
V1_API_KEY = "tel-v1-apikey-7Qz"
V1_SECRET_KEY = "tel-v1-secret-9Wx"
V2_API_KEY = "bce-v3/ALTAK-tel4Kp/tel-v2-secret-3Jd"
DASHSCOPE_KEY = "sk-tel-dashscope-5Rt"
OPENAI_KEY = "sk-tel-openai-8Lm"
SECRETS = (V1_API_KEY, V1_SECRET_KEY, V2_API_KEY, "tel-v2-secret-3Jd", DASHSCOPE_KEY, OPENAI_KEY)
CREDENTIALS = MockCredentials(
    api_key=V1_API_KEY, secret_key=V1_SECRET_KEY, qianfan_v2_api_key=V2_API_KEY,
    dashscope_api_key=DASHSCOPE_KEY, openai_api_key=OPENAI_KEY,
)
FAST_RETRY = RetryPolicy(max_retries=2, backoff_base=0.001, backoff_max=0.001)
USER = [{"role": "user", "content": "Please introduce The Great Wall"}]


class Telemetry:
    """What the application's SDK received."""

    def __init__(self, exporter: InMemorySpanExporter, reader: InMemoryMetricReader) -> None:
        self.exporter = exporter
        self.reader = reader

    def reset(self) -> None:
        self.exporter.clear()
        self.reader.get_metrics_data()

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self) -> ReadableSpan:
        spans = self.spans()
        assert len(spans) == 1, [span.name for span in spans]
        return spans[0]

    def points(self) -> dict[str, list[Any]]:
        """Each metric's data points since the last call (the reader is set to deltas)."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def everything_as_text(self) -> str:
        spans = "\n".join(span.to_json() for span in self.spans())
        data = self.reader.get_metrics_data()
        return spans + ("" if data is None else data.to_json())


@pytest.fixture(scope="session")
def sdk() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    meter_provider = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    yield Telemetry(exporter, reader)
    # The providers stay the global ones to the session's end (they cannot be unset).
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def telemetry(sdk: Telemetry) -> Telemetry:
    sdk.reset()
    return sdk


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer(credentials=CREDENTIALS) as mock:
        yield mock


def knobs(**values: object) -> dict[str, str]:
    return {"X-Mock-Behaviour": "; ".join(f"{name}={value}" for name, value in values.items())}


# name -> (make the client, start a stream, operation, request model, provider name)
Case = tuple[Callable[..., BaseClient], Callable[[Any], ChunkStream], str, str, str]
CASES: dict[str, Case] = {
    "qianfan-v1-chat": (
        lambda url, **options: QianfanClient(api_key=V1_API_KEY, secret_key=V1_SECRET_KEY, base_url=url, **options),
        lambda client: client.stream_chat(USER, model="ERNIE-Speed-8K", temperature=0.5, top_p=0.9),
        "chat", "ERNIE-Speed-8K", "baidu.qianfan",
    ),
    "qianfan-v1-completions": (
        lambda url, **options: QianfanClient(api_key=V1_API_KEY, secret_key=V1_SECRET_KEY, base_url=url, **options),
        lambda client: client.stream_complete("def add(a, b):", model="CodeLlama-7b-Instruct"),
        "text_completion", "CodeLlama-7b-Instruct", "baidu.qianfan",
    ),
    "qianfan-v2": (
        lambda url, **options: OpenAICompatibleClient(
            vendor="qianfan", api_key=V2_API_KEY, base_url=url, **options
        ),
        lambda client: client.stream_chat(
            USER, model="ernie-speed-8k", temperature=0.5, top_p=0.9, stop=["END"],
            max_completion_tokens=500,
        ),
        "chat", "ernie-speed-8k", "baidu.qianfan",
    ),
    "dashscope-native-generate": (
        lambda url, **options: DashScopeClient(api_key=DASHSCOPE_KEY, base_url=url, **options),
        lambda client: client.stream_generate(
            "Tell me about rivers", model="billa-7b-sft-v1", max_tokens=500, temperature=0.5,
            top_p=0.9, stop="END",
        ),
        "text_completion", "billa-7b-sft-v1", "alibaba_cloud.dashscope",
    ),
    "dashscope-native-chat": (
        lambda url, **options: DashScopeClient(api_key=DASHSCOPE_KEY, base_url=url, **options),
        lambda client: client.stream_chat(USER, model="qwen-turbo"),
        "chat", "qwen-turbo", "alibaba_cloud.dashscope",
    ),
    "dashscope-openai": (
        lambda url, **options: OpenAICompatibleClient(
            vendor="dashscope-compatible", api_key=DASHSCOPE_KEY, base_url=url, **options
        ),
        lambda client: client.stream_chat(USER, model="qwen-turbo", max_tokens=500),
        "chat", "qwen-turbo", "alibaba_cloud.dashscope",
    ),
    "openai-chat": (
        lambda url, **options: OpenAICompatibleClient(base_url=url + "/v1", api_key=OPENAI_KEY, **options),
        lambda client: client.stream_chat(
            USER, model="qwen2.5-7b-instruct", max_tokens=500, temperature=0.5, top_p=0.9,
            stop=["END"],
        ),
        "chat", "qwen2.5-7b-instruct", "openai",
    ),
    "openai-completions": (
        lambda url, **options: OpenAICompatibleClient(base_url=url + "/v1", api_key=OPENAI_KEY, **options),
        lambda client: client.stream_complete("Once upon a time", model="qwen2.5-7b-instruct"),
        "text_completion", "qwen2.5-7b-instruct", "openai",
    ),
}


def port_of(server: MockServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("name", list(CASES))
async def test_a_whole_stream_is_one_span_and_four_metrics(
    name: str, server: MockServer, telemetry: Telemetry
) -> None:
    make_client, start, operation, model, provider = CASES[name]
    async with make_client(server.url) as client, start(client) as stream:
        completion = await stream.collect()
    assert completion.is_complete and completion.usage is not None

    span = telemetry.span()
    assert span.name == f"{operation} {model}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == operation
    assert attributes["gen_ai.provider.name"] == provider
    assert attributes["gen_ai.request.model"] == model
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == port_of(server)
    assert attributes["gen_ai.response.id"] == (completion.id or completion.request_id)
    assert attributes["gen_ai.response.finish_reasons"] == (completion.finish_reason,)
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert attributes["llmstreams.outcome"] == "complete"
    assert attributes["llmstreams.chunks"] == completion.chunk_count
    if completion.model is not None:
        assert attributes["gen_ai.response.model"] == completion.model
    first = attributes["gen_ai.response.time_to_first_chunk"]
    assert isinstance(first, float)
    assert span.start_time is not None and span.end_time is not None
    assert 0 < first <= (span.end_time - span.start_time) / 1e9
    assert "error.type" not in attributes

    points = telemetry.points()
    expected = {
        "gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
        "gen_ai.request.model": model, "server.address": "127.0.0.1",
        "server.port": port_of(server),
    }
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.count == 1
    assert expected.items() <= dict(duration.attributes).items()
    assert list(duration.explicit_bounds[:3]) == [0.01, 0.02, 0.04]
    tokens = {point.attributes["gen_ai.token.type"]: point for point in points["gen_ai.client.token.usage"]}
    assert tokens["input"].sum == completion.usage.prompt_tokens
    assert tokens["output"].sum == completion.usage.completion_tokens
    assert list(tokens["input"].explicit_bounds[:4]) == [1, 4, 16, 64]
    (first_token,) = points["gen_ai.server.time_to_first_token"]
    assert first_token.count == 1 and first_token.sum == pytest.approx(first)
    if completion.usage.completion_tokens > 1:
        (per_token,) = points["gen_ai.server.time_per_output_token"]
        assert per_token.count == 1 and 0 <= per_token.sum <= duration.sum


async def test_times_on_a_paced_stream(server: MockServer, telemetry: Telemetry) -> None:
    """Chunks that arrive apart: the time per output token is the time after the first chunk
    shared by the tokens after the first."""
    async with OpenAICompatibleClient(base_url=server.url + "/v1", api_key=OPENAI_KEY) as client:
        stream = client.stream_chat(
            USER, model="qwen2.5-7b-instruct", extra_headers=knobs(chunks_per_second=200)
        )
        async with stream:
            completion = await stream.collect()
    assert completion.usage is not None
    span = telemetry.span()
    first = dict(span.attributes or {})["gen_ai.response.time_to_first_chunk"]
    points = telemetry.points()
    (duration,) = points["gen_ai.client.operation.duration"]
    (per_token,) = points["gen_ai.server.time_per_output_token"]
    assert duration.sum > first
    assert per_token.sum == pytest.approx(
        (duration.sum - first) / (completion.usage.completion_tokens - 1)
    )


async def test_request_parameters_are_on_the_span(server: MockServer, telemetry: Telemetry) -> None:
    make_client, start, *_ = CASES["openai-chat"]
    async with make_client(server.url) as client, start(client) as stream:
        await stream.collect()
    attributes = dict(telemetry.span().attributes or {})
    assert attributes["gen_ai.request.max_tokens"] == 500
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.top_p"] == 0.9
    assert attributes["gen_ai.request.stop_sequences"] == ("END",)


async def test_a_whole_answer_without_streaming_has_no_first_chunk_time(
    server: MockServer, telemetry: Telemetry
) -> None:
    async with DashScopeClient(api_key=DASHSCOPE_KEY, base_url=server.url) as client:
        completion = await client.generate("Tell me about rivers", model="billa-7b-sft-v1")
    attributes = dict(telemetry.span().attributes or {})
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens  # type: ignore[union-attr]
    assert "gen_ai.response.time_to_first_chunk" not in attributes
    points = telemetry.points()
    assert points["gen_ai.client.operation.duration"][0].count == 1
    assert "gen_ai.server.time_to_first_token" not in points


class WatchingExchange(LinesExchange):
    """Notes the span current while each request is built (where an HTTP client's own
    instrumentation would start its span)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.current_span_ids: list[int] = []

    async def build_request(self) -> HttpRequest:
        self.current_span_ids.append(trace.get_current_span().get_span_context().span_id)
        return await super().build_request()


async def test_the_span_is_the_current_one_s_child_and_current_while_sending(
    telemetry: Telemetry,
) -> None:
    async def lines(request: web.Request) -> web.Response:
        return web.Response(
            body=b'{"text": "a", "end": false}\n{"text": "b", "end": true}\n',
            content_type="application/x-ndjson",
        )

    app = web.Application()
    app.router.add_post("/gen", lines)
    async with serving(app) as url, Pool() as pool:
        exchange = WatchingExchange(url + "/gen")
        with trace.get_tracer("the application").start_as_current_span("handle request") as parent:
            stream = ChunkStream(pool, exchange, timeout=Timeout(), retry=FAST_RETRY)
            async with stream:
                assert [chunk.text async for chunk in stream] == ["a", "b"]
            assert trace.get_current_span() is parent
    generation, application = telemetry.spans()
    assert generation.parent is not None
    assert generation.parent.span_id == application.context.span_id  # type: ignore[union-attr]
    assert exchange.current_span_ids == [generation.context.span_id]  # type: ignore[union-attr]
    # An exchange that tells nothing of itself: the provider's own name, the default operation.
    assert generation.name == "chat"
    assert dict(generation.attributes or {})["gen_ai.provider.name"] == "lines"


async def test_leaving_async_with_early_ends_the_span(server: MockServer, telemetry: Telemetry) -> None:
    client = OpenAICompatibleClient(base_url=server.url + "/v1", api_key=OPENAI_KEY)
    async with client, client.stream_chat(USER, model="qwen2.5-7b-instruct") as stream:
        async for _ in stream:
            break
    span = telemetry.span()
    attributes = dict(span.attributes or {})
    assert attributes["llmstreams.outcome"] == "closed"
    assert attributes["llmstreams.chunks"] == 1
    assert span.status.status_code is StatusCode.UNSET
    assert "gen_ai.response.finish_reasons" not in attributes
    assert telemetry.points()["gen_ai.client.operation.duration"][0].count == 1


async def test_a_stream_dropped_without_closing_ends_its_span(
    server: MockServer, telemetry: Telemetry
) -> None:
    async with OpenAICompatibleClient(base_url=server.url + "/v1", api_key=OPENAI_KEY) as client:
        stream = client.stream_chat(USER, model="qwen2.5-7b-instruct")
        await stream.__anext__()
        with pytest.warns(ResourceWarning, match="was not closed"):
            del stream
            gc.collect()
    attributes = dict(telemetry.span().attributes or {})
    assert attributes["llmstreams.outcome"] == "abandoned"
    assert attributes["llmstreams.chunks"] == 1


async def test_a_mid_stream_error_marks_the_span_and_keeps_the_partial_length(
    server: MockServer, telemetry: Telemetry
) -> None:
    async with DashScopeClient(api_key=DASHSCOPE_KEY, base_url=server.url) as client:
        stream = client.stream_generate(
            "Tell me about rivers", model="billa-7b-sft-v1",
            extra_headers=knobs(disconnect_after=3, chunk_chars=10),
        )
        with pytest.raises(StreamInterruptedError) as caught:
            async with stream:
                await stream.collect()
    partial = caught.value.partial
    assert partial is not None and len(partial.text) == 30
    span = telemetry.span()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is not None and "broke off" in span.status.description
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "StreamInterruptedError"
    assert attributes["llmstreams.outcome"] == "error"
    assert attributes["llmstreams.partial.chars"] == 30
    points = telemetry.points()
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.attributes["error.type"] == "StreamInterruptedError"
    assert "gen_ai.server.time_to_first_token" not in points


async def test_an_error_event_is_the_span_error_type(server: MockServer, telemetry: Telemetry) -> None:
    async with QianfanClient(api_key=V1_API_KEY, secret_key=V1_SECRET_KEY, base_url=server.url) as client:
        stream = client.stream_chat(
            USER, model="ERNIE-Speed-8K", extra_headers=knobs(error_after=2, error_code=336100)
        )
        with pytest.raises(APIError) as caught:
            async with stream:
                await stream.collect()
    attributes = dict(telemetry.span().attributes or {})
    assert attributes["error.type"] == type(caught.value).__qualname__
    assert attributes["llmstreams.chunks"] == 2
    assert attributes["llmstreams.partial.chars"] == len(caught.value.partial.text)  # type: ignore[union-attr]


async def test_each_retry_is_an_event_with_its_delay_and_cause(
    server: MockServer, telemetry: Telemetry
) -> None:
    async with DashScopeClient(api_key=DASHSCOPE_KEY, base_url=server.url, retry=FAST_RETRY) as client:
        stream = client.stream_generate(
            "Tell me about rivers", model="billa-7b-sft-v1",
            extra_headers=knobs(http_status=429, fail_times=2),
        )
        async with stream:
            completion = await stream.collect()
    assert completion.is_complete and stream.attempts == 3
    span = telemetry.span()
    retries = [event for event in span.events if event.name == "llmstreams.retry"]
    assert [event.attributes["llmstreams.attempt"] for event in retries] == [2, 3]  # type: ignore[index]
    for event in retries:
        attributes = dict(event.attributes or {})
        assert attributes["error.type"] == "RateLimitError"
        assert attributes["http.response.status_code"] == 429
        assert attributes["llmstreams.retry.delay"] == pytest.approx(0.001, abs=0.01)
    assert dict(span.attributes or {})["llmstreams.outcome"] == "complete"


async def test_a_resend_after_renewing_a_token_is_an_event_too(
    server: MockServer, telemetry: Telemetry
) -> None:
    async with QianfanClient(api_key=V1_API_KEY, secret_key=V1_SECRET_KEY, base_url=server.url) as client:
        await client.chat(USER, model="ERNIE-Speed-8K")
        server.expire_tokens()
        completion = await client.chat(USER, model="ERNIE-Speed-8K")
    assert completion.is_complete
    first, second = telemetry.spans()
    assert [event.name for event in first.events] == []
    (event,) = second.events
    assert dict(event.attributes or {}) == {
        "llmstreams.attempt": 2, "llmstreams.retry.delay": 0.0,
        "error.type": "AuthenticationError", "http.response.status_code": 200,
        "llmstreams.error.code": "111",
    }


async def test_cancelling_the_reading_task_ends_the_span(server: MockServer, telemetry: Telemetry) -> None:
    reading = asyncio.Event()

    async def read(client: OpenAICompatibleClient) -> None:
        async with client.stream_chat(
            USER, model="qwen2.5-7b-instruct", extra_headers=knobs(stall_after=2)
        ) as stream:
            async for _ in stream:
                reading.set()

    async with OpenAICompatibleClient(base_url=server.url + "/v1", api_key=OPENAI_KEY) as client:
        task = asyncio.create_task(read(client))
        await reading.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    span = telemetry.span()
    attributes = dict(span.attributes or {})
    assert attributes["llmstreams.outcome"] == "cancelled"
    assert attributes["error.type"] == "CancelledError"
    assert attributes["llmstreams.chunks"] >= 1
    assert span.status.status_code is StatusCode.ERROR


async def test_a_fan_out_of_many_is_one_span_each(server: MockServer, telemetry: Telemetry) -> None:
    async with QianfanClient(api_key=V1_API_KEY, secret_key=V1_SECRET_KEY, base_url=server.url) as client:
        outcomes = await fan_out(
            [
                lambda i=i: client.stream_chat(
                    [{"role": "user", "content": f"question {i}"}], model="ERNIE-Speed-8K"
                )
                for i in range(40)
            ],
            concurrency=8,
        )
    completions = [outcome.completion for outcome in outcomes]
    assert all(isinstance(completion, Completion) and completion.is_complete for completion in completions)
    spans = telemetry.spans()
    assert len(spans) == 40
    assert {dict(span.attributes or {})["gen_ai.response.id"] for span in spans} == {
        completion.id for completion in completions if completion is not None
    }
    assert telemetry.points()["gen_ai.client.operation.duration"][0].count == 40


async def test_a_fan_out_that_stops_early_ends_every_span(server: MockServer, telemetry: Telemetry) -> None:
    async with DashScopeClient(api_key=DASHSCOPE_KEY, base_url=server.url, max_retries=0) as client:

        def job(i: int) -> ChunkStream:
            behaviour = knobs(http_status=400) if i == 5 else knobs(chunks_per_second=50)
            return client.stream_generate(f"question {i}", model="billa-7b-sft-v1", extra_headers=behaviour)

        with pytest.raises(APIError):
            await fan_out([lambda i=i: job(i) for i in range(30)], concurrency=10, fail_fast=True)
    spans = telemetry.spans()
    sent = sum(server.stats.requests.values())
    assert len(spans) == sent
    outcomes = [dict(span.attributes or {})["llmstreams.outcome"] for span in spans]
    assert outcomes.count("error") >= 1
    assert set(outcomes) <= {"error", "cancelled", "closed", "complete"}


@pytest.fixture
def mock_in_the_private_loop() -> Iterator[MockServer]:
    # Served from the sync door's loop: the test's own thread blocks on each sync call.
    server = MockServer(credentials=CREDENTIALS)
    run(server.start())
    yield server
    run(server.close())


def test_the_sync_door_records_its_generations(
    mock_in_the_private_loop: MockServer, telemetry: Telemetry
) -> None:
    url = mock_in_the_private_loop.url + "/v1"
    tracer = trace.get_tracer("the application")
    with SyncClient(OpenAICompatibleClient(base_url=url, api_key=OPENAI_KEY)) as client:
        with tracer.start_as_current_span("handle request") as parent:
            completion = client.chat(USER, model="qwen2.5-7b-instruct")
        text = "".join(chunk.text for chunk in client.stream_chat(USER, model="qwen2.5-7b-instruct"))
    assert text == completion.text
    whole, application, streamed = telemetry.spans()
    assert application.name == "handle request"
    assert [whole.name, streamed.name] == ["chat qwen2.5-7b-instruct"] * 2
    for span in (whole, streamed):
        assert dict(span.attributes or {})["llmstreams.outcome"] == "complete"
    # The calling thread's current span is the parent, as with `await`.
    assert whole.parent is not None and whole.parent.span_id == parent.get_span_context().span_id
    assert streamed.parent is None


async def test_no_credential_appears_anywhere(
    server: MockServer, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """Every provider, whole, retried and broken mid-way: spans, events, metrics and logs."""
    caplog.set_level("DEBUG", logger="llmstreams")
    behaviours = [
        Behaviour(),
        Behaviour(http_status=429, fail_times=1, error_after=2),
        Behaviour(disconnect_after=1),
    ]
    for behaviour in behaviours:
        server.set_behaviour(behaviour)
        for make_client, start, *_ in CASES.values():
            async with make_client(server.url, retry=FAST_RETRY) as client, start(client) as stream:
                with contextlib.suppress(LLMStreamsError):
                    await stream.collect()
    spans = telemetry.spans()
    assert len(spans) == len(behaviours) * len(CASES)
    assert any(event.name == "llmstreams.retry" for span in spans for event in span.events)
    text = telemetry.everything_as_text() + caplog.text
    assert "gen_ai.client.operation.duration" in text and "StreamInterruptedError" in text
    for secret in SECRETS:
        assert secret not in text


async def test_a_pool_with_telemetry_off_records_nothing(server: MockServer, telemetry: Telemetry) -> None:
    async with Pool(telemetry=False) as pool:
        client = OpenAICompatibleClient(base_url=server.url + "/v1", api_key=OPENAI_KEY, pool=pool)
        async with client.stream_chat(USER, model="qwen2.5-7b-instruct") as stream:
            await stream.collect()
    assert telemetry.spans() == []
    assert telemetry.points() == {}


def test_the_environment_switches() -> None:
    assert disabled_by_environment({"LLMSTREAMS_TELEMETRY": "off"})
    assert disabled_by_environment({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests, llmstreams"})
    assert not disabled_by_environment({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests"})
    assert not disabled_by_environment({"LLMSTREAMS_TELEMETRY": "on"})
    assert provider_name("qianfan") == "baidu.qianfan"
    assert provider_name("Some-Vendor") == "some-vendor"


def test_the_commands_leave_an_sdk_already_set_up_as_it_is(
    telemetry: Telemetry, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = trace.get_tracer_provider()
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:pw@127.0.0.1:4318"}
    assert configure_from_environment(endpoint) is None
    assert trace.get_tracer_provider() is provider
    assert capsys.readouterr().err == (
        "llmstreams: telemetry: to the OpenTelemetry SDK this process set up already "
        "(http://user:***@127.0.0.1:4318 is not used here)\n"
    )


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "LLMSTREAMS_TELEMETRY": "off"},
    ],
)
def test_the_commands_set_up_nothing_unless_asked(
    environment: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert configure_from_environment(environment) is None
    assert capsys.readouterr().err == ""


APPLICATION = """
import asyncio, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from llmstreams import OpenAICompatibleClient

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def main():
    async with OpenAICompatibleClient(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2]) as client:
        await client.chat([{"role": "user", "content": "hi"}], model="m")

asyncio.run(main())
print(len(exporter.get_finished_spans()))
"""

WITHOUT_OPENTELEMETRY = """
import asyncio, json, sys
from llmstreams import OpenAICompatibleClient

async def main():
    async with OpenAICompatibleClient(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2]) as client:
        await client.chat([{"role": "user", "content": "hi"}], model="m")

asyncio.run(main())
print(json.dumps(sorted(name for name in sys.modules if name.startswith("opentelemetry"))))
"""


@pytest.mark.parametrize(
    ("variables", "spans"),
    [
        ({}, "1"),
        ({"LLMSTREAMS_TELEMETRY": "off"}, "0"),
        ({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "flask,llmstreams"}, "0"),
    ],
)
async def test_the_environment_opt_out(server: MockServer, variables: dict[str, str], spans: str) -> None:
    environment = {
        name: value for name, value in os.environ.items()
        if name not in ("LLMSTREAMS_TELEMETRY", "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")
    }
    output = await run_example(APPLICATION.replace("sys.argv[1]", repr(server.url)).replace("sys.argv[2]", repr(OPENAI_KEY)), {**environment, **variables})
    assert output.strip() == spans


@pytest.mark.parametrize("imported", ["", "import opentelemetry.trace, opentelemetry.metrics"])
async def test_llmstreams_never_imports_opentelemetry(server: MockServer, imported: str) -> None:
    """Without OpenTelemetry, and with only its API (no SDK): a generation goes as before, and
    llmstreams imports none of it."""
    script = WITHOUT_OPENTELEMETRY.replace("sys.argv[1]", repr(server.url)).replace(
        "sys.argv[2]", repr(OPENAI_KEY)
    )
    modules = json.loads(await run_example(imported + "\n" + script, dict(os.environ)))
    if imported:
        assert "opentelemetry.trace" in modules
        assert not [name for name in modules if name.startswith("opentelemetry.sdk")]
    else:
        assert modules == []


def key_values(pairs: Any) -> dict[str, Any]:
    """OTLP `KeyValue`s as a dict of plain values."""
    values: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        value = getattr(pair.value, kind)
        if kind == "array_value":
            value = tuple(getattr(item, item.WhichOneof("value")) for item in value.values)
        values[pair.key] = value
    return values


async def test_the_batch_command_exports_spans_and_metrics_over_otlp_http(
    server: MockServer, tmp_path: Path
) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    bodies: dict[str, list[bytes]] = {"traces": [], "metrics": []}

    async def receive(request: web.Request) -> web.Response:
        signal = request.match_info["signal"]
        bodies[signal].append(await request.read())
        answer = ExportTraceServiceResponse() if signal == "traces" else ExportMetricsServiceResponse()
        return web.Response(body=answer.SerializeToString(), content_type="application/x-protobuf")

    receiver = web.Application()
    receiver.router.add_post("/v1/{signal}", receive)
    source = tmp_path / "input.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"question {i}"}) + "\n" for i in range(5)))
    output = tmp_path / "output.jsonl"
    async with serving(receiver) as receiver_url:
        environment = {
            name: value for name, value in os.environ.items() if not name.startswith("OTEL_")
        }
        environment.update(
            DASHSCOPE_API_KEY=DASHSCOPE_KEY, PYTHONPATH=str(ROOT),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver_url, OTEL_SERVICE_NAME="batch-under-test",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmstreams", "batch", str(source), "-o", str(output),
            "--provider", "dashscope", "--model", "billa-7b-sft-v1", "--base-url", server.url,
            env=environment, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    said = [line for line in stderr.decode().splitlines() if "telemetry" in line]
    assert said == [
        f"llmstreams: telemetry: GenAI spans and metrics to {receiver_url} (OTLP/HTTP), "
        "service batch-under-test"
    ]
    assert len(output.read_text().splitlines()) == 5

    spans = []
    for body in bodies["traces"]:
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            assert key_values(resource_spans.resource.attributes)["service.name"] == "batch-under-test"
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "llmstreams"
                spans.extend(scope_spans.spans)
    assert len(spans) == 5
    for span in spans:
        assert span.name == "text_completion billa-7b-sft-v1"
        assert span.kind == span.SPAN_KIND_CLIENT
        attributes = key_values(span.attributes)
        assert attributes["gen_ai.provider.name"] == "alibaba_cloud.dashscope"
        assert attributes["gen_ai.request.model"] == "billa-7b-sft-v1"
        assert attributes["server.port"] == port_of(server)
        assert attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["llmstreams.outcome"] == "complete"
    metric_names = {
        metric.name
        for body in bodies["metrics"]
        for resource_metrics in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }
    assert metric_names == {
        "gen_ai.client.operation.duration", "gen_ai.client.token.usage",
        "gen_ai.server.time_to_first_token", "gen_ai.server.time_per_output_token",
    }
    for body in bodies["traces"] + bodies["metrics"]:
        assert DASHSCOPE_KEY.encode() not in body


@pytest.mark.parametrize("name", ["qianfan-v1-chat", "dashscope-native-generate", "openai-chat"])
async def test_content_is_recorded_only_when_the_application_opts_in(
    name: str, server: MockServer, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_client, start, _, _, _ = CASES[name]
    async with make_client(server.url) as client, start(client) as stream:
        await stream.collect()
    attributes = dict(telemetry.span().attributes or {})
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes

    telemetry.reset()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    async with make_client(server.url) as client, start(client) as stream:
        completion = await stream.collect()
    attributes = dict(telemetry.span().attributes or {})
    (asked,) = json.loads(str(attributes["gen_ai.input.messages"]))
    assert asked["role"] == "user" and asked["parts"][0]["type"] == "text"
    assert asked["parts"][0]["content"] in (USER[0]["content"], "Tell me about rivers")
    (answered,) = json.loads(str(attributes["gen_ai.output.messages"]))
    assert answered == {
        "role": "assistant", "parts": [{"type": "text", "content": completion.text}],
        "finish_reason": completion.finish_reason,
    }
