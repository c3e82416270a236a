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

import attrs

from llmstreams.bench.metrics import Distribution, RequestRecord, RunSummary, percent_name

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


def load_description(label: Mapping[str, Any]) -> str:
    """The load of a run in words: "closed loop, 64 streams", "open loop, 20 requests/s
    (Poisson), at most 8 in flight", "trace replay"; with the ramp-up when there was one."""
    cap, rate = label.get("concurrency"), label.get("request_rate")
    if label.get("mode") == "trace":
        load = "trace replay"
    elif rate is None:
        load = f"closed loop, {cap} stream{'s' if cap != 1 else ''}"
    else:
        burstiness = label.get("burstiness") or 1.0
        shape = "Poisson" if burstiness == 1.0 else f"gamma, burstiness {burstiness:g}"
        load = f"open loop, {rate:g} requests/s ({shape})"
    if cap is not None and label.get("mode") != "closed":
        load += f", at most {cap} in flight"
    if label.get("ramp_up"):
        load += f", {label['ramp_up']:g} s ramp-up"
    return load


def server_description(label: Mapping[str, Any]) -> str:
    """Where the requests went: the mock (and how it ran) or the given server."""
    workers = label.get("mock_workers")
    if workers is None:
        return f"server {label['server']}" if label.get("server") else "given server"
    if workers == 0:
        return "mock in this process"
    return f"mock, {workers} worker process{'es' if workers != 1 else ''}"


def run_title(summary: RunSummary) -> str:
    """Target, provider, model and load of a run, in one line."""
    label = summary.label
    model = label.get("endpoint") or label.get("model")
    kind = "" if label.get("stream", True) else ", no stream"
    processes = f", {summary.processes} client processes" if summary.processes > 1 else ""
    return (
        f"{server_description(label)}; {label.get('provider')} {model}{kind}; "
        f"{load_description(label)}{processes}"
    )


def format_run(summary: RunSummary) -> str:
    """A block of text describing one run (times in ms, rates per second)."""
    per_chunk = summary.cpu_us_per_chunk
    errors = ", ".join(f"{name} {count}" for name, count in summary.errors.items()) or "none"
    percents = [percent for percent, _ in summary.ttft.percentiles]
    header = "".join(f"{name:>10}" for name in ["mean", *(percent_name(p) for p in percents)])
    lines = [
        f"== {run_title(summary)} ==",
        f"requests      {summary.completed:,} ok, {summary.failed:,} failed in {summary.duration:.2f} s",
        f"throughput    {summary.request_throughput:,.2f} requests/s, "
        f"{summary.chunk_throughput:,.1f} chunks/s, {_tokens_per_second(summary)}",
    ]
    goodput = summary.request_goodput
    if goodput is not None:
        slos = ", ".join(f"{name} <= {limit:g} ms" for name, limit in summary.slos.items())
        lines.append(f"goodput       {goodput:,.2f} requests/s within {slos}")
    lines += [
        f"latency (ms)  {header}",
        _latency_line("TTFT", summary.ttft),
        _latency_line("TPOT", summary.tpot),
        _latency_line("ITL (chunk)", summary.itl),
        _latency_line("E2EL", summary.e2el),
    ]
    if summary.label.get("mode") != "closed":
        lines += [
            _latency_line("client queue", summary.client_queue),
            _latency_line("E2EL + queue", summary.e2el_including_queue),
        ]
    if summary.harness_error_known:
        lines += [
            _latency_line("TTFT error", summary.ttft_error),
            _latency_line("ITL error", summary.itl_error),
        ]
    lines += [
        f"client        {summary.cpu_utilization:.0%} of a core"
        + ("" if per_chunk is None else f", {per_chunk:,.1f} µs CPU per chunk")
        + f"; event-loop lag p99 {_number(summary.loop_lag.at(99))} ms"
        + f"; peak RSS {summary.peak_rss_mb:,.1f} MiB"
        + connections_description(summary)
        + f"; on {summary.event_loop}, chunks timed by the {summary.chunk_clock} clock"
        + ("" if not summary.gc_collections
           else f"; garbage collected {summary.gc_collections:,} times during the run"),
        "client-bound  " + ("; ".join(summary.client_bound_reasons) or "no"),
        "shared reads  " + (summary.shared_reads_reason or "no"),
        f"errors        {errors}",
    ]
    return "\n".join(lines)


def connections_description(summary: RunSummary) -> str:
    """The client's connections: "; 16 connections, all opened in the warm-up" (kept alive
    through the run), "; 256 connections: 20 opened in the warm-up, 236 during the run"."""
    opened, warmed = summary.connections_opened, summary.connections_warmed
    if opened is None:
        return ""
    if warmed is None:
        return f"; {opened:,} connections opened during the run"
    total = opened + warmed
    plural = "s" if total != 1 else ""
    if not opened:
        return f"; {total:,} connection{plural}, all opened in the warm-up"
    if not warmed:
        return f"; {total:,} connection{plural}, all opened during the run"
    return f"; {total:,} connections: {warmed:,} opened in the warm-up, {opened:,} during the run"


def _tokens_per_second(summary: RunSummary) -> str:
    if not summary.requests_with_usage:
        return "output tokens/s unknown (no usage reported)"
    return (
        f"{summary.output_throughput:,.1f} output tokens/s, "
        f"{summary.total_token_throughput:,.1f} total tokens/s"
    )


def _latency_line(name: str, distribution: Distribution) -> str:
    values = [distribution.mean, *(value for _, value in distribution.percentiles)]
    return f"  {name:<12}" + "".join(f"{_number(value):>10}" for value in values)


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.2f}"


