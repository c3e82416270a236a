"""OpenTelemetry GenAI spans and metrics for every generation, free when no SDK is set up.

What is recorded follows the OpenTelemetry GenAI semantic conventions (docs/telemetry.md
names the version and every attribute). llmstreams depends on `opentelemetry-api` only through
the `otel` extra and never imports it itself: an application that set up the SDK
(`opentelemetry-sdk`) has imported it, and its global tracer and meter providers are the ones
used. Without the SDK loaded, with only the API's own (no-op) providers, with
`Pool(telemetry=False)` or with the opt-out environment variables, a generation costs a
dictionary lookup or two, and nothing per chunk.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

import attrs

from llmstreams.errors import APIError, LLMStreamsError, redact_url
from llmstreams.types import CompletionBuilder

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram
    from opentelemetry.trace import Span, Tracer

    from llmstreams.pool import Pool
    from llmstreams.transport import Exchange

T = TypeVar("T")

INSTRUMENTATION_NAME: Final = "llmstreams"
SWITCH_VARIABLE: Final = "LLMSTREAMS_TELEMETRY"
DISABLED_INSTRUMENTATIONS_VARIABLE: Final = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
_OFF_WORDS: Final = frozenset({"off", "0", "false", "no", "none"})

# `gen_ai.provider.name` for each llmstreams provider: the conventions' well-known value where
# there is one (openai, deepseek, moonshot_ai), else `{company or cloud}.{product}` in the
# conventions' style (aws.bedrock, azure.ai.openai; cloud names as in `cloud.provider`).
PROVIDER_NAMES: Final[Mapping[str, str]] = {
    "qianfan": "baidu.qianfan",
    "dashscope": "alibaba_cloud.dashscope",
    "openai": "openai",
    "deepseek": "deepseek",
    "moonshot": "moonshot_ai",
    "zhipu": "z_ai",
    "volcengine": "volcengine.ark",
    "siliconflow": "siliconflow",
    "hunyuan": "tencent_cloud.hunyuan",
}
OPERATION_NAMES: Final[Mapping[str, str]] = {
    "chat": "chat",
    "completions": "text_completion",
    "text_completion": "text_completion",
}
# The conventions' bucket advice for each histogram.
_DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
_TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)
_FIRST_TOKEN_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
_PER_TOKEN_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)
_MAX_STATUS_CHARS: Final = 300


def disabled_by_environment(environ: Mapping[str, str]) -> bool:
    """`LLMSTREAMS_TELEMETRY=off`, or `llmstreams` (or `*`) in the standard
    `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS` list."""
    if environ.get(SWITCH_VARIABLE, "").strip().lower() in _OFF_WORDS:
        return True
    names = {name.strip() for name in environ.get(DISABLED_INSTRUMENTATIONS_VARIABLE, "").split(",")}
    return INSTRUMENTATION_NAME in names or "*" in names


_DISABLED: Final = disabled_by_environment(os.environ)
# The conventions' opt-in for recording prompts and answers: off unless set to "true".
CAPTURE_CONTENT_VARIABLE: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def captures_content(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the application opted in to recording message content (read per generation)."""
    return environ.get(CAPTURE_CONTENT_VARIABLE, "").strip().lower() == "true"


def _input_messages(content: object) -> str | None:
    """The conventions' `gen_ai.input.messages` (JSON) of a prompt or chat messages."""
    if isinstance(content, str):
        messages: Any = [{"role": "user", "content": content}]
    elif isinstance(content, (list, tuple)):
        messages = content
    else:
        return None
    return json.dumps([
        {
            "role": str(message.get("role")),
            "parts": [{"type": "text", "content": message.get("content")}],
        }
        for message in messages if isinstance(message, Mapping)
    ], ensure_ascii=False, default=str)


@attrs.frozen(slots=True)
class GenerationInfo:
    """What a vendor module tells the telemetry about one generation request: the
    conventions' operation name, the model asked for, where it goes, and the request
    parameters that were given (as checked). An `Exchange` offers it as `telemetry`."""

    operation: str
    request_model: str | None
    server_address: str | None = None
    server_port: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()
    input_messages: str | None = attrs.field(default=None, repr=False)
    """The prompt or messages as JSON, only when the application opted in to content capture."""


