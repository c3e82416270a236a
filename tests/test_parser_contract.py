"""Both vendors' parsers keep the core's contract: when one read holds good events and then a
bad one, the good chunks come first and the error is raised in its turn, by the same iterable,
so the stream raises it without reading again (even if the server then goes quiet)."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmstreams import APIError, ProtocolError
from llmstreams.dashscope.wire import EventStreamParser
from llmstreams.qianfan.wire import QianfanParser
from llmstreams.transport import ResponseHead, ResponseParser
from tests.support import chunks_until_error

SSE_HEAD = ResponseHead(
    status=200,
    headers=CIMultiDictProxy(CIMultiDict({"Content-Type": "text/event-stream"})),
    content_type="text/event-stream",
    retry_after=None,
)


def qianfan_event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def dashscope_frame(number: int, kind: str, payload: dict[str, object], status: int = 200) -> bytes:
    data = json.dumps(payload).encode()
    return b"id:%d\nevent:%s\n:HTTP_STATUS/%d\ndata:" % (number, kind.encode(), status) + data + b"\n\n"


GOOD_QIANFAN = qianfan_event({"id": "as-1", "sentence_id": 0, "is_end": False, "result": "good"})
GOOD_DASHSCOPE = dashscope_frame(
    1, "result", {"output": {"text": "good", "finish_reason": "null"}, "request_id": "r-1"}
)

CASES = [
    pytest.param(
        lambda: QianfanParser(SSE_HEAD), GOOD_QIANFAN + b"data: {not json\n\n", ProtocolError,
        id="qianfan-malformed",
    ),
    pytest.param(
        lambda: QianfanParser(SSE_HEAD),
        GOOD_QIANFAN + qianfan_event({"error_code": 336000, "error_msg": "internal"}), APIError,
        id="qianfan-error-event",
    ),
    pytest.param(
        lambda: EventStreamParser(cumulative=False, message_format=False),
        GOOD_DASHSCOPE + b"id:2\nevent:result\ndata:{not json\n\n", ProtocolError,
        id="dashscope-malformed",
    ),
    pytest.param(
        lambda: EventStreamParser(cumulative=False, message_format=False),
        GOOD_DASHSCOPE + dashscope_frame(2, "error", {"code": "InternalError", "message": "x"}, 500),
        APIError,
        id="dashscope-error-event",
    ),
]


@pytest.mark.parametrize(("make_parser", "body", "error_type"), CASES)
def test_good_chunks_first_then_the_error(
    make_parser: type[ResponseParser], body: bytes, error_type: type[Exception]
) -> None:
    parser = make_parser()
    chunks, error = chunks_until_error(parser.feed(body))
    assert [chunk.text for chunk in chunks] == ["good"]
    assert isinstance(error, error_type)
