"""Checks for caller-supplied parameters, each raising `InvalidParameterError` that names the rule."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from llmstreams.errors import InvalidParameterError

# RFC 9110: a header name is a token; a value holds no control characters but tabs (aiohttp
# sends it as UTF-8).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    low_text = "-inf" if low is None else f"{low:g}"
    high_text = "inf" if high is None else f"{high:g}"
    return f"{left}{low_text}, {high_text}{right}"


def check_number(
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a float, if it is a real number within the interval."""
    rule = f"must be a number in {_interval(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(field, rule, _short(value))
    # Compared before any conversion: an int of hundreds of digits has no float.
    if isinstance(value, float) and math.isnan(value):
        raise InvalidParameterError(field, rule, value)
    if low is not None and (value < low or (low_open and value == low)):
        raise InvalidParameterError(field, rule, _short(value))
    if high is not None and (value > high or (high_open and value == high)):
        raise InvalidParameterError(field, rule, _short(value))
    try:
        return float(value)
    except OverflowError:
        raise InvalidParameterError(field, f"{rule} (too large for a float)", _short(value)) from None


def _short(value: Any) -> Any:
    """`value` for an error message: a huge int is shown by its size (its repr may not exist)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 14_000 else 'thousands of'} digits"
    return value


def check_int(field: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """`value`, if it is a whole number (not a bool) within [low, high]."""
    if low is not None and high is None and low == 1:
        rule = "must be a positive whole number"
    else:
        rule = f"must be a whole number in {_interval(low, high, False, False)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(field, rule, _short(value))
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidParameterError(field, rule, _short(value))
    return value


def check_optional(field: str, value: Any, kind: type) -> None:
    """Fail unless `value` is None or a `kind` (an option object such as a Timeout)."""
    if value is not None and not isinstance(value, kind):
        raise InvalidParameterError(field, f"must be a {kind.__name__} or None", type(value).__name__)


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameterError(field, "must be True or False", value)
    return value


def check_text(field: str, value: Any, *, allow_empty: bool = False) -> str:
    """`value`, if it is a string (non-empty unless `allow_empty`)."""
    if not isinstance(value, str):
        raise InvalidParameterError(field, "must be a string", type(value).__name__)
    if not allow_empty and not value.strip():
        raise InvalidParameterError(field, "must not be empty")
    check_encodable(field, value)
    return value


def check_encodable(field: str, value: str) -> str:
    """`value`, if it can be sent as UTF-8: a lone surrogate (from a "\\ud800" escape in JSON)
    cannot."""
    try:
        value.encode()
    except UnicodeEncodeError as error:
        raise InvalidParameterError(
            field, f"holds a lone surrogate {value[error.start]!r} at index {error.start}, "
            "which is not text and cannot be sent",
        ) from None
    return value


def encode_json(fields: Mapping[str, Any], *, blame: str) -> bytes:
    """`fields` as a compact UTF-8 JSON request body. Every other field was checked already,
    so a value that cannot be sent (not JSON, NaN, a lone surrogate, nesting too deep for the
    encoder) is blamed on the escape hatch `blame`."""
    try:
        return json.dumps(
            fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    except (TypeError, ValueError, RecursionError) as error:
        # UnicodeEncodeError is a ValueError.
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise InvalidParameterError(
            blame, f"values must be JSON that can be sent as UTF-8 ({reason[:200]})"
        ) from None


def check_stop(field: str, value: Any, *, max_items: int | None, max_length: int | None) -> list[str]:
    """A list of stop strings (a single string counts as a list of one)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise InvalidParameterError(field, "must be a string or a list of strings", value)
    if max_items is not None and len(items) > max_items:
        raise InvalidParameterError(field, f"must hold at most {max_items} strings", len(items))
    for item in items:
        if not item:
            raise InvalidParameterError(field, "must not contain an empty string")
        check_encodable(field, item)
        if max_length is not None and len(item) > max_length:
            raise InvalidParameterError(
                field, f"each string must be at most {max_length} characters", item
            )
    return list(items)