@attrs.frozen(slots=True)
class Column:
    """A column of the summary table: its heading, unit, JSON field and number format."""

    heading: str
    unit: str
    field: str
    format: str = ",.2f"


SWEEP_COLUMNS: tuple[Column, ...] = (
    Column("workers", "", "mock_workers", "d"),
    Column("conc", "", "concurrency", "d"),
    Column("rate", "req/s", "request_rate", ",.2f"),
    Column("req/s", "", "request_throughput"),
    Column("chunks/s", "", "chunk_throughput", ",.1f"),
    Column("tok/s", "", "output_throughput", ",.1f"),
    Column("TTFT p50", "ms", "median_ttft_ms"),
    Column("TTFT p99", "ms", "p99_ttft_ms"),
    Column("ITL p50", "ms", "median_itl_ms"),
    Column("ITL p99", "ms", "p99_itl_ms"),
    Column("TPOT p50", "ms", "median_tpot_ms"),
    Column("E2EL p50", "ms", "median_e2el_ms"),
    Column("E2EL p99", "ms", "p99_e2el_ms"),
    Column("failed", "", "failed", ",d"),
    Column("CPU/chunk", "µs", "cpu_us_per_chunk", ",.1f"),
    Column("ITL err p99", "ms", "p99_harness_itl_error_ms"),
    Column("client", "", "client_bound"),
)


def format_table(summaries: Sequence[RunSummary]) -> str:
    """One row per run, every number of a column with the same precision and its unit under
    the heading; columns empty in every run are left out."""
    documents = [summary.to_json() for summary in summaries]
    columns = [
        column for column in SWEEP_COLUMNS
        if any(document.get(column.field) is not None for document in documents)
    ]
    rows = [[column.heading for column in columns], [column.unit for column in columns]]
    rows += [[_cell(column, document.get(column.field)) for column in columns] for document in documents]
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _cell(column: Column, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "bound" if value else "ok"
    return format(value, column.format)


def print_run(summary: RunSummary, output: IO[str] | None = None) -> None:
    print(format_run(summary), end="\n\n", file=output or sys.stdout, flush=True)


# What `llmstreams bench compare` sets side by side: (JSON field, label, unit).
COMPARED: tuple[tuple[str, str, str], ...] = (
    ("completed", "completed", "requests"),
    ("failed", "failed", "requests"),
    ("request_throughput", "request throughput", "req/s"),
    ("request_goodput", "request goodput", "req/s"),
    ("output_throughput", "output throughput", "tok/s"),
    ("total_token_throughput", "total token throughput", "tok/s"),
    ("chunk_throughput", "chunk throughput", "chunks/s"),
    ("median_ttft_ms", "TTFT p50", "ms"),
    ("p99_ttft_ms", "TTFT p99", "ms"),
    ("median_tpot_ms", "TPOT p50", "ms"),
    ("p99_tpot_ms", "TPOT p99", "ms"),
    ("median_itl_ms", "ITL p50", "ms"),
    ("p99_itl_ms", "ITL p99", "ms"),
    ("median_e2el_ms", "E2EL p50", "ms"),
    ("p99_e2el_ms", "E2EL p99", "ms"),
    ("p99_client_queue_ms", "client queue p99", "ms"),
    ("cpu_us_per_chunk", "client CPU per chunk", "µs"),
    ("client_cpu_utilization", "client CPU", "cores"),
    ("p99_loop_lag_ms", "event-loop lag p99", "ms"),
    ("peak_rss_mb", "peak RSS", "MiB"),
    ("connections_opened_in_warmup", "connections opened in warm-up", "connections"),
    ("connections_opened", "connections opened in the run", "connections"),
    ("p99_harness_itl_error_ms", "harness ITL error p99", "ms"),
)


def compare_documents(first: Mapping[str, Any], second: Mapping[str, Any]) -> str:
    """Two JSON reports side by side, run by run, with the ratio second / first."""
    first_runs, second_runs = first.get("runs") or [], second.get("runs") or []
    if not first_runs or not second_runs:
        raise ValueError("both reports need runs (files written by llmstreams bench --json)")
    blocks = []
    for index, (a, b) in enumerate(zip(first_runs, second_runs, strict=False)):
        rows = [["metric", "unit", "A", "B", "B/A"]]
        for field, name, unit in COMPARED:
            x, y = a.get(field), b.get(field)
            if x is None and y is None:
                continue
            rows.append([name, unit, _compared(x), _compared(y), _ratio(x, y)])
        for field in ("client_bound",):
            rows.append(["client-bound", "", _bound(a.get(field)), _bound(b.get(field)), ""])
        widths = [max(len(row[column]) for row in rows) for column in range(5)]
        table = "\n".join(
            "  ".join(
                cell.ljust(width) if column < 2 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        )
        blocks.append(
            f"== run {index + 1} ==\nA: {_describe(a)}\nB: {_describe(b)}\n{table}"
        )
    if len(first_runs) != len(second_runs):
        blocks.append(
            f"(A has {len(first_runs)} runs, B {len(second_runs)}: compared the first "
            f"{min(len(first_runs), len(second_runs))})"
        )
    return "\n\n".join(blocks)


def _describe(run: Mapping[str, Any]) -> str:
    model = run.get("endpoint") or run.get("model")
    return f"{server_description(run)}; {run.get('provider')} {model}; {load_description(run)}"


def _compared(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.2f}"


def _ratio(first: Any, second: Any) -> str:
    if not isinstance(first, int | float) or not isinstance(second, int | float) or not first:
        return "-"
    return f"{second / first:.2f}x"


def _bound(value: Any) -> str:
    return "-" if value is None else "yes" if value else "no"
