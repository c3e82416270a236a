"""The mock's knobs: how slowly, how much and how badly it answers.

Set server-wide with `MockServer(behaviour=Behaviour(...))` or `server.set_behaviour(...)`, and
per request with the header `X-Mock-Behaviour: key=value; key=value` (same names as the fields),
which overrides the server-wide values for that request only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs
from attrs import validators as check

from llmstreams.mock.vendor_errors import is_known_code

BEHAVIOUR_HEADER = "X-Mock-Behaviour"

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_NONE_WORDS = frozenset({"none", "null"})


class BehaviourError(ValueError):
    """A knob has an unknown name or a value it cannot take."""


def _known_code(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not is_known_code(value):
        raise ValueError(
            f"{attribute.name} {value!r} is neither a Qianfan error_code nor a DashScope code"
        )


def _finite(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, not {value!r}")


def _seconds() -> Any:
    return attrs.field(default=0.0, converter=float, validator=[_finite, check.ge(0.0)])


def _optional_count() -> Any:
    return attrs.field(default=None, validator=check.optional(check.ge(0)))


def _model_names(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Model ids given as a tuple or as one comma-separated text (as in the header)."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    return tuple(name.strip() for name in names if name.strip())


@attrs.frozen
class Behaviour:
    """Every knob of the mock server; the defaults answer promptly and correctly.

    Chunk counts (`*_after`) count answer chunks already sent: `error_after=0` fails before
    the first chunk, `error_after=3` after the third. A count beyond the last chunk never fires,
    except that a count equal to the number of chunks fires after the complete answer.
    """

    response_delay: float = _seconds()
    """Seconds before the response headers (of any answer, errors included) are sent."""
    first_chunk_delay: float = _seconds()
    """Seconds between the stream's headers and its first event."""
    chunks_per_second: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=check.optional([_finite, check.gt(0.0)]),
    )
    """Pace of a stream's events; None sends them as fast as the connection takes them."""
    chunk_chars: int = attrs.field(default=24, validator=check.ge(1))
    """Characters of answer per stream event."""
    answer_chars: int = attrs.field(default=240, validator=check.ge(0))
    """Length of the answer in characters (before any max_tokens truncation)."""
    fail_code: str | None = attrs.field(default=None, validator=_known_code)
    """Answer this vendor error code instead of the answer (see `fail_times`)."""
    fail_times: int = attrs.field(default=1, validator=check.ge(0))
    """How many attempts of each distinct request (same path and body) `fail_code` and
    `http_status` fail before the request succeeds."""
    http_status: int | None = attrs.field(
        default=None, validator=check.optional([check.ge(400), check.le(599)])
    )
    """Answer this HTTP status with a vendor-shaped error body (see `fail_times`)."""
    retry_after: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=check.optional([_finite, check.ge(0.0)]),
    )
    """Seconds sent in a `Retry-After` header with every injected failure."""
    error_after: int | None = _optional_count()
    """Send a mid-stream error event after this many chunks, then end the stream."""
    error_code: str = attrs.field(default="InternalError", validator=_known_code)
    """The code of the `error_after` mid-stream error."""
    disconnect_after: int | None = _optional_count()
    """Abort the connection after this many chunks (the chunked body never ends cleanly)."""
    stall_after: int | None = _optional_count()
    """Send nothing more after this many chunks, until the client leaves or the server stops."""
    malformed_after: int | None = _optional_count()
    """Send one `data:` line of invalid JSON after this many chunks, then carry on."""
    huge_line_bytes: int | None = attrs.field(default=None, validator=check.optional(check.ge(1)))
    """Make the first event's data line this many bytes long (valid JSON: a longer answer)."""
    non_sse_body: bool = False
    """Answer a stream request with an HTML page (HTTP 200, text/html) instead of events."""
    trickle: bool = False
    """Write every response body one byte at a time."""
    reasoning_chars: int | None = attrs.field(default=None, validator=check.optional(check.ge(0)))
    """OpenAI-compatible chat: characters of reasoning text before the answer (None: only when
    the model's name says it reasons, or DashScope's `enable_thinking` asks)."""
    tool_calls: bool = False
    """OpenAI-compatible chat: answer a request that offers `tools` with a call to one of them."""
    send_usage: bool | None = None
    """OpenAI-compatible routes: usage as the request asks (None), always (True) or never (False)."""
    any_model: bool = False
    """Answer any model name. Otherwise each vendor's route answers only its vendor's documented
    model ids (Ark also its `ep-...` endpoint ids) and any other with that vendor's own error, as
    the service would. (Qianfan v1 is called by endpoint, and services people deployed have
    endpoints of their own naming: it takes any.)"""
    served_models: tuple[str, ...] | None = attrs.field(default=None, converter=_model_names)
    """The models the generic `/v1` routes serve, as vLLM's `--served-model-name` (comma
    separated in the header and on the command line); any other gets vLLM's 404. None serves
    any model name, so `--provider openai --model anything` works against the mock."""
    stamp_send_times: bool = False
    """Add `"x_sent_at": time.monotonic()` to every streamed JSON event, taken just before its
    bytes are written to the socket (a ruler for clients' timestamps)."""


KNOB_NAMES: tuple[str, ...] = tuple(field.name for field in attrs.fields(Behaviour))


def parse_knob(name: str, text: str) -> Any:
    """The value of knob `name` written as `text` (as in the header or on the command line)."""
    fields = attrs.fields_dict(Behaviour)
    if name not in fields:
        raise BehaviourError(f"unknown knob {name!r}; known knobs: {', '.join(KNOB_NAMES)}")
    kind = str(fields[name].type)
    word = text.strip()
    if "None" in kind and word.lower() in _NONE_WORDS:
        return None
    try:
        if kind.startswith("bool"):
            return _parse_bool(word)
        if kind.startswith("int"):
            return int(word)
        if kind.startswith("float"):
            return float(word)
    except ValueError:
        raise BehaviourError(f"{name}={word!r} is not {_describe(kind)}") from None
    return word


def _parse_bool(word: str) -> bool:
    if word.lower() in _TRUE_WORDS:
        return True
    if word.lower() in _FALSE_WORDS:
        return False
    raise ValueError(word)


def _describe(kind: str) -> str:
    described = {"bool": "a boolean", "int": "an integer", "float": "a number"}[kind.split()[0]]
    return f"{described} or none" if "None" in kind else described


def with_knobs(base: Behaviour, knobs: Iterable[tuple[str, str]]) -> Behaviour:
    """`base` with the given (name, text) knobs replaced; raises BehaviourError on any mistake."""
    changes = {name: parse_knob(name, text) for name, text in knobs}
    try:
        return attrs.evolve(base, **changes)
    except (ValueError, TypeError) as error:
        raise BehaviourError(str(error)) from None


def parse_behaviour_header(value: str, base: Behaviour) -> Behaviour:
    """`base` overridden by an `X-Mock-Behaviour` header value such as `a=1; b=true`."""
    knobs: list[tuple[str, str]] = []
    for item in value.split(";"):
        if not item.strip():
            continue
        name, equals, text = item.partition("=")
        if not equals:
            raise BehaviourError(f"{BEHAVIOUR_HEADER}: {item.strip()!r} is not key=value")
        knobs.append((name.strip(), text))
    try:
        return with_knobs(base, knobs)
    except BehaviourError as error:
        raise BehaviourError(f"{BEHAVIOUR_HEADER}: {error}") from None
