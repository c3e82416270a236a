"""The OpenAI-compatible dialect on the wire, once for every vendor that speaks it.

Qianfan v2, DashScope's compatible mode, vLLM, SGLang and most hosted services speak it
(protocol.md section 5). This module checks a call's parameters and builds its body
(`build_body`), turns response bodies into `Chunk`s (`DialectParser`) and maps the dialect's
error bodies onto the llmstreams error hierarchy (`api_error`). A vendor describes what it
adds as a `Dialect`: its name, its limits, its extra body fields and its error codes.

Chunks: `sentence_id` counts the chunks of a stream from 0 (the dialect has none). Text,
reasoning and tool-call pieces go out as they come, with `is_end=False`; the single end chunk
(empty text, the finish_reason and usage) goes out at `data: [DONE]`, or at the body's end when a
finish_reason came without `[DONE]`. Role-only and usage-only chunks carry nothing to yield.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypedDict

import attrs
import msgspec

from llmstreams import errors, validation
from llmstreams.bodyparser import SniffingParser
from llmstreams.errors import snippet
from llmstreams.jsoncodec import JSON_ERRORS, DecodedJSON, decode_json, repaired_utf8
from llmstreams.transport import ResponseHead
from llmstreams.types import Chunk, ToolCallDelta, Usage, make_chunk, make_usage

Kind = Literal["chat", "completions"]
PATHS: Final[Mapping[Kind, str]] = {"chat": "/chat/completions", "completions": "/completions"}
JSON_CONTENT_TYPE: Final = "application/json"

_DONE: Final = b"[DONE]"
_SEED_RANGE: Final = (-(2**63), 2**63 - 1)
_MESSAGE_KEYS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
_TOOL_CHOICES: Final = ("none", "auto", "required")
_RESPONSE_FORMATS: Final = ("text", "json_object", "json_schema")
# Body fields the methods set from their own arguments: never through extra_body.
_RESERVED_BODY_FIELDS: Final = ("model", "messages", "prompt", "stream", "stream_options")


class CompleteParams(TypedDict, total=False):
    """The optional keyword arguments of a legacy text completion (`stream_complete` /
    `complete`), which a chat call takes too; None (as leaving one out) sends nothing, so the
    server's default applies."""

    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    stop: str | Sequence[str] | None
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    n: int | None
    user: str | None
    include_usage: bool | None
    extra_body: Mapping[str, Any] | None
    extra_headers: Mapping[str, str] | None


class ChatParams(CompleteParams, total=False):
    """The optional keyword arguments of a chat call (`stream_chat` / `chat`)."""

    max_completion_tokens: int | None
    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: str | Mapping[str, Any] | None
    response_format: Mapping[str, Any] | None


class VendorParams(TypedDict, total=False):
    """Parameters of some vendors only, typed here so that calls passing them type-check; each
    vendor's preset checks the ones it takes and refuses the others before sending (see
    `Dialect.extras`)."""

    penalty_score: float | None
    enable_thinking: bool | None
    thinking_budget: int | None
    enable_search: bool | None
    thinking: Mapping[str, Any] | None
    reasoning_effort: str | None
    do_sample: bool | None
    request_id: str | None
    user_id: str | None
    tool_stream: bool | None
    service_tier: str | None
    min_p: float | None
    top_k: int | None
    enable_enhancement: bool | None


class VendorChatParams(ChatParams, VendorParams, total=False):
    """A chat call's keyword arguments on a vendor's preset: the dialect's and the vendors'."""


CHAT_PARAMETERS: Final = tuple(ChatParams.__annotations__)
COMPLETE_PARAMETERS: Final = tuple(CompleteParams.__annotations__)
_CHAT_ONLY: Final = frozenset(CHAT_PARAMETERS) - frozenset(COMPLETE_PARAMETERS)

ExtraCheck = Callable[[str, Any], Any]


