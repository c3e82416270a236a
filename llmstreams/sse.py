"""Incremental decoder for `text/event-stream` bodies.

Implements the WHATWG HTML "event stream interpretation" rules on raw bytes, so it can be fed
whatever chunks the network delivers (`aiohttp.StreamReader.iter_any()`), without a line length
limit and without the reconnect behaviour of a browser `EventSource`.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable
from typing import cast

import attrs


@attrs.frozen(slots=True)
class ServerSentEvent:
    """One dispatched event.

    `id` is the stream's last-event-id at dispatch time (it carries over to later events, and is
    None until a valid `id` field is seen); `retry` is the reconnection time in milliseconds given
    by this event's own `retry` field, if any.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


_DATA_FIELD_PREFIX = "data:"
_DEFAULT_EVENT_TYPE = "message"

# attrs' __init__ for a frozen class sets each field through object.__setattr__, which made up a
# third of the decoding time for small events. The fast path fills the slots directly instead;
# the unpacking fails at import if a field is ever added, so no slot can be left unset.
_new_instance = object.__new__
_set_data, _set_event, _set_id, _set_retry = (
    cast(Callable[[ServerSentEvent, object], None], ServerSentEvent.__dict__[field.name].__set__)
    for field in attrs.fields(ServerSentEvent)
)


# utf-8-sig strips one leading BOM, waiting for more bytes if the BOM is split.
_Utf8SigDecoder = codecs.getincrementaldecoder("utf-8-sig")


class SSEDecoder:
    """Turns the bytes of one event stream, fed in arbitrary pieces, into `ServerSentEvent`s."""

    def __init__(self) -> None:
        self._utf8 = _Utf8SigDecoder(errors="replace")
        # Line-end-normalised text received since the last event boundary, not parsed yet.
        # Kept as parts and joined only once a boundary arrives, so a huge event costs linear time.
        self._pending: list[str] = []
        # The previous piece ended with CR: an LF starting the next piece belongs to that line end.
        self._skip_leading_lf = False
        self._last_event_id: str | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode the next piece of the stream; return the events it completes, in order."""
        text = self._utf8.decode(data)
        if self._skip_leading_lf and text[:1] == "\n":
            text = text[1:]
            self._skip_leading_lf = False
        if not text:
            return []
        self._skip_leading_lf = text[-1] == "\r"
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")

        pending = self._pending
        # An event boundary is an empty line, i.e. two line ends in a row (possibly split
        # between the pending text and this piece).
        if "\n\n" not in text and not (text[0] == "\n" and pending and pending[-1][-1] == "\n"):
            pending.append(text)
            return []
        if pending:
            pending.append(text)
            text = "".join(pending)
            pending.clear()
        blocks = text.split("\n\n")
        unfinished = blocks.pop()
        if unfinished:
            pending.append(unfinished)

        events: list[ServerSentEvent] = []
        append_event = events.append
        last_event_id = self._last_event_id
        for block in blocks:
            # Fast path: an event that is one `data:` line (every Qianfan chunk looks like this).
            if "\n" not in block and block[:5] == _DATA_FIELD_PREFIX:
                event = _new_instance(ServerSentEvent)
                _set_data(event, block[6:] if block[5:6] == " " else block[5:])
                _set_event(event, _DEFAULT_EVENT_TYPE)
                _set_id(event, last_event_id)
                _set_retry(event, None)
                append_event(event)
                continue
            parsed = self._parse_event(block)
            last_event_id = self._last_event_id
            if parsed is not None:
                append_event(parsed)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream.

        An event not closed by an empty line is discarded, as the standard requires, so this
        never dispatches anything. The decoder is reset for a new stream; the last event id is
        kept, as a browser keeps it across reconnections.
        """
        self._utf8.reset()
        self._pending.clear()
        self._skip_leading_lf = False
        return []

    def _parse_event(self, block: str) -> ServerSentEvent | None:
        """Apply the lines of one complete event (the text between two empty lines)."""
        data_values: list[str] = []
        event_type = ""
        retry: int | None = None
        for line in block.split("\n"):
            # An empty line here can only lead the block, right after a dispatch, when every
            # buffer is already empty: dispatching again would be a no-op.
            if not line:
                continue
            # A comment line (":...") has an empty field name, which matches no field below.
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data_values.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                if "\0" not in value:
                    self._last_event_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                # int() refuses more digits than sys.get_int_max_str_digits(): no usable delay.
                with contextlib.suppress(ValueError):
                    retry = int(value)
        if not data_values:
            return None
        event = _new_instance(ServerSentEvent)
        _set_data(event, data_values[0] if len(data_values) == 1 else "\n".join(data_values))
        _set_event(event, event_type or _DEFAULT_EVENT_TYPE)
        _set_id(event, self._last_event_id)
        _set_retry(event, retry)
        return event
