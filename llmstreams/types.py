"""The values a generation produces: `Usage`, `Chunk` (one streamed piece) and `Completion` (the whole)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs


@attrs.frozen(slots=True)
class Usage:
    """Token counts, cumulative for the generation so far."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@attrs.frozen(slots=True)
class ToolCallDelta:
    """A piece of a tool call as it streams in (OpenAI-compatible dialects).

    Pieces with the same `index` belong to one call: `id`, `type` and `name` usually come
    with the first piece, `arguments` is a piece of the JSON arguments string to append.
    """

    index: int
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: str = ""


@attrs.frozen(slots=True)
class ToolCall:
    """One whole tool call the model asked for, assembled from its `ToolCallDelta` pieces.

    `arguments` is the full arguments string exactly as the model wrote it (usually JSON; it is
    not parsed, since a model may write invalid JSON).
    """

    index: int
    id: str | None
    name: str
    arguments: str
    type: str = "function"


@attrs.frozen(slots=True)
class Chunk:
    """One streamed piece of a generation.

    `text` is only the text new in this chunk, whichever way the server sends it
    (DashScope's cumulative mode included); `reasoning` likewise for a reasoning model's
    thinking text. `sentence_id` is the server's own where it sends one, else the chunk's
    position in the stream from 0. Exactly one chunk of a stream has `is_end=True`: the last.
    `raw` is the decoded JSON the chunk came from.
    """

    text: str
    sentence_id: int
    is_end: bool
    need_clear_history: bool = False
    ban_round: int | None = None
    is_truncated: bool = False
    is_safe: bool | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    id: str | None = None
    created: int | None = None
    request_id: str | None = None
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    model: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, hash=False)


# attrs' __init__ for a frozen class sets each field through object.__setattr__; the parsers make
# one Chunk per event, so they fill the slots directly instead. The unpackings below fail at
# import if a field is ever added or removed, so no slot can be left unset.
_new_instance = object.__new__
_Setter = Callable[[object, object], None]
(
    _set_text, _set_sentence_id, _set_is_end, _set_need_clear_history, _set_ban_round,
    _set_is_truncated, _set_is_safe, _set_finish_reason, _set_usage, _set_id, _set_created,
    _set_request_id, _set_reasoning, _set_tool_calls, _set_model, _set_raw,
) = (cast(_Setter, Chunk.__dict__[field.name].__set__) for field in attrs.fields(Chunk))
_set_prompt_tokens, _set_completion_tokens, _set_total_tokens = (
    cast(_Setter, Usage.__dict__[field.name].__set__) for field in attrs.fields(Usage)
)


def make_chunk(
    *,
    text: str,
    sentence_id: int,
    is_end: bool,
    need_clear_history: bool = False,
    ban_round: int | None = None,
    is_truncated: bool = False,
    is_safe: bool | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    id: str | None = None,
    created: int | None = None,
    request_id: str | None = None,
    reasoning: str = "",
    tool_calls: tuple[ToolCallDelta, ...] = (),
    model: str | None = None,
    raw: Mapping[str, Any],
) -> Chunk:
    """`Chunk(...)` at a fraction of the cost, for the parsers: the same fields and defaults, but
    keyword-only (several fields share a type, so a swapped pair would pass silently) and `raw`
    required (no dict is made per chunk for a default)."""
    chunk: Chunk = _new_instance(Chunk)
    _set_text(chunk, text)
    _set_sentence_id(chunk, sentence_id)
    _set_is_end(chunk, is_end)
    _set_need_clear_history(chunk, need_clear_history)
    _set_ban_round(chunk, ban_round)
    _set_is_truncated(chunk, is_truncated)
    _set_is_safe(chunk, is_safe)
    _set_finish_reason(chunk, finish_reason)
    _set_usage(chunk, usage)
    _set_id(chunk, id)
    _set_created(chunk, created)
    _set_request_id(chunk, request_id)
    _set_reasoning(chunk, reasoning)
    _set_tool_calls(chunk, tool_calls)
    _set_model(chunk, model)
    _set_raw(chunk, raw)
    return chunk


