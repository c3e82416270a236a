"""Writing responses the way the knobs say: pacing, trickling and the injected stream faults.

Both vendors' routes hand their rendered bodies or events to this module, so every knob that
acts on the wire behaves the same for Qianfan and DashScope.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Self

import attrs
from aiohttp import web

from llmstreams.mock.answer import Answer as ComposedAnswer
from llmstreams.mock.behaviour import Behaviour
from llmstreams.mock.context import MockContext, ServerClosing
from llmstreams.mock.text import filler_text

NON_SSE_PAGE = (
    b"<html>\n<head><title>Network sign-in</title></head>\n"
    b"<body><h1>Please sign in to continue</h1>"
    b"<p>This network requires you to sign in before you can reach the Internet.</p></body>\n"
    b"</html>\n"
)


class StreamEvents(Protocol):
    """One vendor's rendering of one answer as server-sent events.

    `event_number` counts the events written on this stream so far, this one included (the
    injected malformed and error events count too).
    """

    @property
    def chunk_count(self) -> int: ...

    def chunk(self, index: int, event_number: int) -> bytes: ...

    def malformed(self, event_number: int) -> bytes: ...

    def error(self, event_number: int) -> bytes: ...

    @property
    def closing(self) -> bytes:
        """Written after the last event of a complete answer (`data: [DONE]`), or nothing."""
        ...


class Answer(StreamEvents, Protocol):
    """One vendor's rendering of one answer, whole (JSON) or as events."""

    def whole(self) -> dict[str, Any]: ...

    def with_first_line_length(self, length: int) -> Answer: ...


@attrs.frozen
class EventPerChunk(abc.ABC):
    """The base of a rendering that sends each chunk of `answer` as one event, with nothing
    after the last; a subclass says how the data line of a chunk's event reads."""

    answer: ComposedAnswer

    @property
    def chunk_count(self) -> int:
        return len(self.answer.chunks)

    @property
    def closing(self) -> bytes:
        return b""

    @abc.abstractmethod
    def _data_line(self, index: int) -> bytes: ...

    def with_first_line_length(self, length: int) -> Self:
        def first_line_length(chunks: list[str]) -> int:
            return len(attrs.evolve(self, answer=self.answer.with_chunks(chunks))._data_line(0))

        chunks = pad_first_chunk(list(self.answer.chunks), length, first_line_length)
        return attrs.evolve(self, answer=self.answer.with_chunks(chunks))


_EVENT_STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}


async def send_answer(
    request: web.BaseRequest,
    context: MockContext,
    behaviour: Behaviour,
    answer: Answer,
    *,
    stream: bool,
) -> web.StreamResponse:
    """A successful answer: one JSON body, or a stream shaped by the knobs."""
    if not stream:
        return await send_json(request, behaviour, status=200, payload=answer.whole())
    if behaviour.huge_line_bytes is not None:
        answer = answer.with_first_line_length(behaviour.huge_line_bytes)
    return await send_stream(request, context, behaviour, answer)


def compact_json(payload: dict[str, Any]) -> bytes:
    """JSON as the vendors send it: no spaces, UTF-8 text unescaped."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def retry_after_headers(behaviour: Behaviour) -> dict[str, str]:
    """The `Retry-After` header of an injected failure, when the knob asks for one.

    Whole seconds are written as HTTP defines them; a fraction is kept as is (not standard HTTP)
    so that tests need not wait whole seconds.
    """
    if behaviour.retry_after is None:
        return {}
    seconds = behaviour.retry_after
    return {"Retry-After": str(int(seconds)) if seconds.is_integer() else str(seconds)}


def mock_error(message: str) -> web.Response:
    """A mistake in the mock's own configuration (never a vendor answer)."""
    return web.Response(status=400, text=f"llmstreams mock: {message}\n")


