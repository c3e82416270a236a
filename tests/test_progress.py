"""The progress display: logs above the bar, one final line off a terminal, an ETA once steady."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

from llmstreams.mock import BEHAVIOUR_HEADER, Behaviour
from llmstreams.mock.pytest_plugin import MockServerFactory
from llmstreams.progress import Progress
from tests.support import ROOT, Terminal, render

MODEL = "billa-7b-sft-v1"


def batch_input(path: Path, count: int, *, retried_every: int = 0) -> Path:
    lines = []
    for n in range(count):
        line: dict[str, object] = {"id": n, "prompt": f"question {n}"}
        if retried_every and n % retried_every == 0:
            # Answered HTTP 429 once, then retried: each retry logs a warning under -v.
            line["extra_headers"] = {BEHAVIOUR_HEADER: "http_status=429; retry_after=0"}
        lines.append(json.dumps(line) + "\n")
    path.write_text("".join(lines))
    return path


async def test_log_lines_appear_above_the_bar_in_a_terminal(
    tmp_path: Path, llmstreams_mock_factory: MockServerFactory
) -> None:
    server = await llmstreams_mock_factory(behaviour=Behaviour(chunks_per_second=40))
    source = batch_input(tmp_path / "in.jsonl", 40, retried_every=5)
    terminal = await Terminal.start(
        sys.executable, "-m", "llmstreams", "batch", str(source), "-o", str(tmp_path / "out.jsonl"),
        "--provider", "dashscope", "--model", MODEL, "--base-url", server.url,
        "--concurrency", "4", "--max-retries", "1", "-v",
        env={"DASHSCOPE_API_KEY": "sk-k"},
    )
    try:
        assert await terminal.wait(timeout=60) == 0
    finally:
        terminal.close()
    screen = render(terminal.output)
    warnings = [line for line in screen if "WARNING" in line]
    bars = [line for line in screen if "batch: " in line and "/40" in line]
    assert len(warnings) == 8, terminal.output
    assert all(line.startswith("llmstreams: WARNING: ") for line in warnings)
    assert all(line.startswith("[") and "WARNING" not in line for line in bars)
    # The bar is drawn once, below the logs, and ends at its final state.
    assert len(bars) == 1 and "40/40 (100%)" in bars[0]
    assert screen.index(bars[0]) > max(screen.index(line) for line in warnings)
    # Some warnings came while the bar was on screen (they had to be moved above it).
    assert "\x1b[K" in terminal.output


async def test_off_a_terminal_the_final_line_is_written_once(
    tmp_path: Path, llmstreams_mock_factory: MockServerFactory
) -> None:
    server = await llmstreams_mock_factory()
    source = batch_input(tmp_path / "in.jsonl", 3)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmstreams", "batch", str(source), "-o", str(tmp_path / "out.jsonl"),
        "--provider", "dashscope", "--model", MODEL, "--base-url", server.url, "--concurrency", "1",
        env={**os.environ, "PYTHONPATH": str(ROOT), "DASHSCOPE_API_KEY": "sk-k"}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 0
    lines = stderr.decode().splitlines()
    assert "\r" not in stderr.decode()
    assert sum(line.startswith("batch: 3/3 (100%)") for line in lines) == 1, lines


def test_the_eta_waits_for_a_steady_rate() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(1000, label="batch", stream=stream, is_tty=False, plain_interval=0, clock=lambda: now[0])
    # A burst: the first 64 results land together after 1 s, then nothing for a second.
    now[0] = 1.0
    progress.advance(64)
    now[0] = 2.0
    progress.refresh()
    assert "ETA" not in progress.line()
    # Then a steady 64/s: the rate over the last half agrees with the whole, and the ETA shows.
    for _ in range(3):
        now[0] += 1.0
        progress.advance(64)
    assert "ETA" in progress.line()
    lines = stream.getvalue().splitlines()
    assert "ETA" not in lines[0] and "ETA" not in lines[1] and "ETA" in lines[-1]


def test_write_above_keeps_the_bar_last() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(10, label="batch", stream=stream, is_tty=True, clock=lambda: now[0])
    progress.advance()
    progress.write_above("a log line\n")
    progress.advance()
    progress.close()
    screen = render(stream.getvalue())
    assert screen[0] == "a log line"
    assert screen[1].startswith("[") and "2/10" in screen[1]
    assert screen[2:] == [""]
