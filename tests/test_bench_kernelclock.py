"""The bench's chunk clock: the kernel's arrival time of the bytes (SO_TIMESTAMPNS read with
`recvmsg`), on real loopback sockets, read late on purpose; and the fallback to the loop's time
where the kernel gives none."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, cast

import pytest

from llmstreams import OpenAICompatibleClient, Pool
from llmstreams.bench import ClientTarget, LoadPlan, Measurement, Workload, kernelstamps, run_load
from llmstreams.bench.eventloop import EVENT_LOOPS, run_on, running_event_loop
from llmstreams.bench.ruler import Pace, serve
from llmstreams.bench.stampedtransport import (
    KernelStampedTransport,
    ReadClocks,
    chunk_clock,
    read_clocks,
)
from llmstreams.pool import ArrivalStampingHandler

# How late the reader comes, on purpose: the subject of these tests, not a wait.
LATENESS = 0.02
# Every wait of these tests is bounded by this.
WAIT = 10.0


def connected_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection over loopback: (client, server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


@pytest.fixture(autouse=True)
def stamps_on() -> Iterator[None]:
    """The kernel switches its stamps on lazily once a socket first asks: wait until it has."""
    with kernelstamps.StampsOn() as stamps:
        assert stamps.on
        yield


def test_bytes_read_late_carry_the_time_the_kernel_received_them() -> None:
    client, server = connected_pair()
    with client, server:
        assert kernelstamps.enable(client)
        server.sendall(b"event")  # returned: the bytes are handed to the kernel
        time.sleep(LATENESS)
        read_at = time.monotonic()
        data, arrived = kernelstamps.receive(client, kernelstamps.read_buffer())
    assert data == b"event"
    assert arrived is not None
    assert arrived < read_at


def test_a_socket_without_the_option_reads_without_a_stamp() -> None:
    client, server = connected_pair()
    with client, server:
        server.sendall(b"event")
        data, arrived = kernelstamps.receive(client, kernelstamps.read_buffer())
    assert (data, arrived) == (b"event", None)


def test_a_unix_socket_cannot_be_stamped() -> None:
    first, second = socket.socketpair()
    with first, second:
        assert not kernelstamps.enable(first)
    assert kernelstamps.arrival([]) is None


class NotingHandler(ArrivalStampingHandler):
    """aiohttp's connection protocol as the Pool makes it, telling when bytes came."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.received = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.received.set()


def on_every_loop(test: Callable[[str], Coroutine[Any, Any, None]]) -> Callable[[str], None]:
    """Run the coroutine test on the bench's kernel-clock loop of each kind."""

    @pytest.mark.parametrize("event_loop", EVENT_LOOPS)
    def run(event_loop: str) -> None:
        run_on(event_loop, test(event_loop), kernel_clock=True)

    run.__name__ = test.__name__
    return run


async def read_late(client: socket.socket, server: socket.socket, clocks: ReadClocks) -> tuple[float, float, float]:
    """The server writes, the loop is then kept from reading for LATENESS, then the
    transport reads: (written, late_until, the protocol's arrival time)."""
    loop = asyncio.get_running_loop()
    client.setblocking(False)
    protocol = NotingHandler(loop)
    transport = KernelStampedTransport(loop, client, protocol, clocks)
    transport.start()
    try:
        server.sendall(b"late bytes")
        written = time.monotonic()
        time.sleep(LATENESS)  # the loop cannot run: the reader comes late
        late_until = time.monotonic()
        await asyncio.wait_for(protocol.received.wait(), WAIT)
    finally:
        transport.abort()
    return written, late_until, protocol.data_received_at


@on_every_loop
async def test_the_transport_times_a_late_read_by_the_kernel(event_loop: str) -> None:
    assert running_event_loop() == event_loop
    client, server = connected_pair()
    with server:
        assert kernelstamps.enable(client)
        clocks = ReadClocks()
        _, late_until, arrived = await read_late(client, server, clocks)
    # Read once the loop was free again, stamped before: when the bytes were received.
    assert arrived < late_until
    assert (clocks.kernel_reads, clocks.loop_reads) == (1, 0)


@on_every_loop
async def test_without_stamps_the_transport_falls_back_to_the_loops_time(event_loop: str) -> None:
    client, server = connected_pair()
    with server:
        clocks = ReadClocks()
        written, late_until, arrived = await read_late(client, server, clocks)
    assert written < late_until <= arrived
    assert (clocks.kernel_reads, clocks.loop_reads) == (0, 1)
    assert chunk_clock(ReadClocks(), clocks) == "loop"


