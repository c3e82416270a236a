"""A progress display on stderr: a bar redrawn in place on a terminal, plain lines elsewhere.

    progress = Progress(total=500, label="batch")
    for outcome in ...:
        progress.advance(failed=not outcome.ok)
    progress.close()

On a terminal the line is redrawn at most every `interval` seconds (10 times a second by
default), and log records that the logging module would write to the same terminal appear
above the bar rather than inside it; when the stream is not a terminal (a log file, CI) a plain
line is written every `plain_interval` seconds instead, so logs stay readable, and the final
state once. Both show done/total, errors, the rate and, once the rate is steady, the
estimated time left.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

_BAR_MIN = 10
_BAR_MAX = 40
# The ETA is shown once this many items are done and the rate over the second half of the
# elapsed time is within this fraction of the rate over all of it.
_STEADY_MIN_DONE = 10
_STEADY_TOLERANCE = 0.25
_CLEAR_LINE = "\r\x1b[K"


def format_duration(seconds: float) -> str:
    """`seconds` as m:ss, or h:mm:ss from an hour on."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


class Progress:
    """Counts finished items and shows how far along, how fast and how long to go.

    `total` may be None when unknown (no bar, no ETA). `clock` is injectable for tests;
    `is_tty` overrides the terminal check of `stream`.
    """

    def __init__(
        self,
        total: int | None,
        *,
        label: str = "",
        stream: TextIO | None = None,
        is_tty: bool | None = None,
        interval: float = 0.1,
        plain_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.failed = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if is_tty is None else is_tty
        self._interval = interval if self._tty else plain_interval
        self._clock = clock
        self._started = clock()
        self._last_shown: float | None = None
        self._shown_counts: tuple[int, int] | None = None
        self._width = 0
        self._closed = False
        self._samples: deque[tuple[float, int]] = deque([(self._started, 0)])
        self._steady = False
        self._log_handlers = self._show_logs_above() if self._tty else []

    def __repr__(self) -> str:
        return f"<Progress {self.label!r} {self.done}/{self.total} failed={self.failed}>"

    def advance(self, count: int = 1, *, failed: bool = False) -> None:
        """Count `count` more items done (`failed`: they ended in an error)."""
        self.done += count
        if failed:
            self.failed += count
        now = self._clock()
        if self._last_shown is None or now - self._last_shown >= self._interval:
            self._show(now)

    def refresh(self) -> None:
        """Redraw now (e.g. from a timer while nothing finishes)."""
        self._show(self._clock())

    def close(self) -> None:
        """Show the final state (unless that very line is already shown) and end the line.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        for handler in self._log_handlers:
            handler.setStream(self._stream)
        if self._tty or self._shown_counts != (self.done, self.failed):
            self._show(self._clock())
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def write_above(self, text: str) -> None:
        """Write `text` (whole lines) where it does not mix with the bar: above it."""
        if not self._tty or self._closed or not self._width:
            self._stream.write(text)
            self._stream.flush()
            return
        self._stream.write(_CLEAR_LINE + text)
        self._width = 0
        self._show(self._clock())

    def _show_logs_above(self) -> list[logging.StreamHandler[TextIO]]:
        """Point the logging handlers that write to this stream at `write_above`."""
        redirected: list[logging.StreamHandler[TextIO]] = []
        for logger in (logging.getLogger(), logging.getLogger("llmstreams")):
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is self._stream:
                    handler.setStream(_Above(self))
                    redirected.append(handler)
        return redirected

    def line(self, now: float | None = None, *, compact: bool = False) -> str:
        """The status text, without the bar (`compact`: without the elapsed time)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{self.failed} failed")
        parts.append(f"{rate:.1f}/s")
        if not compact:
            parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total is not None and self.done < self.total and self._is_steady(now, rate):
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        head = f"{self.label}: " if self.label else ""
        return head + " | ".join(parts)

    def _is_steady(self, now: float, rate: float) -> bool:
        """Whether the rate has settled enough for an ETA; once it has, it stays so."""
        if self._steady or self.done < _STEADY_MIN_DONE or rate <= 0:
            return self._steady
        middle = self._started + (now - self._started) / 2
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= middle:
            samples.popleft()
        then, done_then = samples[0]
        # A rate measured from the start alone cannot tell a burst from a steady pace.
        if self._started < then < now:
            recent = (self.done - done_then) / (now - then)
            self._steady = abs(recent - rate) <= _STEADY_TOLERANCE * rate
        return self._steady

    def _show(self, now: float) -> None:
        self._last_shown = now
        self._shown_counts = (self.done, self.failed)
        self._samples.append((now, self.done))
        text = self.line(now)
        if not self._tty:
            self._stream.write(text + "\n")
            self._stream.flush()
            return
        columns = shutil.get_terminal_size((80, 24)).columns
        if columns - len(text) - 4 < _BAR_MIN:
            # On a narrow terminal the bar matters more than the elapsed time.
            text = self.line(now, compact=True)
        bar_width = min(_BAR_MAX, columns - len(text) - 4)
        if self.total and bar_width >= _BAR_MIN:
            filled = min(bar_width, bar_width * self.done // self.total)
            text = f"[{'#' * filled}{'.' * (bar_width - filled)}] {text}"
        text = text[: max(columns - 1, 1)]
        padding = " " * max(self._width - len(text), 0)
        self._width = len(text)
        self._stream.write(f"\r{text}{padding}")
        self._stream.flush()


class _Above:
    """A stream for logging handlers: each record goes above the progress bar."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def write(self, text: str) -> int:
        self._progress.write_above(text)
        return len(text)

    def flush(self) -> None:
        pass
