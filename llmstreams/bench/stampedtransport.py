"""The bench's TCP connections, read with `recvmsg` so that each read carries the kernel's arrival
time of its bytes (see `kernelstamps`), on asyncio's loop and on uvloop's alike.

Neither loop's own transports can return a read's control messages (uvloop reads in C and keeps
nothing of them), so the bench's loops make their plain TCP connections with a transport of
their own: `KernelStampedTransport`, driven through the loops' public `add_reader` /
`add_writer`. After each read it hands the bytes to the protocol and, when the protocol notes
arrival times (llmstreams' `ArrivalStampingHandler`), replaces the time the protocol noted with
the kernel's. The library's own connections, on any other loop, stay as they are.

A connection the transport cannot stamp (TLS, a Unix socket, a kernel without SO_TIMESTAMPNS)
is made by the loop as usual and counted in `ReadClocks.loop_connections`: the chunks it
carries are timed as without the bench's loop, when the loop got to the socket.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from typing import Any

import attrs

from llmstreams.bench import kernelstamps
from llmstreams.pool import ArrivalStampingHandler

# asyncio's defaults for a transport's write buffer.
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4


@attrs.define(slots=True)
class ReadClocks:
    """What timed the reads of one event loop's connections: reads stamped by the kernel,
    reads of stamping connections that came without a stamp, and connections made without
    stamps at all."""

    kernel_reads: int = 0
    loop_reads: int = 0
    loop_connections: int = 0


def chunk_clock(before: ReadClocks | None, after: ReadClocks | None) -> str:
    """"kernel" when every read between the two counts was stamped by the kernel (and no
    connection went without stamps), else "loop" (also for a loop that does not count)."""
    if before is None or after is None:
        return "loop"
    stamped = after.kernel_reads - before.kernel_reads
    unstamped = after.loop_reads - before.loop_reads
    if stamped > 0 and unstamped == 0 and after.loop_connections == 0:
        return "kernel"
    return "loop"


def read_clocks(loop: asyncio.AbstractEventLoop) -> ReadClocks | None:
    """A copy of `loop`'s counts, or None for a loop that does not stamp."""
    clocks = getattr(loop, "read_clocks", None)
    return attrs.evolve(clocks) if isinstance(clocks, ReadClocks) else None


