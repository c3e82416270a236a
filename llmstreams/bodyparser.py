"""Telling a response body's shape from its first bytes, for the dialects that need to.

Qianfan v1 and the OpenAI-compatible dialect send a stream request's answer as server-sent
events, but also a whole JSON object (a non-stream answer, or an error sent with status 200
even to a stream request), or something that is neither (a proxy's HTML page). `SniffingParser`
holds what they share: a non-2xx body is buffered (at most `MAX_ERROR_BODY`) and read as an
error at its end; a 2xx body is told apart by its first bytes, past whitespace and a byte order
mark: `{` or `[` begins JSON, buffered (at most `MAX_WHOLE_BODY`) and read at its end; an SSE
field begins events, decoded as they come; anything else is a `ProtocolError` quoting it. A
dialect says what its events, its whole answers and its error bodies mean.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Final

from llmstreams.errors import APIError, ProtocolError, snippet
from llmstreams.sse import BOM, SSEDecoder
from llmstreams.transport import ResponseHead
from llmstreams.types import Chunk

# How much of an error body is kept for its error, and how much of an unknown body is read
# before it is refused; how large a whole JSON answer may be.
MAX_ERROR_BODY: Final = 64 * 1024
SNIPPET_BYTES: Final = 200
MAX_WHOLE_BODY: Final = 32 * 1024 * 1024

_SSE_STARTS: Final = (b"data:", b":", b"event:", b"id:", b"retry:")
_UNDECIDED, _EVENTS, _WHOLE, _STATUS, _FOREIGN = range(5)


def body_start(body: bytes) -> bytes | None:
    """What a response body begins with, past leading whitespace and one byte order mark; None
    while that cannot be told yet (only whitespace, or part of a byte order mark, arrived)."""
    start = body.lstrip()
    if BOM.startswith(start):
        return None
    return start.removeprefix(BOM).lstrip() or None


class SniffingParser(ABC):
    """A `ResponseParser` for a body that may be events, a whole JSON answer or an error body.

    A dialect implements `_chunks` (the chunks of decoded events, setting `_finished` at the
    generation's end), `_end_of_events` (what the end of an event stream means),
    `_whole_answer` and `_status_error`.
    """

    __slots__ = ("_head", "_provider", "_request_id", "_mode", "_buffer", "_buffered", "_decoder",
                 "_finished")

    def __init__(self, head: ResponseHead, *, provider: str, request_id: str | None = None) -> None:
        self._head = head
        self._provider = provider
        self._request_id = request_id
        self._mode = _UNDECIDED if 200 <= head.status < 300 else _STATUS
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._decoder = SSEDecoder()
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def feed(self, data: bytes) -> Iterator[Chunk]:
        mode = self._mode
        if mode == _EVENTS:
            return self._chunks(self._decoder.feed_events(data))
        self._buffer.append(data)
        self._buffered += len(data)
        if mode == _UNDECIDED:
            return self._sniff()
        if mode == _STATUS:
            if self._buffered > MAX_ERROR_BODY:
                raise self._status_error(self._body())
        elif mode == _FOREIGN:
            if self._buffered >= SNIPPET_BYTES:
                raise self._foreign_body()
        elif self._buffered > MAX_WHOLE_BODY:
            raise ProtocolError(
                f"a whole answer longer than {MAX_WHOLE_BODY} bytes: {snippet(self._body()[:1000])}",
                provider=self._provider, request_id=self._request_id,
            )
        return iter(())

    def close(self) -> Iterator[Chunk]:
        mode = self._mode
        if mode == _EVENTS:
            return self._end_of_events()
        body = self._body()
        if mode == _STATUS:
            raise self._status_error(body)
        if mode == _WHOLE:
            chunk = self._whole_answer(body)
            self._finished = True
            return iter((chunk,))
        if not body.strip():
            raise ProtocolError(
                f"the response (HTTP {self._head.status}) had an empty body",
                provider=self._provider, request_id=self._request_id,
            )
        raise self._foreign_body()

    @abstractmethod
    def _chunks(self, events: list[tuple[bytes, bytes]]) -> Iterator[Chunk]:
        """The chunks of `events` (type and data), each decoded only when asked for."""

    @abstractmethod
    def _end_of_events(self) -> Iterator[Chunk]:
        """The body of events ended: the last chunks, or the error it ended with."""

    @abstractmethod
    def _whole_answer(self, body: bytes) -> Chunk:
        """The one chunk of a 2xx JSON body, or the error it holds."""

    @abstractmethod
    def _status_error(self, body: bytes) -> APIError:
        """The error for a non-2xx response (`body` is at most `MAX_ERROR_BODY` and a read)."""

    def _body(self) -> bytes:
        return b"".join(self._buffer)

    def _sniff(self) -> Iterator[Chunk]:
        """Decide from the first bytes whether the body is events, JSON or neither."""
        body = self._body()
        start = body_start(body)
        if start is None:
            return iter(())
        if start[:1] in (b"{", b"["):
            self._mode = _WHOLE
            return iter(())
        if start.startswith(_SSE_STARTS):
            self._mode = _EVENTS
            self._buffer.clear()
            return self._chunks(self._decoder.feed_events(body))
        if any(prefix.startswith(start) for prefix in _SSE_STARTS):
            return iter(())
        self._mode = _FOREIGN
        if self._buffered >= SNIPPET_BYTES:
            raise self._foreign_body()
        return iter(())

    def _foreign_body(self) -> ProtocolError:
        content_type = self._head.content_type or "no content type"
        return ProtocolError(
            f"expected server-sent events or JSON, got {content_type}: {snippet(self._body())}",
            provider=self._provider, request_id=self._request_id,
        )
