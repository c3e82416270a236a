"""Benchmark reports: the console table, the JSON document and the per-request JSONL file."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from llmstreams.bench.metrics import PERCENTILES, Distribution, RequestRecord, RunSummary

# Packages whose versions a report records when they are installed.
REPORTED_PACKAGES: tuple[str, ...] = (
    "llmstreams", "aiohttp", "aiohttp-sse-client2", "qianfan", "dashscope",
)


def environment(packages: Iterable[str] = REPORTED_PACKAGES) -> dict[str, Any]:
    """The machine and software a benchmark ran on."""
    versions: dict[str, str] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def cpu_model() -> str:
    """The processor's name as the OS reports it (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report_document(
    summaries: Sequence[RunSummary], *, config: Mapping[str, Any], env: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON report: `config`, `environment` and `runs` (one flat object per run).

    With a single run, that run's fields are also at the top level, where tools written for
    vLLM's benchmark_serving JSON look for them.
    """
    runs = [summary.to_json() for summary in summaries]
    document: dict[str, Any] = {}
    if len(runs) == 1:
        document.update(runs[0])
    document.update({
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": dict(config),
        "environment": dict(env),
        "runs": runs,
    })
    return document


def write_json(document: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_request_lines(
    runs: Iterable[tuple[Mapping[str, Any], Sequence[RequestRecord]]], output: IO[str]
) -> int:
    """One JSON line per measured request, each with its run's label; returns the line count."""
    count = 0
    for label, records in runs:
        for record in records:
            output.write(json.dumps({**label, **record.to_json()}, ensure_ascii=False))
            output.write("\n")
            count += 1
    return count


def run_title(summary: RunSummary) -> str:
    label = summary.label
    if label.get("mode") == "open":
        load = f"open loop at {label['request_rate']:g} requests/s (Poisson)"
    else:
        load = f"closed loop, concurrency {label.get('concurrency')}"
    workers = label.get("mock_workers")
    if workers is None:
        server = "given server"
    elif workers == 0:
        server = "mock in this process (its CPU counts as the client's)"
    else:
        server = f"{workers} mock worker process{'es' if workers != 1 else ''}"
    model = label.get("endpoint") or label.get("model")
    kind = "stream" if label.get("stream", True) else "no stream"
    return f"{load}; {server}; {label.get('provider')} {model}, {kind}"


def format_run(summary: RunSummary) -> str:
    """A block of text describing one run."""
    per_1k = summary.cpu_s_per_1k_chunks
    errors = ", ".join(f"{name} {count}" for name, count in summary.errors.items()) or "none"
    header = "".join(f"{name:>10}" for name in ["mean", *(f"p{p}" for p in PERCENTILES)])
    lines = [
        f"== {run_title(summary)} ==",
        f"requests      {summary.completed} ok, {summary.failed} failed in {summary.duration:.2f} s",
        f"throughput    {summary.request_throughput:,.1f} requests/s, "
        f"{summary.chunk_throughput:,.0f} chunks/s, "
        f"{_tokens_per_second(summary)}",
        f"latency ms    {header}",
        _latency_line("TTFT", summary.ttft),
        _latency_line("inter-chunk", summary.itl),
        _latency_line("end-to-end", summary.e2el),
        f"client CPU    {summary.cpu_seconds:.2f} s"
        + ("" if per_1k is None else f", {per_1k:.3f} s per 1,000 chunks")
        + f"; peak RSS {summary.peak_rss_mb:.1f} MiB",
        f"errors        {errors}",
    ]
    return "\n".join(lines)


def _tokens_per_second(summary: RunSummary) -> str:
    if not summary.requests_with_usage:
        return "output tokens/s unknown (no usage reported)"
    return f"{summary.output_throughput:,.0f} output tokens/s"


def _latency_line(name: str, distribution: Distribution) -> str:
    values = [distribution.mean, *(distribution.at(p) for p in PERCENTILES)]
    return f"  {name:<12}" + "".join(f"{_number(value):>10}" for value in values)


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


SWEEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("workers", "mock_workers"),
    ("conc", "concurrency"),
    ("rate", "request_rate"),
    ("req/s", "request_throughput"),
    ("chunks/s", "chunk_throughput"),
    ("tok/s", "output_throughput"),
    ("TTFT p50", "median_ttft_ms"),
    ("TTFT p99", "p99_ttft_ms"),
    ("ITL p99", "p99_itl_ms"),
    ("E2E p50", "median_e2el_ms"),
    ("E2E p99", "p99_e2el_ms"),
    ("failed", "failed"),
    ("CPU s/1k", "cpu_s_per_1k_chunks"),
)


def format_table(summaries: Sequence[RunSummary]) -> str:
    """One row per run (latencies in ms), for comparing the runs of a sweep."""
    rows = [[name for name, _ in SWEEP_COLUMNS]]
    for summary in summaries:
        fields = summary.to_json()
        rows.append([_cell(fields.get(key)) for _, key in SWEEP_COLUMNS])
    widths = [max(len(row[column]) for row in rows) for column in range(len(SWEEP_COLUMNS))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def print_run(summary: RunSummary, output: IO[str] | None = None) -> None:
    print(format_run(summary), end="\n\n", file=output or sys.stdout, flush=True)
