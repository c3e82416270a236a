"""`DashScopeClient`: Alibaba DashScope text generation, streamed or not."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from multidict import CIMultiDict

from llmstreams.calls import Call
from llmstreams.client import BaseClient
from llmstreams.dashscope import wire
from llmstreams.errors import APIError, InvalidParameterError, redact_url
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool
from llmstreams.streams import ChunkStream
from llmstreams.telemetry import GenerationInfo, at_server
from llmstreams.transport import Exchange, HttpRequest, ResponseHead, ResponseParser
from llmstreams.types import Completion
from llmstreams.validation import check_api_key, check_headers, check_text

API_KEY_ENV = "DASHSCOPE_API_KEY"
BASE_URL_ENV = "DASHSCOPE_BASE_URL"
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com"
# What the dashscope SDK's base URL adds to the host: this client adds it itself.
_NATIVE_SUFFIX = "/api/v1"
COMPATIBLE_MODE_PATH = "/compatible-mode/v1"


class GenerationExchange:
    """One DashScope generation call, for the transport. The request never changes between attempts."""

    provider: str = wire.PROVIDER
    __slots__ = ("telemetry", "_request", "_generation")

    def __init__(
        self, request: HttpRequest, generation: wire.Generation,
        telemetry: GenerationInfo | None = None,
    ) -> None:
        self.telemetry = telemetry
        self._request = request
        self._generation = generation

    async def build_request(self) -> HttpRequest:
        return self._request

    def parser(self, head: ResponseHead) -> ResponseParser:
        return wire.parser_for(head, self._generation)

    async def recover(self, error: APIError) -> bool:
        return False


class DashScopeClient(BaseClient):
    """Text generation with DashScope's native API (`billa-7b-sft-v1`, `qwen-turbo`, any model).

    The API key comes from `api_key` or the `DASHSCOPE_API_KEY` environment variable, the base
    URL from `base_url`, `DASHSCOPE_BASE_URL` or else https://dashscope.aliyuncs.com.
    `workspace` is sent as the `X-DashScope-WorkSpace` header; `extra_headers` go with every
    request (a call's own `extra_headers` win over them). `stream_generate` / `generate` take a
    prompt or messages, `stream_chat` / `chat` messages. DashScope's OpenAI-compatible mode is
    `OpenAICompatibleClient(vendor="dashscope-compatible")`.

        async with DashScopeClient() as client:
            async with client.stream_generate("你好", model="billa-7b-sft-v1") as stream:
                async for chunk in stream:
                    print(chunk.text, end="")
    """

    provider = wire.PROVIDER

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        pool: Pool | None = None,
        workspace: str | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        api_key = check_api_key(
            api_key if api_key is not None else os.environ.get(API_KEY_ENV), variable=API_KEY_ENV
        )
        headers = check_headers("extra_headers", extra_headers)
        if workspace is not None:
            check_text("workspace", workspace)
            if "\r" in workspace or "\n" in workspace:
                raise InvalidParameterError("workspace", "must not contain line breaks", workspace)
        if base_url is None:
            base_url = os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
        base_url = _without_api_version(base_url)
        super().__init__(
            base_url=base_url, pool=pool, timeout=timeout, retry=retry, max_retries=max_retries
        )
        self.workspace = workspace
        self._url = self.base_url + wire.GENERATION_PATH
        self._authorization = f"Bearer {api_key}"
        self._extra_headers = headers

    def __repr__(self) -> str:
        return f"<DashScopeClient base_url={redact_url(self.base_url)!r}>"

    def stream_chat(
        self, /, messages: Sequence[Mapping[str, str]], *, model: str | None = None,
        **params: Unpack[wire.GenerateParams],
    ) -> ChunkStream:
        """Stream a chat answer: `stream_generate(messages=messages, ...)`."""
        return self.stream_generate(messages=messages, model=model, **params)

    async def chat(
        self, /, messages: Sequence[Mapping[str, str]], *, model: str | None = None,
        **params: Unpack[wire.GenerateParams],
    ) -> Completion:
        """A whole chat answer: `generate(messages=messages, ...)`."""
        return await self.generate(messages=messages, model=model, **params)

    def stream_generate(
        self,
        /,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        model: str | None = None,
        **params: Unpack[wire.GenerateParams],
    ) -> ChunkStream:
        """Stream a generation: each `Chunk.text` is only the new text.

        Give a `prompt` or `messages` (a list of {"role": "system"|"user"|"assistant",
        "content": str} ending with the user's). Parameters left as None are not sent, so the
        service's defaults apply; `extra_params` adds fields this library does not know to the
        request's `parameters`. Every parameter is checked here, before anything is sent: a
        broken rule raises `InvalidParameterError`. Nothing is sent until the stream is read.
        """
        return self._stream(self._exchange(True, prompt, messages, model, params))

    async def generate(
        self,
        /,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        model: str | None = None,
        **params: Unpack[wire.GenerateParams],
    ) -> Completion:
        """Generate without streaming: the whole answer as one `Completion`.

        Takes the same arguments as `stream_generate`.
        """
        return await self._complete(self._exchange(False, prompt, messages, model, params))

    def _call_exchange(self, call: Call, *, stream: bool) -> Exchange:
        if call.endpoint is not None:
            raise InvalidParameterError("endpoint", "is Qianfan v1's; DashScope takes model=")
        params: dict[str, Any] = dict(call.params)
        if call.max_tokens is not None:
            params["max_tokens"] = call.max_tokens
        if call.messages is not None:
            params.setdefault("result_format", "message")
        if stream:
            # Only the new text in each event: the same chunks for fewer bytes.
            params.setdefault("incremental_output", True)
        return self._exchange(stream, call.prompt, call.messages, call.model, params)

    def _exchange(
        self, stream: bool, prompt: Any, messages: Any, model: Any, given: Mapping[str, Any]
    ) -> Exchange:
        params = dict(given)
        call_headers = check_headers("extra_headers", params.pop("extra_headers", None))
        generation = wire.build_generation(
            stream=stream, prompt=prompt, messages=messages, model=model, params=params
        )
        headers: CIMultiDict[str] = CIMultiDict(
            {"Authorization": self._authorization, "Content-Type": "application/json"}
        )
        if generation.stream:
            headers["Accept"] = "text/event-stream"
            headers["X-DashScope-SSE"] = "enable"
        else:
            headers["Accept"] = "application/json"
        if self.workspace is not None:
            headers["X-DashScope-WorkSpace"] = self.workspace
        headers.update(self._extra_headers)
        headers.update(call_headers)
        request = HttpRequest(method="POST", url=self._url, body=generation.body, headers=headers)
        return GenerationExchange(
            request, generation, telemetry=at_server(generation.telemetry, self._url)
        )


def _without_api_version(base_url: str) -> str:
    """`base_url` without the /api/v1 that the dashscope SDK's base URL ends in, since this
    client adds the path itself. A compatible-mode URL is refused: that mode has its own client."""
    if isinstance(base_url, str):
        trimmed = base_url.rstrip("/")
        if trimmed.endswith(COMPATIBLE_MODE_PATH):
            raise InvalidParameterError(
                "base_url",
                "is a compatible-mode URL: DashScopeClient speaks the native API; use "
                "OpenAICompatibleClient(vendor='dashscope-compatible', base_url=...) for that mode",
                redact_url(base_url),
            )
        if trimmed.endswith(_NATIVE_SUFFIX):
            return trimmed[: -len(_NATIVE_SUFFIX)]
    return base_url
