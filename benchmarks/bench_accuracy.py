"""How wrong is the harness's clock? Its own error against the ruler, next to a bare aiohttp loop.

Usage: .venv/bin/python -m benchmarks.bench_accuracy [--streams 16,64,256,1000,2000]
           [--rounds 3] [--seconds 8] [--in-phase] [--processes 1,2]
           [--anchors-venv .anchors] [--json PATH]

The ruler (`llmstreams.bench.ruler`, in a process of its own) streams every answer on a
precise schedule (first event after --ttft, then one every --gap; answer lengths spread by
--spread around --chunks) and writes into each event the `time.monotonic()` at which it really
sent it. Each client runs in a fresh process of its own, keeps N streams going for --seconds,
and notes when each event arrived on the same clock, so its error is known per event:

  TTFT error = |observed first-event arrival - its true send time|
  ITL error  = |observed gap - true gap| for each pair of consecutive events

Two shapes of load (--shapes, default ramped; --in-phase: both, side by side):
  * ramped: the streams start over --ramp-up (default: one answer's length) and each answer's
    events are paced from its own start, so that events of different streams rarely meet;
  * in-phase: every stream starts at once and the ruler puts every event of every answer on
    one grid of instants (`Pace.in_phase`), as the tokens of a serving engine's decoding
    steps: all N streams have an event due at the same instant, every gap. The gap grows with
    N (--in-phase-gap-per-stream, 0.4 ms: 400 ms at 1,000 streams), answers have
    --in-phase-chunks events, and each stream asks --in-phase-answers answers.

Clients, alternated within each round (the table keeps the median of the rounds and the
spread, min-max):
  * llmstreams: `llmstreams bench`'s load generator as the command runs it (`ClientSpec` +
    `measure`): on uvloop where installed, without automatic garbage collection during the
    run, chunk times from `ChunkStream.last_read_at`, which on the bench's loop is the
    kernel's arrival time of the bytes (SO_TIMESTAMPNS: the chunk clock "kernel");
  * llmstreams-loop: the same with the chunk clock "loop" (the time at which the event loop
    got to the socket: the bench before it read the kernel's times);
  * llmstreams-xN, llmstreams-loop-xN (--processes N): the same load shared by N processes;
  * aiohttp-bare: the usual hand-written loop on asyncio's loop (`benchmarks.baselines`'
    `line_stream`: `async for line in response.content`, the time taken after `json.loads` of
    each `data:` line), every stream started at once;
  * aiohttp-bare-ramped: the same loop with the harness's ramp-up, to tell the effect of the
    ramp from that of where the timestamp is taken (ramped shape only);
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
import attrs

from benchmarks.accuracy_anchors import ANCHORS, run_anchor
from benchmarks.baselines import line_stream
from llmstreams.bench import LoadPlan, RequestRecord, Workload, summarize
from llmstreams.bench.eventloop import default_event_loop, run_on
from llmstreams.bench.metrics import SENT_AT_FIELD
from llmstreams.bench.report import environment
from llmstreams.bench.ruler import RESET_PATH, STATS_PATH, Pace, spawn_ruler
from llmstreams.bench.runner import ClientSpec
from llmstreams.bench.runner import measure as measure_load

RESULTS = Path(__file__).resolve().parent / "results" / "bench_accuracy.json"
CLIENTS = ("llmstreams", "llmstreams-loop", "aiohttp-bare", "aiohttp-bare-ramped", "aiohttp-bare-uvloop")
SHAPES = ("ramped", "in-phase")
CHAT_PATH = "/v1/chat/completions"
BODY = {"model": "ruler", "messages": [{"role": "user", "content": "tick"}], "stream": True}


@attrs.frozen
class Shape:
    """One load shape at one stream count: the ruler's pace, the clients' ramp-up, and how long
    each stream keeps asking (for `seconds`, or `answers` answers each)."""

    name: str
    pace: Pace
    ramp_up: float
    seconds: float | None
    answers: int | None

    @property
    def expected_seconds(self) -> float:
        if self.seconds is not None:
            return self.seconds
        assert self.answers is not None
        return self.answers * (self.pace.ttft + self.pace.gap * (self.pace.chunks + 1))

    def plan(self, streams: int) -> LoadPlan:
        if self.answers is not None:
            return LoadPlan(concurrency=streams, requests=streams * self.answers)
        return LoadPlan(concurrency=streams, ramp_up=self.ramp_up, duration=self.seconds)


def ruler_get(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def parse_llmstreams(client: str) -> tuple[str, int]:
    """"llmstreams-loop-x2" -> ("loop", 2); "llmstreams" -> ("kernel", 1)."""
    name, _, processes = client.partition("-x")
    return ("loop" if name.endswith("-loop") else "kernel"), int(processes or 1)


async def run_llmstreams(url: str, streams: int, shape: Shape, client: str) -> dict[str, Any]:
    chunk_clock, processes = parse_llmstreams(client)
    workload = Workload(provider="openai", model="ruler", prompt="tick")
    spec = ClientSpec(
        workload, url, max_retries=0, mock=True, mock_auth=None, event_loop=default_event_loop(),
        chunk_clock=chunk_clock,
    )
    measurement = await measure_load(spec, shape.plan(streams), processes)
    return summarize(
        measurement.records, duration=measurement.duration, cpu_seconds=measurement.cpu_seconds,
        peak_rss_mb=measurement.peak_rss_mb, loop_lags=measurement.loop_lags,
        processes=processes, event_loop=measurement.event_loop,
        chunk_clock=measurement.chunk_clock,
    ).to_json()


async def run_bare(url: str, streams: int, seconds: float | None, answers: int | None,
                   ramp_up: float) -> dict[str, Any]:
    """The hand-written loop: nothing of llmstreams but the statistics afterwards. Each stream
    asks `answers` answers, or for `seconds`."""
    now = time.monotonic
    records: list[RequestRecord] = []
    lags: list[float] = []
    cpu_before, origin = time.process_time(), now()
    deadline = None if seconds is None else origin + seconds

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
        asked = 0
        while (deadline is None or now() < deadline) and (answers is None or asked < answers):
            asked += 1
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


def child(client: str, url: str, streams: int, shape: Shape, out: Any) -> None:
    if client.startswith("llmstreams"):
        chunk_clock, _ = parse_llmstreams(client)
        result = run_on(
            default_event_loop(), run_llmstreams(url, streams, shape, client),
            kernel_clock=chunk_clock == "kernel",
        )
    else:
        runners: dict[str, tuple[str, Callable[[], Any]]] = {
            "aiohttp-bare": ("asyncio", lambda: run_bare(url, streams, shape.seconds, shape.answers, 0.0)),
            "aiohttp-bare-ramped": (
                "asyncio", lambda: run_bare(url, streams, shape.seconds, shape.answers, shape.ramp_up),
            ),
            "aiohttp-bare-uvloop": ("uvloop", lambda: run_bare(url, streams, shape.seconds, shape.answers, 0.0)),
        }
        event_loop, runner = runners[client]
        result = run_on(event_loop, runner())
    out.send(result)


def measure(client: str, url: str, streams: int, shape: Shape) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    ruler_get(url, RESET_PATH)
    process = context.Process(target=child, args=(client, url, streams, shape, send))
    process.start()
    result: dict[str, Any] = receive.recv()
    process.join()
    result["ruler"] = ruler_get(url, STATS_PATH)
    return result


KEPT = (
    "completed", "chunk_throughput", "cpu_us_per_chunk", "median_itl_ms", "median_ttft_ms", "p99_ttft_ms", "client_cpu_utilization", "p99_loop_lag_ms",
    "median_harness_ttft_error_ms", "p99_harness_ttft_error_ms",
    "median_harness_itl_error_ms", "p99_harness_itl_error_ms",
    "p99_itl_ms", "p99_true_itl_ms", "client_bound", "chunk_clock", "shared_read_chunks",
    "shared_reads",
)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key in KEPT:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if not values:
            kept[key] = None
        elif isinstance(values[0], bool):
            kept[key] = any(values)
        elif isinstance(values[0], str):
            kept[key] = ",".join(sorted(set(values)))
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
        "| streams | shape | client | chunk clock | chunks/s | client CPU % of a core | CPU µs per chunk "
        "| loop lag p99 ms | TTFT err p50 ms | TTFT err p99 ms | ITL err p50 ms | ITL err p99 ms "
        "| observed ITL p99 ms | true ITL p99 ms | ruler late p99 ms | client-bound "
        "| shared reads |"
    )
    lines = [header, "|" + "---|" * 17]
    for row in rows:
        m = row["median"]
        lines.append("| " + " | ".join([
            str(row["streams"]), row["shape"], row["client"], cell(m["chunk_clock"]),
            cell(m["chunk_throughput"]),
            cell(_percent(m["client_cpu_utilization"])), cell(m["cpu_us_per_chunk"]),
            cell(m["p99_loop_lag_ms"]),
            cell(m["median_harness_ttft_error_ms"]), cell(m["p99_harness_ttft_error_ms"]),
            cell(m["median_harness_itl_error_ms"]), cell(m["p99_harness_itl_error_ms"]),
            cell(m["p99_itl_ms"]), cell(m["p99_true_itl_ms"]), cell(m["ruler_p99_lateness_ms"]),
            cell(m["client_bound"]), cell(m["shared_reads"]),
        ]) + " |")
    return "\n".join(lines)


def side_by_side(rows: list[dict[str, Any]]) -> str:
    """Each client's errors under both shapes, one row per stream count and client."""
    by_key = {(row["streams"], row["client"], row["shape"]): row["median"] for row in rows}
    keys = list(dict.fromkeys((row["streams"], row["client"]) for row in rows))
    lines = [
        "| streams | client | ramped: ITL err p50 / p99 ms | ramped: TTFT err p99 ms "
        "| in phase: ITL err p50 / p99 ms | in phase: TTFT err p99 ms | in phase: ruler late p99 ms "
        "| in phase: client-bound / shared reads |",
        "|" + "---|" * 8,
    ]
    for streams, client in keys:
        ramped = by_key.get((streams, client, "ramped"))
        phased = by_key.get((streams, client, "in-phase"))

        def errors(m: dict[str, Any] | None) -> list[str]:
            if m is None:
                return ["-", "-"]
            return [
                f"{cell(m['median_harness_itl_error_ms'])} / {cell(m['p99_harness_itl_error_ms'])}",
                cell(m["p99_harness_ttft_error_ms"]),
            ]

        lines.append("| " + " | ".join([
            str(streams), client, *errors(ramped), *errors(phased),
            "-" if phased is None else cell(phased["ruler_p99_lateness_ms"]),
            "-" if phased is None else f"{cell(phased['client_bound'])} / {cell(phased['shared_reads'])}",
        ]) + " |")
    return "\n".join(lines)


