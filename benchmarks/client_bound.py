"""The client as the bottleneck: llmstreams against a bare aiohttp loop, side by side in one process.

Usage: .venv/bin/python -m benchmarks.client_bound [--rounds 7] [--out benchmarks/results] [--guard 0.9]
(also `python -m benchmarks.compare --client-bound`), from the checkout's root.

A server in another process answers every request with pre-built bytes (the whole chunked
response in one write), so it costs almost nothing and each read of the client carries many
events, as when a fast model's tokens bunch up or the client falls behind. The clients run in
this process, one block after another; the order of the blocks is alternated and reversed
every round, and each figure is the median over rounds of the ratio to the bare loop of the
same round (with the lowest and highest ratio as the spread). Measured:

  cpu        client CPU (`time.process_time`) per chunk: long answers (STREAMS concurrent
             streams of 4,000 chunks) and 10-chunk answers (STREAMS concurrent workers, one
             request after another), for Qianfan v1, DashScope native and OpenAI-compatible
             (where this llmstreams has it), against `aiohttp` + `json.loads` of each `data:`
             line (`iter_any`, split into lines: the cheapest hand-written loop) and, for scale,
             the same loop with `orjson.loads` (when orjson is installed).
  latency    end-to-end latency p50/p99/p99.9 at saturation (SATURATION concurrent workers
             of 100-chunk answers), llmstreams Qianfan against the bare loop, and the
             connections each opened beyond the concurrency.
  open       RSS per open stream and event-loop lag p99 with OPEN_STREAMS streams open at
             once (each gets its first event at once, then one every 10 s): each client in a
             fresh process, RSS and lag measured once every stream has its first chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

import llmstreams
from benchmarks.baselines import PrebuiltHTTPProtocol, count_floor_events, start_prebuilt_server
from benchmarks.compare.adapters import llmstreams_client

RESULTS = Path(__file__).resolve().parent / "results"
STREAMS = 24
LONG_CHUNKS = 4000
SHORT_CHUNKS = 10
SHORT_REQUESTS = 1200
SATURATION = 64
SATURATION_REQUESTS = 3000
OPEN_STREAMS = 10_000
# Held streams: the first event at once, then one every PACE_SECONDS (PACED_CHUNKS in all, longer
# than opening every stream takes); measured for LAG_WINDOW seconds once every stream is open.
PACE_SECONDS = 10.0
PACED_CHUNKS = 30
LAG_WINDOW = 3.0
PIECE = "流式输出的好处"  # 7 characters per chunk
TOKEN = "bench-token"
# Idle connections are kept longer than a block of the other clients lasts on a busy machine, so
# that the connections opened count the ones a stream's end cost, not keep-alive expiries.
KEEPALIVE = 600.0

QIANFAN_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ernie_speed"
DASHSCOPE_PATH = "/api/v1/services/aigc/text-generation/generation"
OPENAI_PATH = "/v1/chat/completions"
PATHS = {"qianfan": QIANFAN_PATH, "dashscope": DASHSCOPE_PATH, "openai": OPENAI_PATH}


# --------------------------------------------------------------------------- the server


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def qianfan_body(chunks: int) -> bytes:
    events = []
    for number in range(chunks):
        last = number == chunks - 1
        payload = {
            "id": "as-bench0001", "object": "chat.completion", "created": 1700000000,
            "sentence_id": number, "is_end": last, "is_truncated": False, "result": PIECE,
            "need_clear_history": False, "finish_reason": "normal",
            "usage": {"prompt_tokens": 12, "completion_tokens": number + 1, "total_tokens": 13 + number},
        }
        events.append(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")
    return b"".join(events)


def dashscope_body(chunks: int) -> bytes:
    events = []
    for number in range(chunks):
        payload = {
            "output": {"text": PIECE, "finish_reason": "stop" if number == chunks - 1 else "null"},
            "usage": {"total_tokens": 13 + number, "input_tokens": 12, "output_tokens": number + 1},
            "request_id": "4e9c8e1c-0000-4000-8000-000000000001",
        }
        data = json.dumps(payload, ensure_ascii=False).encode()
        events.append(b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:%s\n\n" % (number + 1, data))
    return b"".join(events)


def openai_body(chunks: int) -> bytes:
    events = []
    for number in range(chunks):
        last = number == chunks - 1
        payload: dict[str, Any] = {
            "id": "chatcmpl-bench0001", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "bench-model",
            "choices": [{"index": 0, "delta": {"content": PIECE},
                         "finish_reason": "stop" if last else None}],
        }
        events.append(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


BODIES: dict[str, Callable[[int], bytes]] = {
    "qianfan": qianfan_body, "dashscope": dashscope_body, "openai": openai_body,
}


def responses() -> dict[tuple[str, int], bytes]:
    """Every answer the server gives, by (vendor, chunks)."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    )
    return {
        (vendor, chunks): head + _chunked(make(chunks))
        for vendor, make in BODIES.items()
        for chunks in (SHORT_CHUNKS, 100, LONG_CHUNKS)
    }


