"""The values a generation produces: `Usage`, `Chunk` (one streamed piece) and `Completion` (the whole)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen(slots=True)
class Usage:
    """Token counts, cumulative for the generation so far."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@attrs.frozen(slots=True)
class Chunk:
    """One streamed piece of a generation.

    `text` is only the text new in this chunk, whichever way the server sends it
    (DashScope's cumulative mode included). `raw` is the decoded JSON the chunk came from.
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
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, hash=False)


@attrs.frozen(slots=True)
class Completion:
    """A whole generation, or (as an error's `.partial`) everything received before it broke.

    `is_complete` is True only when the server marked the end (`is_end` / a final finish_reason).
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


class CompletionBuilder:
    """Folds chunks into a `Completion`.

    The last value the server sent wins, except `need_clear_history`: once any chunk raises it,
    the whole completion carries it (with that chunk's `ban_round`).
    """

    __slots__ = ("_parts", "_last", "_chunk_count", "_usage", "_finish_reason", "_clear_history")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._last: Chunk | None = None
        self._chunk_count = 0
        self._usage: Usage | None = None
        self._finish_reason: str | None = None
        self._clear_history: Chunk | None = None

    def add(self, chunk: Chunk) -> None:
        self._parts.append(chunk.text)
        self._chunk_count += 1
        self._last = chunk
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.need_clear_history:
            self._clear_history = chunk

    @property
    def chunk_count(self) -> int:
        return self._chunk_count

    @property
    def usage(self) -> Usage | None:
        return self._usage

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
            chunk_count=self._chunk_count,
            is_complete=last.is_end,
        )
