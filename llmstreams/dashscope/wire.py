"""DashScope text generation on the wire.

Checks a call's parameters and builds the request body (`build_generation`), turns response
bodies into `Chunk`s (`parser_for`), and maps DashScope's error answers onto the llmstreams error
hierarchy (`api_error`). See protocol.md section 2 for the format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, TypedDict

import attrs
import msgspec

from llmstreams import errors, validation
from llmstreams.bodyparser import MAX_WHOLE_BODY
from llmstreams.errors import snippet
from llmstreams.jsoncodec import JSON_ERRORS, DecodedJSON, decode_json, repaired_utf8
from llmstreams.sse import SSEDecoder
from llmstreams.telemetry import GenerationInfo, describe
from llmstreams.transport import ResponseHead, ResponseParser
from llmstreams.types import Chunk, Usage, make_chunk, make_usage

PROVIDER = "dashscope"
GENERATION_PATH = "/api/v1/services/aigc/text-generation/generation"

RESULT_FORMATS = ("text", "message")
MESSAGE_ROLES = ("system", "user", "assistant")
# DashScope documents the seed as an unsigned 64-bit integer.
SEED_MAX = 2**64 - 1



class GenerateParams(TypedDict, total=False):
    """The optional keyword arguments of a generation (`stream_generate` / `generate`, and the
    native `stream_chat` / `chat`); None (as leaving one out) sends nothing, so the service's
    default applies. They go in the request's `parameters`, in this order."""

    result_format: str | None
    incremental_output: bool | None
    seed: int | None
    max_tokens: int | None
    top_p: float | None
    top_k: int | None
    temperature: float | None
    repetition_penalty: float | None
    presence_penalty: float | None
    stop: str | Sequence[str] | None
    enable_search: bool | None
    extra_params: Mapping[str, Any] | None
    extra_headers: Mapping[str, str] | None


# The `parameters` fields this library knows and checks.
PARAMETER_NAMES: Final = tuple(GenerateParams.__annotations__)[:-2]
# Every keyword a generation method takes, for "did you mean" suggestions.
CALL_ARGUMENTS: Final = ("prompt", "messages", "model", *GenerateParams.__annotations__)

_STREAM_CONTENT_TYPE = "text/event-stream"
_STATUS_COMMENT = ":HTTP_STATUS/"
_NOT_FINISHED = "null"


@attrs.frozen(slots=True)
class Generation:
    """One checked generation call: its serialized body and how to read the answer.

    `cumulative`: the server sends the whole text so far in every stream event (DashScope's
    default), rather than only the new piece (`incremental_output=True`).
    """

    body: bytes = attrs.field(repr=False)
    stream: bool
    cumulative: bool
    message_format: bool
    # For the telemetry (None when none is recorded): what was asked, without where.
    telemetry: GenerationInfo | None = attrs.field(default=None, repr=False)


