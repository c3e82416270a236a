"""Load generation: closed loop (a fixed number of requests in flight), open loop (requests due
at Poisson or gamma arrival times, optionally capped in concurrency, optionally ramped up) and
trace replay, timing every chunk of every request.

Any client can be driven through a `Target`: it opens one request as an async iterator with one
item per chunk. The timing loop is the same for every client, so clients are compared on equal
terms. Per chunk it only appends a timestamp to a list: all statistics come after the run.

Timestamps are `time.monotonic()` (the clock of `loop.time()` in asyncio's own loop, and the
one a server on the same machine stamps with). An `llmstreams.ChunkStream` says by when the
bytes carrying each chunk had arrived from the socket (`last_read_at`); that time is used for
the chunk rather than the moment the timing loop got it. On a loop of `stampedtransport` that
is the kernel's arrival time of the bytes; on any other, when the loop got to the socket.

The measured run goes without automatic garbage collection: a collection stops the loop for
5-100 ms with a thousand streams open, and every event arriving meanwhile would be timed late.
A request that succeeds leaves no cyclic garbage behind (1,000 requests: none found); one that
fails leaves about a hundred objects in cycles (its exception, traceback and frames), so the
collector still runs when GC_BACKSTOP more container objects are alive than at the last
collection (a run against a failing server must not grow without bound), and the run counts
those collections. Automatic collection is switched back on when the run ends.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol, cast

import attrs

from llmstreams.bench.eventloop import running_event_loop
from llmstreams.bench.metrics import OK, SENT_AT_FIELD, RequestRecord
from llmstreams.bench.schedule import closed_loop_starts, open_loop_arrivals
from llmstreams.bench.stampedtransport import chunk_clock, read_clocks

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

# Warm-up of an open-loop run happens in a closed loop at most this wide.
OPEN_LOOP_WARMUP_CONCURRENCY = 32
# How often the loop-lag watcher asks to be woken.
LOOP_LAG_INTERVAL = 0.005
# During a measured run, the garbage collector runs only once this many more container objects
# are alive than at its last collection (some 10,000 failed requests, or 200,000 good ones).
GC_BACKSTOP = 1_000_000


class Target(Protocol):
    """One client sending one kind of request, as the load generator sees it.

    Optional extras the load generator looks for: `input_tokens(last_item)` (the prompt's
    token count the server reported), `carries_output(item)` (false for an item that brings no
    generated output, such as a stream's closing chunk with only the finish reason and usage:
    it ends the request but is not timed as a token; without it every item is) and
    `reads_sent_at` (true: each item has a `raw` mapping in which the server may have stamped
    its true send time, SENT_AT_FIELD) and `reads_arrival_times` (true: its streams say when
    the bytes of each item arrived, `last_read_at`, so that the kernel's arrival times of a
    stamping loop time the chunks).
    """

    def open_stream(self) -> AsyncIterator[Any]:
        """Send one request: an async iterator yielding once per chunk received.

        Nothing needs to happen before the first `__anext__`; if the iterator has `aclose`,
        it is called when the request ends, however it ends.
        """

    def output_tokens(self, last_item: Any) -> int | None:
        """The output token count the server reported, read from the request's last item."""


class Clock(Protocol):
    """The time the load generator schedules by: seconds on any monotonic scale."""

    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class MonotonicClock:
    """`time.monotonic()`, the clock of `ChunkStream.last_read_at`, slept on with the loop."""

    def __init__(self) -> None:
        self.now: Callable[[], float] = time.monotonic

    async def sleep_until(self, when: float) -> None:
        delay = when - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