def base_url(server: str, chunks: int, *, paced: bool = False) -> str:
    """The base URL under which `server` answers with `chunks` chunks (paced: see `answer`)."""
    return f"{server}/n{chunks}{'p' if paced else ''}"


class PrebuiltProtocol(PrebuiltHTTPProtocol):
    """Answers with pre-built bytes: the answer of `chunks` chunks in the dialect the rest of
    the path names, for a path `/n<chunks>[p]/...`."""

    def __init__(self, answers: dict[tuple[str, int], bytes]) -> None:
        self.answers = answers

    def answer(self, head: bytes) -> None:
        target = head.split(b" ", 2)[1].decode("latin-1")
        prefix, _, path = target.lstrip("/").partition("/")
        paced = prefix.endswith("p")
        chunks = int(prefix[1:].rstrip("p"))
        vendor = next(name for name, known in PATHS.items() if ("/" + path).startswith(known))
        if not paced:
            self.transport.write(self.answers[vendor, chunks])
            return
        # The head and the first event now, then one event every PACE_SECONDS.
        response = self.answers[vendor, LONG_CHUNKS]
        body_start = response.index(b"\r\n\r\n") + 4
        body = response[response.index(b"\r\n", body_start) + 2:]
        events = [event + b"\n\n" for event in body.split(b"\n\n")[:chunks]]
        self.transport.write(response[:body_start])
        self._write_paced(events, 0)

    def _write_paced(self, events: list[bytes], number: int) -> None:
        if self.transport.is_closing():
            return
        event = events[number]
        self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        if number + 1 < len(events):
            asyncio.get_running_loop().call_later(PACE_SECONDS, self._write_paced, events, number + 1)
        else:
            self.transport.write(b"0\r\n\r\n")


def serve(port_out: Any) -> None:
    async def main() -> None:
        answers = responses()
        _server, port = await start_prebuilt_server(lambda: PrebuiltProtocol(answers), backlog=16384)
        port_out.send(port)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def prebuilt_server() -> Any:
    receiving, sending = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=serve, args=(sending,), daemon=True)
    process.start()
    try:
        yield f"http://127.0.0.1:{receiving.recv()}"
    finally:
        process.terminate()
        process.join()


# --------------------------------------------------------------------------- the clients


def bare_session() -> aiohttp.ClientSession:
    # The connector llmstreams' Pool uses (same limits, same connection counting), so the
    # connections opened compare like for like.
    from llmstreams.pool import _CountingConnector

    return aiohttp.ClientSession(
        connector=_CountingConnector(limit=10_000, limit_per_host=0, keepalive_timeout=KEEPALIVE),
        timeout=aiohttp.ClientTimeout(total=None),
    )


