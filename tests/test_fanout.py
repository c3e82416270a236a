"""Fan-out against the real mock server on loopback: ordering, isolation, cancellation, bounds."""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import AsyncIterator, Iterator

import pytest

import llmstreams
from llmstreams import (
    DashScopeClient,
    FanOutStats,
    InvalidParameterError,
    Outcome,
    Pool,
    PoolStats,
    QianfanClient,
    RateLimit,
    RateLimiter,
    RetryPolicy,
    fan_out,
    fan_out_as_completed,
)
from llmstreams.fanout import WORKER_NAME, Job
from llmstreams.mock import BEHAVIOUR_HEADER, MockServer

FAST_RETRY = RetryPolicy(max_retries=1, backoff_base=0.001, backoff_max=0.001)
IDLE = PoolStats(open_streams=0, connections_in_use=0)


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    async with Pool(retry=FAST_RETRY) as shared:
        yield shared


@pytest.fixture
def dashscope(server: MockServer, pool: Pool) -> DashScopeClient:
    return DashScopeClient(api_key="sk-test-key", base_url=server.url, pool=pool)


@pytest.fixture
def qianfan(server: MockServer, pool: Pool) -> QianfanClient:
    return QianfanClient(api_key="test-key", secret_key="test-secret", base_url=server.url, pool=pool)


def knobs(text: str | None) -> dict[str, str] | None:
    return None if text is None else {BEHAVIOUR_HEADER: text}


def generate(client: DashScopeClient, index: int, behaviour: str | None = None) -> Job:
    # Distinct prompts: the mock answers (and counts failures of) each distinct request apart.
    return lambda: client.stream_generate(
        f"question {index}", model="billa-7b-sft-v1", extra_headers=knobs(behaviour)
    )


def chat(client: QianfanClient, index: int, behaviour: str | None = None) -> Job:
    return lambda: client.stream_chat(
        [{"role": "user", "content": f"question {index}"}], model="ERNIE-Speed-8K",
        extra_headers=knobs(behaviour),
    )


async def test_fan_out_returns_one_outcome_per_job_in_input_order(
    dashscope: DashScopeClient, qianfan: QianfanClient, pool: Pool
) -> None:
    # Answer lengths differ per job, so each outcome's text shows which job it came from.
    jobs = [
        generate(dashscope, index, f"answer_chars={10 * (20 - index)}")
        if index % 2
        else chat(qianfan, index, f"answer_chars={10 * (20 - index)}")
        for index in range(20)
    ]
    outcomes = await fan_out(jobs, concurrency=8)
    assert [outcome.index for outcome in outcomes] == list(range(20))
    for index, outcome in enumerate(outcomes):
        assert outcome.ok and outcome.completion is not None
        assert len(outcome.completion.text) == 10 * (20 - index)
        assert outcome.completion.is_complete
        assert outcome.attempts == 1
        assert outcome.time_to_first_chunk is not None
        assert 0 <= outcome.time_to_first_chunk <= outcome.elapsed
    assert pool.stats() == IDLE


async def test_as_completed_yields_in_finishing_order_and_closes_what_is_left(
    dashscope: DashScopeClient, server: MockServer, pool: Pool
) -> None:
    # Job 0 stalls after its first chunk and never finishes: every other job comes out first.
    jobs = [generate(dashscope, 0, "stall_after=1")] + [generate(dashscope, i) for i in range(1, 10)]
    seen: list[int] = []
    async with fan_out_as_completed(jobs, concurrency=10) as outcomes:
        async for outcome in outcomes:
            assert outcome.ok
            seen.append(outcome.index)
            if len(seen) == 9:
                break
    assert sorted(seen) == list(range(1, 10))
    assert pool.stats() == IDLE
    await server.wait_for(lambda s: s.streams_aborted == 1 and s.streams_completed == 9)