@attrs.frozen(slots=True)
class LoadPlan:
    """How to load the target.

    - `concurrency` alone: closed loop, that many requests always in flight;
    - `rate` (requests/s on average): open loop, each request sent when due whatever the
      others are doing; the gaps between arrivals are gamma-distributed with shape
      `burstiness` (1: Poisson); with `concurrency` too, at most that many are in flight and
      a due request waits for a free slot (its `client_queue`);
    - `trace`: open loop replaying these arrival offsets (seconds), optionally capped by
      `concurrency`.

    `ramp_up` seconds: an open loop's rate rises linearly from 0; a closed loop's workers start
    one after another over that time. The run ends after `requests` requests or once
    `duration` seconds have passed (requests in flight are then awaited and counted),
    whichever comes first; a trace ends with its last arrival. `warmup` requests are sent
    first and not counted.
    """

    concurrency: int | None = None
    rate: float | None = None
    burstiness: float = 1.0
    ramp_up: float = 0.0
    trace: tuple[float, ...] | None = None
    requests: int | None = None
    duration: float | None = None
    warmup: int = 0
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.rate is not None and self.trace is not None:
            raise ValueError("give a rate or a trace, not both")
        if self.concurrency is None and self.rate is None and self.trace is None:
            raise ValueError("give a concurrency (closed loop), a rate or a trace (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be a positive number of requests/s, got {self.rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be a positive number, got {self.burstiness}")
        if not self.ramp_up >= 0:
            raise ValueError(f"ramp_up must be a number of seconds >= 0, got {self.ramp_up}")
        if self.requests is None and self.duration is None and self.trace is None:
            raise ValueError("give a number of requests, a duration, or both")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be at least 0, got {self.warmup}")

    @property
    def mode(self) -> str:
        if self.trace is not None:
            return "trace"
        return "closed" if self.rate is None else "open"

    def arrivals(self) -> Iterator[float]:
        """The open loop's arrival offsets in seconds (endless for a rate)."""
        if self.trace is not None:
            return iter(self.trace)
        assert self.rate is not None
        return open_loop_arrivals(
            self.rate, burstiness=self.burstiness, ramp_up=self.ramp_up,
            rng=random.Random(self.seed),
        )


@attrs.frozen(slots=True)
class Measurement:
    """The requests of one run, the run's wall time, and the client process's resources.

    `loop_lags`: how late (seconds) each wake-up of a watcher asking to sleep
    LOOP_LAG_INTERVAL came, over the run: a busy loop delays every timestamp by about as much.
    `origin`: the clock's time when the run began (after the warm-up), which the records'
    `start` count from. `connections_opened`: new connections the client's pool opened during
    the run, `connections_warmed`: those it had opened before it, in the warm-up (each None
    where unknown; a warm-up at the run's concurrency leaves none to open during the run). `event_loop`: the loop the run ran on, "uvloop" or "asyncio".
    `gc_collections`: how often the garbage collector had to run during the run (GC_BACKSTOP).
    `chunk_clock`: what timed the chunks, "kernel" (every read of the run carried the kernel's
    arrival time of its bytes: see `stampedtransport`) or "loop" (when the loop got to them).
    """

    records: tuple[RequestRecord, ...]
    duration: float
    cpu_seconds: float
    peak_rss_mb: float
    loop_lags: tuple[float, ...] = ()
    origin: float = 0.0
    connections_opened: int | None = None
    connections_warmed: int | None = None
    event_loop: str = "asyncio"
    gc_collections: int = 0
    chunk_clock: str = "loop"


async def run_load(
    target: Target,
    plan: LoadPlan,
    *,
    clock: Clock | None = None,
    before_run: Callable[[], Awaitable[None]] | None = None,
) -> Measurement:
    """Warm up, then load `target` as `plan` says, timing every request.

    `clock` (default: the loop's) decides when requests are due; tests pass a fake one.
    `before_run` is awaited between the warm-up and the measured run (client processes wait
    there for each other).
    """
    clock = clock or MonotonicClock()
    if plan.warmup:
        width = plan.concurrency or OPEN_LOOP_WARMUP_CONCURRENCY
        warmup = LoadPlan(concurrency=min(width, plan.warmup), requests=plan.warmup)
        await _closed_loop(target, warmup, clock.now(), clock)
    if before_run is not None:
        await before_run()
    loop = asyncio.get_running_loop()
    clocks_before = read_clocks(loop)
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    lags: list[float] = []
    collections: list[float] = []
    watcher = asyncio.create_task(_watch_loop(lags, collections))
    cpu_before = time.process_time()
    origin = clock.now()
    try:
        if plan.mode == "closed":
            records = await _closed_loop(target, plan, origin, clock)
        else:
            records = await _open_loop(target, plan, origin, clock)
    finally:
        watcher.cancel()
        if collecting:
            gc.enable()
    duration = clock.now() - origin
    cpu_seconds = time.process_time() - cpu_before
    timed_by = chunk_clock(clocks_before, read_clocks(loop))
    records.sort(key=lambda record: record.index)
    return Measurement(
        tuple(records), duration, cpu_seconds, peak_rss_mb(), tuple(lags), origin,
        event_loop=running_event_loop(), gc_collections=len(collections),
        chunk_clock=timed_by if getattr(target, "reads_arrival_times", False) else "loop",
    )



