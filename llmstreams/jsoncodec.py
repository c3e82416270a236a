"""Decoding the JSON the services send: one decoder for every dialect.

msgspec decodes several times faster than the standard library and keeps what `json.loads`
guaranteed where it matters: integers of any size up to `json`'s own digit limit stay exact
(beyond it, and for NaN, Infinity, lone surrogates and malformed text, it raises a ValueError),
and nesting deeper than the interpreter's recursion limit raises RecursionError. A parser turns
either into its vendor's `ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

decode_json: Final[Callable[[str | bytes], Any]] = msgspec.json.Decoder().decode

# What `decode_json` raises for text that is not JSON it accepts.
JSON_ERRORS: Final = (ValueError, RecursionError)
