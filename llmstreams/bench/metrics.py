"""Per-request timing records and the statistics of a run.

Names and meanings follow vLLM's `bench serve` (also used by SGLang's `bench_serving`):
`request_throughput`, `output_throughput`, `total_token_throughput`, `request_goodput`,
`mean_ttft_ms`, `p99_itl_ms`, `median_tpot_ms`, ... so the JSON reports can be read by the same
tools. docs/bench.md defines each one.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

OK = "ok"
PERCENTILES: tuple[float, ...] = (50, 90, 99)
# The metrics a goodput SLO can bound (milliseconds), as in vLLM's `--goodput`.
SLO_METRICS: tuple[str, ...] = ("ttft", "tpot", "e2el")
# Above these the client itself limits the measurement: its timestamps come late.
CLIENT_CPU_LIMIT = 0.8  # share of one core
LOOP_LAG_LIMIT_MS = 10.0  # p99 of the event loop's lateness
LOOP_LAG_PERCENTILES: tuple[float, ...] = (50, 99)
# Above this share of the chunks coming in one read with the chunk before them, or of the
# requests with such a chunk, a run says that its gaps cannot be told apart.
SHARED_READ_LIMIT = 0.01
# The field of a streamed event in which a server (the ruler, the mock) writes the
# `time.monotonic()` at which it wrote the event.
SENT_AT_FIELD = "x_sent_at"


@attrs.frozen(slots=True)
class RequestRecord:
    """One measured request.

    Times are seconds. `start` is when the request was sent, counted from the beginning of the
    run; `client_queue` is how long it waited before that, from the time it was due (an open
    loop's arrival; 0 in a closed loop). `ttft` (time to the first chunk, from `start`) is None
    when no chunk arrived; `gaps` are the times between consecutive chunks; `e2el` runs from
    `start` to the end of the request. `status` is "ok" or the name of the error's type.
    `output_tokens` / `input_tokens` are the server's `usage` counts when it sent them.
    `send_errors`: for a server that stamps each event with its true send time, the observed
    arrival minus that time, per chunk (NaN for a chunk without a stamp; empty when none had).
    """

    index: int
    start: float
    ttft: float | None
    e2el: float
    gaps: tuple[float, ...]
    chunks: int
    output_tokens: int | None
    status: str
    client_queue: float = 0.0
    input_tokens: int | None = None
    send_errors: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def e2el_including_queue(self) -> float:
        return self.client_queue + self.e2el

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2el - ttft) / (output_tokens - 1); None
        without usage, a first chunk, or at least two output tokens."""
        if self.ttft is None or self.output_tokens is None or self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def meets(self, slos: Mapping[str, float]) -> bool:
        """Whether this request succeeded within every SLO (milliseconds by metric name).

        A TPOT SLO is met by an answer of at most one output token (it has no TPOT) and not by
        one whose token count is unknown.
        """
        if not self.ok:
            return False
        for metric, limit_ms in slos.items():
            if metric == "tpot" and self.output_tokens is not None and self.output_tokens < 2:
                continue
            value = self.ttft if metric == "ttft" else self.tpot if metric == "tpot" else self.e2el
            if value is None or value * 1000.0 > limit_ms:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        """The request as one JSON object (milliseconds), for the per-request JSONL file."""
        tpot = self.tpot
        line = {
            "index": self.index,
            "start_s": round(self.start, 6),
            "status": self.status,
            "client_queue_ms": _ms(self.client_queue),
            "ttft_ms": None if self.ttft is None else _ms(self.ttft),
            "tpot_ms": None if tpot is None else _ms(tpot),
            "e2el_ms": _ms(self.e2el),
            "e2el_including_queue_ms": _ms(self.e2el_including_queue),
            "itl_ms": [_ms(gap) for gap in self.gaps],
            "chunks": self.chunks,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.send_errors:
            line["send_error_ms"] = [
                None if math.isnan(error) else _ms(error) for error in self.send_errors
            ]
        return line


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 4)


def percentile(ordered: Sequence[float], percent: float) -> float:
    """The `percent` percentile of sorted values, interpolated linearly between neighbours
    (numpy's default method); NaN for no values."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * percent / 100.0
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction


def percent_name(percent: float) -> str:
    """99 -> "p99", 99.9 -> "p99.9" (vLLM's field names)."""
    return f"p{percent:g}"


@attrs.frozen(slots=True)
class Distribution:
    """Mean, median, standard deviation and percentiles of some durations, in milliseconds."""

    count: int
    mean: float
    median: float
    std: float
    percentiles: tuple[tuple[float, float], ...]

    @classmethod
    def of_seconds(
        cls, values: Iterable[float], percentiles: Sequence[float] = PERCENTILES
    ) -> Distribution:
        ordered = sorted(value * 1000.0 for value in values)
        count = len(ordered)
        if not count:
            return cls(0, math.nan, math.nan, math.nan, tuple((p, math.nan) for p in percentiles))
        mean = math.fsum(ordered) / count
        variance = math.fsum((value - mean) ** 2 for value in ordered) / count
        return cls(
            count=count,
            mean=mean,
            median=percentile(ordered, 50),
            std=math.sqrt(variance),
            percentiles=tuple((p, percentile(ordered, p)) for p in percentiles),
        )

    def at(self, percent: float) -> float:
        """The `percent` percentile (the median for 50, even when not asked for)."""
        return dict(self.percentiles).get(percent, self.median if percent == 50 else math.nan)

    def fields(self, name: str) -> dict[str, float | None]:
        """`mean_{name}_ms`, `median_...`, `std_...` and `p{N}_{name}_ms` (None for no values)."""
        values: dict[str, float | None] = {
            f"mean_{name}_ms": _finite(self.mean),
            f"median_{name}_ms": _finite(self.median),
            f"std_{name}_ms": _finite(self.std),
        }
        for percent, value in self.percentiles:
            values[f"{percent_name(percent)}_{name}_ms"] = _finite(value)
        return values


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


@attrs.frozen(slots=True)
class RunSummary:
    """What one run measured.

    Latencies count only the requests that succeeded; `total_chunks` and the CPU figures
    count every chunk received (those of failed requests too: the client did that work).
    `cpu_seconds` is the client processes' CPU time over the run, `peak_rss_mb` their peak
    resident memory (the sum over processes); `connections_opened` the new connections the
    client pools opened during the run and `connections_warmed` those they had opened before
    it, in the warm-up (None where unknown); `event_loop` the loop the client
    ran on ("uvloop" or "asyncio"); `gc_collections` how often the garbage collector had to
    run during the run (it is held off otherwise). `loop_lag` is the distribution of the event
    loop's lateness; `ttft_error` / `itl_error` (absolute, per request / per gap) and `true_itl`
    are known only when the server stamped its true send times. `chunk_clock`: what timed the
    chunks, "kernel" (the kernel's arrival time of their bytes) or "loop" (when the event loop
    got to their socket). `shared_read_chunks`: chunks of successful requests that came in one
    read with the chunk before them (their ITL is 0); `shared_read_requests`: successful
    requests with at least one such chunk.
    """

    label: dict[str, Any]
    duration: float
    completed: int
    failed: int
    errors: dict[str, int]
    total_chunks: int
    total_output_tokens: int
    total_input_tokens: int
    requests_with_usage: int
    good_requests: int
    slos: dict[str, float]
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    client_queue: Distribution
    e2el_including_queue: Distribution
    loop_lag: Distribution
    ttft_error: Distribution
    itl_error: Distribution
    true_itl: Distribution
    cpu_seconds: float
    peak_rss_mb: float
    processes: int = 1
    connections_opened: int | None = None
    event_loop: str = "asyncio"
    gc_collections: int = 0
    connections_warmed: int | None = None
    chunk_clock: str = "loop"
    shared_read_chunks: int = 0
    shared_read_requests: int = 0

    def _per_second(self, count: float) -> float:
        return count / self.duration if self.duration > 0 else 0.0

    @property
    def request_throughput(self) -> float:
        return self._per_second(self.completed)

    @property
    def request_goodput(self) -> float | None:
        return self._per_second(self.good_requests) if self.slos else None

    @property
    def chunk_throughput(self) -> float:
        return self._per_second(self.total_chunks)

    @property
    def output_throughput(self) -> float:
        return self._per_second(self.total_output_tokens)

    @property
    def total_token_throughput(self) -> float:
        return self._per_second(self.total_input_tokens + self.total_output_tokens)

    @property
    def cpu_s_per_1k_chunks(self) -> float | None:
        if not self.total_chunks:
            return None
        return self.cpu_seconds / self.total_chunks * 1000.0

    @property
    def cpu_us_per_chunk(self) -> float | None:
        per_1k = self.cpu_s_per_1k_chunks
        return None if per_1k is None else per_1k * 1000.0

    @property
    def cpu_utilization(self) -> float:
        """The client's CPU time over the wall time, per process: 1.0 is each process keeping
        one core busy."""
        return self._per_second(self.cpu_seconds) / self.processes

    @property
    def client_bound_reasons(self) -> tuple[str, ...]:
        """Why the client itself may have limited what was measured (empty: it did not)."""
        reasons = []
        if self.cpu_utilization > CLIENT_CPU_LIMIT:
            reasons.append(
                f"client CPU {self.cpu_utilization:.0%} of a core (over {CLIENT_CPU_LIMIT:.0%})"
            )
        lag = self.loop_lag.at(99)
        if lag > LOOP_LAG_LIMIT_MS:
            reasons.append(f"event-loop lag p99 {lag:.1f} ms (over {LOOP_LAG_LIMIT_MS:g} ms)")
        return tuple(reasons)

    @property
    def client_bound(self) -> bool:
        return bool(self.client_bound_reasons)

    @property
    def shared_reads_reason(self) -> str | None:
        """Why the run's gaps cannot all be told apart (None: they can): more than
        SHARED_READ_LIMIT of the gaps, or of the requests, had events of one stream that came in
        one read, because the client fell behind by a whole gap or the server wrote them
        together. (Per request too: shared reads of first chunks move the TTFT percentiles,
        one value per request, before they move the ITL ones.)"""
        gaps, requests = self.itl.count, self.completed
        chunk_share = self.shared_read_chunks / gaps if gaps else 0.0
        request_share = self.shared_read_requests / requests if requests else 0.0
        if chunk_share <= SHARED_READ_LIMIT and request_share <= SHARED_READ_LIMIT:
            return None
        return (
            f"{chunk_share:.1%} of the chunks, in {request_share:.1%} of the requests, came in one "
            f"read with the chunk before them (over {SHARED_READ_LIMIT:.0%}): their gaps cannot "
            "be told apart"
        )

    @property
    def shared_reads(self) -> bool:
        return self.shared_reads_reason is not None

    @property
    def harness_error_known(self) -> bool:
        return self.ttft_error.count > 0

    def to_json(self) -> dict[str, Any]:
        """The run as a flat JSON object."""
        per_1k, per_chunk, goodput = self.cpu_s_per_1k_chunks, self.cpu_us_per_chunk, self.request_goodput
        document: dict[str, Any] = {
            **self.label,
            "duration": round(self.duration, 6),
            "completed": self.completed,
            "failed": self.failed,
            "errors": dict(self.errors),
            "total_chunks": self.total_chunks,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "requests_with_usage": self.requests_with_usage,
            "request_throughput": round(self.request_throughput, 4),
            "request_goodput": None if goodput is None else round(goodput, 4),
            "goodput_slos_ms": dict(self.slos) or None,
            "chunk_throughput": round(self.chunk_throughput, 4),
            "output_throughput": round(self.output_throughput, 4),
            "total_token_throughput": round(self.total_token_throughput, 4),
            **self.ttft.fields("ttft"),
            **self.tpot.fields("tpot"),
            **self.itl.fields("itl"),
            **self.e2el.fields("e2el"),
            **self.client_queue.fields("client_queue"),
            **self.e2el_including_queue.fields("e2el_including_queue"),
            "cpu_seconds": round(self.cpu_seconds, 6),
            "cpu_s_per_1k_chunks": None if per_1k is None else round(per_1k, 6),
            "cpu_us_per_chunk": None if per_chunk is None else round(per_chunk, 3),
            "client_cpu_utilization": round(self.cpu_utilization, 4),
            "p99_loop_lag_ms": _finite(self.loop_lag.at(99)),
            "peak_rss_mb": round(self.peak_rss_mb, 2),
            "processes": self.processes,
            "event_loop": self.event_loop,
            "gc_collections": self.gc_collections,
            "connections_opened": self.connections_opened,
            "connections_opened_in_warmup": self.connections_warmed,
            "client_bound": self.client_bound,
            "client_bound_reasons": list(self.client_bound_reasons),
            "chunk_clock": self.chunk_clock,
            "shared_read_chunks": self.shared_read_chunks,
            "shared_read_requests": self.shared_read_requests,
            "shared_reads": self.shared_reads,
            "shared_reads_reason": self.shared_reads_reason,
        }
        if self.harness_error_known:
            document.update({
                **self.ttft_error.fields("harness_ttft_error"),
                **self.itl_error.fields("harness_itl_error"),
                **self.true_itl.fields("true_itl"),
            })
        return document


def _gap_errors(record: RequestRecord) -> Iterable[float]:
    return (
        abs(later - earlier)
        for earlier, later in itertools.pairwise(record.send_errors)
        if not (math.isnan(earlier) or math.isnan(later))
    )


def _true_gaps(record: RequestRecord) -> Iterable[float]:
    errors = record.send_errors
    return (
        gap - (later - earlier)
        for gap, earlier, later in zip(record.gaps, errors, errors[1:], strict=False)
        if not (math.isnan(earlier) or math.isnan(later))
    )


def summarize(
    records: Sequence[RequestRecord],
    *,
    duration: float,
    cpu_seconds: float,
    peak_rss_mb: float,
    label: dict[str, Any] | None = None,
    loop_lags: Iterable[float] = (),
    percentiles: Sequence[float] = PERCENTILES,
    slos: Mapping[str, float] | None = None,
    processes: int = 1,
    connections_opened: int | None = None,
    event_loop: str = "asyncio",
    gc_collections: int = 0,
    connections_warmed: int | None = None,
    chunk_clock: str = "loop",
) -> RunSummary:
    """The statistics of the measured `records` of one run; `slos` (milliseconds by metric
    in SLO_METRICS) define the good requests of `request_goodput`."""
    succeeded = [record for record in records if record.ok]
    errors = Counter(record.status for record in records if not record.ok)
    with_usage = [record for record in succeeded if record.output_tokens is not None]
    stamped = [record for record in succeeded if record.send_errors]
    slos = dict(slos or {})

    def spread(values: Iterable[float]) -> Distribution:
        return Distribution.of_seconds(values, percentiles)

    def each(values_of: Callable[[RequestRecord], float | None]) -> Distribution:
        return spread(value for value in map(values_of, succeeded) if value is not None)

    return RunSummary(
        label=dict(label or {}),
        duration=duration,
        completed=len(succeeded),
        failed=len(records) - len(succeeded),
        errors=dict(sorted(errors.items())),
        total_chunks=sum(record.chunks for record in records),
        total_output_tokens=sum(record.output_tokens or 0 for record in with_usage),
        total_input_tokens=sum(record.input_tokens or 0 for record in with_usage),
        requests_with_usage=len(with_usage),
        good_requests=sum(record.meets(slos) for record in records) if slos else 0,
        slos=slos,
        ttft=each(lambda record: record.ttft),
        tpot=each(lambda record: record.tpot),
        itl=spread(gap for record in succeeded for gap in record.gaps),
        e2el=each(lambda record: record.e2el),
        client_queue=each(lambda record: record.client_queue),
        e2el_including_queue=each(lambda record: record.e2el_including_queue),
        loop_lag=Distribution.of_seconds(loop_lags, LOOP_LAG_PERCENTILES),
        ttft_error=spread(
            abs(record.send_errors[0]) for record in stamped if not math.isnan(record.send_errors[0])
        ),
        itl_error=spread(error for record in stamped for error in _gap_errors(record)),
        true_itl=spread(gap for record in stamped for gap in _true_gaps(record)),
        cpu_seconds=cpu_seconds,
        peak_rss_mb=peak_rss_mb,
        processes=processes,
        connections_opened=connections_opened,
        event_loop=event_loop,
        gc_collections=gc_collections,
        connections_warmed=connections_warmed,
        chunk_clock=chunk_clock,
        shared_read_chunks=sum(gap == 0.0 for record in succeeded for gap in record.gaps),
        shared_read_requests=sum(0.0 in record.gaps for record in succeeded),
    )
