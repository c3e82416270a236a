"""Client-side rate limits, shared by every request that goes through one `Pool`."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from llmstreams.validation import check_number

_MAX_TOKENS = 2**53


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        check_number(f"RateLimit.{attribute.name}", value, low=0, low_open=True)


@attrs.frozen(slots=True)
class RateLimit:
    """Limits on what the pool sends (None = no limit).

    Requests are counted when they are sent (every attempt counts, retries included);
    tokens are counted from each generation's final `usage.total_tokens`. A request is held
    back while the last minute's tokens already reach `tokens_per_minute`.
    """

    requests_per_second: float | None = attrs.field(default=None, validator=_positive_or_none)
    requests_per_minute: float | None = attrs.field(default=None, validator=_positive_or_none)
    tokens_per_minute: float | None = attrs.field(default=None, validator=_positive_or_none)


class _Window:
    """Amounts recorded in the last `span` seconds."""

    __slots__ = ("span", "capacity", "_entries", "_total")

    def __init__(self, span: float, capacity: float) -> None:
        self.span = span
        self.capacity = capacity
        self._entries: deque[tuple[float, float]] = deque()
        self._total = 0.0

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0][0] <= now - self.span:
            self._total -= entries.popleft()[1]

    def wait(self, now: float, amount: float) -> float:
        """Seconds until `amount` more fits (0 if it fits now)."""
        self._expire(now)
        if self._total + amount <= self.capacity or not self._entries:
            return 0.0
        excess = self._total + amount - self.capacity
        freed = 0.0
        for when, size in self._entries:
            freed += size
            if freed >= excess:
                return when + self.span - now
        return self._entries[-1][0] + self.span - now

    def record(self, now: float, amount: float) -> None:
        if amount:
            self._entries.append((now, amount))
            self._total += amount


def _request_window(span: float, rate: float) -> _Window:
    """A window holding requests to `rate` per `span` seconds, fractions included.

    Requests are whole, so a window admits a whole number of them: `ceil(rate)` per
    `span * ceil(rate) / rate` seconds has the same rate (0.2/s: one per 5 s; 2.5/s: three per
    1.2 s). A window of `span` with capacity 0.2 would admit one a second.
    """
    whole = max(1, math.ceil(rate))
    return _Window(span * whole / rate, float(whole))


class Limiter(Protocol):
    """What a `Pool` asks of its rate limiter (`RateLimiter`, or one shared across processes)."""

    async def acquire(self) -> None:
        """Wait until one more request may be sent, and count it."""

    def record_tokens(self, tokens: int) -> None:
        """Count a finished generation's tokens."""


class RateLimiter:
    """Holds requests back until they fit every configured limit; waiters go in arrival order.

    `clock` and `sleep` are injectable so that the limits can be checked by counting.
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._request_windows = [
            _request_window(span, rate)
            for span, rate in ((1.0, limit.requests_per_second), (60.0, limit.requests_per_minute))
            if rate is not None
        ]
        self._tokens = (
            _Window(60.0, limit.tokens_per_minute) if limit.tokens_per_minute is not None else None
        )
        self.requests_granted = 0
        self.tokens_recorded = 0

    def __repr__(self) -> str:
        return f"<RateLimiter {self.limit} granted={self.requests_granted}>"

    def rebind(self) -> None:
        """Forget the event loop of the lock (its loop was closed; a new one runs)."""
        self._lock = asyncio.Lock()

    def wait_time(self) -> float:
        """Seconds until one more request may be sent."""
        now = self._clock()
        waits = [window.wait(now, 1.0) for window in self._request_windows]
        if self._tokens is not None:
            # Admit while under budget: a request's own tokens are unknown until it ends.
            waits.append(self._tokens.wait(now, 1.0))
        return max(waits, default=0.0)

    async def acquire(self) -> None:
        """Wait until a request fits, then count it."""
        async with self._lock:
            while (wait := self.wait_time()) > 0:
                await self._sleep(wait)
            now = self._clock()
            for window in self._request_windows:
                window.record(now, 1.0)
            self.requests_granted += 1

    def record_tokens(self, tokens: int) -> None:
        """Count a finished generation's tokens against `tokens_per_minute`."""
        if self._tokens is not None and tokens > 0:
            # A server's absurd count (thousands of digits) must not overflow a float.
            tokens = min(tokens, _MAX_TOKENS)
            self._tokens.record(self._clock(), float(tokens))
            self.tokens_recorded += tokens
