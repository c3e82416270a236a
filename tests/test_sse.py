"""SSEDecoder against the WHATWG event stream interpretation rules, and against aiohttp-sse-client2."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Sequence

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp_sse_client2.client import EventSource  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from llmstreams.sse import ServerSentEvent, SSEDecoder

# web-platform-tests eventsource/format-field-parsing
CONFORMANCE_STREAM = (
    b"data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n"
    b" data:32\ndata:4\n\n"
)
CONFORMANCE_EVENTS = [ServerSentEvent("\0\n 2\n1\n3\n\n4")]


def decode(*pieces: bytes) -> list[ServerSentEvent]:
    """Feed `pieces` to a fresh decoder, then close it; all events in order."""
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.close()
    return events


def byte_by_byte(stream: bytes) -> list[bytes]:
    return [stream[index : index + 1] for index in range(len(stream))]


def split_at(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(bounds)]


def random_split(stream: bytes, rng: random.Random) -> list[bytes]:
    cut_count = rng.randint(0, len(stream))
    return split_at(stream, [rng.randint(0, len(stream)) for _ in range(cut_count)])


# Conformance vector


def test_conformance_vector_fed_whole() -> None:
    assert decode(CONFORMANCE_STREAM) == CONFORMANCE_EVENTS


def test_conformance_vector_fed_one_byte_at_a_time() -> None:
    assert decode(*byte_by_byte(CONFORMANCE_STREAM)) == CONFORMANCE_EVENTS


def test_conformance_vector_fed_in_random_splits() -> None:
    rng = random.Random(20240101)
    for _ in range(500):
        pieces = random_split(CONFORMANCE_STREAM, rng)
        assert decode(*pieces) == CONFORMANCE_EVENTS, pieces


# Line ends


@pytest.mark.parametrize("line_end", [b"\n", b"\r", b"\r\n"])
def test_each_line_end_kind(line_end: bytes) -> None:
    stream = line_end.join([b"event: add", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert decode(stream) == [ServerSentEvent("a\nb", "add"), ServerSentEvent("c")]


def test_mixed_line_ends_in_one_stream() -> None:
    assert decode(b"data: a\rdata: b\r\ndata: c\n\r\n") == [ServerSentEvent("a\nb\nc")]


def test_cr_at_end_of_feed_and_lf_at_start_of_next_are_one_line_end() -> None:
    # Were the LF a line end of its own, it would be an empty line dispatching "a" alone.
    assert decode(b"data: a\r", b"\ndata: b\n\n") == [ServerSentEvent("a\nb")]


def test_cr_and_lf_split_by_empty_feeds_are_one_line_end() -> None:
    assert decode(b"data: a\r", b"", b"", b"\ndata: b\r\n\r\n") == [ServerSentEvent("a\nb")]


def test_lf_after_split_crlf_is_a_new_line_end() -> None:
    assert decode(b"data: a\r", b"\n", b"\n") == [ServerSentEvent("a")]


def test_cr_at_end_of_feed_followed_by_text_is_a_line_end() -> None:
    assert decode(b"data: a\r", b"data: b\r", b"\r") == [ServerSentEvent("a\nb")]


def test_two_crs_are_two_line_ends() -> None:
    assert decode(b"data: a\r\r", b"data: b\r", b"\r") == [
        ServerSentEvent("a"),
        ServerSentEvent("b"),
    ]


def test_empty_line_split_across_feeds_dispatches() -> None:
    assert decode(b"data: a\n", b"\n") == [ServerSentEvent("a")]
    assert decode(b"data: a\n", b"\ndata: b\n", b"\n") == [
        ServerSentEvent("a"),
        ServerSentEvent("b"),
    ]


def test_runs_of_empty_lines_dispatch_nothing_extra() -> None:
    assert decode(b"\n\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n") == [
        ServerSentEvent("a"),
        ServerSentEvent("b"),
    ]


# Byte order mark


def test_leading_bom_is_stripped() -> None:
    assert decode(b"\xef\xbb\xbfdata: a\n\n") == [ServerSentEvent("a")]


def test_leading_bom_split_across_feeds_is_stripped() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [ServerSentEvent("a")]
    assert decode(b"\xef\xbb", b"\xbf", b"data: a\n\n") == [ServerSentEvent("a")]


def test_only_one_bom_is_stripped() -> None:
    # The second BOM becomes part of the field name "\ufeffdata", an unknown field.
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []


def test_bom_later_in_the_stream_is_kept() -> None:
    assert decode(b"data: \xef\xbb\xbfa\n\n") == [ServerSentEvent("\ufeffa")]


# Fields


def test_qianfan_chunk() -> None:
    stream = 'data: {"sentence_id":0,"result":"你好","is_end":false}\n\n'.encode()
    assert decode(stream) == [ServerSentEvent('{"sentence_id":0,"result":"你好","is_end":false}')]


def test_dashscope_frame() -> None:
    stream = b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"text":"Hi"}}\n\n'
    assert decode(stream) == [ServerSentEvent('{"output":{"text":"Hi"}}', "result", "1")]


def test_comment_lines_are_ignored() -> None:
    stream = b": keep-alive\ndata: a\n:HTTP_STATUS/200\n:\n\n: only a comment\n\n"
    assert decode(stream) == [ServerSentEvent("a")]


def test_exactly_one_leading_space_is_dropped_from_values() -> None:
    stream = b"data:a\n\ndata: b\n\ndata:  c\n\nevent:  x\ndata:\td\n\ndata: \n\n"
    assert decode(stream) == [
        ServerSentEvent("a"),
        ServerSentEvent("b"),
        ServerSentEvent(" c"),
        ServerSentEvent("\td", " x"),
        ServerSentEvent(""),
    ]


def test_value_keeps_colons_after_the_first() -> None:
    assert decode(b"data: a:b: c\n\n") == [ServerSentEvent("a:b: c")]


def test_data_lines_join_with_lf_and_only_the_last_lf_is_removed() -> None:
    assert decode(b"data: a\ndata:\ndata: b\n\n") == [ServerSentEvent("a\n\nb")]
    assert decode(b"data: a\ndata:\ndata:\n\n") == [ServerSentEvent("a\n\n")]
    assert decode(b"data:\ndata:\n\n") == [ServerSentEvent("\n")]


def test_line_without_colon_is_a_field_with_empty_value() -> None:
    assert decode(b"data\n\n") == [ServerSentEvent("")]
    assert decode(b"event: add\nevent\ndata: a\n\n") == [ServerSentEvent("a", "message")]
    assert decode(b"id: 1\nid\ndata: a\n\n") == [ServerSentEvent("a", id="")]


def test_unknown_fields_are_ignored() -> None:
    stream = b"foo: bar\nData: no\nDATA: no\ndata : no\ndata: a\nretryx: 1\n\n"
    assert decode(stream) == [ServerSentEvent("a")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: ping\n\nid: 1\n\nretry: 10\n\n: comment\n\n") == []


def test_event_type_resets_after_each_dispatch() -> None:
    assert decode(b"event: add\ndata: 1\n\ndata: 2\n\n") == [
        ServerSentEvent("1", "add"),
        ServerSentEvent("2", "message"),
    ]


def test_event_type_resets_even_when_nothing_is_dispatched() -> None:
    assert decode(b"event: ping\n\ndata: a\n\n") == [ServerSentEvent("a", "message")]


def test_empty_event_type_means_message() -> None:
    assert decode(b"event:\ndata: a\n\n") == [ServerSentEvent("a", "message")]


def test_last_event_type_field_wins() -> None:
    assert decode(b"event: a\nevent: b\ndata: x\n\n") == [ServerSentEvent("x", "b")]


def test_id_is_none_until_set_then_carries_over() -> None:
    stream = b"data: a\n\nid: 7\ndata: b\n\ndata: c\n\nid: 8\n\ndata: d\n\n"
    assert [event.id for event in decode(stream)] == [None, "7", "7", "8"]


def test_id_carries_over_between_feeds() -> None:
    assert decode(b"id: 7\ndata: a\n\n", b"data: b\n\n") == [
        ServerSentEvent("a", id="7"),
        ServerSentEvent("b", id="7"),
    ]


def test_id_containing_nul_is_ignored() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\nid: \0\ndata: c\n\n"
    assert [event.id for event in decode(stream)] == ["1", "1", "1"]


def test_empty_id_resets_the_last_event_id() -> None:
    assert [event.id for event in decode(b"id: 1\ndata: a\n\nid:\ndata: b\n\n")] == ["1", ""]


def test_retry_with_only_ascii_digits_is_reported() -> None:
    assert decode(b"retry: 1500\ndata: a\n\n") == [ServerSentEvent("a", retry=1500)]
    assert decode(b"retry:0\ndata: a\n\n") == [ServerSentEvent("a", retry=0)]


@pytest.mark.parametrize(
    "value",
    ["", "15x", "-1", "+1", "1.5", " 1", "1 ", "1e3", "\u0661\u0662", "\u00b2", "\uff11"],
)
def test_retry_not_all_ascii_digits_is_ignored(value: str) -> None:
    stream = f"retry: 99\nretry: {value}\ndata: a\n\n".encode()
    assert decode(stream) == [ServerSentEvent("a", retry=99)]


def test_retry_belongs_to_its_own_event() -> None:
    assert [event.retry for event in decode(b"retry: 5\ndata: a\n\ndata: b\n\n")] == [5, None]


def test_absurdly_long_retry_is_ignored() -> None:
    stream = b"retry: " + b"9" * 10_000 + b"\ndata: a\n\n"
    assert decode(stream) == [ServerSentEvent("a")]


# End of stream


def test_unterminated_final_event_is_dropped() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [ServerSentEvent("a")]
    assert decode(b"data: a\n\ndata: b") == [ServerSentEvent("a")]
    assert decode(b"data: a\n\ndata: b\r") == [ServerSentEvent("a")]


def test_close_dispatches_nothing_and_starts_a_new_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 3\ndata: a\n\ndata: unterminated\n") == [ServerSentEvent("a", id="3")]
    assert decoder.close() == []
    # The unterminated event is gone, a BOM is stripped again, the last event id is kept.
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == [ServerSentEvent("b", id="3")]


def test_close_after_cr_forgets_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.close() == []
    assert decoder.feed(b"\ndata: b\n\n") == [ServerSentEvent("b")]


# UTF-8


def test_multibyte_characters_split_across_feeds() -> None:
    text = "文心一言 🚀 ü"
    stream = f"data: {text}\n\n".encode()
    assert decode(*byte_by_byte(stream)) == [ServerSentEvent(text)]


def test_invalid_bytes_become_replacement_characters() -> None:
    assert decode(b"data: a\xffb\xc3(c\xed\xa0\x80\n\n") == [
        ServerSentEvent("a\ufffdb\ufffd(c\ufffd\ufffd\ufffd")
    ]


def test_truncated_sequence_split_across_feeds_becomes_one_replacement_character() -> None:
    assert decode(b"data: \xe6", b"\x96", b"x\n\n") == [ServerSentEvent("\ufffdx")]


def test_truncated_sequence_at_end_of_stream_does_not_raise() -> None:
    assert decode(b"data: a\n\ndata: \xe6\x96") == [ServerSentEvent("a")]


# Size


def test_5_mb_data_line_in_64_kb_feeds() -> None:
    value = ("0123456789abcdef" * 4 + "文") * 80_000
    stream = b"data: " + value.encode() + b"\n\ndata: after\n\n"
    assert len(stream) > 5_000_000
    pieces = [stream[start : start + 65536] for start in range(0, len(stream), 65536)]
    assert decode(*pieces) == [ServerSentEvent(value), ServerSentEvent("after")]


def test_many_events_in_one_feed_keep_their_order() -> None:
    stream = b"".join(b"data: %d\n\n" % number for number in range(10_000))
    assert [event.data for event in decode(stream)] == [str(number) for number in range(10_000)]


# The event value


def test_events_are_frozen_values() -> None:
    (event,) = decode(b"data: a\n\n")
    assert event == ServerSentEvent("a", "message", None, None)
    assert hash(event) == hash(ServerSentEvent("a"))
    assert repr(event) == "ServerSentEvent(data='a', event='message', id=None, retry=None)"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.data = "b"  # type: ignore[misc]


# Properties

field_text = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]))
line_ends = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def streams_and_events(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """A well-formed stream and the events it must decode to."""
    text = draw(st.sampled_from(["", "\ufeff"]))
    expected = []
    last_event_id: str | None = None
    for _ in range(draw(st.integers(0, 6))):
        event_type = draw(st.sampled_from(["", "message", "add", "result", "error"]))
        data_values = draw(st.lists(field_text, max_size=3))
        lines = [f"data: {value}" for value in data_values]
        if event_type:
            lines.insert(draw(st.integers(0, len(lines))), f"event: {event_type}")
        if draw(st.booleans()):
            event_id = draw(field_text.filter(lambda value: "\0" not in value))
            lines.insert(draw(st.integers(0, len(lines))), f"id: {event_id}")
            last_event_id = event_id
        if draw(st.booleans()):
            lines.insert(draw(st.integers(0, len(lines))), f":{draw(field_text)}")
        for line in [*lines, ""]:
            line_end = draw(line_ends)
            if not line and text.endswith("\r") and line_end == "\n":
                line_end = "\r\n"  # a lone LF here would complete the previous CR instead
            text += line + line_end
        if data_values:
            expected.append(
                ServerSentEvent("\n".join(data_values), event_type or "message", last_event_id)
            )
    return text.encode(), expected


@settings(deadline=None)
@given(streams_and_events(), st.lists(st.integers(0, 10_000)))
def test_any_split_of_a_valid_stream_gives_the_modelled_events(
    stream_and_events: tuple[bytes, list[ServerSentEvent]], cuts: list[int]
) -> None:
    stream, expected = stream_and_events
    assert decode(stream) == expected
    assert decode(*split_at(stream, [cut % (len(stream) + 1) for cut in cuts])) == expected


@settings(deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300)))
def test_garbage_never_raises_and_decodes_the_same_in_any_split(
    garbage: bytes, cuts: list[int]
) -> None:
    whole = decode(garbage)
    assert all(isinstance(event, ServerSentEvent) for event in whole)
    assert decode(*split_at(garbage, [cut % (len(garbage) + 1) for cut in cuts])) == whole


# Pieces that make field names, separators, line ends, BOMs and (in)valid UTF-8 likely.
SOUP_PIECES = [b"data", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\0", b"x", b"7"]
SOUP_PIECES += [b"\xef\xbb\xbf", b"\xe6\x96\x87", b"\xe6", b"\xff"]


@settings(deadline=None)
@given(st.lists(st.sampled_from(SOUP_PIECES)), st.lists(st.integers(0, 300)))
def test_field_soup_decodes_the_same_in_any_split(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    whole = decode(stream)
    assert decode(*split_at(stream, [cut % (len(stream) + 1) for cut in cuts])) == whole
    assert decode(*byte_by_byte(stream)) == whole


def typed_events(*pieces: bytes) -> list[tuple[str, bytes]]:
    """`feed_events` of `pieces` on a fresh decoder, with the type as `feed` names it."""
    decoder = SSEDecoder()
    items = [item for piece in pieces for item in decoder.feed_events(piece)]
    return [(event_type.decode("utf-8", "replace") or "message", data) for event_type, data in items]


@settings(deadline=None)
@given(st.lists(st.sampled_from(SOUP_PIECES)), st.lists(st.integers(0, 300)))
def test_feed_events_gives_what_feed_gives_for_any_soup_in_any_split(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    expected = [(event.event, event.data) for event in decode(stream)]
    for pieces in ([stream], split_at(stream, [cut % (len(stream) + 1) for cut in cuts])):
        typed = typed_events(*pieces)
        assert [(event_type, data.decode("utf-8", "replace")) for event_type, data in typed] == expected


@settings(deadline=None)
@given(streams_and_events(), st.lists(st.integers(0, 10_000)))
def test_feed_events_gives_the_modelled_events_of_a_valid_stream_in_any_split(
    stream_and_events: tuple[bytes, list[ServerSentEvent]], cuts: list[int]
) -> None:
    stream, expected = stream_and_events
    typed = typed_events(*split_at(stream, [cut % (len(stream) + 1) for cut in cuts]))
    assert [(event_type, data.decode()) for event_type, data in typed] == [
        (event.event, event.data) for event in expected
    ]


# Cross-check with aiohttp-sse-client2 over a real connection

CROSS_CHECK_STREAMS = {
    "qianfan": b"".join(
        b'data: {"id":"as-1","sentence_id":%d,"result":"%s","is_end":%s}\n\n'
        % (number, piece.encode(), b"true" if number == 2 else b"false")
        for number, piece in enumerate(["你好", "我是", "文心一言。"])
    ),
    "dashscope": b"".join(
        b'id:%d\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"text":"%s",'
        b'"finish_reason":"%s"},"request_id":"r-1"}\n\n' % (number, text.encode(), reason)
        for number, (text, reason) in enumerate(
            [("Hello", b"null"), ("Hello there", b"null"), ("Hello there!", b"stop")], start=1
        )
    )
    + b'id:4\nevent:error\n:HTTP_STATUS/429\ndata:{"code":"Throttling","message":"slow down"}\n\n',
    "multi_line_data": b"data: first\ndata: second\ndata:\ndata: fourth\n\nevent: x\ndata: y\n\n",
    "crlf": b"event: add\r\ndata: a\r\ndata: b\r\n\r\n: comment\r\nid: 9\r\ndata: c\r\n\r\n",
    "sticky_id_and_noise": b"id: 5\ndata: a\n\nfoo: bar\ndata: b\n\nevent: ping\n\ndata\n\n",
}


@pytest.fixture
async def sse_server() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.StreamResponse:
        stream = CROSS_CHECK_STREAMS[request.match_info["name"]]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        # Uneven writes, so that reads end in the middle of lines and characters.
        for start in range(0, len(stream), 7):
            await response.write(stream[start : start + 7])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


Triple = tuple[str, str, str]


async def read_with_sse_decoder(session: aiohttp.ClientSession, url: str) -> list[Triple]:
    decoder = SSEDecoder()
    events = []
    async with session.get(url) as response:
        async for piece in response.content.iter_any():
            events += decoder.feed(piece)
    events += decoder.close()
    return [(event.event, event.data, event.id or "") for event in events]


async def read_with_event_source(
    session: aiohttp.ClientSession, url: str, event_count: int
) -> list[Triple]:
    events: list[Triple] = []
    async with EventSource(url, session=session) as event_source:
        async for event in event_source:
            events.append((event.type or "message", event.data, event.last_event_id))
            # At the end of a stream EventSource waits and reconnects: stop before that.
            if len(events) == event_count:
                break
    return events


@pytest.mark.parametrize("name", sorted(CROSS_CHECK_STREAMS))
async def test_agrees_with_aiohttp_sse_client2(sse_server: str, name: str) -> None:
    url = f"{sse_server}/{name}"
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        ours = await read_with_sse_decoder(session, url)
        assert ours == [
            (event.event, event.data, event.id or "") for event in decode(CROSS_CHECK_STREAMS[name])
        ]
        assert len(ours) >= 2
        theirs = await read_with_event_source(session, url, len(ours))
    assert theirs == ours
