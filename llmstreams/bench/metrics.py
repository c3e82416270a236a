"""Per-request timing records and the statistics of a run.

Field names follow vLLM's `benchmark_serving.py` where they mean the same thing
(`request_throughput`, `output_throughput`, `mean_ttft_ms`, `p99_itl_ms`, ...), so the JSON
reports can be read by the same tools.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

OK = "ok"
PERCENTILES: tuple[int, ...] = (50, 90, 99)


@attrs.frozen(slots=True)
class RequestRecord:
    """One measured request.

    Times are seconds. `start` is counted from the beginning of the run; `ttft` (time to the
    first chunk) is None when no chunk arrived; `gaps` are the times between consecutive chunks.
    `status` is "ok" or the name of the error's type. `output_tokens` is the server's
    `usage.completion_tokens` when it sent one.
    """

    index: int
    start: float
    ttft: float | None
    e2el: float
    gaps: tuple[float, ...]
    chunks: int
    output_tokens: int | None
    status: str

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict[str, Any]:
        """The request as one JSON object (milliseconds), for the per-request JSONL file."""
        return {
            "index": self.index,
            "start_s": round(self.start, 6),
            "status": self.status,
            "ttft_ms": None if self.ttft is None else _ms(self.ttft),
            "e2el_ms": _ms(self.e2el),
            "itl_ms": [_ms(gap) for gap in self.gaps],
            "chunks": self.chunks,
            "output_tokens": self.output_tokens,
        }


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


@attrs.frozen(slots=True)
class Distribution:
    """Mean, median, standard deviation and percentiles of some durations, in milliseconds."""

    count: int
    mean: float
    median: float
    std: float
    percentiles: tuple[tuple[int, float], ...]

    @classmethod
    def of_seconds(cls, values: Iterable[float]) -> Distribution:
        ordered = sorted(value * 1000.0 for value in values)
        count = len(ordered)
        if not count:
            return cls(0, math.nan, math.nan, math.nan, tuple((p, math.nan) for p in PERCENTILES))
        mean = math.fsum(ordered) / count
        variance = math.fsum((value - mean) ** 2 for value in ordered) / count
        return cls(
            count=count,
            mean=mean,
            median=percentile(ordered, 50),
            std=math.sqrt(variance),
            percentiles=tuple((p, percentile(ordered, p)) for p in PERCENTILES),
        )

    def at(self, percent: int) -> float:
        return dict(self.percentiles)[percent]

    def fields(self, name: str) -> dict[str, float | None]:
        """`mean_{name}_ms`, `median_...`, `std_...` and `p{N}_{name}_ms` (None for no values)."""
        values: dict[str, float | None] = {
            f"mean_{name}_ms": _finite(self.mean),
            f"median_{name}_ms": _finite(self.median),
            f"std_{name}_ms": _finite(self.std),
        }
        for percent, value in self.percentiles:
            values[f"p{percent}_{name}_ms"] = _finite(value)
        return values


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


@attrs.frozen(slots=True)
class RunSummary:
    """What one run measured.

    Latencies count only the requests that succeeded; `chunk_throughput` and the CPU figure
    count every chunk received (those of failed requests too: the client did that work).
    `cpu_seconds` is the client process's CPU time over the run, `peak_rss_mb` its peak
    resident memory so far.
    """

    label: dict[str, Any]
    duration: float
    completed: int
    failed: int
    errors: dict[str, int]
    total_chunks: int
    total_output_tokens: int
    requests_with_usage: int
    ttft: Distribution
    itl: Distribution
    e2el: Distribution
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def request_throughput(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0

    @property
    def chunk_throughput(self) -> float:
        return self.total_chunks / self.duration if self.duration > 0 else 0.0

    @property
    def output_throughput(self) -> float:
        return self.total_output_tokens / self.duration if self.duration > 0 else 0.0

    @property
    def cpu_s_per_1k_chunks(self) -> float | None:
        if not self.total_chunks:
            return None
        return self.cpu_seconds / self.total_chunks * 1000.0

    @property
    def cpu_utilization(self) -> float:
        """The client's CPU time over the wall time: 1.0 is one core kept busy."""
        return self.cpu_seconds / self.duration if self.duration > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The run as a flat JSON object."""
        per_1k = self.cpu_s_per_1k_chunks
        return {
            **self.label,
            "duration": round(self.duration, 6),
            "completed": self.completed,
            "failed": self.failed,
            "errors": dict(self.errors),
            "total_chunks": self.total_chunks,
            "total_output_tokens": self.total_output_tokens,
            "requests_with_usage": self.requests_with_usage,
            "request_throughput": round(self.request_throughput, 4),
            "chunk_throughput": round(self.chunk_throughput, 4),
            "output_throughput": round(self.output_throughput, 4),
            **self.ttft.fields("ttft"),
            **self.itl.fields("itl"),
            **self.e2el.fields("e2el"),
            "cpu_seconds": round(self.cpu_seconds, 6),
            "cpu_s_per_1k_chunks": None if per_1k is None else round(per_1k, 6),
            "client_cpu_utilization": round(self.cpu_utilization, 4),
            "peak_rss_mb": round(self.peak_rss_mb, 2),
        }


def summarize(
    records: Sequence[RequestRecord],
    *,
    duration: float,
    cpu_seconds: float,
    peak_rss_mb: float,
    label: dict[str, Any] | None = None,
) -> RunSummary:
    """The statistics of the measured `records` of one run."""
    succeeded = [record for record in records if record.ok]
    errors = Counter(record.status for record in records if not record.ok)
    with_usage = [record.output_tokens for record in succeeded if record.output_tokens is not None]
    return RunSummary(
        label=dict(label or {}),
        duration=duration,
        completed=len(succeeded),
        failed=len(records) - len(succeeded),
        errors=dict(sorted(errors.items())),
        total_chunks=sum(record.chunks for record in records),
        total_output_tokens=sum(with_usage),
        requests_with_usage=len(with_usage),
        ttft=Distribution.of_seconds(r.ttft for r in succeeded if r.ttft is not None),
        itl=Distribution.of_seconds(gap for record in succeeded for gap in record.gaps),
        e2el=Distribution.of_seconds(record.e2el for record in succeeded),
        cpu_seconds=cpu_seconds,
        peak_rss_mb=peak_rss_mb,
    )
