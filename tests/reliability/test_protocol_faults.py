"""Bodies that are not the vendor's protocol: broken JSON, unknown frames, HTML, invalid UTF-8,
10 MB lines, JSON of the wrong shape, absurd nesting and numbers.

Each is a `ProtocolError` (or the vendor's `APIError`) whose message quotes a short snippet of
what arrived, never a bare JSONDecodeError, KeyError, TypeError, ValueError or
UnicodeDecodeError; good chunks before the fault are kept in `.partial`; nothing is resent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmstreams import (
    APIError,
    Chunk,
    LLMStreamsError,
    Pool,
    ProtocolError,
    RateLimit,
    ServerError,
    StreamInterruptedError,
)
from llmstreams.mock import MockServer
from tests.reliability.helpers import (
    DASHSCOPE,
    QIANFAN,
    Scripted,
    ScriptedServer,
    Vendor,
    fault_free_pieces,
    knobs,
    read_all,
    vendor_params,
)

TEN_MB = 10_000_000
# Long enough to tell a truncated snippet from the whole body, short next to 10 MB.
SHORT_MESSAGE = 1_000


def assert_short(error: BaseException) -> None:
    assert len(str(error)) < SHORT_MESSAGE and len(repr(error)) < SHORT_MESSAGE + 100


# --- from the mock --------------------------------------------------------------------------------


@vendor_params()
async def test_malformed_json_in_a_data_line(mock: MockServer, vendor: Vendor) -> None:
    async with vendor.client(mock.url) as client:
        pieces = await fault_free_pieces(vendor, client)
        received: list[Chunk] = []
        with pytest.raises(ProtocolError) as caught:
            await read_all(vendor.stream(client, knobs(malformed_after=2)), received)
    error = caught.value
    # The message quotes the broken line.
    quoted = '"object":"chat.completion","result":"' if vendor.is_qianfan else '"text":"'
    assert quoted in str(error)
    assert_short(error)
    assert [chunk.text for chunk in received] == pieces[:2]
    assert error.partial is not None and error.partial.text == "".join(pieces[:2])
    assert mock.stats.requests[vendor.route] == 2  # the fault-free run and this one


@vendor_params()
async def test_10_mb_data_line_decodes(mock: MockServer, vendor: Vendor) -> None:
    # No line-length limit is documented or coded (SSEDecoder, both parsers): the line must decode.
    async with vendor.client(mock.url) as client:
        received: list[Chunk] = []
        await read_all(
            vendor.stream(client, knobs(huge_line_bytes=TEN_MB, answer_chars=48)), received
        )
    assert received[-1].is_end
    first_line_overhead = len(vendor.payloads([""])[0]) + len(b"data: ")
    assert TEN_MB - 2 * first_line_overhead < len(received[0].text.encode()) < TEN_MB
    assert mock.stats.requests[vendor.route] == 1


# --- from a scripted server -----------------------------------------------------------------------


@vendor_params()
async def test_unknown_frame_without_chunk_data(vendor: Vendor) -> None:
    events = vendor.events(["Hello ", "world"])
    weird = vendor.data_event(b'{"weird": true}', number=2, event="weird")
    script = Scripted([events[0], weird, events[1]])
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        received: list[Chunk] = []
        with pytest.raises(ProtocolError) as caught:
            await read_all(vendor.stream(client), received)
    assert '{"weird": true}' in str(caught.value)
    assert caught.value.partial is not None and caught.value.partial.text == "Hello "
    assert server.generations == 1


@vendor_params([
    QIANFAN,
    DASHSCOPE,
])
async def test_unknown_frame_with_chunk_shaped_data(vendor: Vendor) -> None:
    payloads = vendor.payloads(["Hello ", "weird ", "world"])
    script = Scripted([
        vendor.data_event(payloads[0], number=1),
        vendor.data_event(payloads[1], number=2, event="weird"),
        vendor.data_event(payloads[2], number=3),
    ])
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.stream(client).collect()
    assert "weird" in str(caught.value)
    assert caught.value.partial is not None and caught.value.partial.text == "Hello "
    assert server.generations == 1


@vendor_params()
async def test_html_on_a_non_stream_request(vendor: Vendor) -> None:
    page = b"<html><head><title>Gateway sign-in</title></head><body>" + b"x" * TEN_MB + b"</body></html>"
    script = Scripted([page], content_type="text/html")
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.answer(client)
    assert "<html><head><title>Gateway sign-in" in str(caught.value)
    assert_short(caught.value)
    assert server.generations == 1


@vendor_params()
async def test_invalid_utf8_inside_a_data_line_becomes_replacement_characters(vendor: Vendor) -> None:
    # The event-stream rules (protocol.md section 3) decode invalid bytes as U+FFFD.
    events = [
        event.replace(b"BROKEN", b"\xff\xfe")
        for event in vendor.events(["Hello ", "ab BROKEN cd ", "world"])
    ]
    async with ScriptedServer(Scripted(events)).running() as server, vendor.client(server.url) as client:
        completion = await vendor.stream(client).collect()
    assert completion.text == "Hello ab \ufffd\ufffd cd world"
    assert completion.is_complete


@vendor_params()
async def test_invalid_utf8_in_a_non_stream_body(vendor: Vendor) -> None:
    body = vendor.whole_body("ab BROKEN cd").replace(b"BROKEN", b"\xff\xfe")
    script = Scripted([body], content_type="application/json")
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.answer(client)
    assert "ab \ufffd\ufffd cd" in str(caught.value)
    assert server.generations == 1


@vendor_params()
async def test_10_mb_malformed_line_gives_a_short_message(vendor: Vendor) -> None:
    events = vendor.events(["Hello "], ended=False)
    broken = vendor.data_event(b'{"result": "' + b"y" * TEN_MB, number=2)
    async with ScriptedServer(Scripted([*events, broken])).running() as server, vendor.client(
        server.url
    ) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.stream(client).collect()
    assert '{"result": "yyy' in str(caught.value)
    assert_short(caught.value)
    assert caught.value.partial is not None and caught.value.partial.text == "Hello "


WRONG_SHAPES = [b'{"foo": 1}', b"[]", b"null", b'"text"', b"42", b"{}"]


@vendor_params()
@pytest.mark.parametrize("data", WRONG_SHAPES, ids=[shape.decode() for shape in WRONG_SHAPES])
async def test_valid_json_of_the_wrong_shape_in_a_stream(vendor: Vendor, data: bytes) -> None:
    script = Scripted([*vendor.events(["Hello "], ended=False), vendor.data_event(data, number=2)])
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.stream(client).collect()
    assert data.decode() in str(caught.value)
    assert caught.value.partial is not None and caught.value.partial.text == "Hello "
    assert server.generations == 1


@vendor_params()
@pytest.mark.parametrize("body", WRONG_SHAPES, ids=[shape.decode() for shape in WRONG_SHAPES])
async def test_valid_json_of_the_wrong_shape_as_a_whole_answer(vendor: Vendor, body: bytes) -> None:
    script = Scripted([body], content_type="application/json")
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.answer(client)
    assert body.decode() in str(caught.value)
    assert server.generations == 1


WRONG_FIELD_TYPES: dict[str, list[dict[str, Any]]] = {
    "qianfan": [
        {"sentence_id": 0, "is_end": True, "result": ["a list"]},
        {"sentence_id": "0", "is_end": True, "result": "x"},
        {"sentence_id": 0, "is_end": "maybe", "result": "x"},
        {"sentence_id": 0, "is_end": True, "result": "x", "need_clear_history": []},
        {"sentence_id": 0, "is_end": True, "result": "x", "usage": {"prompt_tokens": 1}},
        {"sentence_id": 0, "is_end": True, "result": "x", "usage": [1, 2, 3]},
    ],
    "dashscope": [
        {"output": {"text": 5, "finish_reason": "stop"}},
        {"output": {"text": "x", "finish_reason": 0}},
        {"output": []},
        {"output": {"choices": [{"message": {}}]}},
        {"output": {"text": "x", "finish_reason": "stop"}, "usage": {"input_tokens": "1"}},
        {"output": {"text": "x", "finish_reason": "stop"}, "usage": "lots"},
    ],
}


@vendor_params()
@pytest.mark.parametrize("case", range(6))
async def test_fields_of_the_wrong_type(vendor: Vendor, case: int) -> None:
    payload = WRONG_FIELD_TYPES["qianfan" if vendor.is_qianfan else "dashscope"][case]
    script = Scripted([vendor.data_event(json.dumps(payload).encode())])
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.stream(client).collect()
    assert_short(caught.value)
    assert server.generations == 1


@vendor_params()
async def test_empty_200_body(vendor: Vendor) -> None:
    async with ScriptedServer(Scripted([])).running() as server, vendor.client(server.url) as client:
        # An empty event stream is one that ended before its end (DashScope); Qianfan, which tells
        # its bodies apart by their first bytes, has nothing to tell it is a stream at all.
        expected = ProtocolError if vendor.is_qianfan else StreamInterruptedError
        with pytest.raises(expected):
            await vendor.stream(client).collect()
        with pytest.raises(ProtocolError):
            await vendor.answer(client)
    assert server.generations == 2


# --- inputs that once broke the parsers (see tests/README.md) ---------------------------


@vendor_params([
    QIANFAN,
    DASHSCOPE,
])
async def test_10_mb_field_value_of_the_wrong_kind_gives_a_short_message(vendor: Vendor) -> None:
    huge = "y" * TEN_MB
    if vendor.is_qianfan:
        payload: dict[str, object] = {"sentence_id": 0, "is_end": huge, "result": "x"}
    else:
        payload = {"output": {"text": "x", "finish_reason": "stop"}, "usage": {"input_tokens": huge}}
    script = Scripted([vendor.data_event(json.dumps(payload).encode())])
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ProtocolError) as caught:
            await vendor.stream(client).collect()
    assert_short(caught.value)
    assert server.generations == 1


@vendor_params()
@pytest.mark.parametrize("where", ["stream event", "whole answer", "error body"])
async def test_deeply_nested_json(vendor: Vendor, where: str) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    if where == "stream event":
        script = Scripted([vendor.data_event(nested)])
    else:
        status = 500 if where == "error body" else 200
        script = Scripted([nested], status=status, content_type="application/json")
    async with ScriptedServer(script).running() as server, vendor.client(
        server.url, max_retries=0
    ) as client:
        with pytest.raises(LLMStreamsError) as caught:
            if where == "stream event":
                await vendor.stream(client).collect()
            else:
                await vendor.answer(client)
    assert_short(caught.value)
    assert server.generations == 1


@pytest.mark.parametrize("code", ["²", "1" * 5000])
async def test_qianfan_error_code_that_looks_numeric_in_an_error_status(code: str) -> None:
    body = json.dumps({"error_code": code, "error_msg": "overloaded"}).encode()
    script = Scripted([body], status=503, content_type="application/json")
    async with ScriptedServer(script).running() as server, QIANFAN.client(
        server.url, max_retries=0
    ) as client:
        with pytest.raises(APIError) as caught:
            await QIANFAN.answer(client)
    assert isinstance(caught.value, ServerError)
    assert_short(caught.value)


async def test_dashscope_error_event_with_an_absurd_status() -> None:
    event = (
        b"id:1\nevent:error\n:HTTP_STATUS/" + b"5" * 5000
        + b'\ndata:{"code":"InternalError","message":"boom","request_id":"r"}\n\n'
    )
    async with ScriptedServer(Scripted([event])).running() as server, DASHSCOPE.client(
        server.url, max_retries=0
    ) as client:
        with pytest.raises(APIError) as caught:
            await DASHSCOPE.stream(client).collect()
    assert caught.value.code == "InternalError"


@vendor_params([
    QIANFAN,
    DASHSCOPE,
])
async def test_usage_counts_that_are_not_numbers(vendor: Vendor) -> None:
    payload = json.loads(vendor.payloads(["Hello"])[0])
    if vendor.is_qianfan:
        payload["usage"] = {"prompt_tokens": "5", "completion_tokens": "1", "total_tokens": "6"}
    else:
        payload["usage"] = {"input_tokens": "5", "output_tokens": "1", "total_tokens": "6"}
    script = Scripted([vendor.data_event(json.dumps(payload).encode())])
    async with ScriptedServer(script).running() as server, Pool(
        rate_limit=RateLimit(tokens_per_minute=1_000_000)
    ) as pool, vendor.client(server.url, pool=pool) as client:
        with pytest.raises(ProtocolError):
            await vendor.stream(client).collect()
        assert pool.stats().open_streams == 0
