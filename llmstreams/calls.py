"""`Call`: one generation described in terms every client takes.

A batch line, a chat turn or a benchmark's prompt is a prompt or a chat history, a model and
a few settings. Each client turns a `Call` into its own API (`client.stream_call(call)`,
`await client.complete_call(call)`): Qianfan v1 moves a leading system message into its
`system` field and `max_tokens` into `max_output_tokens`, DashScope's native API takes a prompt
as it is, a chat-only OpenAI-compatible vendor gets a prompt as one user message. Whoever makes
the call (batch, bench, the CLI, an application's own tooling) needs to know none of that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from llmstreams.errors import InvalidParameterError

PromptAs = Literal["chat", "completion"]
PROMPT_AS: tuple[PromptAs, ...] = ("chat", "completion")


def _check_prompt_as(instance: Call, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value not in PROMPT_AS:
        raise InvalidParameterError("prompt_as", "must be 'chat', 'completion' or None", value)


@attrs.frozen(slots=True)
class Call:
    """What to generate, whichever client sends it.

    - `prompt` or `messages`: exactly one (messages: `[{"role": ..., "content": ...}]`).
    - `model` / `endpoint`: the model id; `endpoint` only for a Qianfan v1 service you deployed.
    - `max_tokens`: at most this many tokens in the answer (each client names it its own way).
    - `prompt_as`: how a `prompt` is sent: `"chat"` (one user message) or `"completion"` (the
      legacy completions API); None lets the client decide from what it knows of the model.
    - `params`: the client method's other keyword arguments, passed as they are.
    """

    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    model: str | None = None
    endpoint: str | None = None
    max_tokens: int | None = None
    prompt_as: PromptAs | None = attrs.field(default=None, validator=_check_prompt_as)
    params: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidParameterError("prompt", "give exactly one of prompt and messages")

    def as_messages(self) -> Sequence[Mapping[str, Any]]:
        """The messages, or the prompt as the one user message of a chat."""
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt}]

    def sends_prompt(self, default: PromptAs) -> bool:
        """Whether this goes to a completions API: a prompt not asked to go as a chat."""
        return self.prompt is not None and (self.prompt_as or default) == "completion"
