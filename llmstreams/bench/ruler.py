"""The ruler: a precisely paced streaming server that says when it really sent each event.

A raw asyncio protocol (no web framework between the clock and the socket) answering any
`POST .../chat/completions` in the OpenAI-compatible SSE dialect, and Qianfan v1 chat
(`POST .../wenxinworkshop/chat/...`). Each answer's events are scheduled on the loop clock:
the first `ttft` seconds after the request's body arrived, then one every `gap` seconds. When
an event is due, the ruler takes `time.monotonic()` (the clock of `loop.time()` in every
process of the machine), writes it into the event's JSON as `"x_sent_at"` and hands the event
to the socket at once. A client that notes its own arrival times on the same clock can thus
tell its measurement error exactly: observed arrival minus `x_sent_at`.

With `--in-phase` every event of every answer is due on one grid of instants (see `Pace`):
all open streams have an event due at once, as the tokens of one decoding step of a serving
engine. How late the ruler wrote each event against its schedule is recorded too
(`GET /ruler/stats`; `GET /ruler/reset` starts afresh), so that a late server is not mistaken
for a slow client.
`GET /health` and `GET .../models` answer as OpenAI-compatible servers do, for tools that ask.

Run it in a process of its own: `python -m llmstreams.bench.ruler --gap 0.1 --chunks 20`
prints its URL; `spawn_ruler(...)` does that from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

import attrs

from llmstreams.bench.metrics import SENT_AT_FIELD, percentile

STATS_PATH = "/ruler/stats"
RESET_PATH = "/ruler/reset"
_HEAD_END = b"\r\n\r\n"
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


@attrs.frozen(slots=True)
class Pace:
    """Every answer: `chunks` events (each a `chunk_text`), the first `ttft` seconds after the
    request arrived, then one every `gap` seconds. `spread` varies the number of events per
    answer uniformly within ±spread of `chunks` (a request's `max_tokens` sets it instead), so
    that streams started together drift apart rather than ending in waves.

    `in_phase`: as a serving engine's decoding steps, every event of every answer is due on one
    grid of instants `gap` apart (whole multiples of `gap` on the loop clock): an answer's
    first event at the first instant at least `ttft` after its request arrived, then one per
    instant. Every stream open has an event due at the same instant, whenever it started."""

    ttft: float = 0.1
    gap: float = 0.1
    chunks: int = 20
    spread: float = 0.0
    chunk_text: str = "tick "
    seed: int = 0
    in_phase: bool = False

    def __attrs_post_init__(self) -> None:
        if not (self.ttft >= 0 and self.gap >= 0):
            raise ValueError("ttft and gap are seconds >= 0")
        if self.in_phase and not self.gap > 0:
            raise ValueError("in_phase needs a gap > 0")
        if self.chunks < 1:
            raise ValueError(f"chunks must be at least 1, got {self.chunks}")
        if not 0 <= self.spread < 1:
            raise ValueError(f"spread must be in [0, 1), got {self.spread}")

    def due_times(self, arrived: float, count: int) -> list[float]:
        """When the `count` events of an answer to a request that arrived at `arrived` (loop
        clock, seconds) are due."""
        first = arrived + self.ttft
        if self.in_phase:
            first = math.ceil(first / self.gap) * self.gap
        return [first + self.gap * index for index in range(count)]


class Ruler:
    """The server's shared state: the pace, its random numbers, the lateness of every event."""

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.lateness: list[float] = []
        self.answers = 0
        self._rng = random.Random(pace.seed)

    def answer_length(self, max_tokens: Any) -> int:
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
            return max_tokens
        low = round(self.pace.chunks * (1 - self.pace.spread))
        high = round(self.pace.chunks * (1 + self.pace.spread))
        return max(1, self._rng.randint(low, high))

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.lateness)
        return {
            "answers": self.answers,
            "events": len(ordered),
            "p50_lateness_ms": _ms(percentile(ordered, 50)),
            "p99_lateness_ms": _ms(percentile(ordered, 99)),
            "max_lateness_ms": _ms(ordered[-1]) if ordered else None,
        }

    def reset(self) -> None:
        self.lateness.clear()
        self.answers = 0
        # The ruler's own process runs without automatic garbage collection (a pause would
        # make every event due during it late); a run starts with the garbage of the last gone.
        gc.collect()


