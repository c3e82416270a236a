"""What the mock server has seen, as snapshots tests can wait on instead of sleeping."""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from llmstreams.providers import PROVIDERS

ROUTE_NAMES = (
    "token",
    "iam.token",
    "qianfan.chat",
    "qianfan.completions",
    "qianfan.service_list",
    "dashscope.generation",
    *(
        f"{provider.mock_route}.{kind}"
        for provider in PROVIDERS.values() if provider.mock_route is not None
        for kind in ("chat", "completions")
    ),
)


@attrs.frozen
class MockStats:
    """A snapshot of the server's counters.

    Every stream started ends exactly one way: completed (the whole answer was written and the
    body closed), aborted (the client went away first) or failed (`error_after` or
    `disconnect_after` ended it on purpose, or the server stopped mid-stream).
    """

    requests: Mapping[str, int]
    """Requests received per route: "token" (Qianfan v1's access tokens), "iam.token" (the IAM
    `BCE-BEARER` tokens of Qianfan v2), "qianfan.chat", "qianfan.completions",
    "qianfan.service_list" (the console route the official SDK calls), "dashscope.generation",
    and each OpenAI-compatible provider's "<mock_route>.chat" and "<mock_route>.completions"
    ("qianfan.v2.chat", "dashscope.compatible.chat", "openai.chat", "deepseek.chat", ...)."""
    streams_started: int
    streams_completed: int
    streams_aborted: int
    streams_failed: int
    open_connections: int
    """TCP connections open right now."""
    connections_opened: int
    """TCP connections accepted since the server started (compare with requests to see reuse)."""
    tokens_issued: int
    """Qianfan v1 access tokens and IAM bearer tokens issued."""

    @property
    def streams_active(self) -> int:
        return (
            self.streams_started
            - self.streams_completed
            - self.streams_aborted
            - self.streams_failed
        )


COUNT_NAMES = (
    "streams_started",
    "streams_completed",
    "streams_aborted",
    "streams_failed",
    "connections_opened",
    "connections_closed",
    "tokens_issued",
)
COUNTER_NAMES: tuple[str, ...] = (*(f"requests.{route}" for route in ROUTE_NAMES), *COUNT_NAMES)
"""Every counter a recorder keeps, in the order of a `SharedCounters` row."""
_COUNTER_INDEX = {name: index for index, name in enumerate(COUNTER_NAMES)}
_REQUESTS = len(ROUTE_NAMES)


def stats_from_counters(counters: Sequence[int]) -> MockStats:
    """A snapshot from counter values in `COUNTER_NAMES` order."""
    counts = dict(zip(COUNT_NAMES, counters[_REQUESTS:], strict=True))
    return MockStats(
        requests=dict(zip(ROUTE_NAMES, counters[:_REQUESTS], strict=True)),
        streams_started=counts["streams_started"],
        streams_completed=counts["streams_completed"],
        streams_aborted=counts["streams_aborted"],
        streams_failed=counts["streams_failed"],
        open_connections=counts["connections_opened"] - counts["connections_closed"],
        connections_opened=counts["connections_opened"],
        tokens_issued=counts["tokens_issued"],
    )


def stats_json(stats: MockStats, *, workers: int) -> dict[str, object]:
    """What `GET /stats` answers: every field of `stats`, `streams_active` and `workers`."""
    return {**attrs.asdict(stats), "streams_active": stats.streams_active, "workers": workers}


class SharedCounters:
    """The counters of sibling worker processes, one row each, in one memory-mapped file.

    Each worker writes only its own row (aligned 8-byte integers, so a reader never sees half
    a number); any worker sums every row to answer `GET /stats` for the whole server.
    """

    def __init__(self, path: Path, rows: int, row: int) -> None:
        if not 0 <= row < rows:
            raise ValueError(f"row {row} is outside the {rows} rows")
        self.rows = rows
        width = len(COUNTER_NAMES)
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), rows * width * 8)
        self._values = memoryview(self._map).cast("q")
        self._offset = row * width

    @staticmethod
    def create_file(path: Path, rows: int) -> None:
        """A zeroed file for `rows` workers' counters."""
        path.write_bytes(bytes(rows * len(COUNTER_NAMES) * 8))

    def write(self, index: int, value: int) -> None:
        self._values[self._offset + index] = value

    def totals(self) -> list[int]:
        width = len(COUNTER_NAMES)
        values = self._values
        return [
            sum(values[row * width + index] for row in range(self.rows)) for index in range(width)
        ]


class StatsRecorder:
    """The live counters behind `MockStats`, waking every waiter on each change.

    Waiters are woken through an event replaced at each change rather than an
    `asyncio.Condition`: connection callbacks are synchronous and cannot take a condition's lock.
    With `shared`, every change is also written to this worker's row of the shared counters.
    """

    def __init__(self, shared: SharedCounters | None = None) -> None:
        self._counters = [0] * len(COUNTER_NAMES)
        self._shared = shared
        self._changed = asyncio.Event()
        self._waiters = 0

    @property
    def workers(self) -> int:
        return 1 if self._shared is None else self._shared.rows

    def snapshot(self) -> MockStats:
        """This process's counters."""
        return stats_from_counters(self._counters)

    def combined(self) -> MockStats:
        """The counters of every sibling worker summed (this process's alone without workers)."""
        if self._shared is None:
            return self.snapshot()
        return stats_from_counters(self._shared.totals())

    def request(self, route: str) -> None:
        self._bump(f"requests.{route}")

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
        index = _COUNTER_INDEX[name]
        self._counters[index] += 1
        if self._shared is not None:
            self._shared.write(index, self._counters[index])
        self._notify()

    def _notify(self) -> None:
        if self._waiters:
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
                    self._waiters += 1
                    try:
                        await self._changed.wait()
                    finally:
                        self._waiters -= 1
                    snapshot = self.snapshot()
        except TimeoutError:
            raise TimeoutError(
                f"mock server stats did not reach the expected state within {timeout}s; "
                f"last: {snapshot}"
            ) from None
        return snapshot
