"""Decoding the JSON the services send: one decoder for every dialect.

msgspec decodes several times faster than the standard library and keeps what `json.loads`
guaranteed where it matters: integers of any size up to `json`'s own digit limit stay exact
(beyond it, and for NaN, Infinity, lone surrogates and malformed text, it raises a ValueError),
and nesting deeper than the interpreter's recursion limit raises RecursionError. A parser turns
either into its vendor's `ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgspec

from llmstreams.errors import ProtocolError, snippet

decode_json: Final[Callable[[str | bytes], Any]] = msgspec.json.Decoder().decode

# What `decode_json` raises for text that is not JSON it accepts.
JSON_ERRORS: Final = (ValueError, RecursionError)


def repaired_utf8(data: str | bytes) -> str | None:
    """`data` as text with its invalid UTF-8 replaced by U+FFFD, when it is bytes that are not
    valid UTF-8; else None.

    Events arrive as bytes and are decoded as such; the JSON decoder refuses invalid UTF-8, but
    an event stream's own decoding replaces it, so a parser retries with this text (text with a
    stray byte is delivered, as a text decoder would have delivered it).
    """
    if isinstance(data, bytes):
        try:
            data.decode()
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")
    return None


class DecodedJSON(Mapping[str, Any]):
    """The JSON object of one event, decoded from its text only when first read.

    A parser decodes what it needs into a typed struct; this keeps `Chunk.raw` "the decoded JSON
    the chunk came from" without building a dict per event that nobody reads. The text was
    already checked to be a JSON object by that typed decoding, which skips unknown fields
    without converting their numbers: one holding an integer beyond `json`'s digit limit or a
    number too large for a float makes the first read raise `ProtocolError` (the chunk's text was
    whole, so the stream itself did not fail).
    """

    __slots__ = ("_source", "_decoded")

    def __init__(self, source: str | bytes) -> None:
        self._source = source
        self._decoded: dict[str, Any] | None = None

    def _value(self) -> dict[str, Any]:
        decoded = self._decoded
        if decoded is None:
            try:
                decoded = self._decoded = decode_json(self._source)
            except JSON_ERRORS as error:
                raise ProtocolError(
                    f"a chunk's raw JSON holds a value that cannot be decoded "
                    f"({type(error).__name__}: {snippet(str(error), 80)})"
                ) from None
        return decoded

    def __getitem__(self, key: str) -> Any:
        return self._value()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._value())

    def __len__(self) -> int:
        return len(self._value())

    def __contains__(self, key: object) -> bool:
        return key in self._value()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DecodedJSON):
            other = other._value()
        return self._value() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._value())

    def __reduce__(self) -> tuple[type[DecodedJSON], tuple[str | bytes]]:
        return DecodedJSON, (self._source,)