async def send_json(
    request: web.BaseRequest,
    behaviour: Behaviour,
    *,
    status: int,
    payload: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """A JSON body (a whole answer or an error), written as the knobs say."""
    return await send_body(
        request, behaviour, status=status, content_type="application/json",
        body=compact_json(payload), headers=headers,
    )


async def send_body(
    request: web.BaseRequest,
    behaviour: Behaviour,
    *,
    status: int,
    content_type: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=status, headers={"Content-Type": f"{content_type}; charset=utf-8", **(headers or {})}
    )
    response.content_length = len(body)
    await response.prepare(request)
    await _write(response, body, trickle=behaviour.trickle)
    await response.write_eof()
    return response


async def send_stream(
    request: web.BaseRequest,
    context: MockContext,
    behaviour: Behaviour,
    events: StreamEvents,
) -> web.StreamResponse:
    """Write `events` as a `text/event-stream`, applying every stream knob, and count the outcome."""
    response = web.StreamResponse(status=200, headers=_EVENT_STREAM_HEADERS)
    await response.prepare(request)
    context.stats.stream_started()
    try:
        completed = await _write_events(request, response, context, behaviour, events)
    except asyncio.CancelledError:
        context.stats.stream_aborted()
        raise
    except ConnectionError:
        context.stats.stream_aborted()
        return response
    except ServerClosing:
        context.stats.stream_failed()
        drop_connection(request)
        return response
    if completed:
        context.stats.stream_completed()
    else:
        context.stats.stream_failed()
    return response


async def _write_events(
    request: web.BaseRequest,
    response: web.StreamResponse,
    context: MockContext,
    behaviour: Behaviour,
    events: StreamEvents,
) -> bool:
    """True when the whole answer went out, False when a knob cut the stream short.

    The events due at one moment go out in one write: all of them at once when the stream is
    not paced, and those a paced stream fell behind on together with the one due now.
    """
    loop = asyncio.get_running_loop()
    await context.pause(behaviour.first_chunk_delay)
    first_chunk_at = loop.time()
    pace = behaviour.chunks_per_second
    pending: list[bytes] = []
    event_number = 0
    count = events.chunk_count

    async def flush() -> None:
        if pending:
            data = _joined(pending, stamp=behaviour.stamp_send_times)
            pending.clear()
            await _write(response, data, trickle=behaviour.trickle)

    for index in range(count + 1):
        if behaviour.malformed_after == index:
            event_number += 1
            pending.append(events.malformed(event_number))
        if behaviour.error_after == index:
            event_number += 1
            pending.append(events.error(event_number))
            await flush()
            await response.write_eof()
            return False
        if behaviour.disconnect_after == index:
            await flush()
            _close_connection(request)
            return False
        if behaviour.stall_after == index:
            await flush()
            await context.pause(None)
        if index == count:
            break
        if pace is not None and index > 0:
            due = first_chunk_at + index / pace
            if due > loop.time():
                await flush()
                await context.pacer.until(due)
        event_number += 1
        pending.append(events.chunk(index, event_number))
    if events.closing:
        pending.append(events.closing)
    await flush()
    await response.write_eof()
    return True


_JSON_EVENT_END = b"}\n\n"


def _joined(frames: list[bytes], *, stamp: bool) -> bytes:
    """The frames as one write; with `stamp`, each JSON event ends with its send time.

    A JSON event is the only thing in an event stream that ends with `}` and a blank line (a
    JSON string holds no raw line end), and a frame may hold several.
    """
    data = frames[0] if len(frames) == 1 else b"".join(frames)
    if stamp:
        data = data.replace(_JSON_EVENT_END, b',"x_sent_at":%r}\n\n' % time.monotonic())
    return data


async def _write(response: web.StreamResponse, data: bytes, *, trickle: bool) -> None:
    if not trickle:
        await response.write(data)
        return
    for offset in range(len(data)):
        await response.write(data[offset : offset + 1])
        # Let the event loop hand this byte to the socket before the next one is queued.
        await asyncio.sleep(0)


def _close_connection(request: web.BaseRequest) -> None:
    """End the TCP connection after what was already written, leaving the body unfinished."""
    if request.transport is not None:
        request.transport.close()


def drop_connection(request: web.BaseRequest) -> None:
    """Abort the connection at once, discarding anything not yet sent."""
    if request.transport is not None:
        request.transport.abort()


def pad_first_chunk(
    chunks: list[str], target_length: int, first_line_length: Callable[[list[str]], int]
) -> list[str]:
    """`chunks` with the first one lengthened so the first data line is `target_length` bytes.

    A target shorter than the natural line leaves the chunks as they are. The filler adds at most
    one token, so the usage numbers settle after a second measurement.
    """
    padded = chunks
    for _ in range(4):
        shortfall = target_length - first_line_length(padded)
        if shortfall == 0:
            break
        extra = len(padded[0]) - len(chunks[0]) + shortfall
        if extra < 0:
            return chunks
        padded = [chunks[0] + filler_text(extra), *chunks[1:]]
    return padded