@attrs.frozen(slots=True)
class Dialect:
    """What one vendor's flavour of the dialect adds or restricts.

    - `provider`: the name errors and chunks carry.
    - `temperature_max`, `max_stop`: the vendor's limits (None: not checked here).
    - `system_first_only`: a `system` message may only come first.
    - `extras`: vendor body fields taken as keyword arguments, each with its check.
    - `error_classes`: the vendor's error `code`s (or, for vendors whose errors carry only a
      `type`, error types), by the class they raise.
    - `quota_codes`: codes (or types) that say the account's balance or quota is used up: not
      retried, whatever the status (waiting does not refill it).
    - `id_is_request_id`: the chunks' `id` names the request (Qianfan's `as-...`).
    - `choice_flags`: choices carry Qianfan's `is_end`, `need_clear_history` and `ban_round`.
    - `request_id_headers`: response headers that name the request.
    - `stream_only`: extras the vendor refuses on a whole (non-stream) answer.
    - `check_model`: the vendor's own check of a model id (e.g. a name of another API
      version refused with the id to use instead).
    - `parameter_hints`: what to pass instead of parameters people bring from elsewhere (the
      vendor's other API), for the error that refuses them.
    """

    provider: str
    temperature_max: float = 2.0
    max_stop: int | None = None
    system_first_only: bool = False
    extras: Mapping[str, ExtraCheck] = attrs.field(factory=dict)
    error_classes: Mapping[str, type[errors.APIError]] = attrs.field(factory=dict)
    quota_codes: frozenset[str] = frozenset()
    id_is_request_id: bool = False
    choice_flags: bool = False
    request_id_headers: tuple[str, ...] = ("x-request-id",)
    stream_only: tuple[str, ...] = ()
    check_model: Callable[[Any], str] | None = None
    parameter_hints: Mapping[str, str] = attrs.field(factory=dict)


GENERIC: Final = Dialect(provider="openai")


# --- request side -------------------------------------------------------------------------------


def check_messages(messages: Any, dialect: Dialect) -> list[dict[str, Any]]:
    """A copy of the chat history, each message checked: role, content, tool-call ids."""
    messages = validation.check_message_list(messages)
    checked: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise errors.InvalidParameterError(
                field, "must be a dict with 'role' and 'content'", type(message).__name__
            )
        unknown = sorted(str(key) for key in message if key not in _MESSAGE_KEYS)
        if unknown:
            raise errors.InvalidParameterError(
                field, f"may only hold the keys {', '.join(sorted(_MESSAGE_KEYS))}", unknown
            )
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise errors.InvalidParameterError(
                f"{field}.role", "must be 'system', 'user', 'assistant' or 'tool'", role
            )
        if role == "system" and index and dialect.system_first_only:
            raise errors.InvalidParameterError(
                f"{field}.role", f"{dialect.provider} takes a system message only as the first one"
            )
        _check_content(field, role, message)
        if role == "tool":
            if "tool_call_id" not in message:
                raise errors.InvalidParameterError(
                    f"{field}.tool_call_id",
                    "is required on a tool message: the id of the tool call it answers",
                )
            validation.check_text(f"{field}.tool_call_id", message["tool_call_id"])
        elif "tool_call_id" in message:
            raise errors.InvalidParameterError(f"{field}.tool_call_id", "belongs on tool messages only", role)
        if "tool_calls" in message and role != "assistant":
            raise errors.InvalidParameterError(f"{field}.tool_calls", "belongs on assistant messages only", role)
        if "name" in message:
            validation.check_text(f"{field}.name", message["name"])
        checked.append(dict(message))
    return checked


def _check_content(field: str, role: Any, message: Mapping[str, Any]) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return
        raise errors.InvalidParameterError(
            f"{field}.content", "is required (only an assistant message with tool_calls may omit it)"
        )
    if isinstance(content, str):
        return
    # A list of content parts ({"type": "text", "text": ...}, images...), as the dialect allows.
    if not isinstance(content, list) or not content or not all(
        isinstance(part, Mapping) and isinstance(part.get("type"), str) for part in content
    ):
        raise errors.InvalidParameterError(
            f"{field}.content", "must be a string or a non-empty list of {'type': ...} parts",
            type(content).__name__,
        )


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence) or not tools:
        raise errors.InvalidParameterError("tools", "must be a non-empty list of tool dicts", type(tools).__name__)
    for index, tool in enumerate(tools):
        field = f"tools[{index}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise errors.InvalidParameterError(f"{field}.type", "must be 'function'")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise errors.InvalidParameterError(f"{field}.function", "must be a dict with a 'name'")
        validation.check_text(f"{field}.function.name", function.get("name"))
    return [dict(tool) for tool in tools]


