"""`llmstreams mock` run as a user runs it: in a subprocess, from the shell."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"^llmstreams mock listening on (http://127\.0\.0\.1:(\d+)) \((\d+) workers?\)$")
PROCESS_TIMEOUT = 30.0
MOCK = [sys.executable, "-m", "llmstreams", "mock"]
COMPLETIONS = "/v1/completions"
COMPLETION_BODY = {"model": "m", "prompt": "hi"}


async def start_mock(*options: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        *MOCK, *options, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT)
    match = READY.match(line.decode().rstrip("\n"))
    assert match is not None, line
    return process, match.group(1)


async def stop_mock(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT)


def child_pids(pid: int) -> list[int]:
    """The children of `pid`, whichever of its threads started them (Linux /proc)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


async def wait_for_exit(pid: int, timeout: float) -> None:
    """Wait until process `pid` (not necessarily our child) has exited, via a pidfd."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(descriptor, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), timeout)
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers: Linux")
async def test_workers_exit_when_their_parent_is_killed(session: aiohttp.ClientSession) -> None:
    process, url = await start_mock("--port", "0", "--workers", "2")
    try:
        workers = child_pids(process.pid)
        assert len(workers) == 2
        process.kill()
        await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT)
        for worker in workers:
            await wait_for_exit(worker, PROCESS_TIMEOUT)
    finally:
        await stop_mock(process)
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.post(url + COMPLETIONS, json=COMPLETION_BODY)


@pytest.mark.parametrize("workers", ["1", "3"])
async def test_a_busy_port_is_one_line_and_a_failure(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = await asyncio.create_subprocess_exec(
            *MOCK,
            "--port",
            port,
            "--workers",
            workers,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), PROCESS_TIMEOUT)
    assert process.returncode == 1
    assert stdout == b""
    message = stderr.decode()
    assert message.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "--port 0" in message


async def test_health_and_stats_of_a_single_server(session: aiohttp.ClientSession) -> None:
    process, url = await start_mock("--port", "0")
    try:
        async with session.get(url + "/health") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        for _ in range(2):
            async with session.post(url + COMPLETIONS, json=COMPLETION_BODY) as response:
                assert response.status == 200
        async with session.get(url + "/stats") as response:
            stats = await response.json()
    finally:
        assert await stop_mock(process) == 0
    assert stats["requests"]["openai.completions"] == 2
    assert stats["workers"] == 1
    assert stats["open_connections"] == 1
    assert stats["streams_active"] == 0


async def test_stats_are_summed_over_the_workers(session: aiohttp.ClientSession) -> None:
    process, url = await start_mock("--port", "0", "--workers", "3")
    try:
        # A new connection per request, so the kernel spreads them over the workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as fresh:
            for _ in range(12):
                body = {**COMPLETION_BODY, "stream": True}
                async with fresh.post(url + COMPLETIONS, json=body) as response:
                    assert response.status == 200
                    await response.read()
            totals = []
            for _ in range(6):
                async with fresh.get(url + "/stats") as response:
                    totals.append(await response.json())
    finally:
        assert await stop_mock(process) == 0
    for stats in totals:
        assert stats["workers"] == 3
        assert stats["requests"]["openai.completions"] == 12
        assert stats["streams_started"] == 12
        assert stats["connections_opened"] >= 12


async def test_any_model_and_served_models_on_the_command_line(
    session: aiohttp.ClientSession,
) -> None:
    qianfan_v2 = {"Authorization": "Bearer bce-v3/ALTAK-a/b"}
    typo = {"model": "ernie-4", "prompt": "hi"}
    process, url = await start_mock("--port", "0", "--served-models", "served-a,served-b")
    try:
        async with session.post(url + "/v2/completions", json=typo, headers=qianfan_v2) as reply:
            assert reply.status == 401
        for model, status in (("served-b", 200), ("m", 404)):
            body = {**COMPLETION_BODY, "model": model}
            async with session.post(url + COMPLETIONS, json=body) as reply:
                assert reply.status == status
    finally:
        assert await stop_mock(process) == 0
    process, url = await start_mock("--port", "0", "--any-model")
    try:
        async with session.post(url + "/v2/completions", json=typo, headers=qianfan_v2) as reply:
            assert reply.status == 200
    finally:
        assert await stop_mock(process) == 0
