"""What the mock model says to one request: its chunks and the token usage after each."""

from __future__ import annotations

import functools
import itertools

import attrs

from llmstreams.mock.behaviour import Behaviour
from llmstreams.mock.text import (
    answer_start,
    corpus_text,
    count_tokens,
    split_chunks,
    token_counts_at,
    truncate_to_tokens,
)


@attrs.frozen
class Answer:
    chunks: tuple[str, ...]
    prompt_tokens: int
    truncated: bool
    """Cut short by the request's max tokens parameter."""
    completion_tokens: tuple[int, ...]
    """Completion tokens sent once each chunk is out (cumulative)."""

    @classmethod
    def from_chunks(cls, chunks: list[str], *, prompt_tokens: int, truncated: bool) -> Answer:
        text = "".join(chunks)
        ends = list(itertools.accumulate(len(chunk) for chunk in chunks))
        return cls(
            chunks=tuple(chunks),
            prompt_tokens=prompt_tokens,
            truncated=truncated,
            completion_tokens=tuple(token_counts_at(text, ends)),
        )

    @classmethod
    def empty(cls, *, prompt_tokens: int) -> Answer:
        """The answer to a refused input: no text at all."""
        return cls.from_chunks([""], prompt_tokens=prompt_tokens, truncated=False)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def with_chunks(self, chunks: list[str]) -> Answer:
        return Answer.from_chunks(
            chunks, prompt_tokens=self.prompt_tokens, truncated=self.truncated
        )


def compose_answer(
    digest: bytes, behaviour: Behaviour, *, prompt_text: str, max_tokens: int | None
) -> Answer:
    chunks, truncated, completion_tokens = _compose_text(
        answer_start(digest), behaviour.answer_chars, behaviour.chunk_chars, max_tokens
    )
    return Answer(
        chunks=chunks,
        prompt_tokens=count_tokens(prompt_text),
        truncated=truncated,
        completion_tokens=completion_tokens,
    )


# An answer's text depends on the request only through its corpus sentence (one of a few
# thousand) and these knobs, so a busy mock composes each one once.
@functools.lru_cache(maxsize=8192)
def _compose_text(
    sentence: int, answer_chars: int, chunk_chars: int, max_tokens: int | None
) -> tuple[tuple[str, ...], bool, tuple[int, ...]]:
    text = corpus_text(sentence, answer_chars)
    truncated = max_tokens is not None and count_tokens(text) > max_tokens
    if max_tokens is not None and truncated:
        text = truncate_to_tokens(text, max_tokens)
    answer = Answer.from_chunks(
        split_chunks(text, chunk_chars), prompt_tokens=0, truncated=truncated
    )
    return answer.chunks, truncated, answer.completion_tokens