def _percent(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {key: number * 100 for key, number in value.items()}


def anchor_table(rows: list[dict[str, Any]], anchors: list[dict[str, Any]]) -> str:
    """Each anchor's own TTFT and ITL next to ours and to the truth, at the same streams and
    shape."""
    lines = [
        "| streams | shape | tool | status | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| ITL kind | true ITL p99 ms |",
        "|" + "---|" * 10,
    ]
    for row in rows:
        if row["client"] != "llmstreams":
            continue
        m = row["median"]
        lines.append("| " + " | ".join([
            str(row["streams"]), row["shape"], "llmstreams bench", "ok", cell(m["median_ttft_ms"]),
            cell(m["p99_ttft_ms"]), cell(m["median_itl_ms"]), cell(m["p99_itl_ms"]),
            "per chunk", cell(m["p99_true_itl_ms"]),
        ]) + " |")
        for found in anchors:
            if (found["streams"], found["shape"]) != (row["streams"], row["shape"]):
                continue
            ttft, itl = found.get("ttft_ms") or {}, found.get("itl_ms") or {}
            lines.append("| " + " | ".join([
                str(found["streams"]), found["shape"], found["anchor"], found.get("status", "-"),
                _number(ttft.get("p50")), _number(ttft.get("p99")), _number(itl.get("p50")),
                _number(itl.get("p99")), found.get("itl_kind", "-"), cell(m["p99_true_itl_ms"]),
            ]) + " |")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}"


