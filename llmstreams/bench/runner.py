"""A whole benchmark: the target server (mock worker processes or a given URL), the sweep over
mock worker counts and load settings, one measured run per combination, each run in this
process or spread over several client processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from llmstreams import Pool
from llmstreams.bench.eventloop import (
    check_chunk_clock,
    check_event_loop,
    default_event_loop,
    run_on,
)
from llmstreams.bench.load import LoadPlan, Measurement, run_load
from llmstreams.bench.metrics import PERCENTILES, RequestRecord, RunSummary, summarize
from llmstreams.bench.targets import ClientTarget, Workload, make_client
from llmstreams.mock import Behaviour, MockServer, spawn_mock_workers

# How long client processes may take to start, import and warm up before the run gives up.
PROCESS_START_TIMEOUT = 120.0


@attrs.frozen(slots=True)
class BenchConfig:
    """Everything one `llmstreams bench` invocation measures.

    One run per combination of `mock_workers`, `rates`, `concurrencies` and `burstiness`
    (a sweep over whichever has several values). A rate of None is a closed loop at the
    concurrency; with a rate, the concurrency caps the requests in flight (None: no cap).
    `trace` replaces the rates with arrival offsets. `processes` client processes share each
    run's load (their results merged).
    `base_url` set: the runs go to that server and `mock_workers` / `knobs` are unused.
    `mock_workers` 0 runs the mock inside this process (its CPU then counts as the client's).
    `mock_auth` is how the client authenticates to the mock: one of its provider's
    `mock_credentials` methods (None: the first).
    `event_loop` is the loop the client runs on, "uvloop" or "asyncio" (see `run_on`); the
    caller runs `run_benchmark` on it, and client processes start on it. `chunk_clock`
    "kernel" times chunks by the kernel's arrival time of their bytes where it can (the caller
    runs `run_benchmark` with `run_on(..., kernel_clock=True)`, and client processes start so);
    "loop" by when the event loop got to them. Each run records which clock timed it.
    """

    workload: Workload
    concurrencies: tuple[int | None, ...] = (64,)
    rates: tuple[float | None, ...] = (None,)
    burstiness: tuple[float, ...] = (1.0,)
    ramp_up: float = 0.0
    trace: tuple[float, ...] | None = None
    requests: int | None = 1000
    duration: float | None = None
    warmup: int = 0
    seed: int = 0
    base_url: str | None = None
    mock_workers: tuple[int, ...] = (1,)
    knobs: Mapping[str, Any] = attrs.field(factory=dict)
    max_retries: int = 0
    mock_auth: str | None = None
    percentiles: tuple[float, ...] = PERCENTILES
    slos: Mapping[str, float] = attrs.field(factory=dict)
    processes: int = 1
    event_loop: str = attrs.field(factory=default_event_loop)
    chunk_clock: str = "kernel"

    def __attrs_post_init__(self) -> None:
        check_event_loop(self.event_loop)
        check_chunk_clock(self.chunk_clock)
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, got {self.processes}")
        smallest = min(
            [c for c in self.concurrencies if c is not None]
            + ([self.requests] if self.requests is not None else [])
            + ([self.warmup] if self.warmup else []),
            default=self.processes,
        )
        if self.processes > smallest:
            raise ValueError(
                f"{self.processes} processes cannot share a concurrency, request count or "
                f"warm-up of {smallest}: give at most {smallest} processes"
            )

    def plans(self) -> list[LoadPlan]:
        rates: Sequence[float | None] = (None,) if self.trace is not None else self.rates
        return [
            LoadPlan(
                concurrency=concurrency, rate=rate, burstiness=burstiness, ramp_up=self.ramp_up,
                trace=self.trace, requests=self.requests, duration=self.duration,
                warmup=self.warmup, seed=self.seed,
            )
            for rate, concurrency, burstiness in itertools.product(
                rates, self.concurrencies, self.burstiness
            )
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.workload.provider,
            "model": self.workload.model_or_default(mock=self.base_url is None),
            "endpoint": self.workload.endpoint,
            "stream": self.workload.stream,
            "incremental_output": self.workload.incremental_output,
            "prompts": len(self.workload.requests()),
            "max_tokens": self.workload.max_tokens,
            "concurrencies": list(self.concurrencies),
            "request_rates": list(self.rates),
            "burstiness": list(self.burstiness),
            "ramp_up": self.ramp_up,
            "trace_arrivals": None if self.trace is None else len(self.trace),
            "requests": self.requests,
            "duration": self.duration,
            "warmup": self.warmup,
            "seed": self.seed,
            "target": "url" if self.base_url is not None else "mock",
            "mock_workers": None if self.base_url is not None else list(self.mock_workers),
            "mock_knobs": None if self.base_url is not None else dict(self.knobs),
            "max_retries": self.max_retries,
            "mock_auth": self.mock_auth,
            "percentiles": list(self.percentiles),
            "goodput_slos_ms": dict(self.slos) or None,
            "processes": self.processes,
            "event_loop": self.event_loop,
            "chunk_clock": self.chunk_clock,
        }


@attrs.frozen(slots=True)
class RunResult:
    summary: RunSummary
    records: tuple[RequestRecord, ...]


@attrs.frozen(slots=True)
class ClientSpec:
    """How a (possibly other) process builds the benchmark's client target: picklable."""

    workload: Workload
    base_url: str | None
    max_retries: int
    mock: bool
    mock_auth: str | None
    event_loop: str = attrs.field(factory=default_event_loop)
    chunk_clock: str = "kernel"

    @contextlib.asynccontextmanager
    async def target(self) -> AsyncIterator[tuple[ClientTarget, Pool]]:
        async with Pool() as pool:
            client = make_client(
                self.workload.provider, base_url=self.base_url, pool=pool,
                max_retries=self.max_retries, mock=self.mock, mock_auth=self.mock_auth,
            )
            yield ClientTarget(client, self.workload, mock=self.mock, reads_sent_at=self.mock), pool


