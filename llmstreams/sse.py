"""Incremental decoder for `text/event-stream` bodies.

Implements the WHATWG HTML "event stream interpretation" rules on raw bytes, so it can be fed
whatever chunks the network delivers (`aiohttp.StreamReader.iter_any()`), without a line length
limit and without the reconnect behaviour of a browser `EventSource`.
"""

from __future__ import annotations

import contextlib
import operator
import re
from collections.abc import Callable
from typing import Final, cast

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


_DEFAULT_EVENT_TYPE = "message"
# The UTF-8 byte order mark, which a body may begin with.
BOM: Final = b"\xef\xbb\xbf"
# One event per match, in one pass over a read's complete events: either the shape nearly every
# service sends (an id line, an event line, comment lines, in that order and each optional, then
# one data line), as its type and data; or any other block as a whole (the last group), to be
# read line by line. An id holding NUL, which the standard ignores, makes another block too.
_EVENTS = re.compile(
    rb"(?:id:[^\n\0]*\n)?(?:event: ?([^\n]*)\n)?(?::[^\n]*\n)*data: ?([^\n]*)\n\n"
    rb"|((?s:.+?))\n\n"
)
_event_type, _event_data, _other_block = (operator.itemgetter(group) for group in range(3))

# attrs' __init__ for a frozen class sets each field through object.__setattr__, which made up a
# third of the decoding time for small events. The fast path fills the slots directly instead;
# the unpacking fails at import if a field is ever added, so no slot can be left unset.
_new_instance = object.__new__
_set_data, _set_event, _set_id, _set_retry = (
    cast(Callable[[ServerSentEvent, object], None], ServerSentEvent.__dict__[field.name].__set__)
    for field in attrs.fields(ServerSentEvent)
)


class SSEDecoder:
    """Turns the bytes of one event stream, fed in arbitrary pieces, into `ServerSentEvent`s.

    The stream is split into events on bytes: every line end and field name is ASCII, which no
    byte of a multi-byte UTF-8 character can be, so an event's bytes are decoded only when
    asked for as text (invalid UTF-8 becomes U+FFFD, as the standard's decoding requires).
    """

    def __init__(self) -> None:
        # Line-end-normalised bytes received since the last event boundary, not parsed yet.
        # Kept as parts and joined only once a boundary arrives, so a huge event costs linear time.
        self._pending: list[bytes] = []
        # The previous piece ended with CR: an LF starting the next piece belongs to that line end.
        self._skip_leading_lf = False
        # The stream's first bytes were checked for a byte order mark (one is dropped).
        self._past_bom = False
        self._last_event_id: str | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode the next piece of the stream; return the events it completes, in order."""
        events: list[ServerSentEvent] = []
        append_event = events.append
        # After the region's last event boundary only line ends (empty lines) remain.
        for block in self._complete_events(data).split(b"\n\n")[:-1]:
            parsed = self._parse_event(block)
            if parsed is not None:
                event_type, value, retry = parsed
                event = _new_instance(ServerSentEvent)
                _set_data(event, value.decode("utf-8", "replace"))
                _set_event(event, event_type.decode("utf-8", "replace") or _DEFAULT_EVENT_TYPE)
                _set_id(event, self._last_event_id)
                _set_retry(event, retry)
                append_event(event)
        return events

    def feed_events(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """`feed`, but each event as its type's bytes (b"" for the default, "message") and its
        data's bytes (UTF-8, not checked); ids and retry fields are not kept.

        For a parser that reads only those two: no object is made per event, and the data goes
        to the JSON decoder as the bytes that arrived, never turned into text and back. The
        events of a read are split in one pass of `_EVENTS`; a block of another shape is
        read line by line.
        """
        events = _EVENTS.findall(self._complete_events(data))
        if not any(map(_other_block, events)):
            return list(zip(map(_event_type, events), map(_event_data, events), strict=True))
        items: list[tuple[bytes, bytes]] = []
        for event_type, value, other in events:
            if other:
                parsed = self._parse_event(other)
                if parsed is None:
                    continue
                event_type, value, _ = parsed
            items.append((event_type, value))
        return items

    def _complete_events(self, data: bytes) -> bytes:
        """The bytes of every event `data` completes (line ends normalised), up to and with the
        last event boundary; b"" when it completes none."""
        if not self._past_bom:
            data = self._without_bom(data)
        if self._skip_leading_lf and data[:1] == b"\n":
            data = data[1:]
            self._skip_leading_lf = False
        if not data:
            return b""
        self._skip_leading_lf = data[-1:] == b"\r"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

        pending = self._pending
        if pending:
            # An event boundary is an empty line, i.e. two line ends in a row (possibly split
            # between the pending bytes and this piece).
            if b"\n\n" not in data and not (data[:1] == b"\n" and pending[-1][-1:] == b"\n"):
                pending.append(data)
                return b""
            pending.append(data)
            data = b"".join(pending)
            pending.clear()
        boundary = data.rfind(b"\n\n")
        if boundary < 0:
            pending.append(data)
            return b""
        end = boundary + 2
        if end < len(data):
            pending.append(data[end:])
            return data[:end]
        return data

    def _without_bom(self, data: bytes) -> bytes:
        """`data` from the stream's start without one leading byte order mark; b"" while the
        bytes so far could still be the start of one."""
        start = b"".join([*self._pending, data])
        if len(start) < len(BOM) and BOM.startswith(start):
            self._pending = [start] if start else []
            return b""
        self._pending = []
        self._past_bom = True
        return start.removeprefix(BOM)

    def close(self) -> list[ServerSentEvent]:
        """End of stream.

        An event not closed by an empty line is discarded, as the standard requires, so this
        never dispatches anything. The decoder is reset for a new stream; the last event id is
        kept, as a browser keeps it across reconnections.
        """
        self._pending.clear()
        self._skip_leading_lf = False
        self._past_bom = False
        return []

    def _parse_event(self, block: bytes) -> tuple[bytes, bytes, int | None] | None:
        """Apply the lines of one complete event (the bytes between two empty lines): its type
        (b"" for the default), data and retry field, or None when it has no data (nothing to
        dispatch)."""
        data_values: list[bytes] = []
        event_type = b""
        retry: int | None = None
        for line in block.split(b"\n"):
            # An empty line here can only lead the block, right after a dispatch, when every
            # buffer is already empty: dispatching again would be a no-op.
            if not line:
                continue
            # A comment line (":...") has an empty field name, which matches no field below.
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data_values.append(value)
            elif name == b"event":
                event_type = value
            elif name == b"id":
                if b"\0" not in value:
                    self._last_event_id = value.decode("utf-8", "replace")
            elif name == b"retry" and value.isdigit():
                # int() refuses more digits than sys.get_int_max_str_digits(): no usable delay.
                with contextlib.suppress(ValueError):
                    retry = int(value)
        if not data_values:
            return None
        data = data_values[0] if len(data_values) == 1 else b"\n".join(data_values)
        return event_type, data, retry
