"""Deterministic answers: the same request always gets the same text, ids and token counts.

Everything derives from a SHA-256 digest of the request's path and body (never Python's
per-process salted `hash()`), so separate worker processes agree too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import string
import uuid
from bisect import bisect_left
from collections.abc import Collection, Iterator, Sequence
from typing import Any

# fmt: off
# The mock's vocabulary: every answer is made of these words.
WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "it", "for", "on", "as", "with", "was", "by",
    "at", "be", "this", "from", "or", "an", "are", "not", "have", "has", "which", "but", "they",
    "one", "all", "were", "can", "more", "their", "there", "will", "would", "about", "when", "if",
    "out", "so", "what", "up", "into", "time", "some", "could", "them", "other", "than", "then",
    "now", "only", "its", "two", "over", "also", "new", "after", "first", "between", "under",
    "while", "where", "each", "through", "during", "without", "because", "river", "bridge",
    "market", "signal", "garden", "window", "engine", "harbour", "winter", "summer", "planet",
    "answer", "pattern", "stream", "packet", "server", "client", "request", "network", "latency",
    "buffer", "channel", "message", "history", "library", "museum", "valley", "mountain", "forest",
    "island", "village", "castle", "lantern", "compass", "ladder", "kettle", "violin", "harvest",
    "orchard", "meadow", "granite", "copper", "silver", "amber", "quiet", "steady", "gentle",
    "rapid", "careful", "brave", "curious", "patient", "simple", "clever", "narrow", "distant",
    "ancient", "modern", "bright", "hollow", "sturdy", "builds", "carries", "follows", "measures",
    "returns", "travels", "gathers", "explains", "describes", "reaches", "connects", "remembers",
    "balances", "shapes", "reveals", "protects",
)
# fmt: on

_TOKEN = re.compile(r"[A-Za-z0-9]+|\S")
_ID_ALPHABET = string.ascii_lowercase + string.digits


def request_digest(path: str, body: bytes, *, ignored_fields: Collection[str] = ()) -> bytes:
    """The key of a request: equal for two attempts of the same request.

    A JSON object body is keyed by its canonical form without `ignored_fields` (a dotted name
    reaches into a nested object: "parameters.incremental_output"), so that a request asking for
    a stream and the same request asking for a whole answer get the same answer.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        for name in ignored_fields:
            _drop_field(payload, name.split("."))
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(path.encode() + b"\n" + body).digest()


def _drop_field(payload: dict[str, Any], names: list[str]) -> None:
    """Remove the dotted field; an object left empty by that goes too (as if never sent)."""
    name, *inner_names = names
    if not inner_names:
        payload.pop(name, None)
        return
    inner = payload.get(name)
    if isinstance(inner, dict):
        _drop_field(inner, inner_names)
        if not inner:
            del payload[name]


def _sentences(rng: random.Random, count: int) -> list[str]:
    sentences = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(6, 14))
        sentences.append(" ".join(words).capitalize() + ".")
    return sentences


# Answers are slices of one fixed text, so composing one costs a slice, not a word-by-word draw.
_CORPUS_SENTENCES = _sentences(random.Random(0), 2048)
_CORPUS = " ".join(_CORPUS_SENTENCES) + " "
_SENTENCE_STARTS = list(
    itertools.accumulate((len(s) + 1 for s in _CORPUS_SENTENCES[:-1]), initial=0)
)


# The first word of each length, to close a sentence exactly at an answer's length.
_WORDS_BY_LENGTH = {len(word): word for word in reversed(WORDS)}
_LONGEST_WORD = max(_WORDS_BY_LENGTH)
# Fillers that always leave room for a closing word: lengths 2 to 9 are all in _WORDS_BY_LENGTH.
_SPARE_WORDS = ("the", "and", "of")