class BareLoop:
    """The hand-written floor: aiohttp, `iter_any`, split into lines, `loads` of each `data:` line."""

    def __init__(self, vendor: str, loads: Callable[[bytes], Any]) -> None:
        self.vendor = vendor
        self.loads = loads
        self.session = bare_session()
        self.body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
        # The same query and headers as llmstreams sends for the vendor.
        self.params = {"access_token": TOKEN} if vendor == "qianfan" else None
        self.headers = {"Content-Type": "application/json"}
        if vendor != "qianfan":
            self.headers |= {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
        if vendor == "dashscope":
            self.headers["X-DashScope-SSE"] = "enable"
        self.reads = 0
        self.events = 0

    async def stream(
        self, server: str, chunks: int, *, paced: bool = False, on_first: Callable[[], None] | None = None
    ) -> int:
        url = base_url(server, chunks, paced=paced) + PATHS[self.vendor]
        count, reads = await count_floor_events(
            self.session, url, self.loads, on_first,
            params=self.params, data=self.body, headers=self.headers,
        )
        self.reads += reads
        self.events += count
        return count

    def connections_opened(self) -> int:
        connector = self.session.connector
        return getattr(connector, "connections_opened", 0)

    async def close(self) -> None:
        await self.session.close()


class Llmstreams:
    """llmstreams' own client for the vendor, through one Pool; every chunk is read."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        # Thousands of connections opened at once can take longer than the default 10 s.
        self.pool = llmstreams.Pool(
            max_retries=0, timeout=llmstreams.Timeout(connect=120.0), keepalive_timeout=KEEPALIVE
        )
        self.clients: dict[str, Any] = {}

    def _client(self, url: str) -> Any:
        client = self.clients.get(url)
        if client is None:
            client = self.clients[url] = self._new_client(url)
        return client

    def _new_client(self, url: str) -> Any:
        if self.vendor == "qianfan":
            return llmstreams_client(self.vendor, url, self.pool, access_token=TOKEN)
        if self.vendor == "dashscope":
            return llmstreams_client(self.vendor, url, self.pool, api_key=TOKEN)
        return llmstreams_client(self.vendor, url + "/v1", self.pool, api_key=TOKEN)

    async def stream(
        self, server: str, chunks: int, *, paced: bool = False, on_first: Callable[[], None] | None = None
    ) -> int:
        client = self._client(base_url(server, chunks, paced=paced))
        messages = [{"role": "user", "content": "hi"}]
        if self.vendor == "qianfan":
            stream = client.stream_chat(messages, model="ERNIE-Speed-8K")
        elif self.vendor == "dashscope":
            stream = client.stream_generate("hi", model="billa-7b-sft-v1", incremental_output=True)
        else:
            stream = client.stream_chat(messages, model="bench-model")
        count = 0
        async for _ in stream:
            count += 1
            if count == 1 and on_first is not None:
                on_first()
        return count

    def connections_opened(self) -> int:
        return self.pool.stats().connections_opened

    async def close(self) -> None:
        await self.pool.close()


Client = BareLoop | Llmstreams


def make_clients(vendor: str) -> dict[str, Client]:
    clients: dict[str, Client] = {f"llmstreams-{vendor}": Llmstreams(vendor)}
    clients[f"bare-json-{vendor}"] = BareLoop(vendor, json.loads)
    with contextlib.suppress(ImportError):
        import orjson

        clients[f"bare-orjson-{vendor}"] = BareLoop(vendor, orjson.loads)
    return clients


def vendors() -> list[str]:
    available = ["qianfan", "dashscope"]
    if hasattr(llmstreams, "OpenAICompatibleClient"):
        available.append("openai")
    return available


# --------------------------------------------------------------------------- the workloads


async def long_streams(client: Client, server: str) -> int:
    counts = await asyncio.gather(*(client.stream(server, LONG_CHUNKS) for _ in range(STREAMS)))
    return sum(counts)


async def short_answers(client: Client, server: str) -> int:
    async def worker(requests: int) -> int:
        return sum([await client.stream(server, SHORT_CHUNKS) for _ in range(requests)])

    counts = await asyncio.gather(*(worker(SHORT_REQUESTS // STREAMS) for _ in range(STREAMS)))
    return sum(counts)


async def cpu_per_chunk(workload: Callable[[Client, str], Awaitable[int]], client: Client, server: str) -> float:
    gc.collect()
    started = time.process_time()
    chunks = await workload(client, server)
    return (time.process_time() - started) / chunks * 1e6


async def latencies(client: Client, server: str) -> tuple[list[float], int]:
    """End-to-end seconds of every request at saturation, and the connections it opened."""
    opened = client.connections_opened()
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker(requests: int) -> None:
        for _ in range(requests):
            started = loop.time()
            await client.stream(server, 100)
            times.append(loop.time() - started)

    await asyncio.gather(*(worker(SATURATION_REQUESTS // SATURATION) for _ in range(SATURATION)))
    return times, client.connections_opened() - opened


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def open_streams(client: Client, server: str, streams: int) -> dict[str, float]:
    """RSS per open stream and event-loop lag (how late a 1 ms sleep wakes, p99) over LAG_WINDOW
    seconds once `streams` paced streams are all open, each having yielded its first chunk."""
    loop = asyncio.get_running_loop()
    await client.stream(server, SHORT_CHUNKS)  # imports, caches, one connection
    gc.collect()
    baseline = rss_bytes()
    opened = 0
    all_open = asyncio.Event()

    def on_first() -> None:
        nonlocal opened
        opened += 1
        if opened == streams:
            all_open.set()

    tasks = [
        asyncio.create_task(client.stream(server, PACED_CHUNKS, paced=True, on_first=on_first))
        for _ in range(streams)
    ]
    await asyncio.wait_for(all_open.wait(), timeout=PACED_CHUNKS * PACE_SECONDS)
    lags: list[float] = []
    peak = rss_bytes()
    until = loop.time() + LAG_WINDOW
    while loop.time() < until:
        before = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - before - 0.001)
        peak = max(peak, rss_bytes())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "rss_per_stream_kib": round((peak - baseline) / streams / 1024, 1),
        "loop_lag_p99_ms": round(percentile(lags, 0.99) * 1000, 2),
    }


def _held_child(name: str, server: str, streams: int, results: Any) -> None:
    async def run() -> dict[str, float]:
        client: Client = Llmstreams("qianfan") if name.startswith("llmstreams") else BareLoop("qianfan", json.loads)
        try:
            return await open_streams(client, server, streams)
        finally:
            await client.close()

    results.send(asyncio.run(run()))


def held_in_fresh_process(name: str, server: str, streams: int) -> dict[str, float]:
    """`open_streams` in a new interpreter, so that RSS counts that client's streams alone."""
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_held_child, args=(name, server, streams, sending))
    process.start()
    sending.close()  # so that a child that dies makes recv() fail instead of wait
    try:
        result: dict[str, float] = receiving.recv()
    finally:
        process.join()
    return result


