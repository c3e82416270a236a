"""What the OpenTelemetry instrumentation costs: client CPU per chunk and per request, side by side.

Usage: .venv/bin/python benchmarks/bench_telemetry.py [--rounds 7] [--out benchmarks/results]

Four ways of running the same client, each in a fresh process, against the pre-built server of
`client_bound.py` (another process, answers cost it almost nothing):

  today    llmstreams as it was before the instrumentation (`git archive` of the commit before
           llmstreams/telemetry.py was added)
  absent   this llmstreams, with OpenTelemetry not importable
  off      this llmstreams, with the OpenTelemetry API imported but no SDK set up
  on       this llmstreams, with the SDK set up: a TracerProvider whose BatchSpanProcessor hands
           spans to an exporter that drops them, and a MeterProvider with a metric reader

Each process measures `time.process_time` (every thread: the SDK's export thread counts) for
long answers (STREAMS concurrent streams of LONG_CHUNKS chunks: CPU per chunk) and short ones
(STREAMS workers, SHORT_REQUESTS requests of SHORT_CHUNKS chunks: CPU per request), for Qianfan
v1 and the OpenAI-compatible dialect, REPEATS times each (the median counts). The order of the four is alternated and reversed every
round; each figure is the median over rounds of the ratio to `today` of the same round, with the
lowest and highest ratio as the spread. Each process of this llmstreams also times the
telemetry's own calls for one request alone (`hooks_us_per_request`: describe, start, first
chunk, end), which is what the instrumentation adds to every request, without the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MODES = ("today", "absent", "off", "on")
VENDORS = ("qianfan", "openai")
STREAMS = 8
LONG_CHUNKS = 4000
SHORT_CHUNKS = 10
SHORT_REQUESTS = 800
# Measurements per process (their median is the process's figure).
REPEATS = 3
# The telemetry's own calls, timed alone this many times per process.
HOOK_CALLS = 20_000
BENCH_URL = "http://127.0.0.1:8000/v1/chat/completions"
TOKEN = "bench-token"


# --------------------------------------------------------------------------- one process


def set_up(mode: str) -> None:
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    elif mode == "off":
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    elif mode == "on":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Dropping(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropping()))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def client_for(vendor: str, server: str, chunks: int, pool: Any) -> Any:
    import llmstreams

    url = f"{server}/n{chunks}"
    if vendor == "qianfan":
        return llmstreams.QianfanClient(access_token=TOKEN, base_url=url, pool=pool)
    return llmstreams.OpenAICompatibleClient(api_key=TOKEN, base_url=url + "/v1", pool=pool)


async def read_one(client: Any, vendor: str) -> int:
    messages = [{"role": "user", "content": "hi"}]
    model = "ERNIE-Speed-8K" if vendor == "qianfan" else "bench-model"
    count = 0
    async with client.stream_chat(messages, model=model) as stream:
        async for _ in stream:
            count += 1
    return count


async def measure(vendor: str, server: str) -> dict[str, float]:
    import llmstreams

    async with llmstreams.Pool(max_retries=0, keepalive_timeout=600.0) as pool:
        long_client = client_for(vendor, server, LONG_CHUNKS, pool)
        short_client = client_for(vendor, server, SHORT_CHUNKS, pool)
        # Warm: connections open, code paths taken.
        await asyncio.gather(*(read_one(short_client, vendor) for _ in range(STREAMS * 4)))
        await asyncio.gather(*(read_one(long_client, vendor) for _ in range(STREAMS)))

        async def worker() -> int:
            return sum([await read_one(short_client, vendor) for _ in range(SHORT_REQUESTS // STREAMS)])

        requests = STREAMS * (SHORT_REQUESTS // STREAMS)
        per_chunk, per_request = [], []
        for _ in range(REPEATS):
            started = time.process_time()
            chunks = sum(await asyncio.gather(*(read_one(long_client, vendor) for _ in range(STREAMS))))
            per_chunk.append((time.process_time() - started) / chunks * 1e6)
            started = time.process_time()
            short_chunks = sum(await asyncio.gather(*(worker() for _ in range(STREAMS))))
            per_request.append((time.process_time() - started) / requests * 1e6)
            # Every chunk of every answer was read (a dialect may add a last chunk of its own).
            assert chunks >= STREAMS * LONG_CHUNKS and short_chunks >= requests * SHORT_CHUNKS
    return {
        "long_us_per_chunk": statistics.median(per_chunk),
        "short_us_per_request": statistics.median(per_request),
    }


def hooks_us(vendor: str) -> float:
    """CPU of the telemetry's own calls for one request, measured alone (µs): what the
    instrumentation adds per request, free of the noise of the rest of the request."""
    from llmstreams import Pool, telemetry
    from llmstreams.types import Chunk, CompletionBuilder, Usage

    class Exchange:
        provider = vendor
        telemetry = None

    pool, exchange = Pool(), Exchange()
    builder = CompletionBuilder()
    builder.add(Chunk(text="x", sentence_id=0, is_end=True, usage=Usage(1, 2, 3), id="as-1"))
    params = {"temperature": 0.5, "top_p": 0.9}

    def one_request() -> None:
        exchange.telemetry = telemetry.describe("chat", "bench-model", params, url=BENCH_URL)
        record = telemetry.start(pool, exchange)  # type: ignore[arg-type]
        if record is not None:
            record.first_chunk(time.monotonic())
            record.end(builder, None, last_read_at=time.monotonic())

    for _ in range(HOOK_CALLS // 10):
        one_request()
    started = time.process_time()
    for _ in range(HOOK_CALLS):
        one_request()
    return (time.process_time() - started) / HOOK_CALLS * 1e6


def child(mode: str, server: str) -> None:
    set_up(mode)
    import llmstreams

    results: dict[str, Any] = {vendor: asyncio.run(measure(vendor, server)) for vendor in VENDORS}
    if mode != "today":
        results["hooks_us_per_request"] = hooks_us("qianfan")
    results["llmstreams"] = llmstreams.__file__
    print(json.dumps(results))


# --------------------------------------------------------------------------- the rounds


def baseline_tree(destination: Path) -> str:
    """llmstreams of the commit before the instrumentation, unpacked under `destination`."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "llmstreams/telemetry.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    revision = f"{added[-1]}^"
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "llmstreams"], cwd=REPO, capture_output=True,
        check=True,
    ).stdout
    archive_path = destination / "today.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(destination, filter="data")
    return revision


