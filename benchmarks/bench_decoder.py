"""Throughput of `llmstreams.sse.SSEDecoder`, alone and against other ways to read SSE with aiohttp.

Usage: .venv/bin/python -m benchmarks.bench_decoder [--events N] [--repeats R] [--json PATH]
(from the checkout's root)

Every reader consumes the same stream of ~100-byte Qianfan-style events
(`data: {"id":...,"sentence_id":N,"result":...,"is_end":false}` + blank line) and yields each
event's data as a str:
  * decode-only: SSEDecoder fed the bytes in 64 KiB pieces, in-process, no network;
  * end to end, over a loopback aiohttp server running in a separate process (so the server's
    work does not share the client's core): SSEDecoder over `resp.content.iter_any()`,
    aiohttp-sse-client2's `EventSource`, and a plain `async for line in resp.content` reader.
Each figure is the best of R runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp_sse_client2.client import EventSource  # type: ignore[import-untyped]

from llmstreams.sse import SSEDecoder

CHUNK_SIZE = 64 * 1024
STREAM_PATH = "/stream"


def build_stream(event_count: int) -> bytes:
    events = []
    for sentence_id in range(event_count):
        payload = {
            "id": "as-x7kq2m9p4d",
            "sentence_id": sentence_id,
            "result": "Streaming text chunk.",
            "is_end": False,
        }
        events.append(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")
    return b"".join(events)


def in_pieces(stream: bytes) -> list[bytes]:
    return [stream[start : start + CHUNK_SIZE] for start in range(0, len(stream), CHUNK_SIZE)]


def decode_only_seconds(pieces: list[bytes], event_count: int) -> float:
    decoder = SSEDecoder()
    decoded = 0
    started = time.perf_counter()
    for piece in pieces:
        decoded += len(decoder.feed(piece))
    decoder.close()
    elapsed = time.perf_counter() - started
    assert decoded == event_count, decoded
    return elapsed


def serve(stream: bytes, port_sender: Connection) -> None:
    """Server process: serve `stream` at STREAM_PATH until terminated."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(stream), CHUNK_SIZE):
            await response.write(stream[start : start + CHUNK_SIZE])
        await response.write_eof()
        return response

    async def run() -> None:
        app = web.Application()
        app.router.add_get(STREAM_PATH, handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_sender.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(run())


# Each reader returns (events read, total characters of their data), so the runs can be checked
# against each other.


async def read_with_sse_decoder(
    session: aiohttp.ClientSession, url: str, event_count: int
) -> tuple[int, int]:
    events = data_chars = 0
    decoder = SSEDecoder()
    async with session.get(url) as response:
        async for piece in response.content.iter_any():
            for event in decoder.feed(piece):
                events += 1
                data_chars += len(event.data)
    for event in decoder.close():
        events += 1
        data_chars += len(event.data)
    return events, data_chars


async def read_with_event_source(
    session: aiohttp.ClientSession, url: str, event_count: int
) -> tuple[int, int]:
    events = data_chars = 0
    async with EventSource(url, session=session) as event_source:
        async for event in event_source:
            events += 1
            data_chars += len(event.data)
            # At the end of a stream EventSource waits and reconnects; stop before that.
            if events == event_count:
                break
    return events, data_chars


async def read_with_line_reader(
    session: aiohttp.ClientSession, url: str, event_count: int
) -> tuple[int, int]:
    events = data_chars = 0
    async with session.get(url) as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                events += 1
                data_chars += len(line[5:].strip().decode())
    return events, data_chars


Reader = Callable[[aiohttp.ClientSession, str, int], Awaitable[tuple[int, int]]]


async def end_to_end_seconds(
    readers: dict[str, Reader], url: str, event_count: int, repeats: int
) -> dict[str, float]:
    best = {name: float("inf") for name in readers}
    results = set()
    async with aiohttp.ClientSession() as session:
        for _ in range(repeats):
            for name, read in readers.items():
                started = time.perf_counter()
                events, data_chars = await read(session, url, event_count)
                elapsed = time.perf_counter() - started
                assert events == event_count, (name, events)
                results.add(data_chars)
                best[name] = min(best[name], elapsed)
    assert len(results) == 1, f"readers disagree on the data: {results}"
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_decoder",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per stream")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; best kept")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args()

    stream = build_stream(args.events)
    pieces = in_pieces(stream)
    print(
        f"{args.events} events, {len(stream) / args.events:.1f} bytes/event, "
        f"{len(stream) / 1e6:.1f} MB, best of {args.repeats}"
    )

    decode_only = min(decode_only_seconds(pieces, args.events) for _ in range(args.repeats))
    rates = {"decode_only_sse_decoder": args.events / decode_only}

    port_receiver, port_sender = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(stream, port_sender), daemon=True
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{port_receiver.recv()}{STREAM_PATH}"
        readers: dict[str, Reader] = {
            "sse_decoder": read_with_sse_decoder,
            "event_source": read_with_event_source,
            "line_reader": read_with_line_reader,
        }
        seconds = asyncio.run(end_to_end_seconds(readers, url, args.events, args.repeats))
    finally:
        server.terminate()
        server.join()
    for name, elapsed in seconds.items():
        rates[f"end_to_end_{name}"] = args.events / elapsed

    ratios = {
        "sse_decoder_vs_event_source": seconds["event_source"] / seconds["sse_decoder"],
        "sse_decoder_vs_line_reader": seconds["line_reader"] / seconds["sse_decoder"],
    }
    for name, rate in rates.items():
        print(f"{name:36s} {rate:>14,.0f} events/s")
    for name, ratio in ratios.items():
        print(f"{name:36s} {ratio:>14.2f}x")
    if args.json:
        document = {
            "events": args.events,
            "bytes_per_event": len(stream) / args.events,
            "repeats": args.repeats,
            "events_per_second": rates,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