async def test_one_failure_does_not_stop_the_others(
    dashscope: DashScopeClient, qianfan: QianfanClient, pool: Pool
) -> None:
    failing = {
        2: (chat, "fail_code=336003", llmstreams.InvalidRequestError),
        5: (generate, "http_status=500; fail_times=5", llmstreams.ServerError),
        7: (generate, "error_after=2; error_code=InternalError", llmstreams.APIError),
        9: (chat, "disconnect_after=3", llmstreams.StreamInterruptedError),
    }
    jobs: list[Job] = []
    for index in range(12):
        if index in failing:
            make, behaviour, _ = failing[index]
            client = qianfan if make is chat else dashscope
            jobs.append(make(client, index, behaviour))  # type: ignore[operator]
        else:
            jobs.append(generate(dashscope, index))
    outcomes = await fan_out(jobs, concurrency=4)
    for outcome in outcomes:
        if outcome.index in failing:
            expected = failing[outcome.index][2]
            assert outcome.completion is None
            assert isinstance(outcome.error, expected), outcome.error
        else:
            assert outcome.ok and outcome.completion is not None and outcome.completion.text
    server_error = outcomes[5].error
    assert isinstance(server_error, llmstreams.ServerError) and server_error.http_status == 500
    mid_stream = outcomes[7].error
    assert mid_stream is not None and mid_stream.partial is not None
    assert mid_stream.partial.chunk_count == 2
    assert outcomes[7].time_to_first_chunk is not None
    broken = outcomes[9].error
    assert broken is not None and broken.partial is not None and broken.partial.chunk_count == 3
    assert pool.stats() == IDLE


async def test_a_parameter_error_is_the_outcome_of_its_job_only(
    dashscope: DashScopeClient,
) -> None:
    jobs = [
        generate(dashscope, 0),
        lambda: dashscope.stream_generate("hello", model="billa-7b-sft-v1", temperature=-1),
        generate(dashscope, 2),
    ]
    outcomes = await fan_out(jobs)
    error = outcomes[1].error
    assert isinstance(error, InvalidParameterError) and error.field == "temperature"
    assert outcomes[1].attempts == 0 and outcomes[1].time_to_first_chunk is None
    assert outcomes[0].ok and outcomes[2].ok


async def test_fail_fast_raises_the_first_error_and_closes_every_stream(
    dashscope: DashScopeClient, qianfan: QianfanClient, server: MockServer, pool: Pool
) -> None:
    stalled = [generate(dashscope, index, "stall_after=1") for index in range(6)]
    jobs = [*stalled, chat(qianfan, 6, "fail_code=336003")]
    with pytest.raises(llmstreams.InvalidRequestError) as raised:
        await fan_out(jobs, concurrency=8, fail_fast=True)
    assert any("job 6" in note for note in raised.value.__notes__)
    assert pool.stats() == IDLE
    stats = await server.wait_for(lambda s: s.streams_active == 0)
    assert stats.streams_completed == 0


async def test_cancelling_the_fan_out_closes_every_open_stream(
    dashscope: DashScopeClient, server: MockServer, pool: Pool
) -> None:
    chunks_seen: set[int] = set()
    all_streaming = asyncio.Event()

    def on_chunk(index: int, chunk: llmstreams.Chunk) -> None:
        chunks_seen.add(index)
        if len(chunks_seen) == 20:
            all_streaming.set()

    jobs = [generate(dashscope, index, "stall_after=2") for index in range(20)]
    task = asyncio.create_task(fan_out(jobs, concurrency=20, on_chunk=on_chunk))
    await asyncio.wait_for(all_streaming.wait(), timeout=10)
    assert pool.stats().open_streams == 20
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats() == IDLE
    stats = await server.wait_for(lambda s: s.streams_aborted == 20)
    assert stats.streams_active == 0 and stats.streams_completed == 0