def describe(
    kind: str, model: object, params: Mapping[str, Any], *, url: str | None = None,
    content: object = None,
) -> GenerationInfo | None:
    """The `GenerationInfo` of a call of `kind` ("chat" or "completions"), or None when no
    telemetry can be recorded in this process (then nothing is worked out).

    `params` are the call's parameters by their wire names (max tokens under any of
    `max_tokens`, `max_completion_tokens`, `max_output_tokens`); `url` is where it is sent
    (only its host and port are kept); `content` the prompt or messages, kept only when the
    application opted in to content capture (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`).
    """
    if not _sdk_loaded():
        return None
    address, port = (None, None) if url is None else _server(url)
    return GenerationInfo(
        operation=OPERATION_NAMES.get(kind, kind),
        request_model=model if isinstance(model, str) else None,
        server_address=address,
        server_port=port,
        max_tokens=_first_int(params, "max_tokens", "max_completion_tokens", "max_output_tokens"),
        temperature=_number(params.get("temperature")),
        top_p=_number(params.get("top_p")),
        stop_sequences=_stop_sequences(params.get("stop")),
        input_messages=_input_messages(content) if captures_content() else None,
    )


def at_server(info: GenerationInfo | None, url: str) -> GenerationInfo | None:
    """`info` with the host and port of `url` (never anything else of it)."""
    if info is None:
        return None
    address, port = _server(url)
    return attrs.evolve(info, server_address=address, server_port=port)


