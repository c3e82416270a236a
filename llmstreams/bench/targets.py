"""The llmstreams clients as load-generator `Target`s, used only through their public API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from llmstreams import Chunk, ChunkStream, Completion, DashScopeClient, Pool, QianfanClient
from llmstreams.bench.prompts import Prompt

PROVIDERS: tuple[str, ...] = ("qianfan", "dashscope")
DEFAULT_MODELS: Mapping[str, str] = {"qianfan": "ERNIE-Speed-8K", "dashscope": "billa-7b-sft-v1"}
DEFAULT_PROMPT = "请用三句话介绍一下流式输出的好处。"

# Any non-empty credentials satisfy the mock server.
MOCK_API_KEY = "bench-api-key"
MOCK_SECRET_KEY = "bench-secret-key"

# How a QianfanClient authenticates to the mock: "api_key" (access tokens fetched with
# api_key/secret_key) or "access_key" (every request signed with access_key/secret_access_key).
QIANFAN_AUTH_METHODS: tuple[str, ...] = ("api_key", "access_key")


@attrs.frozen(slots=True)
class Workload:
    """What a benchmark sends, request after request.

    `model` / `endpoint` as the client takes them (None: the provider's default model).
    `prompts` are sent in turn, round and round; without any, every request sends `prompt`.
    `max_tokens` is the output length asked of every request (a prompt's own wins).
    `incremental_output` only applies to DashScope (False: each event repeats the whole text).
    """

    provider: str = "qianfan"
    model: str | None = None
    endpoint: str | None = None
    prompt: str = DEFAULT_PROMPT
    stream: bool = True
    incremental_output: bool = True
    extra_headers: Mapping[str, str] | None = None
    prompts: tuple[Prompt, ...] = ()
    max_tokens: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")

    @property
    def model_or_default(self) -> str | None:
        if self.model is None and self.endpoint is None:
            return DEFAULT_MODELS[self.provider]
        return self.model

    def requests(self) -> tuple[Prompt, ...]:
        """The prompts sent in turn, each with its output length."""
        prompts = self.prompts or (Prompt(text=self.prompt),)
        return tuple(
            prompt if prompt.max_tokens is not None or self.max_tokens is None
            else attrs.evolve(prompt, max_tokens=self.max_tokens)
            for prompt in prompts
        )


def make_client(
    provider: str,
    *,
    base_url: str | None,
    pool: Pool,
    max_retries: int,
    mock_auth: str | None = None,
) -> QianfanClient | DashScopeClient:
    """A client of `provider` on `pool`.

    `mock_auth` None: a real server; the client reads its credentials (and, without
    `base_url`, its base URL) from the environment as usual. Otherwise the target is the mock
    and the client gets throwaway credentials: for Qianfan those of `mock_auth`, one of
    QIANFAN_AUTH_METHODS.
    """
    if provider == "dashscope":
        api_key = None if mock_auth is None else MOCK_API_KEY
        return DashScopeClient(api_key=api_key, base_url=base_url, pool=pool, max_retries=max_retries)
    if mock_auth is None:
        return QianfanClient(base_url=base_url, pool=pool, max_retries=max_retries)
    if mock_auth == "access_key":
        return QianfanClient(
            access_key=MOCK_API_KEY, secret_access_key=MOCK_SECRET_KEY,
            base_url=base_url, pool=pool, max_retries=max_retries,
        )
    return QianfanClient(
        api_key=MOCK_API_KEY, secret_key=MOCK_SECRET_KEY,
        base_url=base_url, pool=pool, max_retries=max_retries,
    )


class ClientTarget:
    """Sends `workload` through an llmstreams client: a `ChunkStream` per request when
    streaming, else one awaited `Completion` per request (counted as one chunk), taking the
    workload's prompts in turn.

    `reads_sent_at`: the server stamps each event with its true send time (the ruler, the
    mock), which the load generator then reads from every chunk.
    Building the target makes one call without sending it, so that a parameter the client
    rejects fails here rather than as an error on every request.
    """

    def __init__(
        self,
        client: QianfanClient | DashScopeClient,
        workload: Workload,
        *,
        reads_sent_at: bool = False,
    ) -> None:
        self._client = client
        self._workload = workload
        self._prompts = workload.requests()
        self._sent = 0
        self.reads_sent_at = reads_sent_at and workload.stream
        self._call(self._prompts[0], stream=True)

    def open_stream(self) -> AsyncIterator[Chunk | Completion]:
        prompt = self._prompts[self._sent % len(self._prompts)]
        self._sent += 1
        if self._workload.stream:
            stream: ChunkStream = self._call(prompt, stream=True)
            return stream
        return self._one_completion(prompt)

    async def _one_completion(self, prompt: Prompt) -> AsyncIterator[Completion]:
        completion: Completion = await self._call(prompt, stream=False)
        yield completion

    def output_tokens(self, last_item: Chunk | Completion) -> int | None:
        usage = last_item.usage
        return None if usage is None else usage.completion_tokens

    def input_tokens(self, last_item: Chunk | Completion) -> int | None:
        usage = last_item.usage
        return None if usage is None else usage.prompt_tokens

    def _call(self, prompt: Prompt, *, stream: bool) -> Any:
        workload, client = self._workload, self._client
        params = dict(prompt.params)
        headers = params.pop("extra_headers", None) or workload.extra_headers
        if isinstance(client, QianfanClient):
            if prompt.max_tokens is not None:
                params["extra_params"] = {
                    **params.get("extra_params", {}), "max_output_tokens": prompt.max_tokens,
                }
            method = client.stream_chat if stream else client.chat
            return method(
                prompt.as_messages(), model=workload.model_or_default,
                endpoint=workload.endpoint, extra_headers=headers, **params,
            )
        if prompt.max_tokens is not None:
            params["max_tokens"] = prompt.max_tokens
        if stream:
            params["incremental_output"] = workload.incremental_output
        messages = None if prompt.messages is None else list(prompt.messages)
        text = None if messages is not None else prompt.text
        generate = client.stream_generate if stream else client.generate
        return generate(
            text, messages=messages, model=workload.model_or_default,
            extra_headers=headers, **params,
        )