def build_generation(
    *, stream: bool, prompt: Any, messages: Any, model: Any, params: Mapping[str, Any]
) -> Generation:
    """Check every argument of a generation call (raising `InvalidParameterError`) and build its
    body; `params` are the call's keyword arguments other than `extra_headers`."""
    validation.reject_unknown(
        {name: value for name, value in params.items() if name not in CALL_ARGUMENTS},
        CALL_ARGUMENTS, escape_hatch="extra_params",
    )
    if model is None:
        raise errors.InvalidParameterError("model", "is required, e.g. model='billa-7b-sft-v1'")
    validation.check_text("model", model)
    body_input = _check_input(prompt, messages)
    result_format = params.get("result_format")
    incremental_output = params.get("incremental_output")

    parameters: dict[str, Any] = {}
    if result_format is not None:
        if result_format not in RESULT_FORMATS:
            raise errors.InvalidParameterError("result_format", "must be 'text' or 'message'", result_format)
        parameters["result_format"] = result_format
    if incremental_output is not None:
        parameters["incremental_output"] = validation.check_bool("incremental_output", incremental_output)
    if (seed := params.get("seed")) is not None:
        parameters["seed"] = validation.check_int("seed", seed, low=0, high=SEED_MAX)
    if (max_tokens := params.get("max_tokens")) is not None:
        parameters["max_tokens"] = validation.check_int("max_tokens", max_tokens, low=1)
    if (top_p := params.get("top_p")) is not None:
        parameters["top_p"] = validation.check_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
    if (top_k := params.get("top_k")) is not None:
        parameters["top_k"] = validation.check_int("top_k", top_k, low=1)
    if (temperature := params.get("temperature")) is not None:
        parameters["temperature"] = validation.check_number(
            "temperature", temperature, low=0.0, high=2.0, high_open=True
        )
    if (repetition_penalty := params.get("repetition_penalty")) is not None:
        parameters["repetition_penalty"] = validation.check_number(
            "repetition_penalty", repetition_penalty, low=0.0, low_open=True
        )
    if (presence_penalty := params.get("presence_penalty")) is not None:
        parameters["presence_penalty"] = validation.check_number(
            "presence_penalty", presence_penalty, low=-2.0, high=2.0
        )
    if (stop := params.get("stop")) is not None:
        parameters["stop"] = validation.check_stop("stop", stop, max_items=None, max_length=None)
    if (enable_search := params.get("enable_search")) is not None:
        parameters["enable_search"] = validation.check_bool("enable_search", enable_search)

    extra = validation.check_extra("extra_params", params.get("extra_params"))
    for name in extra:
        if name in PARAMETER_NAMES:
            raise errors.InvalidParameterError(
                "extra_params", f"{name!r} has an argument of its own: pass {name}= so it is checked"
            )
    parameters.update(extra)

    body = {"model": model, "input": body_input, "parameters": parameters}
    return Generation(
        body=validation.encode_json(body, blame="extra_params"),
        stream=stream,
        cumulative=incremental_output is not True,
        message_format=result_format == "message",
        telemetry=describe(
            "chat" if messages is not None else "completions", model, parameters,
            content=messages if messages is not None else prompt,
        ),
    )


def _check_input(prompt: Any, messages: Any) -> dict[str, Any]:
    # protocol.md: the input is a prompt OR messages. Given both, the service would silently use
    # one of them, so the ambiguity is refused here.
    if prompt is None and messages is None:
        raise errors.InvalidParameterError("prompt", "give a prompt or messages=[...]")
    if prompt is not None and messages is not None:
        raise errors.InvalidParameterError("messages", "give either a prompt or messages, not both")
    if prompt is not None:
        return {"prompt": validation.check_text("prompt", prompt)}
    return {"messages": check_messages(messages)}


def check_messages(messages: Any) -> list[dict[str, str]]:
    """A copy of `messages`, if it is a non-empty list of role/content dicts ending with the user."""
    rule = "must be a non-empty list of {'role': ..., 'content': ...} dicts"
    if not isinstance(messages, (list, tuple)) or not messages:
        raise errors.InvalidParameterError("messages", rule, type(messages).__name__)
    checked: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise errors.InvalidParameterError(field, rule, type(message).__name__)
        unknown = sorted(str(key) for key in message if key not in ("role", "content"))
        if unknown:
            raise errors.InvalidParameterError(field, "may only hold 'role' and 'content'", unknown)
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise errors.InvalidParameterError(
                f"{field}.role", "must be 'system', 'user' or 'assistant'", role
            )
        if role == "system" and index != 0:
            raise errors.InvalidParameterError(f"{field}.role", "a system message may only come first")
        content = validation.check_text(f"{field}.content", message.get("content"))
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "user":
        raise errors.InvalidParameterError(
            "messages", "the last message must be from the user", checked[-1]["role"]
        )
    return checked


# Errors


def api_error(
    *,
    status: int | None,
    code: str | None,
    message: str,
    request_id: str | None,
    retry_after: float | None = None,
) -> errors.APIError:
    """The `APIError` subclass for a DashScope error code and HTTP status."""
    error_class = _error_class(code, status)
    retryable = status is not None and errors.is_retryable_status(status)
    return error_class(
        message, code=code, http_status=status, provider=PROVIDER, request_id=request_id,
        retryable=retryable, retry_after=retry_after,
    )


