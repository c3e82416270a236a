"""Calls in the OpenAI-compatible dialect: `DialectEndpoint` (shared by every client that speaks
it) and `OpenAICompatibleClient` (any server: vLLM, SGLang, hosted services)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final, Unpack

from llmstreams.client import BaseClient
from llmstreams.errors import APIError, InvalidParameterError, redact_url
from llmstreams.openai.wire import (
    GENERIC,
    JSON_CONTENT_TYPE,
    PATHS,
    ChatParams,
    CompleteParams,
    Dialect,
    DialectParser,
    Kind,
    build_body,
)
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool
from llmstreams.streams import ChunkStream
from llmstreams.telemetry import GenerationInfo, describe
from llmstreams.transport import HttpRequest, ResponseHead
from llmstreams.types import Completion
from llmstreams.validation import check_api_key, check_headers

API_KEY_ENV: Final = "OPENAI_API_KEY"
BASE_URL_ENV: Final = "OPENAI_BASE_URL"
# Headers the endpoint sets itself: a caller's extra_headers may not replace them.
_RESERVED_HEADERS: Final = frozenset({"authorization", "content-type", "content-length", "host"})


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


class DialectEndpoint:
    """Where and how a client sends calls of the dialect.

    `api_base` is the URL the paths `/chat/completions` and `/completions` go under (the
    openai SDK's `base_url`); `headers` go with every request (authentication among them,
    so the repr never shows them).
    """

    __slots__ = ("api_base", "dialect", "_headers")

    def __init__(self, *, api_base: str, headers: Mapping[str, str], dialect: Dialect) -> None:
        self.api_base = api_base
        self.dialect = dialect
        self._headers = {"Content-Type": JSON_CONTENT_TYPE, **headers}

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
        return DialectExchange(
            request, self.dialect, kind,
            telemetry=describe(kind, model, body_params, url=request.url),
        )


def check_extra_headers(headers: Any) -> dict[str, str]:
    """Extra request headers, none of those the endpoint sets itself."""
    return check_headers("extra_headers", headers, reserved=_RESERVED_HEADERS)


def bearer_headers(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {"Authorization": f"Bearer {api_key}"}


class OpenAICompatibleClient(BaseClient):
    """Chat and text completions on any server that speaks the OpenAI-compatible dialect.

    `base_url` ends in `/v1`, as the openai SDK's does (e.g. `http://127.0.0.1:8000/v1` for a
    vLLM server); without it, `OPENAI_BASE_URL` is read. `api_key` (or `OPENAI_API_KEY`) is
    sent as a bearer token; none at all is fine for a local server that wants none.
    `extra_headers` go with every request (a call's own `extra_headers` add to them).

        async with OpenAICompatibleClient(base_url="http://127.0.0.1:8000/v1") as client:
            async with client.stream_chat(messages, model="qwen2.5-7b-instruct") as stream:
                async for chunk in stream:
                    print(chunk.text, end="")
    """

    provider = GENERIC.provider

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        pool: Pool | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        if base_url is None:
            base_url = os.environ.get(BASE_URL_ENV, "").strip() or None
        if base_url is None:
            raise InvalidParameterError(
                "base_url",
                f"is required: pass base_url='http://host:port/v1' or set {BASE_URL_ENV}",
            )
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV, "").strip() or None
        if api_key is not None:
            api_key = check_api_key(api_key, variable=API_KEY_ENV)
        headers = check_extra_headers(extra_headers)
        super().__init__(
            base_url=base_url, pool=pool, timeout=timeout, retry=retry, max_retries=max_retries
        )
        self.has_api_key = api_key is not None
        self._endpoint = DialectEndpoint(
            api_base=self.base_url, headers={**bearer_headers(api_key), **headers}, dialect=GENERIC
        )

    def __repr__(self) -> str:
        key = "api_key set" if self.has_api_key else "no api_key"
        return f"<OpenAICompatibleClient base_url={redact_url(self.base_url)!r} {key}>"

    def stream_chat(
        self, /, messages: Sequence[Mapping[str, Any]], *, model: str, **params: Unpack[ChatParams]
    ) -> ChunkStream:
        """Stream a chat answer: iterate the returned `ChunkStream` (best inside `async with`).

        Parameters are checked here, before anything is sent; nothing is sent until the
        stream is read. Usage is asked for (`include_usage=False` to not).
        """
        return self._stream(self._endpoint.exchange(
            "chat", stream=True, model=model, input_value=messages, params=params
        ))

    async def chat(
        self, /, messages: Sequence[Mapping[str, Any]], *, model: str, **params: Unpack[ChatParams]
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
