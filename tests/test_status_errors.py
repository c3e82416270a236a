"""What an HTTP error status alone says (its error class, and whether the request may be sent
again) is one table in `llmstreams.errors`, and the three dialects' parsers all follow it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmstreams import errors
from llmstreams.dashscope import wire as dashscope_wire
from llmstreams.errors import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from llmstreams.openai.wire import GENERIC, DialectParser
from llmstreams.qianfan.wire import QianfanParser
from llmstreams.transport import ResponseHead, ResponseParser

EXPECTED: dict[int, tuple[type[APIError], bool]] = {
    400: (InvalidRequestError, False),
    401: (AuthenticationError, False),
    403: (PermissionDeniedError, False),
    404: (NotFoundError, False),
    405: (APIError, False),
    408: (ServerError, True),
    409: (ServerError, True),
    410: (NotFoundError, False),
    413: (InvalidRequestError, False),
    418: (APIError, False),
    422: (InvalidRequestError, False),
    429: (RateLimitError, True),
    500: (ServerError, True),
    502: (ServerError, True),
    503: (ServerError, True),
    599: (ServerError, True),
}

GENERATION = dashscope_wire.build_generation(
    stream=True, prompt="hi", messages=None, model="qwen-turbo", params={}
)
PARSERS: dict[str, Callable[[ResponseHead], ResponseParser]] = {
    "qianfan": QianfanParser,
    "openai": lambda head: DialectParser(head, GENERIC, "chat"),
    "dashscope": lambda head: dashscope_wire.parser_for(head, GENERATION),
}


def head(status: int) -> ResponseHead:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "text/html"}))
    return ResponseHead(status=status, headers=headers, content_type="text/html", retry_after=None)


@pytest.mark.parametrize(("status", "expected"), EXPECTED.items())
def test_the_table(status: int, expected: tuple[type[APIError], bool]) -> None:
    assert (errors.status_error_class(status), errors.is_retryable_status(status)) == expected


@pytest.mark.parametrize("dialect", PARSERS)
@pytest.mark.parametrize(("status", "expected"), EXPECTED.items())
def test_every_dialect_follows_the_table(
    dialect: str, status: int, expected: tuple[type[APIError], bool]
) -> None:
    parser = PARSERS[dialect](head(status))
    assert list(parser.feed(b"<html>Bad Gateway</html>")) == []
    with pytest.raises(APIError) as caught:
        list(parser.close())
    assert (type(caught.value), caught.value.retryable) == expected
    assert caught.value.http_status == status
