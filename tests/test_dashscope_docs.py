"""Every example in docs/dashscope.md runs as written against the mock server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from llmstreams.mock import MockServer
from tests.support import ROOT, mock_command, python_examples
from tests.support import run_example as run_python

EXAMPLES = python_examples(ROOT / "docs" / "dashscope.md")


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


async def run_example(code: str, base_url: str) -> str:
    return await run_python(
        code, {**os.environ, "DASHSCOPE_API_KEY": "sk-any-key", "DASHSCOPE_BASE_URL": base_url}
    )


def test_the_examples_were_found() -> None:
    assert len(EXAMPLES) == 4


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


async def test_compatible_mode_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[2], server.url)
    streamed, sizes, usage = output.rstrip("\n").split("\n")
    assert len(streamed) == 120 + 240
    assert sizes == "120 240 stop"
    assert usage.startswith("usage: Usage(prompt_tokens=")
    assert server.stats.requests["dashscope.compatible.chat"] == 1


async def test_error_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[3], server.url)
    lines = output.rstrip("\n").split("\n")
    assert lines[-2] == "RateLimitError Throttling 429"
    assert lines[-1] == f"kept before the error: {lines[-3]!r}"
    assert len(lines[-3]) == 72


async def test_examples_against_the_mock_command() -> None:
    """The documented way: `python -m llmstreams mock`, then the environment variables."""
    async with mock_command() as url:
        output = await run_example(EXAMPLES[0], url)
    assert "finish_reason: stop" in output