def check_message_list(messages: Any) -> Sequence[Any]:
    """The outside of a chat history: a non-empty list (any sequence but a string)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidParameterError(
            "messages", "must be a list of {'role': ..., 'content': ...} dicts",
            type(messages).__name__,
        )
    if not messages:
        raise InvalidParameterError("messages", "must not be empty")
    return messages


def check_extra(
    field: str,
    value: Any,
    *,
    reserved: Collection[str] = (),
    set_by: str = "",
    arguments: Collection[str] = (),
) -> dict[str, Any]:
    """The escape hatch for fields this library does not know: a dict with string keys.

    A key in `reserved` is refused as set by the method itself (`set_by` says from what), one
    in `arguments` as a field the method takes as a (checked) argument of that name.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise InvalidParameterError(field, "must be a dict with string keys", type(value).__name__)
    for key in value:
        if key in reserved:
            raise InvalidParameterError(f"{field}[{key!r}]", f"is set by the method itself ({set_by})")
        if key in arguments:
            raise InvalidParameterError(
                f"{field}[{key!r}]", f"pass it as the {key}= argument, which is checked"
            )
    return dict(value)


def reject_unknown(
    unknown: Mapping[str, Any],
    known: Iterable[str],
    *,
    escape_hatch: str,
    hints: Mapping[str, str] | None = None,
) -> None:
    """Fail on keyword arguments the method does not take, suggesting close matches.

    `hints` maps names that other APIs use to what this one wants instead.
    """
    if not unknown:
        return
    name = sorted(unknown)[0]
    if hints and name in hints:
        raise InvalidParameterError(name, f"unknown parameter; {hints[name]}")
    matches = difflib.get_close_matches(name, list(known), n=3)
    suggestion = f"did you mean {' or '.join(repr(m) for m in matches)}? " if matches else ""
    raise InvalidParameterError(
        name,
        f"unknown parameter; {suggestion}Fields this library does not know go in {escape_hatch}=",
    )


def suggest(name: str, choices: Iterable[str], *, what: str, extra: str = "") -> InvalidParameterError:
    """An `InvalidParameterError` for an unknown name, listing close matches."""
    pool = list(choices)
    matches = difflib.get_close_matches(name, pool, n=5, cutoff=0.4)
    lowered = {choice.lower(): choice for choice in pool}
    if name.lower() in lowered and lowered[name.lower()] not in matches:
        matches.insert(0, lowered[name.lower()])
    hint = f"close matches: {', '.join(matches)}" if matches else f"known: {', '.join(sorted(pool))}"
    return InvalidParameterError(what, f"unknown {what} {name!r} ({hint}){extra}")


def check_headers(field: str, headers: Any, *, reserved: Iterable[str] = ()) -> dict[str, str]:
    """A copy of caller-given extra headers: string names and values, no line breaks, none of
    the `reserved` names (lower-case) that the client sets itself. Values are never shown in
    errors: they may be credentials."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidParameterError(
            field, "must be a mapping of header names to values", type(headers).__name__
        )
    reserved_names = frozenset(reserved)
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidParameterError(
                field, "header names must be non-empty tokens (letters, digits, !#$%&'*+-.^_`|~)",
                name if isinstance(name, str) else type(name).__name__,
            )
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise InvalidParameterError(
                field, f"the value of {name!r} must be a string without line breaks or other"
                " control characters",
            )
        check_encodable(f"{field}[{name!r}]", value)
        if name.lower() in reserved_names:
            raise InvalidParameterError(
                field, f"must not set {name}: the client sets it (for authentication)"
            )
        checked[name] = value
    return checked


def check_api_key(api_key: Any, *, variable: str, field: str = "api_key") -> str:
    """A bearer API key, stripped; the error says how to give one. The key's value never
    appears in an error: only what is wrong with it."""
    if api_key is None:
        raise InvalidParameterError(
            field, f"is required: pass {field}= or set the {variable} environment variable"
        )
    if not isinstance(api_key, str):
        raise InvalidParameterError(field, "must be a string", type(api_key).__name__)
    key: str = api_key.strip()
    if not key:
        raise InvalidParameterError(
            field, f"is empty: pass {field}= or set the {variable} environment variable"
        )
    if any(character.isspace() or not character.isprintable() for character in key):
        raise InvalidParameterError(field, "must not contain spaces or control characters")
    return key