_ERROR_CLASS_FOR_CODE: dict[str, type[errors.APIError]] = {
    "InvalidApiKey": errors.AuthenticationError,
    "ModelNotFound": errors.NotFoundError,
    "DataInspectionFailed": errors.ContentFilterError,
    "data_inspection_failed": errors.ContentFilterError,
    "SystemError": errors.ServerError,
    "ModelUnavailable": errors.ServerError,
    "RequestTimeOut": errors.ServerError,
}
_ERROR_CLASS_FOR_CODE_PREFIX: tuple[tuple[str, type[errors.APIError]], ...] = (
    ("AccessDenied", errors.PermissionDeniedError),
    ("Throttling", errors.RateLimitError),
    ("InvalidParameter", errors.InvalidRequestError),
    ("BadRequest", errors.InvalidRequestError),
    ("InternalError", errors.ServerError),
)


def _error_class(code: str | None, status: int | None) -> type[errors.APIError]:
    if code:
        known = _ERROR_CLASS_FOR_CODE.get(code)
        if known is not None:
            return known
        for prefix, error_class in _ERROR_CLASS_FOR_CODE_PREFIX:
            if code.startswith(prefix):
                return error_class
    return errors.APIError if status is None else errors.status_error_class(status)


def _error_from_payload(
    payload: Any, *, status: int | None, retry_after: float | None
) -> errors.APIError | None:
    """The error a `{code, message, request_id}` object describes, or None if it is not one."""
    if not isinstance(payload, dict):
        return None
    code = payload.get("code")
    if not isinstance(code, str) or not code:
        return None
    message = payload.get("message")
    request_id = payload.get("request_id")
    return api_error(
        status=status,
        code=code,
        message=message if isinstance(message, str) and message else code,
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after=retry_after,
    )


def error_from_body(head: ResponseHead, body: bytes) -> errors.APIError:
    """The error an HTTP error response (status other than 200) stands for."""
    error = _error_from_payload(_json_or_none(body), status=head.status, retry_after=head.retry_after)
    if error is not None:
        return error
    # Not a DashScope body (a gateway's error page, say): the status alone tells what happened.
    return api_error(
        status=head.status,
        code=None,
        message=f"not a DashScope error body: {snippet(body)}",
        request_id=None,
        retry_after=head.retry_after,
    )


def _json_or_none(body: str | bytes) -> Any:
    try:
        return decode_json(body)
    except JSON_ERRORS:
        return None


# Response parsers


def parser_for(head: ResponseHead, generation: Generation) -> ResponseParser:
    """The parser for a response to `generation` that began with `head`."""
    if head.status != 200:
        return BufferedBodyParser(head, _raise_error_body)
    if not generation.stream:
        if generation.message_format:
            return BufferedBodyParser(head, _message_completion)
        return BufferedBodyParser(head, _text_completion)
    if head.content_type != _STREAM_CONTENT_TYPE:
        return BufferedBodyParser(head, _raise_not_event_stream)
    return EventStreamParser(cumulative=generation.cumulative, message_format=generation.message_format)


