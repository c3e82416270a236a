"""Checks of request extras that several vendors share."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from llmstreams.errors import InvalidParameterError


def thinking_switch(*types: str) -> Callable[[str, Any], dict[str, Any]]:
    """The check of a `thinking={"type": ...}` object whose type is one of `types`."""
    rule = f"must be {{'type': ...}} with type one of {', '.join(repr(t) for t in types)}"

    def check(field: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or value.get("type") not in types:
            raise InvalidParameterError(field, rule, value)
        return dict(value)

    return check


def one_of(choices: Collection[str]) -> Callable[[str, Any], str]:
    """The check of a string parameter that takes one of `choices`."""

    def check(field: str, value: Any) -> str:
        if value not in choices:
            raise InvalidParameterError(field, f"must be one of {', '.join(sorted(choices))}", value)
        return str(value)

    return check
