"""Fuzzing the vendor parsers with random garbage, vendor-shaped soups and random byte splits.

Each parser is built the way its client builds it and driven the way the transport drives it
(feed every read until `finished`, then `close()`). Whatever the input, it returns `Chunk`s or
raises an llmstreams error, never anything else, and gives the same result however the body
is split into reads. Inputs are bounded, so nothing can run long.

The SSE decoder on its own is fuzzed in tests/test_sse.py
(test_garbage_never_raises_and_decodes_the_same_in_any_split,
test_field_soup_decodes_the_same_in_any_split, test_any_split_of_a_valid_stream_gives_the_modelled_events).
Inputs that once broke the parsers (deeply nested JSON, absurd numbers) have their own tests in
test_protocol_faults.py; these strategies do not build them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmstreams.dashscope import wire as dashscope_wire
from llmstreams.errors import LLMStreamsError
from llmstreams.qianfan.auth import (
    SignatureAuthenticator,
    StaticTokenAuthenticator,
    TokenAuthenticator,
)
from llmstreams.qianfan.wire import QianfanParser
from llmstreams.transport import ResponseHead, ResponseParser
from llmstreams.types import Chunk
from tests.reliability.helpers import DASHSCOPE, QIANFAN, Vendor

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- how the clients build their parsers ----------------------------------------------------------

QIANFAN_HINTS = [
    TokenAuthenticator.rejection_hints,
    StaticTokenAuthenticator.rejection_hints,
    SignatureAuthenticator.rejection_hints,
]


def qianfan_parser(head: ResponseHead, hints_index: int) -> ResponseParser:
    return QianfanParser(head, hints=QIANFAN_HINTS[hints_index])


def dashscope_parser(head: ResponseHead, stream: bool, incremental: bool, message: bool) -> ResponseParser:
    generation = dashscope_wire.build_generation(
        stream=stream, prompt="hello", messages=None, model="billa-7b-sft-v1",
        params={"result_format": "message" if message else None, "incremental_output": incremental},
    )
    return dashscope_wire.parser_for(head, generation)


heads = st.builds(
    ResponseHead,
    status=st.sampled_from([200, 200, 200, 204, 400, 401, 429, 500, 503]),
    headers=st.just({}),
    content_type=st.sampled_from(["text/event-stream", "application/json", "text/html", ""]),
    retry_after=st.none() | st.floats(min_value=0, max_value=60),
)


# --- bodies -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
QIANFAN_FIELDS = (
    "id", "object", "created", "sentence_id", "is_end", "is_truncated", "result",
    "need_clear_history", "ban_round", "is_safe", "finish_reason", "usage", "error_code",
    "error_msg", "prompt_tokens", "completion_tokens", "total_tokens", "code", "message",
)
DASHSCOPE_FIELDS = (
    "output", "text", "finish_reason", "choices", "message", "content", "role", "usage",
    "input_tokens", "output_tokens", "total_tokens", "request_id", "code", "message",
)


def shaped(fields: Sequence[str]) -> st.SearchStrategy[Any]:
    """JSON objects built from the vendor's field names, nested, with values of any type."""
    plain_values = json_values | st.integers(0, 5) | st.sampled_from(["null", "stop", "normal", ""])
    return st.recursive(
        st.dictionaries(st.sampled_from(fields), plain_values, max_size=6),
        lambda children: st.dictionaries(
            st.sampled_from(fields), children | st.lists(children, max_size=2) | plain_values,
            max_size=6,
        ),
        max_leaves=10,
    )


def soup(fields: Sequence[str], framing: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes that look like the vendor's bodies: framing pieces, field-shaped JSON, garbage."""
    encoded = shaped(fields).map(lambda value: json.dumps(value, ensure_ascii=False).encode())
    piece = (
        st.sampled_from(framing)
        | encoded
        | json_values.map(lambda value: json.dumps(value).encode())
        | st.binary(max_size=12)
    )
    return st.lists(piece, max_size=24).map(b"".join)


QIANFAN_FRAMING = (
    b"data: ", b"data:", b"\n\n", b"\n", b"\r\n", b"\r", b"event: weird\n", b": comment\n",
    b"\xef\xbb\xbf", b"{", b"}", b'"', b"<html>", b'{"error_code": 18, "error_msg": "qps"}',
    b'{"sentence_id": 0, "is_end": true, "result": "x"}',
    b'{"sentence_id": 0, "is_end": false, "result": "x"}',
)
DASHSCOPE_FRAMING = (
    b"id:1\n", b"event:result\n", b"event:error\n", b"event:weird\n", b":HTTP_STATUS/200\n",
    b":HTTP_STATUS/429\n", b"data:", b"\n\n", b"\n", b"\r\n", b"{", b"}", b"<html>",
    b'{"output": {"text": "x", "finish_reason": "null"}}',
    b'{"output": {"text": "xy", "finish_reason": "stop"}}',
    b'{"code": "Throttling", "message": "slow down", "request_id": "r"}',
)
garbage = st.binary(max_size=3000)
texts = st.text(max_size=10)
# Edits to a well-formed body: (where, how many bytes to delete there, what to insert).
edits = st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 6), st.binary(max_size=6)), max_size=3)


def edited(body: bytes, changes: list[tuple[int, int, bytes]]) -> bytes:
    for where, deleted, inserted in changes:
        where %= len(body) + 1
        body = body[:where] + inserted + body[where + deleted:]
    return body