# --------------------------------------------------------------------------- rounds


def summary(ratios: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(ratios), 3), "low": round(min(ratios), 3),
            "high": round(max(ratios), 3)}


async def measure(rounds: int, server: str, *, parts: list[str], open_count: int) -> dict[str, Any]:
    report: dict[str, Any] = {"cpu": {}, "latency": {}, "open": {}, "events_per_read": {}}
    for vendor in vendors() if "cpu" in parts else ():
        clients = make_clients(vendor)
        names = list(clients)
        for client in clients.values():  # warm-up: connections, caches
            await long_streams(client, server)
            await short_answers(client, server)
        for label, workload in (("long", long_streams), ("short", short_answers)):
            per_round: dict[str, list[float]] = {name: [] for name in names}
            for number in range(rounds):
                order = names if number % 2 == 0 else names[::-1]
                for name in order:
                    per_round[name].append(await cpu_per_chunk(workload, clients[name], server))
            baseline = per_round[f"bare-json-{vendor}"]
            report["cpu"][f"{vendor}-{label}"] = {
                name: {
                    "us_per_chunk": round(statistics.median(values), 3),
                    "vs_bare_json": summary([value / base for value, base in zip(values, baseline, strict=True)]),
                }
                for name, values in per_round.items()
            }
            print(f"{vendor} {label}: " + ", ".join(
                f"{name} {report['cpu'][f'{vendor}-{label}'][name]['vs_bare_json']['median']}x"
                for name in names), flush=True)
        bare = clients[f"bare-json-{vendor}"]
        assert isinstance(bare, BareLoop)
        report["events_per_read"][vendor] = round(bare.events / max(bare.reads, 1), 1)
        for client in clients.values():
            await client.close()

    if "latency" in parts:
        report["latency"] = await saturation_latency(rounds, server)
    if "open" in parts:
        report["open"] = await held_streams(server, open_count)
    return report


