"""Shared test support.

`LinesExchange`: a minimal vendor-free `Exchange` for testing the core, one JSON object per
line: `{"text": str, "end": bool}` or `{"error": code, "retryable": bool}`. And helpers that
run documentation examples in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

from llmstreams.errors import APIError, LLMStreamsError, StreamInterruptedError
from llmstreams.mock.workers import READY_PREFIX
from llmstreams.transport import HttpRequest, ResponseHead
from llmstreams.types import Chunk


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
