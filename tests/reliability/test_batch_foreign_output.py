"""A batch never destroys what it did not write: an OUTPUT that is not the output of an earlier
run is refused (one line, exit 2, the file as it was, nothing sent) unless --overwrite, and the
half-written end a killed run left is moved to OUTPUT.partial, not deleted. JSONL and Parquet.

JSONL runs are the command in a subprocess against the mock in this test's loop; Parquet ones
run the command in this process, refused or with nothing left to run, so no Ray starts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet
import pytest

from llmstreams.cli import main
from llmstreams.mock import MockServer
from llmstreams.ray.generate import columns_of, result_table
from tests.reliability.test_batch_faults import MODEL, batch_process, finish
from tests.test_batch import by_id, read_results, write_lines

ANSWER = {"id": "r0", "text": "paid for", "usage": None, "finish_reason": "stop", "attempts": 1}
FAILURE = {"id": "r1", "error": {"type": "ServerError", "message": "overloaded"}, "attempts": 3}

NOT_OURS = {
    # The case of the issue: 100 kB of text without a trailing newline.
    "text without a newline": b"lorem ipsum dolor sit amet\n" * 3703 + b"the end",
    "text lines": b"first line\nsecond line\n",
    # Shaped like a corpus, not like results: no "attempts", no "error" object.
    "a corpus of id and text": b'{"id": 1, "text": "one"}\n{"id": 2, "text": "two"}\n',
    "an input file": b'{"id": "r0", "prompt": "question 0"}\n',
    "only a line cut short": b'{"id": "r0", "text": "torn',
    # Results, then what no batch writes after its last newline.
    "results and then notes": json.dumps(ANSWER).encode() + b"\nmy notes, no newline",
}


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode() + b"\n"


def prompts(path: Path, count: int) -> Path:
    return write_lines(path, [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(count)])


@pytest.mark.parametrize("mode", [[], ["--retry-errors"]], ids=["resume", "retry-errors"])
@pytest.mark.parametrize("held", list(NOT_OURS.values()), ids=list(NOT_OURS))
async def test_an_output_a_batch_did_not_write_is_refused_and_left_as_it_was(
    tmp_path: Path, server: MockServer, held: bytes, mode: list[str]
) -> None:
    source = prompts(tmp_path / "input.jsonl", 3)
    output = tmp_path / "notes.txt"
    output.write_bytes(held)
    code, stdout, stderr = await finish(
        await batch_process(str(source), "-o", str(output), *mode, url=server.url)
    )
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and stdout == "", stderr
    assert stderr.startswith(f"llmstreams batch: error: {output} ")
    assert "is not the output of an earlier batch run" in stderr and "--overwrite" in stderr
    assert output.read_bytes() == held
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.jsonl", "notes.txt"]
    assert sum(server.stats.requests.values()) == 0


async def test_overwrite_replaces_an_output_a_batch_did_not_write(
    tmp_path: Path, server: MockServer
) -> None:
    source = prompts(tmp_path / "input.jsonl", 3)
    output = tmp_path / "notes.txt"
    output.write_bytes(NOT_OURS["text without a newline"])
    code, _, stderr = await finish(
        await batch_process(str(source), "-o", str(output), "--overwrite", url=server.url)
    )
    assert code == 0, stderr
    assert set(by_id(read_results(output))) == {"r0", "r1", "r2"}


@pytest.mark.parametrize("mode", [[], ["--retry-errors"]], ids=["resume", "retry-errors"])
async def test_a_result_line_cut_short_is_moved_to_the_partial_file_and_said(
    tmp_path: Path, server: MockServer, mode: list[str]
) -> None:
    source = prompts(tmp_path / "input.jsonl", 4)
    output = tmp_path / "output.jsonl"
    before = line(ANSWER) + b"not a result, kept\n" + line(FAILURE)
    partial = tmp_path / "output.jsonl.partial"
    for torn in (b'{"id": "r2", "text": "cut sh', b'{"id'):
        output.write_bytes(before + torn)
        code, _, stderr = await finish(
            await batch_process(str(source), "-o", str(output), *mode, url=server.url)
        )
        assert code == (0 if mode else 1), stderr  # without --retry-errors, r1 stays failed
        assert (
            f"{output}: moved what an interrupted run left half-written ({len(torn)} bytes)"
            f" to {partial}\n"
        ) in stderr
        # Nothing before the torn line is lost (an error line goes only with --retry-errors).
        kept = before if not mode else line(ANSWER) + b"not a result, kept\n"
        assert output.read_bytes().startswith(kept)
        results = by_id([
            json.loads(raw) for raw in output.read_bytes().splitlines() if raw.startswith(b'{"id"')
        ])
        assert set(results) == {"r0", "r1", "r2", "r3"}
        assert results["r1"].get("error") == (FAILURE["error"] if not mode else None)
    # Each run's torn line is appended on its own line: none is lost.
    assert partial.read_bytes() == b'{"id": "r2", "text": "cut sh\n{"id\n'


@pytest.mark.parametrize("mode", ["resume", "retry_errors"])
async def test_rewriting_the_output_keeps_the_lines_that_are_not_results(
    tmp_path: Path, server: MockServer, mode: str
) -> None:
    # A setup error (run again without --retry-errors) and an error (run again with it).
    setup = {"id": "r1", "error": {"type": "AuthenticationError", "message": "bad key"}, "attempts": 1}
    failure = setup if mode == "resume" else FAILURE
    source = prompts(tmp_path / "input.jsonl", 2)
    output = tmp_path / "output.jsonl"
    output.write_bytes(line(ANSWER) + b"a line someone added\n" + line(failure))
    flag = ["--retry-errors"] if mode == "retry_errors" else []
    code, _, stderr = await finish(await batch_process(str(source), "-o", str(output), *flag, url=server.url))
    assert code == 0, stderr
    lines = output.read_bytes().splitlines(keepends=True)
    assert lines[:2] == [line(ANSWER), b"a line someone added\n"]
    assert json.loads(lines[2])["id"] == "r1" and "text" in json.loads(lines[2])


# Parquet output (batch --ray): refused or resumed before any Ray work.


def parquet_args(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "batch", str(source), "-o", str(output), "--provider", "dashscope", "--model", MODEL,
        "--base-url", "http://127.0.0.1:9", "--ray", *extra,
    ]


def write_result_part(directory: Path, records: list[dict[str, Any]]) -> Path:
    directory.mkdir(exist_ok=True)
    part = directory / f"part-{uuid.uuid4().hex}.parquet"
    pyarrow.parquet.write_table(result_table([columns_of(record) for record in records]), part)
    return part


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {entry.name: entry.read_bytes() for entry in sorted(path.iterdir())}


def foreign_parquet_file(path: Path) -> None:
    pyarrow.parquet.write_table(pyarrow.table({"id": [1, 2], "name": ["a", "b"]}), path)


def not_ours_parquet(case: str, output: Path) -> None:
    if case == "a Parquet file":
        foreign_parquet_file(output)
        return
    output.mkdir()
    if case == "a dataset of other columns":
        foreign_parquet_file(output / "part-0.parquet")
    elif case == "an unreadable part":
        write_result_part(output, [{**ANSWER, "id": "r0"}])
        (output / "part-1.parquet").write_bytes(b"PAR1 not really")
    else:
        (output / "readme.txt").write_text("my notes")


PARQUET_NOT_OURS = ["a Parquet file", "a dataset of other columns", "an unreadable part", "other files"]


@pytest.mark.parametrize("mode", [[], ["--retry-errors"]], ids=["resume", "retry-errors"])
@pytest.mark.parametrize("case", PARQUET_NOT_OURS)
def test_a_parquet_output_a_batch_did_not_write_is_refused_and_left_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    case: str, mode: list[str],
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    source = prompts(tmp_path / "input.jsonl", 2)
    output = tmp_path / "out.parquet"
    not_ours_parquet(case, output)
    held = snapshot(output)
    assert main(parquet_args(source, output, *mode)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{output} " in err, err
    assert "is not the output of an earlier batch run" in err and "--overwrite" in err
    assert snapshot(output) == held
    assert not (tmp_path / "out.parquet.partial").exists()


@pytest.mark.parametrize("case", PARQUET_NOT_OURS)
def test_overwrite_replaces_a_parquet_output_a_batch_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    source = prompts(tmp_path / "input.jsonl", 1)
    output = tmp_path / "out.parquet"
    not_ours_parquet(case, output)
    # The input's one line is malformed: nothing to send, so no Ray is needed.
    write_lines(source, [{"id": "r0"}])
    assert main(parquet_args(source, output, "--overwrite")) == 1
    parts = sorted(output.glob("*.parquet"))
    assert len(parts) == 1 and pyarrow.parquet.read_table(parts[0]).column("id").to_pylist() == ["r0"]


@pytest.mark.parametrize("mode", [[], ["--retry-errors"]], ids=["resume", "retry-errors"])
def test_a_parquet_part_left_half_written_is_moved_aside_and_other_files_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    mode: list[str],
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-key")
    source = prompts(tmp_path / "input.jsonl", 1)
    output = tmp_path / "out.parquet"
    part = write_result_part(output, [ANSWER])
    leftover = output / f"part-{uuid.uuid4().hex}.parquet.tmp"
    leftover.write_bytes(b"PAR1 cut short")
    (output / "notes.tmp").write_text("not ours")
    (output / "_SUCCESS").write_text("")
    # Every id is done already: the run reads and repairs OUTPUT, then has nothing to send.
    assert main(parquet_args(source, output, *mode)) == 0
    partial = tmp_path / "out.parquet.partial"
    assert (
        f"{output}: moved what an interrupted run left half-written (14 bytes) to {partial}\n"
    ) in capsys.readouterr().err
    assert (partial / leftover.name).read_bytes() == b"PAR1 cut short"
    assert sorted(entry.name for entry in output.iterdir()) == sorted(["_SUCCESS", "notes.tmp", part.name])
