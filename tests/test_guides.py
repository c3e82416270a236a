"""Every code block of the guides runs as written: docs/timeouts.md, docs/proxies.md,
docs/logging.md, docs/web.md (each app served on 127.0.0.1 and read by a real client) and
docs/testing.md (each test file run by pytest)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web

from llmstreams.mock import Behaviour, MockServer
from tests.support import ROOT, python_examples, run_example

DOCS = ROOT / "docs"
TIMEOUTS = python_examples(DOCS / "timeouts.md")
PROXIES = python_examples(DOCS / "proxies.md")
LOGGING = python_examples(DOCS / "logging.md")
WEB = python_examples(DOCS / "web.md")
TESTING = python_examples(DOCS / "testing.md")
TESTING_CONFIGURATION = re.findall(r"```toml\n(.*?)```", (DOCS / "testing.md").read_text(), re.S)


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without proxy or vendor variables, plus `extra`."""
    environment = {
        name: value for name, value in os.environ.items()
        if not name.lower().endswith("_proxy") and not name.startswith("OPENAI_")
    }
    return {**environment, **extra}


def test_the_examples_were_found() -> None:
    assert (len(TIMEOUTS), len(PROXIES), len(LOGGING), len(WEB), len(TESTING)) == (4, 3, 1, 2, 2)


# docs/timeouts.md

async def test_settings_example() -> None:
    output = (await run_example(TIMEOUTS[0], clean_environment())).splitlines()
    assert output[0] == "Timeout(connect=5, first_chunk=60, idle=30, total=None)"
    assert output[1] == "Timeout(connect=10.0, first_chunk=600, idle=60.0, total=None) 0"
    assert output[2]


async def test_timeouts_example() -> None:
    idle, first_chunk = (await run_example(TIMEOUTS[1], clean_environment())).splitlines()
    phase, count, _ = idle.split(" ", 2)
    assert phase == "idle" and int(count) >= 1
    assert "chunks kept: '" in idle and "kept: ''" not in idle
    assert first_chunk.startswith("first_chunk - no response from http://127.0.0.1:")


async def test_retries_example() -> None:
    output = (await run_example(TIMEOUTS[2], clean_environment())).splitlines()
    assert output[0].startswith("attempts: 3 text: ")
    assert output[1:] == ["RateLimitError 429 True 0.2", "requests the mock saw: 4"]


async def test_rate_limit_example() -> None:
    output = (await run_example(TIMEOUTS[3], clean_environment())).splitlines()
    assert output == ["25 answers", "requests let through: 25"]


# docs/proxies.md

async def test_proxy_choice_example() -> None:
    output = await run_example(PROXIES[0], clean_environment())
    chosen = [line.split(" -> ") for line in output.splitlines()]
    assert [(url.strip(), proxy) for url, proxy in chosen] == [
        ("https://api.deepseek.com/chat/completions", "http://proxy.internal:3128"),
        ("http://127.0.0.1:8000/v1/chat/completions", "None"),
        ("https://llm.corp.example/v1/chat/completions", "None"),
        ("http://vllm.lab:8000/v1/chat/completions", "None"),
        ("http://vllm.lab:9000/v1/chat/completions", "http://proxy.internal:3128"),
        ("trust_env=False", "None"),
        ("proxy=", "http://10.0.0.2:3128"),
    ]


async def test_tls_inspecting_proxy_example() -> None:
    refused, trusted = (await run_example(PROXIES[1], clean_environment())).splitlines()
    assert refused.startswith("TLSCertificateError - could not reach https://127.0.0.1:")
    assert "certificate verify failed" in refused
    assert trusted.startswith("https answer: ") and len(trusted) > len("https answer: ")


async def test_through_a_proxy_example() -> None:
    answer, through, mock = (await run_example(PROXIES[2], clean_environment())).splitlines()
    assert answer.startswith("answer: ") and len(answer) > len("answer: ")
    assert through == "through the proxy: ['POST /v1/chat/completions']"
    assert mock == "the mock saw: 1 request"


# docs/logging.md

async def test_logging_example() -> None:
    lines = (await run_example(LOGGING[0], clean_environment())).splitlines()
    assert [line.split(":", 2)[:2] for line in lines[:3]] == [
        ["DEBUG llmstreams", " openai"], ["WARNING llmstreams", " openai"], ["DEBUG llmstreams", " openai"],
    ]
    assert "headers=[Content-Type, Authorization, " in lines[0]
    assert lines[1].startswith("WARNING llmstreams: openai: retry 1 of 2 in 0.0")
    assert "HTTP 503" in lines[1]
    assert lines[3].startswith("answer: ")
    assert not any("sk-my-secret-key" in line for line in lines)


