"""A doomed batch stops early and runs again once fixed; batch messages that say the right thing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmstreams import DashScopeClient, Pool
from llmstreams.batch import FAIL_FAST_AFTER, Target, parse_line, run_batch
from llmstreams.cli import main
from llmstreams.mock import MockServer
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.pytest_plugin import MockServerFactory
from tests.support import ROOT

MODEL = "billa-7b-sft-v1"
GOOD_KEY = "sk-the-right-key"
COUNT = 60


def prompts(path: Path, count: int = COUNT, **params: Any) -> Path:
    path.write_text(
        "".join(json.dumps({"id": n, "prompt": f"question {n}", **params}) + "\n" for n in range(count))
    )
    return path


def results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def run(source: Path, output: Path, server: MockServer, key: str, **options: Any) -> Any:
    async with Pool() as pool:
        target = Target(DashScopeClient(api_key=key, base_url=server.url, pool=pool), model=MODEL)
        return await run_batch(source, output, target, concurrency=4, report=lambda _: None, **options)


@pytest.fixture
async def guarded(llmstreams_mock_factory: MockServerFactory) -> MockServer:
    return await llmstreams_mock_factory(credentials=MockCredentials(dashscope_api_key=GOOD_KEY))


async def test_a_bad_key_stops_the_batch_and_a_fixed_rerun_needs_no_retry_errors(
    tmp_path: Path, guarded: MockServer
) -> None:
    source, output = prompts(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    summary = await run(source, output, guarded, "sk-a-wrong-key")
    assert summary.stopped_early is not None and "AuthenticationError" in summary.stopped_early
    assert summary.exit_code == 3
    failed = results(output)
    assert FAIL_FAST_AFTER <= len(failed) < COUNT
    assert {line["error"]["type"] for line in failed} == {"AuthenticationError"}
    assert guarded.stats.requests["dashscope.generation"] < COUNT

    fixed = await run(source, output, guarded, GOOD_KEY)
    assert fixed.setup_errors_rerun == len(failed)
    assert fixed.exit_code == 0 and fixed.stats.succeeded == COUNT
    lines = results(output)
    assert Counter(line["id"] for line in lines) == Counter(range(COUNT))
    assert all("error" not in line for line in lines)


async def test_keep_going_runs_every_request(tmp_path: Path, guarded: MockServer) -> None:
    source, output = prompts(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    summary = await run(source, output, guarded, "sk-a-wrong-key", fail_fast=False)
    assert summary.stopped_early is None and summary.exit_code == 1
    assert len(results(output)) == COUNT


async def test_errors_of_single_requests_do_not_stop_the_batch(
    tmp_path: Path, llmstreams_mock: MockServer
) -> None:
    source, output = prompts(tmp_path / "in.jsonl", temperature=7), tmp_path / "out.jsonl"
    summary = await run(source, output, llmstreams_mock, "any-key")
    assert summary.stopped_early is None
    assert summary.stats.failed == COUNT
    rerun = await run(source, output, llmstreams_mock, "any-key")
    assert rerun.setup_errors_rerun == 0 and rerun.stats.requests == 0


async def test_the_command_exits_3_and_says_what_to_do(tmp_path: Path, guarded: MockServer) -> None:
    source, output = prompts(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    command = [
        sys.executable, "-m", "llmstreams", "batch", str(source), "-o", str(output),
        "--provider", "dashscope", "--model", MODEL, "--base-url", guarded.url,
    ]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "DASHSCOPE_API_KEY": "sk-a-wrong-key"}
    outputs = []
    for extra in ([], ["--keep-going", "--overwrite"]):
        process = await asyncio.create_subprocess_exec(
            *command, *extra, env=environment, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            stdout, _ = await process.communicate()
        outputs.append((process.returncode, stdout.decode()))
    (stopped_status, stopped), (kept_status, kept) = outputs
    assert stopped_status == 3
    assert f"stopped early: the first {FAIL_FAST_AFTER} requests all failed" in stopped
    assert "AuthenticationError (code InvalidApiKey)" in stopped and "--keep-going" in stopped
    assert kept_status == 1 and "stopped early" not in kept


def test_a_directory_is_named_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = prompts(tmp_path / "in.jsonl", 1)
    common = ["--provider", "dashscope", "--model", MODEL]
    assert main(["batch", str(tmp_path), "-o", str(tmp_path / "out.jsonl"), *common]) == 2
    assert f"{tmp_path}: is a directory" in capsys.readouterr().err
    assert main(["batch", str(source), "-o", str(tmp_path), *common]) == 2
    assert f"{tmp_path}: is a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"id": 1}', 'has neither "prompt" nor "messages" (give one)'),
        (b'{"id": 1, "prompt": "x", "messages": []}', 'has both "prompt" and "messages" (give one)'),
        # Columns count characters, as an editor does, not bytes.
        (b'{"id": 1, "prompt": "\xc3\xa9\xc3\xa9\xc3\xa9" x}', "Expecting ',' delimiter at column 27"),
        (b'{"id": 1, "prompt": "a\tb"}', "(Invalid control character at column 23)"),
    ],
)
def test_input_problems_read_right(raw: bytes, message: str) -> None:
    problem = parse_line(1, raw)
    assert message in getattr(problem, "message", "")