def _check_tool_choice(value: Any) -> Any:
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise errors.InvalidParameterError(
                "tool_choice", "must be 'none', 'auto', 'required' or {'type': 'function', ...}", value
            )
        return value
    if not isinstance(value, Mapping) or value.get("type") != "function":
        raise errors.InvalidParameterError(
            "tool_choice", "must be 'none', 'auto', 'required' or {'type': 'function', ...}", value
        )
    return dict(value)


def _check_response_format(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get("type") not in _RESPONSE_FORMATS:
        raise errors.InvalidParameterError(
            "response_format", f"must be a dict whose type is one of {', '.join(_RESPONSE_FORMATS)}",
            value,
        )
    return dict(value)


def _check_n(value: Any) -> int:
    # Every llmstreams value holds one answer; several choices come from several calls (fan_out).
    if value != 1 or isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidParameterError(
            "n", "must be 1: a stream or Completion holds one choice; make n calls (fan_out) instead",
            value,
        )
    return 1


def _sampling_fields(params: Mapping[str, Any], dialect: Dialect) -> dict[str, Any]:
    """The body fields for the parameters given, each checked, in a fixed order."""
    fields: dict[str, Any] = {}
    if (value := params.get("temperature")) is not None:
        fields["temperature"] = validation.check_number(
            "temperature", value, low=0, high=dialect.temperature_max
        )
    if (value := params.get("top_p")) is not None:
        fields["top_p"] = validation.check_number("top_p", value, low=0, high=1)
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := params.get(name)) is not None:
            fields[name] = validation.check_int(name, value, low=1)
    if (value := params.get("stop")) is not None:
        fields["stop"] = validation.check_stop("stop", value, max_items=dialect.max_stop, max_length=None)
    if (value := params.get("seed")) is not None:
        fields["seed"] = validation.check_int("seed", value, low=_SEED_RANGE[0], high=_SEED_RANGE[1])
    for name in ("presence_penalty", "frequency_penalty"):
        if (value := params.get(name)) is not None:
            fields[name] = validation.check_number(name, value, low=-2, high=2)
    if (value := params.get("n")) is not None:
        fields["n"] = _check_n(value)
    if (value := params.get("user")) is not None:
        fields["user"] = validation.check_text("user", value)
    if (value := params.get("tools")) is not None:
        fields["tools"] = _check_tools(value)
    if (value := params.get("tool_choice")) is not None:
        fields["tool_choice"] = _check_tool_choice(value)
    if (value := params.get("response_format")) is not None:
        fields["response_format"] = _check_response_format(value)
    for name, check in dialect.extras.items():
        if (value := params.get(name)) is not None:
            fields[name] = check(name, value)
    return fields


def build_body(
    kind: Kind,
    *,
    stream: bool,
    model: Any,
    input_value: Any,
    params: Mapping[str, Any],
    dialect: Dialect,
) -> bytes:
    """Check a call's arguments (raising `InvalidParameterError`) and serialize its body.

    `input_value` is the messages of a chat or the prompt of a completion; `params` the
    call's keyword arguments other than `extra_headers`.
    """
    if kind == "completions":
        chat_only = sorted(name for name in _CHAT_ONLY.intersection(params) if params[name] is not None)
        if chat_only:
            raise errors.InvalidParameterError(chat_only[0], "applies to chat calls (stream_chat / chat) only")
    names = (*(CHAT_PARAMETERS if kind == "chat" else COMPLETE_PARAMETERS), *dialect.extras)
    validation.reject_unknown(
        {name: value for name, value in params.items() if name not in names}, names,
        escape_hatch="extra_body", hints=dialect.parameter_hints,
    )
    if not stream:
        for name in dialect.stream_only:
            if params.get(name):
                raise errors.InvalidParameterError(
                    name, f"{dialect.provider} takes it on streams only: stream the answer"
                )
    if dialect.check_model is not None:
        model = dialect.check_model(model)
    if model is None:
        raise errors.InvalidParameterError("model", "is required: the model id the server serves")
    validation.check_text("model", model)
    body: dict[str, Any] = {"model": model}
    if kind == "chat":
        body["messages"] = check_messages(input_value, dialect)
    else:
        body["prompt"] = validation.check_text("prompt", input_value)
    body["stream"] = stream
    include_usage = params.get("include_usage")
    if include_usage is not None:
        validation.check_bool("include_usage", include_usage)
    if stream and include_usage is not False:
        body["stream_options"] = {"include_usage": True}
    body.update(_sampling_fields(params, dialect))
    body.update(validation.check_extra(
        "extra_body", params.get("extra_body"), reserved=_RESERVED_BODY_FIELDS,
        set_by="its arguments, stream_* vs not, include_usage=", arguments=names,
    ))
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise errors.InvalidParameterError(
            "extra_body", f"values must be JSON-serialisable ({error})"
        ) from None


