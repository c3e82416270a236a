"""Calls in the OpenAI-compatible dialect: `DialectEndpoint` (how a call of the dialect is
sent) and `OpenAICompatibleClient` (any server or vendor that speaks it)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, Unpack, runtime_checkable
from urllib.parse import urlsplit

import attrs

from llmstreams.calls import Call
from llmstreams.client import BaseClient
from llmstreams.errors import APIError, AuthenticationError, InvalidParameterError, redact_url
from llmstreams.openai.vendor import GENERIC_VENDOR, Vendor
from llmstreams.openai.wire import (
    JSON_CONTENT_TYPE,
    PATHS,
    CompleteParams,
    Dialect,
    DialectParser,
    Kind,
    VendorChatParams,
    build_body,
)
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool
from llmstreams.streams import ChunkStream
from llmstreams.telemetry import GenerationInfo, describe
from llmstreams.transport import Exchange, HttpRequest, ResponseHead
from llmstreams.types import Completion
from llmstreams.validation import check_api_key, check_headers

# Headers the endpoint sets itself: a caller's extra_headers may not replace them.
_RESERVED_HEADERS: Final = frozenset({"authorization", "content-type", "content-length", "host"})


class KeySession(Protocol):
    """One generation's keys, from a `KeySource`."""

    async def key(self) -> str:
        """The bearer key for the next attempt."""

    def rejected(self) -> bool:
        """The service refused the last key: whether a new one may be sent at once."""


@runtime_checkable
class KeySource(Protocol):
    """Keys that are made rather than given, such as Qianfan's bearer tokens from an IAM
    access key pair (`llmstreams.BearerToken`)."""

    def session(self, pool: Pool, timeout: Timeout) -> KeySession:
        """The keys of one generation sent through `pool` within `timeout`."""


class DialectExchange:
    """One generation in the dialect. The request never changes between attempts."""

    __slots__ = ("provider", "telemetry", "_request", "_dialect", "_kind")

    def __init__(
        self, request: HttpRequest, dialect: Dialect, kind: Kind,
        telemetry: GenerationInfo | None = None,
    ) -> None:
        self.provider = dialect.provider
        self.telemetry = telemetry
        self._request = request
        self._dialect = dialect
        self._kind = kind

    def __repr__(self) -> str:
        return f"<DialectExchange {self.provider} POST {self._request.url}>"

    async def build_request(self) -> HttpRequest:
        return self._request

    def parser(self, head: ResponseHead) -> DialectParser:
        return DialectParser(head, self._dialect, self._kind)

    async def recover(self, error: APIError) -> bool:
        return False


class KeyedDialectExchange(DialectExchange):
    """One generation whose bearer key comes from a `KeySession`, asked at each attempt."""

    __slots__ = ("_keys",)

    def __init__(
        self, request: HttpRequest, dialect: Dialect, kind: Kind, keys: KeySession,
        telemetry: GenerationInfo | None = None,
    ) -> None:
        super().__init__(request, dialect, kind, telemetry)
        self._keys = keys

    async def build_request(self) -> HttpRequest:
        request = self._request
        key = await self._keys.key()
        return attrs.evolve(request, headers={**request.headers, **bearer_headers(key)})

    async def recover(self, error: APIError) -> bool:
        return isinstance(error, AuthenticationError) and self._keys.rejected()


