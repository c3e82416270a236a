"""`ChunkStream`: what a client's `stream_*` method returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

from llmstreams import telemetry
from llmstreams.errors import LLMStreamsError, UsageError
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.origin import caller_origin, warn_left_open
from llmstreams.pool import Pool
from llmstreams.transport import BodyReader, Exchange, ResponseParser, open_exchange, read_body
from llmstreams.types import Chunk, Completion, CompletionBuilder


class ChunkStream:
    """An async iterator of `Chunk` and an async context manager.

    Nothing is sent until the first `__anext__` (or `collect()`). Leaving `async with` early
    closes the connection at once; so does cancelling the task that is reading. Every error
    raised once the request was sent carries `.partial`, the `Completion` of the chunks that
    arrived before it.

        async with client.stream_chat(messages, model="ERNIE-Speed-8K") as stream:
            async for chunk in stream:
                print(chunk.text, end="")
    """

    __slots__ = (
        "_pool", "_exchange", "_timeout", "_retry", "_builder", "_pending", "_reader",
        "_parser", "_state", "_origin", "_telemetry", "attempts", "last_read_at",
    )

    def __init__(self, pool: Pool, exchange: Exchange, *, timeout: Timeout, retry: RetryPolicy) -> None:
        self._pool = pool
        self._exchange = exchange
        self._timeout = timeout
        self._retry = retry
        self._builder = CompletionBuilder()
        # The chunks of the current read, decoded one by one as they are asked for.
        self._pending: Iterator[Chunk] = iter(())
        self._reader: BodyReader | None = None
        self._parser: ResponseParser | None = None
        self._state = "new"
        self._telemetry: telemetry.GenerationRecord | None = None
        self.attempts = 0
        # The `time.monotonic()` by which the bytes carrying the chunk yielded last had arrived
        # from the socket (every chunk of one read shares it): taken when the connection
        # received them, not when the reading task got its turn on the loop.
        self.last_read_at: float | None = None
        self._origin = caller_origin()

    def __repr__(self) -> str:
        return (
            f"<ChunkStream {self._exchange.provider} {self._state} "
            f"chunks={self._builder.chunk_count}>"
        )

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> ChunkStream:
        return self

    if not TYPE_CHECKING:  # type checkers keep reporting `await stream` as an error

        def __await__(self) -> NoReturn:
            raise UsageError(
                "a ChunkStream is not awaited: read it with `async for chunk in stream`, or get"
                " the whole answer with `await stream.collect()` (best inside `async with`)"
            )

    async def __anext__(self) -> Chunk:
        try:
            chunk = next(self._pending, None)
        except BaseException as error:
            self._fail(error)
            raise
        if chunk is None:
            chunk = await self._next_read_chunk()
        self._builder.add(chunk)
        return chunk

    async def _next_read_chunk(self) -> Chunk:
        """The next chunk once the current read is used up: open, or read on, or end."""
        if self._state == "new":
            await self._open()
        while True:
            try:
                chunk = next(self._pending, None)
            except BaseException as error:
                self._fail(error)
                raise
            if chunk is not None:
                return chunk
            if self._state != "reading":
                if self._telemetry is not None:
                    self._end_telemetry(None)
                raise StopAsyncIteration
            await self._read_more()

    @property
    def completion(self) -> Completion:
        """Everything yielded so far, as a `Completion`."""
        return self._builder.build()

    async def collect(self) -> Completion:
        """Read the rest of the stream; the whole generation (including chunks already read)."""
        async for _ in self:
            pass
        return self._builder.build()

    async def aclose(self) -> None:
        """Stop reading and close the connection. Idempotent.

        Once the generation's end has arrived, the connection goes back to the pool instead,
        after the rest of the body is read (a wait bounded by the idle timeout).
        """
        if self._telemetry is not None:
            self._end_telemetry(None)
        reader, parser = self._reader, self._parser
        if self._state == "reading" and reader is not None and parser is not None and parser.finished:
            try:
                await reader.release_at_end()
            finally:
                self._close(abort=False)
            return
        self._close(abort=True)

    async def _open(self) -> None:
        self._state = "opening"
        self._pool.stream_opened()
        record = self._telemetry = telemetry.start(self._pool, self._exchange)
        try:
            opening = open_exchange(
                self._pool, self._exchange, timeout=self._timeout, retry=self._retry,
                on_attempt=self._count_attempt, on_retry=None if record is None else record.retried,
            )
            opened = await (opening if record is None else record.current_while(opening))
        except BaseException as error:
            self._fail(error)
            raise
        self.last_read_at = opened.reader.arrived_at
        self._reader = opened.reader
        self._parser = opened.parser
        self._pending = opened.first_chunks
        self._state = "reading"
        if record is not None and not opened.ended:
            record.first_chunk(opened.reader.arrived_at)
        if opened.ended:
            self._close(abort=False)

    def _count_attempt(self, number: int) -> None:
        self.attempts = number

    async def _read_more(self) -> None:
        reader, parser = self._reader, self._parser
        assert reader is not None and parser is not None
        try:
            if parser.finished:
                self._pending = iter(parser.close())
                await reader.release_at_end()
                self._close(abort=False)
                return
            data = await read_body(reader, self._exchange.provider)
            self.last_read_at = reader.arrived_at
            self._pending = iter(parser.feed(data) if data else parser.close())
        except BaseException as error:
            self._fail(error)
            raise
        if not data:
            self._close(abort=False)

    def _close(self, *, abort: bool) -> None:
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._reader is not None:
            if abort:
                self._reader.abort()
            else:
                self._reader.release()
        self._state = "closed"
        self._pool.stream_closed()
        usage = self._builder.usage
        if self._pool.rate_limiter is not None and usage is not None:
            self._pool.rate_limiter.record_tokens(usage.total_tokens)

    def _fail(self, error: BaseException) -> None:
        """`error` ends the stream: close the connection and attach what arrived before it."""
        self._close(abort=True)
        self._attach_partial(error)
        if self._telemetry is not None:
            self._end_telemetry(error)

    def _end_telemetry(self, error: BaseException | None, *, abandoned: bool = False) -> None:
        record, self._telemetry = self._telemetry, None
        if record is not None:
            record.end(self._builder, error, abandoned=abandoned, last_read_at=self.last_read_at)

    def _attach_partial(self, error: BaseException) -> None:
        if isinstance(error, LLMStreamsError):
            if error.partial is None:
                error.partial = self._builder.build()
            if error.request_id is None:
                # Errors of the transport know no vendor: the chunks that arrived name the request.
                error.request_id = error.partial.request_id

    def __del__(self) -> None:
        # A stream abandoned mid-way (no `async with`, no aclose) must not hold its connection.
        if self._state == "reading" and self._reader is not None:
            self._close(abort=True)
            warn_left_open(
                f"a {self._exchange.provider} ChunkStream", self._origin,
                "its connection is closed now. Use `async with` or read it to the end", self,
            )
        if self._telemetry is not None:
            self._end_telemetry(None, abandoned=True)
