"""The llmstreams clients as load-generator `Target`s, used only through their public API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from llmstreams import Chunk, ChunkStream, Completion, Pool, providers
from llmstreams.bench.prompts import Prompt
from llmstreams.calls import Call
from llmstreams.client import BaseClient

DEFAULT_PROMPT = "请用三句话介绍一下流式输出的好处。"


@attrs.frozen(slots=True)
class Workload:
    """What a benchmark sends, request after request.

    `provider` is a name of the provider registry. `model` / `endpoint` as the client takes
    them (None: the provider's default model). `prompts` are sent in turn, round and round;
    without any, every request sends `prompt`. `max_tokens` is the output length asked of every
    request (a prompt's own wins). `incremental_output` False asks DashScope's native API for
    events that repeat the whole text (a parameter only that API takes).
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
        if self.provider not in providers.PROVIDERS:
            raise ValueError(
                f"provider must be one of {', '.join(providers.PROVIDERS)}, got {self.provider!r}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")

    def model_or_default(self, *, mock: bool) -> str | None:
        if self.model is None and self.endpoint is None:
            return providers.get(self.provider).model_for(mock=mock)
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
    provider: str, *, base_url: str | None, pool: Pool, max_retries: int, mock: bool,
    mock_auth: str | None = None,
) -> BaseClient:
    """A client of `provider` on `pool`.

    Against a real server (`mock` False) the client reads its credentials (and, without
    `base_url`, its base URL) from the environment as usual. Against the mock at `base_url` it
    gets the throwaway credentials of the provider's authentication method `mock_auth` (None:
    the provider's first).
    """
    registered = providers.get(provider)
    if not mock:
        return registered.client(base_url=base_url, pool=pool, max_retries=max_retries)
    assert base_url is not None
    return registered.mock_client(base_url, auth=mock_auth, pool=pool, max_retries=max_retries)


class ClientTarget:
    """Sends `workload` through an llmstreams client: a `ChunkStream` per request when
    streaming, else one awaited `Completion` per request (counted as one chunk), taking the
    workload's prompts in turn.

    `mock`: the target is the mock (a model left out is the provider's mock model).
    `reads_sent_at`: the server stamps each event with its true send time (the ruler, the
    mock), which the load generator then reads from every chunk. `reads_arrival_times`: each
    chunk's time is when its bytes arrived (a `ChunkStream`'s `last_read_at`), not when the
    load generator got it.
    Building the target makes one call without sending it, so that a parameter the client
    rejects fails here rather than as an error on every request.
    """

    def __init__(
        self, client: BaseClient, workload: Workload, *, mock: bool = False,
        reads_sent_at: bool = False,
    ) -> None:
        self._client = client
        self._workload = workload
        self._model = workload.model_or_default(mock=mock)
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
        workload = self._workload
        params = dict(prompt.params)
        headers = params.pop("extra_headers", None) or workload.extra_headers
        if headers is not None:
            params["extra_headers"] = headers
        if stream and not workload.incremental_output:
            params["incremental_output"] = False
        call = Call(
            prompt=prompt.text if prompt.messages is None else None,
            messages=None if prompt.messages is None else list(prompt.messages),
            model=self._model, endpoint=workload.endpoint, max_tokens=prompt.max_tokens,
            prompt_as="chat", params=params,
        )
        if stream:
            return self._client.stream_call(call)
        return self._client.complete_call(call)