def answer_text(digest: bytes, length: int, purpose: bytes = b"") -> str:
    """`length` characters of English-looking sentences, chosen by `digest`; texts of other
    `purpose`s (b"reasoning") for the same digest start elsewhere in the corpus."""
    if purpose:
        digest = hashlib.sha256(digest + b"\n" + purpose).digest()
    return corpus_text(answer_start(digest), length)


def answer_start(digest: bytes) -> int:
    """The corpus sentence an answer chosen by `digest` starts at."""
    return int.from_bytes(digest[:8], "big") % len(_SENTENCE_STARTS)


def corpus_text(sentence: int, length: int) -> str:
    """Exactly `length` characters of the fixed corpus from its `sentence`-th sentence (wrapping
    around), ending with a whole sentence: the corpus up to its last full stop that fits, then
    one sentence of its next words made to fill the rest. Below 3 characters, a bare slice."""
    start = _SENTENCE_STARTS[sentence]
    text = _CORPUS[start : start + length]
    if len(text) < length:
        repeats = length // len(_CORPUS) + 1
        text = (_CORPUS[start:] + _CORPUS * repeats)[:length]
    if length < 3 or text.endswith("."):
        return text
    end = text.rfind(".") + 1
    if 0 < length - end < 4:  # too little room for " Of.": end one sentence earlier
        end = text.rfind(".", 0, end - 1) + 1
    following = (_CORPUS * 2)[(start + end) % len(_CORPUS) :][: length - end + 2 * _LONGEST_WORD]
    words = [word.strip(".").lower() for word in following.split()[:-1]]
    closing = _sentence_of_length(itertools.chain(words, itertools.cycle(_SPARE_WORDS)),
                                  length - end - (1 if end else 0))
    return text[:end] + (" " if end else "") + closing


def _sentence_of_length(words: Iterator[str], length: int) -> str:
    """A sentence of exactly `length` (at least 3) characters ending with a full stop: `words`
    in turn while each leaves room for a closing word, then the closing word that fits."""
    chosen: list[str] = []
    room = length - 1
    while True:
        closing = room - (1 if chosen else 0)
        if closing in _WORDS_BY_LENGTH:
            chosen.append(_WORDS_BY_LENGTH[closing])
            break
        word = next(words)
        left = room - len(word) - (1 if chosen else 0)
        if left >= 3:
            chosen.append(word)
            room = left
    return " ".join(chosen).capitalize() + "."


def filler_text(length: int) -> str:
    """`length` characters that add a single token however long they are."""
    letters = string.ascii_lowercase
    return "".join(letters[index % len(letters)] for index in range(length))


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: each ASCII word or number is a token, so is any other character."""
    return sum(1 for _ in _TOKEN.finditer(text))


def token_counts_at(text: str, ends: Sequence[int]) -> list[int]:
    """For each end offset, the tokens of `text` that start before it (usage so far)."""
    starts = [match.start() for match in _TOKEN.finditer(text)]
    return [bisect_left(starts, end) for end in ends]


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` holding at most `max_tokens` tokens."""
    end = 0
    for index, match in enumerate(_TOKEN.finditer(text)):
        if index == max_tokens:
            break
        end = match.end()
    return text[:end]


def split_chunks(text: str, chunk_chars: int) -> list[str]:
    """`text` in pieces of `chunk_chars` characters; an empty text is one empty piece."""
    return [text[start : start + chunk_chars] for start in range(0, len(text), chunk_chars)] or [""]


def qianfan_id(digest: bytes) -> str:
    """A Qianfan-style response id: "as-" and 10 lowercase letters or digits."""
    number = int.from_bytes(digest[:8], "big")
    characters = []
    for _ in range(10):
        number, index = divmod(number, len(_ID_ALPHABET))
        characters.append(_ID_ALPHABET[index])
    return "as-" + "".join(characters)


def request_uuid(digest: bytes) -> str:
    """A DashScope-style request id (a UUID4 string)."""
    return str(uuid.UUID(bytes=digest[:16], version=4))
