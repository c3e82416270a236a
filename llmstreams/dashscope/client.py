"""`DashScopeClient`: Alibaba DashScope text generation, streamed or not."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from multidict import CIMultiDict

from llmstreams.client import BaseClient
from llmstreams.dashscope import compatible, wire
from llmstreams.errors import APIError, InvalidParameterError, redact_url
from llmstreams.openai.client import DialectEndpoint, bearer_headers
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
# What the official SDKs' base URLs add to the host: this client adds them itself.
_API_SUFFIXES = ("/api/v1", compatible.API_PREFIX)


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
    """Text generation with DashScope models (`billa-7b-sft-v1`, `qwen-turbo`, any model name).

    The API key comes from `api_key` or the `DASHSCOPE_API_KEY` environment variable, the base
    URL from `base_url`, `DASHSCOPE_BASE_URL` or else https://dashscope.aliyuncs.com.
    `workspace` is sent as the `X-DashScope-WorkSpace` header; `extra_headers` go with every
    request (a call's own `extra_headers` win over them).

    `protocol="native"` (the default) speaks DashScope's own API: `stream_generate` /
    `generate`, and `stream_chat` / `chat` for messages. `protocol="openai"` speaks the
    OpenAI-compatible mode (`{base_url}/compatible-mode/v1/chat/completions`): `stream_chat` /
    `chat` with the dialect's parameters plus `enable_thinking`, `thinking_budget` and
    `enable_search`; reasoning text arrives in `Chunk.reasoning`. The international region is
    `base_url=compatible.INTERNATIONAL_BASE_URL` (keys of one region do not work in the other).

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
        protocol: Literal["native", "openai"] = "native",
    ) -> None:
        if protocol not in ("native", "openai"):
            raise InvalidParameterError("protocol", "must be 'native' or 'openai'", protocol)
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
        self.protocol = protocol
        self._authorization = f"Bearer {api_key}"
        self._extra_headers = headers
        self._compatible: DialectEndpoint | None = None
        if protocol == "openai":
            workspace_header = {} if workspace is None else {"X-DashScope-WorkSpace": workspace}
            self._compatible = DialectEndpoint(
                api_base=self.base_url + compatible.API_PREFIX,
                headers={**bearer_headers(api_key), **workspace_header, **headers},
                dialect=compatible.DIALECT,
            )

    def __repr__(self) -> str:
        return f"<DashScopeClient base_url={redact_url(self.base_url)!r} protocol={self.protocol!r}>"

    def stream_chat(
        self, /, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> ChunkStream:
        """Stream a chat answer, in either protocol: `params` are those of `stream_generate`
        (native) or of the OpenAI-compatible dialect (openai)."""
        if self._compatible is None:
            return self.stream_generate(messages=messages, model=model, **params)
        return self._stream(self._compatible.exchange(
            "chat", stream=True, model=model, input_value=messages, params=params
        ))

    async def chat(
        self, /, messages: Sequence[Mapping[str, Any]], *, model: str | None = None, **params: Any
    ) -> Completion:
        """A whole chat answer from one non-stream request; parameters as for `stream_chat`."""
        if self._compatible is None:
            return await self.generate(messages=messages, model=model, **params)
        compatible.check_whole_call(params)
        return await self._complete(self._compatible.exchange(
            "chat", stream=False, model=model, input_value=messages, params=params
        ))

    def stream_generate(
        self,
        /,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        model: str | None = None,
        result_format: str | None = None,
        incremental_output: bool | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        stop: str | Sequence[str] | None = None,
        enable_search: bool | None = None,
        extra_params: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **unknown: Any,
    ) -> ChunkStream:
        """Stream a generation: each `Chunk.text` is only the new text.

        Give a `prompt` or `messages` (a list of {"role": "system"|"user"|"assistant",
        "content": str} ending with the user's). Parameters left as None are not sent, so the
        service's defaults apply; `extra_params` adds fields this library does not know to the
        request's `parameters`. Every parameter is checked here, before anything is sent: a
        broken rule raises `InvalidParameterError`. Nothing is sent until the stream is read.
        """
        generation = wire.build_generation(
            stream=True, prompt=prompt, messages=messages, model=model,
            result_format=result_format, incremental_output=incremental_output, seed=seed,
            max_tokens=max_tokens, top_p=top_p, top_k=top_k, temperature=temperature,
            repetition_penalty=repetition_penalty, presence_penalty=presence_penalty, stop=stop,
            enable_search=enable_search, extra_params=extra_params, unknown=unknown,
        )
        return self._stream(self._exchange(generation, extra_headers))

    async def generate(
        self,
        /,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        model: str | None = None,
        result_format: str | None = None,
        incremental_output: bool | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        stop: str | Sequence[str] | None = None,
        enable_search: bool | None = None,
        extra_params: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **unknown: Any,
    ) -> Completion:
        """Generate without streaming: the whole answer as one `Completion`.

        Takes the same arguments as `stream_generate`.
        """
        generation = wire.build_generation(
            stream=False, prompt=prompt, messages=messages, model=model,
            result_format=result_format, incremental_output=incremental_output, seed=seed,
            max_tokens=max_tokens, top_p=top_p, top_k=top_k, temperature=temperature,
            repetition_penalty=repetition_penalty, presence_penalty=presence_penalty, stop=stop,
            enable_search=enable_search, extra_params=extra_params, unknown=unknown,
        )
        return await self._complete(self._exchange(generation, extra_headers))

    def _exchange(
        self, generation: wire.Generation, extra_headers: Mapping[str, str] | None
    ) -> Exchange:
        if self._compatible is not None:
            raise InvalidParameterError(
                "protocol",
                "stream_generate() / generate() speak the native protocol; with "
                "protocol='openai' call stream_chat(messages, model=...) / chat()",
            )
        call_headers = check_headers("extra_headers", extra_headers)
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
    """`base_url` without the /api/v1 (dashscope SDK) or /compatible-mode/v1 (openai SDK) that
    the official SDKs' base URLs end in, since this client adds the path for the protocol."""
    if isinstance(base_url, str):
        trimmed = base_url.rstrip("/")
        for suffix in _API_SUFFIXES:
            if trimmed.endswith(suffix):
                return trimmed[: -len(suffix)]
    return base_url