class EventStreamParser:
    """DashScope's event stream: `event:result` frames, or one `event:error` frame.

    Each chunk's text is only what is new, whichever way the server sends it: in cumulative
    mode the text so far is cut off the front of each event's text (and an event whose text
    does not begin with it is a `ProtocolError`, never silently wrong text).
    """

    __slots__ = (
        "_decoder", "_cumulative", "_message_format", "_text", "_count", "_finished",
        "_unparsed", "_request_id", "_last",
    )

    def __init__(self, *, cumulative: bool, message_format: bool) -> None:
        self._decoder = SSEDecoder()
        self._cumulative = cumulative
        self._message_format = message_format
        self._text = ""
        self._count = 0
        self._finished = False
        # The bytes since (and including) the last read that completed an event, which hold
        # every line of the events not yet complete. Only an error event looks at them, for
        # its `:HTTP_STATUS/NNN` comment, which the SSE decoder drops as the standard says.
        self._unparsed: list[bytes] = []
        self._request_id: str | None = None
        self._last: Chunk | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    def feed(self, data: bytes) -> Iterator[Chunk]:
        events = self._decoder.feed_events(data)
        if not events:
            self._unparsed.append(data)
            return iter(())
        window = self._unparsed
        window.append(data)
        self._unparsed = [data]
        return self._chunks(events, window)

    def close(self) -> Iterator[Chunk]:
        self._decoder.close()
        if self._finished:
            return iter(())
        received = b"".join(self._unparsed)
        if not self._count and received.strip():
            raise errors.ProtocolError(
                f"the response is not a DashScope event stream: {snippet(received)}",
                provider=PROVIDER,
            )
        raise errors.StreamInterruptedError(
            "the stream ended before its last event (the one with a finish_reason)",
            provider=PROVIDER, request_id=self._request_id,
        )

    def _chunks(self, events: list[tuple[bytes, bytes]], window: list[bytes]) -> Iterator[Chunk]:
        """The chunks of `events`, each decoded only when asked for; an error comes in its turn."""
        for kind, data in events:
            if kind == b"result":
                chunk = self._last = self._chunk(data)
                if chunk.is_end:
                    self._finished = True
                    yield chunk
                    return
                yield chunk
            elif kind == b"error":
                raise self._error_event(data, window)
            else:
                raise errors.ProtocolError(
                    f"unexpected event type {snippet(kind or b'message', 40)} in a DashScope stream: "
                    f"{snippet(data)}",
                    provider=PROVIDER, request_id=self._request_id,
                )

    def _chunk(self, data: str | bytes) -> Chunk:
        try:
            event = _decode_result(data)
            output = event.output
            text = output.text
            finish_reason = output.finish_reason
            if self._message_format or text is None:
                text, finish_reason = _message_text_and_finish_reason(output.choices)
            counts = event.usage
            request_id = event.request_id
        except (*JSON_ERRORS, LookupError, TypeError, AttributeError):
            repaired = repaired_utf8(data)
            if repaired is not None:
                return self._chunk(repaired)
            raise errors.ProtocolError(
                f"a DashScope stream event is not a generation result: {snippet(data)}",
                provider=PROVIDER, request_id=self._request_id,
            ) from None
        if type(text) is not str or not (finish_reason is None or type(finish_reason) is str):
            raise errors.ProtocolError(
                f"a DashScope stream event's text or finish_reason is not a string: {snippet(data)}",
                provider=PROVIDER, request_id=self._request_id,
            )
        if self._cumulative:
            so_far = self._text
            if not text.startswith(so_far):
                raise errors.ProtocolError(
                    "a cumulative DashScope event does not continue the text received so far "
                    f"(was incremental_output set some other way?): {snippet(data)}",
                    provider=PROVIDER, request_id=self._request_id,
                )
            self._text = text
            text = text[len(so_far):]
        if type(request_id) is str:
            if request_id == self._request_id:
                request_id = self._request_id
            else:
                self._request_id = request_id
        else:
            request_id = None
        is_end = finish_reason is not None and finish_reason != _NOT_FINISHED
        sentence_id = self._count
        self._count = sentence_id + 1
        usage = None
        if counts is not None:
            last = self._last
            input_tokens = counts.input_tokens
            output_tokens = counts.output_tokens
            total_tokens = counts.total_tokens
            usage = make_usage(
                input_tokens, output_tokens,
                input_tokens + output_tokens if total_tokens is None else total_tokens,
                None if last is None else last.usage,
            )
        return make_chunk(
            text=text, sentence_id=sentence_id, is_end=is_end,
            finish_reason=finish_reason if is_end else None, usage=usage,
            request_id=request_id, raw=DecodedJSON(data),
        )

    def _error_event(self, data: bytes, window: list[bytes]) -> errors.LLMStreamsError:
        error = _error_from_payload(
            _json_or_none(repaired_utf8(data) or data), status=_error_event_status(b"".join(window)),
            retry_after=None,
        )
        if error is None:
            return errors.ProtocolError(
                f"a DashScope error event without a code: {snippet(data)}",
                provider=PROVIDER, request_id=self._request_id,
            )
        return error


class _Output(msgspec.Struct, gc=False):
    text: Any = None
    finish_reason: Any = None
    choices: Any = None


class _EventUsage(msgspec.Struct, gc=False):
    input_tokens: int
    output_tokens: int
    total_tokens: int | None = None


class _ResultEvent(msgspec.Struct, gc=False):
    """The fields of a `result` event that a chunk is made of; others are skipped (a usage
    without whole-number token counts fails the decoding)."""

    output: _Output
    usage: _EventUsage | None = None
    request_id: Any = None


_decode_result: Final = msgspec.json.Decoder(_ResultEvent).decode


def _message_text_and_finish_reason(choices: Any) -> tuple[Any, Any]:
    """The text and finish_reason of an `output` object in the "message" format (which models
    whose default result format it is send unasked, too); LookupError/TypeError if absent."""
    choice = choices[0]
    return choice["message"]["content"], choice.get("finish_reason")


