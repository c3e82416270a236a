"""DashScope wire format: request bodies and response parsing, fed with bytes (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from llmstreams.bodyparser import MAX_WHOLE_BODY
from llmstreams.dashscope import wire
from llmstreams.errors import (
    APIError,
    AuthenticationError,
    ContentFilterError,
    InvalidParameterError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
)
from llmstreams.transport import ResponseHead
from llmstreams.types import Chunk, Usage
from tests.support import chunks_until_error

SSE = "text/event-stream"


def head(status: int = 200, content_type: str = SSE, retry_after: float | None = None) -> ResponseHead:
    return ResponseHead(
        status=status, headers=CIMultiDict(), content_type=content_type, retry_after=retry_after
    )


def generation(**arguments: Any) -> wire.Generation:
    call: dict[str, Any] = {"prompt": None, "messages": None, "model": "billa-7b-sft-v1", "stream": True}
    if "messages" not in arguments:
        call["prompt"] = "hi"
    params = {name: value for name, value in arguments.items() if name not in (*call, "unknown")}
    params.update(arguments.get("unknown", {}))
    call.update({name: value for name, value in arguments.items() if name in call})
    return wire.build_generation(**call, params=params)


def frame(number: int, payload: dict[str, Any], *, event: str = "result", status: int = 200) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"id:{number}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{data}\n\n".encode()


def text_payload(text: str, finish_reason: str = "null", output_tokens: int = 1) -> dict[str, Any]:
    return {
        "output": {"text": text, "finish_reason": finish_reason},
        "usage": {"input_tokens": 3, "output_tokens": output_tokens, "total_tokens": 3 + output_tokens},
        "request_id": "req-1",
    }


def message_payload(text: str, finish_reason: str = "null") -> dict[str, Any]:
    return {
        "output": {"choices": [{"finish_reason": finish_reason,
                                "message": {"role": "assistant", "content": text}}]},
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        "request_id": "req-2",
    }


PIECES = ["春天", "来了,", "花朵", "都开了。"]


def cumulative_stream() -> bytes:
    frames = []
    for index in range(len(PIECES)):
        finish = "stop" if index == len(PIECES) - 1 else "null"
        frames.append(frame(index + 1, text_payload("".join(PIECES[: index + 1]), finish, index + 1)))
    return b"".join(frames)


def incremental_stream() -> bytes:
    frames = []
    for index, piece in enumerate(PIECES):
        finish = "stop" if index == len(PIECES) - 1 else "null"
        frames.append(frame(index + 1, text_payload(piece, finish, index + 1)))
    return b"".join(frames)


def parse(parser: Any, pieces: list[bytes]) -> list[Chunk]:
    chunks: list[Chunk] = []
    for piece in pieces:
        chunks.extend(parser.feed(piece))
    chunks.extend(parser.close())
    return chunks


def stream_parser(**arguments: Any) -> Any:
    return wire.parser_for(head(), generation(**arguments))


# Request bodies


def test_body_holds_only_given_parameters_and_never_stream() -> None:
    built = generation(temperature=0.5, stop="END", seed=0)
    assert json.loads(built.body) == {
        "model": "billa-7b-sft-v1",
        "input": {"prompt": "hi"},
        "parameters": {"seed": 0, "temperature": 0.5, "stop": ["END"]},
    }
    assert json.loads(generation().body)["parameters"] == {}


def test_body_with_messages_and_every_parameter() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "翻译:春天"},
    ]
    built = generation(
        messages=messages, result_format="message", incremental_output=True, seed=2**64 - 1,
        max_tokens=100, top_p=1, top_k=50, temperature=0, repetition_penalty=1.1,
        presence_penalty=-2, stop=["a", "b"], enable_search=False, extra_params={"n": 1},
    )
    body = json.loads(built.body)
    assert body["input"] == {"messages": messages}
    assert body["parameters"] == {
        "result_format": "message", "incremental_output": True, "seed": 2**64 - 1,
        "max_tokens": 100, "top_p": 1.0, "top_k": 50, "temperature": 0.0,
        "repetition_penalty": 1.1, "presence_penalty": -2.0, "stop": ["a", "b"],
        "enable_search": False, "n": 1,
    }
    assert "翻译" in built.body.decode()
    assert (built.cumulative, built.message_format) == (False, True)


def test_mode_follows_what_was_asked() -> None:
    assert generation().cumulative
    assert generation(incremental_output=False).cumulative
    assert not generation(incremental_output=True).cumulative
    assert not generation(result_format="text").message_format


def test_extra_params_must_serialize_to_json() -> None:
    with pytest.raises(InvalidParameterError) as raised:
        generation(extra_params={"x": float("nan")})
    assert raised.value.field == "extra_params"
    with pytest.raises(InvalidParameterError):
        generation(extra_params={"x": object()})


def test_generation_repr_hides_the_body() -> None:
    assert "hi" not in repr(generation(prompt="secret prompt hi"))


# Stream parsing


@pytest.mark.parametrize("incremental", [False, True])
def test_each_chunk_holds_only_new_text(incremental: bool) -> None:
    body = incremental_stream() if incremental else cumulative_stream()
    parser = stream_parser(incremental_output=True if incremental else None)
    chunks = parse(parser, [body])
    assert [chunk.text for chunk in chunks] == PIECES
    assert [chunk.sentence_id for chunk in chunks] == [0, 1, 2, 3]
    assert [chunk.is_end for chunk in chunks] == [False, False, False, True]
    assert [chunk.finish_reason for chunk in chunks] == [None, None, None, "stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert chunks[0].request_id == "req-1"
    assert chunks[-1].raw["output"]["finish_reason"] == "stop"
    assert parser.finished


@pytest.mark.parametrize("incremental", [False, True])
def test_any_split_of_the_bytes_gives_the_same_chunks(incremental: bool) -> None:
    body = incremental_stream() if incremental else cumulative_stream()
    argument = True if incremental else None
    whole = parse(stream_parser(incremental_output=argument), [body])
    for cut in range(1, len(body)):
        split = parse(stream_parser(incremental_output=argument), [body[:cut], body[cut:]])
        assert split == whole, cut
    one_byte_each = [body[index : index + 1] for index in range(len(body))]
    assert parse(stream_parser(incremental_output=argument), one_byte_each) == whole


def test_crlf_line_endings() -> None:
    body = cumulative_stream().replace(b"\n", b"\r\n")
    assert "".join(chunk.text for chunk in parse(stream_parser(), [body])) == "".join(PIECES)


def test_message_format_stream() -> None:
    body = frame(1, message_payload("Hello")) + frame(2, message_payload("Hello world", "length"))
    chunks = parse(stream_parser(result_format="message"), [body])
    assert [chunk.text for chunk in chunks] == ["Hello", " world"]
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].request_id == "req-2"


def test_message_format_answer_when_text_format_was_not_asked_for() -> None:
    body = frame(1, message_payload("Hi", "stop"))
    assert [chunk.text for chunk in parse(stream_parser(), [body])] == ["Hi"]


def test_usage_without_total_tokens_is_summed() -> None:
    payload = text_payload("x", "stop")
    payload["usage"] = {"input_tokens": 2, "output_tokens": 5}
    (chunk,) = parse(stream_parser(), [frame(1, payload)])
    assert chunk.usage == Usage(2, 5, 7)


def test_cumulative_event_that_does_not_continue_the_text_is_a_protocol_error() -> None:
    parser = stream_parser()
    first = list(parser.feed(frame(1, text_payload("Hello"))))
    assert [chunk.text for chunk in first] == ["Hello"]
    with pytest.raises(ProtocolError, match="does not continue"):
        list(parser.feed(frame(2, text_payload(" world"))))


def test_good_events_before_a_bad_one_are_returned_then_the_error_raised() -> None:
    parser = stream_parser(incremental_output=True)
    body = frame(1, text_payload("a")) + frame(2, text_payload("b")) + b"event:result\ndata:{oops\n\n"
    chunks, error = chunks_until_error(parser.feed(body))
    assert [chunk.text for chunk in chunks] == ["a", "b"]
    assert isinstance(error, ProtocolError)
    assert "oops" in str(error)


def test_events_are_decoded_only_as_their_chunks_are_taken() -> None:
    parser = stream_parser(incremental_output=True)
    chunks = iter(parser.feed(frame(1, text_payload("a")) + b"event:result\ndata:{oops\n\n"))
    assert next(chunks).text == "a"
    with pytest.raises(ProtocolError, match="oops"):
        next(chunks)


@pytest.mark.parametrize(
    "data",
    [b"[1, 2]", b'{"output": 5}', b'{"output": {"text": 5}}', b'{"no_output": {}}',
     b'{"output": {"text": "a", "finish_reason": 7}}',
     b'{"output": {"text": "a"}, "usage": {"input_tokens": "x", "output_tokens": 1}}',
     b'{"output": {"choices": []}}'],
)
def test_unexpected_json_is_a_protocol_error_quoting_it(data: bytes) -> None:
    parser = stream_parser(incremental_output=True)
    with pytest.raises(ProtocolError) as raised:
        list(parser.feed(b"event:result\ndata:" + data + b"\n\n"))
    assert data.decode()[:5] in str(raised.value)


def test_unknown_event_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="'keepalive'"):
        list(stream_parser().feed(b"event:keepalive\ndata:{}\n\n"))
    with pytest.raises(ProtocolError, match="'message'"):
        list(stream_parser().feed(b"data:" + json.dumps(text_payload("x")).encode() + b"\n\n"))


def test_stream_that_ends_before_the_last_event_is_interrupted() -> None:
    parser = stream_parser()
    assert len(list(parser.feed(frame(1, text_payload("Hello"))))) == 1
    with pytest.raises(StreamInterruptedError) as raised:
        list(parser.close())
    assert raised.value.request_id == "req-1"


def test_empty_stream_is_interrupted() -> None:
    with pytest.raises(StreamInterruptedError):
        list(stream_parser().close())


def test_event_stream_content_that_is_not_sse_is_a_protocol_error() -> None:
    parser = stream_parser()
    assert list(parser.feed(b"<html><body>sign in</body></html>\n")) == []
    with pytest.raises(ProtocolError, match="sign in"):
        list(parser.close())


def test_events_after_the_last_are_ignored() -> None:
    parser = stream_parser(incremental_output=True)
    body = frame(1, text_payload("a", "stop")) + b"event:bogus\ndata:{}\n\n"
    assert [chunk.text for chunk in parser.feed(body)] == ["a"]
    assert parser.finished
    assert list(parser.close()) == []


# Mid-stream error events


def error_payload(code: str) -> dict[str, str]:
    return {"code": code, "message": f"{code} happened", "request_id": "req-err"}


@pytest.mark.parametrize(
    ("code", "status", "error_class", "retryable"),
    [
        ("Throttling.RateQuota", 429, RateLimitError, True),
        ("InternalError", 500, ServerError, True),
        ("ModelUnavailable", 503, ServerError, True),
        ("DataInspectionFailed", 400, ContentFilterError, False),
        ("InvalidParameter", 400, InvalidRequestError, False),
        ("InvalidApiKey", 401, AuthenticationError, False),
    ],
)
def test_error_event_after_chunks(
    code: str, status: int, error_class: type[APIError], retryable: bool
) -> None:
    parser = stream_parser(incremental_output=True)
    body = frame(1, text_payload("a")) + frame(2, error_payload(code), event="error", status=status)
    chunks, error = chunks_until_error(parser.feed(body))
    assert [chunk.text for chunk in chunks] == ["a"]
    assert type(error) is error_class
    assert (error.code, error.http_status, error.request_id) == (code, status, "req-err")
    assert error.message == f"{code} happened"
    assert error.retryable is retryable
    assert error.provider == "dashscope"


def test_error_status_comes_from_the_comment_line_not_the_code() -> None:
    body = frame(1, error_payload("InternalError"), event="error", status=503)
    with pytest.raises(ServerError) as raised:
        list(stream_parser().feed(body))
    assert raised.value.http_status == 503


def test_error_status_is_found_whatever_the_split() -> None:
    body = (frame(1, text_payload("a")) + frame(2, text_payload("ab"))
            + frame(3, error_payload("Throttling"), event="error", status=429))
    for cut in range(1, len(body)):
        parser = stream_parser()
        with pytest.raises(RateLimitError) as raised:
            parse(parser, [body[:cut], body[cut:]])
        assert raised.value.http_status == 429, cut
    parser = stream_parser()
    with pytest.raises(RateLimitError) as raised:
        parse(parser, [body[index : index + 1] for index in range(len(body))])
    assert raised.value.http_status == 429


def test_error_event_with_crlf_and_spaces() -> None:
    body = (b"id: 1\r\nevent: error\r\n:HTTP_STATUS/403\r\ndata: "
            + json.dumps(error_payload("AccessDenied.Unpurchased")).encode() + b"\r\n\r\n")
    with pytest.raises(PermissionDeniedError) as raised:
        list(stream_parser().feed(body))
    assert raised.value.http_status == 403


def test_error_event_without_status_comment() -> None:
    body = b"event:error\ndata:" + json.dumps(error_payload("ModelNotFound")).encode() + b"\n\n"
    with pytest.raises(NotFoundError) as raised:
        list(stream_parser().feed(body))
    assert raised.value.http_status is None
    assert not raised.value.retryable


def test_error_event_without_code_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="without a code"):
        list(stream_parser().feed(b"event:error\n:HTTP_STATUS/500\ndata:{\"message\": \"?\"}\n\n"))


# Whole bodies: non-stream answers and errors before the stream


def body_parser(response_head: ResponseHead, **arguments: Any) -> Any:
    return wire.parser_for(response_head, generation(stream=False, **arguments))


def test_non_stream_text_answer() -> None:
    body = json.dumps(text_payload("whole answer", "stop", 5)).encode()
    parser = body_parser(head(content_type="application/json"))
    assert list(parser.feed(body[:10])) == []
    assert list(parser.feed(body[10:])) == []
    (chunk,) = list(parser.close())
    assert parser.finished
    assert (chunk.text, chunk.is_end, chunk.finish_reason, chunk.sentence_id) == (
        "whole answer", True, "stop", 0
    )
    assert chunk.usage == Usage(3, 5, 8)
    assert chunk.request_id == "req-1"


def test_non_stream_message_answer_and_seed_style_answer() -> None:
    parser = body_parser(head(content_type="application/json"), result_format="message")
    list(parser.feed(json.dumps(message_payload("Hi there", "stop")).encode()))
    (chunk,) = parser.close()
    assert chunk.text == "Hi there"
    # The seed's example answer: no finish_reason, no usage.
    seed_answer = b'{"output":{"text":"def is_even(num): ..."},"request_id":"d89c"}'
    parser = body_parser(head(content_type="application/json"))
    list(parser.feed(seed_answer))
    (chunk,) = list(parser.close())
    assert (chunk.text, chunk.finish_reason, chunk.usage, chunk.is_end) == (
        "def is_even(num): ...", None, None, True
    )


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"output": {"text": 1}}', b""])
def test_non_stream_body_that_is_not_an_answer(body: bytes) -> None:
    parser = body_parser(head(content_type="application/json"))
    list(parser.feed(body))
    with pytest.raises(ProtocolError):
        list(parser.close())


def test_non_stream_error_object_with_status_200() -> None:
    parser = body_parser(head(content_type="application/json"))
    list(parser.feed(json.dumps(error_payload("Throttling")).encode()))
    with pytest.raises(RateLimitError):
        list(parser.close())


@pytest.mark.parametrize(
    ("status", "code", "error_class", "retryable"),
    [
        (401, "InvalidApiKey", AuthenticationError, False),
        (403, "AccessDenied", PermissionDeniedError, False),
        (403, "AccessDenied.Unpurchased", PermissionDeniedError, False),
        (404, "ModelNotFound", NotFoundError, False),
        (400, "InvalidParameter", InvalidRequestError, False),
        (400, "BadRequest.EmptyInput", InvalidRequestError, False),
        (413, "BadRequest.TooLarge", InvalidRequestError, False),
        (400, "DataInspectionFailed", ContentFilterError, False),
        (429, "Throttling", RateLimitError, True),
        (429, "Throttling.AllocationQuota", RateLimitError, True),
        (500, "InternalError.Algo", ServerError, True),
        (500, "SystemError", ServerError, True),
        (503, "ModelUnavailable", ServerError, True),
        (408, "RequestTimeOut", ServerError, True),
        (418, "SomethingNew", APIError, False),
    ],
)
def test_error_bodies_before_the_stream(
    status: int, code: str, error_class: type[APIError], retryable: bool
) -> None:
    for response_head, arguments in (
        (head(status, "application/json", retry_after=2.5), {}),
        (head(status, "application/json", retry_after=2.5), {"stream": True}),
    ):
        parser = wire.parser_for(response_head, generation(**arguments))
        list(parser.feed(json.dumps(error_payload(code)).encode()))
        with pytest.raises(APIError) as raised:
            list(parser.close())
        error = raised.value
        assert type(error) is error_class
        assert (error.http_status, error.code, error.request_id) == (status, code, "req-err")
        assert error.retryable is retryable
        assert error.retry_after == 2.5


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [(502, ServerError, True), (429, RateLimitError, True), (401, AuthenticationError, False),
     (400, InvalidRequestError, False), (405, APIError, False), (409, ServerError, True),
     (410, NotFoundError, False)],
)
def test_error_status_without_a_dashscope_body(
    status: int, error_class: type[APIError], retryable: bool
) -> None:
    parser = wire.parser_for(head(status, "text/html"), generation())
    list(parser.feed(b"<html>Bad Gateway</html>"))
    with pytest.raises(APIError) as raised:
        list(parser.close())
    assert type(raised.value) is error_class
    assert raised.value.retryable is retryable
    assert raised.value.code is None
    assert "Bad Gateway" in str(raised.value)


def test_stream_request_answered_with_a_page_is_a_protocol_error() -> None:
    parser = wire.parser_for(head(200, "text/html"), generation())
    list(parser.feed(b"<html><title>Network sign-in</title></html>"))
    with pytest.raises(ProtocolError, match="Network sign-in"):
        list(parser.close())


def test_body_larger_than_the_limit_is_refused() -> None:
    parser = body_parser(head(content_type="application/json"))
    with pytest.raises(ProtocolError, match="longer than"):
        list(parser.feed(b" " * (MAX_WHOLE_BODY + 1)))
