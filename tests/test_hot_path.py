"""The hot path over real loopback sockets, for all three dialects: a finished stream gives its
connection back to the pool (also when the body's end comes in a read of its own, and not when
the body never ends), chunks are decoded lazily without changing what a stream yields or when
its errors surface, and hostile JSON ends in typed errors with the msgspec decoder."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

import llmstreams
from llmstreams import ChunkStream, Pool, ProtocolError, Timeout
from llmstreams.dashscope.wire import EventStreamParser
from llmstreams.openai.wire import GENERIC, DialectParser
from llmstreams.qianfan.wire import QianfanParser
from llmstreams.sse import ServerSentEvent, SSEDecoder
from llmstreams.transport import ResponseHead, ResponseParser
from tests.support import chunks_until_error, serving

DIALECTS = ("qianfan", "dashscope", "openai")
PIECES = ["Hel", "lo", " there"]


def qianfan_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def qianfan_events(pieces: list[str]) -> list[bytes]:
    return [
        qianfan_event({
            "id": "as-hot", "sentence_id": number, "is_end": number == len(pieces) - 1,
            "result": piece, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })
        for number, piece in enumerate(pieces)
    ]


def dashscope_event(number: int, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False).encode()
    return b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:%s\n\n" % (number, data)


def dashscope_events(pieces: list[str]) -> list[bytes]:
    return [
        dashscope_event(number + 1, {
            "output": {"text": piece, "finish_reason": "stop" if number == len(pieces) - 1 else "null"},
            "usage": {"input_tokens": 1, "output_tokens": number + 1}, "request_id": "r-hot",
        })
        for number, piece in enumerate(pieces)
    ]


def openai_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def openai_events(pieces: list[str]) -> list[bytes]:
    events = [
        openai_event({
            "id": "chatcmpl-hot", "model": "m", "created": 1,
            "choices": [{"index": 0, "delta": {"content": piece},
                         "finish_reason": "stop" if number == len(pieces) - 1 else None}],
        })
        for number, piece in enumerate(pieces)
    ]
    return [*events, b"data: [DONE]\n\n"]


EVENTS: dict[str, Callable[[list[str]], list[bytes]]] = {
    "qianfan": qianfan_events, "dashscope": dashscope_events, "openai": openai_events,
}
MALFORMED = {
    "qianfan": b"data: {not json\n\n",
    "dashscope": b"id:9\nevent:result\ndata:{not json\n\n",
    "openai": b"data: {not json\n\n",
}


class EventServer:
    """Answers every generation with the dialect's events for PIECES, in one write.

    The first path segment picks how the body ends: `whole` (with the events), `tail` (only
    once `tail_released` is set), `never` (the body never ends), `bad` (a malformed event after
    two good ones, in the same write as them).
    """

    def __init__(self) -> None:
        self.url = ""
        self.tail_released = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        mode, dialect = request.match_info["mode"], request.match_info["dialect"]
        events = EVENTS[dialect](PIECES)
        if mode == "bad":
            events = [*events[:2], MALFORMED[dialect]]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"".join(events))
        if mode == "tail":
            await self.tail_released.wait()
        elif mode == "never":
            await asyncio.Event().wait()
        await response.write_eof()
        return response

    @asynccontextmanager
    async def running(self) -> AsyncIterator[EventServer]:
        app = web.Application()
        app.router.add_post("/{mode}/{dialect}/{tail:.*}", self._handle)
        async with serving(app) as self.url:
            yield self


def open_stream(pool: Pool, url: str, mode: str, dialect: str) -> ChunkStream:
    base = f"{url}/{mode}/{dialect}"
    messages = [{"role": "user", "content": "hi"}]
    if dialect == "qianfan":
        return llmstreams.QianfanClient(access_token="t", base_url=base, pool=pool).stream_chat(
            messages, model="ERNIE-Speed-8K"
        )
    if dialect == "dashscope":
        return llmstreams.DashScopeClient(api_key="sk-k", base_url=base, pool=pool).stream_generate(
            "hi", model="billa-7b-sft-v1", incremental_output=True
        )
    return llmstreams.OpenAICompatibleClient(api_key="k", base_url=base + "/v1", pool=pool).stream_chat(
        messages, model="m"
    )


async def texts(stream: ChunkStream) -> list[str]:
    return [chunk.text async for chunk in stream if chunk.text]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_sequential_streams_reuse_one_connection(dialect: str) -> None:
    async with EventServer().running() as server, Pool() as pool:
        for _ in range(4):
            assert await texts(open_stream(pool, server.url, "whole", dialect)) == PIECES
        stats = pool.stats()
    assert (stats.requests_sent, stats.connections_opened) == (4, 1)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_concurrent_streams_open_only_as_many_connections_as_run_at_once(dialect: str) -> None:
    async with EventServer().running() as server, Pool() as pool:
        for _ in range(3):
            results = await asyncio.gather(
                *(texts(open_stream(pool, server.url, "whole", dialect)) for _ in range(6))
            )
            assert results == [PIECES] * 6
        stats = pool.stats()
    assert (stats.requests_sent, stats.connections_opened) == (18, 6)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_body_end_in_a_later_read_is_waited_for_then_the_connection_reused(dialect: str) -> None:
    async with EventServer().running() as server, Pool() as pool:
        stream = open_stream(pool, server.url, "tail", dialect)
        received = []
        async for chunk in stream:
            received.append(chunk.text)
            if chunk.is_end:
                # The generation is over but its body is not: the connection is still held.
                assert pool.stats().connections_in_use == 1
                server.tail_released.set()
        assert "".join(received) == "".join(PIECES)
        assert pool.stats().connections_in_use == 0
        assert await texts(open_stream(pool, server.url, "whole", dialect)) == PIECES
        stats = pool.stats()
    assert (stats.requests_sent, stats.connections_opened) == (2, 1)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_leaving_after_the_end_chunk_still_returns_the_connection(dialect: str) -> None:
    async with EventServer().running() as server, Pool() as pool:
        for _ in range(3):
            async with open_stream(pool, server.url, "whole", dialect) as stream:
                async for chunk in stream:
                    if chunk.is_end:
                        break
        stats = pool.stats()
    assert (stats.requests_sent, stats.connections_opened, stats.connections_in_use) == (3, 1, 0)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_body_that_never_ends_is_closed_after_the_idle_timeout(dialect: str) -> None:
    async with EventServer().running() as server, Pool(timeout=Timeout(idle=0.2)) as pool:
        completion = await open_stream(pool, server.url, "never", dialect).collect()
        assert completion.is_complete and completion.text == "".join(PIECES)
        assert pool.stats() == llmstreams.PoolStats(open_streams=0, connections_in_use=0)
        assert await texts(open_stream(pool, server.url, "whole", dialect)) == PIECES
        stats = pool.stats()
    assert (stats.requests_sent, stats.connections_opened) == (2, 2)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_error_after_good_events_of_one_read_comes_after_their_chunks(dialect: str) -> None:
    async with EventServer().running() as server, Pool() as pool:
        stream = open_stream(pool, server.url, "bad", dialect)
        received = []
        with pytest.raises(ProtocolError) as caught:
            async for chunk in stream:
                received.append(chunk.text)
        assert received == PIECES[:2]
        assert caught.value.partial is not None
        assert caught.value.partial.text == "".join(PIECES[:2])
        assert caught.value.partial.chunk_count == 2
        assert pool.stats() == llmstreams.PoolStats(open_streams=0, connections_in_use=0)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reads_split_anywhere_yield_the_same_chunks_as_one_read(dialect: str) -> None:
    body = b"".join(EVENTS[dialect](PIECES))
    whole = [(chunk.text, chunk.is_end, chunk.usage) for chunk in sse_parser(dialect).feed(body)]
    for size in (1, 7, 50):
        parser = sse_parser(dialect)
        split = [
            (chunk.text, chunk.is_end, chunk.usage)
            for start in range(0, len(body), size)
            for chunk in parser.feed(body[start:start + size])
        ]
        assert split == whole
        assert parser.finished


# --- hostile JSON, decoded by msgspec -------------------------------------------------------------

SSE_HEAD = ResponseHead(200, {}, "text/event-stream", None)


def sse_parser(dialect: str) -> ResponseParser:
    if dialect == "qianfan":
        return QianfanParser(SSE_HEAD)
    if dialect == "dashscope":
        return EventStreamParser(cumulative=False, message_format=False)
    return DialectParser(SSE_HEAD, GENERIC, "chat")


def event_with(dialect: str, value: str) -> bytes:
    """An event of the dialect whose text field holds the raw JSON `value`."""
    marker = "MARKER"
    event = EVENTS[dialect]([marker])[0]
    return event.replace(f'"{marker}"'.encode(), value.encode())


HOSTILE = {
    "NaN": "NaN",
    "Infinity": "-Infinity",
    "a number too large for a float": "1e999",
    "an integer of 5,000 digits": "9" * 5000,
    "a lone surrogate": '"\\ud800"',
    "deep nesting": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_json_is_a_protocol_error(dialect: str, value: str) -> None:
    good = EVENTS[dialect](["ok", "ok"])[0]
    chunks, error = chunks_until_error(sse_parser(dialect).feed(good + event_with(dialect, value)))
    assert [chunk.text for chunk in chunks] == ["ok"]
    assert isinstance(error, ProtocolError)
    assert len(str(error)) < 1000


@pytest.mark.parametrize("dialect", DIALECTS)
def test_integers_beyond_64_bits_stay_exact(dialect: str) -> None:
    huge = 2**70 + 1
    event = EVENTS[dialect](["x"])[0].replace(b'"x"', b'"x", "huge": %d' % huge, 1)
    (chunk, *_) = sse_parser(dialect).feed(event)
    raw: Any = chunk.raw
    found = raw.get("huge") or raw.get("output", {}).get("huge") or raw["choices"][0]["delta"]["huge"]
    assert found == huge and type(found) is int


@pytest.mark.parametrize("dialect", DIALECTS)
def test_raw_is_the_decoded_event_and_equals_its_dict(dialect: str) -> None:
    event = EVENTS[dialect](["x"])[0]
    data = event.split(b"data:", 1)[1].strip()
    (chunk, *_) = sse_parser(dialect).feed(event)
    assert chunk.raw == json.loads(data)
    assert json.loads(data) == chunk.raw
    assert dict(chunk.raw) == json.loads(data)
    assert pickle.loads(pickle.dumps(chunk.raw)) == json.loads(data)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_unknown_field_too_large_to_decode_fails_only_when_raw_is_read(dialect: str) -> None:
    event = EVENTS[dialect](["x"])[0].replace(b'"x"', b'"x", "huge": 1e999', 1)
    (chunk, *_) = sse_parser(dialect).feed(event)
    assert chunk.text == "x"
    with pytest.raises(ProtocolError, match="cannot be decoded"):
        chunk.raw.get("huge")


def test_chunks_share_the_request_id() -> None:
    events = [
        qianfan_event({"id": "as-same", "sentence_id": number, "is_end": number == 2, "result": "x",
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        for number in range(3)
    ]
    first, second, third = QianfanParser(SSE_HEAD).feed(b"".join(events))
    assert first.usage == second.usage == third.usage == llmstreams.Usage(1, 1, 2)
    assert first.id is second.id is third.id == "as-same"


MIXED_STREAM = (
    b"data: one\n\n:comment\ndata: two\n\nevent: other\ndata: three\n\nid: 7\ndata: four\n\n"
    b"data:five\r\n\r\ndata: six\ndata: seven\n\nretry: 10\n\ndata\n\ndata: eight\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50, len(MIXED_STREAM)])
def test_feed_events_gives_the_type_and_data_bytes_of_every_event(size: int) -> None:
    whole, typed = SSEDecoder(), SSEDecoder()
    events: list[ServerSentEvent] = []
    items: list[tuple[bytes, bytes]] = []
    for start in range(0, len(MIXED_STREAM), size):
        piece = MIXED_STREAM[start:start + size]
        events += whole.feed(piece)
        items += typed.feed_events(piece)
    assert [(event_type.decode() or "message", data) for event_type, data in items] == [
        (event.event, event.data.encode()) for event in events
    ]
    assert [event_type for event_type, _ in items] == [b"", b"", b"other", b"", b"", b"", b"", b""]


def test_feed_events_of_a_read_made_only_of_data_lines() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_events(b"data: a\n\ndata:  b\n\ndata: {}\n\ndata: d") == [
        (b"", b"a"), (b"", b" b"), (b"", b"{}")
    ]
    assert decoder.feed_events(b"\n\ndata: e\n\n\n\ndata: f\n\n") == [
        (b"", b"d"), (b"", b"e"), (b"", b"f")
    ]


def test_an_event_split_inside_a_character_is_decoded_whole() -> None:
    text = "流式输出"
    encoded = b"data: " + text.encode() + b"\n\n"
    for cut in range(1, len(encoded)):
        decoder = SSEDecoder()
        assert [*decoder.feed(encoded[:cut]), *decoder.feed(encoded[cut:])] == [ServerSentEvent(text)]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_invalid_utf8_in_an_event_of_any_dialect_becomes_replacement_characters(
    dialect: str,
) -> None:
    event = EVENTS[dialect](["ab"])[0].replace(b'"ab"', b'"a\xffb"', 1)
    chunk = next(iter(sse_parser(dialect).feed(event)))
    assert chunk.text == "a\ufffdb"
    assert chunk.raw == json.loads(event.decode("utf-8", "replace").split("data:", 1)[1])


async def test_a_chunk_is_timed_when_its_bytes_arrived_not_when_it_was_read() -> None:
    first, second = openai_events(["one", "two"])[:2]
    release, written = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        await release.wait()
        await response.write(second)
        written.set()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    async with serving(app) as url, Pool() as pool:
        client = llmstreams.OpenAICompatibleClient(api_key="k", base_url=url + "/v1", pool=pool)
        async with client.stream_chat([{"role": "user", "content": "hi"}], model="m") as stream:
            assert (await anext(stream)).text == "one"
            release.set()
            await written.wait()
            # The second event is in this side's socket now (loopback hands it over within
            # the write). Arrival cannot be awaited from outside the connection: a few turns
            # of the loop let it poll the socket and take the bytes in.
            for _ in range(3):
                await asyncio.sleep(0)
            asked_at = time.monotonic()
            chunk = await anext(stream)
            assert chunk.text == "two"
            assert stream.last_read_at is not None and stream.last_read_at < asked_at
            assert [c.text async for c in stream] == [""]