class DialectEndpoint:
    """Where and how a client sends calls of the dialect.

    `api_base` is the URL the paths `/chat/completions` and `/completions` go under (the
    openai SDK's `base_url`); `headers` go with every request (authentication among them,
    so the repr never shows them). `keys`, when the bearer key is made rather than given,
    gives each generation its `KeySession`.
    """

    __slots__ = ("api_base", "dialect", "_headers", "_keys")

    def __init__(
        self,
        *,
        api_base: str,
        headers: Mapping[str, str],
        dialect: Dialect,
        keys: Callable[[], KeySession] | None = None,
    ) -> None:
        self.api_base = api_base
        self.dialect = dialect
        self._headers = {"Content-Type": JSON_CONTENT_TYPE, **headers}
        self._keys = keys

    def __repr__(self) -> str:
        return f"<DialectEndpoint {self.dialect.provider} {self.api_base}>"

    def exchange(
        self, kind: Kind, *, stream: bool, model: Any, input_value: Any, params: Mapping[str, Any]
    ) -> DialectExchange:
        """Check the call (raising `InvalidParameterError`) and describe it for the transport."""
        body_params = dict(params)
        extra_headers = check_extra_headers(body_params.pop("extra_headers", None))
        body = build_body(
            kind, stream=stream, model=model, input_value=input_value, params=body_params,
            dialect=self.dialect,
        )
        accept = "text/event-stream" if stream else JSON_CONTENT_TYPE
        request = HttpRequest(
            method="POST",
            url=self.api_base + PATHS[kind],
            body=body,
            headers={**self._headers, "Accept": accept, **extra_headers},
        )
        telemetry = describe(kind, model, body_params, url=request.url, content=input_value)
        if self._keys is not None:
            return KeyedDialectExchange(request, self.dialect, kind, self._keys(), telemetry)
        return DialectExchange(request, self.dialect, kind, telemetry)


def check_extra_headers(headers: Any) -> dict[str, str]:
    """Extra request headers, none of those the endpoint sets itself."""
    return check_headers("extra_headers", headers, reserved=_RESERVED_HEADERS)


