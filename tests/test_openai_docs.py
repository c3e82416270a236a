"""Every example in docs/openai.md runs as written against the mock server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from llmstreams.mock import MockServer
from tests.support import ROOT, mock_command, python_examples
from tests.support import run_example as run_python

EXAMPLES = python_examples(ROOT / "docs" / "openai.md")


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


async def run_example(code: str, base_url: str) -> str:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("OPENAI_")
    }
    environment["OPENAI_BASE_URL"] = base_url + "/v1"
    return await run_python(code, environment)


def test_the_examples_were_found() -> None:
    assert len(EXAMPLES) == 2


async def test_chat_stream_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[0], server.url)
    text, finish, usage = output.rstrip("\n").split("\n")[-3:]
    assert len(text) == 240
    assert finish == "finish_reason: stop"
    assert usage.startswith("usage: Usage(prompt_tokens=")
    assert server.stats.requests["openai.chat"] == 1


async def test_reasoning_and_tool_call_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[1], server.url)
    assert output.split("\n")[:5] == [
        "reasoning: 120 characters",
        "answer: 240 characters",
        "call: search True True",
        "finish_reason: tool_calls",
        "",
    ]


async def test_examples_against_the_mock_command() -> None:
    """The documented way: `python -m llmstreams mock`, then OPENAI_BASE_URL."""
    async with mock_command() as url:
        output = await run_example(EXAMPLES[0], url)
    assert "finish_reason: stop" in output
