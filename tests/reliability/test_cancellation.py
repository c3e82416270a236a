"""Cancelling the tasks that read streams: the connections close at once and nothing leaks
(pool counters, server connections, asyncio tasks), whatever phase each stream was in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from llmstreams import ChunkStream, PoolStats
from llmstreams.mock import MockServer
from tests.reliability.helpers import Vendor, knobs, vendor_params

MID_STREAM = 400
AWAITING_FIRST_BYTE = 200
AWAITING_HEADERS = 200
AWAITING_RETRY = 200
TOTAL = MID_STREAM + AWAITING_FIRST_BYTE + AWAITING_HEADERS + AWAITING_RETRY


class RetryWaits(logging.Handler):
    """Counts the retry waits llmstreams logs, to know when every stream is waiting to retry."""

    def __init__(self, expected: int) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.expected = expected
        self.reached = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if ": retry " in record.getMessage():
            self.count += 1
            if self.count == self.expected:
                self.reached.set()


@vendor_params()
async def test_cancelling_the_reading_task_mid_stream_closes_the_connection(
    mock: MockServer, vendor: Vendor
) -> None:
    async with vendor.client(mock.url) as client:
        first_chunk = asyncio.Event()

        async def read() -> None:
            async with vendor.stream(client, knobs(stall_after=2)) as stream:
                async for _ in stream:
                    first_chunk.set()

        task = asyncio.create_task(read())
        async with asyncio.timeout(10):
            await first_chunk.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pool.stats() == PoolStats(open_streams=0, connections_in_use=0)
        stats = await mock.wait_for(lambda stats: stats.streams_aborted == 1)
    assert stats.streams_completed == 0 and stats.streams_failed == 0


@pytest.fixture
def retry_waits() -> Iterator[RetryWaits]:
    handler = RetryWaits(AWAITING_RETRY)
    logger = logging.getLogger("llmstreams")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@vendor_params()
async def test_1000_cancelled_streams_leave_nothing_behind(
    mock: MockServer, vendor: Vendor, retry_waits: RetryWaits
) -> None:
    async with vendor.client(mock.url) as client:
        # A warm-up, so that the session (and, for Qianfan, the cached token) exists before.
        assert (await vendor.answer(client)).is_complete
        tasks_before = asyncio.all_tasks()
        connections_before = mock.stats.open_connections
        requests_before = mock.stats.requests[vendor.route]

        streams: list[ChunkStream] = [
            *(vendor.stream(client, knobs(stall_after=1)) for _ in range(MID_STREAM)),
            *(vendor.stream(client, knobs(first_chunk_delay=60)) for _ in range(AWAITING_FIRST_BYTE)),
            *(vendor.stream(client, knobs(response_delay=60)) for _ in range(AWAITING_HEADERS)),
            # Refused with a Retry-After of a minute: cancelled while waiting to send again.
            *(vendor.stream(client, knobs(http_status=503, retry_after=60, fail_times=10**6))
              for _ in range(AWAITING_RETRY)),
        ]
        first_chunks = 0
        all_mid_stream = asyncio.Event()

        async def read(stream: ChunkStream) -> None:
            nonlocal first_chunks
            async with stream:
                async for _ in stream:
                    first_chunks += 1
                    if first_chunks == MID_STREAM:
                        all_mid_stream.set()

        readers = [asyncio.create_task(read(stream)) for stream in streams]
        async with asyncio.timeout(30):
            await all_mid_stream.wait()
            await retry_waits.reached.wait()
        await mock.wait_for(
            lambda stats: stats.requests[vendor.route] == requests_before + TOTAL, timeout=30
        )
        for reader in readers:
            reader.cancel()
        outcomes = await asyncio.gather(*readers, return_exceptions=True)

        assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
        assert client.pool.stats() == PoolStats(open_streams=0, connections_in_use=0)
        # Every connection cut mid-response is closed; the ones whose 503 was read to its end
        # may stay in the pool, idle, for reuse.
        stats = await mock.wait_for(
            lambda stats: stats.streams_active == 0
            and stats.open_connections <= connections_before + AWAITING_RETRY,
            timeout=30,
        )
        assert stats.streams_aborted == MID_STREAM + AWAITING_FIRST_BYTE
        assert stats.streams_completed == 0
        # Nothing was sent again: one request per stream.
        assert stats.requests[vendor.route] == requests_before + TOTAL

    # With the client's pool closed, no connection is left open and no task is left running.
    await mock.wait_for(lambda stats: stats.open_connections == 0, timeout=30)
    leftover = asyncio.all_tasks() - tasks_before
    if leftover:
        _, still_running = await asyncio.wait(leftover, timeout=10)
        assert not still_running
    assert asyncio.all_tasks() <= tasks_before