async def saturation_latency(rounds: int, server: str) -> dict[str, Any]:
    """Latency at saturation and connections opened: Qianfan, llmstreams against the bare loop."""
    report: dict[str, Any] = {"latency": {}}
    clients = {"llmstreams-qianfan": Llmstreams("qianfan"), "bare-json-qianfan": BareLoop("qianfan", json.loads)}
    for client in clients.values():
        await latencies(client, server)  # warm: every connection open
    figures: dict[str, dict[str, list[float]]] = {
        name: {"p50": [], "p99": [], "p999": [], "extra_connections": []} for name in clients
    }
    for number in range(rounds):
        order = list(clients) if number % 2 == 0 else list(clients)[::-1]
        for name in order:
            times, opened = await latencies(clients[name], server)
            figures[name]["p50"].append(percentile(times, 0.5))
            figures[name]["p99"].append(percentile(times, 0.99))
            figures[name]["p999"].append(percentile(times, 0.999))
            figures[name]["extra_connections"].append(opened)
    for name, values in figures.items():
        base = figures["bare-json-qianfan"]
        report["latency"][name] = {
            "p50_ms": round(statistics.median(values["p50"]) * 1000, 2),
            "p99_ms": round(statistics.median(values["p99"]) * 1000, 2),
            "p999_ms": round(statistics.median(values["p999"]) * 1000, 2),
            "p99_vs_bare": summary([a / b for a, b in zip(values["p99"], base["p99"], strict=True)]),
            "p999_vs_bare": summary([a / b for a, b in zip(values["p999"], base["p999"], strict=True)]),
            "extra_connections": sum(values["extra_connections"]),
        }
    print("latency:", json.dumps(report["latency"]), flush=True)
    for client in clients.values():
        await client.close()
    return report["latency"]