class KernelStampedTransport(asyncio.Transport):
    """One TCP connection, read with `recvmsg` (kernel arrival times) and written with `send`,
    with asyncio's flow control both ways."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.Protocol,
        clocks: ReadClocks,
        buffer: memoryview | None = None,
    ) -> None:
        super().__init__({
            "socket": sock, "sockname": sock.getsockname(), "peername": sock.getpeername(),
        })
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._stamped = protocol if isinstance(protocol, ArrivalStampingHandler) else None
        self._clocks = clocks
        # Shared by the loop's connections: each read is copied out of it at once.
        self._read_into = kernelstamps.read_buffer() if buffer is None else buffer
        self._buffer = bytearray()
        self._reading = False
        self._closing = False
        self._finished = False
        self._eof_written = False
        self._writing_paused = False
        self._high_water = HIGH_WATER
        self._low_water = LOW_WATER

    def start(self) -> None:
        """Tell the protocol it is connected, and start reading."""
        self._protocol.connection_made(self)
        self.resume_reading()

    def _read_ready(self) -> None:
        try:
            data, arrived = kernelstamps.receive(self._sock, self._read_into)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._close_now(error)
            return
        if not data:
            self._end_of_stream()
            return
        try:
            self._protocol.data_received(data)
        except Exception as error:
            self._close_now(error)
            return
        if arrived is None:
            self._clocks.loop_reads += 1
            return
        self._clocks.kernel_reads += 1
        if self._stamped is not None:
            # Taken by the protocol when the loop got to the socket; the kernel knows better.
            self._stamped.data_received_at = arrived

    def _end_of_stream(self) -> None:
        self.pause_reading()
        try:
            keep_open = self._protocol.eof_received()
        except Exception as error:
            self._close_now(error)
            return
        if not keep_open:
            self.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing or self._eof_written:
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._close_now(error)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer += data
        if not self._writing_paused and len(self._buffer) > self._high_water:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._close_now(error)
            return
        del self._buffer[:sent]
        if self._writing_paused and len(self._buffer) <= self._low_water:
            self._writing_paused = False
            self._protocol.resume_writing()
        if self._buffer:
            return
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._loop.call_soon(self._finish, None)
        elif self._eof_written:
            self._shut_write()

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        if not self._buffer:
            self._shut_write()

    def _shut_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            self._close_now(error)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high_water = HIGH_WATER if high is None else high
        self._low_water = self._high_water // 4 if low is None else low

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
        self._stamped = protocol if isinstance(protocol, ArrivalStampingHandler) else None

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def close(self) -> None:
        """Stop reading, send what is buffered, then close."""
        if self._closing:
            return
        self.pause_reading()
        self._closing = True
        if not self._buffer:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._close_now(None)

    def _close_now(self, error: Exception | None) -> None:
        if self._finished:
            return
        self.pause_reading()
        if self._buffer:
            self._buffer.clear()
            self._loop.remove_writer(self._fd)
        self._closing = True
        self._loop.call_soon(self._finish, error)

    def _finish(self, error: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._protocol.connection_lost(error)
        finally:
            self._sock.close()


async def _connect(
    loop: asyncio.AbstractEventLoop,
    clocks: ReadClocks,
    buffer: memoryview,
    create_connection: Callable[..., Any],
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """A KernelStampedTransport on the connected socket aiohttp passes as `sock`, or the loop's
    own connection (counted) for anything else: TLS, an address still to connect, a socket the
    kernel cannot stamp."""
    sock = kwargs.get("sock")
    plain = not args and all(
        value is None or (name == "ssl" and value is False)
        for name, value in kwargs.items() if name != "sock"
    )
    if not plain or not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM \
            or not kernelstamps.enable(sock):
        clocks.loop_connections += 1
        return await create_connection(protocol_factory, *args, **kwargs)
    sock.setblocking(False)
    protocol = protocol_factory()
    assert isinstance(protocol, asyncio.Protocol)
    transport = KernelStampedTransport(loop, sock, protocol, clocks, buffer)
    transport.start()
    return transport, protocol


class KernelClockLoop(asyncio.AbstractEventLoop):
    """Mixed in before an event loop class: its TCP connections are KernelStampedTransports, with
    the kernel's stamps held on while it is open."""

    def __init__(self) -> None:
        super().__init__()
        self.read_clocks = ReadClocks()
        self._read_buffer = kernelstamps.read_buffer()
        self._stamps_on = kernelstamps.StampsOn()

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        return await _connect(
            self, self.read_clocks, self._read_buffer, super().create_connection, *args, **kwargs
        )

    def close(self) -> None:
        self._stamps_on.close()
        super().close()


class KernelClockSelectorLoop(KernelClockLoop, asyncio.SelectorEventLoop):
    """asyncio's loop, whose TCP connections are KernelStampedTransports."""


@functools.cache
def kernel_clock_loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of loops of the kind `event_loop` names ("uvloop" or "asyncio") whose TCP
    connections are KernelStampedTransports."""
    if event_loop == "asyncio":
        return KernelClockSelectorLoop
    import uvloop

    # uvloop's stubs type some loop methods unlike typeshed's AbstractEventLoop, which the mixin
    # brings in as well: mypy sees a conflict of the two declarations, not of the code.
    class KernelClockUVLoop(KernelClockLoop, uvloop.Loop):  # type: ignore[misc]
        """uvloop's loop, whose TCP connections are KernelStampedTransports."""

    return KernelClockUVLoop
