"""The OpenAI-compatible dialect: bodies, chunk parsing and error mapping, fed with bytes (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmstreams import (
    APIError,
    AuthenticationError,
    ContentFilterError,
    InvalidParameterError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
    Usage,
)
from llmstreams.openai.wire import GENERIC, Dialect, DialectParser, Kind, build_body
from llmstreams.transport import ResponseHead, parse_retry_after
from llmstreams.types import Chunk, CompletionBuilder, ToolCall, ToolCallDelta
from tests.support import chunks_until_error

USER = [{"role": "user", "content": "hi"}]


def head(status: int = 200, content_type: str = "text/event-stream", **headers: str) -> ResponseHead:
    proxy = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type, **headers}))
    return ResponseHead(
        status=status, headers=proxy, content_type=content_type,
        retry_after=parse_retry_after(proxy.get("Retry-After")),
    )


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def delta_event(delta: dict[str, Any], finish_reason: str | None = None, **top: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
                  "model": "m", "choices": [choice], **top})


USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
DONE = b"data: [DONE]\n\n"
STREAM = (
    delta_event({"role": "assistant", "content": ""})
    + delta_event({"content": "Hel"})
    + delta_event({"content": "lo"})
    + delta_event({}, "stop")
    + event({"id": "chatcmpl-1", "choices": [], "usage": USAGE})
    + DONE
)


def parse(body: bytes, *, kind: Kind = "chat", dialect: Dialect = GENERIC, response: ResponseHead | None = None,
          piece: int | None = None) -> list[Chunk]:
    parser = DialectParser(response or head(), dialect, kind)
    chunks: list[Chunk] = []
    step = piece or len(body) or 1
    for start in range(0, len(body), step):
        chunks += parser.feed(body[start:start + step])
        if parser.finished:
            break
    return chunks + list(parser.close())


def collect(chunks: list[Chunk]) -> Any:
    builder = CompletionBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.build()


@pytest.mark.parametrize("piece", [None, 1, 7])
def test_a_stream_gives_its_text_and_one_end_chunk_with_finish_and_usage(piece: int | None) -> None:
    chunks = parse(STREAM, piece=piece)
    assert [chunk.text for chunk in chunks] == ["Hel", "lo", ""]
    assert [chunk.sentence_id for chunk in chunks] == [0, 1, 2]
    assert [chunk.is_end for chunk in chunks] == [False, False, True]
    end = chunks[-1]
    assert end.finish_reason == "stop" and end.usage == Usage(3, 5, 8)
    assert end.model == "m" and end.id == "chatcmpl-1"
    completion = collect(chunks)
    assert completion.text == "Hello" and completion.is_complete and completion.sentence_id_anomalies == 0


def test_without_usage_the_end_chunk_has_none() -> None:
    body = delta_event({"content": "a"}) + delta_event({}, "length") + DONE
    chunks = parse(body)
    assert chunks[-1].is_end and chunks[-1].finish_reason == "length" and chunks[-1].usage is None


def test_text_arriving_with_the_finish_reason_is_not_held_back() -> None:
    parser = DialectParser(head(), GENERIC, "chat")
    chunks = list(parser.feed(delta_event({"content": "last words"}, "stop")))
    assert [(c.text, c.is_end) for c in chunks] == [("last words", False)]
    assert not parser.finished
    assert [c.is_end for c in parser.feed(DONE)] == [True]
    assert parser.finished


def test_body_end_after_a_finish_reason_without_done_ends_the_stream() -> None:
    chunks = parse(delta_event({"content": "a"}) + delta_event({}, "stop"))
    assert [(c.text, c.is_end, c.finish_reason) for c in chunks] == [("a", False, None), ("", True, "stop")]


def test_body_end_before_any_finish_is_an_interruption() -> None:
    parser = DialectParser(head(), GENERIC, "chat")
    assert [c.text for c in parser.feed(delta_event({"content": "half"}))] == ["half"]
    with pytest.raises(StreamInterruptedError):
        parser.close()


def test_reasoning_and_tool_call_pieces_are_chunks() -> None:
    body = (
        delta_event({"reasoning_content": "think "})
        + delta_event({"reasoning_content": "more"})
        + delta_event({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]})
        + delta_event({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]})
        + delta_event({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})
        + delta_event({}, "tool_calls")
        + DONE
    )
    chunks = parse(body)
    assert chunks[0].reasoning == "think " and chunks[0].text == ""
    assert chunks[2].tool_calls == (ToolCallDelta(0, "call_1", "function", "get_weather", ""),)
    completion = collect(chunks)
    assert completion.reasoning == "think more"
    assert completion.tool_calls == (ToolCall(0, "call_1", "get_weather", '{"city": "Paris"}'),)
    assert completion.finish_reason == "tool_calls"


def test_an_error_event_mid_stream_comes_after_the_chunks_before_it() -> None:
    error = {"error": {"message": "model crashed", "type": "server_error", "code": "internal"}}
    parser = DialectParser(head(), GENERIC, "chat")
    chunks, caught = chunks_until_error(parser.feed(delta_event({"content": "so far"}) + event(error)))
    assert [c.text for c in chunks] == ["so far"]
    assert isinstance(caught, ServerError)
    assert "model crashed" in str(caught)
    assert caught.retryable is False


def test_events_are_decoded_only_as_their_chunks_are_taken() -> None:
    parser = DialectParser(head(), GENERIC, "chat")
    chunks = iter(parser.feed(delta_event({"content": "a"}) + b"data: {not json\n\n"))
    assert next(chunks).text == "a"
    with pytest.raises(ProtocolError, match="not a chat completion chunk"):
        next(chunks)


def test_an_error_event_before_any_text_may_be_retried() -> None:
    error = {"error": {"message": "busy", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}
    with pytest.raises(RateLimitError) as caught:
        parse(delta_event({"role": "assistant"}) + event(error))
    assert caught.value.retryable is True


def test_unknown_fields_are_tolerated() -> None:
    body = delta_event({"content": "x", "refusal": None, "audio": {}}, None, system_fingerprint="fp",
                       service_tier="default") + delta_event({}, "stop") + DONE
    assert collect(parse(body)).text == "x"


def test_a_chunk_that_is_not_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not a chat completion chunk"):
        parse(b"data: {not json\n\n")


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": 5},
        {"choices": [5]},
        {"choices": [{"index": 0, "delta": "text"}]},
        {"choices": [{"index": 0, "delta": {"content": 5}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": ["x"]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": {"index": 0}}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": "call"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [7]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "0"}]}}]},
    ],
)
def test_a_malformed_server_event_is_a_protocol_error(payload: dict[str, Any]) -> None:
    parser = DialectParser(head(), GENERIC, "chat")
    chunks, error = chunks_until_error(parser.feed(delta_event({"content": "a"}) + event(payload)))
    assert [c.text for c in chunks] == ["a"]
    assert isinstance(error, ProtocolError) and "not a chat completion chunk" in str(error)


def test_an_error_event_that_cannot_be_decoded_is_a_protocol_error() -> None:
    # The typed decoding skips the unknown field; decoding the whole error object cannot.
    body = b'data: {"error": {"message": "m"}, "x": 1e400}\n\n'
    with pytest.raises(ProtocolError, match="not a chat completion chunk"):
        parse(body)


def test_a_fault_of_llmstreams_is_not_blamed_on_the_server() -> None:
    # A vendor table holding something that is not an error class is a bug of ours, not a
    # malformed event: it must surface as itself.
    broken = Dialect(provider="v", error_classes={"odd_code": "not a class"})  # type: ignore[dict-item]
    parser = DialectParser(head(), broken, "chat")
    with pytest.raises(TypeError, match="not callable"):
        list(parser.feed(event({"error": {"message": "m", "code": "odd_code"}})))


def test_an_html_page_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="expected server-sent events or JSON"):
        parse(b"<html><body>Bad gateway</body></html>", response=head(200, "text/html"))


def test_legacy_completions_read_choice_text() -> None:
    body = (
        event({"id": "cmpl-1", "choices": [{"index": 0, "text": "def ", "finish_reason": None}]})
        + event({"id": "cmpl-1", "choices": [{"index": 0, "text": "f():", "finish_reason": "stop"}]})
        + DONE
    )
    completion = collect(parse(body, kind="completions"))
    assert completion.text == "def f():" and completion.finish_reason == "stop"


def test_a_whole_answer_is_one_end_chunk() -> None:
    answer = {
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "reasoning_content": "hmm",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": USAGE,
    }
    [chunk] = parse(json.dumps(answer).encode(), response=head(200, "application/json"))
    assert chunk.is_end and chunk.text == "" and chunk.reasoning == "hmm"
    assert chunk.usage == Usage(3, 5, 8) and chunk.finish_reason == "tool_calls"
    assert collect([chunk]).tool_calls == (ToolCall(0, "c1", "f", "{}"),)


@pytest.mark.parametrize(
    ("status", "error", "expected", "retryable"),
    [
        (401, {"message": "Incorrect API key provided.", "type": "invalid_request_error",
               "code": "invalid_api_key"}, AuthenticationError, False),
        (404, {"message": "no such model", "type": "invalid_request_error",
               "code": "model_not_found"}, NotFoundError, False),
        (400, {"message": "bad", "type": "invalid_request_error", "code": "invalid_argument"},
         InvalidRequestError, False),
        (400, {"message": "inappropriate", "code": "data_inspection_failed"}, ContentFilterError, False),
        (429, {"message": "slow down", "code": "rate_limit_exceeded"}, RateLimitError, True),
        (429, {"message": "pay up", "code": "insufficient_quota"}, RateLimitError, False),
        (503, {"message": "overloaded"}, ServerError, True),
        (418, {"message": "teapot"}, APIError, False),
    ],
)
def test_error_bodies_map_by_code_and_status(
    status: int, error: dict[str, Any], expected: type[APIError], retryable: bool
) -> None:
    body = json.dumps({"error": {**error, "param": None}, "request_id": "req-1"}).encode()
    with pytest.raises(expected) as caught:
        parse(body, response=head(status, "application/json"))
    assert type(caught.value) is expected
    assert caught.value.http_status == status and caught.value.retryable is retryable
    assert caught.value.request_id == "req-1" and caught.value.message == error["message"]


def test_vendor_codes_come_first() -> None:
    dialect = Dialect(provider="v", error_classes={"odd_code": NotFoundError})
    body = json.dumps({"error": {"message": "m", "code": "odd_code"}}).encode()
    with pytest.raises(NotFoundError):
        parse(body, dialect=dialect, response=head(400, "application/json"))


def test_vllm_top_level_error_and_plain_bodies() -> None:
    body = json.dumps({"object": "error", "message": "too long", "type": "BadRequestError",
                       "param": None, "code": 400}).encode()
    with pytest.raises(InvalidRequestError, match="too long") as caught:
        parse(body, response=head(400, "application/json"))
    assert caught.value.code == 400
    with pytest.raises(ServerError, match="upstream died"):
        parse(b"upstream died", response=head(502, "text/plain"))


def test_retry_after_ms_wins_over_retry_after() -> None:
    body = json.dumps({"error": {"message": "slow"}}).encode()
    with pytest.raises(RateLimitError) as caught:
        parse(body, response=head(429, "application/json", **{"Retry-After": "3", "retry-after-ms": "250"}))
    assert caught.value.retry_after == 0.25
    with pytest.raises(RateLimitError) as caught:
        parse(body, response=head(429, "application/json", **{"Retry-After": "3"}))
    assert caught.value.retry_after == 3.0


def test_qianfan_choice_flags_reach_the_chunk() -> None:
    dialect = Dialect(provider="qianfan", choice_flags=True, id_is_request_id=True)
    body = event({"id": "as-1", "choices": [{"index": 0, "delta": {"content": "x"},
                                              "need_clear_history": True, "ban_round": 2}]})
    body += event({"id": "as-1", "choices": [{"index": 0, "delta": {"content": ""}, "is_end": True,
                                              "finish_reason": "stop"}]})
    chunks = parse(body, dialect=dialect)
    assert chunks[0].need_clear_history and chunks[0].ban_round == 2
    assert chunks[0].request_id == "as-1"
    completion = collect(chunks)
    assert completion.need_clear_history and completion.ban_round == 2 and completion.is_complete


def body_of(**params: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(build_body(
        "chat", stream=True, model="m", input_value=USER, params=params, dialect=GENERIC
    ))
    return data


def test_the_body_asks_for_usage_on_streams_only() -> None:
    assert body_of()["stream_options"] == {"include_usage": True}
    assert "stream_options" not in body_of(include_usage=False)
    whole = json.loads(build_body("chat", stream=False, model="m", input_value=USER, params={},
                                  dialect=GENERIC))
    assert whole == {"model": "m", "messages": USER, "stream": False}


def test_the_body_carries_checked_fields_and_extra_body() -> None:
    body = body_of(temperature=0.5, max_tokens=10, stop="x", seed=1, tools=[
        {"type": "function", "function": {"name": "f", "parameters": {}}}], tool_choice="auto",
        response_format={"type": "json_object"}, extra_body={"top_k": 5})
    assert body["temperature"] == 0.5 and body["stop"] == ["x"] and body["top_k"] == 5
    assert body["tool_choice"] == "auto" and body["tools"][0]["function"]["name"] == "f"


@pytest.mark.parametrize(
    ("messages", "params", "field"),
    [
        ([], {}, "messages"),
        ([{"role": "robot", "content": "x"}], {}, "messages[0].role"),
        ([*USER, {"role": "tool", "content": "42"}], {}, "messages[1].tool_call_id"),
        ([{"role": "user"}], {}, "messages[0].content"),
        ([{"role": "user", "content": "x", "mood": "happy"}], {}, "messages[0]"),
        (USER, {"temperature": 2.5}, "temperature"),
        (USER, {"top_p": -0.1}, "top_p"),
        (USER, {"presence_penalty": 3}, "presence_penalty"),
        (USER, {"max_tokens": 0}, "max_tokens"),
        (USER, {"n": 2}, "n"),
        (USER, {"tool_choice": "sometimes"}, "tool_choice"),
        (USER, {"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (USER, {"response_format": {"type": "yaml"}}, "response_format"),
        (USER, {"extra_body": {"stream": False}}, "extra_body['stream']"),
        (USER, {"extra_body": {"temperature": 1}}, "extra_body['temperature']"),
        (USER, {"temprature": 1}, "temprature"),
    ],
)
def test_bad_input_is_refused_naming_the_field(messages: Any, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        build_body("chat", stream=True, model="m", input_value=messages, params=params, dialect=GENERIC)
    assert caught.value.field == field


def test_a_system_message_later_on_is_refused_where_the_vendor_says_so() -> None:
    messages = [*USER, {"role": "system", "content": "x"}]
    build_body("chat", stream=True, model="m", input_value=messages, params={}, dialect=GENERIC)
    strict = Dialect(provider="v", system_first_only=True)
    with pytest.raises(InvalidParameterError, match="first"):
        build_body("chat", stream=True, model="m", input_value=messages, params={}, dialect=strict)


def test_chat_only_fields_are_refused_on_completions() -> None:
    with pytest.raises(InvalidParameterError, match="chat calls") as caught:
        build_body("completions", stream=True, model="m", input_value="p",
                   params={"tools": []}, dialect=GENERIC)
    assert caught.value.field == "tools"


def test_bad_usage_at_the_end_comes_after_the_text_before_it() -> None:
    parser = DialectParser(head(), GENERIC, "chat")
    body = delta_event({"content": "kept"}, "stop") + event({"choices": [], "usage": {"prompt_tokens": "x"}})
    chunks, error = chunks_until_error(parser.feed(body + DONE))
    assert [c.text for c in chunks] == ["kept"]
    assert isinstance(error, ProtocolError) and "usage" in str(error)


def test_a_baidu_style_error_event_is_raised_not_ignored() -> None:
    parser = DialectParser(head(), GENERIC, "chat")
    chunks, error = chunks_until_error(
        parser.feed(delta_event({"content": "so far"}) + event({"error_code": 336100, "error_msg": "busy"}))
    )
    assert [c.text for c in chunks] == ["so far"]
    assert isinstance(error, APIError) and "busy" in str(error)
    assert error.code == 336100