def run_child(mode: str, server: str, today: Path) -> dict[str, Any]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(today if mode == "today" else REPO)
    output = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--server", server],
        env=environment, cwd=today if mode == "today" else REPO, capture_output=True, text=True,
        timeout=600,
    )
    if output.returncode != 0:
        raise RuntimeError(f"{mode}: {output.stderr}")
    results: dict[str, Any] = json.loads(output.stdout.splitlines()[-1])
    # The editable install of this tree must not stand in for the one of `today`.
    assert results.pop("llmstreams").startswith(str(today)) == (mode == "today"), mode
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--server")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.server)
        return

    sys.path.insert(0, str(REPO / "benchmarks"))
    from client_bound import prebuilt_server

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch, prebuilt_server() as server:
        revision = baseline_tree(Path(scratch))
        for number in range(args.rounds):
            order = list(MODES) if number % 2 == 0 else list(reversed(MODES))
            if number % 4 >= 2:
                order = order[1:] + order[:1]
            measured = {mode: run_child(mode, server, Path(scratch)) for mode in order}
            rounds.append(measured)
            print(f"round {number + 1}/{args.rounds} ({' '.join(order)})", file=sys.stderr)
    summary = summarize(rounds)
    report = {
        "baseline": revision, "rounds": args.rounds, "streams": STREAMS,
        "long_chunks": LONG_CHUNKS, "short_chunks": SHORT_CHUNKS,
        "short_requests": SHORT_REQUESTS, "summary": summary, "raw": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "telemetry.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(summary)
    (args.out / "telemetry.md").write_text(table)
    print(table)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for vendor in VENDORS:
        for figure in ("long_us_per_chunk", "short_us_per_request"):
            today = [measured["today"][vendor][figure] for measured in rounds]
            row: dict[str, Any] = {"today_median": statistics.median(today)}
            for mode in MODES[1:]:
                ratios = [
                    measured[mode][vendor][figure] / measured["today"][vendor][figure]
                    for measured in rounds
                ]
                row[mode] = {
                    "median_ratio": statistics.median(ratios), "low": min(ratios), "high": max(ratios),
                    "median": statistics.median(measured[mode][vendor][figure] for measured in rounds),
                }
            summary[f"{vendor} {figure}"] = row
    summary["hooks_us_per_request"] = {
        mode: statistics.median(measured[mode]["hooks_us_per_request"] for measured in rounds)
        for mode in MODES[1:]
    }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| vendor, figure | today (µs) | absent / today | off / today | on / today |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        if name == "hooks_us_per_request":
            continue
        cells = [
            f"{row[mode]['median_ratio']:.3f} ({row[mode]['low']:.3f} to {row[mode]['high']:.3f})"
            for mode in MODES[1:]
        ]
        lines.append(f"| {name} | {row['today_median']:.2f} | " + " | ".join(cells) + " |")
    hooks = summary["hooks_us_per_request"]
    lines.append(
        "\nThe telemetry's own calls per request, timed alone (µs, median): "
        + ", ".join(f"{mode} {hooks[mode]:.2f}" for mode in MODES[1:])
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