async def held_streams(server: str, open_count: int, rounds: int = 3) -> dict[str, Any]:
    report: dict[str, Any] = {}
    names = ("llmstreams-qianfan", "bare-json-qianfan")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for number in range(rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            runs[name].append(held_in_fresh_process(name, server, open_count))
    for name, results in runs.items():
        report[name] = {
            "streams": open_count,
            "rss_per_stream_kib": statistics.median(run["rss_per_stream_kib"] for run in results),
            "rss_per_stream_kib_runs": [run["rss_per_stream_kib"] for run in results],
            "loop_lag_p99_ms": statistics.median(run["loop_lag_p99_ms"] for run in results),
            "loop_lag_p99_ms_runs": [run["loop_lag_p99_ms"] for run in results],
        }
    print("open:", json.dumps(report), flush=True)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as the targets table of issue 12 and the figures behind it."""
    config = report["config"]
    lines = [
        "# The client as the bottleneck",
        "",
        f"Recorded by `python -m benchmarks.client_bound` (Python {config['python']}, aiohttp "
        f"{config['aiohttp']}); {config['rounds']} rounds of alternating blocks, medians, "
        "spread = lowest-highest ratio over rounds. Events per read (bare loop): "
        + ", ".join(f"{vendor} {value}" for vendor, value in report["events_per_read"].items())
        + ".",
        "",
        "| client CPU per chunk | us/chunk | vs bare aiohttp + json.loads (spread) |",
        "|---|---:|---:|",
    ]
    for workload, clients in report["cpu"].items():
        for name, figures in clients.items():
            ratio = figures["vs_bare_json"]
            lines.append(
                f"| {name}, {workload} | {figures['us_per_chunk']:.2f} | "
                f"{ratio['median']:.2f}x ({ratio['low']:.2f}-{ratio['high']:.2f}) |"
            )
    if report["latency"]:
        lines += [
        "",
        f"Latency at saturation ({config['saturation_concurrency']} workers, 100-chunk answers):",
        "",
        "| client | p50 ms | p99 ms | p99.9 ms | p99 vs bare | p99.9 vs bare | connections beyond the concurrency |",
        "|---|---:|---:|---:|---:|---:|---:|",
        ]
    for name, figures in report["latency"].items():
        lines.append(
            f"| {name} | {figures['p50_ms']} | {figures['p99_ms']} | {figures['p999_ms']} | "
            f"{figures['p99_vs_bare']['median']:.2f}x ({figures['p99_vs_bare']['low']:.2f}-"
            f"{figures['p99_vs_bare']['high']:.2f}) | {figures['p999_vs_bare']['median']:.2f}x "
            f"({figures['p999_vs_bare']['low']:.2f}-{figures['p999_vs_bare']['high']:.2f}) | "
            f"{figures['extra_connections']} |"
        )
    if report["open"]:
        lines += ["", "| open streams | client | RSS per stream KiB (runs) | loop lag p99 ms (runs) |",
                  "|---:|---|---:|---:|"]
        for name, figures in report["open"].items():
            lines.append(
                f"| {figures['streams']:,} | {name} | {figures['rss_per_stream_kib']} "
                f"({', '.join(map(str, figures['rss_per_stream_kib_runs']))}) | "
                f"{figures['loop_lag_p99_ms']} ({', '.join(map(str, figures['loop_lag_p99_ms_runs']))}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.client_bound",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds of alternating blocks (7)")
    parser.add_argument("--open-streams", type=int, default=OPEN_STREAMS,
                        help=f"streams held open at once for RSS and loop lag; 0 to skip ({OPEN_STREAMS})")
    parser.add_argument("--parts", type=lambda text: text.split(","), default=["cpu", "latency", "open"],
                        help="which measurements (cpu,latency,open)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--guard", type=float, metavar="RATIO",
        help="exit 1 when llmstreams' CPU per chunk on long streams (the median ratio to the bare "
        "loop) is above RATIO for any dialect (the project's guard: 0.9)",
    )
    args = parser.parse_args(argv)
    if args.guard is not None and "cpu" not in args.parts:
        parser.error("--guard needs the cpu part")
    with prebuilt_server() as server:
        report = asyncio.run(
            measure(args.rounds, server, parts=args.parts, open_count=args.open_streams)
        )
    report["config"] = {
        "rounds": args.rounds, "streams": STREAMS, "long_chunks": LONG_CHUNKS,
        "short_chunks": SHORT_CHUNKS, "short_requests": SHORT_REQUESTS,
        "saturation_concurrency": SATURATION, "saturation_requests": SATURATION_REQUESTS,
        "python": sys.version.split()[0], "aiohttp": aiohttp.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "client_bound.json"
    if path.exists():
        # Keep the parts of the previous report that this run did not measure again.
        previous = json.loads(path.read_text())
        measured = {"cpu": ("cpu", "events_per_read"), "latency": ("latency",), "open": ("open",)}
        for part, keys in measured.items():
            if part not in args.parts:
                for key in keys:
                    report[key] = previous.get(key, report[key])
    path.write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "client_bound.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if args.guard is None else _check_guard(report, args.guard)


def _check_guard(report: dict[str, Any], limit: float) -> int:
    """1, saying which, when llmstreams' long-stream CPU per chunk is above `limit` times the bare loop's."""
    breaches = [
        f"{workload}: {ratio}x"
        for workload, clients in report["cpu"].items() if workload.endswith("-long")
        for name, figures in clients.items() if name.startswith("llmstreams-")
        if (ratio := figures["vs_bare_json"]["median"]) > limit
    ]
    if breaches:
        print(f"guard breached (CPU per chunk above {limit}x the bare loop): " + ", ".join(breaches))
        return 1
    print(f"guard held: CPU per chunk on long streams at most {limit}x the bare loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
