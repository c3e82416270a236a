"""The llmstreams clients as load-generator `Target`s, used only through their public API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from llmstreams import (
    Chunk,
    ChunkStream,
    Completion,
    DashScopeClient,
    OpenAICompatibleClient,
    Pool,
    QianfanClient,
)
from llmstreams.bench.prompts import Prompt

PROVIDERS: tuple[str, ...] = ("qianfan", "dashscope", "openai")
DEFAULT_MODELS: Mapping[str, str] = {
    "qianfan": "ERNIE-Speed-8K", "dashscope": "billa-7b-sft-v1", "openai": "mock-model",
}
# The v2 model id of the Qianfan default, for a QianfanClient on API v2.
QIANFAN_V2_DEFAULT_MODEL = "ernie-speed-8k"
DASHSCOPE_PROTOCOLS: tuple[str, ...] = ("native", "openai")
AnyClient = QianfanClient | DashScopeClient | OpenAICompatibleClient
DEFAULT_PROMPT = "请用三句话介绍一下流式输出的好处。"

# Any non-empty credentials satisfy the mock server.
MOCK_API_KEY = "bench-api-key"
MOCK_SECRET_KEY = "bench-secret-key"

# How a QianfanClient authenticates to the mock: "api_key" (access tokens fetched with
# api_key/secret_key), "access_key" (every request signed with access_key/secret_access_key),
# both on API v1, or "v2" (a bce-v3/ API key: API v2).
QIANFAN_AUTH_METHODS: tuple[str, ...] = ("api_key", "access_key", "v2")
MOCK_V2_API_KEY = "bce-v3/ALTAK-bench/bench-secret"


@attrs.frozen(slots=True)
class Workload:
    """What a benchmark sends, request after request.

    `model` / `endpoint` as the client takes them (None: the provider's default model).
    `prompts` are sent in turn, round and round; without any, every request sends `prompt`.
    `max_tokens` is the output length asked of every request (a prompt's own wins).
    `incremental_output` only applies to DashScope's native protocol (False: each event repeats
    the whole text); `protocol` is DashScope's ("native" or "openai": the compatible mode).
    """

    provider: str = "qianfan"
    model: str | None = None
    endpoint: str | None = None
    prompt: str = DEFAULT_PROMPT
    stream: bool = True
    incremental_output: bool = True
    extra_headers: Mapping[str, str] | None = None
    protocol: str = "native"
    prompts: tuple[Prompt, ...] = ()
    max_tokens: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if self.protocol not in DASHSCOPE_PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(DASHSCOPE_PROTOCOLS)}")
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
    protocol: str = "native",
) -> AnyClient:
    """A client of `provider` on `pool`.

    `mock_auth` None: a real server; the client reads its credentials (and, without
    `base_url`, its base URL) from the environment as usual. Otherwise the target is the mock
    and the client gets throwaway credentials: for Qianfan those of `mock_auth`, one of
    QIANFAN_AUTH_METHODS. An OpenAI-compatible client of the mock uses its generic `/v1` routes.
    """
    if provider == "openai":
        if mock_auth is None:
            return OpenAICompatibleClient(base_url=base_url, pool=pool, max_retries=max_retries)
        return OpenAICompatibleClient(
            base_url=f"{base_url}/v1", api_key=MOCK_API_KEY, pool=pool, max_retries=max_retries
        )
    if provider == "dashscope":
        api_key = None if mock_auth is None else MOCK_API_KEY
        return DashScopeClient(
            api_key=api_key, base_url=base_url, pool=pool, max_retries=max_retries,
            protocol="openai" if protocol == "openai" else "native",
        )
    if mock_auth is None:
        return QianfanClient(base_url=base_url, pool=pool, max_retries=max_retries)
    if mock_auth == "v2":
        return QianfanClient(
            api_key=MOCK_V2_API_KEY, base_url=base_url, pool=pool, max_retries=max_retries
        )
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
    mock), which the load generator then reads from every chunk. `reads_arrival_times`: each
    chunk's time is when its bytes arrived (a `ChunkStream`'s `last_read_at`), not when the
    load generator got it.
    Building the target makes one call without sending it, so that a parameter the client
    rejects fails here rather than as an error on every request.
    """

    def __init__(self, client: AnyClient, workload: Workload, *, reads_sent_at: bool = False) -> None:
        self._client = client
        self._workload = workload
        self._model = _model(client, workload)
        self._prompts = workload.requests()
        self._sent = 0
        self.reads_sent_at = reads_sent_at and workload.stream
        self.reads_arrival_times = workload.stream
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

    @staticmethod
    def carries_output(item: Chunk | Completion) -> bool:
        """Whether `item` brings generated output (text, reasoning or a tool-call piece). A
        stream's closing chunk, with only the finish reason and usage, ends the request but is
        not a token: timing it would add one gap per answer to the inter-token latencies (vLLM's
        benchmark leaves it out too)."""
        if isinstance(item, Completion):
            return True
        return bool(item.text or item.reasoning or item.tool_calls)

    def output_tokens(self, last_item: Chunk | Completion) -> int | None:
        usage = last_item.usage
        return None if usage is None else usage.completion_tokens

    def input_tokens(self, last_item: Chunk | Completion) -> int | None:
        usage = last_item.usage
        return None if usage is None else usage.prompt_tokens

    def _call(self, prompt: Prompt, *, stream: bool) -> Any:
        workload, client, model = self._workload, self._client, self._model
        params = dict(prompt.params)
        headers = params.pop("extra_headers", None) or workload.extra_headers
        if isinstance(client, QianfanClient) and client.api_version != "v2":
            if prompt.max_tokens is not None:
                params["extra_params"] = {
                    **params.get("extra_params", {}), "max_output_tokens": prompt.max_tokens,
                }
            method = client.stream_chat if stream else client.chat
            return method(
                prompt.as_messages(), model=model, endpoint=workload.endpoint,
                extra_headers=headers, **params,
            )
        if prompt.max_tokens is not None:
            params["max_tokens"] = prompt.max_tokens
        if isinstance(client, DashScopeClient) and client.protocol == "native":
            if stream:
                params["incremental_output"] = workload.incremental_output
            messages = None if prompt.messages is None else list(prompt.messages)
            generate = client.stream_generate if stream else client.generate
            return generate(
                None if messages is not None else prompt.text, messages=messages, model=model,
                extra_headers=headers, **params,
            )
        assert model is not None
        chat = client.stream_chat if stream else client.chat
        return chat(prompt.as_messages(), model=model, extra_headers=headers, **params)


def _model(client: AnyClient, workload: Workload) -> str | None:
    if (
        isinstance(client, QianfanClient) and client.api_version == "v2"
        and workload.model is None and workload.endpoint is None
    ):
        return QIANFAN_V2_DEFAULT_MODEL
    return workload.model_or_default
