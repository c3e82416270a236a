"""What the mock server has seen, as snapshots tests can wait on instead of sleeping."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping

import attrs

ROUTE_NAMES = (
    "token",
    "qianfan.chat",
    "qianfan.completions",
    "qianfan.service_list",
    "dashscope.generation",
    "qianfan.v2.chat",
    "qianfan.v2.completions",
    "dashscope.compatible.chat",
    "openai.chat",
    "openai.completions",
)


@attrs.frozen
class MockStats:
    """A snapshot of the server's counters.

    Every stream started ends exactly one way: completed (the whole answer was written and the
    body closed), aborted (the client went away first) or failed (`error_after` or
    `disconnect_after` ended it on purpose, or the server stopped mid-stream).
    """

    requests: Mapping[str, int]
    """Requests received per route: "token", "qianfan.chat", "qianfan.completions",
    "qianfan.service_list" (the console route the official SDK calls), "dashscope.generation",
    and the OpenAI-compatible "qianfan.v2.chat", "qianfan.v2.completions",
    "dashscope.compatible.chat", "openai.chat", "openai.completions"."""
    streams_started: int
    streams_completed: int
    streams_aborted: int
    streams_failed: int
    open_connections: int
    """TCP connections open right now."""
    connections_opened: int
    """TCP connections accepted since the server started (compare with requests to see reuse)."""
    tokens_issued: int

    @property
    def streams_active(self) -> int:
        return (
            self.streams_started
            - self.streams_completed
            - self.streams_aborted
            - self.streams_failed
        )


class StatsRecorder:
    """The live counters behind `MockStats`, waking every waiter on each change.

    Waiters are woken through an event replaced at each change rather than an
    `asyncio.Condition`: connection callbacks are synchronous and cannot take a condition's lock.
    """

    def __init__(self) -> None:
        self._requests: Counter[str] = Counter({name: 0 for name in ROUTE_NAMES})
        self._counts: Counter[str] = Counter()
        self._changed = asyncio.Event()

    def snapshot(self) -> MockStats:
        return MockStats(
            requests=dict(self._requests),
            streams_started=self._counts["streams_started"],
            streams_completed=self._counts["streams_completed"],
            streams_aborted=self._counts["streams_aborted"],
            streams_failed=self._counts["streams_failed"],
            open_connections=self._counts["connections_opened"]
            - self._counts["connections_closed"],
            connections_opened=self._counts["connections_opened"],
            tokens_issued=self._counts["tokens_issued"],
        )

    def request(self, route: str) -> None:
        self._requests[route] += 1
        self._notify()

    def stream_started(self) -> None:
        self._bump("streams_started")

    def stream_completed(self) -> None:
        self._bump("streams_completed")

    def stream_aborted(self) -> None:
        self._bump("streams_aborted")

    def stream_failed(self) -> None:
        self._bump("streams_failed")

    def connection_opened(self) -> None:
        self._bump("connections_opened")

    def connection_closed(self) -> None:
        self._bump("connections_closed")

    def token_issued(self) -> None:
        self._bump("tokens_issued")

    def _bump(self, name: str) -> None:
        self._counts[name] += 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[MockStats], bool], timeout: float = 5.0
    ) -> MockStats:
        """The first snapshot satisfying `predicate`; TimeoutError after `timeout` seconds."""
        snapshot = self.snapshot()
        try:
            async with asyncio.timeout(timeout):
                while not predicate(snapshot):
                    await self._changed.wait()
                    snapshot = self.snapshot()
        except TimeoutError:
            raise TimeoutError(
                f"mock server stats did not reach the expected state within {timeout}s; "
                f"last: {snapshot}"
            ) from None
        return snapshot
