"""Load generation: closed loop (a fixed number of requests in flight) and open loop (Poisson
arrivals at a fixed rate), timing every chunk of every request.

Any client can be driven through a `Target`: it opens one request as an async iterator with one
item per chunk. The timing loop is the same for every client, so clients are compared on equal
terms.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import attrs

from llmstreams.bench.metrics import OK, RequestRecord

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

# Warm-up of an open-loop run happens in a closed loop at most this wide.
OPEN_LOOP_WARMUP_CONCURRENCY = 32

_clock = time.perf_counter


class Target(Protocol):
    """One client sending one kind of request, as the load generator sees it."""

    def open_stream(self) -> AsyncIterator[Any]:
        """Send one request: an async iterator yielding once per chunk received.

        Nothing needs to happen before the first `__anext__`; if the iterator has `aclose`,
        it is called when the request ends, however it ends.
        """

    def output_tokens(self, last_item: Any) -> int | None:
        """The output token count the server reported, read from the request's last item."""


@attrs.frozen(slots=True)
class LoadPlan:
    """How to load the target.

    Exactly one of `concurrency` (closed loop: that many requests always in flight) and `rate`
    (open loop: requests start at Poisson-distributed times, `rate` per second on average, each
    whatever the others are doing). The run ends after `requests` requests or once `duration`
    seconds have passed (requests in flight are then awaited and counted), whichever comes
    first; at least one of the two must be given. `warmup` requests are sent first and not
    counted.
    """

    concurrency: int | None = None
    rate: float | None = None
    requests: int | None = None
    duration: float | None = None
    warmup: int = 0
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) and rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be a positive number of requests/s, got {self.rate}")
        if self.requests is None and self.duration is None:
            raise ValueError("give a number of requests, a duration, or both")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be at least 0, got {self.warmup}")

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"


@attrs.frozen(slots=True)
class Measurement:
    """The requests of one run, the run's wall time, and the client process's resources."""

    records: tuple[RequestRecord, ...]
    duration: float
    cpu_seconds: float
    peak_rss_mb: float


async def run_load(target: Target, plan: LoadPlan) -> Measurement:
    """Warm up, then load `target` as `plan` says, timing every request."""
    if plan.warmup:
        width = plan.concurrency or OPEN_LOOP_WARMUP_CONCURRENCY
        await _closed_loop(target, min(width, plan.warmup), plan.warmup, None, _clock())
    gc.collect()
    cpu_before = time.process_time()
    origin = _clock()
    if plan.concurrency is not None:
        records = await _closed_loop(target, plan.concurrency, plan.requests, plan.duration, origin)
    else:
        assert plan.rate is not None
        rng = random.Random(plan.seed)
        records = await _open_loop(target, plan.rate, plan.requests, plan.duration, origin, rng)
    duration = _clock() - origin
    cpu_seconds = time.process_time() - cpu_before
    records.sort(key=lambda record: record.index)
    return Measurement(tuple(records), duration, cpu_seconds, peak_rss_mb())


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MiB (NaN where unknown)."""
    if resource is None:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def measure_request(target: Target, index: int, origin: float) -> RequestRecord:
    """Send one request through `target` and time each of its chunks."""
    gaps: list[float] = []
    chunks = 0
    item: Any = None
    status = OK
    first: float | None = None
    start = last = _clock()
    try:
        stream = target.open_stream()
        try:
            async for item in stream:  # noqa: B007 (the last item is read after the loop)
                now = _clock()
                if chunks:
                    gaps.append(now - last)
                else:
                    first = now
                last = now
                chunks += 1
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
    except Exception as error:
        # The benchmark counts failures by type; a failed request must not stop the run.
        status = type(error).__name__
    end = _clock()
    return RequestRecord(
        index=index,
        start=start - origin,
        ttft=None if first is None else first - start,
        e2el=end - start,
        gaps=tuple(gaps),
        chunks=chunks,
        output_tokens=target.output_tokens(item) if status == OK and chunks else None,
        status=status,
    )


async def _closed_loop(
    target: Target, concurrency: int, requests: int | None, duration: float | None, origin: float
) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    deadline = None if duration is None else _clock() + duration
    issued = 0

    async def keep_one_in_flight() -> None:
        nonlocal issued
        while (requests is None or issued < requests) and (deadline is None or _clock() < deadline):
            index = issued
            issued += 1
            records.append(await measure_request(target, index, origin))

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(keep_one_in_flight())
    return records


async def _open_loop(
    target: Target,
    rate: float,
    requests: int | None,
    duration: float | None,
    origin: float,
    rng: random.Random,
) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    deadline = None if duration is None else origin + duration

    async def send(index: int) -> None:
        records.append(await measure_request(target, index, origin))

    next_start = origin
    index = 0
    async with asyncio.TaskGroup() as group:
        while (requests is None or index < requests) and (deadline is None or next_start < deadline):
            delay = next_start - _clock()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(send(index))
            index += 1
            next_start += rng.expovariate(rate)
    return records