# docs/web.md

def load_app(code: str) -> Any:
    """The `app` a web example defines, as `python app.py` would make it (but not run it)."""
    namespace: dict[str, Any] = {"__name__": "guide_app"}
    exec(compile(code, str(DOCS / "web.md"), "exec"), namespace)
    return namespace["app"]


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[str]:
    """`app` under uvicorn on a free port of 127.0.0.1 (lifespan on); yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await serving
        listener.close()


@contextlib.asynccontextmanager
async def aiohttp_serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a free port of 127.0.0.1 with `web.run_app`'s defaults; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


SERVERS = {"fastapi": (0, uvicorn_serving), "aiohttp": (1, aiohttp_serving)}


@pytest.fixture
async def slow_mock(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MockServer]:
    """A mock whose answers take 20 s (500 events at 25 a second), the apps' OPENAI_BASE_URL."""
    async with MockServer(behaviour=Behaviour(chunks_per_second=25, answer_chars=24 * 500)) as mock:
        monkeypatch.setenv("OPENAI_BASE_URL", mock.url + "/v1")
        yield mock


async def read_events(response: aiohttp.ClientResponse, count: int | None) -> list[tuple[str, Any]]:
    """The first `count` events (all, when None) of an event stream, as (event type, data)."""
    events: list[tuple[str, Any]] = []
    kind = "message"
    async for line in response.content:
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            kind = text.removeprefix("event: ")
        elif text.startswith("data: "):
            events.append((kind, json.loads(text.removeprefix("data: "))))
            kind = "message"
            if len(events) == count:
                break
    return events


@pytest.mark.parametrize("framework", SERVERS)
async def test_web_app_stops_the_upstream_stream_when_the_browser_leaves(
    framework: str, slow_mock: MockServer
) -> None:
    index, serving = SERVERS[framework]
    timeout = aiohttp.ClientTimeout(total=30)
    async with serving(load_app(WEB[index])) as url, aiohttp.ClientSession(timeout=timeout) as browser:
        response = await browser.get(url + "/chat", params={"q": "Tell me a long story"})
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await read_events(response, 3)
        assert [kind for kind, _ in events] == ["message"] * 3
        assert all(data["text"] for _, data in events)
        response.close()  # the browser leaves mid-answer
        stats = await slow_mock.wait_for(lambda stats: stats.streams_aborted == 1, timeout=10)
        assert stats.streams_started == 1
        assert stats.streams_completed == 0
        assert stats.open_connections == 0


@pytest.mark.parametrize("framework", SERVERS)
async def test_web_app_streams_a_whole_answer(framework: str, llmstreams_mock: MockServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", llmstreams_mock.url + "/v1")
    index, serving = SERVERS[framework]
    async with (
        serving(load_app(WEB[index])) as url,
        aiohttp.ClientSession() as browser,
        browser.get(url + "/chat", params={"q": "Hello"}) as response,
    ):
        events = await read_events(response, None)
    *texts, (kind, end) = events
    assert {kind for kind, _ in texts} == {"message"}
    assert len("".join(data["text"] for _, data in texts)) == 240
    assert kind == "end"
    assert end["finish_reason"] == "stop"
    assert end["usage"]["total_tokens"] > 0
    stats = await llmstreams_mock.wait_for(lambda stats: stats.streams_completed == 1)
    assert stats.streams_aborted == 0


# docs/testing.md

async def run_pytest(directory: Path, environment: Mapping[str, str]) -> str:
    """`python -m pytest -q` in `directory`, as an application's own test run; its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=directory,
        env={**environment, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(90):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_testing_guide_test_files_pass_under_pytest(tmp_path: Path) -> None:
    """Each block is a test file of an application: pytest runs them with the installed plugin."""
    (configuration,) = TESTING_CONFIGURATION
    (tmp_path / "pyproject.toml").write_text(configuration, encoding="utf-8")
    for number, code in enumerate(TESTING, 1):
        (tmp_path / f"test_guide_{number}.py").write_text(code, encoding="utf-8")
    output = await run_pytest(tmp_path, clean_environment())
    assert "4 passed" in output
    assert "warning" not in output.lower()
