"""The batch command under odd input, full disks, few file descriptors, a second run, a second
Ctrl-C: no input crashes a run, no output is lost or doubled.

Runs of the command itself are subprocesses against the mock in this test's loop, over
loopback; resource limits (file size, open files) are set in the child only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from llmstreams import DashScopeClient, Pool, QianfanClient, RetryPolicy
from llmstreams.batch import INPUT_ERROR, ForeignOutputError, Target, load_previous, run_batch
from llmstreams.cli import main
from llmstreams.mock import Behaviour, MockServer
from tests.test_batch import by_id, read_results, write_lines

REPO = Path(__file__).resolve().parents[2]
MODEL = "billa-7b-sft-v1"


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


def deep(depth: int) -> str:
    return '{"x":' * depth + "1" + "}" * depth


ODD_LINES = [
    '{"id": "self", "prompt": "hi", "self": 1}',
    '{"id": "unknown", "prompt": "hi", "unknown": {"a": 1}}',
    '{"id": "big-seed", "prompt": "hi", "seed": ' + "9" * 1000 + "}",
    '{"id": "big-temperature", "prompt": "hi", "temperature": ' + "9" * 400 + "}",
    '{"id": "big-penalty", "prompt": "hi", "repetition_penalty": ' + "9" * 400 + "}",
    '{"id": ' + "7" * 1000 + ', "prompt": "hi"}',
    '{"id": "huge-int", "prompt": "hi", "seed": ' + "9" * 5000 + "}",
    '{"id": "deep", "prompt": "hi", "extra_params": ' + deep(800) + "}",
    '{"id": "deeper", "prompt": "hi", "extra_params": ' + deep(100_000) + "}",
    '{"id": "surrogate", "prompt": "a\\ud800b"}',
    '{"id": "surrogate-message", "messages": [{"role": "user", "content": "\\udfff"}]}',
    '{"id": "surrogate-stop", "prompt": "hi", "stop": ["\\ud800"]}',
    '{"id": "surrogate-header", "prompt": "hi", "extra_headers": {"X-A": "\\ud800"}}',
    '{"id": "\\ud800", "prompt": "hi"}',
    '{"id": "nan", "prompt": "hi", "temperature": NaN}',
    '{"id": "infinity", "prompt": "hi", "top_p": -Infinity}',
    '{"id": "bad-id", "id2": 1, "prompt": "hi", "timeout": 5}',
    '{"id": [' * 990 + "]" * 990 + ', "prompt": "hi"}',
]


@pytest.mark.parametrize("provider", ["qianfan", "dashscope"])
async def test_odd_but_legal_json_fields_give_that_id_an_error_and_the_rest_runs(
    tmp_path: Path, server: MockServer, provider: str
) -> None:
    source = tmp_path / "input.jsonl"
    good = [json.dumps({"id": f"good-{i}", "prompt": f"q{i}"}) for i in range(3)]
    source.write_text("\n".join([good[0], *ODD_LINES, *good[1:]]) + "\n")
    output = tmp_path / "output.jsonl"
    reports: list[str] = []
    async with Pool(retry=RetryPolicy(max_retries=0)) as pool:
        if provider == "qianfan":
            client = QianfanClient(api_key="k", secret_key="s", base_url=server.url, pool=pool)
            target = Target(client, endpoint="my_dolly_12b")
        else:
            target = Target(DashScopeClient(api_key="sk-k", base_url=server.url, pool=pool), model=MODEL)
        summary = await run_batch(source, output, target, report=reports.append)
    results = by_id(read_results(output))
    assert all("text" in results[f"good-{i}"] for i in range(3))
    errors = {key: value["error"]["type"] for key, value in results.items() if "error" in value}
    for odd in ("self", "unknown", "big-temperature", "big-penalty", "surrogate", "surrogate-stop",
                "surrogate-header", "nan", "infinity"):
        assert errors[odd] in ("InvalidParameterError", INPUT_ERROR), odd
    # Not usable as JSON at all: reported by line, with no id to give a record to.
    assert any("4,300" in report or "4300" in report for report in reports)
    assert any("nested too deeply" in report for report in reports)
    assert summary.stats.requests + summary.malformed + summary.duplicates >= len(ODD_LINES)


async def batch_process(
    *arguments: str, url: str, limit: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    env = {**os.environ, "DASHSCOPE_API_KEY": "sk-test-key", "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "batch", *arguments,
        "--provider", "dashscope", "--model", MODEL, "--base-url", url,
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def lines_written(output: Path, process: asyncio.subprocess.Process, count: int) -> None:
    """Poll the other process's output (nothing to await) until it holds `count` lines."""
    async with asyncio.timeout(30):
        while not output.exists() or len(output.read_bytes().splitlines()) < count:
            assert process.returncode is None, "the batch ended too soon"
            await asyncio.sleep(0.02)


