"""How wrong is the harness's clock? Its own error against the ruler, next to a bare aiohttp loop.

Usage: .venv/bin/python -m benchmarks.bench_accuracy [--streams 16,64,256,1000,2000]
           [--rounds 3] [--seconds 8] [--anchors-venv .anchors] [--json PATH]
(from the checkout's root)

The ruler (`llmstreams.bench.ruler`, in a process of its own) streams every answer on a
precise schedule (first event after --ttft, then one every --gap; answer lengths spread by
--spread around --chunks) and writes into each event the `time.monotonic()` at which it really
sent it. Each client runs in a fresh process of its own, keeps N streams going for --seconds,
and notes when each event arrived on the same clock, so its error is known per event:

  TTFT error = |observed first-event arrival - its true send time|
  ITL error  = |observed gap - true gap| for each pair of consecutive events

Clients, alternated within each round (the table keeps the median of the rounds and the
spread, min-max):
  * llmstreams: `llmstreams bench`'s load generator (`run_load` + `ClientTarget`) as the
    command runs it: on uvloop where installed, without automatic garbage collection during
    the run, chunk times from `ChunkStream.last_read_at` (when the connection received the
    bytes), streams started over --ramp-up (default: one answer's length) so that they do not
    run in waves;
  * aiohttp-bare: the usual hand-written loop on asyncio's loop (`benchmarks.baselines`'
    `line_stream`: `async for line in response.content`, the time taken after `json.loads` of
    each `data:` line), every stream started at once;
  * aiohttp-bare-ramped: the same loop with the harness's ramp-up, to tell the effect of the
    ramp from that of where the timestamp is taken;
  * aiohttp-bare-uvloop: the same loop as aiohttp-bare on uvloop, to tell the effect of the
    loop from the rest.
With --anchors-venv, GuideLLM and AIPerf (installed in that separate venv, never in the
project's) are run against the same ruler at the same concurrency; their own reported ITL and
TTFT percentiles are recorded next to the true ones (the ruler's pace plus its lateness).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.accuracy_anchors import ANCHORS, run_anchor
from benchmarks.baselines import line_stream
from llmstreams import OpenAICompatibleClient, Pool
from llmstreams.bench import ClientTarget, LoadPlan, RequestRecord, Workload, run_load, summarize
from llmstreams.bench.eventloop import default_event_loop, run_on
from llmstreams.bench.metrics import SENT_AT_FIELD
from llmstreams.bench.report import environment
from llmstreams.bench.ruler import RESET_PATH, STATS_PATH, Pace, spawn_ruler

RESULTS = Path(__file__).resolve().parent / "results" / "bench_accuracy.json"
CLIENTS = ("llmstreams", "aiohttp-bare", "aiohttp-bare-ramped", "aiohttp-bare-uvloop")
CHAT_PATH = "/v1/chat/completions"
BODY = {"model": "ruler", "messages": [{"role": "user", "content": "tick"}], "stream": True}


def ruler_get(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


async def run_llmstreams(url: str, streams: int, seconds: float, ramp_up: float) -> dict[str, Any]:
    async with Pool() as pool:
        client = OpenAICompatibleClient(base_url=url + "/v1", pool=pool)
        workload = Workload(provider="openai", model="ruler", prompt="tick")
        target = ClientTarget(client, workload, reads_sent_at=True)
        plan = LoadPlan(concurrency=streams, ramp_up=ramp_up, duration=seconds)
        measurement = await run_load(target, plan)
    return summarize(
        measurement.records, duration=measurement.duration, cpu_seconds=measurement.cpu_seconds,
        peak_rss_mb=measurement.peak_rss_mb, loop_lags=measurement.loop_lags,
    ).to_json()


async def run_bare(url: str, streams: int, seconds: float, ramp_up: float) -> dict[str, Any]:
    """The hand-written loop: nothing of llmstreams but the statistics afterwards."""
    now = time.monotonic
    records: list[RequestRecord] = []
    lags: list[float] = []
    cpu_before, origin = time.process_time(), now()
    deadline = origin + seconds

    async def one_request(session: aiohttp.ClientSession) -> None:
        times: list[float] = []
        sent: list[float] = []
        start = now()
        async for event in line_stream(session, url + CHAT_PATH, json=BODY):
            times.append(now())
            sent.append(event[SENT_AT_FIELD])
        end = now()
        records.append(RequestRecord(
            index=len(records), start=start - origin, ttft=times[0] - start, e2el=end - start,
            gaps=tuple(b - a for a, b in itertools.pairwise(times)), chunks=len(times),
            output_tokens=None, status="ok",
            send_errors=tuple(t - s for t, s in zip(times, sent, strict=True)),
        ))

    async def worker(session: aiohttp.ClientSession, delay: float) -> None:
        await asyncio.sleep(delay)
        while now() < deadline:
            await one_request(session)

    async def watch() -> None:
        while True:
            due = now() + 0.005
            await asyncio.sleep(0.005)
            lags.append(max(0.0, now() - due))

    watcher = asyncio.create_task(watch())
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, ramp_up * i / streams) for i in range(streams)))
    watcher.cancel()
    return summarize(
        records, duration=now() - origin, cpu_seconds=time.process_time() - cpu_before,
        peak_rss_mb=0.0, loop_lags=lags,
    ).to_json()


def child(client: str, url: str, streams: int, seconds: float, ramp_up: float, out: Any) -> None:
    runners: dict[str, tuple[str, Callable[[], Any]]] = {
        "llmstreams": (default_event_loop(), lambda: run_llmstreams(url, streams, seconds, ramp_up)),
        "aiohttp-bare": ("asyncio", lambda: run_bare(url, streams, seconds, 0.0)),
        "aiohttp-bare-ramped": ("asyncio", lambda: run_bare(url, streams, seconds, ramp_up)),
        "aiohttp-bare-uvloop": ("uvloop", lambda: run_bare(url, streams, seconds, 0.0)),
    }
    event_loop, runner = runners[client]
    out.send(run_on(event_loop, runner()))


def measure(client: str, url: str, streams: int, seconds: float, ramp_up: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    ruler_get(url, RESET_PATH)
    process = context.Process(target=child, args=(client, url, streams, seconds, ramp_up, send))
    process.start()
    result: dict[str, Any] = receive.recv()
    process.join()
    result["ruler"] = ruler_get(url, STATS_PATH)
    return result


KEPT = (
    "completed", "chunk_throughput", "median_itl_ms", "median_ttft_ms", "p99_ttft_ms", "client_cpu_utilization", "p99_loop_lag_ms",
    "median_harness_ttft_error_ms", "p99_harness_ttft_error_ms",
    "median_harness_itl_error_ms", "p99_harness_itl_error_ms",
    "p99_itl_ms", "p99_true_itl_ms", "client_bound",
)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key in KEPT:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if not values:
            kept[key] = None
        elif isinstance(values[0], bool):
            kept[key] = any(values)
        else:
            kept[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    lateness = [r["ruler"]["p99_lateness_ms"] for r in rounds if r["ruler"]["p99_lateness_ms"] is not None]
    kept["ruler_p99_lateness_ms"] = {
        "median": statistics.median(lateness), "min": min(lateness), "max": max(lateness),
    } if lateness else None
    return kept


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        median, low, high = value["median"], value["min"], value["max"]
        if low == high:
            return f"{median:,.1f}"
        return f"{median:,.1f} ({low:,.1f}-{high:,.1f})"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| streams | client | chunks/s | client CPU % of a core | loop lag p99 ms | TTFT err p50 ms "
        "| TTFT err p99 ms | ITL err p50 ms | ITL err p99 ms | observed ITL p99 ms "
        "| true ITL p99 ms | ruler late p99 ms | client-bound |"
    )
    lines = [header, "|" + "---|" * 13]
    for row in rows:
        m = row["median"]
        lines.append("| " + " | ".join([
            str(row["streams"]), row["client"], cell(m["chunk_throughput"]),
            cell(_percent(m["client_cpu_utilization"])), cell(m["p99_loop_lag_ms"]),
            cell(m["median_harness_ttft_error_ms"]), cell(m["p99_harness_ttft_error_ms"]),
            cell(m["median_harness_itl_error_ms"]), cell(m["p99_harness_itl_error_ms"]),
            cell(m["p99_itl_ms"]), cell(m["p99_true_itl_ms"]), cell(m["ruler_p99_lateness_ms"]),
            cell(m["client_bound"]),
        ]) + " |")
    return "\n".join(lines)


def _percent(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {key: number * 100 for key, number in value.items()}


def anchor_table(rows: list[dict[str, Any]], anchors: list[dict[str, Any]]) -> str:
    """Each anchor's own TTFT and ITL next to ours and to the truth, at the same streams."""
    ours = {row["streams"]: row["median"] for row in rows if row["client"] == "llmstreams"}
    lines = [
        "| streams | tool | status | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | ITL kind "
        "| true ITL p99 ms |",
        "|" + "---|" * 9,
    ]
    for row in rows:
        if row["client"] != "llmstreams":
            continue
        m = row["median"]
        lines.append("| " + " | ".join([
            str(row["streams"]), "llmstreams bench", "ok", cell(m["median_ttft_ms"]),
            cell(m["p99_ttft_ms"]), cell(m["median_itl_ms"]), cell(m["p99_itl_ms"]),
            "per chunk", cell(m["p99_true_itl_ms"]),
        ]) + " |")
        for found in anchors:
            if found["streams"] != row["streams"]:
                continue
            ttft, itl = found.get("ttft_ms") or {}, found.get("itl_ms") or {}
            lines.append("| " + " | ".join([
                str(found["streams"]), found["anchor"], found.get("status", "-"),
                _number(ttft.get("p50")), _number(ttft.get("p99")), _number(itl.get("p50")),
                _number(itl.get("p99")), found.get("itl_kind", "-"),
                cell(ours.get(found["streams"], {}).get("p99_true_itl_ms")),
            ]) + " |")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--streams", default="16,64,256,1000,2000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--ttft", type=float, default=0.1)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--ramp-up", type=float, help="seconds (default: one answer's length)")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--anchors-venv", type=Path, help="a venv with guidellm / aiperf installed")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    pace = Pace(ttft=args.ttft, gap=args.gap, chunks=args.chunks, spread=args.spread)
    ramp_up = args.ramp_up if args.ramp_up is not None else pace.ttft + pace.gap * pace.chunks
    clients = args.clients.split(",")
    rows: list[dict[str, Any]] = []
    anchors: list[dict[str, Any]] = []
    with spawn_ruler(pace) as url:
        for streams in (int(part) for part in args.streams.split(",")):
            rounds: dict[str, list[dict[str, Any]]] = {client: [] for client in clients}
            for number in range(args.rounds):
                order = clients if number % 2 == 0 else list(reversed(clients))
                for client in order:
                    result = measure(client, url, streams, args.seconds, ramp_up)
                    rounds[client].append(result)
                    print(f"{streams:>5} streams  {client:<20} round {number + 1}: ITL err p99 "
                          f"{result.get('p99_harness_itl_error_ms')} ms, TTFT err p99 "
                          f"{result.get('p99_harness_ttft_error_ms')} ms, CPU "
                          f"{result['client_cpu_utilization']:.2f}", flush=True)
            for client in clients:
                rows.append({"streams": streams, "client": client, "median": median_of(rounds[client]),
                             "rounds": rounds[client]})
            if args.anchors_venv is not None:
                for anchor in ANCHORS:
                    ruler_get(url, RESET_PATH)
                    found = run_anchor(anchor, args.anchors_venv.resolve(), url, streams, args.seconds)
                    found["ruler"] = ruler_get(url, STATS_PATH)
                    found["streams"] = streams
                    anchors.append(found)
                    print(f"{streams:>5} streams  {anchor:<20} {found}", flush=True)
    print()
    print(table(rows))
    if anchors:
        print()
        print(anchor_table(rows, anchors))
    document = {
        "pace": {"ttft_s": pace.ttft, "gap_s": pace.gap, "chunks": pace.chunks, "spread": pace.spread},
        "ramp_up_s": ramp_up, "seconds": args.seconds, "rounds": args.rounds,
        "environment": environment(), "rows": rows, "anchors": anchors,
        "table": table(rows),
        "anchor_table": anchor_table(rows, anchors) if anchors else None,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
