"""Fan-out throughput and memory against the mock server running in separate processes.

Usage: .venv/bin/python -m benchmarks.bench_fanout [--mock-workers N] [--scale F] [--json PATH]
(from the checkout's root)

Each run is one `fan_out_as_completed` of DashScope stream requests through one shared Pool,
in a fresh child process (so that its peak RSS is its own), against `spawn_mock_workers`
(the mock in N other processes); the table keeps the best of --repeats by requests/s and
counts the errors of all. Runs:
  * throughput at concurrency 1, 16, 256 and 2048: the mock answers at full speed (10 chunks of
    24 characters per request), so the figures are the client's requests/s and chunks/s;
  * the same concurrency (256) with 5x the jobs: peak RSS must not grow with the number of
    jobs, only with the concurrency (workers pull jobs lazily from a generator);
  * 5,000 concurrent streams: paced by the mock (3 chunks at 1 per second, so each stream
    lasts 3 s or more) so that every stream is open at once; must end with no errors. Its time
    to first chunk includes the mock's 1 s wait before the first event.
Peak RSS is the child's `ru_maxrss`; the baseline is its RSS once the pool and client exist,
before the fan-out. RSS per stream = (peak - baseline) / most streams open at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import sys
import time
from collections.abc import Iterator
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

import llmstreams
from llmstreams.fanout import Job
from llmstreams.mock import BEHAVIOUR_HEADER, spawn_mock_workers

RESULTS = Path(__file__).resolve().parent / "results" / "fanout.json"
MODEL = "billa-7b-sft-v1"
PACED = "answer_chars=72; chunks_per_second=1"


def jobs(client: llmstreams.DashScopeClient, count: int, behaviour: str | None) -> Iterator[Job]:
    headers = {BEHAVIOUR_HEADER: behaviour} if behaviour else None
    for index in range(count):
        yield partial(client.stream_generate, f"question {index}", model=MODEL, extra_headers=headers)


async def measure(url: str, concurrency: int, requests: int, behaviour: str | None) -> dict[str, Any]:
    timeout = llmstreams.Timeout(connect=60.0)
    async with llmstreams.Pool(timeout=timeout, max_retries=0) as pool:
        client = llmstreams.DashScopeClient(api_key="sk-bench-key", base_url=url, pool=pool)
        pool.session()
        baseline = psutil.Process().memory_info().rss
        most_open = 0

        def on_chunk(index: int, chunk: llmstreams.Chunk) -> None:
            nonlocal most_open
            open_now = pool.stats().open_streams
            if open_now > most_open:
                most_open = open_now

        stats = llmstreams.FanOutStats()
        started = time.perf_counter()
        async with llmstreams.fan_out_as_completed(
            jobs(client, requests, behaviour), concurrency=concurrency, on_chunk=on_chunk
        ) as outcomes:
            async for outcome in outcomes:
                stats.add(outcome)
        elapsed = time.perf_counter() - started
        left_open = pool.stats().open_streams
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    p50, p99 = stats.time_to_first_chunk(0.5), stats.time_to_first_chunk(0.99)
    return {
        "concurrency": concurrency,
        "requests": stats.requests,
        "paced": behaviour is not None,
        "succeeded": stats.succeeded,
        "errors": stats.failed,
        "errors_by_type": stats.errors_by_type,
        "chunks": stats.chunks,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(stats.requests / elapsed, 1),
        "chunks_per_s": round(stats.chunks / elapsed, 1),
        "ttft_p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "ttft_p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "most_open_streams": most_open,
        "streams_left_open": left_open,
        "baseline_rss_mib": round(baseline / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        # Below a few hundred streams the process's fixed growth (buffers, caches) dominates.
        "rss_per_stream_kib": (
            round((peak - baseline) / most_open / 1024, 1) if most_open >= 256 else None
        ),
    }


def child(url: str, concurrency: int, requests: int, behaviour: str | None, sender: Connection) -> None:
    sender.send(asyncio.run(measure(url, concurrency, requests, behaviour)))


def best_of(
    repeats: int, url: str, concurrency: int, requests: int, behaviour: str | None
) -> dict[str, Any]:
    """The run with the most requests/s of `repeats`; `errors` counts those of every run."""
    rows = [run_in_child(url, concurrency, requests, behaviour) for _ in range(repeats)]
    best = max(rows, key=lambda row: row["requests_per_s"])
    return {
        **best,
        "repeats": repeats,
        "errors": sum(row["errors"] for row in rows),
        "streams_left_open": max(row["streams_left_open"] for row in rows),
    }


def run_in_child(url: str, concurrency: int, requests: int, behaviour: str | None) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=child, args=(url, concurrency, requests, behaviour, sender))
    process.start()
    sender.close()
    result: dict[str, Any] = receiver.recv()
    process.join()
    return result


COLUMNS = (
    ("concurrency", "conc", 6), ("requests", "requests", 9), ("errors", "errors", 7),
    ("requests_per_s", "req/s", 9), ("chunks_per_s", "chunks/s", 10),
    ("ttft_p50_ms", "ttft p50", 9), ("ttft_p99_ms", "ttft p99", 9),
    ("most_open_streams", "max open", 9), ("peak_rss_mib", "peak MiB", 9),
    ("rss_per_stream_kib", "KiB/stream", 11),
)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["".join(f"{title:>{width}}" for _, title, width in COLUMNS) + "  run"]
    for row in rows:
        cells = "".join(
            f"{'-' if row[key] is None else row[key]!s:>{width}}" for key, _, width in COLUMNS
        )
        lines.append(f"{cells}  {row['run']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_fanout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mock-workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best is kept")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    def scaled(count: int) -> int:
        return max(1, int(count * args.scale))

    runs: list[tuple[str, int, int, str | None]] = [
        ("throughput", 1, scaled(500), None),
        ("throughput", 16, scaled(5_000), None),
        ("throughput", 256, scaled(10_000), None),
        ("throughput", 2048, scaled(10_000), None),
        ("flat memory: 5x the jobs", 256, scaled(50_000), None),
        ("5,000 concurrent streams", 5000, 5000, PACED),
    ]
    rows = []
    with spawn_mock_workers(args.mock_workers) as url:
        for name, concurrency, requests, behaviour in runs:
            print(f"{name}: concurrency {concurrency}, {requests} requests ...", file=sys.stderr, flush=True)
            row = {"run": name, **best_of(args.repeats, url, concurrency, requests, behaviour)}
            rows.append(row)
    print(table(rows))
    report = {
        "python": sys.version.split()[0],
        "cpus": psutil.cpu_count(),
        "mock_workers": args.mock_workers,
        "answer": "10 chunks of 24 characters per request",
        "runs": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")
    failed = [row for row in rows if row["errors"] or row["streams_left_open"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
