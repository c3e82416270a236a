"""Load shapes of the harness: arrival schedules checked exactly, and the load generator driven
by a fake clock, so that every due time and queueing time is known in advance."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from llmstreams.bench import LoadPlan, Measurement, RequestRecord, run_load
from llmstreams.bench.runner import merge, split_plan
from llmstreams.bench.schedule import (
    TraceError,
    closed_loop_starts,
    open_loop_arrivals,
    read_trace,
)

ORIGIN = 1000.0


class FakeClock:
    """A discrete-event clock: time jumps to the earliest sleeper's due time once every other
    task has run as far as it can (the loop is given SETTLE turns), one sleeper at a time."""

    SETTLE = 20

    def __init__(self) -> None:
        self.time = ORIGIN
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self.time

    async def sleep_until(self, when: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._arrivals), future))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        await future

    async def _drive(self) -> None:
        while True:
            for _ in range(self.SETTLE):
                await asyncio.sleep(0)
            if not self._sleepers:
                return
            when, _, future = heapq.heappop(self._sleepers)
            self.time = max(self.time, when)
            future.set_result(None)


class TimedTarget:
    """Each request notes when it was opened, yields two chunks and takes `service` seconds
    of fake time."""

    def __init__(self, clock: FakeClock, service: float = 0.0) -> None:
        self.clock = clock
        self.service = service
        self.opened: list[float] = []

    async def _items(self) -> AsyncIterator[int]:
        self.opened.append(self.clock.time - ORIGIN)
        yield 1
        await self.clock.sleep_until(self.clock.time + self.service)
        yield 2

    def open_stream(self) -> AsyncIterator[int]:
        return self._items()

    def output_tokens(self, last_item: int) -> int | None:
        return 2


def take(count: int, offsets: object) -> list[float]:
    iterator = iter(offsets)  # type: ignore[call-overload]
    return [next(iterator) for _ in range(count)]


def test_poisson_arrivals_have_the_rate_and_exponential_spread() -> None:
    offsets = take(20_000, open_loop_arrivals(50.0, rng=random.Random(1)))
    gaps = [later - earlier for earlier, later in zip([0.0, *offsets], offsets, strict=False)]
    assert offsets == sorted(offsets)
    assert statistics.fmean(gaps) == pytest.approx(1 / 50.0, rel=0.03)
    # An exponential distribution's standard deviation equals its mean.
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_arrivals_keep_the_rate_and_change_the_spread(burstiness: float) -> None:
    offsets = take(20_000, open_loop_arrivals(50.0, burstiness=burstiness, rng=random.Random(2)))
    gaps = [later - earlier for earlier, later in zip([0.0, *offsets], offsets, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 50.0, rel=0.05)
    # A gamma distribution of shape k has a coefficient of variation of 1/sqrt(k).
    variation = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert variation == pytest.approx(1 / math.sqrt(burstiness), rel=0.06)


def test_ramp_up_rises_linearly_then_holds_the_rate() -> None:
    rate, ramp = 2000.0, 10.0
    offsets = take(80_000, open_loop_arrivals(rate, ramp_up=ramp, rng=random.Random(3)))
    # The rate rises as rate * t / ramp: rate * t**2 / (2 * ramp) arrivals by time t.
    for t in (2.5, 5.0, 10.0):
        expected = rate * t * t / (2 * ramp)
        assert sum(offset < t for offset in offsets) == pytest.approx(expected, rel=0.05)
    after = [offset for offset in offsets if 20.0 <= offset < 40.0]
    assert len(after) == pytest.approx(rate * 20.0, rel=0.05)


def test_arrivals_repeat_with_the_seed() -> None:
    first = take(100, open_loop_arrivals(5.0, burstiness=0.5, rng=random.Random(9)))
    again = take(100, open_loop_arrivals(5.0, burstiness=0.5, rng=random.Random(9)))
    other = take(100, open_loop_arrivals(5.0, burstiness=0.5, rng=random.Random(10)))
    assert first == again != other


def test_closed_loop_workers_start_evenly_over_the_ramp() -> None:
    assert closed_loop_starts(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    assert closed_loop_starts(3, 0.0) == [0.0, 0.0, 0.0]


async def test_open_loop_sends_each_request_at_its_arrival_time() -> None:
    clock = FakeClock()
    target = TimedTarget(clock)
    plan = LoadPlan(rate=20.0, burstiness=0.5, requests=50, seed=4)
    measurement = await run_load(target, plan, clock=clock)
    expected = take(50, plan.arrivals())
    assert target.opened == pytest.approx(expected)
    assert [record.start for record in measurement.records] == pytest.approx(expected)
    assert {record.client_queue for record in measurement.records} == {0.0}
    assert measurement.origin == ORIGIN


async def test_capped_open_loop_queues_due_requests_and_counts_the_wait() -> None:
    clock = FakeClock()
    target = TimedTarget(clock, service=1.0)
    plan = LoadPlan(trace=(0.0, 0.0, 0.0, 5.0), concurrency=1)
    measurement = await run_load(target, plan, clock=clock)
    records = measurement.records
    # One slot, one second each: the second and third wait one and two seconds.
    assert [record.client_queue for record in records] == [0.0, 1.0, 2.0, 0.0]
    assert [record.start for record in records] == [0.0, 1.0, 2.0, 5.0]
    assert [record.e2el for record in records] == [1.0, 1.0, 1.0, 1.0]
    assert [record.e2el_including_queue for record in records] == [1.0, 2.0, 3.0, 1.0]


async def test_uncapped_open_loop_does_not_wait_for_slow_requests() -> None:
    clock = FakeClock()
    target = TimedTarget(clock, service=10.0)
    measurement = await run_load(target, LoadPlan(trace=(0.0, 0.5, 1.0)), clock=clock)
    assert target.opened == [0.0, 0.5, 1.0]
    assert {record.client_queue for record in measurement.records} == {0.0}


async def test_trace_replay_stops_at_the_duration() -> None:
    clock = FakeClock()
    target = TimedTarget(clock)
    measurement = await run_load(
        target, LoadPlan(trace=(0.0, 1.0, 2.0, 3.0), duration=2.5), clock=clock
    )
    assert target.opened == [0.0, 1.0, 2.0]
    assert len(measurement.records) == 3


async def test_closed_loop_ramp_up_starts_workers_one_after_another() -> None:
    clock = FakeClock()
    target = TimedTarget(clock, service=10.0)
    await run_load(target, LoadPlan(concurrency=4, ramp_up=2.0, requests=4), clock=clock)
    assert target.opened == [0.0, 0.5, 1.0, 1.5]


async def test_warmup_is_sent_first_and_not_counted() -> None:
    clock = FakeClock()
    target = TimedTarget(clock, service=1.0)
    measurement = await run_load(target, LoadPlan(concurrency=2, requests=6, warmup=4), clock=clock)
    assert len(target.opened) == 10
    assert len(measurement.records) == 6
    assert measurement.origin == ORIGIN + 2.0  # two rounds of two one-second warm-up requests
    assert [record.start for record in measurement.records] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "arguments",
    [
        {"rate": 1.0, "trace": (0.0,)},
        {"rate": 1.0, "burstiness": 0.0, "requests": 1},
        {"concurrency": 1, "ramp_up": -1.0, "requests": 1},
        {"rate": 1.0},
    ],
)
def test_load_plan_refuses_impossible_shapes(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LoadPlan(**arguments)  # type: ignore[arg-type]


def test_trace_file_offsets_in_seconds_or_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"offset_s": 1.5}\n\n{"timestamp_ms": 250}\n0.75\n', encoding="utf-8")
    assert read_trace(path) == (0.25, 0.75, 1.5)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("", "no arrivals"), ('{"at": 1}\n', "offset_s"), ("-1\n", ">= 0"), ("{\n", "line 1")],
)
def test_bad_traces_are_refused(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TraceError, match=complaint):
        read_trace(path)


def test_a_plan_is_split_between_processes() -> None:
    plan = LoadPlan(concurrency=5, rate=9.0, requests=11, warmup=3, seed=7)
    parts = split_plan(plan, 2)
    assert [part.concurrency for part in parts] == [3, 2]
    assert [part.rate for part in parts] == [4.5, 4.5]
    assert [part.requests for part in parts] == [6, 5]
    assert [part.warmup for part in parts] == [2, 1]
    assert [part.seed for part in parts] == [7, 8]
    traced = split_plan(LoadPlan(trace=(0.0, 1.0, 2.0, 3.0, 4.0)), 2)
    assert [part.trace for part in traced] == [(0.0, 2.0, 4.0), (1.0, 3.0)]


def test_measurements_of_processes_merge_on_one_time_line() -> None:
    def record(index: int, start: float) -> RequestRecord:
        return RequestRecord(index, start, 0.1, 0.2, (0.1,), 2, 2, "ok")

    first = Measurement((record(0, 0.0), record(1, 2.0)), 3.0, 1.0, 50.0, (0.001,), origin=100.0)
    second = Measurement((record(0, 0.0),), 4.0, 0.5, 40.0, (0.002,), origin=101.0)
    merged = merge([first, second])
    assert [(r.index, r.start) for r in merged.records] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert merged.duration == 5.0
    assert merged.cpu_seconds == 1.5
    assert merged.peak_rss_mb == 90.0
    assert sorted(merged.loop_lags) == [0.001, 0.002]
    assert merged.origin == 100.0
    assert attrs.evolve(merged.records[1], index=0) == record(0, 1.0)
    # Chunks were timed by the kernel only if they were in every process.
    assert merged.chunk_clock == "loop"
    kernel = [attrs.evolve(m, chunk_clock="kernel") for m in (first, second)]
    assert merge(kernel).chunk_clock == "kernel"
    assert merge([kernel[0], second]).chunk_clock == "loop"
