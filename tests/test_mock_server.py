"""The mock server as a whole: lifecycle, stats, the CLI, worker processes and pytest fixtures."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from llmstreams.commands import mock as mock_command
from llmstreams.mock import Behaviour, MockCredentials, MockServer, MockStats, spawn_mock_workers
from llmstreams.mock import pytest_plugin as plugin
from llmstreams.mock.dashscope import GENERATION_PATH
from llmstreams.mock.qianfan import API_PREFIX, TOKEN_PATH

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHSCOPE_HEADERS = {"Authorization": "Bearer sk-test"}
PROMPT = {"model": "qwen-turbo", "input": {"prompt": "hello"}}
READY = re.compile(r"^llmstreams mock listening on (http://127\.0\.0\.1:\d+) \((\d+) workers?\)$")
PROCESS_TIMEOUT = 30.0


async def generate(session: aiohttp.ClientSession, url: str, api_key: str = "sk-test") -> int:
    async with session.post(
        url + GENERATION_PATH, json=PROMPT, headers={"Authorization": f"Bearer {api_key}"}
    ) as response:
        await response.read()
        return response.status


async def test_url_and_port(server: MockServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0
    assert repr(server) == f"<MockServer {server.url}>"


async def test_an_unstarted_server_has_no_port() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = MockServer().url


async def test_stats_count_requests_per_route(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    params = {"grant_type": "client_credentials", "client_id": "k", "client_secret": "s"}
    async with session.post(server.url + TOKEN_PATH, params=params) as response:
        token = (await response.json())["access_token"]
    for kind, body in [("chat", {"messages": [{"role": "user", "content": "hi"}]})] * 2 + [
        ("completions", {"prompt": "hi", "stream": True})
    ]:
        async with session.post(
            f"{server.url}{API_PREFIX}/{kind}/some_endpoint",
            params={"access_token": token},
            json=body,
        ) as response:
            await response.read()
    await generate(session, server.url)
    stats = server.stats
    assert {route: count for route, count in stats.requests.items() if count} == {
        "token": 1, "qianfan.chat": 2, "qianfan.completions": 1, "dashscope.generation": 1,
    }
    # Every OpenAI-compatible provider of the registry is counted under its own route.
    assert {"qianfan.v2.chat", "dashscope.compatible.chat", "openai.completions", "deepseek.chat",
            "siliconflow.chat"} <= set(stats.requests)
    assert (stats.tokens_issued, stats.streams_started, stats.streams_completed) == (1, 1, 1)


async def test_connections_are_tracked(server: MockServer) -> None:
    async with aiohttp.ClientSession() as session:
        await generate(session, server.url)
        await generate(session, server.url)
        stats = await server.wait_for(lambda stats: stats.open_connections == 1)
        assert stats.connections_opened == 1, "the client reused its keep-alive connection"
    stats = await server.wait_for(lambda stats: stats.open_connections == 0)
    assert stats.connections_opened == 1


async def test_a_client_leaving_mid_stream_is_counted_as_aborted(
    session: aiohttp.ClientSession,
) -> None:
    async with MockServer(behaviour=Behaviour(chunks_per_second=0.01)) as server:
        headers = {**DASHSCOPE_HEADERS, "X-DashScope-SSE": "enable"}
        async with session.post(
            server.url + GENERATION_PATH, json=PROMPT, headers=headers
        ) as response:
            await response.content.readuntil(b"\n\n")
            await server.wait_for(lambda stats: stats.streams_active == 1)
        stats = await server.wait_for(lambda stats: stats.streams_aborted == 1)
        assert (stats.streams_started, stats.streams_completed, stats.streams_active) == (1, 0, 0)


async def test_wait_for_times_out_with_the_last_stats(server: MockServer) -> None:
    with pytest.raises(TimeoutError, match="tokens_issued=0"):
        await server.wait_for(lambda stats: stats.tokens_issued > 0, timeout=0.05)


async def test_wait_for_returns_the_matching_snapshot(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    waiter = asyncio.create_task(
        server.wait_for(lambda stats: stats.requests["dashscope.generation"] == 2)
    )
    await generate(session, server.url)
    await generate(session, server.url)
    stats = await waiter
    assert isinstance(stats, MockStats)
    assert stats.requests["dashscope.generation"] == 2


async def test_close_is_idempotent_and_frees_the_port(session: aiohttp.ClientSession) -> None:
    server = MockServer()
    await server.start()
    url = server.url
    await server.close()
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await generate(session, url)
    with pytest.raises(RuntimeError, match="starts once"):
        await server.start()


def test_credentials_never_show_in_reprs() -> None:
    credentials = MockCredentials(api_key="ak-123", secret_key="sk-456", dashscope_api_key="d-789")
    text = repr(credentials)
    assert not any(secret in text for secret in ("ak-123", "sk-456", "d-789"))
    assert "secret_access_key=None" in text


async def read_ready_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT)
    return line.decode().rstrip("\n")


async def test_cli_serves_with_several_workers_until_sigterm(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    credentials_file = tmp_path / "credentials.json"
    credentials_file.write_text(json.dumps({"dashscope_api_key": "sk-cli"}))
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "llmstreams", "mock", "--port", "0", "--workers", "2"],
        *["--credentials", str(credentials_file), "--answer-chars", "30", "--trickle"],
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        match = READY.match(await read_ready_line(process))
        assert match is not None
        url, workers = match.groups()
        assert workers == "2"
        assert await generate(session, url, api_key="sk-wrong") == 401
        async with session.post(
            url + GENERATION_PATH, json=PROMPT, headers={"Authorization": "Bearer sk-cli"}
        ) as response:
            assert len((await response.json())["output"]["text"]) == 30
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT)
    assert exit_code == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await generate(session, url)


def test_cli_rejects_a_bad_knob(capsys: pytest.CaptureFixture[str]) -> None:
    assert mock_command.main(["--chunk-chars", "0"]) == 2
    assert "'chunk_chars' must be >= 1" in capsys.readouterr().err


async def test_spawned_workers_serve_one_url_and_stop_on_exit(
    session: aiohttp.ClientSession,
) -> None:
    async with spawn_mock_workers(
        2, credentials=MockCredentials(dashscope_api_key="sk-w"), answer_chars=12, trickle=True
    ) as url:
        # A new connection per request, so the kernel spreads them over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            statuses = [await generate(fresh, url, api_key="sk-w") for _ in range(8)]
        assert statuses == [200] * 8
        assert await generate(session, url, api_key="sk-other") == 401
    with pytest.raises(aiohttp.ClientConnectionError):
        await generate(session, url)


def test_spawn_rejects_unknown_knobs() -> None:
    with pytest.raises(TypeError, match="unknown knobs: bogus"):
        spawn_mock_workers(1, bogus=1)


def test_plugin_imports_without_pytest_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytest_asyncio", None)  # makes its import fail
    spec = importlib.util.spec_from_file_location("plugin_without_pytest_asyncio", plugin.__file__)
    assert spec is not None and spec.loader is not None
    fresh_copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh_copy)
    assert fresh_copy.async_fixture is pytest.fixture
    assert callable(fresh_copy.llmstreams_mock_factory)


def test_plugin_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        """
        import aiohttp
        from llmstreams.mock import Behaviour, MockServer

        async def test_default_server(llmstreams_mock: MockServer) -> None:
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    llmstreams_mock.url + "/api/v1/services/aigc/text-generation/generation",
                    json={"model": "qwen-turbo", "input": {"prompt": "hi"}},
                    headers={"Authorization": "Bearer sk-test"},
                ) as response:
                    assert response.status == 200
            assert llmstreams_mock.stats.requests["dashscope.generation"] == 1

        async def test_factory(llmstreams_mock_factory) -> None:
            first = await llmstreams_mock_factory(behaviour=Behaviour(answer_chars=5))
            second = await llmstreams_mock_factory(trigger_phrase="xyz")
            assert first.port != second.port
            assert first.behaviour.answer_chars == 5
        """
    )
    result = pytester.runpytest_inprocess(
        "-p", "no:llmstreams", "-p", "llmstreams.mock.pytest_plugin", "-q"
    )
    result.assert_outcomes(passed=2)