@on_every_loop
async def test_a_unix_socket_gets_the_loops_own_transport_and_the_loop_clock(event_loop: str) -> None:
    loop = asyncio.get_running_loop()
    before = read_clocks(loop)
    assert before is not None
    ours, theirs = socket.socketpair()
    with theirs:
        transport, protocol = await loop.create_connection(lambda: NotingHandler(loop), sock=ours)
        try:
            assert not isinstance(transport, KernelStampedTransport)
            theirs.sendall(b"late bytes")
            time.sleep(LATENESS)
            late_until = time.monotonic()
            await asyncio.wait_for(protocol.received.wait(), WAIT)
        finally:
            transport.close()
    assert protocol.data_received_at >= late_until
    after = read_clocks(loop)
    assert after is not None and after.loop_connections == before.loop_connections + 1
    assert chunk_clock(before, after) == "loop"


class OneLateAnswer(asyncio.Protocol):
    """Answers a streamed chat request with the head and one event in one write, confirms the
    write reached the kernel, then keeps the loop (and so the client on it) busy for LATENESS."""

    def __init__(self) -> None:
        self.buffer = b""
        self.written = 0.0
        self.late_until = 0.0
        self.flushed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, found, body = self.buffer.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-length:")), 0,
        )
        if not found or len(body) < length:
            return
        # The answer goes on (no last chunk): a response that ended within its first read would
        # have given its connection back before the body was read, and its arrival time with it.
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "late"}}]}\n\n'
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event)
        )
        self.flushed = self.transport.get_write_buffer_size() == 0  # all handed to the kernel
        self.written = time.monotonic()
        time.sleep(LATENESS)
        self.late_until = time.monotonic()


async def stream_one_late_answer(answer: OneLateAnswer) -> float:
    """A ChunkStream's `last_read_at` for the one chunk of a late-read answer."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Pool() as pool:
            client = OpenAICompatibleClient(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", pool=pool)
            async with client.stream_chat([{"role": "user", "content": "hi"}], model="m") as stream:
                chunk = await asyncio.wait_for(anext(stream), WAIT)
                assert chunk.text == "late"
                assert stream.last_read_at is not None
                return stream.last_read_at
    finally:
        server.close()


@on_every_loop
async def test_a_chunk_stream_on_the_kernel_clock_loop_is_timed_when_its_bytes_arrived(
    event_loop: str,
) -> None:
    answer = OneLateAnswer()
    before = read_clocks(asyncio.get_running_loop())
    last_read_at = await stream_one_late_answer(answer)
    assert answer.flushed
    assert last_read_at < answer.late_until
    after = read_clocks(asyncio.get_running_loop())
    assert before is not None and after is not None
    assert chunk_clock(before, after) == "kernel"


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_on_a_plain_loop_the_chunk_is_timed_when_the_loop_got_to_it(event_loop: str) -> None:
    answer = OneLateAnswer()
    last_read_at = run_on(event_loop, stream_one_late_answer(answer))
    assert answer.flushed
    assert answer.written < answer.late_until <= last_read_at


async def load_the_ruler() -> Measurement:
    server = await serve(Pace(ttft=0.005, gap=0.005, chunks=4))
    port = server.sockets[0].getsockname()[1]
    try:
        async with Pool() as pool:
            client = OpenAICompatibleClient(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", pool=pool)
            target = ClientTarget(client, Workload(provider="openai", model="ruler"), reads_sent_at=True)
            return await run_load(target, LoadPlan(concurrency=3, requests=6))
    finally:
        server.close()


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
@pytest.mark.parametrize(("kernel_clock", "expected"), [(True, "kernel"), (False, "loop")])
def test_a_run_records_the_clock_that_timed_its_chunks(
    event_loop: str, kernel_clock: bool, expected: str,
) -> None:
    measurement = run_on(event_loop, load_the_ruler(), kernel_clock=kernel_clock)
    assert measurement.chunk_clock == expected
    assert measurement.event_loop == event_loop
    assert [record.status for record in measurement.records] == ["ok"] * 6
    assert all(record.chunks == 4 for record in measurement.records)


def test_a_workload_without_streams_is_timed_by_the_loop() -> None:
    async def unstreamed() -> Measurement:
        server = await serve(Pace(ttft=0.005, gap=0.005, chunks=4))
        port = server.sockets[0].getsockname()[1]
        try:
            async with Pool() as pool:
                client = OpenAICompatibleClient(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", pool=pool)
                workload = Workload(provider="openai", model="ruler", stream=False)
                return await run_load(ClientTarget(client, workload), LoadPlan(concurrency=2, requests=2))
        finally:
            server.close()

    measurement = run_on("asyncio", unstreamed(), kernel_clock=True)
    assert measurement.chunk_clock == "loop"
