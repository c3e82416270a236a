"""`llmstreams mock` run as a user runs it: in a subprocess, from the shell."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"^llmstreams mock listening on (http://127\.0\.0\.1:(\d+)) \((\d+) workers?\)$")
PROCESS_TIMEOUT = 30.0
MOCK = [sys.executable, "-m", "llmstreams", "mock"]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


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
        await session.post(url + "/v1/completions", json={"model": "m", "prompt": "hi"})
