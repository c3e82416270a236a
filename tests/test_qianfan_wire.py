"""Qianfan response parsing and error mapping, fed with bytes (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmstreams import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
)
from llmstreams.qianfan.wire import RETRYABLE_CODES, QianfanParser, error_class
from llmstreams.transport import ResponseHead
from llmstreams.types import Chunk, CompletionBuilder, Usage
from tests.support import chunks_until_error

# The stream example of the Dolly-12B seed page, verbatim.
DOLLY_STREAM = (
    b'data: {"id":"as-2m3nh3th6b","object":"chat.completion","created":1702551868,"sentence_id":0,'
    b'"is_end":false,"is_truncated":false,"result":" Hello! I\'m happy to help you with your '
    b'question.","need_clear_history":false,"usage":{"prompt_tokens":5,"completion_tokens":0,'
    b'"total_tokens":5}}\n\n'
    b'data: {"id":"as-2m3nh3th6b","object":"chat.completion","created":1702551874,"sentence_id":1,'
    b'"is_end":false,"is_truncated":false,"result":"early as the 7th century BC.",'
    b'"need_clear_history":false,"usage":{"prompt_tokens":5,"completion_tokens":0,'
    b'"total_tokens":5}}\n\n'
    b'data: {"id":"as-2m3nh3th6b","object":"chat.completion","created":1702551880,"sentence_id":2,'
    b'"is_end":true,"is_truncated":false,"result":"note that while the Great Wall.",'
    b'"need_clear_history":false,"usage":{"prompt_tokens":5,"completion_tokens":276,'
    b'"total_tokens":281}}\n\n'
)

# The non-stream example of the CodeLlama-7b-Instruct seed page (is_safe as 1).
CODELLAMA_WHOLE = {
    "id": "as-kkk0em6hmv",
    "object": "chat.completion",
    "created": 1703581581,
    "result": "To list all text files ...",
    "is_safe": 1,
    "usage": {"prompt_tokens": 29, "completion_tokens": 218, "total_tokens": 247},
}


def head(status: int = 200, content_type: str = "text/event-stream", retry_after: float | None = None) -> ResponseHead:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))
    return ResponseHead(status=status, headers=headers, content_type=content_type, retry_after=retry_after)


def event(sentence_id: int, text: str, *, is_end: bool = False, **extra: Any) -> bytes:
    payload = {"id": "as-test", "created": 1, "sentence_id": sentence_id, "is_end": is_end, "result": text}
    payload.update(extra)
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def parse_all(parser: QianfanParser, pieces: list[bytes]) -> list[Chunk]:
    chunks: list[Chunk] = []
    for piece in pieces:
        chunks += parser.feed(piece)
        if parser.finished:
            return chunks
    return chunks + list(parser.close())


def test_seed_stream_parses_into_chunks_with_every_field() -> None:
    chunks = parse_all(QianfanParser(head()), [DOLLY_STREAM])
    assert [chunk.sentence_id for chunk in chunks] == [0, 1, 2]
    assert [chunk.is_end for chunk in chunks] == [False, False, True]
    assert chunks[1].text == "early as the 7th century BC."
    assert chunks[0].id == chunks[0].request_id == "as-2m3nh3th6b"
    assert chunks[2].created == 1702551880
    assert chunks[2].usage == Usage(prompt_tokens=5, completion_tokens=276, total_tokens=281)
    assert chunks[0].need_clear_history is False and chunks[0].is_truncated is False
    assert chunks[0].raw["object"] == "chat.completion"


@pytest.mark.parametrize("piece_size", [1, 2, 7, 50])
def test_stream_split_anywhere_gives_the_same_chunks(piece_size: int) -> None:
    pieces = [DOLLY_STREAM[i : i + piece_size] for i in range(0, len(DOLLY_STREAM), piece_size)]
    chunks = parse_all(QianfanParser(head()), pieces)
    assert [chunk.text for chunk in chunks] == [
        chunk.text for chunk in parse_all(QianfanParser(head()), [DOLLY_STREAM])
    ]


def test_whole_json_answer_is_one_final_chunk_with_is_safe_as_bool() -> None:
    parser = QianfanParser(head(content_type="application/json"))
    chunks = parse_all(parser, [json.dumps(CODELLAMA_WHOLE).encode()])
    assert len(chunks) == 1
    (chunk,) = chunks
    assert chunk.is_end is True and chunk.is_safe is True
    assert chunk.text == "To list all text files ..."
    assert chunk.usage == Usage(29, 218, 247)
    assert parser.finished


@pytest.mark.parametrize(("wire_value", "expected"), [(1, True), (0, False), (True, True), (False, False)])
def test_flags_sent_as_numbers_or_booleans_become_bools(wire_value: object, expected: bool) -> None:
    data = event(0, "x", is_end=True, is_safe=wire_value, need_clear_history=wire_value, is_truncated=wire_value)
    (chunk,) = parse_all(QianfanParser(head()), [data])
    assert chunk.is_safe is expected
    assert chunk.need_clear_history is expected
    assert chunk.is_truncated is expected


def test_need_clear_history_and_ban_round_reach_the_completion() -> None:
    data = event(0, "", is_end=True, need_clear_history=True, ban_round=-1, finish_reason="content_filter")
    builder = CompletionBuilder()
    for chunk in parse_all(QianfanParser(head()), [data]):
        builder.add(chunk)
    completion = builder.build()
    assert completion.need_clear_history is True
    assert completion.ban_round == -1
    assert completion.finish_reason == "content_filter"


def test_error_body_on_a_stream_request_raises_the_mapped_error() -> None:
    body = b'{"error_code":336501,"error_msg":"Rate limit reached for RPM","id":"as-err1"}'
    parser = QianfanParser(head(content_type="application/json", retry_after=1.5))
    assert list(parser.feed(body)) == []
    with pytest.raises(RateLimitError) as caught:
        list(parser.close())
    error = caught.value
    assert error.code == 336501
    assert error.message == "Rate limit reached for RPM"
    assert error.request_id == "as-err1"
    assert error.http_status == 200
    assert error.retryable is True
    assert error.retry_after == 1.5


def test_good_chunks_come_out_before_a_mid_stream_error() -> None:
    data = event(0, "a") + event(1, "b") + b'data: {"error_code":336100,"error_msg":"try again later","id":"as-x"}\n\n'
    parser = QianfanParser(head())
    chunks, error = chunks_until_error(parser.feed(data))
    assert [chunk.text for chunk in chunks] == ["a", "b"]
    assert isinstance(error, ServerError)
    assert error.code == 336100
    assert error.request_id == "as-x"


def test_events_are_decoded_only_as_their_chunks_are_taken() -> None:
    parser = QianfanParser(head())
    chunks = iter(parser.feed(event(0, "a") + b"data: {not json\n\n"))
    assert next(chunks).text == "a"
    with pytest.raises(ProtocolError, match="not a Qianfan chunk"):
        next(chunks)


def test_error_event_first_raises_at_once() -> None:
    parser = QianfanParser(head())
    with pytest.raises(AuthenticationError):
        list(parser.feed(b'data: {"error_code":110,"error_msg":"Access token invalid"}\n\n'))


def test_a_skipped_sentence_id_loses_no_text() -> None:
    parser = QianfanParser(head())
    chunks = list(parser.feed(event(0, "a") + event(1, "b") + event(3, "d") + event(4, "e", is_end=True)))
    assert [chunk.sentence_id for chunk in chunks] == [0, 1, 3, 4]
    assert list(parser.close()) == []
    assert completion_of(chunks) == ("abde", 1)


def test_sentence_id_zero_on_every_chunk_loses_no_text() -> None:
    # What the official Qianfan SDK's own test server sends.
    parser = QianfanParser(head())
    chunks = list(parser.feed(event(0, "a") + event(0, "b") + event(0, "c", is_end=True)))
    assert completion_of(chunks) == ("abc", 2)


def test_interleaved_sentence_ids_lose_no_text() -> None:
    # Plugin streams interleave two numberings.
    parser = QianfanParser(head())
    chunks = list(parser.feed(
        event(0, "a") + event(0, "b") + event(1, "c") + event(1, "d") + event(2, "e", is_end=True)
    ))
    assert completion_of(chunks) == ("abcde", 2)


def completion_of(chunks: list[Chunk]) -> tuple[str, int]:
    builder = CompletionBuilder()
    for chunk in chunks:
        builder.add(chunk)
    completion = builder.build()
    return completion.text, completion.sentence_id_anomalies


def test_malformed_event_is_a_protocol_error_quoting_it() -> None:
    parser = QianfanParser(head())
    assert len(list(parser.feed(event(0, "a")))) == 1
    with pytest.raises(ProtocolError, match="not a Qianfan chunk") as caught:
        list(parser.feed(b'data: {"id":"as-1","result":"\n\n'))
    assert '{"id":"as-1"' in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        b'data: {"sentence_id":0,"is_end":false}\n\n',  # no result
        b'data: {"sentence_id":"0","is_end":false,"result":"x"}\n\n',  # sentence_id not an int
        b'data: {"sentence_id":0,"is_end":"no","result":"x"}\n\n',  # is_end not a flag
        b'data: {"sentence_id":0,"is_end":false,"result":7}\n\n',  # result not a string
        b"data: [1, 2]\n\n",
        b'data: "text"\n\n',
        b'data: {"sentence_id":0,"is_end":false,"result":"x","usage":{"prompt_tokens":1}}\n\n',
        *(
            b'data: {"sentence_id":0,"is_end":false,"result":"x","usage":{"prompt_tokens":%s,'
            b'"completion_tokens":1,"total_tokens":2}}\n\n' % count
            for count in (b'"1"', b"true", b"1.5", b"null", b"[1]")
        ),
        b'data: {"sentence_id":0,"is_end":false,"result":"x","usage":[1,1,2]}\n\n',
    ],
)
def test_events_of_the_wrong_shape_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        list(QianfanParser(head()).feed(data))


def test_stream_ending_before_is_end_is_interrupted() -> None:
    parser = QianfanParser(head())
    assert len(list(parser.feed(event(0, "a")))) == 1
    with pytest.raises(StreamInterruptedError, match="before its last chunk"):
        list(parser.close())


def test_html_body_on_a_stream_request_is_a_protocol_error_with_a_snippet() -> None:
    page = b"<html><head><title>Network sign-in</title></head><body>" + b"x" * 300 + b"</body></html>"
    parser = QianfanParser(head(content_type="text/html"))
    with pytest.raises(ProtocolError, match="Network sign-in") as caught:
        parse_all(parser, [page[:10], page[10:]])
    assert "text/html" in str(caught.value)


def test_short_foreign_body_is_reported_at_its_end() -> None:
    parser = QianfanParser(head(content_type="text/plain"))
    assert list(parser.feed(b"Bad Gateway")) == []
    with pytest.raises(ProtocolError, match="Bad Gateway"):
        list(parser.close())


def test_empty_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="empty body"):
        list(QianfanParser(head()).close())


def test_leading_bom_and_blank_lines_before_events_are_accepted() -> None:
    chunks = parse_all(QianfanParser(head()), [b"\xef\xbb", b"\xbf\n", event(0, "a", is_end=True)])
    assert [chunk.text for chunk in chunks] == ["a"]


@pytest.mark.parametrize(
    ("status", "body", "expected", "retryable"),
    [
        (503, b"<html>busy</html>", ServerError, True),
        (500, b'{"error_code":336000,"error_msg":"Internal error","id":"as-1"}', ServerError, True),
        (429, b"", RateLimitError, True),
        (401, b'{"code":"AccessDenied","message":"signature mismatch","requestId":"r-1"}', AuthenticationError, False),
        (403, b"forbidden", PermissionDeniedError, False),
        (404, b"not found", NotFoundError, False),
        (400, b'{"error_code":336003,"error_msg":"Invalid Parameter"}', InvalidRequestError, False),
        # The status table all vendors share (llmstreams.errors): 408 and 409 are retried too.
        (408, b"", ServerError, True),
        (409, b'{"error_code":336003,"error_msg":"conflict"}', ServerError, True),
        (410, b"gone", NotFoundError, False),
        (405, b"", APIError, False),
    ],
)
def test_http_error_statuses(status: int, body: bytes, expected: type[APIError], retryable: bool) -> None:
    parser = QianfanParser(head(status=status, content_type="text/html", retry_after=0.5))
    assert list(parser.feed(body)) == []
    with pytest.raises(expected) as caught:
        list(parser.close())
    assert type(caught.value) is expected
    assert caught.value.http_status == status
    assert caught.value.retryable is retryable
    assert caught.value.retry_after == 0.5


def test_bce_style_error_body_keeps_code_message_and_request_id() -> None:
    parser = QianfanParser(head(status=401, content_type="application/json"))
    list(parser.feed(b'{"code":"AccessDenied","message":"signature mismatch","requestId":"r-1"}'))
    with pytest.raises(AuthenticationError) as caught:
        list(parser.close())
    assert (caught.value.code, caught.value.message, caught.value.request_id) == (
        "AccessDenied", "signature mismatch", "r-1",
    )


def test_huge_error_body_is_not_buffered_without_end() -> None:
    parser = QianfanParser(head(status=502, content_type="text/html"))
    with pytest.raises(ServerError):
        for _ in range(100):
            list(parser.feed(b"x" * 4096))


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ((110, 111, 13, 14), AuthenticationError),
        ((6, 336004), PermissionDeniedError),
        ((3, 15, 336005), NotFoundError),
        ((4, 17, 18, 19, 336501, 336502), RateLimitError),
        ((1, 2, 336000, 336100), ServerError),
        ((100, 336001, 336002, 336003, 336006, 336099), InvalidRequestError),
        ((5, 336101, 999999), APIError),
    ],
)
def test_error_code_classes(codes: tuple[int, ...], expected: type[APIError]) -> None:
    for code in codes:
        assert error_class(code) is expected, code


def test_retryable_codes() -> None:
    assert frozenset({2, 18, 336100, 336501, 336502}) == RETRYABLE_CODES


def test_unknown_code_is_a_plain_api_error_with_its_code() -> None:
    parser = QianfanParser(head(content_type="application/json"))
    list(parser.feed(b'{"error_code":424242,"error_msg":"something new","id":"as-n"}'))
    with pytest.raises(APIError) as caught:
        list(parser.close())
    assert type(caught.value) is APIError
    assert caught.value.code == 424242
    assert caught.value.retryable is False


def test_rejection_hints_are_added_to_their_codes_only() -> None:
    hints = {110: "pass api_key and secret_key instead"}
    parser = QianfanParser(head(content_type="application/json"), hints=hints)
    list(parser.feed(b'{"error_code":110,"error_msg":"Access token invalid or no longer valid"}'))
    with pytest.raises(AuthenticationError, match=r"no longer valid\. pass api_key and secret_key"):
        list(parser.close())
    other = QianfanParser(head(content_type="application/json"), hints=hints)
    list(other.feed(b'{"error_code":14,"error_msg":"IAM Certification failed"}'))
    with pytest.raises(AuthenticationError) as caught:
        list(other.close())
    assert caught.value.message == "IAM Certification failed"


def test_anything_after_the_end_is_ignored() -> None:
    parser = QianfanParser(head())
    chunks = list(parser.feed(event(0, "a", is_end=True) + b"data: garbage\n\n"))
    assert [chunk.text for chunk in chunks] == ["a"]
    assert parser.finished
