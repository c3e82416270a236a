"""The baselines the benchmarks measure llmstreams against, written once.

Clients (each a bare aiohttp POST; `loads` is `json.loads` unless a benchmark says otherwise):
  * `floor_stream` / `count_floor_events`: the floor, the least any client must do: aiohttp's
    cheapest read (whatever bytes arrived, `iter_any`), split into lines, `loads` of each
    `data:` line, no checks;
  * `line_stream`: the usual hand-written loop, `async for line in response.content` (one
    read per line), `loads` of each `data:` line.
The floor comes in two forms doing the same work per event: `floor_stream` yields each item
(for the harness, which times every item), `count_floor_events` only counts them (for CPU per
chunk side by side, where a generator's step per event would add a few percent to the floor).

Server: `PrebuiltHTTPProtocol`, a raw asyncio protocol answering HTTP/1.1 keep-alive requests,
one at a time, with pre-built bytes (costs the server almost nothing per event).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

Loads = Callable[[bytes], Any]
_DONE = b"data: [DONE]"
_CONTENT_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


class BaselineError(Exception):
    """A baseline client got an error response (named by its HTTP status)."""


async def floor_stream(
    session: aiohttp.ClientSession, url: str, loads: Loads = json.loads, **request: Any
) -> AsyncIterator[Any]:
    """The floor, yielding each `data:` line's item; `request` goes to `session.post`."""
    async with session.post(url, **request) as response:
        if response.status != 200:
            raise BaselineError(f"HTTP {response.status}")
        pending = b""
        async for data in response.content.iter_any():
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(b"data:") and line != _DONE:
                    yield loads(line[5:])


async def count_floor_events(
    session: aiohttp.ClientSession,
    url: str,
    loads: Loads = json.loads,
    on_first: Callable[[], None] | None = None,
    **request: Any,
) -> tuple[int, int]:
    """The floor, counting: (events, reads) of one request; `on_first` is called at its first
    event. `request` goes to `session.post`."""
    count = reads = 0
    async with session.post(url, **request) as response:
        if response.status != 200:
            raise BaselineError(f"HTTP {response.status}")
        pending = b""
        async for data in response.content.iter_any():
            reads += 1
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(b"data:") and line != _DONE:
                    loads(line[5:])
                    count += 1
                    if count == 1 and on_first is not None:
                        on_first()
    return count, reads


async def line_stream(
    session: aiohttp.ClientSession, url: str, loads: Loads = json.loads, **request: Any
) -> AsyncIterator[Any]:
    """The usual hand-written loop, yielding each `data:` line's item; `request` goes to
    `session.post`."""
    async with session.post(url, **request) as response:
        if response.status != 200:
            raise BaselineError(f"HTTP {response.status}")
        async for line in response.content:
            if line.startswith(b"data:") and not line.startswith(_DONE):
                yield loads(line[5:])


class PrebuiltHTTPProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time: each complete request (head and
    Content-Length body) is answered by `answer(head)`, which writes to `self.transport`."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.answer(head)

    def answer(self, head: bytes) -> None:
        raise NotImplementedError


async def start_prebuilt_server(
    protocol: Callable[[], PrebuiltHTTPProtocol], backlog: int
) -> tuple[asyncio.Server, int]:
    """A server of `protocol` on 127.0.0.1, and its port."""
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0, backlog=backlog)
    return server, server.sockets[0].getsockname()[1]