def _error_event_status(received: bytes) -> int | None:
    """The status in the `:HTTP_STATUS/NNN` comment of the first error event in `received`."""
    text = received.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        status: int | None = None
        is_error = False
        for line in block.split("\n"):
            if line.startswith(_STATUS_COMMENT):
                digits = line[len(_STATUS_COMMENT):].strip()
                is_status = digits.isascii() and digits.isdigit() and len(digits) == 3
                status = int(digits) if is_status else None
            elif line.startswith("event:"):
                is_error = line[6:].removeprefix(" ") == "error"
        if is_error:
            return status
    return None


def _usage(usage: Any, data: str | bytes, previous: Usage | None) -> Usage:
    """The `Usage` of a `usage` object (`previous` itself if its counts are the same)."""
    try:
        prompt_tokens = usage["input_tokens"]
        completion_tokens = usage["output_tokens"]
        total_tokens = usage.get("total_tokens", prompt_tokens + completion_tokens)
        if type(prompt_tokens) is int and type(completion_tokens) is int and type(total_tokens) is int:
            return make_usage(prompt_tokens, completion_tokens, total_tokens, previous)
    except (LookupError, TypeError, AttributeError):
        pass
    raise errors.ProtocolError(
        f"DashScope usage without whole-number input and output tokens: {snippet(data)}",
        provider=PROVIDER,
    )


class BufferedBodyParser:
    """Reads a whole body and interprets it at its end: non-stream answers and error bodies."""

    __slots__ = ("_head", "_interpret", "_body", "_finished")

    def __init__(self, head: ResponseHead, interpret: Callable[[ResponseHead, bytes], Chunk]) -> None:
        self._head = head
        self._interpret = interpret
        self._body = bytearray()
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def feed(self, data: bytes) -> list[Chunk]:
        self._body += data
        if len(self._body) > MAX_WHOLE_BODY:
            raise errors.ProtocolError(
                f"a DashScope response body longer than {MAX_WHOLE_BODY} bytes: "
                f"{snippet(bytes(self._body[:1000]))}",
                provider=PROVIDER,
            )
        return []

    def close(self) -> list[Chunk]:
        chunk = self._interpret(self._head, bytes(self._body))
        self._finished = True
        return [chunk]


def _raise_error_body(head: ResponseHead, body: bytes) -> Chunk:
    raise error_from_body(head, body)


def _raise_not_event_stream(head: ResponseHead, body: bytes) -> Chunk:
    raise errors.ProtocolError(
        f"a stream request was answered with {head.content_type or 'no content type'}, "
        f"not an event stream: {snippet(body)}",
        provider=PROVIDER,
    )


def _text_completion(head: ResponseHead, body: bytes) -> Chunk:
    return _completion(head, body, message_format=False)


def _message_completion(head: ResponseHead, body: bytes) -> Chunk:
    return _completion(head, body, message_format=True)


def _completion(head: ResponseHead, body: bytes, *, message_format: bool) -> Chunk:
    """The one chunk of a non-stream answer."""
    payload = _json_or_none(body)
    output = payload.get("output") if isinstance(payload, dict) else None
    if not isinstance(output, dict):
        error = _error_from_payload(payload, status=head.status, retry_after=head.retry_after)
        if error is not None:
            raise error
        raise errors.ProtocolError(
            f"the DashScope answer has no output: {snippet(body)}", provider=PROVIDER
        )
    text = output.get("text")
    finish_reason = output.get("finish_reason")
    try:
        if message_format or text is None:
            text, finish_reason = _message_text_and_finish_reason(output.get("choices"))
    except (LookupError, TypeError, AttributeError):
        text = finish_reason = None
    if type(text) is not str or not (finish_reason is None or type(finish_reason) is str):
        raise errors.ProtocolError(
            f"the DashScope answer is not a generation result: {snippet(body)}", provider=PROVIDER
        )
    usage = payload.get("usage")
    request_id = payload.get("request_id")
    return Chunk(
        text=text,
        sentence_id=0,
        is_end=True,
        finish_reason=None if finish_reason in (None, _NOT_FINISHED) else finish_reason,
        usage=None if usage is None else _usage(usage, body, None),
        request_id=request_id if isinstance(request_id, str) else None,
        raw=payload,
    )