split_points = st.lists(st.integers(0, 3000), max_size=20)


def split(body: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({min(point, len(body)) for point in points} | {0, len(body)})
    return [body[start:end] for start, end in itertools.pairwise(cuts) if end > start]


def outcome(parser: ResponseParser, reads: list[bytes]) -> tuple[list[str], str | None]:
    """Drive `parser` as the transport does: the chunk texts, and the error type if one ended it.

    Any exception that is not an llmstreams error propagates and fails the test.
    """
    texts: list[str] = []
    try:
        for data in reads:
            take(parser.feed(data), texts)
            if parser.finished:
                break
        take(parser.close(), texts)
    except LLMStreamsError as error:
        return texts, type(error).__name__
    return texts, None


def take(chunks: Iterable[Chunk], texts: list[str]) -> None:
    """Append the texts of `chunks` one by one, so that those before an error are kept."""
    for chunk in chunks:
        assert isinstance(chunk, Chunk) and type(chunk.text) is str
        texts.append(chunk.text)


# --- the properties -----------------------------------------------------------------------------


@FUZZ
@given(st.data(), garbage | soup(QIANFAN_FIELDS, QIANFAN_FRAMING), split_points)
def test_qianfan_parser_survives_anything_in_any_split(data: st.DataObject, body: bytes, points: list[int]) -> None:
    head = data.draw(heads)
    hints = data.draw(st.integers(0, len(QIANFAN_HINTS) - 1))
    whole = outcome(qianfan_parser(head, hints), [body])
    assert outcome(qianfan_parser(head, hints), split(body, points)) == whole


@FUZZ
@given(st.data(), garbage | soup(DASHSCOPE_FIELDS, DASHSCOPE_FRAMING), split_points)
def test_dashscope_parser_survives_anything_in_any_split(data: st.DataObject, body: bytes, points: list[int]) -> None:
    head = data.draw(heads)
    options = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    whole = outcome(dashscope_parser(head, *options), [body])
    assert outcome(dashscope_parser(head, *options), split(body, points)) == whole


@FUZZ
@given(st.data(), st.lists(shaped(QIANFAN_FIELDS), min_size=1, max_size=6), split_points)
def test_qianfan_events_of_any_shape(data: st.DataObject, payloads: list[Any], points: list[int]) -> None:
    head = data.draw(heads.filter(lambda head: head.status == 200))
    body = b"".join(b"data: " + json.dumps(payload).encode() + b"\n\n" for payload in payloads)
    whole = outcome(qianfan_parser(head, 0), [body])
    assert outcome(qianfan_parser(head, 0), split(body, points)) == whole


@FUZZ
@given(st.data(), st.lists(shaped(DASHSCOPE_FIELDS), min_size=1, max_size=6), split_points)
def test_dashscope_events_of_any_shape(data: st.DataObject, payloads: list[Any], points: list[int]) -> None:
    head = data.draw(heads.filter(lambda head: head.status == 200))
    kinds = data.draw(st.lists(st.sampled_from(["result", "error"]), min_size=len(payloads), max_size=len(payloads)))
    body = b"".join(
        f"id:{number}\nevent:{kind}\n:HTTP_STATUS/200\n".encode()
        + b"data:" + json.dumps(payload).encode() + b"\n\n"
        for number, (kind, payload) in enumerate(zip(kinds, payloads, strict=True), start=1)
    )
    options = data.draw(st.tuples(st.just(True), st.booleans(), st.booleans()))
    whole = outcome(dashscope_parser(head, *options), [body])
    assert outcome(dashscope_parser(head, *options), split(body, points)) == whole


def well_formed(vendor: Vendor, pieces: list[str], ended: bool, stream: bool) -> bytes:
    if stream:
        return b"".join(vendor.events(pieces, ended=ended))
    return vendor.whole_body("".join(pieces))


@FUZZ
@given(st.lists(texts, min_size=1, max_size=5), st.booleans(), st.booleans(), edits, split_points)
def test_qianfan_well_formed_bodies_with_random_edits(
    pieces: list[str], ended: bool, stream: bool, changes: list[tuple[int, int, bytes]], points: list[int]
) -> None:
    body = edited(well_formed(QIANFAN, pieces, ended, stream), changes)
    head = ResponseHead(200, {}, "text/event-stream" if stream else "application/json", None)
    whole = outcome(qianfan_parser(head, 0), [body])
    assert outcome(qianfan_parser(head, 0), split(body, points)) == whole
    if not changes:
        assert whole == (pieces if stream else ["".join(pieces)], None if ended or not stream else "StreamInterruptedError")


@FUZZ
@given(st.lists(texts, min_size=1, max_size=5), st.booleans(), st.booleans(), edits, split_points)
def test_dashscope_well_formed_bodies_with_random_edits(
    pieces: list[str], ended: bool, stream: bool, changes: list[tuple[int, int, bytes]], points: list[int]
) -> None:
    body = edited(well_formed(DASHSCOPE, pieces, ended, stream), changes)
    head = ResponseHead(200, {}, "text/event-stream" if stream else "application/json", None)
    whole = outcome(dashscope_parser(head, stream, False, False), [body])
    assert outcome(dashscope_parser(head, stream, False, False), split(body, points)) == whole
    if not changes:
        assert whole == (pieces if stream else ["".join(pieces)], None if ended or not stream else "StreamInterruptedError")