def make_usage(prompt_tokens: int, completion_tokens: int, total_tokens: int, previous: Usage | None) -> Usage:
    """`Usage(...)`, or `previous` itself when its counts are the same (a stream repeats them)."""
    if (
        previous is not None
        and previous.completion_tokens == completion_tokens
        and previous.prompt_tokens == prompt_tokens
        and previous.total_tokens == total_tokens
    ):
        return previous
    usage: Usage = _new_instance(Usage)
    _set_prompt_tokens(usage, prompt_tokens)
    _set_completion_tokens(usage, completion_tokens)
    _set_total_tokens(usage, total_tokens)
    return usage


@attrs.frozen(slots=True)
class Completion:
    """A whole generation, or (as an error's `.partial`) everything received before it broke.

    `is_complete` is True only when the server marked the end (`is_end` / a final finish_reason).
    `sentence_id_anomalies` counts the chunks whose server-sent `sentence_id` was not the one due
    (a gap or a repeat): recorded rather than raised, since no text is lost by it.
    """

    text: str
    usage: Usage | None = None
    finish_reason: str | None = None
    need_clear_history: bool = False
    ban_round: int | None = None
    is_truncated: bool = False
    is_safe: bool | None = None
    id: str | None = None
    created: int | None = None
    request_id: str | None = None
    chunk_count: int = 0
    is_complete: bool = False
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None
    sentence_id_anomalies: int = 0


class _ToolCallParts:
    __slots__ = ("index", "id", "type", "name", "arguments")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.type: str | None = None
        self.name = ""
        self.arguments: list[str] = []

    def add(self, delta: ToolCallDelta) -> None:
        if delta.id is not None:
            self.id = delta.id
        if delta.type is not None:
            self.type = delta.type
        if delta.name:
            self.name += delta.name
        if delta.arguments:
            self.arguments.append(delta.arguments)

    def build(self) -> ToolCall:
        return ToolCall(
            self.index, self.id, self.name, "".join(self.arguments), self.type or "function"
        )


class CompletionBuilder:
    """Folds chunks into a `Completion`.

    The last value the server sent wins, except `need_clear_history`: once any chunk raises it,
    the whole completion carries it (with that chunk's `ban_round`). Tool-call pieces are
    joined per index; a `sentence_id` other than the one due is counted, not refused.
    """

    __slots__ = (
        "_parts", "_reasoning", "_tool_calls", "_last", "_usage",
        "_finish_reason", "_clear_history", "_model", "_next_sentence_id", "_anomalies",
    )

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: dict[int, _ToolCallParts] = {}
        self._last: Chunk | None = None
        self._usage: Usage | None = None
        self._finish_reason: str | None = None
        self._clear_history: Chunk | None = None
        self._model: str | None = None
        self._next_sentence_id = 0
        self._anomalies = 0

    def add(self, chunk: Chunk) -> None:
        self._parts.append(chunk.text)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        if chunk.tool_calls:
            for delta in chunk.tool_calls:
                parts = self._tool_calls.get(delta.index)
                if parts is None:
                    parts = self._tool_calls[delta.index] = _ToolCallParts(delta.index)
                parts.add(delta)
        sentence_id = chunk.sentence_id
        if sentence_id != self._next_sentence_id:
            self._anomalies += 1
        self._next_sentence_id = sentence_id + 1
        self._last = chunk
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.need_clear_history:
            self._clear_history = chunk
        if chunk.model is not None:
            self._model = chunk.model

    @property
    def chunk_count(self) -> int:
        return len(self._parts)

    @property
    def usage(self) -> Usage | None:
        return self._usage

    @property
    def last_chunk(self) -> Chunk | None:
        return self._last

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    @property
    def text_length(self) -> int:
        """Characters of text so far (counted when asked)."""
        return sum(map(len, self._parts))

    def build(self) -> Completion:
        last = self._last
        if last is None:
            return Completion(text="")
        return Completion(
            text="".join(self._parts),
            usage=self._usage,
            finish_reason=self._finish_reason,
            need_clear_history=self._clear_history is not None,
            ban_round=self._clear_history.ban_round if self._clear_history else None,
            is_truncated=last.is_truncated,
            is_safe=last.is_safe,
            id=last.id,
            created=last.created,
            request_id=last.request_id,
            chunk_count=len(self._parts),
            is_complete=last.is_end,
            reasoning="".join(self._reasoning),
            tool_calls=tuple(
                parts.build() for _, parts in sorted(self._tool_calls.items())
            ),
            model=self._model,
            sentence_id_anomalies=self._anomalies,
        )
