"""`llmstreams mock` run as a user runs it: in a subprocess, from the shell."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme

from llmstreams import DashScopeClient, Pool, TLSCertificateError

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"^llmstreams mock listening on (https?://127\.0\.0\.1:(\d+)) \((\d+) workers?\)$")
TRUST = re.compile(r"^llmstreams mock: .*CA made for this run.* SSL_CERT_FILE=(\S+)$")
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


# --- HTTPS ---------------------------------------------------------------------------------------


async def stream_text(url: str, pool: Pool) -> str:
    async with DashScopeClient(api_key="sk-tls", base_url=url, pool=pool, max_retries=0) as client:
        completion = await client.stream_generate("hi", model="qwen-turbo").collect()
    assert completion.is_complete
    return completion.text


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_tls_serves_https_and_names_the_ca_to_trust(
    session: aiohttp.ClientSession, workers: str
) -> None:
    process, url = await start_mock("--port", "0", "--tls", "--workers", workers)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT)
        trust = TRUST.match(line.decode().rstrip("\n"))
        assert trust is not None, line
        ca_file = Path(trust.group(1))
        trusting = ssl.create_default_context(cafile=ca_file)
        assert url.startswith("https://")
        async with session.get(url + "/health", ssl=trusting) as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with Pool(ssl=trusting) as pool:
            assert await stream_text(url, pool)
        async with Pool() as pool:
            with pytest.raises(TLSCertificateError):
                await stream_text(url, pool)
    finally:
        assert await stop_mock(process) == 0
    # The CA was made for this run, and goes with it.
    assert not ca_file.exists()


async def test_certfile_and_keyfile_serve_the_users_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(keyfile))
    process, url = await start_mock("--port", "0", "--certfile", str(certfile), "--keyfile", str(keyfile))
    try:
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        async with Pool(ssl=trusting) as pool:
            assert await stream_text(url, pool)
    finally:
        assert await stop_mock(process) == 0
    assert process.stdout is not None
    assert await process.stdout.read() == b""  # no CA to name: the user has theirs


async def run_to_exit(*arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *arguments, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), PROCESS_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--keyfile", "key.pem"], "--keyfile is the key of --certfile: give --certfile too"),
        (["--certfile", "no-such-cert.pem"], "cannot serve the certificate no-such-cert.pem"),
    ],
)
async def test_a_certificate_that_cannot_be_served_is_one_line_and_exit_2(
    options: list[str], expected: str
) -> None:
    code, stdout, stderr = await run_to_exit(*MOCK, "--port", "0", *options)
    assert (code, stdout) == (2, "")
    assert stderr.count("\n") == 1 and expected in stderr, stderr


async def test_tls_without_trustme_says_how_to_install_it() -> None:
    # The interpreter as it is where trustme is not installed: importing it fails.
    program = (
        "import sys; sys.modules['trustme'] = None; "
        "from llmstreams.commands.mock import main; sys.exit(main(sys.argv[1:]))"
    )
    code, stdout, stderr = await run_to_exit(sys.executable, "-c", program, "--port", "0", "--tls")
    assert (code, stdout) == (2, "")
    assert stderr.count("\n") == 1
    assert "pip install 'llmstreams[mock]'" in stderr and "--certfile" in stderr

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
