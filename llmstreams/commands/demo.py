"""`llmstreams demo`: the library at work against the embedded mock server, in a few seconds.

No credentials and no network beyond loopback: it starts the mock on 127.0.0.1, streams one
chat answer from Qianfan API v2 to the terminal as it arrives, then fans out a few hundred
requests over every provider of the registry with a progress bar and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import llmstreams
from llmstreams.calls import Call
from llmstreams.client import BaseClient
from llmstreams.commands import library_log_level
from llmstreams.fanout import FanOutStats, Job, fan_out_as_completed
from llmstreams.mock import BEHAVIOUR_HEADER, Behaviour, MockServer
from llmstreams.progress import Progress
from llmstreams.providers import PROVIDERS

DEMO_QUESTION = "In two sentences: why stream a model's answer instead of waiting for all of it?"
STREAMED_PROVIDER = "qianfan"
# The single answer is paced so that it visibly streams.
_ANSWER_PACE = "chunks_per_second=15"
# One request in this many is answered HTTP 429 once first, to show a retry at work.
_RATE_LIMITED_EVERY = 50


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="stream and fan out against a built-in mock server (no credentials needed)",
        description=__doc__,
    )
    parser.add_argument(
        "--requests", type=_positive_int, default=300, help="requests in the fan-out (default 300)"
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=64, help="streams open at once (default 64)"
    )
    parser.add_argument(
        "--chunks-per-second", type=float, default=50.0,
        help="the mock's pace per stream during the fan-out (default 50)",
    )
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    # The demo's HTTP 429s are on purpose (the summary counts the retries): no warning per retry.
    try:
        with library_log_level(logging.ERROR):
            return asyncio.run(_demo(args.requests, args.concurrency, args.chunks_per_second))
    except KeyboardInterrupt:
        return 130


def _say(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


async def _demo(requests: int, concurrency: int, chunks_per_second: float) -> int:
    behaviour = Behaviour(chunks_per_second=chunks_per_second)
    async with MockServer(behaviour=behaviour) as server, llmstreams.Pool() as pool:
        _say(f"llmstreams demo: a mock of every provider on {server.url} (nothing leaves this machine)")
        clients = {
            name: (provider.mock_client(server.url, pool=pool), provider.model_for(mock=True))
            for name, provider in PROVIDERS.items()
        }
        await _stream_one_answer(*clients[STREAMED_PROVIDER])
        stats, elapsed = await _fan_out(list(clients.values()), requests, concurrency)
    _print_summary(stats, elapsed)
    return 0 if stats.failed == 0 else 1


async def _stream_one_answer(client: BaseClient, model: str | None) -> None:
    _say(f"\nQ: {DEMO_QUESTION}")
    _say("A: ", end="")
    started = time.perf_counter()
    first_chunk: float | None = None
    call = Call(
        messages=user(DEMO_QUESTION), model=model,
        params={"extra_headers": {BEHAVIOUR_HEADER: _ANSWER_PACE}},
    )
    async with client.stream_call(call) as stream:
        async for chunk in stream:
            if first_chunk is None:
                first_chunk = time.perf_counter() - started
            _say(chunk.text, end="")
        completion = stream.completion
    elapsed = time.perf_counter() - started
    first = f"{first_chunk * 1000:.0f} ms" if first_chunk is not None else "-"
    _say(
        f"\n   ({completion.chunk_count} chunks from {model} via {PROVIDERS[STREAMED_PROVIDER].title}; "
        f"first after {first}, all after {elapsed * 1000:.0f} ms)"
    )


def _jobs(clients: list[tuple[BaseClient, str | None]], requests: int) -> Iterator[Job]:
    for index in range(requests):
        # Distinct questions: the mock answers (and fails) each distinct request on its own.
        question = f"Question {index}: {DEMO_QUESTION}"
        headers = (
            {BEHAVIOUR_HEADER: "http_status=429; retry_after=0"}
            if index % _RATE_LIMITED_EVERY == _RATE_LIMITED_EVERY - 1
            else None
        )
        client, model = clients[index % len(clients)]
        call = Call(prompt=question, model=model, params={"extra_headers": headers})
        yield partial(client.stream_call, call)


async def _fan_out(
    clients: list[tuple[BaseClient, str | None]], requests: int, concurrency: int
) -> tuple[FanOutStats, float]:
    _say(
        f"\nFan-out: {requests} requests over {len(clients)} providers "
        f"({', '.join(PROVIDERS)}), {concurrency} at a time"
    )
    stats = FanOutStats()
    progress = Progress(requests, label="fan-out")
    started = time.perf_counter()
    try:
        async with fan_out_as_completed(_jobs(clients, requests), concurrency=concurrency) as outcomes:
            async for outcome in outcomes:
                stats.add(outcome)
                progress.advance(failed=not outcome.ok)
    finally:
        progress.close()
    return stats, time.perf_counter() - started


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _print_summary(stats: FanOutStats, elapsed: float) -> None:
    errors = ", ".join(f"{name} {count}" for name, count in sorted(stats.errors_by_type.items()))
    retried = stats.attempts - stats.requests
    _say("\nSummary")
    _say(f"  requests             {stats.requests} ({stats.succeeded} ok, {stats.failed} errors"
         + (f": {errors}" if errors else "") + ")")
    _say(
        f"  attempts             {stats.attempts} ({retried} retries: one request in "
        f"{_RATE_LIMITED_EVERY} is answered HTTP 429 once)"
    )
    _say(f"  chunks               {stats.chunks}")
    _say(f"  tokens               {stats.tokens}")
    _say(f"  requests/s           {stats.requests / elapsed:.1f}")
    _say(f"  chunks/s             {stats.chunks / elapsed:.1f}")
    _say(
        f"  time to first chunk  p50 {_ms(stats.time_to_first_chunk(0.5))}, "
        f"p99 {_ms(stats.time_to_first_chunk(0.99))}"
    )
    _say(f"  elapsed              {elapsed:.2f} s")