async def test_cancelling_a_plain_async_for_closes_every_open_stream(
    dashscope: DashScopeClient, server: MockServer, pool: Pool
) -> None:
    async def consume() -> None:
        jobs = [generate(dashscope, index, "stall_after=1") for index in range(10)]
        async for _ in fan_out_as_completed(jobs, concurrency=10):
            pass

    task = asyncio.create_task(consume())
    await server.wait_for(lambda s: s.streams_started == 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats() == IDLE
    await server.wait_for(lambda s: s.streams_aborted == 10)


async def test_on_chunk_sees_each_jobs_chunks_in_order(
    dashscope: DashScopeClient, qianfan: QianfanClient
) -> None:
    received: dict[int, list[llmstreams.Chunk]] = {}

    def on_chunk(index: int, chunk: llmstreams.Chunk) -> None:
        received.setdefault(index, []).append(chunk)

    jobs = [
        (chat(qianfan, i) if i % 2 else generate(dashscope, i, "chunk_chars=5")) for i in range(10)
    ]
    outcomes = await fan_out(jobs, concurrency=10, on_chunk=on_chunk)
    for outcome in outcomes:
        assert outcome.completion is not None
        chunks = received[outcome.index]
        assert "".join(chunk.text for chunk in chunks) == outcome.completion.text
        assert len(chunks) == outcome.completion.chunk_count
        assert chunks[-1].is_end and not any(chunk.is_end for chunk in chunks[:-1])
        assert [chunk.sentence_id for chunk in chunks] == sorted(c.sentence_id for c in chunks)


async def test_no_more_streams_are_open_than_the_concurrency(
    dashscope: DashScopeClient, server: MockServer, pool: Pool
) -> None:
    most_open = 0

    def on_chunk(index: int, chunk: llmstreams.Chunk) -> None:
        nonlocal most_open
        most_open = max(most_open, pool.stats().open_streams)

    outcomes = await fan_out(
        [generate(dashscope, i, "chunk_chars=4") for i in range(60)], concurrency=5,
        on_chunk=on_chunk,
    )
    assert all(outcome.ok for outcome in outcomes)
    assert 1 <= most_open <= 5
    await server.wait_for(lambda s: s.streams_completed == 60)


async def test_stalled_jobs_take_exactly_the_concurrency_and_no_more(
    dashscope: DashScopeClient, server: MockServer, pool: Pool
) -> None:
    pulled = 0

    def jobs() -> Iterator[Job]:
        nonlocal pulled
        for index in range(100):
            pulled += 1
            yield generate(dashscope, index, "stall_after=1")

    async with fan_out_as_completed(jobs(), concurrency=3):
        await server.wait_for(lambda s: s.streams_started == 3)
        assert pool.stats().open_streams == 3
        assert pulled == 3
    assert pool.stats() == IDLE
    await server.wait_for(lambda s: s.streams_aborted == 3)


async def test_jobs_are_pulled_lazily_while_the_consumer_lags(dashscope: DashScopeClient) -> None:
    pulled = 0

    def jobs() -> Iterator[Job]:
        nonlocal pulled
        for index in range(100_000):
            pulled += 1
            yield generate(dashscope, index)

    consumed = 0
    async with fan_out_as_completed(jobs(), concurrency=8) as outcomes:
        async for _ in outcomes:
            consumed += 1
            if consumed == 40:
                break
    # Workers wait while `concurrency` finished outcomes are unread: never far ahead.
    assert pulled <= consumed + 3 * 8


async def test_stop_yields_what_finished_and_ends(
    dashscope: DashScopeClient, server: MockServer, pool: Pool
) -> None:
    jobs = [generate(dashscope, i) for i in range(4)] + [
        generate(dashscope, i, "stall_after=1") for i in range(4, 8)
    ]
    seen: list[Outcome] = []
    async with fan_out_as_completed(jobs, concurrency=8) as outcomes:
        async for outcome in outcomes:
            seen.append(outcome)
            if len(seen) == 4:
                await server.wait_for(lambda s: s.streams_started == 8)
                outcomes.stop()
    assert sorted(outcome.index for outcome in seen) == [0, 1, 2, 3]
    assert pool.stats() == IDLE
    await server.wait_for(lambda s: s.streams_aborted == 4)


async def test_an_exception_that_is_not_an_llmstreams_error_propagates(
    dashscope: DashScopeClient, pool: Pool
) -> None:
    def broken_callback(index: int, chunk: llmstreams.Chunk) -> None:
        if index == 3:
            raise KeyError("bug in the callback")

    jobs = [generate(dashscope, i, "stall_after=1" if i != 3 else None) for i in range(6)]
    with pytest.raises(KeyError, match="bug in the callback"):
        await fan_out(jobs, concurrency=6, on_chunk=broken_callback)
    assert pool.stats() == IDLE


async def test_five_hundred_streams_open_at_once_then_all_closed(
    server: MockServer, pool: Pool
) -> None:
    client = DashScopeClient(api_key="sk-test-key", base_url=server.url, pool=pool)
    streaming: set[int] = set()
    all_streaming = asyncio.Event()

    def on_chunk(index: int, chunk: llmstreams.Chunk) -> None:
        streaming.add(index)
        if len(streaming) == 500:
            all_streaming.set()

    jobs = [generate(client, i, "stall_after=1") for i in range(500)]
    async with fan_out_as_completed(jobs, concurrency=500, on_chunk=on_chunk) as outcomes:
        await asyncio.wait_for(all_streaming.wait(), timeout=30)
        assert pool.stats().open_streams == 500
        assert server.stats.streams_active == 500
        outcomes.stop()
        assert [outcome async for outcome in outcomes] == []
    assert pool.stats() == IDLE
    await server.wait_for(lambda s: s.streams_aborted == 500)


async def test_five_hundred_concurrent_streams_all_succeed(server: MockServer, pool: Pool) -> None:
    client = DashScopeClient(api_key="sk-test-key", base_url=server.url, pool=pool)
    stats = FanOutStats()
    async with fan_out_as_completed(
        [generate(client, i, "answer_chars=120") for i in range(500)], concurrency=500
    ) as outcomes:
        async for outcome in outcomes:
            stats.add(outcome)
    assert stats.requests == 500 and stats.failed == 0
    assert stats.chunks == 500 * 5
    assert stats.time_to_first_chunk(0.5) is not None
    await server.wait_for(lambda s: s.streams_completed == 500)
    assert pool.stats() == IDLE


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_a_rate_limited_pool_holds_the_fan_out_to_its_requests_per_second(
    server: MockServer,
) -> None:
    clock = FakeClock()
    limit = RateLimit(requests_per_second=5)
    async with Pool(rate_limit=limit) as pool:
        pool.rate_limiter = RateLimiter(limit, clock=clock, sleep=clock.sleep)
        client = DashScopeClient(api_key="sk-test-key", base_url=server.url, pool=pool)
        outcomes = await fan_out([generate(client, i) for i in range(12)], concurrency=12)
    assert all(outcome.ok for outcome in outcomes)
    assert pool.rate_limiter.requests_granted == 12
    # 5 at t=0, 5 at t=1, 2 at t=2: two waits of one second.
    assert clock.sleeps == [1.0, 1.0]
    assert server.stats.requests["dashscope.generation"] == 12


async def test_a_tokens_per_minute_limit_counts_the_fan_outs_tokens(server: MockServer) -> None:
    clock = FakeClock()
    async with Pool() as probe_pool:
        probe = DashScopeClient(api_key="sk-test-key", base_url=server.url, pool=probe_pool)
        sample = await probe.generate("question 0", model="billa-7b-sft-v1")
    assert sample.usage is not None
    per_request = sample.usage.total_tokens
    limit = RateLimit(tokens_per_minute=2 * per_request)
    async with Pool(rate_limit=limit) as pool:
        pool.rate_limiter = RateLimiter(limit, clock=clock, sleep=clock.sleep)
        client = DashScopeClient(api_key="sk-test-key", base_url=server.url, pool=pool)
        # The same prompt each time, so every answer costs `per_request` tokens.
        jobs = [generate(client, 0) for _ in range(3)]
        outcomes = await fan_out(jobs, concurrency=1)
    assert all(outcome.ok for outcome in outcomes)
    assert pool.rate_limiter.tokens_recorded == 3 * per_request
    # Two answers spend the minute's budget: the third request waits a minute.
    assert clock.now == 60.0


def test_concurrency_must_be_a_positive_whole_number() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidParameterError, match="concurrency"):
            fan_out_as_completed([], concurrency=bad)  # type: ignore[arg-type]


