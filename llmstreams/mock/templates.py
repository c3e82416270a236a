"""JSON events rendered once with placeholders, then filled in per event by byte concatenation.

A stream's events differ only in a few values (the text piece, the usage so far, a counter), so
rendering each one from a dict would spend most of the mock's time in `json.dumps`. A template
is rendered once with a placeholder string where each varying value goes; filling it in joins
the fixed bytes around the values' own JSON.
"""

from __future__ import annotations

import json
from typing import Any

from llmstreams.mock.delivery import compact_json

SLOTS = tuple(f"\x00llmstreams-slot-{index}\x00" for index in range(4))
"""Placeholder strings: put `SLOTS[i]` where the i-th varying value goes in a payload."""
ENCODED_SLOTS = tuple(compact_json({"": slot})[4:-1] for slot in SLOTS)
"""The slots as they appear in rendered JSON; a template's prefix may hold them too."""
_encode_string = json.encoder.encode_basestring


def json_string(text: str) -> bytes:
    """`text` as a JSON string, UTF-8 unescaped, as `compact_json` writes it."""
    encoded: str = _encode_string(text)
    return encoded.encode()


class EventTemplate:
    """`prefix + compact_json(payload) + suffix` with the payload's slots left open."""

    def __init__(
        self, payload: dict[str, Any], *, prefix: bytes = b"", suffix: bytes = b""
    ) -> None:
        rendered = prefix + compact_json(payload) + suffix
        found = sorted(
            (rendered.index(slot), index)
            for index, slot in enumerate(ENCODED_SLOTS)
            if slot in rendered
        )
        parts: list[bytes] = []
        start = 0
        for position, index in found:
            parts.append(rendered[start:position])
            start = position + len(ENCODED_SLOTS[index])
        parts.append(rendered[start:])
        self._parts = tuple(parts)
        self._order = tuple(index for _, index in found)
        if self._order != tuple(range(len(found))):
            raise ValueError("a template's slots must be SLOTS[0], SLOTS[1], ... each used once")

    def fill(self, *values: bytes) -> bytes:
        """The event with slot i replaced by `values[i]` (JSON bytes, e.g. from json_string)."""
        pieces: list[bytes] = [b""] * (2 * len(self._parts) - 1)
        pieces[0::2] = self._parts
        pieces[1::2] = values  # a ValueError unless there is one value per slot
        return b"".join(pieces)