def _ms(seconds: float) -> float | None:
    return None if seconds != seconds else round(seconds * 1000.0, 3)


class RulerProtocol(asyncio.Protocol):
    """One connection: HTTP/1.1 requests one after another (keep-alive), each answered by a
    paced stream written straight to the transport."""

    def __init__(self, ruler: Ruler) -> None:
        self._ruler = ruler
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while not self._streaming and self._transport is not None:
            request = self._take_request()
            if request is None:
                return
            self._answer(*request)

    def _take_request(self) -> tuple[str, str, bytes] | None:
        head_end = self._buffer.find(_HEAD_END)
        if head_end < 0:
            return None
        head = self._buffer[:head_end].decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body_start = head_end + len(_HEAD_END)
        if len(self._buffer) < body_start + length:
            return None
        body = self._buffer[body_start:body_start + length]
        self._buffer = self._buffer[body_start + length:]
        method, _, rest = head[0].partition(" ")
        return method, rest.partition(" ")[0], body

    def _answer(self, method: str, target: str, body: bytes) -> None:
        path = target.partition("?")[0]
        if method == "GET" and path == STATS_PATH:
            self._reply(200, self._ruler.stats())
        elif method == "GET" and path == "/health":
            self._reply(200, {"status": "ok"})
        elif method == "GET" and path.endswith("/models"):
            self._reply(200, {"object": "list", "data": [{"id": "ruler", "object": "model"}]})
        elif method == "GET" and path == RESET_PATH:
            self._ruler.reset()
            self._reply(200, {"reset": True})
        elif method == "POST" and (path.endswith("/chat/completions") or "/wenxinworkshop/chat/" in path):
            try:
                request = json.loads(body) if body else {}
            except ValueError:
                request = None
            if not isinstance(request, dict):
                self._reply(400, {"error": {"message": "the body is not a JSON object"}})
                return
            dialect = _OpenAIEvents if path.endswith("/chat/completions") else _QianfanEvents
            count = self._ruler.answer_length(_max_tokens(request))
            self._stream(dialect(request, count, self._ruler.pace.chunk_text))
        else:
            self._reply(404, {"error": {"message": f"no route for {method} {path}"}})

    def _reply(self, status: int, document: dict[str, Any]) -> None:
        assert self._transport is not None
        body = json.dumps(document).encode()
        self._transport.write(
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def _stream(self, events: _Events) -> None:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        ruler, pace = self._ruler, self._ruler.pace
        ruler.answers += 1
        self._streaming = True
        self._transport.write(_STREAM_HEAD)
        count = events.count
        self._timers = [
            loop.call_at(due, self._send, events, index, count, due)
            for index, due in enumerate(pace.due_times(loop.time(), count))
        ]

    def _send(self, events: _Events, index: int, count: int, due: float) -> None:
        transport = self._transport
        if transport is None:
            return
        before_stamp = events.event_before_stamp(index)
        tail = events.tail() if index == count - 1 else b""
        # From here to the write only bytes and floats are made: no container is allocated,
        # so the garbage collector cannot run between the stamp and the write.
        sent_at = time.monotonic()
        payload = b"%s%r}\n\n%s" % (before_stamp, sent_at, tail)
        transport.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self._ruler.lateness.append(sent_at - due)
        if index == count - 1:
            transport.write(_LAST_CHUNK)
            self._timers = []
            self._streaming = False
            if self._buffer:
                self.data_received(b"")


def _max_tokens(request: dict[str, Any]) -> Any:
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if name in request:
            return request[name]
    return None


class _Events:
    """The SSE events of one answer in one dialect."""

    def __init__(self, request: dict[str, Any], count: int, text: str) -> None:
        self.count = count
        self.request = request
        self.text = text
        self.created = int(time.time())

    def event_before_stamp(self, index: int) -> bytes:
        """The event's `data:` line up to its stamp's value: the JSON object ends with
        `"x_sent_at": `, and the stamp, `}` and the blank line follow."""
        raise NotImplementedError

    def _data_before_stamp(self, document: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(document).encode()[:-1] + b', "%s": ' % SENT_AT_FIELD.encode()

    def tail(self) -> bytes:
        return b""

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": 1, "completion_tokens": self.count, "total_tokens": self.count + 1}


class _OpenAIEvents(_Events):
    def event_before_stamp(self, index: int) -> bytes:
        last = index == self.count - 1
        document = {
            "id": "chatcmpl-ruler",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": str(self.request.get("model", "ruler")),
            "choices": [{
                "index": 0, "delta": {"content": self.text}, "finish_reason": "stop" if last else None,
            }],
        }
        return self._data_before_stamp(document)

    def tail(self) -> bytes:
        options = self.request.get("stream_options")
        usage = b""
        if isinstance(options, dict) and options.get("include_usage"):
            document = {
                "id": "chatcmpl-ruler", "object": "chat.completion.chunk", "created": self.created,
                "model": str(self.request.get("model", "ruler")), "choices": [],
                "usage": self._usage(),
            }
            usage = b"data: " + json.dumps(document).encode() + b"\n\n"
        return usage + b"data: [DONE]\n\n"


class _QianfanEvents(_Events):
    def event_before_stamp(self, index: int) -> bytes:
        last = index == self.count - 1
        document: dict[str, Any] = {
            "id": "as-ruler",
            "object": "chat.completion",
            "created": self.created,
            "sentence_id": index,
            "is_end": last,
            "is_truncated": False,
            "result": self.text,
            "need_clear_history": False,
        }
        if last:
            document["usage"] = self._usage()
        return self._data_before_stamp(document)


async def serve(pace: Pace, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start a ruler on `host`:`port` (0: any free port) in the running loop."""
    ruler = Ruler(pace)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: RulerProtocol(ruler), host, port, backlog=4096)


@contextlib.contextmanager
def spawn_ruler(pace: Pace, *, ready_timeout: float = 30.0) -> Iterator[str]:
    """A ruler in a process of its own; yields its base URL and stops it on leaving."""
    command = [
        sys.executable, "-m", "llmstreams.bench.ruler", "--ttft", repr(pace.ttft),
        "--gap", repr(pace.gap), "--chunks", str(pace.chunks), "--spread", repr(pace.spread),
        "--seed", str(pace.seed), "--exit-with-stdin", *(["--in-phase"] if pace.in_phase else []),
    ]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = _first_line(process, ready_timeout)
        yield line.strip()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"the ruler did not start within {timeout:g} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError("the ruler exited before serving")
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmstreams.bench.ruler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    parser.add_argument("--ttft", type=float, default=0.1, help="seconds to the first event")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between events")
    parser.add_argument("--chunks", type=int, default=20, help="events per answer")
    parser.add_argument("--spread", type=float, default=0.0, help="answer length spread, 0..1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--in-phase", action="store_true",
        help="every event of every answer due on one grid of instants --gap apart",
    )
    parser.add_argument(
        "--exit-with-stdin", action="store_true",
        help="stop when standard input closes (so that the ruler ends with its parent)",
    )
    args = parser.parse_args(argv)
    pace = Pace(
        ttft=args.ttft, gap=args.gap, chunks=args.chunks, spread=args.spread, seed=args.seed,
        in_phase=args.in_phase,
    )

    async def run() -> None:
        gc.disable()
        server = await serve(pace, args.host, args.port)
        port = server.sockets[0].getsockname()[1]
        print(f"http://{args.host}:{port}", flush=True)
        if args.exit_with_stdin:
            await asyncio.to_thread(sys.stdin.read)
            server.close()
        else:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