def shape_at(name: str, streams: int, args: argparse.Namespace) -> Shape:
    if name == "ramped":
        pace = Pace(ttft=args.ttft, gap=args.gap, chunks=args.chunks, spread=args.spread)
        ramp_up = args.ramp_up if args.ramp_up is not None else pace.ttft + pace.gap * pace.chunks
        return Shape(name, pace, ramp_up, args.seconds, None)
    pace = Pace(
        ttft=args.ttft, gap=max(args.gap, streams * args.in_phase_gap_per_stream),
        chunks=args.in_phase_chunks, in_phase=True,
    )
    return Shape(name, pace, 0.0, None, args.in_phase_answers)


def clients_of(args: argparse.Namespace) -> list[str]:
    clients = args.clients.split(",")
    for processes in (int(part) for part in args.processes.split(",")):
        if processes > 1:
            clients += [f"{client}-x{processes}" for client in clients if client.startswith("llmstreams")
                        and "-x" not in client]
    return clients


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_accuracy", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--streams", default="16,64,256,1000,2000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="of each ramped run")
    parser.add_argument("--ttft", type=float, default=0.1)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--ramp-up", type=float, help="seconds (default: one answer's length)")
    parser.add_argument("--shapes", default="ramped", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--in-phase", action="store_true", help="both shapes: --shapes ramped,in-phase")
    parser.add_argument("--in-phase-gap-per-stream", type=float, default=0.0004,
                        help="in phase, the gap is this many seconds per stream (at least --gap)")
    parser.add_argument("--in-phase-chunks", type=int, default=5, help="events per answer in phase")
    parser.add_argument("--in-phase-answers", type=int, default=3, help="answers per stream in phase")
    parser.add_argument("--processes", default="1",
                        help="comma list: llmstreams clients also run in this many processes")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--anchors-venv", type=Path, help="a venv with guidellm / aiperf installed")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    shapes = list(SHAPES) if args.in_phase else args.shapes.split(",")
    clients = clients_of(args)
    rows: list[dict[str, Any]] = []
    anchors: list[dict[str, Any]] = []
    for streams in (int(part) for part in args.streams.split(",")):
        for shape_name in shapes:
            shape = shape_at(shape_name, streams, args)
            taking = [c for c in clients if not (shape_name == "in-phase" and c == "aiohttp-bare-ramped")]
            with spawn_ruler(shape.pace) as url:
                rounds: dict[str, list[dict[str, Any]]] = {client: [] for client in taking}
                for number in range(args.rounds):
                    order = taking if number % 2 == 0 else list(reversed(taking))
                    for client in order:
                        result = measure(client, url, streams, shape)
                        rounds[client].append(result)
                        print(f"{streams:>5} streams  {shape_name:<8} {client:<22} round {number + 1}: "
                              f"ITL err p50/p99 {result.get('median_harness_itl_error_ms')}/"
                              f"{result.get('p99_harness_itl_error_ms')} ms, TTFT err p99 "
                              f"{result.get('p99_harness_ttft_error_ms')} ms, CPU "
                              f"{result['client_cpu_utilization']:.2f}, clock "
                              f"{result.get('chunk_clock', '-')}, ruler late p99 "
                              f"{result['ruler']['p99_lateness_ms']} ms", flush=True)
                for client in taking:
                    rows.append({"streams": streams, "shape": shape_name, "client": client,
                                 "gap_s": shape.pace.gap, "median": median_of(rounds[client]),
                                 "rounds": rounds[client]})
                if args.anchors_venv is not None:
                    for anchor in ANCHORS:
                        ruler_get(url, RESET_PATH)
                        found = run_anchor(anchor, args.anchors_venv.resolve(), url, streams,
                                           shape.expected_seconds)
                        found["ruler"] = ruler_get(url, STATS_PATH)
                        found["streams"] = streams
                        found["shape"] = shape_name
                        anchors.append(found)
                        print(f"{streams:>5} streams  {shape_name:<8} {anchor:<22} {found}", flush=True)
    print()
    print(side_by_side(rows))
    print()
    print(table(rows))
    if anchors:
        print()
        print(anchor_table(rows, anchors))
    document = {
        "shapes": {
            name: {
                "ttft_s": args.ttft,
                "gap_s": args.gap if name == "ramped" else f"max({args.gap}, streams x {args.in_phase_gap_per_stream})",
                "chunks": args.chunks if name == "ramped" else args.in_phase_chunks,
                "spread": args.spread if name == "ramped" else 0.0,
                "seconds": args.seconds if name == "ramped" else None,
                "answers_per_stream": None if name == "ramped" else args.in_phase_answers,
            }
            for name in shapes
        },
        "rounds": args.rounds, "environment": environment(), "rows": rows, "anchors": anchors,
        "side_by_side": side_by_side(rows), "table": table(rows),
        "anchor_table": anchor_table(rows, anchors) if anchors else None,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
