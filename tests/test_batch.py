"""The batch job: input lines to result lines against the mock on loopback, resume after a kill."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmstreams import DashScopeClient, Pool, QianfanClient, RetryPolicy
from llmstreams.batch import (
    BatchSummary,
    Mode,
    Target,
    parse_line,
    run_batch,
)
from llmstreams.cli import main
from llmstreams.mock import BEHAVIOUR_HEADER, Behaviour, MockServer
from llmstreams.progress import Progress, format_duration

REPO = Path(__file__).resolve().parents[1]
MODEL = "billa-7b-sft-v1"
FAST_RETRY = RetryPolicy(max_retries=1, backoff_base=0.001, backoff_max=0.001)


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    async with Pool(retry=FAST_RETRY) as shared:
        yield shared


@pytest.fixture
def dashscope(server: MockServer, pool: Pool) -> Target:
    return Target(DashScopeClient(api_key="test-key", base_url=server.url, pool=pool), model=MODEL)


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the output ends with a partial line"
    return [json.loads(line) for line in data.splitlines()]


def by_id(results: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    ids = [result["id"] for result in results]
    assert len(ids) == len(set(map(repr, ids))), f"an id appears twice: {ids}"
    return {result["id"]: result for result in results}


async def run(
    tmp_path: Path, target: Target, lines: list[Any], *, mode: Mode = "resume",
    concurrency: int = 8,
) -> tuple[BatchSummary, list[str], str]:
    source = tmp_path / "input.jsonl"
    if not source.exists():
        write_lines(source, lines)
    reports: list[str] = []
    progress = io.StringIO()
    summary = await run_batch(
        source, tmp_path / "output.jsonl", target, concurrency=concurrency, mode=mode,
        report=reports.append, progress_stream=progress,
    )
    return summary, reports, progress.getvalue()


async def test_every_request_gets_one_result_line(tmp_path: Path, dashscope: Target) -> None:
    lines: list[Any] = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(30)]
    lines.append({"id": 30, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    summary, reports, progress = await run(tmp_path, dashscope, lines)
    results = by_id(read_results(tmp_path / "output.jsonl"))
    assert set(results) == {f"r{i}" for i in range(30)} | {30}
    for result in results.values():
        assert result["text"] and result["finish_reason"] in ("stop", "length")
        assert result["usage"]["total_tokens"] > 0
        assert result["chunks"] >= 1 and result["attempts"] == 1
        assert 0 <= result["time_to_first_chunk"] <= result["elapsed"]
        assert "error" not in result
    assert results[30]["usage"]["completion_tokens"] <= 5
    assert summary.exit_code == 0 and reports == []
    assert summary.stats.succeeded == 31 and summary.to_run == 31
    assert "batch: 31/31 (100%) | 0 failed" in progress.splitlines()[-1]


async def test_qianfan_sends_prompts_to_completions_and_messages_to_chat(
    tmp_path: Path, server: MockServer, pool: Pool
) -> None:
    client = QianfanClient(api_key="k", secret_key="s", base_url=server.url, pool=pool)
    target = Target(client, endpoint="my_dolly_12b")
    lines = [
        {"id": "p", "prompt": "def fib(n):", "temperature": 0.5},
        {"id": "m", "messages": [{"role": "user", "content": "hello"}], "top_k": 3},
    ]
    summary, _, _ = await run(tmp_path, target, lines)
    results = by_id(read_results(tmp_path / "output.jsonl"))
    assert results["p"]["text"] and results["m"]["text"]
    assert server.stats.requests["qianfan.completions"] == 1
    assert server.stats.requests["qianfan.chat"] == 1
    assert summary.exit_code == 0


async def test_bad_lines_are_reported_by_number_and_the_rest_still_run(
    tmp_path: Path, dashscope: Target
) -> None:
    lines: list[Any] = [
        {"id": "a", "prompt": "fine"},                                    # 1
        "this is not json",                                               # 2
        "[1, 2]",                                                         # 3
        {"prompt": "no id"},                                              # 4
        {"id": 3.5, "prompt": "float id"},                                # 5
        {"id": "b"},                                                      # 6
        {"id": "c", "prompt": "x", "messages": []},                       # 7
        "",                                                               # 8: blank, skipped
        {"id": "d", "prompt": "x", "model": "other"},                     # 9
        {"id": "a", "prompt": "the same id again"},                       # 10
        {"id": "e", "prompt": "x", "temprature": 0.5},                    # 11
        {"id": "f", "prompt": "x", "temperature": 7},                     # 12
        {"id": 7, "prompt": "an integer id"},                             # 13
        {"id": "7", "prompt": "a string id, not the same as 7"},          # 14
        {"id": "g", "prompt": "x", "extra_headers": {BEHAVIOUR_HEADER: "fail_code=InvalidParameter"}},  # 15
    ]
    source = write_lines(tmp_path / "input.jsonl", lines)
    with source.open("ab") as raw:
        raw.write(b'{"id": "h", "prompt": "\xff\xfe"}\n')                  # 16: not UTF-8
    summary, reports, _ = await run(tmp_path, dashscope, [])

    assert summary.malformed == 8 and summary.duplicates == 1
    assert summary.input_lines == 15
    reported = {int(report.split(":")[1]) for report in reports}
    assert reported == {2, 3, 4, 5, 6, 7, 9, 10, 16}
    assert any("input.jsonl:10: duplicate id (first on line 1)" in report for report in reports)
    assert any("input.jsonl:2: not valid JSON" in report for report in reports)

    results = by_id(read_results(tmp_path / "output.jsonl"))
    assert set(results) == {"a", "b", "c", "d", "e", "f", 7, "7", "g"}
    assert results["a"]["text"] and results[7]["text"] and results["7"]["text"]
    assert results[7]["text"] != results["7"]["text"]
    for request_id, line in (("b", 6), ("c", 7), ("d", 9)):
        assert results[request_id]["error"]["type"] == "InputError"
        assert results[request_id]["line"] == line
        assert f"line {line}" in results[request_id]["error"]["message"]
    assert results["e"]["error"]["type"] == "InvalidParameterError"
    assert results["e"]["error"]["field"] == "temprature"
    assert results["f"]["error"]["field"] == "temperature"
    assert results["g"]["error"]["type"] == "InvalidRequestError"
    assert results["g"]["error"]["code"] == "InvalidParameter"
    assert results["g"]["error"]["http_status"] == 400
    assert summary.stats.failed == 3 and summary.stats.succeeded == 3
    assert summary.exit_code == 1


async def test_resume_skips_done_ids_and_retry_errors_runs_the_failed_again(
    tmp_path: Path, dashscope: Target
) -> None:
    # The mock fails "flaky" once (non-retryable), then answers it.
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(5)] + [
        {"id": "flaky", "prompt": "q", "extra_headers": {BEHAVIOUR_HEADER: "fail_code=InvalidParameter"}},
        {"id": "broken"},
    ]
    first, _, _ = await run(tmp_path, dashscope, lines)
    assert first.stats.succeeded == 5 and first.stats.failed == 1 and first.malformed == 1

    again, _, _ = await run(tmp_path, dashscope, lines)
    assert again.already_done == 7 and again.already_failed == 2 and again.stats.requests == 0
    assert again.exit_code == 1
    assert len(read_results(tmp_path / "output.jsonl")) == 7

    retried, _, _ = await run(tmp_path, dashscope, lines, mode="retry_errors")
    assert retried.already_done == 5 and retried.stats.requests == 1
    results = by_id(read_results(tmp_path / "output.jsonl"))
    assert results["flaky"]["text"] and "error" not in results["flaky"]
    assert results["broken"]["error"]["type"] == "InputError"
    assert len(results) == 7


async def test_a_partial_last_line_from_a_crash_is_moved_aside_before_resuming(
    tmp_path: Path, dashscope: Target
) -> None:
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(4)]
    output = tmp_path / "output.jsonl"
    torn = b'{"id": 1, "text": "half wri'
    output.write_bytes(b'{"id": 0, "text": "done before", "attempts": 1}\n' + torn)
    summary, reports, _ = await run(tmp_path, dashscope, lines)
    assert summary.moved_bytes == len(torn)
    assert reports == [
        f"{output}: moved what an interrupted run left half-written ({len(torn)} bytes)"
        f" to {output}.partial"
    ]
    assert (tmp_path / "output.jsonl.partial").read_bytes() == torn + b"\n"
    results = by_id(read_results(output))
    assert set(results) == {0, 1, 2, 3}
    assert results[0]["text"] == "done before"
    assert summary.already_done == 1 and summary.stats.requests == 3


async def test_overwrite_starts_afresh(tmp_path: Path, dashscope: Target) -> None:
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(3)]
    (tmp_path / "output.jsonl").write_text('{"id": 0, "text": "old", "attempts": 1}\nnot a result\n')
    summary, _, _ = await run(tmp_path, dashscope, lines, mode="overwrite")
    results = by_id(read_results(tmp_path / "output.jsonl"))
    assert set(results) == {0, 1, 2} and results[0]["text"] != "old"
    assert summary.already_done == 0


def test_parse_line_names_what_is_wrong() -> None:
    assert parse_line(1, b"   \n") is None
    problem = parse_line(4, b'{"id": true, "prompt": "x"}')
    assert problem is not None and "string or an integer" in getattr(problem, "message", "")
    request = parse_line(5, b'{"id": "q", "prompt": "x", "top_p": 0.5}')
    assert request is not None and getattr(request, "params", None) == {"top_p": 0.5}


async def start_batch(source: Path, output: Path, url: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "DASHSCOPE_API_KEY": "test-key", "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "batch", str(source), "-o", str(output),
        "--provider", "dashscope", "--model", MODEL, "--base-url", url, "--concurrency", "4",
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def wait_for_lines(output: Path, process: asyncio.subprocess.Process, lines: int) -> None:
    """Poll the output of the batch process (another process: nothing to await) until it
    holds `lines` lines."""
    async with asyncio.timeout(30):
        while not output.exists() or len(output.read_bytes().splitlines()) < lines:
            assert process.returncode is None, "the batch ended before it was stopped"
            await asyncio.sleep(0.05)


def numbered_prompts(path: Path, count: int) -> Path:
    return write_lines(path, [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(count)])


async def test_a_killed_run_resumes_with_every_id_exactly_once(tmp_path: Path) -> None:
    count = 40
    source = numbered_prompts(tmp_path / "input.jsonl", count)
    output = tmp_path / "output.jsonl"
    # 10 chunks at 40 per second: a quarter second per request, 2.5 s for the whole run.
    async with MockServer(behaviour=Behaviour(chunks_per_second=40)) as server:
        process = await start_batch(source, output, server.url)
        try:
            await wait_for_lines(output, process, 6)
        finally:
            process.send_signal(signal.SIGKILL)
            await process.communicate()
        written = len(read_results(output))
        assert 6 <= written < count
        # Simulate an older crash in the middle of a write as well.
        with output.open("ab") as raw:
            raw.write(b'{"id": "r0", "text": "cut')

        server.set_behaviour(Behaviour())
        process = await start_batch(source, output, server.url)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    results = by_id(read_results(output))
    assert set(results) == {f"r{i}" for i in range(count)}
    assert all("error" not in result for result in results.values())
    summary = stdout.decode()
    assert f"already done         {written}" in summary
    assert f"run now              {count - written}: {count - written} succeeded" in summary
    assert f"moved what an interrupted run left half-written (25 bytes) to {output}.partial" in (
        stderr.decode()
    )
    assert (tmp_path / "output.jsonl.partial").read_bytes() == b'{"id": "r0", "text": "cut\n'


async def test_ctrl_c_stops_cleanly_with_every_finished_result_on_disk(tmp_path: Path) -> None:
    source = numbered_prompts(tmp_path / "input.jsonl", 40)
    output = tmp_path / "output.jsonl"
    async with MockServer(behaviour=Behaviour(chunks_per_second=40)) as server:
        process = await start_batch(source, output, server.url)
        await wait_for_lines(output, process, 3)
        process.send_signal(signal.SIGINT)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        stats = await server.wait_for(lambda s: s.streams_active == 0)
    assert process.returncode == 130
    results = by_id(read_results(output))
    assert 3 <= len(results) < 40
    assert all(result["text"] for result in results.values())
    assert f"interrupted: {40 - len(results)} requests not run" in stdout.decode()
    # Whatever was in flight was dropped, not half-written.
    assert stats.streams_completed >= len(results)


def test_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "input.jsonl", [{"id": 1, "prompt": "x"}])
    output = str(tmp_path / "output.jsonl")
    common = [str(source), "-o", output]
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    assert main(["batch", *common, "--provider", "openai"]) == 2
    assert "--provider openai needs --model" in capsys.readouterr().err
    assert main(["batch", *common, "--provider", "dashscope", "--model", MODEL, "--endpoint", "e"]) == 2
    assert "--endpoint is for Qianfan v1 deployments" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "missing.jsonl"), "-o", output, "--provider", "dashscope", "--model", MODEL]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["batch", *common, "--provider", "dashscope", "--model", MODEL]) == 2
    error = capsys.readouterr().err
    assert "set DASHSCOPE_API_KEY" in error and "hint: to try without credentials" in error
    assert len(error.strip().splitlines()) == 2
    assert not Path(output).exists() or Path(output).read_bytes() == b""


def test_progress_redraws_one_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(100, label="batch", stream=stream, is_tty=True, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 0.5
        progress.advance()
    progress.advance(failed=True)
    progress.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert "11/100 (11%)" in last and "1 failed" in last
    assert "2.2/s" in last and "ETA 0:40" in last
    assert last.startswith("[####" + "." * 36 + "] batch: ")


def test_progress_keeps_its_bar_on_an_80_column_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(200, label="fan-out", stream=stream, is_tty=True, clock=lambda: now[0])
    for _ in range(150):
        now[0] += 0.01
        progress.advance()
    frames = stream.getvalue().split("\r")[1:]
    assert frames and all(frame.startswith("[") for frame in frames)
    assert all(len(frame.rstrip()) < 80 for frame in frames)
    assert "ETA" in frames[-1]


def test_progress_writes_plain_lines_elsewhere_at_most_every_interval() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(1000, stream=stream, is_tty=False, plain_interval=5.0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.25
        progress.advance()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # The first item, then every 5 s (5.25, 10.25, 15.25, 20.25), then the final state.
    assert len(lines) == 6
    assert lines[1].startswith("21/1000 (2%)")
    assert lines[-1].startswith("100/1000 (10%)") and "ETA 3:45" in lines[-1]


def test_format_duration() -> None:
    assert format_duration(0.4) == "0:00"
    assert format_duration(75) == "1:15"
    assert format_duration(3 * 3600 + 62) == "3:01:02"


def test_retry_errors_is_suggested_only_where_a_retry_can_help() -> None:
    from llmstreams.commands.batch import failure_advice

    (fixable,) = failure_advice({"ServerError": 2, "APITimeoutError": 1}, 0)
    assert fixable == (
        "3 requests failed with errors a retry may fix (APITimeoutError 1, ServerError 2); "
        "add --retry-errors to run them again"
    )
    (unfixable,) = failure_advice({"InvalidParameterError": 31}, 0)
    assert unfixable.startswith(
        "31 requests failed with errors a retry cannot fix (InvalidParameterError 31)"
    )
    assert "fix the input or the options, then run again with --retry-errors" in unfixable
    both = failure_advice({"InvalidRequestError": 1, "RateLimitError": 4}, 0)
    assert [line.split(" failed")[0] for line in both] == ["4 requests", "1 request"]
    assert failure_advice({}, 5) == [
        "5 failed in an earlier run; add --retry-errors to run them again"
    ]
    assert failure_advice({}, 0) == []
