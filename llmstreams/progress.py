"""A progress display on stderr: a bar redrawn in place on a terminal, plain lines elsewhere.

    progress = Progress(total=500, label="batch")
    for outcome in ...:
        progress.advance(failed=not outcome.ok)
    progress.close()

On a terminal the line is redrawn at most every `interval` seconds (10 times a second by
default); when the stream is not a terminal (a log file, CI) a plain line is written every
`plain_interval` seconds instead, so logs stay readable. Both show done/total, errors, the rate
and the estimated time left.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

_BAR_MIN = 10
_BAR_MAX = 40


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
        self._width = 0
        self._closed = False

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
        """Show the final state and end the line. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._show(self._clock())
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

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
        if self.total is not None and self.done < self.total:
            eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
            parts.append(f"ETA {eta}")
        head = f"{self.label}: " if self.label else ""
        return head + " | ".join(parts)

    def _show(self, now: float) -> None:
        self._last_shown = now
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