# --- errors -------------------------------------------------------------------------------------

_CODE_CLASSES: Final[Mapping[str, type[errors.APIError]]] = {
    "invalid_api_key": errors.AuthenticationError,
    "invalid_authentication": errors.AuthenticationError,
    "insufficient_quota": errors.RateLimitError,
    "rate_limit_exceeded": errors.RateLimitError,
    "model_not_found": errors.NotFoundError,
    "content_filter": errors.ContentFilterError,
    "data_inspection_failed": errors.ContentFilterError,
    "context_length_exceeded": errors.InvalidRequestError,
    "invalid_argument": errors.InvalidRequestError,
}
_TYPE_CLASSES: Final[Mapping[str, type[errors.APIError]]] = {
    "invalid_request_error": errors.InvalidRequestError,
    "authentication_error": errors.AuthenticationError,
    "permission_error": errors.PermissionDeniedError,
    "not_found_error": errors.NotFoundError,
    "rate_limit_error": errors.RateLimitError,
    "server_error": errors.ServerError,
}
# A quota that is used up does not come back by waiting a few seconds.
_NOT_RETRYABLE_CODES: Final = frozenset({"insufficient_quota"})


def retry_after(head: ResponseHead) -> float | None:
    """The server's requested wait: `retry-after-ms` (finer) or else `Retry-After`."""
    millis = head.headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis)
        except ValueError:
            pass
        else:
            if math.isfinite(value) and value >= 0:
                return value / 1000
    return head.retry_after


def _error_class(code: Any, error_type: Any, status: int, dialect: Dialect) -> type[errors.APIError]:
    for name in (code, error_type):
        if isinstance(name, (str, int)):
            known = dialect.error_classes.get(str(name)) or _CODE_CLASSES.get(str(name))
            if known is not None:
                return known
    by_status = errors.status_error_class(status)
    if by_status is not errors.APIError:
        return by_status
    if isinstance(error_type, str):
        by_type = _TYPE_CLASSES.get(error_type)
        if by_type is not None:
            return by_type
    return errors.APIError


