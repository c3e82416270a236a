"""Every `llmstreams bench` example of docs/bench.md runs as written, in order, against the mock."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from llmstreams.cli import main
from tests.support import ROOT

DOCUMENT = ROOT / "docs" / "bench.md"


def bench_examples() -> list[list[str]]:
    """The `llmstreams bench` commands of the document's first shell block."""
    block = re.search(r"```sh\n(.*?)```", DOCUMENT.read_text(encoding="utf-8"), re.S)
    assert block is not None
    text = block.group(1).replace("\\\n", " ")
    return [
        shlex.split(line, comments=True)[1:]
        for line in text.splitlines()
        if line.startswith("llmstreams bench")
    ]


EXAMPLES = bench_examples()


def test_the_examples_were_found() -> None:
    assert len(EXAMPLES) == 5
    assert EXAMPLES[-1][:2] == ["bench", "compare"]


def test_the_examples_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for arguments in EXAMPLES:
        assert main(arguments) == 0, arguments
    output = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert [run["concurrency"] for run in report["runs"]] == [1, 4, 16]
    assert sorted(path.name for path in (tmp_path / "out").glob("*.png")) == [
        "concurrency_sweep.png", "latency.png", "timeline.png",
    ]
    assert "goodput" in output
    assert "open loop, 50 requests/s (gamma, burstiness 0.5), at most 32 in flight" in output
    assert "openai mock-model" in output
    assert "request throughput" in output and "1.00x" in output
