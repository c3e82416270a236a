"""Every example in docs/dashscope.md runs as written against the mock server."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmstreams.mock import MockServer
from llmstreams.mock.workers import READY_PREFIX

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "dashscope.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


async def run_example(code: str, base_url: str) -> str:
    environment = dict(os.environ)
    environment.update(
        DASHSCOPE_API_KEY="any-key",
        DASHSCOPE_BASE_URL=base_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")])),
        PYTHONIOENCODING="utf-8",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


def test_the_examples_were_found() -> None:
    assert len(EXAMPLES) == 3


async def test_stream_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[0], server.url)
    text, finish, usage = output.rstrip("\n").split("\n")[-3:]
    assert len(text) == 240
    assert finish == "finish_reason: stop"
    assert usage.startswith("usage: Usage(prompt_tokens=")
    assert server.stats.streams_completed == 1


async def test_messages_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[1], server.url)
    text, details = output.rstrip("\n").split("\n")
    assert len(text) > 0
    assert details.startswith("stop Usage(")
    assert server.stats.requests["dashscope.generation"] == 1


async def test_error_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[2], server.url)
    lines = output.rstrip("\n").split("\n")
    assert lines[-2] == "RateLimitError Throttling 429"
    assert lines[-1] == f"kept before the error: {lines[-3]!r}"
    assert len(lines[-3]) == 72


async def test_examples_against_the_mock_command() -> None:
    """The documented way: `python -m llmstreams mock`, then the environment variables."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "mock", "--port", "0", cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            ready = (await process.stdout.readline()).decode()
        if not ready.startswith(READY_PREFIX):
            assert process.stderr is not None
            pytest.fail(f"the mock command did not start: {ready}{(await process.stderr.read()).decode()}")
        url = ready[len(READY_PREFIX):].split()[0]
        output = await run_example(EXAMPLES[0], url)
        assert "finish_reason: stop" in output
    finally:
        process.terminate()
        await process.wait()