def bearer_headers(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {"Authorization": f"Bearer {api_key}"}


class OpenAICompatibleClient(BaseClient):
    """Chat and text completions on any server that speaks the OpenAI-compatible dialect.

    `vendor` names the service (a name from `llmstreams.providers`, e.g. "deepseek", "qianfan",
    "dashscope", or a `Vendor`); the default, "openai", is any server (vLLM, SGLang, a gateway).
    A vendor brings its base URL, its key variable, its extra parameters and its error codes:

        async with OpenAICompatibleClient(vendor="deepseek") as client:  # reads DEEPSEEK_API_KEY
            async with client.stream_chat(messages, model="deepseek-chat") as stream:
                async for chunk in stream:
                    print(chunk.text, end="")

    `base_url` is what the openai SDK calls its base URL (`http://127.0.0.1:8000/v1` for a vLLM
    server); without it, the vendor's environment variable (OPENAI_BASE_URL for the generic
    client), then the vendor's own. A vendor's base URL given as a bare host gets the vendor's
    API path appended. `api_key` (or the vendor's variable, e.g. OPENAI_API_KEY) is sent as a
    bearer token; a local server may want none. `api_key` may also be a `KeySource`, whose keys
    are made when needed: Qianfan's bearer tokens from an IAM access key pair,
    `llmstreams.BearerToken(access_key, secret_key)`. `extra_headers` go with every request
    (a call's own `extra_headers` add to them): Qianfan's `appid`, DashScope's
    `X-DashScope-WorkSpace`.
    """

    def __init__(
        self,
        *,
        vendor: str | Vendor = GENERIC_VENDOR,
        base_url: str | None = None,
        api_key: str | KeySource | None = None,
        pool: Pool | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        vendor = _vendor(vendor)
        if base_url is None and vendor.base_url_env is not None:
            base_url = os.environ.get(vendor.base_url_env, "").strip() or None
        if base_url is None:
            base_url = vendor.base_url
        if base_url is None:
            raise InvalidParameterError(
                "base_url",
                f"is required: pass base_url='http://host:port/v1' or set {vendor.base_url_env}",
            )
        key_source: KeySource | None = None
        if isinstance(api_key, KeySource):
            key_source, api_key = api_key, None
        elif api_key is None:
            api_key = os.environ.get(vendor.api_key_env, "").strip() or None
        if key_source is None and (api_key is not None or vendor.requires_key):
            api_key = check_api_key(api_key, variable=vendor.api_key_env)
            _check_key_shape(api_key, vendor)
        headers = check_extra_headers(extra_headers)
        super().__init__(
            base_url=_with_api_path(base_url, vendor), pool=pool, timeout=timeout, retry=retry,
            max_retries=max_retries,
        )
        self.vendor = vendor
        self.provider = vendor.dialect.provider
        self.has_api_key = api_key is not None or key_source is not None
        self._endpoint = DialectEndpoint(
            api_base=self.base_url,
            headers={**bearer_headers(api_key), **headers},
            dialect=vendor.dialect,
            keys=None if key_source is None else functools.partial(
                key_source.session, self._pool, self.timeout
            ),
        )

    def __repr__(self) -> str:
        key = "api_key set" if self.has_api_key else "no api_key"
        return (
            f"<OpenAICompatibleClient vendor={self.vendor.name!r} "
            f"base_url={redact_url(self.base_url)!r} {key}>"
        )

    def stream_chat(
        self, /, messages: Sequence[Mapping[str, Any]], *, model: str, **params: Unpack[VendorChatParams]
    ) -> ChunkStream:
        """Stream a chat answer: iterate the returned `ChunkStream` (best inside `async with`).

        Parameters are checked here, before anything is sent; nothing is sent until the
        stream is read. Usage is asked for (`include_usage=False` to not). A vendor's own
        parameters (e.g. DashScope's `enable_thinking`) are keyword arguments too.
        """
        return self._stream(self._endpoint.exchange(
            "chat", stream=True, model=model, input_value=messages, params=params
        ))

    async def chat(
        self, /, messages: Sequence[Mapping[str, Any]], *, model: str, **params: Unpack[VendorChatParams]
    ) -> Completion:
        """A whole chat answer, from one non-stream request."""
        return await self._complete(self._endpoint.exchange(
            "chat", stream=False, model=model, input_value=messages, params=params
        ))

    def stream_complete(
        self, /, prompt: str, *, model: str, **params: Unpack[CompleteParams]
    ) -> ChunkStream:
        """Stream a legacy text completion of `prompt` (`/completions`)."""
        return self._stream(self._endpoint.exchange(
            "completions", stream=True, model=model, input_value=prompt, params=params
        ))

    async def complete(
        self, /, prompt: str, *, model: str, **params: Unpack[CompleteParams]
    ) -> Completion:
        """A whole legacy text completion of `prompt`, from one non-stream request."""
        return await self._complete(self._endpoint.exchange(
            "completions", stream=False, model=model, input_value=prompt, params=params
        ))

    def _call_exchange(self, call: Call, *, stream: bool) -> Exchange:
        if call.endpoint is not None:
            raise InvalidParameterError(
                "endpoint", f"is Qianfan v1's; {self.vendor.title} names models with model="
            )
        params: dict[str, Any] = dict(call.params)
        if call.max_tokens is not None:
            params["max_tokens"] = call.max_tokens
        model = call.model or self.vendor.default_model
        if call.sends_prompt(self.vendor.prompt_as):
            return self._endpoint.exchange(
                "completions", stream=stream, model=model, input_value=call.prompt, params=params
            )
        return self._endpoint.exchange(
            "chat", stream=stream, model=model, input_value=call.as_messages(), params=params
        )


def _vendor(vendor: Any) -> Vendor:
    if isinstance(vendor, Vendor):
        return vendor
    from llmstreams.providers import vendor_named

    return vendor_named(vendor)


def _check_key_shape(api_key: str, vendor: Vendor) -> None:
    if vendor.key_prefix_required and vendor.key_prefix and not api_key.startswith(vendor.key_prefix):
        raise InvalidParameterError(
            "api_key",
            f"{vendor.title} keys start {vendor.key_prefix} (from {vendor.api_key_env} or api_key=); "
            "the key given does not",
        )


def _with_api_path(base_url: str, vendor: Vendor) -> str:
    """`base_url`, with the vendor's API path when it was given as a bare host."""
    if vendor.api_path and isinstance(base_url, str):
        try:
            path = urlsplit(base_url).path
        except ValueError:
            return base_url
        if path in ("", "/"):
            return base_url.rstrip("/") + vendor.api_path
    return base_url
