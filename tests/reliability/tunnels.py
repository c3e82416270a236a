"""Servers that carry bytes without reading them: an HTTP CONNECT proxy, and a relay to one
address. Both count the connections they carried and keep each one's first bytes from the
client, so a test can tell that TLS (a handshake record, 0x16) went through them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from tests.reliability.helpers import tcp_server

TLS_HANDSHAKE_RECORD = 0x16
_HEAD_LIMIT = 8192

_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class _Tunnels:
    def __init__(self) -> None:
        self.url = ""
        self.first_bytes: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def carried(self) -> int:
        """Connections carried through to the target so far."""
        return len(self.first_bytes)

    async def _join(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        host: str,
        port: int,
        greeting: bytes = b"",
    ) -> None:
        client_reader, client_writer = client
        target_reader, target_writer = await asyncio.open_connection(host, port)
        client_writer.write(greeting)
        first = await client_reader.read(65536)
        self.first_bytes.append(first)
        target_writer.write(first)
        await asyncio.gather(
            _pipe(client_reader, target_writer), _pipe(target_reader, client_writer)
        )

    @asynccontextmanager
    async def _running(self, handler: _Handler) -> AsyncIterator[None]:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await handler(reader, writer)
            finally:
                self._tasks.discard(task)
                writer.close()

        async with tcp_server(tracked) as self.url:
            try:
                yield
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)


class ConnectProxy(_Tunnels):
    """An HTTP proxy that only tunnels: `CONNECT host:port HTTP/1.1`, then bytes both ways.

    `targets` lists each CONNECT's authority, in order. With `refusal` (a status line such as
    "403 Forbidden"), every CONNECT is answered with it instead.
    """

    def __init__(self, refusal: str | None = None) -> None:
        super().__init__()
        self.targets: list[str] = []
        self._refusal = refusal

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            return
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.targets.append(target)
        if self._refusal is not None:
            writer.write(f"HTTP/1.1 {self._refusal}\r\nContent-Length: 0\r\n\r\n".encode())
            return
        host, _, port = target.rpartition(":")
        await self._join(
            (reader, writer), host.strip("[]"), int(port),
            greeting=b"HTTP/1.1 200 Connection established\r\n\r\n",
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ConnectProxy]:
        async with self._running(self._serve):
            yield self


class Relay(_Tunnels):
    """Carries every connection to `port` on 127.0.0.1, as it is."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._port = port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._join((reader, writer), "127.0.0.1", self._port)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        async with self._running(self._serve):
            yield self
