"""Shared test support.

`LinesExchange`: a minimal vendor-free `Exchange` for testing the core, one JSON object per
line: `{"text": str, "end": bool}` or `{"error": code, "retryable": bool}`. `serving`: an
aiohttp app on a loopback port. And helpers that run documentation examples in a fresh
interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

from aiohttp import web

from llmstreams import RetryPolicy
from llmstreams.errors import APIError, LLMStreamsError, StreamInterruptedError
from llmstreams.mock.workers import READY_PREFIX
from llmstreams.transport import HttpRequest, ResponseHead
from llmstreams.types import Chunk

FAST_RETRY = RetryPolicy(max_retries=2, backoff_base=0.001, backoff_max=0.001)
"""Two retries, without waiting between attempts."""


@contextlib.asynccontextmanager
async def serving(app: web.Application, *, backlog: int = 128) -> AsyncIterator[str]:
    """`app` on a free port of 127.0.0.1 for the block; yields its base URL. A handler is
    cancelled when its client goes away."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=backlog).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class LinesParser:
    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.buffer = b""
        self.count = 0
        self.end_seen = False
        self.deferred: APIError | None = None

    @property
    def finished(self) -> bool:
        return self.end_seen or self.deferred is not None

    def feed(self, data: bytes) -> list[Chunk]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        chunks: list[Chunk] = []
        for line in lines:
            if not line:
                continue
            item = json.loads(line)
            if "error" in item:
                error = APIError(
                    "test error", code=item["error"], http_status=self.head.status,
                    provider="lines", retryable=item.get("retryable", False),
                    retry_after=self.head.retry_after,
                )
                if not chunks:
                    raise error
                self.deferred = error
                return chunks
            chunks.append(Chunk(text=item["text"], sentence_id=self.count, is_end=item["end"]))
            self.count += 1
            self.end_seen = item["end"]
        return chunks

    def close(self) -> list[Chunk]:
        if self.deferred is not None:
            raise self.deferred
        chunks = self.feed(b"\n")
        if self.deferred is not None:
            raise self.deferred
        if not self.end_seen:
            raise StreamInterruptedError("ended before the end line", provider="lines")
        return chunks


def chunks_until_error(chunks: Iterable[Chunk]) -> tuple[list[Chunk], LLMStreamsError | None]:
    """The chunks a parser's `feed`/`close` yields, and the llmstreams error that ended them."""
    taken: list[Chunk] = []
    try:
        for chunk in chunks:
            taken.append(chunk)
    except LLMStreamsError as error:
        return taken, error
    return taken, None


class LinesExchange:
    provider = "lines"

    def __init__(self, url: str, body: bytes = b"{}") -> None:
        self.url = url
        self.body = body
        self.requests_built = 0
        self.recoveries = 0
        self.recover_code: object = None

    async def build_request(self) -> HttpRequest:
        self.requests_built += 1
        return HttpRequest(
            method="POST", url=self.url, body=self.body,
            headers={"Content-Type": "application/json", "Authorization": "secret-header-value"},
            params={"access_token": "secret-token-value"},
        )

    def parser(self, head: ResponseHead) -> LinesParser:
        return LinesParser(head)

    async def recover(self, error: APIError) -> bool:
        if error.code == self.recover_code:
            self.recoveries += 1
            return True
        return False


ROOT = Path(__file__).resolve().parent.parent


def python_examples(document: Path) -> list[str]:
    """The ```python blocks of a Markdown document, in order."""
    return re.findall(r"```python\n(.*?)```", document.read_text(encoding="utf-8"), flags=re.DOTALL)


async def run_example(code: str, environment: Mapping[str, str]) -> str:
    """Run `code` in a fresh interpreter with `environment`; its stdout (it must exit 0)."""
    environment = dict(environment)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    environment["PYTHONIOENCODING"] = "utf-8"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@contextlib.asynccontextmanager
async def mock_command() -> AsyncIterator[str]:
    """`python -m llmstreams mock --port 0` running, as the docs start it; yields its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "mock", "--port", "0", cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        async with asyncio.timeout(30):
            ready = (await process.stdout.readline()).decode()
        if not ready.startswith(READY_PREFIX):
            raise AssertionError(f"the mock command did not start: {ready}{(await process.stderr.read()).decode()}")
        yield ready[len(READY_PREFIX):].split()[0]
    finally:
        process.terminate()
        await process.wait()


def _own_terminal() -> None:
    """In the child: a session of its own, with the pseudo-terminal (its stdin) controlling it,
    so that Ctrl-C typed there is SIGINT."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # As a shell starts a job: whatever the test process did with SIGINT is not inherited.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class Terminal:
    """A command running in a pseudo-terminal: type into it, read what it shows.

    stdin, stdout and stderr are all the terminal, as in an interactive shell.
    """

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self._master = master
        self._output = bytearray()
        self._seen = 0
        self._changed = asyncio.Event()
        self._eof = False
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str] | None = None, columns: int = 100) -> Terminal:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns), **(env or {})}
        process = await asyncio.create_subprocess_exec(
            *args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=environment,
            preexec_fn=_own_terminal,
        )
        os.close(slave)
        return cls(process, master)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            data = b""
        if not data:
            self._eof = True
            asyncio.get_running_loop().remove_reader(self._master)
        self._output += data
        self._changed.set()

    @property
    def output(self) -> str:
        """Everything shown so far."""
        return self._output.decode("utf-8", "replace")

    async def expect(self, pattern: str, timeout: float = 90) -> str:
        """Wait until `pattern` (a regex) shows after what earlier calls matched; the text up to it."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                text = self._output[self._seen:].decode("utf-8", "replace")
                found = regex.search(text)
                if found:
                    self._seen += len(text[: found.end()].encode())
                    return text[: found.end()]
                if self._eof:
                    raise AssertionError(f"{pattern!r} never showed; the terminal shows:\n{self.output}")
                self._changed.clear()
                await self._changed.wait()

    def send(self, text: str) -> None:
        os.write(self._master, text.encode())

    async def wait(self, timeout: float = 90) -> int:
        """The exit status, once everything it showed has been read."""
        try:
            async with asyncio.timeout(timeout):
                status = await self.process.wait()
                while not self._eof:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"still running; the terminal shows:\n{self.output!r}") from None
        return status

    def close(self) -> None:
        if not self._eof:
            asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        if self.process.returncode is None:
            self.process.kill()


def render(output: str) -> list[str]:
    """The lines a terminal shows for `output`: CR returns to the line's start, ESC[K clears
    the rest of the line, other escape sequences (colours) are dropped."""
    lines: list[list[str]] = [[]]
    column = 0
    for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|\r\n|.", output, flags=re.S):
        line = lines[-1]
        if token in ("\n", "\r\n"):
            lines.append([])
            column = 0
        elif token == "\r":
            column = 0
        elif token == "\x1b[K":
            del line[column:]
        elif token.startswith("\x1b["):
            continue
        else:
            if column < len(line):
                line[column] = token
            else:
                line.append(token)
            column += 1
    return ["".join(line).rstrip() for line in lines]