def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MiB (NaN where unknown)."""
    if resource is None:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def _watch_loop(lags: list[float], collections: list[float]) -> None:
    """Note how late each wake-up comes (`lags`), and collect garbage past GC_BACKSTOP (the
    pause of each collection in `collections`)."""
    now = time.monotonic
    while True:
        due = now() + LOOP_LAG_INTERVAL
        await asyncio.sleep(LOOP_LAG_INTERVAL)
        # uvloop's timers keep whole milliseconds and may fire a fraction of one early.
        lags.append(max(0.0, now() - due))
        if gc.get_count()[0] > GC_BACKSTOP:
            started = now()
            gc.collect()
            collections.append(now() - started)


async def measure_request(
    target: Target,
    index: int,
    origin: float,
    *,
    due: float | None = None,
    clock: Clock | None = None,
) -> RequestRecord:
    """Send one request through `target` and time each of its chunks that carry output.

    `due`: when the request was meant to be sent (default: now); the time from then until it
    is actually sent is its `client_queue`.
    """
    clock = clock or MonotonicClock()
    now = clock.now
    times: list[float] = []
    stamp = times.append
    raws: list[Any] = []
    item: Any = None
    status = OK
    start = now()
    try:
        stream = target.open_stream()
        try:
            read_at: Callable[[], float] = (
                cast(Callable[[], float], lambda: stream.last_read_at)
                if hasattr(stream, "last_read_at") else now
            )
            carries_output: Callable[[Any], bool] = getattr(
                target, "carries_output", _every_item
            )
            if getattr(target, "reads_sent_at", False):
                keep_raw = raws.append
                async for item in stream:
                    if carries_output(item):
                        stamp(read_at())
                        keep_raw(item.raw)
            else:
                async for item in stream:
                    if carries_output(item):
                        stamp(read_at())
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
    except Exception as error:
        # The benchmark counts failures by type; a failed request must not stop the run.
        status = type(error).__name__
    end = now()
    ok_with_chunks = status == OK and bool(times)
    input_tokens = getattr(target, "input_tokens", None)
    return RequestRecord(
        index=index,
        start=start - origin,
        client_queue=0.0 if due is None else max(0.0, start - due),
        ttft=times[0] - start if times else None,
        e2el=end - start,
        gaps=tuple(later - earlier for earlier, later in itertools.pairwise(times)),
        chunks=len(times),
        output_tokens=target.output_tokens(item) if ok_with_chunks else None,
        input_tokens=input_tokens(item) if ok_with_chunks and input_tokens is not None else None,
        status=status,
        send_errors=_send_errors(times, raws),
    )


def _every_item(item: Any) -> bool:
    return True


def _send_errors(times: Sequence[float], raws: Sequence[Any]) -> tuple[float, ...]:
    """Observed minus true send time of each chunk, when the server stamped its events: NaN for
    a chunk without an event of its own (a client-made end chunk repeats the last event)."""
    if not raws:
        return ()
    errors = []
    previous = None
    for seen, raw in zip(times, raws, strict=True):
        true = raw.get(SENT_AT_FIELD) if raw is not previous else None
        errors.append(seen - true if isinstance(true, float) else math.nan)
        previous = raw
    return tuple(errors) if any(error == error for error in errors) else ()


async def _closed_loop(
    target: Target, plan: LoadPlan, origin: float, clock: Clock
) -> list[RequestRecord]:
    assert plan.concurrency is not None
    records: list[RequestRecord] = []
    requests, deadline = plan.requests, None if plan.duration is None else origin + plan.duration
    issued = 0

    async def keep_one_in_flight(first_start: float) -> None:
        nonlocal issued
        await clock.sleep_until(origin + first_start)
        while (requests is None or issued < requests) and (deadline is None or clock.now() < deadline):
            index = issued
            issued += 1
            records.append(await measure_request(target, index, origin, clock=clock))

    async with asyncio.TaskGroup() as group:
        for first_start in closed_loop_starts(plan.concurrency, plan.ramp_up):
            group.create_task(keep_one_in_flight(first_start))
    return records


async def _open_loop(
    target: Target, plan: LoadPlan, origin: float, clock: Clock
) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    deadline = None if plan.duration is None else origin + plan.duration
    slots = None if plan.concurrency is None else asyncio.Semaphore(plan.concurrency)

    async def send(index: int, due: float) -> None:
        if slots is None:
            records.append(await measure_request(target, index, origin, due=due, clock=clock))
            return
        async with slots:
            records.append(await measure_request(target, index, origin, due=due, clock=clock))

    async with asyncio.TaskGroup() as group:
        for index, offset in enumerate(plan.arrivals()):
            due = origin + offset
            if (plan.requests is not None and index >= plan.requests) or (
                deadline is not None and due >= deadline
            ):
                break
            await clock.sleep_until(due)
            group.create_task(send(index, due))
    return records