def prompts(path: Path, count: int) -> Path:
    return write_lines(path, [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(count)])


@pytest.mark.parametrize("gap", [0.0, 0.005, 0.05])
async def test_a_second_ctrl_c_soon_after_the_first_exits_130(tmp_path: Path, gap: float) -> None:
    source = prompts(tmp_path / "input.jsonl", 40)
    output = tmp_path / "output.jsonl"
    async with MockServer(behaviour=Behaviour(chunks_per_second=20)) as server:
        process = await batch_process(str(source), "-o", str(output), "--concurrency", "4", url=server.url)
        await lines_written(output, process, 1)
        process.send_signal(signal.SIGINT)
        await asyncio.sleep(gap)  # the second Ctrl-C, this long after the first
        # The first may already have ended the run (it then exits 130 all the same).
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        code, stdout, stderr = await finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "CancelledError" not in stderr
    assert "interrupted" in stdout + stderr
    read_results(output)  # whole lines only


def file_size_limit(size: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


async def test_disk_full_gives_one_line_and_exit_4_then_resume_works(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the child's writes past 3,000 bytes fail (EFBIG), as a full disk would.
    count = 40
    source = prompts(tmp_path / "input.jsonl", count)
    output = tmp_path / "output.jsonl"
    async with MockServer() as server:
        process = await batch_process(
            str(source), "-o", str(output), "--concurrency", "4", url=server.url,
            limit=file_size_limit(3000),
        )
        code, _, stderr = await finish(process)
        assert code == 4, stderr
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert errors == [
            f"llmstreams batch: error: cannot write results to {output}: File too large. Every "
            "result written before is kept: free space (or fix the cause) and run the same "
            "command again to resume"
        ]
        written = output.stat().st_size
        assert 0 < written <= 3000
        process = await batch_process(str(source), "-o", str(output), url=server.url)
        code, _stdout, stderr = await finish(process)
    assert code == 0, stderr
    results = by_id(read_results(output))
    assert set(results) == {f"r{i}" for i in range(count)}


async def test_too_few_file_descriptors_lower_the_concurrency(tmp_path: Path) -> None:
    source = prompts(tmp_path / "input.jsonl", 200)
    output = tmp_path / "output.jsonl"

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    async with MockServer(behaviour=Behaviour(chunks_per_second=100)) as server:
        process = await batch_process(
            str(source), "-o", str(output), "--concurrency", "500", url=server.url, limit=few_files
        )
        code, _, stderr = await finish(process)
    assert code == 0, stderr
    assert "concurrency lowered from 200 to" in stderr
    assert "Traceback" not in stderr
    assert len(by_id(read_results(output))) == 200


async def test_a_low_soft_limit_on_files_is_raised_and_said(tmp_path: Path, server: MockServer) -> None:
    source = prompts(tmp_path / "input.jsonl", 100)
    output = tmp_path / "output.jsonl"

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))

    process = await batch_process(
        str(source), "-o", str(output), "--concurrency", "100", url=server.url, limit=low_soft_limit
    )
    code, _, stderr = await finish(process)
    assert code == 0, stderr
    assert "raised the limit on open files from 64 to" in stderr
    assert len(by_id(read_results(output))) == 100


async def test_a_second_run_on_the_same_output_refuses_at_once_naming_the_first(tmp_path: Path) -> None:
    source = prompts(tmp_path / "input.jsonl", 40)
    output = tmp_path / "output.jsonl"
    link = tmp_path / "link-to-output.jsonl"
    link.symlink_to(output)
    async with MockServer(behaviour=Behaviour(chunks_per_second=40)) as server:
        first = await batch_process(str(source), "-o", str(output), "--concurrency", "2", url=server.url)
        try:
            await lines_written(output, first, 1)
            second = await batch_process(str(source), "-o", str(link), url=server.url)
            code, stdout, stderr = await finish(second)
            assert code == 5, stderr
            assert f"pid {first.pid} on {socket.gethostname()}" in stderr
            assert "Traceback" not in stderr and stdout == ""
        finally:
            first.send_signal(signal.SIGINT)
            await finish(first)
        # Once the first is gone, a run resumes normally and the lock file is gone too.
        third = await batch_process(str(source), "-o", str(link), url=server.url)
        code, _, stderr = await finish(third)
    assert code == 0, stderr
    # Every id once: the refused run sent nothing, wrote nothing.
    assert set(by_id(read_results(output))) == {f"r{i}" for i in range(40)}
    # The requests in flight at the Ctrl-C (at most the first run's 2) ran again in the third:
    # those cut mid-stream, and any the server had just finished but the first run had not
    # written yet. Anything more was sent by the refused run.
    stats = server.stats
    assert stats.streams_aborted <= sum(stats.requests.values()) - 40 <= 2
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".lock")] == []


