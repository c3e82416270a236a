"""How fast one mock worker serves events, next to two baseline servers, and how well it paces.

Usage: .venv/bin/python -m benchmarks.bench_mock [--rounds 5] [--duration 2] [--chunks 100,10]
       [--connections 64] [--clients 2] [--before PATH] [--paced-streams 2000] [--json PATH]
(from the checkout's root)

Throughput: each server runs alone in one process; a load generator of `--clients` processes
(raw asyncio protocols over keep-alive connections, so the client costs far less per event than
any server) sends stream requests for `--duration` seconds and counts the `data:` events it
receives. Servers, one process each:
  * `aiohttp-prebuilt`: a minimal aiohttp handler writing pre-built event bytes, one write each;
  * `raw-asyncio`: an asyncio protocol writing pre-built chunked bytes to the transport;
  * `mock-dashscope` / `mock-openai`: `llmstreams mock` (one worker) on its DashScope native
    route (incremental output) and its OpenAI-compatible `/v1/chat/completions` route;
  * with `--before PATH` (a checkout of an earlier llmstreams), the same two routes of that mock.
Each round runs every server once, in an order rotated every round; the table gives each
server's median events/s over the rounds, the spread (min-max), and the median of the per-round
ratios to `aiohttp-prebuilt`.

Pacing: `--paced-streams` streams at once, each of 20 events at 10 per second, from the mock
(with `stamp_send_times` on) and from the `--before` mock. Per event, its lateness against the
stream's schedule (first event time + i / pace), from the server's own `x_sent_at` stamp and from
the client's arrival time, the gaps between consecutive events relative to the pace (p50 / p99 /
max), and the server's CPU time per paced event (the headroom that keeps pacing accurate when
the machine is busy; lateness itself is at the mercy of the machine's load).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.baselines import PrebuiltHTTPProtocol, start_prebuilt_server

REPO = Path(__file__).resolve().parent.parent

CHUNK_CHARS = 24
TERMINAL = b"\r\n0\r\n\r\n"
PACE = 10.0
PACED_EVENTS = 20
_SENT_AT = re.compile(rb'"x_sent_at":([0-9.]+)')


# -- baseline servers -------------------------------------------------------------------------


def prebuilt_frames(chunks: int) -> list[bytes]:
    frames = []
    for index in range(chunks):
        piece = json.dumps(
            ("abcdefghijklmnopqrstuvwxyz" * 2)[index % 26 : index % 26 + CHUNK_CHARS]
        )
        frames.append(
            b'data: {"id":"chatcmpl-0123456789abcdef01234567","object":"chat.completion.chunk",'
            b'"created":1790000000,"model":"m","choices":[{"index":0,"delta":{"content":'
            + piece.encode()
            + b'},"finish_reason":null}]}\n\n'
        )
    return frames


def serve_aiohttp_prebuilt(chunks: int) -> None:
    from aiohttp import web

    frames = prebuilt_frames(chunks)

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_raw_asyncio(chunks: int) -> None:
    frames = [b"%x\r\n%s\r\n" % (len(frame), frame) for frame in prebuilt_frames(chunks)]
    response_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    class Protocol(PrebuiltHTTPProtocol):
        def answer(self, head: bytes) -> None:
            self.transport.write(response_head)
            for frame in frames:
                self.transport.write(frame)
            self.transport.write(b"0\r\n\r\n")

    async def main() -> None:
        _server, port = await start_prebuilt_server(Protocol, backlog=4096)
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- servers as processes ------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, command: list[str], route: str, checkout: Path = REPO) -> None:
        self.name = name
        self.command = command
        self.route = route
        # `python -m` imports from the working directory first: run in the checkout to measure.
        self.checkout = checkout
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.checkout))
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.checkout,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {line!r}")
        self.url = match.group(1)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def request_bytes(route: str, url: str, knobs: str = "") -> bytes:
    host = url.removeprefix("http://")
    headers = [f"Host: {host}", "Content-Type: application/json", "Authorization: Bearer sk-b"]
    if knobs:
        headers.append(f"X-Mock-Behaviour: {knobs}")
    if route == "dashscope":
        path = "/api/v1/services/aigc/text-generation/generation"
        headers.append("X-DashScope-SSE: enable")
        body = {"model": "qwen-turbo", "input": {"prompt": "hi"}}
        body["parameters"] = {"incremental_output": True}
    else:
        path = "/v1/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    data = json.dumps(body).encode()
    headers.append(f"Content-Length: {len(data)}")
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{header}\r\n" for header in headers)
    return (head + "\r\n").encode() + data


def servers(chunks: int, before: Path | None) -> list[Server]:
    script = [sys.executable, "-m", "benchmarks.bench_mock"]
    mock = [sys.executable, "-m", "llmstreams.mock", "--port", "0"]
    mock += ["--answer-chars", str(chunks * CHUNK_CHARS), "--chunk-chars", str(CHUNK_CHARS)]
    found = [
        Server("aiohttp-prebuilt", [*script, "--serve", "aiohttp", str(chunks)], "openai"),
        Server("raw-asyncio", [*script, "--serve", "raw", str(chunks)], "openai"),
        Server("mock-dashscope", mock, "dashscope"),
        Server("mock-openai", mock, "openai"),
    ]
    if before is not None:
        found.append(Server("before-dashscope", mock, "dashscope", before.resolve()))
        found.append(Server("before-openai", mock, "openai", before.resolve()))
    return found


# -- the load generator --------------------------------------------------------------------------


class _LoadConnection(asyncio.Protocol):
    def __init__(self, request: bytes, deadline: float, tally: dict[str, int]) -> None:
        self.request = request
        self.deadline = deadline
        self.tally = tally
        self.parts: list[bytes] = []
        self.tail = b""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parts.append(data)
        tail = (self.tail + data)[-len(TERMINAL) :]
        self.tail = tail
        if tail != TERMINAL:
            return
        response = b"".join(self.parts)
        self.parts = []
        self.tail = b""
        if not response.startswith(b"HTTP/1.1 200"):
            self.tally["errors"] += 1
        self.tally["events"] += response.count(b"data:")
        self.tally["responses"] += 1
        if time.monotonic() < self.deadline:
            self.transport.write(self.request)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _load(url: str, request: bytes, connections: int, duration: float, pipe: Connection) -> None:
    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        host, port = url.removeprefix("http://").split(":")
        tally = {"events": 0, "responses": 0, "errors": 0}
        protocols = []
        for _ in range(connections):
            _, protocol = await loop.create_connection(
                lambda: _LoadConnection(request, deadline, tally), host, int(port)
            )
            protocols.append(protocol)
        await asyncio.wait_for(asyncio.gather(*(p.closed for p in protocols)), duration + 30)
        return {**tally, "seconds": time.monotonic() - started}

    started = time.monotonic()
    deadline = started + duration
    pipe.send(asyncio.run(run()))


def in_client_processes(clients: int, work: Callable[..., None], *arguments: Any) -> list[Any]:
    """`work(*arguments, pipe)` in `clients` forked processes at once; what each sent back."""
    context = multiprocessing.get_context("fork")
    pipes, processes = [], []
    for _ in range(clients):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=work, args=(*arguments, sender))
        process.start()
        pipes.append(receiver)
        processes.append(process)
    results = [pipe.recv() for pipe in pipes]
    for process in processes:
        process.join()
    return results


def measure_throughput(
    server: Server, connections: int, clients: int, duration: float
) -> dict[str, float]:
    request = request_bytes(server.route, server.url)
    cpu_before = server.cpu_seconds()
    results = in_client_processes(
        clients, _load, server.url, request, connections // clients, duration
    )
    cpu = server.cpu_seconds() - cpu_before
    seconds = max(result["seconds"] for result in results)
    events = sum(result["events"] for result in results)
    return {
        "events_per_second": events / seconds,
        "events_per_cpu_second": events / cpu,
        "responses": sum(result["responses"] for result in results),
        "errors": sum(result["errors"] for result in results),
    }


# -- pacing --------------------------------------------------------------------------------------


class _PacedConnection(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.arrivals: list[tuple[float, bytes]] = []
        self.tail = b""
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.arrivals.append((time.monotonic(), data))
        self.tail = (self.tail + data)[-len(TERMINAL) :]
        if self.tail == TERMINAL and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _paced(url: str, streams: int, stamps: bool, pipe: Connection) -> None:
    knobs = f"chunks_per_second={PACE}; answer_chars={PACED_EVENTS * CHUNK_CHARS}"
    if stamps:
        knobs += "; stamp_send_times=true"
    request = request_bytes("dashscope", url, knobs)

    async def run() -> list[list[tuple[float, float]]]:
        loop = asyncio.get_running_loop()
        host, port = url.removeprefix("http://").split(":")
        protocols = []
        for _ in range(streams):
            _, protocol = await loop.create_connection(
                lambda: _PacedConnection(request), host, int(port)
            )
            protocols.append(protocol)
        await asyncio.wait_for(asyncio.gather(*(p.done for p in protocols)), 300)
        found = []
        for protocol in protocols:
            events: list[tuple[float, float]] = []
            for arrived, data in protocol.arrivals:
                if stamps:
                    events += [(float(sent), arrived) for sent in _SENT_AT.findall(data)]
                else:
                    events += [(math.nan, arrived)] * data.count(b"data:")
            found.append(events)
        return found

    pipe.send(asyncio.run(run()))


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


def measure_pacing(server: Server, streams: int, clients: int, stamps: bool) -> dict[str, Any]:
    cpu_before = server.cpu_seconds()
    found = in_client_processes(clients, _paced, server.url, streams // clients, stamps)
    per_stream = [events for result in found for events in result]
    cpu = server.cpu_seconds() - cpu_before
    interval = 1 / PACE
    late_sent, late_arrived, gaps_sent, gaps_arrived = [], [], [], []
    complete = 0
    for events in per_stream:
        if len(events) != PACED_EVENTS:
            continue
        complete += 1
        first_sent, first_arrived = events[0]
        for index, (sent, arrived) in enumerate(events):
            late_sent.append((sent - first_sent - index * interval) * 1000)
            late_arrived.append((arrived - first_arrived - index * interval) * 1000)
        pairs = list(itertools.pairwise(events))
        gaps_sent += [(later[0] - earlier[0]) / interval for earlier, later in pairs]
        gaps_arrived += [(later[1] - earlier[1]) / interval for earlier, later in pairs]
    figures: dict[str, Any] = {
        "server": server.name,
        "streams": len(per_stream),
        "complete": complete,
        "server_cpu_us_per_event": cpu / max(1, sum(len(events) for events in per_stream)) * 1e6,
        "client_lateness_ms": _percentiles(late_arrived),
        "client_gap_over_pace": _percentiles(gaps_arrived),
    }
    if stamps:
        figures["server_lateness_ms"] = _percentiles(late_sent)
        figures["server_gap_over_pace"] = _percentiles(gaps_sent)
    return figures


# -- the run -------------------------------------------------------------------------------------


MEASURES = {
    "events_per_cpu_second": "events per second of server CPU (one busy worker's rate)",
    "events_per_second": "events per wall-clock second",
}


def summarize(rounds: dict[str, list[float]]) -> dict[str, Any]:
    baseline = rounds["aiohttp-prebuilt"]
    table: dict[str, Any] = {
        name: {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "ratio_to_aiohttp": statistics.median(
                value / base for value, base in zip(values, baseline, strict=True)
            ),
        }
        for name, values in rounds.items()
    }
    table["mock_over_before"] = {
        route: statistics.median(
            new / old
            for new, old in zip(rounds[f"mock-{route}"], rounds[f"before-{route}"], strict=True)
        )
        for route in ("dashscope", "openai")
        if f"before-{route}" in rounds
    }
    return table


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "throughput": {},
        "settings": {name: str(value) for name, value in vars(args).items()},
    }
    for chunks in args.chunks:
        found = servers(chunks, args.before)
        rounds = {measure: {server.name: [] for server in found} for measure in MEASURES}
        errors = 0
        try:
            for server in found:
                server.start()
            for round_number in range(args.rounds):
                shift = round_number % len(found)
                for server in found[shift:] + found[:shift]:
                    figures = measure_throughput(
                        server, args.connections, args.clients, args.duration
                    )
                    for measure, table in rounds.items():
                        table[server.name].append(figures[measure])
                    errors += int(figures["errors"])
        finally:
            for server in found:
                server.stop()
        results["throughput"][chunks] = {
            measure: summarize(table) for measure, table in rounds.items()
        } | {"errors": errors}
    if args.paced_streams:
        paced = [server for server in servers(1, args.before) if server.route == "dashscope"]
        results["pacing"] = []
        for server in paced:
            server.start()
            try:
                stamps = server.checkout == REPO
                results["pacing"].append(
                    measure_pacing(server, args.paced_streams, args.clients, stamps)
                )
            finally:
                server.stop()
    return results


def report(results: dict[str, Any]) -> str:
    lines = []
    for chunks, tables in results["throughput"].items():
        for measure, title in MEASURES.items():
            table = tables[measure]
            lines.append(f"\n{chunks}-chunk answers, {title} (errors: {tables['errors']})")
            lines.append(f"{'server':<18} {'median':>9} {'min':>9} {'max':>9} {'x aiohttp':>10}")
            for name, row in table.items():
                if name == "mock_over_before":
                    continue
                lines.append(
                    f"{name:<18} {row['median']:>9.0f} {row['min']:>9.0f} {row['max']:>9.0f} "
                    f"{row['ratio_to_aiohttp']:>10.2f}"
                )
            for route, ratio in table["mock_over_before"].items():
                lines.append(f"mock-{route} / before-{route}: median per-round ratio {ratio:.2f}")
    for pacing in results.get("pacing", []):
        lines.append(
            f"\npacing of {pacing['server']}: {pacing['complete']}/{pacing['streams']} streams of "
            f"{PACED_EVENTS} events at {PACE:g}/s, server CPU "
            f"{pacing['server_cpu_us_per_event']:.1f} us per event"
        )
        for key in (
            "server_lateness_ms",
            "client_lateness_ms",
            "server_gap_over_pace",
            "client_gap_over_pace",
        ):
            if key in pacing:
                row = pacing[key]
                lines.append(
                    f"  {key:<22} p50 {row['p50']:8.3f}  p99 {row['p99']:8.3f}  "
                    f"max {row['max']:8.3f}"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_mock",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "CHUNKS"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument(
        "--chunks",
        type=lambda text: [int(part) for part in text.split(",") if part],
        default=[100, 10],
        help="answer lengths in chunks, comma-separated (empty: pacing only)",
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--before", type=Path, help="an earlier llmstreams checkout to compare")
    parser.add_argument("--paced-streams", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.serve:
        kind, chunks = args.serve
        serve: Callable[[int], None] = {
            "aiohttp": serve_aiohttp_prebuilt,
            "raw": serve_raw_asyncio,
        }[kind]
        serve(int(chunks))
        return
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
