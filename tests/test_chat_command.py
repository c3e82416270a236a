"""`llmstreams chat`, run as a user runs it: a subprocess, or a pseudo-terminal for the interactive mode."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import llmstreams
from llmstreams.commands.chat import summary_line
from llmstreams.mock import Behaviour
from llmstreams.mock.pytest_plugin import MockServerFactory
from tests.support import ROOT, Terminal, mock_command

SUMMARY = re.compile(
    r"\[first chunk (?:\d+ ms|\d+\.\d\d s), (\d+) chunks, (\d+) tokens \(prompt (\d+)\), "
    r"total (?:\d+ ms|\d+\.\d\d s), request id (\S+)\]"
)
CREDENTIAL_VARIABLES = (
    "QIANFAN_API_KEY", "QIANFAN_SECRET_KEY", "QIANFAN_AK", "QIANFAN_SK", "QIANFAN_ACCESS_TOKEN",
    "QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_ACCESS_KEY", "QIANFAN_BASE_URL", "DASHSCOPE_API_KEY",
    "DASHSCOPE_BASE_URL",
)


def environment(**extra: str) -> dict[str, str]:
    clean = {name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES}
    return {**clean, "PYTHONPATH": str(ROOT), **extra}


async def chat(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "chat", *args, cwd=ROOT,
        env=env if env is not None else environment(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_one_answer_from_the_mock_with_its_summary() -> None:
    status, stdout, stderr = await chat("--mock", "Why stream an answer?")
    assert status == 0, stderr
    summary = SUMMARY.fullmatch(stderr.strip())
    assert summary is not None, stderr
    assert int(summary[1]) > 1 and int(summary[2]) > 0
    assert stdout.endswith("\n") and len(stdout.strip()) > 20
    assert "\x1b[" not in stdout + stderr  # not a terminal: no colours


async def test_the_prompt_can_come_from_stdin_with_a_system_prompt() -> None:
    status, stdout, stderr = await chat(
        "--mock", "--provider", "dashscope", "--system", "Answer briefly.", "--max-tokens", "5",
        stdin=b"Hello from a pipe",
    )
    assert status == 0, stderr
    summary = SUMMARY.fullmatch(stderr.strip())
    assert summary is not None and int(summary[2]) == 5, stderr
    assert stdout.strip()


async def test_without_credentials_it_says_how_to_try_the_mock() -> None:
    for provider, variable in (("qianfan", "QIANFAN_API_KEY"), ("dashscope", "DASHSCOPE_API_KEY"),
                               ("deepseek", "DEEPSEEK_API_KEY")):
        status, stdout, stderr = await chat("--provider", provider, "Hello")
        assert status == 2
        assert stdout == ""
        error, hint = stderr.strip().splitlines()
        assert error.startswith("llmstreams chat: error: no usable") and f"set {variable}" in error
        assert hint == "hint: to try without credentials or network, add --mock"
        assert "api_key=" not in stderr and "()" not in stderr


async def test_against_a_base_url_with_credentials_from_the_environment() -> None:
    async with mock_command() as url:
        status, stdout, stderr = await chat(
            "--provider", "qianfan-v1", "--base-url", url, "--model", "ERNIE-Lite-8K",
            "--temperature", "0.5", "Hello",
            env=environment(QIANFAN_API_KEY="k", QIANFAN_SECRET_KEY="s"),
        )
    assert status == 0, stderr
    assert SUMMARY.fullmatch(stderr.strip()) and stdout.strip()


async def test_a_failed_request_exits_1_with_the_typed_error(
    llmstreams_mock_factory: MockServerFactory,
) -> None:
    server = await llmstreams_mock_factory(behaviour=Behaviour(error_after=2))
    status, stdout, stderr = await chat(
        "--provider", "dashscope", "--base-url", server.url, "Hello",
        env=environment(DASHSCOPE_API_KEY="k"),
    )
    assert status == 1
    assert "llmstreams chat: ServerError" in stderr and "kept in .partial" in stderr
    assert stdout.strip()  # the two chunks before the error were shown


async def test_invalid_options_are_usage_errors() -> None:
    status, _, stderr = await chat("--mock", "--top-p", "2", "Hello")
    assert status == 2 and stderr == "llmstreams chat: error: --top-p: must be a number in [0, 1] (got 2.0)\n"
    status, _, stderr = await chat("--mock", "--provider", "dashscope", "--endpoint", "x", "Hello")
    assert status == 2 and "--endpoint is for Qianfan v1 deployments" in stderr
    status, _, stderr = await chat("--mock", "--provider", "zhipu", "--top-k", "3", "Hello")
    assert status == 2 and "--top-k: the provider's API does not take it" in stderr


async def test_a_mistyped_flag_is_refused_with_the_subcommands_usage_and_a_suggestion() -> None:
    status, stdout, stderr = await chat("--mock", "--modle", "ernie-speed-8k", "hi")
    assert status == 2 and stdout == ""
    assert stderr.startswith("usage: llmstreams chat ")
    assert stderr.strip().endswith("llmstreams chat: error: unrecognized argument --modle; did you mean --model?")


async def test_reasoning_goes_to_stderr_apart_from_the_answer() -> None:
    status, stdout, stderr = await chat("--mock", "--provider", "openai", "--model", "deepseek-r1", "Why?")
    assert status == 0, stderr
    reasoning, summary = stderr.rstrip("\n").rsplit("\n", 1)
    assert SUMMARY.fullmatch(summary) and len(reasoning) > 20
    assert stdout.count("\n") == 1 and len(stdout.strip()) > 20  # the answer alone
    assert "\x1b[" not in stderr


async def test_on_a_terminal_reasoning_is_dimmed() -> None:
    terminal = await Terminal.start(
        sys.executable, "-m", "llmstreams", "chat", "--mock", "--provider", "openai",
        "--model", "deepseek-r1", "Why?", env=environment(),
    )
    try:
        assert await terminal.wait() == 0
    finally:
        terminal.close()
    dimmed = re.findall(r"\x1b\[2m(.*?)\x1b\[0m", terminal.output, flags=re.S)
    assert dimmed and all(piece.strip() or piece == " " for piece in dimmed)
    answer_line = terminal.output.split("\x1b[0m")[-1]
    assert "\x1b[2m" not in answer_line and SUMMARY.search(answer_line)


async def test_every_provider_and_protocol_answers_from_the_mock() -> None:
    for options in (
        ["--provider", "dashscope-compatible"],
        ["--provider", "openai", "--model", "qwen-plus"],
        ["--provider", "qianfan", "--model", "ernie-4.0-turbo-8k"],
    ):
        status, stdout, stderr = await chat("--mock", *options, "--system", "Be brief.", "Hello")
        assert status == 0, (options, stderr)
        assert stdout.strip() and "first chunk" in stderr


async def test_version() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "--version", cwd=ROOT, env=environment(),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    assert re.fullmatch(r"llmstreams \d+\.\d+\.\d+\n", stdout.decode())


async def test_interactive_chat_keeps_the_history_and_ends_on_ctrl_d() -> None:
    terminal = await Terminal.start(sys.executable, "-m", "llmstreams", "chat", "--mock", env=environment())
    try:
        await terminal.expect("you> ")
        terminal.send("What is a stream?\n")
        first = SUMMARY.search(await terminal.expect(SUMMARY.pattern))
        await terminal.expect("you> ")
        terminal.send("And a chunk?\n")
        second = SUMMARY.search(await terminal.expect(SUMMARY.pattern))
        await terminal.expect("you> ")
        terminal.send("\x04")  # Ctrl-D
        assert await terminal.wait() == 0
    finally:
        terminal.close()
    assert first is not None and second is not None
    # The second request carried the first question and answer: more prompt tokens than both.
    assert int(second[3]) > int(first[3]) + int(first[2])
    assert "Traceback" not in terminal.output


async def test_ctrl_c_during_an_answer_stops_it_and_the_chat_goes_on(
    llmstreams_mock_factory: MockServerFactory,
) -> None:
    server = await llmstreams_mock_factory(behaviour=Behaviour(answer_chars=5000, chunks_per_second=20))
    terminal = await Terminal.start(
        sys.executable, "-m", "llmstreams", "chat", "--provider", "qianfan-v1",
        "--base-url", server.url, env=environment(QIANFAN_API_KEY="k", QIANFAN_SECRET_KEY="s"),
    )
    try:
        await terminal.expect("you> ")
        terminal.send("Tell me everything\n")
        await server.wait_for(lambda stats: stats.streams_started == 1)
        await terminal.expect(r"\w")  # the answer has begun
        terminal.send("\x03")
        await terminal.expect("answer stopped")
        stats = await server.wait_for(lambda stats: stats.streams_aborted == 1)
        assert stats.streams_active == 0
        await terminal.expect("you> ")
        terminal.send("\x04")
        assert await terminal.wait() == 0
    finally:
        terminal.close()
    assert "Traceback" not in terminal.output


def test_the_summary_gives_times_below_a_second_in_milliseconds() -> None:
    completion = llmstreams.Completion(text="hi", chunk_count=1, request_id="as-1")
    assert summary_line(completion, 0.003, 0.0034) == (
        "[first chunk 3 ms, 1 chunks, tokens not reported, total 3 ms, request id as-1]"
    )
    assert "first chunk 1.20 s" in summary_line(completion, 1.2, 2.5)
    assert "total 2.50 s" in summary_line(completion, 1.2, 2.5)
