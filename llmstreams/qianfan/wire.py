"""Qianfan's wire format: checking parameters, building request bodies, parsing responses.

Response bodies come in three shapes, told apart by their first bytes rather than the
Content-Type (the service sends its plain JSON error body even to a stream request):
server-sent events (`data: {...}` lines), one JSON object (a whole answer or an error), or
something else (a proxy's HTML page), which is a `ProtocolError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec

from llmstreams import errors, validation
from llmstreams.bodyparser import SniffingParser
from llmstreams.errors import snippet
from llmstreams.jsoncodec import JSON_ERRORS, DecodedJSON, decode_json, repaired_utf8
from llmstreams.transport import ResponseHead
from llmstreams.types import Chunk, Usage, make_chunk
from llmstreams.validation import check_extra, check_int, check_number, check_stop, check_text

logger = logging.getLogger("llmstreams")

PROVIDER: Final = "qianfan"
JSON_CONTENT_TYPE: Final = "application/json"
DEFAULT_MAX_INPUT_CHARS: Final = 4800

# The body fields the methods take as checked keyword arguments.
SAMPLING_FIELDS: Final = ("temperature", "top_k", "top_p", "penalty_score", "stop", "user_id")
_RESERVED_BODY_FIELDS: Final = ("messages", "prompt", "stream")
# Headers the client sets itself (the last three are signed under AK/SK).
_RESERVED_HEADERS: Final = frozenset(
    {"authorization", "host", "content-type", "content-length", "x-bce-date"}
)

# Error codes, from the vendor's error code table, by the class they raise.
_CODE_CLASSES: Final[dict[int, type[errors.APIError]]] = {
    110: errors.AuthenticationError,  # access token invalid
    111: errors.AuthenticationError,  # access token expired
    13: errors.AuthenticationError,  # getting the service token failed
    14: errors.AuthenticationError,  # IAM certification failed (AK/SK)
    6: errors.PermissionDeniedError,  # no permission
    336004: errors.PermissionDeniedError,  # user authentication failed / no permission for the service
    3: errors.NotFoundError,  # unsupported method
    15: errors.NotFoundError,  # app does not exist
    336005: errors.NotFoundError,  # API name (endpoint) does not exist
    4: errors.RateLimitError,  # request limit
    17: errors.RateLimitError,  # daily limit
    18: errors.RateLimitError,  # QPS limit
    19: errors.RateLimitError,  # total limit
    336501: errors.RateLimitError,  # RPM limit
    336502: errors.RateLimitError,  # TPM limit
    1: errors.ServerError,  # unknown error
    2: errors.ServerError,  # service unavailable
    336000: errors.ServerError,  # internal error
    336100: errors.ServerError,  # high load, try again later
    100: errors.InvalidRequestError,  # invalid parameter
}
# Every other 3360xx code (invalid argument, invalid JSON, odd message count...) is a bad request.
_INVALID_REQUEST_CODES: Final = range(336001, 336100)
RETRYABLE_CODES: Final = frozenset({2, 18, 336100, 336501, 336502})
# Baidu switched the v1 API off on 2026-08-31; what the switched-off service answers is not
# documented, so every plausible answer (the API name unknown, HTTP 404/410) says how to move.
V1_GONE_CODE: Final = 336005
V1_GONE_STATUSES: Final = frozenset({404, 410})
V1_GONE_HINT: Final = (
    "If the endpoint and base_url are right, the v1 API may be switched off (Baidu ended it on "
    "2026-08-31): move to v2 with OpenAICompatibleClient(vendor='qianfan', api_key='bce-v3/...') "
    "(a key from the console) and model='<the v2 model id, e.g. ernie-speed-8k>' (see "
    "docs/qianfan.md)"
)
TOKEN_ERROR_CODES: Final = frozenset({110, 111})


# --- request side -------------------------------------------------------------------------------


# Parameters other APIs have, under the name v1 uses (or where v1 takes them instead).
V1_PARAMETER_HINTS: Final = {
    "max_tokens": "Qianfan v1 calls it max_output_tokens: pass extra_params={'max_output_tokens': N}",
    "system": "Qianfan v1 takes the system prompt as extra_params={'system': '...'}",
}
_SYSTEM_MESSAGE_HINT: Final = (
    "Qianfan v1 takes no 'system' message: pass its content as extra_params={'system': '...'}"
)


def check_messages(messages: Any, *, max_input_chars: int | None) -> list[dict[str, str]]:
    """The chat history as the service wants it: user/assistant turns, starting and ending with user."""
    messages = validation.check_message_list(messages)
    for index, message in enumerate(messages):
        if isinstance(message, Mapping) and message.get("role") == "system":
            raise errors.InvalidParameterError(f"messages[{index}].role", _SYSTEM_MESSAGE_HINT, "system")
    if len(messages) % 2 == 0:
        raise errors.InvalidParameterError(
            "messages",
            "must hold an odd number of messages (user, assistant, ..., user)",
            len(messages),
        )
    checked: list[dict[str, str]] = []
    total_chars = 0
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise errors.InvalidParameterError(
                field, "must be a dict with 'role' and 'content'", type(message).__name__
            )
        if set(message) != {"role", "content"}:
            raise errors.InvalidParameterError(
                field, "must have exactly the keys 'role' and 'content'", sorted(map(str, message))
            )
        role = message["role"]
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise errors.InvalidParameterError(
                f"{field}.role",
                f"must be {expected!r}: roles alternate user/assistant, starting and ending with user",
                role,
            )
        content = check_text(f"{field}.content", message["content"])
        total_chars += len(content)
        checked.append({"role": role, "content": content})
    if max_input_chars is not None and total_chars > max_input_chars:
        raise errors.InvalidParameterError(
            "messages",
            f"the contents must total at most {max_input_chars} characters (for models that "
            "accept more, raise QianfanClient(max_input_chars=...), or set it to None)",
            total_chars,
        )
    return checked


def check_prompt(prompt: Any) -> str:
    return check_text("prompt", prompt)


def sampling_fields(
    *,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    penalty_score: Any,
    stop: Any,
    user_id: Any,
) -> dict[str, Any]:
    """The body fields for the sampling parameters that were given, each checked."""
    fields: dict[str, Any] = {}
    if temperature is not None:
        fields["temperature"] = check_number("temperature", temperature, low=0, high=1, low_open=True)
    if top_k is not None:
        fields["top_k"] = check_int("top_k", top_k, low=1)
    if top_p is not None:
        fields["top_p"] = check_number("top_p", top_p, low=0, high=1)
    if penalty_score is not None:
        fields["penalty_score"] = check_number("penalty_score", penalty_score, low=1, high=2)
    if stop is not None:
        fields["stop"] = check_stop("stop", stop, max_items=4, max_length=20)
    if user_id is not None:
        fields["user_id"] = check_text("user_id", user_id)
    return fields


def check_extra_params(extra_params: Any) -> dict[str, Any]:
    """The escape hatch for body fields this library does not know yet."""
    return check_extra(
        "extra_params", extra_params, reserved=_RESERVED_BODY_FIELDS,
        set_by="the messages / prompt argument, stream_* vs not", arguments=SAMPLING_FIELDS,
    )


def check_headers(field: str, headers: Any) -> dict[str, str]:
    """Extra request headers, none of those the client sets itself."""
    return validation.check_headers(field, headers, reserved=_RESERVED_HEADERS)


def encode_body(fields: Mapping[str, Any]) -> bytes:
    """The JSON request body; extra_params is the only part that may not be JSON."""
    return validation.encode_json(fields, blame="extra_params")


# --- errors -------------------------------------------------------------------------------------


def error_class(code: int) -> type[errors.APIError]:
    """The error class for a Qianfan `error_code` (APIError itself for unknown codes)."""
    known = _CODE_CLASSES.get(code)
    if known is not None:
        return known
    return errors.InvalidRequestError if code in _INVALID_REQUEST_CODES else errors.APIError


def api_error(payload: Mapping[str, Any], head: ResponseHead, *, hints: Mapping[int, str] | None) -> errors.APIError:
    """The error for a body or event `{"error_code": N, "error_msg": "...", "id": "..."}`."""
    code = payload["error_code"]
    if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 18:
        code = int(code)
    status_failed = errors.is_retryable_status(head.status)
    if isinstance(code, bool) or not isinstance(code, int):
        if not status_failed:
            raise errors.ProtocolError(
                f"error_code is not a number: {snippet(repr(code), 80)}", provider=PROVIDER
            )
        code = None  # The HTTP status alone says what failed.
    message = str(payload.get("error_msg") or "the service gave no error message")
    hint = hints.get(code) if hints and code is not None else None
    if code == V1_GONE_CODE:
        hint = V1_GONE_HINT
    if hint:
        message = f"{message}. {hint}"
    request_id = payload.get("id")
    cls = errors.status_error_class(head.status) if status_failed else error_class(code)
    return cls(
        message,
        code=code,
        http_status=head.status,
        provider=PROVIDER,
        request_id=request_id if isinstance(request_id, str) else None,
        retryable=status_failed or code in RETRYABLE_CODES,
        retry_after=head.retry_after,
    )


def status_error(head: ResponseHead, body: bytes, *, hints: Mapping[int, str] | None) -> errors.APIError:
    """The error for a non-2xx response, whatever its body."""
    status = head.status
    try:
        payload = decode_json(body)
    except JSON_ERRORS:
        payload = None
    if isinstance(payload, dict) and "error_code" in payload:
        return api_error(payload, head, hints=hints)
    code: int | str | None = None
    request_id = None
    if isinstance(payload, dict) and "message" in payload:
        # The error shape of Baidu Cloud's API gateway: {"code", "message", "requestId"}.
        code = payload.get("code") if isinstance(payload.get("code"), (int, str)) else None
        message = str(payload["message"])
        request_id = payload.get("requestId") if isinstance(payload.get("requestId"), str) else None
    else:
        # The status is in the error's text already (APIError.__str__): not again here.
        message = f"not a Qianfan error body: {snippet(body)}" if body.strip() else "an empty body"
    if status in V1_GONE_STATUSES:
        message = f"{message}. {V1_GONE_HINT}"
    return errors.status_error_class(status)(
        message,
        code=code,
        http_status=status,
        provider=PROVIDER,
        request_id=request_id,
        retryable=errors.is_retryable_status(status),
        retry_after=head.retry_after,
    )


# --- response side ------------------------------------------------------------------------------

# 1/0 and true/false both mean a flag (1 == True and 0 == False hash alike).
_FLAGS: Final[dict[object, bool]] = {True: True, False: False}


def _fault(error: Exception) -> str:
    """What was wrong with a received value, shortened: the value may be huge."""
    return f"{type(error).__name__}: {snippet(str(error), 80)}"


class _Event(msgspec.Struct, gc=False):
    """The fields of a Qianfan event or answer that a chunk is made of; others are skipped.

    Fields passed through unchecked keep any JSON value, as the chunk got them before; the flags
    are 1/0 or true/false (`_FLAGS`). A field missing where it is required is None here.
    """

    result: str | None = None
    sentence_id: int | None = None
    is_end: bool | int | None = None
    need_clear_history: Any = False
    ban_round: Any = None
    is_truncated: Any = False
    is_safe: Any = None
    finish_reason: Any = None
    # Decoded straight into the public class (msgspec fills an attrs class's slots itself),
    # which costs less than making one from a struct, or than comparing to share the last one.
    usage: Usage | None = None
    id: Any = None
    created: Any = None
    error_code: Any = msgspec.UNSET


_decode_event: Final = msgspec.json.Decoder(_Event).decode


def _chunk(
    event: _Event, source: str | bytes, sentence_id: int, is_end: bool, previous: Chunk | None
) -> Chunk:
    """A chunk from a decoded event or body; KeyError/TypeError for a malformed one.

    Qianfan's `id` names the request (errors carry it too), so it is also the `request_id`.
    An id equal to the previous chunk's is shared, not copied.
    """
    text = event.result
    if text is None:
        raise TypeError("result is missing")
    is_safe = event.is_safe
    response_id = event.id
    if previous is not None and response_id == previous.id:
        response_id = previous.id
    return make_chunk(
        text=text,
        sentence_id=sentence_id,
        is_end=is_end,
        need_clear_history=_FLAGS[event.need_clear_history],
        ban_round=event.ban_round,
        is_truncated=_FLAGS[event.is_truncated],
        is_safe=None if is_safe is None else _FLAGS[is_safe],
        finish_reason=event.finish_reason,
        usage=event.usage,
        id=response_id,
        created=event.created,
        request_id=response_id,
        raw=DecodedJSON(source),
    )


class QianfanParser(SniffingParser):
    """Turns one Qianfan response body, stream or not, into chunks (see `ResponseParser`)."""

    __slots__ = ("_hints", "_last")

    def __init__(self, head: ResponseHead, *, hints: Mapping[int, str] | None = None) -> None:
        super().__init__(head, provider=PROVIDER)
        self._hints = hints
        self._last: Chunk | None = None

    def _end_of_events(self) -> Iterator[Chunk]:
        if not self._finished:
            raise errors.StreamInterruptedError(
                "the stream ended before its last chunk (is_end) arrived", provider=PROVIDER
            )
        return iter(())

    def _status_error(self, body: bytes) -> errors.APIError:
        return status_error(self._head, body, hints=self._hints)

    def _chunks(self, events: list[tuple[bytes, bytes]]) -> Iterator[Chunk]:
        """The chunks of `events`, each decoded only when asked for; an error comes in its turn."""
        for event_type, data in events:
            if event_type and event_type != b"message":
                raise errors.ProtocolError(
                    f"unexpected event type {snippet(event_type, 40)} in a Qianfan stream: "
                    f"{snippet(data)}",
                    provider=PROVIDER,
                )
            chunk = self._last = self._event_chunk(data)
            if chunk.is_end:
                self._finished = True
                yield chunk
                return
            yield chunk

    def _event_chunk(self, data: str | bytes) -> Chunk:
        try:
            event = _decode_event(data)
            if event.error_code is not msgspec.UNSET:
                raise api_error(decode_json(data), self._head, hints=self._hints)
            sentence_id = event.sentence_id
            if sentence_id is None:
                raise TypeError("sentence_id is missing")
            chunk = _chunk(event, data, sentence_id, _FLAGS[event.is_end], self._last)
        except (*JSON_ERRORS, KeyError, TypeError, AttributeError) as error:
            text = repaired_utf8(data)
            if text is not None:
                return self._event_chunk(text)
            raise errors.ProtocolError(
                f"a stream event is not a Qianfan chunk ({_fault(error)}): {snippet(data)}",
                provider=PROVIDER,
            ) from None
        due = 0 if self._last is None else self._last.sentence_id + 1
        if sentence_id != due:
            # Peers repeat or interleave ids (the SDK's test server sends 0 on every chunk): the
            # text is whole, so the gap is only counted (Completion.sentence_id_anomalies).
            logger.debug(
                "%s: chunk sentence_id %d arrived where %d was due (request id %s)",
                PROVIDER, sentence_id, due, chunk.id,
            )
        return chunk

    def _whole_answer(self, body: bytes) -> Chunk:
        """The one chunk of a JSON answer (a non-stream call's), or its error."""
        try:
            event = _decode_event(body)
            if event.error_code is not msgspec.UNSET:
                raise api_error(decode_json(body), self._head, hints=self._hints)
            chunk = _chunk(event, body, event.sentence_id or 0, True, None)
        except (*JSON_ERRORS, KeyError, TypeError, AttributeError) as error:
            raise errors.ProtocolError(
                f"the response is not a Qianfan answer ({_fault(error)}): {snippet(body)}",
                provider=PROVIDER,
            ) from None
        return chunk