@functools.lru_cache(maxsize=256)
def _server(url: str) -> tuple[str | None, int | None]:
    """The host and port of `url` (a client sends to a few URLs, over and over)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None, None
    return parts.hostname, port if port is not None else {"http": 80, "https": 443}.get(parts.scheme)


def provider_name(provider: str) -> str:
    """The `gen_ai.provider.name` of an llmstreams provider (PROVIDER_NAMES, else its own name)."""
    return PROVIDER_NAMES.get(provider, provider.lower())


def _first_int(params: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _stop_sequences(stop: object) -> tuple[str, ...]:
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, (list, tuple)):
        return tuple(item for item in stop if isinstance(item, str))
    return ()


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _sdk_loaded() -> bool:
    # Only an SDK's providers record anything, and a process that set one up has imported it:
    # a process that only imported the API (or nothing) pays this one lookup.
    return not _DISABLED and "opentelemetry.sdk" in sys.modules


class _Instruments:
    __slots__ = ("duration", "token_usage", "time_to_first_token", "time_per_output_token")

    def __init__(self, meter: Any) -> None:
        self.duration: Histogram = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.token_usage: Histogram = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.time_to_first_token: Histogram = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s",
            description="Time to generate first token for successful responses "
            "(measured by the client: from the request to the first chunk's arrival).",
            explicit_bucket_boundaries_advisory=_FIRST_TOKEN_BUCKETS,
        )
        self.time_per_output_token: Histogram = meter.create_histogram(
            "gen_ai.server.time_per_output_token", unit="s",
            description="Time per output token generated after the first token for successful "
            "responses (measured by the client).",
            explicit_bucket_boundaries_advisory=_PER_TOKEN_BUCKETS,
        )


@attrs.define
class _ProviderProduct(Generic[T]):
    """What the global provider of one OpenTelemetry API module makes (the tracer, the
    instruments), made again only when an application replaces that provider."""

    _module: str
    _provider_getter: str
    _make: Callable[[Any], T]
    _provider: object = attrs.field(init=False, default=None)
    _product: T | None = attrs.field(init=False, default=None)

    def current(self) -> T | None:
        module = sys.modules.get(self._module)
        if module is None:
            return None
        provider = getattr(module, self._provider_getter)()
        if provider is not self._provider:
            self._provider = provider
            # The API's own providers (the proxy before any is set, the no-op) record nothing.
            self._product = None if _from_the_api(provider) else self._make(provider)
        return self._product


def _from_the_api(provider: object) -> bool:
    return type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


def _version() -> str:
    from llmstreams import __version__

    return __version__


_TRACER: Final[_ProviderProduct[Tracer]] = _ProviderProduct(
    "opentelemetry.trace",
    "get_tracer_provider",
    lambda provider: provider.get_tracer(INSTRUMENTATION_NAME, _version()),
)
_INSTRUMENTS: Final[_ProviderProduct[_Instruments]] = _ProviderProduct(
    "opentelemetry.metrics",
    "get_meter_provider",
    lambda provider: _Instruments(provider.get_meter(INSTRUMENTATION_NAME, _version())),
)


def start(pool: Pool, exchange: Exchange) -> GenerationRecord | None:
    """The record of a generation whose request is about to be sent; None when nothing is
    recorded (no SDK set up, or telemetry switched off)."""
    if not _sdk_loaded() or not pool.telemetry:
        return None
    tracer = _TRACER.current()
    instruments = _INSTRUMENTS.current()
    if tracer is None and instruments is None:
        return None
    return GenerationRecord(tracer, instruments, exchange)


class GenerationRecord:
    """One generation's span and measurements, from its request to its end (whichever way it
    ends). Told of each retry and of the first chunk; never of the chunks after it."""

    __slots__ = (
        "_span", "_instruments", "_attributes", "_started_at", "_first_chunk_at", "_captures",
    )

    def __init__(self, tracer: Tracer | None, instruments: _Instruments | None, exchange: Exchange) -> None:
        info: GenerationInfo | None = getattr(exchange, "telemetry", None)
        operation = "chat" if info is None else info.operation
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider_name(exchange.provider),
        }
        model = None if info is None else info.request_model
        if model is not None:
            attributes["gen_ai.request.model"] = model
        if info is not None and info.server_address is not None:
            attributes["server.address"] = info.server_address
            if info.server_port is not None:
                attributes["server.port"] = info.server_port
        self._attributes = attributes
        self._instruments = instruments
        self._captures = info is not None and info.input_messages is not None
        self._first_chunk_at: float | None = None
        self._span: Span | None = None
        if tracer is not None:
            span_attributes = dict(attributes)
            if info is not None:
                _add_request_parameters(span_attributes, info)
                if info.input_messages is not None:
                    span_attributes["gen_ai.input.messages"] = info.input_messages
            from opentelemetry.trace import SpanKind

            self._span = tracer.start_span(
                f"{operation} {model}" if model else operation,
                kind=SpanKind.CLIENT, attributes=span_attributes,
            )
        self._started_at = time.monotonic()

    async def current_while(self, sending: Awaitable[T]) -> T:
        """`await sending` with the span current, so that the requests' own spans (an HTTP
        client's instrumentation) are its children."""
        if self._span is None:
            return await sending
        from opentelemetry.trace import use_span

        with use_span(self._span, record_exception=False, set_status_on_exception=False):
            return await sending

    def retried(self, attempt: int, delay: float, cause: LLMStreamsError) -> None:
        """Attempt number `attempt` is sent after `delay` seconds, because of `cause`."""
        if self._span is None:
            return
        event: dict[str, Any] = {
            "llmstreams.attempt": attempt,
            "llmstreams.retry.delay": delay,
            "error.type": _error_type(cause),
        }
        if isinstance(cause, APIError):
            if cause.http_status is not None:
                event["http.response.status_code"] = cause.http_status
            if cause.code is not None:
                event["llmstreams.error.code"] = str(cause.code)
        self._span.add_event("llmstreams.retry", event)

    def first_chunk(self, arrived_at: float) -> None:
        """The first chunk of a streamed answer arrived at `arrived_at` (`time.monotonic()`)."""
        self._first_chunk_at = arrived_at

    def end(
        self,
        builder: CompletionBuilder,
        error: BaseException | None,
        *,
        abandoned: bool = False,
        last_read_at: float | None = None,
    ) -> None:
        """The generation is over: what arrived is in `builder`; `error` is what ended it."""
        now = time.monotonic()
        last = builder.last_chunk
        complete = error is None and last is not None and last.is_end
        if error is not None:
            outcome = "cancelled" if isinstance(error, asyncio.CancelledError) else "error"
        elif complete:
            outcome = "complete"
        else:
            outcome = "abandoned" if abandoned else "closed"
        # A complete generation ended when its last bytes arrived, not when its reader got there.
        ended_at = last_read_at if complete and last_read_at is not None else now
        attributes = self._attributes
        model = builder.model
        if model is not None:
            attributes["gen_ai.response.model"] = model
        if error is not None:
            attributes["error.type"] = _error_type(error)
        usage = builder.usage
        if self._span is not None:
            self._end_span(builder, error, outcome, ended_at, now)
        instruments = self._instruments
        if instruments is None:
            return
        instruments.duration.record(ended_at - self._started_at, attributes)
        if usage is not None:
            instruments.token_usage.record(
                usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"}
            )
            instruments.token_usage.record(
                usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"}
            )
        first = self._first_chunk_at
        if error is None and first is not None:
            instruments.time_to_first_token.record(first - self._started_at, attributes)
            if complete and usage is not None and usage.completion_tokens > 1:
                instruments.time_per_output_token.record(
                    (ended_at - first) / (usage.completion_tokens - 1), attributes
                )

    def _end_span(
        self,
        builder: CompletionBuilder,
        error: BaseException | None,
        outcome: str,
        ended_at: float,
        now: float,
    ) -> None:
        span = self._span
        assert span is not None
        last = builder.last_chunk
        values: dict[str, Any] = {
            "llmstreams.outcome": outcome,
            "llmstreams.chunks": builder.chunk_count,
        }
        model = builder.model
        if model is not None:
            values["gen_ai.response.model"] = model
        # DashScope's native answers have no id of their own: their request id names them.
        response_id = None if last is None else last.id or last.request_id
        if response_id is not None:
            values["gen_ai.response.id"] = response_id
        if builder.finish_reason is not None:
            values["gen_ai.response.finish_reasons"] = (builder.finish_reason,)
        if self._first_chunk_at is not None:
            values["gen_ai.response.time_to_first_chunk"] = self._first_chunk_at - self._started_at
        if self._captures:
            values["gen_ai.output.messages"] = json.dumps([{
                "role": "assistant", "parts": [{"type": "text", "content": builder.text}],
                "finish_reason": builder.finish_reason,
            }], ensure_ascii=False)
        usage = builder.usage
        if usage is not None:
            values["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            values["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if error is not None:
            partial = error.partial if isinstance(error, LLMStreamsError) else None
            values["error.type"] = _error_type(error)
            values["llmstreams.partial.chars"] = (
                len(partial.text) if partial is not None else builder.text_length
            )
            from opentelemetry.trace import Status, StatusCode

            description = str(error) or type(error).__name__
            span.set_status(Status(StatusCode.ERROR, description[:_MAX_STATUS_CHARS]))
        span.set_attributes(values)
        span.end(end_time=time.time_ns() - int((now - ended_at) * 1e9))


def _add_request_parameters(attributes: dict[str, Any], info: GenerationInfo) -> None:
    if info.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = info.max_tokens
    if info.temperature is not None:
        attributes["gen_ai.request.temperature"] = info.temperature
    if info.top_p is not None:
        attributes["gen_ai.request.top_p"] = info.top_p
    if info.stop_sequences:
        attributes["gen_ai.request.stop_sequences"] = info.stop_sequences


def _error_type(error: BaseException) -> str:
    """The conventions' `error.type`: the exception's class name (llmstreams' own, such as
    `RateLimitError`, or `CancelledError`, `TimeoutError`...)."""
    return type(error).__qualname__


_SDK_PACKAGES: Final = "opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"
_ENDPOINT_VARIABLES: Final = (
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


def configure_from_environment(
    environ: Mapping[str, str] = os.environ, service: str = "llmstreams"
) -> Callable[[], None] | None:
    """For the commands: set up the OpenTelemetry SDK from the standard `OTEL_*` variables
    and say in one line (on stderr) where the telemetry goes.

    Only when an OTLP endpoint variable is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the traces
    or metrics one), the SDK and the OTLP/HTTP exporter are installed, and neither
    `OTEL_SDK_DISABLED=true` nor this library's opt-out says no. An SDK the process has set
    up already (`opentelemetry-instrument`) is left as it is. Returns what sends the rest
    before the command returns (None when nothing was set up here).
    """
    endpoints = [name for name in _ENDPOINT_VARIABLES if environ.get(name, "").strip()]
    if (
        not endpoints
        or disabled_by_environment(environ)
        or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    ):
        return None
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        _say(f"{endpoints[0]} is set, but nothing is sent: pip install {_SDK_PACKAGES}")
        return None
    where = redact_url(environ[endpoints[0]].strip().split("?", 1)[0])
    if not _from_the_api(trace.get_tracer_provider()):
        _say(f"to the OpenTelemetry SDK this process set up already ({where} is not used here)")
        return None
    named = "OTEL_SERVICE_NAME" in environ or "service.name" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": service})
    signals = []
    tracer_provider = meter_provider = None
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none":
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        signals.append("spans")
    if environ.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() != "none":
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
        )
        metrics.set_meter_provider(meter_provider)
        signals.append("metrics")
    if not signals:
        return None
    _say(
        f"GenAI {' and '.join(signals)} to {where} (OTLP/HTTP), service "
        f"{resource.attributes.get('service.name')!s}"
    )

    def send_the_rest() -> None:
        if tracer_provider is not None:
            tracer_provider.force_flush()
        if meter_provider is not None:
            meter_provider.force_flush()

    return send_the_rest


def _say(message: str) -> None:
    print(f"llmstreams: telemetry: {message}", file=sys.stderr, flush=True)
