"""Every example in docs/qianfan.md runs as written against the mock server; its tables are true."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator

import pytest

from llmstreams.mock import MockServer
from llmstreams.qianfan import MODELS
from llmstreams.qianfan.auth import ENV_LAYOUTS
from llmstreams.qianfan.models import V2_MODEL_IDS
from tests.support import ROOT, mock_command, python_examples
from tests.support import run_example as run_python

DOC_TEXT = (ROOT / "docs" / "qianfan.md").read_text(encoding="utf-8")
V2_EXAMPLES, EXAMPLES = (
    python_examples(ROOT / "docs" / "qianfan.md")[:3],
    python_examples(ROOT / "docs" / "qianfan.md")[3:],
)
V2_KEY = "bce-v3/ALTAK-docs/any-secret"
CREDENTIAL_VARIABLES = {variable for _, layout in ENV_LAYOUTS for variable in layout.values()}


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


async def run_example(code: str, base_url: str, *, v2: bool = False) -> str:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in CREDENTIAL_VARIABLES and name != "QIANFAN_BASE_URL"
    }
    if v2:
        environment.update(QIANFAN_API_KEY=V2_KEY, QIANFAN_BASE_URL=base_url)
    else:
        environment.update(
            QIANFAN_API_KEY="any-key", QIANFAN_SECRET_KEY="any-secret", QIANFAN_BASE_URL=base_url
        )
    return await run_python(code, environment)


def test_the_examples_were_found() -> None:
    assert len(V2_EXAMPLES) == 3
    assert len(EXAMPLES) == 4


async def test_v2_chat_stream_example(server: MockServer) -> None:
    output = await run_example(V2_EXAMPLES[0], server.url, v2=True)
    text, api, usage, request_id = output.rstrip("\n").split("\n")[-4:]
    assert len(text) == 240
    assert api == "vendor: qianfan finish_reason: stop"
    assert usage.startswith("usage: Usage(prompt_tokens=")
    assert request_id == "request id: as-"
    assert server.stats.requests["qianfan.v2.chat"] == 1


async def test_v2_whole_chat_example(server: MockServer) -> None:
    output = await run_example(V2_EXAMPLES[1], server.url, v2=True)
    assert output == "240 stop True\n"
    assert server.stats.requests["qianfan.v2.chat"] == 1


async def test_v2_iam_key_pair_example() -> None:
    output = await run_python(V2_EXAMPLES[2], {
        name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES
    })
    assert output == "True stop\nTrue stop\nbearer tokens fetched: 1\n"


def test_the_v2_model_table_is_the_mapping() -> None:
    rows = re.findall(r"^\| (ERNIE-\S+) \| ([a-z0-9.-]+) \|$", DOC_TEXT, flags=re.MULTILINE)
    assert dict(rows) == V2_MODEL_IDS and len(rows) == len(V2_MODEL_IDS)


async def test_chat_stream_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[0], server.url)
    text, finish, usage = output.rstrip("\n").split("\n")[-3:]
    assert len(text) == 240
    assert finish == "finish_reason: normal"
    assert usage.startswith("usage: Usage(prompt_tokens=")
    assert server.stats.streams_completed == 1
    assert server.stats.requests["token"] == 1


async def test_completion_stream_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[1], server.url)
    lines = output.rstrip("\n").split("\n")
    assert lines[-1] == "complete: True"
    assert lines[0].startswith("[0] ") and lines[0].endswith("is_safe=True")
    assert len(lines) == 1 + 10  # 240 characters in chunks of 24
    assert server.stats.requests["qianfan.completions"] == 1


async def test_deployed_service_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[2], server.url)
    text, details = output.rstrip("\n").split("\n")
    assert len(text) == 240
    assert details.startswith("as-") and "Usage(prompt_tokens=" in details
    assert server.stats.requests["qianfan.chat"] == 1


async def test_broken_stream_example(server: MockServer) -> None:
    output = await run_example(EXAMPLES[3], server.url)
    lines = output.rstrip("\n").split("\n")
    assert lines[-2] == "StreamInterruptedError 3"
    assert lines[-1] == f"kept before the error: {lines[-3]!r}"
    assert len(lines[-3]) == 72


async def test_examples_against_the_mock_command() -> None:
    """The documented way: `python -m llmstreams mock`, then the environment variables."""
    async with mock_command() as url:
        output = await run_example(EXAMPLES[0], url)
    assert "finish_reason: normal" in output


def test_the_model_table_is_the_registry() -> None:
    rows = re.findall(r"^\| (\S+) \| (chat|completions) \| (\S+) \|$", DOC_TEXT, flags=re.MULTILINE)
    assert rows == [(info.name, info.kind, info.endpoint) for info in MODELS]


def test_every_environment_variable_is_documented() -> None:
    for variable in [*CREDENTIAL_VARIABLES, "QIANFAN_BASE_URL"]:
        assert f"`{variable}`" in DOC_TEXT, variable