async def run_benchmark(
    config: BenchConfig, on_run: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """Every run of `config`, in order; `on_run` is told of each as soon as it is done."""
    results: list[RunResult] = []
    groups: Sequence[int | None] = [None] if config.base_url is not None else config.mock_workers
    for workers in groups:
        async with _server(config, workers) as base_url:
            spec = ClientSpec(
                config.workload, base_url, config.max_retries, workers is not None,
                config.mock_auth, config.event_loop, config.chunk_clock,
            )
            for plan in config.plans():
                measurement = await measure(spec, plan, config.processes)
                summary = summarize(
                    measurement.records, duration=measurement.duration,
                    cpu_seconds=measurement.cpu_seconds, peak_rss_mb=measurement.peak_rss_mb,
                    loop_lags=measurement.loop_lags, label=_label(config, plan, workers),
                    percentiles=config.percentiles, slos=config.slos,
                    processes=config.processes,
                    connections_opened=measurement.connections_opened,
                    connections_warmed=measurement.connections_warmed,
                    event_loop=measurement.event_loop,
                    gc_collections=measurement.gc_collections,
                    chunk_clock=measurement.chunk_clock,
                )
                result = RunResult(summary, measurement.records)
                results.append(result)
                if on_run is not None:
                    on_run(result)
    return results


def _label(config: BenchConfig, plan: LoadPlan, workers: int | None) -> dict[str, Any]:
    label: dict[str, Any] = {
        "provider": config.workload.provider,
        "model": config.workload.model_or_default(mock=workers is not None),
        "endpoint": config.workload.endpoint,
        "stream": config.workload.stream,
        "target": "mock" if workers is not None else "url",
        "mode": plan.mode,
        "concurrency": plan.concurrency,
        "request_rate": plan.rate,
        "burstiness": plan.burstiness if plan.rate is not None else None,
        "ramp_up": plan.ramp_up,
        "mock_workers": workers,
    }
    if workers is None and config.base_url is not None:
        parts = urlsplit(config.base_url)
        label["server"] = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    if workers is not None and config.mock_auth is not None:
        label["mock_auth"] = config.mock_auth
    return label


async def measure(spec: ClientSpec, plan: LoadPlan, processes: int = 1) -> Measurement:
    """One run of `plan` against `spec`'s target, in this process or shared by `processes`."""
    if processes == 1:
        return await _measure_here(spec, plan, None)
    return await asyncio.to_thread(_measure_in_processes, spec, plan, processes)


async def _measure_here(
    spec: ClientSpec, plan: LoadPlan, wait: Callable[[], Awaitable[None]] | None
) -> Measurement:
    """One run in this process, counting the connections opened in the warm-up and after it."""
    async with spec.target() as (target, pool):
        opened_before: list[int] = []

        async def before_run() -> None:
            if wait is not None:
                await wait()
            opened_before.append(pool.stats().connections_opened)

        measurement = await run_load(target, plan, before_run=before_run)
        opened = pool.stats().connections_opened - opened_before[0]
    return attrs.evolve(
        measurement, connections_opened=opened, connections_warmed=opened_before[0]
    )


def split_plan(plan: LoadPlan, processes: int) -> list[LoadPlan]:
    """`plan`'s load shared by `processes`: concurrency, rate, requests and warm-up divided
    (the first processes take the remainders), trace arrivals dealt in turn, seeds apart."""

    def share(total: int | None, part: int) -> int | None:
        if total is None:
            return None
        return total // processes + (1 if part < total % processes else 0)

    plans = []
    for part in range(processes):
        plans.append(attrs.evolve(
            plan,
            concurrency=share(plan.concurrency, part),
            rate=None if plan.rate is None else plan.rate / processes,
            trace=None if plan.trace is None else plan.trace[part::processes],
            requests=share(plan.requests, part),
            warmup=share(plan.warmup, part) or 0,
            seed=plan.seed + part,
        ))
    return plans


def merge(measurements: Sequence[Measurement]) -> Measurement:
    """The measurements of processes that ran at once: one run from the earliest start to the
    latest end, requests numbered in the order they were sent."""
    origin = min(m.origin for m in measurements)
    records = sorted(
        (attrs.evolve(record, start=record.start + m.origin - origin)
         for m in measurements for record in m.records),
        key=lambda record: record.start,
    )
    return Measurement(
        records=tuple(attrs.evolve(record, index=index) for index, record in enumerate(records)),
        duration=max(m.origin + m.duration for m in measurements) - origin,
        cpu_seconds=sum(m.cpu_seconds for m in measurements),
        peak_rss_mb=sum(m.peak_rss_mb for m in measurements),
        event_loop=",".join(sorted({m.event_loop for m in measurements})),
        gc_collections=sum(m.gc_collections for m in measurements),
        chunk_clock="kernel" if all(m.chunk_clock == "kernel" for m in measurements) else "loop",
        loop_lags=tuple(lag for m in measurements for lag in m.loop_lags),
        origin=origin,
        connections_opened=_total(m.connections_opened for m in measurements),
        connections_warmed=_total(m.connections_warmed for m in measurements),
    )


def _total(counts: Iterable[int | None]) -> int | None:
    """The sum of counts, None when any is unknown."""
    known = list(counts)
    return None if any(count is None for count in known) else sum(count or 0 for count in known)


def _measure_in_processes(spec: ClientSpec, plan: LoadPlan, processes: int) -> Measurement:
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    ready = context.Barrier(processes, timeout=PROCESS_START_TIMEOUT)
    children = [
        context.Process(target=_child, args=(spec, part, results, ready), daemon=True)
        for part in split_plan(plan, processes)
    ]
    for child in children:
        child.start()
    try:
        collected = [results.get(timeout=PROCESS_START_TIMEOUT + _longest(plan)) for _ in children]
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
    failures = [item for item in collected if isinstance(item, str)]
    if failures:
        raise RuntimeError(f"a client process failed: {failures[0]}")
    return merge(collected)


def _longest(plan: LoadPlan) -> float:
    """How long a run may take, at most, for waiting on it (an hour without a duration)."""
    return 3600.0 if plan.duration is None else plan.duration * 10 + 60


def _child(spec: ClientSpec, plan: LoadPlan, results: Any, ready: Any) -> None:
    try:
        results.put(run_on(
            spec.event_loop, _child_run(spec, plan, ready),
            kernel_clock=spec.chunk_clock == "kernel",
        ))
    except Exception as error:  # reported to the parent, which raises it
        results.put(f"{type(error).__name__}: {error}")


async def _child_run(spec: ClientSpec, plan: LoadPlan, ready: Any) -> Measurement:
    async def all_warmed_up() -> None:
        await asyncio.to_thread(ready.wait)

    return await _measure_here(spec, plan, all_warmed_up)


@contextlib.asynccontextmanager
async def _server(config: BenchConfig, workers: int | None) -> AsyncIterator[str | None]:
    if workers is None:
        yield config.base_url
        return
    # The mock stamps each event with its true send time, so that every run against it also
    # measures the harness's own error (unless the knob is set otherwise).
    knobs = {"stamp_send_times": True, **config.knobs}
    if workers == 0:
        async with MockServer(behaviour=Behaviour(**knobs)) as server:
            yield server.url
    else:
        async with spawn_mock_workers(workers, **knobs) as url:
            yield url
