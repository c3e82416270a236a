"""Run many generations concurrently: `fan_out` (results in input order) and
`fan_out_as_completed` (results as they finish).

A job is a zero-argument callable returning a `ChunkStream`, e.g.
`lambda: client.stream_chat(messages, model="ERNIE-Speed-8K")`, so that each stream is only
created once a worker is free for it. A fixed set of `concurrency` workers pulls jobs from the
iterable one at a time: 100,000 jobs from a generator cost no more memory than `concurrency` of
them (apart from the results a caller keeps).

Each job's success or typed error is kept in its `Outcome`; one failure never stops the others
unless `fail_fast=True`. Only `LLMStreamsError`s are results: any other exception raised by a
job, by the jobs iterable or by `on_chunk` is a bug, and it stops the fan-out and propagates.
However the fan-out ends (finished, failed fast, cancelled, or left early), every stream it
opened is closed before control returns to the caller. A consumer that leaves its `async for`
(`break`, `return`, an exception) is gone: no job starts after that moment, whether or not the
`FanOut` is still referenced or inside `async with`.

Client-side rate limits need nothing here: give the clients a `Pool(rate_limit=RateLimit(...))`
and every request of the fan-out (and of anything else using that pool) is held to them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import attrs

from llmstreams.errors import LLMStreamsError
from llmstreams.origin import call_from_finalizer
from llmstreams.streams import ChunkStream
from llmstreams.types import Chunk, Completion
from llmstreams.validation import check_int

Job = Callable[[], ChunkStream]
ChunkCallback = Callable[[int, Chunk], object]

DEFAULT_CONCURRENCY = 64


@attrs.frozen(slots=True)
class Outcome:
    """How one job of a fan-out ended.

    `index` is the job's position in the input. Exactly one of `completion` and `error` is set;
    an error raised after the request was sent carries what arrived before it in
    `error.partial`. `time_to_first_chunk` (None if no chunk arrived) and `elapsed` are seconds
    from the moment a worker took the job; `attempts` counts the HTTP requests sent for it
    (retries included; 0 when the job failed before sending anything).
    """

    index: int
    completion: Completion | None
    error: LLMStreamsError | None
    time_to_first_chunk: float | None
    elapsed: float
    attempts: int

    @property
    def ok(self) -> bool:
        return self.error is None


async def run_job(index: int, job: Job, on_chunk: ChunkCallback | None = None) -> Outcome:
    """Run one job to its end; its success or llmstreams error as the `Outcome` of job `index`."""
    started = time.perf_counter()
    first_chunk: float | None = None
    stream: ChunkStream | None = None
    try:
        stream = job()
        async with stream:
            async for chunk in stream:
                if first_chunk is None:
                    first_chunk = time.perf_counter() - started
                if on_chunk is not None:
                    on_chunk(index, chunk)
            completion = stream.completion
    except LLMStreamsError as error:
        attempts = stream.attempts if stream is not None else 0
        return Outcome(index, None, error, first_chunk, time.perf_counter() - started, attempts)
    return Outcome(index, completion, None, first_chunk, time.perf_counter() - started, stream.attempts)


class _Run:
    """What the workers of one fan-out share. Workers hold this, never the `FanOut`, so that a
    `FanOut` its caller dropped is collected, and its `__del__` stops them.

    `stopped` is the gate every job passes before it starts: it is set synchronously, from any
    thread, by whatever ends the fan-out, so that no worker the loop runs before its
    cancellation arrives can start another request.
    """

    __slots__ = (
        "concurrency", "jobs", "on_chunk", "fail_fast", "finished", "changed", "room",
        "workers", "running", "started", "stopped", "failure", "loop",
    )

    def __init__(
        self, jobs: Iterable[Job], concurrency: int, on_chunk: ChunkCallback | None, fail_fast: bool
    ) -> None:
        self.concurrency = concurrency
        self.jobs: Iterator[tuple[int, Job]] = enumerate(jobs)
        self.on_chunk = on_chunk
        self.fail_fast = fail_fast
        self.finished: deque[Outcome] = deque()
        self.changed = asyncio.Event()
        self.room = asyncio.Event()
        self.workers: set[asyncio.Task[None]] = set()
        self.running = 0
        self.started = False
        self.stopped = False
        self.failure: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """One worker per job, up to `concurrency`: each takes its first job as it is made,
        so that 2 jobs get 2 workers however high the concurrency."""
        if self.started:
            return
        self.started = True
        self.loop = asyncio.get_running_loop()
        for _ in range(self.concurrency):
            try:
                taken = self.take()
            except BaseException as error:
                self.fail(error)
                return
            if taken is None:
                return
            self.running += 1
            worker = asyncio.create_task(self.work(taken), name=WORKER_NAME)
            self.workers.add(worker)
            worker.add_done_callback(self.workers.discard)

    def take(self) -> tuple[int, Job] | None:
        """The next job, or None once the jobs ran out or the fan-out was stopped."""
        if self.stopped:
            return None
        return next(self.jobs, None)

    def stop(self) -> None:
        self.started = True
        self.stopped = True
        for worker in self.workers:
            worker.cancel()

    def stop_from_anywhere(self) -> None:
        """`stop()` for a finalizer, which may run in any thread (the garbage collector runs in
        whichever thread allocates): the gate closes at once, the cancellations go to the loop."""
        self.started = True
        self.stopped = True
        if self.loop is not None and self.workers:
            call_from_finalizer(self.loop, self.stop)

    async def work(self, taken: tuple[int, Job] | None) -> None:
        try:
            while taken is not None and not self.stopped:
                index, job = taken
                outcome = await run_job(index, job, self.on_chunk)
                if self.fail_fast and outcome.error is not None:
                    outcome.error.add_note(f"raised by job {index} of the fan-out (fail_fast=True)")
                    self.fail(outcome.error)
                    return
                self.finished.append(outcome)
                self.changed.set()
                # Backpressure: take no new job while a slow consumer has this many to read.
                while len(self.finished) >= self.concurrency and not self.stopped:
                    self.room.clear()
                    await self.room.wait()
                taken = self.take()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self.fail(error)
        finally:
            self.running -= 1
            self.changed.set()

    def fail(self, error: BaseException) -> None:
        self.stopped = True
        if self.failure is None:
            self.failure = error
        current = asyncio.current_task()
        for worker in self.workers:
            if worker is not current:
                worker.cancel()


class FanOut:
    """The running fan-out behind `fan_out_as_completed`: an async iterable of `Outcome`s in
    the order they finish, and an async context manager that stops it on exit.

    Workers start at the first outcome asked for (or on entering `async with`), never more of
    them than jobs. Iterating to the end finishes everything. `stop()` ends it gracefully: no
    new jobs start, the running ones are cancelled (their streams closed), and iteration yields
    the outcomes that had already finished, then ends. Leaving an `async for` over it early
    (`break`, `return`, an exception) stops it at that moment, the same way. `async with` or
    `aclose()` also waits until every stream the jobs opened is closed. A `FanOut` dropped or
    collected is stopped too, as a dropped `ChunkStream` is closed.
    """

    def __init__(
        self,
        jobs: Iterable[Job],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_chunk: ChunkCallback | None = None,
        fail_fast: bool = False,
    ) -> None:
        self._run = _Run(jobs, check_int("concurrency", concurrency, low=1), on_chunk, fail_fast)

    def __repr__(self) -> str:
        run = self._run
        return (
            f"<FanOut concurrency={run.concurrency} running_workers={run.running} "
            f"waiting_outcomes={len(run.finished)}>"
        )

    def __del__(self) -> None:
        run = getattr(self, "_run", None)
        if run is not None:
            run.stop_from_anywhere()

    async def __aenter__(self) -> FanOut:
        self._run.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return _Iteration(self)

    async def __anext__(self) -> Outcome:
        run = self._run
        run.start()
        try:
            while True:
                if run.finished:
                    run.room.set()
                    return run.finished.popleft()
                if run.failure is not None:
                    raise run.failure
                if run.running == 0:
                    raise StopAsyncIteration
                await run.changed.wait()
                run.changed.clear()
        except BaseException as error:
            if not isinstance(error, StopAsyncIteration):
                await self.aclose()
            raise

    def stop(self) -> None:
        """Start no more jobs and cancel the running ones; iteration then yields the outcomes
        that already finished and ends. Safe to call from a signal handler of the loop."""
        self._run.stop()

    async def aclose(self) -> None:
        """Cancel the jobs still running and wait until every stream they opened is closed."""
        self._run.stop()
        workers = [worker for worker in self._run.workers if not worker.done()]
        if workers:
            await asyncio.wait(workers)


class _Iteration:
    """One `async for` over a `FanOut`. Python drops the iterator of an `async for` the moment
    the loop is left, however it is left; this one's finalizer then stops the fan-out, at once
    and synchronously (an async generator's would only run later, from the loop's asyncgen
    hooks, while workers may still start jobs)."""

    __slots__ = ("_fan_out",)

    def __init__(self, fan_out: FanOut) -> None:
        self._fan_out = fan_out

    def __aiter__(self) -> _Iteration:
        return self

    def __anext__(self) -> Awaitable[Outcome]:
        return self._fan_out.__anext__()

    def __del__(self) -> None:
        self._fan_out._run.stop_from_anywhere()


WORKER_NAME = "llmstreams fan-out worker"


def fan_out_as_completed(
    jobs: Iterable[Job],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_chunk: ChunkCallback | None = None,
    fail_fast: bool = False,
) -> FanOut:
    """Run `jobs` with at most `concurrency` streams open at once; `Outcome`s as they finish.

        async with fan_out_as_completed(jobs, concurrency=256) as outcomes:
            async for outcome in outcomes:
                ...

    `on_chunk(index, chunk)` is called for every chunk as it arrives (in order within a job).
    With `fail_fast=True` the first error stops the fan-out: the jobs still running are cancelled
    and their streams closed, then that error is raised (outcomes that finished before it are
    yielded first); a note on the error names the job's index.
    """
    return FanOut(jobs, concurrency=concurrency, on_chunk=on_chunk, fail_fast=fail_fast)


async def fan_out(
    jobs: Iterable[Job],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_chunk: ChunkCallback | None = None,
    fail_fast: bool = False,
) -> list[Outcome]:
    """Run `jobs` with at most `concurrency` streams open at once; one `Outcome` per job, in
    input order.

        outcomes = await fan_out(
            [lambda q=q: client.stream_chat([user(q)], model="ERNIE-Speed-8K") for q in questions],
            concurrency=128,
        )

    With `fail_fast=True` the first error is raised once every other stream is closed (see
    `fan_out_as_completed`). Cancelling the caller cancels every job and closes its stream.
    """
    by_index: dict[int, Outcome] = {}
    async with fan_out_as_completed(
        jobs, concurrency=concurrency, on_chunk=on_chunk, fail_fast=fail_fast
    ) as outcomes:
        async for outcome in outcomes:
            by_index[outcome.index] = outcome
    return [by_index[index] for index in range(len(by_index))]


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted `values` (`fraction` in [0, 1]); None if empty."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


class FanOutStats:
    """Running totals over `Outcome`s, for summaries: counts, chunks, tokens, time to first chunk.

    Keeps one float per outcome that saw a chunk (for the percentiles), nothing else per job.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.succeeded = 0
        self.failed = 0
        self.chunks = 0
        self.tokens = 0
        self.attempts = 0
        self.errors_by_type: dict[str, int] = {}
        self._first_chunk_times: list[float] = []
        self._sorted = True

    def __repr__(self) -> str:
        return (
            f"<FanOutStats requests={self.requests} succeeded={self.succeeded} "
            f"failed={self.failed} chunks={self.chunks}>"
        )

    def add(self, outcome: Outcome) -> None:
        received = outcome.completion if outcome.error is None else outcome.error.partial
        self.count(
            error_type=None if outcome.error is None else type(outcome.error).__name__,
            attempts=outcome.attempts,
            chunks=0 if received is None else received.chunk_count,
            tokens=0 if received is None or received.usage is None else received.usage.total_tokens,
            time_to_first_chunk=outcome.time_to_first_chunk,
        )

    def count(
        self,
        *,
        error_type: str | None,
        attempts: int,
        chunks: int,
        tokens: int,
        time_to_first_chunk: float | None,
    ) -> None:
        """Add one request known only by its figures (e.g. a result record from elsewhere)."""
        self.requests += 1
        self.attempts += attempts
        if error_type is not None:
            self.failed += 1
            self.errors_by_type[error_type] = self.errors_by_type.get(error_type, 0) + 1
        else:
            self.succeeded += 1
        self.chunks += chunks
        self.tokens += tokens
        if time_to_first_chunk is not None:
            self._first_chunk_times.append(time_to_first_chunk)
            self._sorted = False

    def time_to_first_chunk(self, fraction: float) -> float | None:
        """The `fraction` percentile (0.5 for p50) of time to first chunk, in seconds."""
        if not self._sorted:
            self._first_chunk_times.sort()
            self._sorted = True
        return percentile(self._first_chunk_times, fraction)
