"""What the requests of a benchmark ask: prompts from our batch JSONL, from a ShareGPT-format
JSON file, or random prompts of given input lengths, each with an optional output length."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from llmstreams.batch import BatchRequest, parse_line, read_lines

# ShareGPT has no token counts: a reference answer's length becomes max_tokens at this many
# characters per token (the usual rule of thumb for English text).
CHARS_PER_TOKEN = 4


class PromptsError(ValueError):
    """A prompts file that cannot be used."""


@attrs.frozen(slots=True)
class Prompt:
    """One request's content: `text` (a prompt) or `messages` (a chat), exactly one; the
    output length to ask for (`max_tokens`, None: the server's default) and any other
    parameters of the client method (`params`, as in a batch line)."""

    text: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None
    max_tokens: int | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)

    def as_messages(self) -> list[Mapping[str, Any]]:
        if self.messages is not None:
            return list(self.messages)
        return [{"role": "user", "content": self.text or ""}]

    def as_text(self) -> str:
        """The prompt as one text: a chat's last user message."""
        if self.text is not None:
            return self.text
        users = [m for m in self.messages or () if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""


def from_batch_jsonl(path: Path) -> tuple[Prompt, ...]:
    """The requests of a batch input file (`{"id", "prompt" | "messages", ...params}` per
    line; `max_tokens` in a line is its output length). Any invalid line is refused."""
    prompts = []
    try:
        for number, raw in read_lines(path):
            parsed = parse_line(number, raw)
            if parsed is None:
                continue
            if not isinstance(parsed, BatchRequest):
                raise PromptsError(f"prompts file {path} line {parsed.line}: {parsed.message}")
            params = dict(parsed.params)
            max_tokens = params.pop("max_tokens", None)
            messages = None if parsed.messages is None else tuple(parsed.messages)
            prompts.append(Prompt(parsed.prompt, messages, _tokens(path, max_tokens), params))
    except OSError as error:
        raise PromptsError(f"cannot read the prompts file {path}: {error.strerror or error}") from None
    return _some(prompts, path)


def from_sharegpt(path: Path) -> tuple[Prompt, ...]:
    """The first human turn of each ShareGPT conversation (`[{"conversations": [{"from":
    "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}, ...]`), asking for about as
    many tokens as the reference answer had (CHARS_PER_TOKEN); conversations without a human
    turn followed by an answer are skipped, as vLLM's loader does."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PromptsError(f"cannot read the ShareGPT file {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise PromptsError(f"the ShareGPT file {path} is not valid JSON ({error.msg})") from None
    if not isinstance(document, list):
        raise PromptsError(f"the ShareGPT file {path} must hold a JSON list of conversations")
    prompts = []
    for entry in document:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        question, answer = turns[0], turns[1]
        if not (isinstance(question, dict) and isinstance(answer, dict)):
            continue
        if question.get("from") != "human" or not isinstance(question.get("value"), str):
            continue
        reference = answer.get("value")
        max_tokens = max(1, len(reference) // CHARS_PER_TOKEN) if isinstance(reference, str) else None
        prompts.append(Prompt(text=question["value"], max_tokens=max_tokens))
    return _some(prompts, path)


def random_prompts(input_lengths: Sequence[int], count: int, *, seed: int) -> tuple[Prompt, ...]:
    """`count` prompts of random lowercase words, the i-th `input_lengths[i % len]` words long
    (a short word is about one token for most tokenizers)."""
    rng = random.Random(seed)
    return tuple(
        Prompt(text=" ".join(_word(rng) for _ in range(input_lengths[index % len(input_lengths)])))
        for index in range(count)
    )


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))


def with_max_tokens(prompts: Sequence[Prompt], max_tokens: int | None) -> tuple[Prompt, ...]:
    """`prompts`, every one asking for `max_tokens` output tokens (None: as they were)."""
    if max_tokens is None:
        return tuple(prompts)
    return tuple(attrs.evolve(prompt, max_tokens=max_tokens) for prompt in prompts)


def _tokens(path: Path, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PromptsError(f"prompts file {path}: max_tokens must be a positive integer, got {value!r}")
    return value


def _some(prompts: list[Prompt], path: Path) -> tuple[Prompt, ...]:
    if not prompts:
        raise PromptsError(f"{path} holds no usable prompt")
    return tuple(prompts)