async def test_no_jobs_no_outcomes() -> None:
    assert await fan_out([]) == []


def fan_out_workers(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """The fan-out's worker tasks started since `before` (not the mock's, in the same loop)."""
    return {task for task in asyncio.all_tasks() - before if task.get_name() == WORKER_NAME}


async def test_workers_are_never_more_than_jobs(dashscope: DashScopeClient) -> None:
    before = asyncio.all_tasks()
    jobs = (generate(dashscope, index) for index in range(2))
    async with fan_out_as_completed(jobs, concurrency=100_000) as outcomes:
        assert len(fan_out_workers(before)) == 2
        assert len([outcome async for outcome in outcomes if outcome.ok]) == 2


async def test_a_fan_out_dropped_by_break_stops_its_work(
    dashscope: DashScopeClient, server: MockServer
) -> None:
    taken = 0

    def jobs() -> Iterator[Job]:
        nonlocal taken
        for index in range(40):
            taken += 1
            yield generate(dashscope, index, "chunks_per_second=100")

    before = asyncio.all_tasks()
    async for outcome in fan_out_as_completed(jobs(), concurrency=4):
        assert outcome.ok
        break
    gc.collect()
    workers = fan_out_workers(before)
    taken_when_dropped = taken
    assert workers
    async with asyncio.timeout(30):
        await asyncio.wait(workers)
    assert all(worker.cancelled() for worker in workers)
    assert taken == taken_when_dropped < 40
    assert server.stats.requests["dashscope.generation"] <= taken


class Starts:
    """1,000 jobs that count how many of them started (made their stream, which sends the
    request) before and after the consumer left; and what must hold once it left."""

    def __init__(self, client: DashScopeClient, server: MockServer, pool: Pool) -> None:
        self.client = client
        self.server = server
        self.pool = pool
        self.tasks_before = asyncio.all_tasks()
        self.left = False
        self.before = 0
        self.after = 0
        self.one_after = asyncio.Event()

    def jobs(self) -> Iterator[Job]:
        for index in range(1000):
            yield functools.partial(self.start, index)

    def start(self, index: int) -> llmstreams.ChunkStream:
        if self.left:
            self.after += 1
            self.one_after.set()
        else:
            self.before += 1
        return generate(self.client, index)()

    async def assert_none_after_leaving(self) -> None:
        """The consumer has just left: no job starts, no worker is left, every stream closes."""
        self.left = True
        await self.until_workers_end_or_a_job_starts()
        assert self.after == 0
        assert not fan_out_workers(self.tasks_before)
        assert self.pool.stats() == IDLE
        stats = await self.server.wait_for(lambda s: s.streams_active == 0)
        # Only requests sent before the consumer left may reach the server (late): none after.
        assert stats.requests["dashscope.generation"] <= self.before

    async def until_workers_end_or_a_job_starts(self) -> None:
        async def workers_end() -> None:
            while workers := fan_out_workers(self.tasks_before):
                await asyncio.wait(workers)

        race = {asyncio.create_task(workers_end()), asyncio.create_task(self.one_after.wait())}
        try:
            async with asyncio.timeout(30):
                await asyncio.wait(race, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in race:
                waiting.cancel()
            await asyncio.gather(*race, return_exceptions=True)


@pytest.fixture
async def starts(dashscope: DashScopeClient, server: MockServer, pool: Pool) -> Starts:
    return Starts(dashscope, server, pool)


async def test_no_job_starts_once_a_bare_async_for_is_left(starts: Starts) -> None:
    async for _ in fan_out_as_completed(starts.jobs(), concurrency=50):
        break
    await starts.assert_none_after_leaving()


async def test_no_job_starts_once_the_loop_is_left_though_the_fan_out_is_still_held(
    starts: Starts,
) -> None:
    outcomes = fan_out_as_completed(starts.jobs(), concurrency=50)
    async for _ in outcomes:
        break
    await starts.assert_none_after_leaving()
    # Leaving the loop stopped the fan-out: another loop gets what had finished, then ends.
    rest = [outcome async for outcome in outcomes]
    assert all(outcome.ok for outcome in rest)
    assert len(rest) < starts.before


async def test_no_job_starts_once_the_loop_is_left_inside_async_with(starts: Starts) -> None:
    async with fan_out_as_completed(starts.jobs(), concurrency=50) as outcomes:
        async for _ in outcomes:
            break
        await starts.assert_none_after_leaving()


async def test_a_fan_out_collected_in_another_thread_starts_no_more_jobs(starts: Starts) -> None:
    gc.disable()
    try:
        outcomes = fan_out_as_completed(starts.jobs(), concurrency=50)
        assert (await anext(outcomes)).ok  # no `async for`: only the collector can stop it
        cycle: list[object] = [outcomes]
        cycle.append(cycle)
        del outcomes, cycle
        starts.left = True
        # The collector runs in whichever thread allocates. In debug mode the loop refuses
        # calls from other threads, as it may in any mode: a worker it was not told about
        # would wait forever.
        asyncio.get_running_loop().set_debug(True)
        assert await asyncio.to_thread(gc.collect)
    finally:
        gc.enable()
    await starts.assert_none_after_leaving()


async def test_no_job_starts_once_a_cancelled_fan_out_has_raised(
    starts: Starts, server: MockServer
) -> None:
    task = asyncio.create_task(fan_out(starts.jobs(), concurrency=50))
    await server.wait_for(lambda s: s.streams_completed >= 100)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not fan_out_workers(starts.tasks_before)
    await starts.assert_none_after_leaving()
