"""Qianfan v1 and the OpenAI-compatible dialect tell a body's shape from its first bytes with one
parser base (`llmstreams.bodyparser.SniffingParser`): the same shapes, limits and errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmstreams import APIError, ProtocolError, StreamInterruptedError
from llmstreams.bodyparser import MAX_ERROR_BODY, MAX_WHOLE_BODY, SNIPPET_BYTES, SniffingParser
from llmstreams.openai.wire import GENERIC, DialectParser
from llmstreams.qianfan.wire import QianfanParser
from llmstreams.transport import ResponseHead

PARSERS: dict[str, Callable[[ResponseHead], SniffingParser]] = {
    "qianfan": QianfanParser,
    "openai": lambda head: DialectParser(head, GENERIC, "chat"),
}


def head(status: int = 200, content_type: str = "text/html") -> ResponseHead:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))
    return ResponseHead(status=status, headers=headers, content_type=content_type, retry_after=None)


@pytest.fixture(params=sorted(PARSERS))
def make(request: pytest.FixtureRequest) -> Callable[[ResponseHead], SniffingParser]:
    return PARSERS[request.param]


def test_a_foreign_body_is_refused_once_a_snippet_arrived(
    make: Callable[[ResponseHead], SniffingParser],
) -> None:
    parser = make(head())
    page = b"<html><title>Sign in</title>" + b"x" * SNIPPET_BYTES
    assert list(parser.feed(page[:10])) == []
    with pytest.raises(ProtocolError, match="expected server-sent events or JSON, got text/html"):
        list(parser.feed(page[10:]))


def test_an_empty_body_is_a_protocol_error(make: Callable[[ResponseHead], SniffingParser]) -> None:
    parser = make(head())
    assert list(parser.feed(b" \r\n")) == []
    with pytest.raises(ProtocolError, match="empty body"):
        list(parser.close())


def test_events_that_end_before_any_event_are_an_interruption(
    make: Callable[[ResponseHead], SniffingParser],
) -> None:
    parser = make(head(content_type="text/event-stream"))
    assert list(parser.feed(b": keep-alive\n\ndata: {\"id\"")) == []
    with pytest.raises(StreamInterruptedError):
        list(parser.close())


def test_a_whole_answer_has_one_size_limit(make: Callable[[ResponseHead], SniffingParser]) -> None:
    parser = make(head(content_type="application/json"))
    piece = b" " * (1024 * 1024)
    assert list(parser.feed(b"{" + piece)) == []
    with pytest.raises(ProtocolError, match=f"longer than {MAX_WHOLE_BODY} bytes"):
        for _ in range(MAX_WHOLE_BODY // len(piece)):
            list(parser.feed(piece))


def test_an_error_body_is_read_as_the_status_at_most_max_error_body(
    make: Callable[[ResponseHead], SniffingParser],
) -> None:
    parser = make(head(status=502))
    assert list(parser.feed(b"x" * MAX_ERROR_BODY)) == []
    with pytest.raises(APIError) as caught:
        list(parser.feed(b"x"))
    assert caught.value.http_status == 502 and caught.value.retryable