A_RESULT = b'{"id": 0, "text": "a", "attempts": 1}\n'


def test_a_complete_last_record_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    record = b'{"id": 1, "text": "paid for", "attempts": 1}'
    path.write_bytes(record)
    assert load_previous(path, "resume").done == {("int", 1): True}
    assert path.read_bytes() == record + b"\n"
    path.write_bytes(A_RESULT + record)
    assert load_previous(path, "resume").moved_bytes == 0
    assert path.read_bytes() == A_RESULT + record + b"\n"
    # A tail cut short, or one starting like a result line but without a result's shape, is
    # moved aside; anything else is refused and left as it was.
    for tail in (b'{"id": 2, "text": "torn', b'{"id": 2, "prompt": "x"}', b'{"i'):
        path.write_bytes(A_RESULT + tail)
        assert load_previous(path, "resume").moved_bytes == len(tail)
        assert path.read_bytes() == A_RESULT
    assert (tmp_path / "out.jsonl.partial").read_bytes() == (
        b'{"id": 2, "text": "torn\n{"id": 2, "prompt": "x"}\n{"i\n'
    )
    for tail in (b"[" * 100_000, b'{"ID": 2, "text": "x"', b"   "):
        path.write_bytes(A_RESULT + tail)
        with pytest.raises(ForeignOutputError, match=f"ends with {len(tail)} bytes"):
            load_previous(path, "resume")
        assert path.read_bytes() == A_RESULT + tail


async def run_in_process(tmp_path: Path, url: str, lines: list[Any], mode: str = "resume") -> tuple[list[str], int]:
    source = tmp_path / "input.jsonl"
    if not source.exists():
        write_lines(source, lines)
    reports: list[str] = []
    async with Pool() as pool:
        target = Target(DashScopeClient(api_key="sk-k", base_url=url, pool=pool), model=MODEL)
        summary = await run_batch(
            source, tmp_path / "output.jsonl", target, mode=mode,  # type: ignore[arg-type]
            report=reports.append,
        )
    return reports, summary.stats.requests


async def test_output_without_a_trailing_newline_loses_and_repeats_nothing(
    tmp_path: Path, server: MockServer
) -> None:
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(3)]
    (tmp_path / "output.jsonl").write_bytes(A_RESULT + b'{"id": 1, "text": "b", "attempts": 1}')
    _, requests = await run_in_process(tmp_path, server.url, lines)
    assert requests == 1
    results = by_id(read_results(tmp_path / "output.jsonl"))
    assert results[1]["text"] == "b" and set(results) == {0, 1, 2}


async def test_garbage_and_non_result_lines_in_output_are_skipped_and_reported(
    tmp_path: Path, server: MockServer
) -> None:
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(3)]
    (tmp_path / "output.jsonl").write_bytes(
        A_RESULT + b"[" * 100_000 + b"\n" + b'{"id": 1, "prompt": "q1"}\n'
    )
    reports, requests = await run_in_process(tmp_path, server.url, lines)
    assert requests == 2  # 1 and 2: an input-shaped line is not a result
    assert any("ignoring 2 lines that are not results (lines 2, 3)" in report for report in reports)
    # And the next run is not broken by them either.
    reports, requests = await run_in_process(tmp_path, server.url, lines)
    assert requests == 0


async def test_retry_errors_keeps_a_symlink_and_the_mode(tmp_path: Path, server: MockServer) -> None:
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(3)]
    real = tmp_path / "kept" / "results.jsonl"
    real.parent.mkdir()
    real.write_bytes(A_RESULT + b'{"id": 1, "error": {"type": "ServerError", "message": "m"}}\n')
    real.chmod(0o600)
    (tmp_path / "output.jsonl").symlink_to(real)
    _, requests = await run_in_process(tmp_path, server.url, lines, mode="retry_errors")
    assert requests == 2
    assert (tmp_path / "output.jsonl").is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert set(by_id(read_results(real))) == {0, 1, 2}
    assert sorted(path.name for path in real.parent.iterdir()) == ["results.jsonl"]


def test_output_that_cannot_be_used_is_a_one_line_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-k")
    source = write_lines(tmp_path / "input.jsonl", [{"id": 1, "prompt": "x"}])
    common = ["--provider", "dashscope", "--model", MODEL, "--base-url", "http://127.0.0.1:9"]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    hard_link = tmp_path / "same-as-input.jsonl"
    os.link(source, hard_link)
    cases = [
        (tmp_path, "is a directory"),
        (a_file / "output.jsonl", "a-file"),
        (hard_link, "OUTPUT must not be INPUT"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o555)
        cases.append((read_only / "output.jsonl", "Permission denied"))
    for output, message in cases:
        assert main(["batch", str(source), "-o", str(output), *common]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
