"""The synchronous door: any llmstreams client, called without `await`.

    from llmstreams import QianfanClient
    from llmstreams.sync import SyncClient

    with SyncClient(QianfanClient(api_key=..., secret_key=...)) as client:
        print(client.chat(messages, model="ERNIE-Speed-8K").text)
        for chunk in client.stream_chat(messages, model="ERNIE-Speed-8K"):
            print(chunk.text, end="")

The async client does the work, on a private event loop that llmstreams runs in a background
thread (one per process, started on first use, shared by every `SyncClient`). So a sync call
gets the same pool, retries, timeouts, typed errors and `.partial` as an awaited one, and it
works where the calling thread already runs a loop of its own (a Jupyter notebook). Each call
waits as long as the client's own `Timeout` lets the request run. Ctrl-C while waiting cancels
the request and raises `KeyboardInterrupt`. Clients still open when the interpreter exits are
closed then.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import signal
import threading
import weakref
from collections.abc import Coroutine, Iterator
from typing import Any, Generic, Self, TypeVar

from llmstreams.calls import Call
from llmstreams.client import BaseClient
from llmstreams.errors import UsageError
from llmstreams.streams import ChunkStream
from llmstreams.types import Chunk, Completion

T = TypeVar("T")
ClientT = TypeVar("ClientT", bound=BaseClient)

# Bounds the wait for the private loop's thread to start or to stop (the requests themselves
# are bounded by each client's Timeout).
_THREAD_WAIT = 30.0


# Signals that report a fault of the thread that caused it: never blocked.
_FAULT_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS")
    if hasattr(signal, name)
)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block the asynchronous signals in the calling thread for the duration.

    A thread started meanwhile keeps them blocked, so the kernel delivers Ctrl-C (and the
    like) to the main thread, where Python runs signal handlers: otherwise a main thread
    blocked in input() or waiting on a sync call could miss its KeyboardInterrupt.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _FAULT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="llmstreams-sync", daemon=True
        )
        with _signals_blocked():
            self._thread.start()  # the thread (and any it starts) keeps this signal mask
        started.wait(_THREAD_WAIT)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise UsageError(
                "a llmstreams.sync call was made on llmstreams' own event loop, where it would"
                " wait for itself; in a coroutine, await the async client instead"
            )
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def submit(self, coroutine: Coroutine[Any, Any, object]) -> concurrent.futures.Future[object]:
        """Start `coroutine` on the loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_THREAD_WAIT)
        if not self._thread.is_alive():
            self.loop.close()


_lock = threading.Lock()
_loop_thread: _LoopThread | None = None
_open_clients: weakref.WeakSet[SyncClient[Any]] = weakref.WeakSet()


def _runner() -> _LoopThread:
    global _loop_thread
    with _lock:
        if _loop_thread is None:
            _loop_thread = _LoopThread()
            atexit.register(_shutdown)
        return _loop_thread


def _shutdown() -> None:
    """At interpreter exit: close the clients still open, then stop the loop."""
    global _loop_thread
    for client in list(_open_clients):
        client.close()
    with _lock:
        runner, _loop_thread = _loop_thread, None
    if runner is not None:
        runner.stop()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on llmstreams' private loop and wait for its result.

    For the odd async call that has no sync wrapper, e.g. starting a `MockServer` that
    sync clients then talk to: `run(server.start())`.
    """
    return _runner().run(coroutine)


class SyncStream:
    """A `ChunkStream` read without `await`: an iterator of `Chunk` and a context manager.

    Nothing is sent until the first `next()` (or `collect()`). Leaving `with` early, or
    `close()`, closes the connection; an abandoned stream is closed once it is garbage.
    """

    def __init__(self, stream: ChunkStream, runner: _LoopThread) -> None:
        self._stream: ChunkStream | None = stream
        self._runner = runner

    def __repr__(self) -> str:
        return f"<SyncStream {self._stream!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        try:
            return self._runner.run(self._open().__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def completion(self) -> Completion:
        """Everything yielded so far, as a `Completion`."""
        return self._open().completion

    @property
    def attempts(self) -> int:
        return self._open().attempts

    def collect(self) -> Completion:
        """Read the rest of the stream; the whole generation."""
        return self._runner.run(self._open().collect())

    def close(self) -> None:
        """Stop reading and close the connection. Idempotent."""
        if self._stream is not None:
            self._runner.run(self._stream.aclose())

    def _open(self) -> ChunkStream:
        if self._stream is None:
            raise UsageError("this stream was garbage collected")
        return self._stream

    def __del__(self) -> None:
        # The ChunkStream must die on the loop's thread: its connection belongs to that loop.
        stream, self._stream = self._stream, None
        if stream is not None and not self._runner.loop.is_closed():
            self._runner.submit(stream.aclose())


class SyncClient(Generic[ClientT]):
    """Wraps an async client (`QianfanClient`, `DashScopeClient`, ...) for calls without `await`.

    Its methods are the client's, by the same names and with the same arguments: `chat()`,
    `complete()`, `generate()` and `complete_call()` return a `Completion`; `stream_chat()`,
    `stream_complete()`, `stream_generate()` and `stream_call()` return a `SyncStream`. Use the client only through this wrapper
    (its pool lives on llmstreams' private loop). `close()` or `with` closes it.
    """

    def __init__(self, client: ClientT) -> None:
        self.client = client
        self._runner = _runner()
        self._closed = False
        _open_clients.add(self)

    def __repr__(self) -> str:
        return f"<SyncClient {self.client!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (and its own pool). Idempotent."""
        if not self._closed:
            self._closed = True
            _open_clients.discard(self)
            self._runner.run(self.client.close())

    def chat(self, *args: Any, **kwargs: Any) -> Completion:
        return self._call("chat", args, kwargs)

    def complete(self, *args: Any, **kwargs: Any) -> Completion:
        return self._call("complete", args, kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Completion:
        return self._call("generate", args, kwargs)

    def complete_call(self, call: Call) -> Completion:
        return self._call("complete_call", (call,), {})

    def stream_call(self, call: Call) -> SyncStream:
        return self._stream("stream_call", (call,), {})

    def stream_chat(self, *args: Any, **kwargs: Any) -> SyncStream:
        return self._stream("stream_chat", args, kwargs)

    def stream_complete(self, *args: Any, **kwargs: Any) -> SyncStream:
        return self._stream("stream_complete", args, kwargs)

    def stream_generate(self, *args: Any, **kwargs: Any) -> SyncStream:
        return self._stream("stream_generate", args, kwargs)

    def _method(self, name: str) -> Any:
        if self._closed:
            raise UsageError(f"this SyncClient is closed; {name}() needs an open one")
        try:
            return getattr(self.client, name)
        except AttributeError:
            raise AttributeError(f"{type(self.client).__name__} has no {name}()") from None

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Completion:
        method = self._method(name)
        completion: Completion = self._runner.run(method(*args, **kwargs))
        return completion

    def _stream(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SyncStream:
        # Parameters are checked here, in the caller's thread, before anything is sent.
        stream: ChunkStream = self._method(name)(*args, **kwargs)
        return SyncStream(stream, self._runner)
