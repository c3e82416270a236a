"""`DashScopeClient`: Alibaba DashScope text generation, streamed or not."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from multidict import CIMultiDict

from llmstreams.client import BaseClient
from llmstreams.dashscope import wire
from llmstreams.errors import APIError, InvalidParameterError
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool
from llmstreams.streams import ChunkStream
from llmstreams.transport import HttpRequest, ResponseHead, ResponseParser
from llmstreams.types import Completion
from llmstreams.validation import check_headers, check_text

API_KEY_ENV = "DASHSCOPE_API_KEY"
BASE_URL_ENV = "DASHSCOPE_BASE_URL"
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com"


class GenerationExchange:
    """One DashScope generation call, for the transport. The request never changes between attempts."""

    provider: str = wire.PROVIDER
    __slots__ = ("_request", "_generation")

    def __init__(self, request: HttpRequest, generation: wire.Generation) -> None:
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
        api_key = _check_api_key(api_key if api_key is not None else os.environ.get(API_KEY_ENV))
        headers = check_headers("extra_headers", extra_headers)
        if workspace is not None:
            check_text("workspace", workspace)
            if "\r" in workspace or "\n" in workspace:
                raise InvalidParameterError("workspace", "must not contain line breaks", workspace)
        if base_url is None:
            base_url = os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
        super().__init__(
            base_url=base_url, pool=pool, timeout=timeout, retry=retry, max_retries=max_retries
        )
        self.workspace = workspace
        self._url = self.base_url + wire.GENERATION_PATH
        self._authorization = f"Bearer {api_key}"
        self._extra_headers = headers

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
    ) -> GenerationExchange:
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
        return GenerationExchange(request, generation)


def _check_api_key(api_key: str | None) -> str:
    # The key's value never appears in an error: only what is wrong with it.
    if api_key is None:
        raise InvalidParameterError(
            "api_key", f"is required: pass api_key= or set the {API_KEY_ENV} environment variable"
        )
    if not isinstance(api_key, str):
        raise InvalidParameterError("api_key", "must be a string", type(api_key).__name__)
    api_key = api_key.strip()
    if not api_key:
        raise InvalidParameterError(
            "api_key", f"is empty: pass api_key= or set the {API_KEY_ENV} environment variable"
        )
    if any(character.isspace() or not character.isprintable() for character in api_key):
        raise InvalidParameterError("api_key", "must not contain spaces or control characters")
    return api_key