def _error_object(payload: Any) -> Mapping[str, Any] | None:
    """The error a decoded body or event describes: `{"error": {...}}`, vLLM's older top-level
    `{"object": "error", ...}`, a bare `{"error": "text"}`, or Baidu's `{"error_code",
    "error_msg"}`; None when it is no error."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if payload.get("object") == "error":
        return payload
    if "error_code" in payload:
        return {"code": payload["error_code"], "message": payload.get("error_msg")}
    return None


def api_error(
    payload: Mapping[str, Any],
    error: Mapping[str, Any],
    head: ResponseHead,
    dialect: Dialect,
    *,
    request_id: str | None,
    before_generation: bool,
) -> errors.APIError:
    """The `APIError` for the error object `error` of a body or event `payload`.

    `before_generation`: nothing of the answer had come yet, so a retry may be in order (a
    rate limit or overload); an error after the first chunk is never retryable.
    """
    code = error.get("code")
    if isinstance(code, bool) or not isinstance(code, (str, int)):
        code = None
    error_type = error.get("type")
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = str(code or error_type or "the service gave no error message")
    cls = _error_class(code, error_type, head.status, dialect)
    for key in ("request_id", "id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            request_id = value
            break
    status = head.status
    retryable = (
        before_generation
        and (errors.is_retryable_status(status) or cls in (errors.RateLimitError, errors.ServerError))
        and code not in _NOT_RETRYABLE_CODES
        and not {str(code), error_type} & dialect.quota_codes
    )
    return cls(
        message, code=code, http_status=status, provider=dialect.provider,
        request_id=request_id, retryable=retryable, retry_after=retry_after(head),
    )


def status_error(head: ResponseHead, body: bytes, dialect: Dialect, request_id: str | None) -> errors.APIError:
    """The error for a non-2xx response, whatever its body."""
    payload = _json_or_none(body)
    error = _error_object(payload)
    if error is None and isinstance(payload, dict) and isinstance(payload.get("message"), str):
        error = payload  # A flat {"code", "message"} body (SiliconFlow).
    elif isinstance(payload, str) and payload:
        payload, error = {}, {"message": payload}  # A bare JSON string (SiliconFlow's 401).
    if error is not None:
        assert isinstance(payload, dict)
        return api_error(payload, error, head, dialect, request_id=request_id, before_generation=True)
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, str) and detail:
        message = detail  # A FastAPI-style body, as some self-hosted servers send.
    else:
        # The status is in the error's text already (APIError.__str__): not again here.
        message = f"not an error body of this API: {snippet(body)}" if body.strip() else "an empty body"
    return api_error(
        {}, {"message": message}, head, dialect, request_id=request_id, before_generation=True
    )


def _json_or_none(body: bytes | str) -> Any:
    try:
        return decode_json(body)
    except JSON_ERRORS:
        return None


# --- response side ------------------------------------------------------------------------------

def _usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    total = usage.get("total_tokens", None)
    if total is None and type(prompt) is int and type(completion) is int:
        total = prompt + completion
    if not (type(prompt) is int and type(completion) is int and type(total) is int):
        raise TypeError("usage counts are not integers")
    return make_usage(prompt, completion, total, None)


class _Malformed(Exception):
    """A value the server sent has a shape no chunk is made of (the message says which)."""


def _tool_call_deltas(tool_calls: Any) -> tuple[ToolCallDelta, ...]:
    """The pieces of a decoded `tool_calls` list; `_Malformed` for one of another shape."""
    if not isinstance(tool_calls, list):
        raise _Malformed("tool_calls is not a list")
    deltas = []
    for position, call in enumerate(tool_calls):
        if not isinstance(call, dict):
            raise _Malformed("a tool call is not an object")
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise _Malformed("a tool call's function is not an object")
        index = call.get("index", position)
        if type(index) is not int:
            raise _Malformed("a tool call's index is not an integer")
        arguments = function.get("arguments")
        deltas.append(ToolCallDelta(
            index, call.get("id"), call.get("type"), function.get("name"),
            arguments if isinstance(arguments, str) else ("" if arguments is None else json.dumps(arguments)),
        ))
    return tuple(deltas)


class _Delta(msgspec.Struct, gc=False):
    content: Any = None
    reasoning_content: Any = None
    reasoning: Any = None
    tool_calls: Any = None


class _Choice(msgspec.Struct, gc=False):
    index: Any = msgspec.UNSET
    delta: _Delta | None = None
    text: Any = None
    finish_reason: Any = None
    is_end: Any = None
    need_clear_history: Any = None
    ban_round: Any = msgspec.UNSET
    usage: Any = None


class _Event(msgspec.Struct, gc=False):
    """The fields of a stream event that a chunk is made of; others are skipped."""

    choices: list[_Choice] | None = None
    usage: Any = None
    id: Any = None
    model: Any = None
    created: Any = None
    ban_round: Any = None


_decode_event: Final = msgspec.json.Decoder(_Event).decode
_NO_DELTA: Final = _Delta()


def _fault(error: Exception) -> str:
    """What was wrong with a received value, shortened: the value may be huge."""
    if isinstance(error, _Malformed):
        return str(error)
    return f"{type(error).__name__}: {snippet(str(error), 80)}"


class DialectParser(SniffingParser):
    """Turns one response body of the dialect, stream or not, into chunks (see `ResponseParser`).

    The body's shape is told from its first bytes (`SniffingParser`): events, a whole answer or
    error object, or neither.
    """

    __slots__ = (
        "_dialect", "_kind", "_count", "_finish_reason", "_finish_seen", "_usage", "_last", "_id",
        "_model", "_created", "_held",
    )

    def __init__(self, head: ResponseHead, dialect: Dialect, kind: Kind) -> None:
        request_id = None
        for name in dialect.request_id_headers:
            request_id = head.headers.get(name)
            if request_id:
                break
        super().__init__(head, provider=dialect.provider, request_id=request_id or None)
        self._dialect = dialect
        self._kind = kind
        self._count = 0
        self._finish_reason: str | None = None
        self._finish_seen = False
        self._usage: Any = None
        self._last: Mapping[str, Any] = {}
        self._id: str | None = None
        self._model: str | None = None
        self._created: int | None = None
        # The chunk the vendor marked as its last (Qianfan's `is_end`), held back until the
        # body ends so that what follows it (usage, `[DONE]`) goes into that end chunk.
        self._held: Chunk | None = None

    def _end_of_events(self) -> Iterator[Chunk]:
        if self._finished:
            return iter(())
        if self._finish_seen:
            self._finished = True
            return iter((self._end_chunk(),))
        request_id = self._id if self._dialect.id_is_request_id else self._request_id
        raise errors.StreamInterruptedError(
            "the stream ended before its end (a finish_reason, then data: [DONE])",
            provider=self._dialect.provider, request_id=request_id,
        )

    def _status_error(self, body: bytes) -> errors.APIError:
        return status_error(self._head, body, self._dialect, self._request_id)

    def _chunks(self, events: list[tuple[bytes, bytes]]) -> Iterator[Chunk]:
        """The chunks of `events`, each decoded only when asked for; an error comes in its turn."""
        for _, data in events:
            if data == _DONE:
                end = self._end_chunk()
                self._finished = True
                yield end
                return
            chunk = self._event_chunk(data)
            if chunk is not None:
                yield chunk

    def _event_chunk(self, data: str | bytes) -> Chunk | None:
        """The chunk of one event, or None for an event with nothing to yield (role, usage).

        Only what the server sent is blamed on it: the decoding and the shape checks raise
        `ProtocolError`; anything else raised here is a fault of llmstreams and stays as it is.
        """
        try:
            event = _decode_event(data)
        except JSON_ERRORS as error:
            repaired = repaired_utf8(data)
            if repaired is not None:
                return self._event_chunk(repaired)
            raise self._not_a_chunk(data, _fault(error)) from None
        choices = event.choices
        usage = event.usage
        if usage is not None:
            self._usage = usage
        if not choices:
            if choices is None:
                self._raise_error_event(data)
            self._last = DecodedJSON(data)
            return None
        choice = choices[0]
        if len(choices) > 1 and choice.index not in (msgspec.UNSET, 0):
            first = next((c for c in choices if c.index == 0), None)
            if first is None:
                return None
            choice = first
        finish_reason = choice.finish_reason
        if finish_reason is not None:
            self._finish_reason = finish_reason
            self._finish_seen = True
            if choice.usage is not None and usage is None:
                self._usage = choice.usage  # Moonshot puts it in the finishing choice.
        if self._kind == "chat":
            delta = choice.delta or _NO_DELTA
            text = delta.content or ""
            reasoning = delta.reasoning_content or delta.reasoning or ""
            tool_calls = delta.tool_calls
            deltas: tuple[ToolCallDelta, ...] = ()
            if tool_calls:
                try:
                    deltas = _tool_call_deltas(tool_calls)
                except _Malformed as error:
                    raise self._not_a_chunk(data, _fault(error)) from None
        else:
            text = choice.text or ""
            reasoning = ""
            deltas = ()
        if type(text) is not str or type(reasoning) is not str:
            raise self._not_a_chunk(data, "the text is not a string")
        need_clear_history = False
        ban_round = None
        if self._dialect.choice_flags:
            if choice.is_end:
                self._finish_seen = True
            need_clear_history = bool(choice.need_clear_history)
            ban_round = event.ban_round if choice.ban_round is msgspec.UNSET else choice.ban_round
        response_id = event.id
        if response_id == self._id:
            response_id = self._id  # the same string object for every chunk
        self._id = response_id
        model = event.model
        if model == self._model:
            model = self._model
        self._model = model
        self._created = created = event.created
        self._last = raw = DecodedJSON(data)
        if not (text or reasoning or deltas or need_clear_history):
            return None
        sentence_id = self._count
        self._count = sentence_id + 1
        chunk = make_chunk(
            text=text, sentence_id=sentence_id, is_end=False,
            need_clear_history=need_clear_history, ban_round=ban_round,
            id=response_id, created=created,
            request_id=response_id if self._dialect.id_is_request_id else self._request_id,
            reasoning=reasoning, tool_calls=deltas, model=model, raw=raw,
        )
        if self._dialect.choice_flags and choice.is_end:
            self._held = chunk
            return None
        return chunk

    def _raise_error_event(self, data: str | bytes) -> None:
        """Raise the error an event without `choices` reports, if it is one."""
        try:
            payload = decode_json(data)
        except JSON_ERRORS as error:
            raise self._not_a_chunk(data, _fault(error)) from None
        error_object = _error_object(payload)
        if error_object is not None:
            raise api_error(
                payload, error_object, self._head, self._dialect,
                request_id=self._request_id, before_generation=not self._count,
            )

    def _not_a_chunk(self, data: str | bytes, fault: str) -> errors.ProtocolError:
        return errors.ProtocolError(
            f"a stream event is not a chat completion chunk ({fault}): {snippet(data)}",
            provider=self._dialect.provider, request_id=self._request_id,
        )

    def _end_chunk(self) -> Chunk:
        try:
            usage = _usage(self._usage)
        except (KeyError, TypeError, AttributeError) as error:
            raise errors.ProtocolError(
                f"the usage is not token counts ({_fault(error)}): {snippet(repr(self._usage))}",
                provider=self._dialect.provider, request_id=self._request_id,
            ) from None
        held = self._held
        if held is not None:
            return attrs.evolve(
                held, is_end=True, finish_reason=self._finish_reason, usage=usage, raw=self._last
            )
        sentence_id = self._count
        self._count = sentence_id + 1
        response_id = self._id
        return Chunk(
            "", sentence_id, True, finish_reason=self._finish_reason, usage=usage,
            id=response_id, created=self._created,
            request_id=response_id if self._dialect.id_is_request_id else self._request_id,
            model=self._model, raw=self._last,
        )

    def _whole_answer(self, body: bytes) -> Chunk:
        """The one chunk of a non-stream answer, or its error."""
        dialect = self._dialect
        payload = _json_or_none(body)
        error_object = _error_object(payload)
        if error_object is not None:
            assert isinstance(payload, dict)
            raise api_error(
                payload, error_object, self._head, dialect, request_id=self._request_id,
                before_generation=True,
            )
        try:
            choice = payload["choices"][0]
            if self._kind == "chat":
                message = choice["message"]
                text = message.get("content") or ""
                reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
                tool_calls = message.get("tool_calls")
                deltas = _tool_call_deltas(tool_calls) if tool_calls else ()
            else:
                text = choice.get("text") or ""
                reasoning = ""
                deltas = ()
            if type(text) is not str or type(reasoning) is not str:
                raise TypeError("the text is not a string")
            usage = _usage(payload.get("usage"))
            need_clear_history = False
            ban_round = None
            if dialect.choice_flags:
                need_clear_history = bool(choice.get("need_clear_history"))
                ban_round = choice.get("ban_round", payload.get("ban_round"))
        except (_Malformed, KeyError, TypeError, AttributeError, IndexError) as error:
            raise errors.ProtocolError(
                f"the response is not a chat completion ({_fault(error)}): {snippet(body)}",
                provider=dialect.provider, request_id=self._request_id,
            ) from None
        response_id = payload.get("id")
        return Chunk(
            text, 0, True, need_clear_history, ban_round,
            finish_reason=choice.get("finish_reason"), usage=usage, id=response_id,
            created=payload.get("created"),
            request_id=response_id if dialect.id_is_request_id else self._request_id,
            reasoning=reasoning, tool_calls=deltas, model=payload.get("model"), raw=payload,
        )
