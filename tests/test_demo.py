"""`llmstreams demo` end to end, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from llmstreams import PROVIDERS
from llmstreams.commands.demo import DEMO_QUESTION, STREAMED_PROVIDER, user
from llmstreams.mock import MockServer

REPO = Path(__file__).resolve().parents[1]


async def expected_answer() -> str:
    """The mock answers deterministically: ask it the demo's question here too."""
    provider = PROVIDERS[STREAMED_PROVIDER]
    async with MockServer() as server, provider.mock_client(server.url) as client:
        completion = await client.chat(user(DEMO_QUESTION), model="ernie-speed-8k")
    return completion.text


async def test_demo_streams_an_answer_fans_out_and_summarises() -> None:
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("QIANFAN_", "DASHSCOPE_"))
    }
    env["PYTHONPATH"] = str(REPO)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "demo", "--requests", "120", "--concurrency", "32",
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout_bytes, stderr_bytes = await asyncio.wait_for(process.communicate(), timeout=60)
    stdout, stderr = stdout_bytes.decode(), stderr_bytes.decode()
    assert process.returncode == 0, stderr

    answer = await expected_answer()
    assert f"Q: {DEMO_QUESTION}\nA: {answer}\n" in stdout
    assert "11 chunks from ernie-speed-8k via Baidu Qianfan (API v2)" in stdout
    # Every provider of the registry takes its share of the fan-out.
    assert f"Fan-out: 120 requests over {len(PROVIDERS)} providers ({', '.join(PROVIDERS)})" in stdout
    assert re.search(r"requests +120 \(120 ok, 0 errors\)", stdout)
    # Two of the 120 are answered HTTP 429 once and retried.
    assert re.search(r"attempts +122 \(2 retries", stdout)
    assert re.search(r"chunks +\d{4}\n", stdout)
    assert re.search(r"requests/s +\d", stdout) and re.search(r"chunks/s +\d", stdout)
    assert re.search(r"time to first chunk +p50 [\d.]+ ms, p99 [\d.]+ ms", stdout)
    # The progress display goes to stderr, and no retry warnings clutter it.
    assert "fan-out: 120/120 (100%) | 0 failed" in stderr
    assert "retry" not in stderr
