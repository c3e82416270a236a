"""`llmstreams bench` end to end against the mock server, and the harness's building blocks.

The bench command runs its own event loop, so the tests that run it are synchronous. No test
checks a timing: only counts, field names and the consistency of the statistics.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmstreams.bench import LoadPlan, RequestRecord, load, run_load, summarize
from llmstreams.bench.eventloop import CHUNK_CLOCKS, EVENT_LOOPS, default_event_loop
from llmstreams.bench.metrics import Distribution, percentile
from llmstreams.bench.report import format_run
from llmstreams.bench.runner import BenchConfig
from llmstreams.bench.targets import Workload
from llmstreams.cli import main
from llmstreams.mock import MockCredentials, spawn_mock_workers

# 120 characters in chunks of 12: every streamed answer is 10 chunks.
SMALL_ANSWER = ["--answer-chars", "120", "--chunk-chars", "12"]
CHUNKS_PER_ANSWER = 10

VLLM_FIELDS = (
    "duration", "completed", "total_output_tokens", "request_throughput", "output_throughput",
    "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms",
    "mean_itl_ms", "median_itl_ms", "std_itl_ms", "p99_itl_ms",
    "mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p99_e2el_ms",
)
OWN_FIELDS = (
    "failed", "errors", "total_chunks", "chunk_throughput", "cpu_seconds", "event_loop",
    "gc_collections", "chunk_clock", "shared_read_chunks", "shared_reads",
    "cpu_s_per_1k_chunks", "client_cpu_utilization", "peak_rss_mb", "p90_ttft_ms",
    "p90_itl_ms", "p90_e2el_ms", "mode", "concurrency", "request_rate", "mock_workers",
)
REQUEST_FIELDS = (
    "index", "start_s", "status", "ttft_ms", "e2el_ms", "itl_ms", "chunks", "output_tokens",
)


def bench(*arguments: str) -> int:
    return main(["bench", *arguments])


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench("--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--concurrency", "--rate", "--requests", "--duration", "--warmup", "--seed",
        "--base-url", "--mock-workers", "--answer-chars", "--chunk-chars",
        "--chunks-per-second", "--first-chunk-delay", "--response-delay", "--mock-knob",
        "--mock", "--mock-auth", "--provider", "--model", "--endpoint", "--prompt", "--stream",
        "--no-stream", "--incremental-output", "--max-retries", "--json", "--requests-jsonl",
        "--plots", "--quiet", "--trace", "--burstiness", "--ramp-up", "--processes", "--prompts",
        "--sharegpt", "--random-input-len", "--max-tokens", "--percentiles", "--goodput",
        "--event-loop",
        "compare",
    ):
        assert option in text, option
    for field in ("request_throughput", "mean_ttft_ms", "total_token_throughput", "request_goodput",
                  "median_tpot_ms", "p99_itl_ms"):
        assert field in text


def test_closed_loop_sweep_writes_json_jsonl_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, lines, plots = tmp_path / "report.json", tmp_path / "requests.jsonl", tmp_path / "plots"
    code = bench(
        "--mock-workers", "0", "--concurrency", "1,4", "--requests", "12", "--warmup", "3",
        *SMALL_ANSWER, "--json", str(report), "--requests-jsonl", str(lines),
        "--plots", str(plots),
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "closed loop, 4 streams" in output
    assert "; on uvloop" in output

    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["config"]["concurrencies"] == [1, 4]
    assert document["environment"]["packages"]["llmstreams"]
    runs = document["runs"]
    assert [run["concurrency"] for run in runs] == [1, 4]
    for run in runs:
        for field in (*VLLM_FIELDS, *OWN_FIELDS):
            assert field in run, field
        assert run["completed"] == 12
        assert run["failed"] == 0
        assert run["errors"] == {}
        assert run["total_chunks"] == 12 * CHUNKS_PER_ANSWER
        assert run["requests_with_usage"] == 12
        assert run["total_output_tokens"] > 0
        assert run["mode"] == "closed"
        assert run["mock_workers"] == 0
        assert run["median_ttft_ms"] <= run["p99_ttft_ms"]
        assert run["mean_ttft_ms"] <= run["mean_e2el_ms"]
        assert run["p90_e2el_ms"] <= run["p99_e2el_ms"]
        assert run["chunk_throughput"] == pytest.approx(run["request_throughput"] * CHUNKS_PER_ANSWER)
        assert run["cpu_s_per_1k_chunks"] > 0
        assert run["peak_rss_mb"] > 0
    # A sweep keeps its runs apart: no run's fields at the top level.
    assert "request_throughput" not in document

    records = read_lines(lines)
    assert len(records) == 24
    assert sorted(record["index"] for record in records if record["concurrency"] == 4) == list(range(12))
    for record in records:
        for field in REQUEST_FIELDS:
            assert field in record, field
        assert record["status"] == "ok"
        assert record["chunks"] == CHUNKS_PER_ANSWER
        assert len(record["itl_ms"]) == CHUNKS_PER_ANSWER - 1
        assert record["ttft_ms"] <= record["e2el_ms"]
        assert record["output_tokens"] > 0

    assert sorted(path.name for path in plots.iterdir()) == [
        "concurrency_sweep.png", "latency.png", "timeline.png",
    ]
    for path in plots.iterdir():
        assert path.read_bytes().startswith(b"\x89PNG")


def test_single_run_fields_are_also_at_the_top_level(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert bench(
        "--mock-workers", "0", "--concurrency", "2", "--requests", "6", "--warmup", "0",
        *SMALL_ANSWER, "--json", str(report), "--quiet",
    ) == 0
    document = json.loads(report.read_text(encoding="utf-8"))
    assert len(document["runs"]) == 1
    assert document["completed"] == document["runs"][0]["completed"] == 6
    assert document["request_throughput"] == document["runs"][0]["request_throughput"]


def test_open_loop_against_a_mock_worker_process(tmp_path: Path) -> None:
    report, lines = tmp_path / "report.json", tmp_path / "requests.jsonl"
    code = bench(
        "--provider", "dashscope", "--mock-workers", "1", "--rate", "400", "--requests", "15",
        "--warmup", "2", *SMALL_ANSWER, "--json", str(report), "--requests-jsonl", str(lines),
        "--quiet",
    )
    assert code == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["mode"] == "open"
    assert run["request_rate"] == 400
    assert run["concurrency"] is None
    assert run["mock_workers"] == 1
    assert run["provider"] == "dashscope"
    assert run["completed"] == 15
    assert run["total_chunks"] == 15 * CHUNKS_PER_ANSWER
    records = read_lines(lines)
    assert len(records) == 15
    starts = [record["start_s"] for record in sorted(records, key=lambda record: record["index"])]
    assert starts == sorted(starts)


def test_qianfan_can_sign_every_request_instead_of_using_a_token(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert bench(
        "--mock-workers", "0", "--provider", "qianfan-v1", "--mock-auth", "access_key", "--concurrency", "2",
        "--requests", "6", "--warmup", "0", *SMALL_ANSWER, "--json", str(report), "--quiet",
    ) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["mock_auth"] == "access_key"
    assert run["completed"] == 6


def test_no_stream_counts_one_chunk_per_request(tmp_path: Path) -> None:
    lines = tmp_path / "requests.jsonl"
    assert bench(
        "--mock-workers", "0", "--no-stream", "--concurrency", "3", "--requests", "9",
        "--warmup", "0", *SMALL_ANSWER, "--requests-jsonl", str(lines), "--quiet",
    ) == 0
    records = read_lines(lines)
    assert len(records) == 9
    assert {record["chunks"] for record in records} == {1}
    assert all(record["itl_ms"] == [] and record["status"] == "ok" for record in records)
    assert all(record["stream"] is False for record in records)


def test_errors_are_counted_by_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, lines = tmp_path / "report.json", tmp_path / "requests.jsonl"
    code = bench(
        "--mock-workers", "0", "--provider", "qianfan-v1", "--concurrency", "2", "--requests", "8",
        "--warmup", "0", *SMALL_ANSWER, "--mock-knob", "error_after=3", "--json", str(report),
        "--requests-jsonl", str(lines),
    )
    assert code == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["completed"] == 0
    assert run["failed"] == 8
    assert sum(run["errors"].values()) == 8
    (error_type,) = run["errors"]
    assert error_type.endswith("Error")
    assert run["total_chunks"] == 8 * 3
    assert run["mean_ttft_ms"] is None
    records = read_lines(lines)
    assert {record["status"] for record in records} == {error_type}
    assert {record["chunks"] for record in records} == {3}
    assert {record["output_tokens"] for record in records} == {None}
    assert f"{error_type} 8" in capsys.readouterr().out


def test_base_url_uses_the_clients_environment_credentials_and_never_prints_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api_key, secret_key = "env-api-key-1234", "env-secret-key-5678"
    for name in ("QIANFAN_ACCESS_TOKEN", "QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_ACCESS_KEY",
                 "QIANFAN_AK", "QIANFAN_SK", "QIANFAN_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QIANFAN_API_KEY", api_key)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", secret_key)
    report, lines = tmp_path / "report.json", tmp_path / "requests.jsonl"
    credentials = MockCredentials(api_key=api_key, secret_key=secret_key)
    with spawn_mock_workers(1, credentials=credentials) as url:
        code = bench(
            "--provider", "qianfan-v1", "--base-url", url, "--concurrency", "2", "--requests", "4",
            "--warmup", "1", "--json", str(report), "--requests-jsonl", str(lines),
        )
    assert code == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["completed"] == 4
    assert run["mock_workers"] is None
    captured = capsys.readouterr()
    written = report.read_text(encoding="utf-8") + lines.read_text(encoding="utf-8")
    for text in (captured.out, captured.err, written):
        assert api_key not in text
        assert secret_key not in text


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--provider", "dashscope", "--endpoint", "my_service"], "--endpoint"),
        (["--base-url", "http://127.0.0.1:9", "--answer-chars", "10"], "mock knobs"),
        (["--mock-knob", "no_such_knob=1"], "no_such_knob"),
        (["--mock-knob", "chunk_chars=0"], "chunk_chars"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    arguments: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench("--mock-workers", "0", *arguments) == 2
    assert complaint in capsys.readouterr().err


def test_rate_and_trace_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench("--rate", "10", "--trace", str(tmp_path / "trace.jsonl"))
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


class CountingTarget:
    """Streams three items per request, yielding to the loop between them, and records how
    many requests were in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.opened = 0

    async def _items(self) -> AsyncIterator[int]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for item in (1, 2, 3):
                await asyncio.sleep(0)
                yield item
        finally:
            self.in_flight -= 1

    def open_stream(self) -> AsyncIterator[int]:
        self.opened += 1
        return self._items()

    def output_tokens(self, last_item: int) -> int | None:
        return last_item * 10


async def test_closed_loop_keeps_exactly_the_concurrency_in_flight() -> None:
    target = CountingTarget()
    measurement = await run_load(target, LoadPlan(concurrency=5, requests=40, warmup=7))
    assert target.opened == 47
    assert target.most_in_flight == 5
    assert [record.index for record in measurement.records] == list(range(40))
    assert all(record.chunks == 3 and record.output_tokens == 30 for record in measurement.records)
    assert all(len(record.gaps) == 2 for record in measurement.records)


async def test_failed_requests_keep_their_chunks_and_error_type() -> None:
    class Broken(CountingTarget):
        async def _items(self) -> AsyncIterator[int]:
            yield 1
            raise ConnectionResetError("gone")

    measurement = await run_load(Broken(), LoadPlan(concurrency=2, requests=4))
    assert {record.status for record in measurement.records} == {"ConnectionResetError"}
    assert {record.chunks for record in measurement.records} == {1}
    assert {record.output_tokens for record in measurement.records} == {None}


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"concurrency": 1},
        {"concurrency": 0, "requests": 1},
        {"rate": 0.0, "requests": 1},
        {"concurrency": 1, "requests": 1, "warmup": -1},
    ],
)
def test_load_plan_refuses_impossible_plans(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LoadPlan(**arguments)


def test_percentiles_interpolate_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile([4.0], 99) == 4.0
    assert math.isnan(percentile([], 50))


def test_distribution_in_milliseconds_and_empty() -> None:
    distribution = Distribution.of_seconds([0.001, 0.002, 0.003])
    assert distribution.mean == pytest.approx(2.0)
    assert distribution.median == pytest.approx(2.0)
    assert distribution.at(99) == pytest.approx(2.98)
    assert Distribution.of_seconds([]).fields("ttft")["mean_ttft_ms"] is None


def test_summary_counts_only_successes_in_latency_but_every_chunk_in_throughput() -> None:
    good = RequestRecord(0, 0.0, 0.010, 0.030, (0.01, 0.01), 3, 7, "ok")
    bad = RequestRecord(1, 0.0, 0.500, 0.900, (0.4,), 2, None, "StreamInterruptedError")
    summary = summarize([good, bad], duration=2.0, cpu_seconds=0.5, peak_rss_mb=10.0)
    fields = summary.to_json()
    assert fields["completed"] == 1
    assert fields["failed"] == 1
    assert fields["errors"] == {"StreamInterruptedError": 1}
    assert fields["total_chunks"] == 5
    assert fields["chunk_throughput"] == 2.5
    assert fields["request_throughput"] == 0.5
    assert fields["output_throughput"] == 3.5
    assert fields["mean_ttft_ms"] == pytest.approx(10.0)
    assert fields["p99_itl_ms"] == pytest.approx(10.0)
    assert fields["cpu_s_per_1k_chunks"] == pytest.approx(100.0)
    assert fields["client_cpu_utilization"] == 0.25


def test_open_loop_with_a_cap_reports_queue_goodput_and_asked_percentiles(tmp_path: Path) -> None:
    report, lines = tmp_path / "report.json", tmp_path / "requests.jsonl"
    assert bench(
        "--mock-workers", "0", "--rate", "500", "--concurrency", "2", "--burstiness", "0.5",
        "--requests", "12", "--warmup", "0", *SMALL_ANSWER, "--goodput", "ttft:60000",
        "e2el:60000", "--percentiles", "50,99.9", "--json", str(report),
        "--requests-jsonl", str(lines), "--quiet",
    ) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert (run["mode"], run["concurrency"], run["request_rate"], run["burstiness"]) == (
        "open", 2, 500, 0.5,
    )
    assert run["request_goodput"] == pytest.approx(run["request_throughput"])
    assert run["goodput_slos_ms"] == {"ttft": 60000, "e2el": 60000}
    for field in ("p99.9_ttft_ms", "p50_tpot_ms", "p99.9_client_queue_ms",
                  "mean_e2el_including_queue_ms", "p99_loop_lag_ms", "client_bound"):
        assert field in run, field
    assert "p99_ttft_ms" not in run
    assert run["mean_e2el_including_queue_ms"] >= run["mean_e2el_ms"]
    for record in read_lines(lines):
        assert record["e2el_including_queue_ms"] == pytest.approx(
            record["e2el_ms"] + record["client_queue_ms"], abs=0.001
        )


def test_every_run_against_the_mock_measures_the_harness_error(tmp_path: Path) -> None:
    report, lines = tmp_path / "report.json", tmp_path / "requests.jsonl"
    assert bench(
        "--provider", "openai", "--mock-workers", "1", "--concurrency", "3", "--requests", "6",
        "--warmup", "0", *SMALL_ANSWER, "--json", str(report), "--requests-jsonl", str(lines),
        "--quiet",
    ) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["completed"] == 6
    # The closing chunk of each answer ([DONE]: finish reason and usage, no text) is not timed.
    assert run["total_chunks"] == 6 * CHUNKS_PER_ANSWER
    assert run["p99_harness_ttft_error_ms"] >= 0
    assert run["p99_harness_itl_error_ms"] >= 0
    for record in read_lines(lines):
        assert record["chunks"] == CHUNKS_PER_ANSWER
        assert record["output_tokens"] is not None  # read from the closing chunk all the same
        stamped = [error for error in record["send_error_ms"] if error is not None]
        assert len(stamped) == CHUNKS_PER_ANSWER


def test_prompts_file_and_max_tokens_reach_the_server(tmp_path: Path) -> None:
    prompts, lines = tmp_path / "prompts.jsonl", tmp_path / "requests.jsonl"
    prompts.write_text(
        '{"id": 1, "prompt": "first question"}\n'
        '{"id": 2, "messages": [{"role": "user", "content": "second"}], "max_tokens": 2}\n',
        encoding="utf-8",
    )
    assert bench(
        "--provider", "dashscope", "--mock-workers", "0", "--concurrency", "2", "--requests", "6",
        "--warmup", "0", "--prompts", str(prompts), "--max-tokens", "5",
        "--requests-jsonl", str(lines), "--quiet",
    ) == 0
    records = sorted(read_lines(lines), key=lambda record: record["index"])
    assert [record["output_tokens"] for record in records] == [5, 2] * 3
    assert all(record["input_tokens"] > 0 for record in records)


def test_sharegpt_and_random_prompts(tmp_path: Path) -> None:
    sharegpt, report = tmp_path / "sharegpt.json", tmp_path / "report.json"
    sharegpt.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "hello there"}, {"from": "gpt", "value": "x" * 16},
    ]}]), encoding="utf-8")
    assert bench(
        "--provider", "openai", "--mock-workers", "0", "--concurrency", "2", "--requests", "4",
        "--warmup", "0", "--sharegpt", str(sharegpt), "--json", str(report), "--quiet",
    ) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["total_output_tokens"] == 4 * 4  # 16 characters: 4 tokens each
    assert bench(
        "--provider", "openai", "--mock-workers", "0", "--concurrency", "2", "--requests", "4",
        "--warmup", "0", "--random-input-len", "50", "--json", str(report), "--quiet",
    ) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["total_input_tokens"] >= 4 * 50


def test_trace_replay_sends_one_request_per_arrival(tmp_path: Path) -> None:
    trace, report = tmp_path / "trace.jsonl", tmp_path / "report.json"
    trace.write_text("".join(f'{{"offset_s": {n * 0.01}}}\n' for n in range(7)), encoding="utf-8")
    assert bench(
        "--mock-workers", "0", "--trace", str(trace), "--warmup", "0", *SMALL_ANSWER,
        "--json", str(report), "--quiet",
    ) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert (run["mode"], run["completed"], run["failed"]) == ("trace", 7, 0)


def test_processes_share_the_load_and_merge_their_results(tmp_path: Path) -> None:
    report, lines = tmp_path / "report.json", tmp_path / "requests.jsonl"
    assert bench(
        "--mock-workers", "1", "--processes", "2", "--concurrency", "4", "--requests", "10",
        "--warmup", "2", *SMALL_ANSWER, "--json", str(report), "--requests-jsonl", str(lines),
        "--quiet",
    ) == 0
    run = json.loads(report.read_text(encoding="utf-8"))["runs"][0]
    assert run["processes"] == 2
    assert run["completed"] == 10
    assert run["total_chunks"] == 10 * CHUNKS_PER_ANSWER
    records = read_lines(lines)
    assert sorted(record["index"] for record in records) == list(range(10))
    starts = [record["start_s"] for record in sorted(records, key=lambda r: r["index"])]
    assert starts == sorted(starts)


def test_compare_prints_two_reports_side_by_side_with_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path, concurrency in ((first, "1"), (second, "4")):
        assert bench(
            "--mock-workers", "0", "--concurrency", concurrency, "--requests", "8", "--warmup",
            "0", *SMALL_ANSWER, "--json", str(path), "--quiet",
        ) == 0
    capsys.readouterr()
    assert bench("compare", str(first), str(second)) == 0
    output = capsys.readouterr().out
    assert "A: mock in this process; qianfan ernie-speed-8k; closed loop, 1 stream" in output
    assert "B: mock in this process; qianfan ernie-speed-8k; closed loop, 4 streams" in output
    a, b = (json.loads(path.read_text(encoding="utf-8")) for path in (first, second))
    ratio = b["request_throughput"] / a["request_throughput"]
    line = next(line for line in output.splitlines() if line.startswith("request throughput"))
    assert line.split()[-1] == f"{ratio:.2f}x"
    assert "req/s" in line


def test_compare_refuses_files_that_are_not_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "not.json"
    path.write_text("{}", encoding="utf-8")
    assert bench("compare", str(path), str(path)) == 2
    assert "runs" in capsys.readouterr().err


def test_quiet_prints_units_and_one_precision_per_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench(
        "--mock-workers", "0", "--concurrency", "1,3", "--requests", "6", "--warmup", "0",
        *SMALL_ANSWER, "--quiet",
    ) == 0
    lines = capsys.readouterr().out.splitlines()
    heading = next(index for index, line in enumerate(lines) if line.lstrip().startswith("workers"))
    names, units, *rows = lines[heading:heading + 4]
    assert "TTFT p50" in names and "ms" in units.split() and "µs" in units.split()
    assert len(rows) == 2
    ttft = [row.split()[names.split().index("TTFT") + 3] for row in rows]
    assert all(len(value.split(".")[1]) == 2 for value in ttft), ttft


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--burstiness", "2"], "--burstiness"),
        (["--processes", "3", "--concurrency", "2"], "processes"),
    ],
)
def test_load_settings_that_cannot_work_are_refused(
    arguments: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench("--mock-workers", "0", *arguments) == 2
    assert complaint in capsys.readouterr().err


def test_bad_goodput_metric_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench("--goodput", "speed:3")
    assert "ttft, tpot, e2el" in capsys.readouterr().err


def test_connections_opened_during_the_run_are_counted(tmp_path: Path) -> None:
    cold, warm = tmp_path / "cold.json", tmp_path / "warm.json"
    for path, warmup in ((cold, "0"), (warm, "4")):
        assert bench(
            "--mock-workers", "0", "--concurrency", "2", "--requests", "6", "--warmup", warmup,
            *SMALL_ANSWER, "--json", str(path), "--quiet",
        ) == 0
    cold_run, warm_run = (json.loads(p.read_text(encoding="utf-8"))["runs"][0] for p in (cold, warm))
    # Without a warm-up the run opens its connections itself; after one it reuses them, and
    # the report says where they came from instead of a bare "0 connections opened".
    assert cold_run["connections_opened"] >= 1
    assert cold_run["connections_opened_in_warmup"] == 0
    assert warm_run["connections_opened"] < cold_run["connections_opened"]
    assert warm_run["connections_opened_in_warmup"] >= 1


def test_an_unpaced_mock_is_called_out_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["--mock-workers", "0", "--concurrency", "2", "--requests", "4", "--warmup", "0",
             *SMALL_ANSWER, "--quiet"]
    assert bench(*small) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "unpaced" in line]
    assert notices == [
        "llmstreams bench: the mock is unpaced: it writes each answer at once, so ITL and TPOT "
        "time only the client's parsing (pace it, e.g. --chunks-per-second 20)"
    ]
    assert bench(*small, "--chunks-per-second", "400") == 0
    assert "unpaced" not in capsys.readouterr().err


def test_the_console_says_where_the_connections_came_from() -> None:
    records = [RequestRecord(0, 0.0, 0.01, 0.02, (), 1, None, "ok")]

    def line(opened: int | None, warmed: int | None) -> str:
        summary = summarize(records, duration=1.0, cpu_seconds=0.1, peak_rss_mb=1.0,
                            connections_opened=opened, connections_warmed=warmed)
        (client,) = [row for row in format_run(summary).splitlines() if row.startswith("client ")]
        return client

    assert "16 connections, all opened in the warm-up" in line(0, 16)
    assert "256 connections: 20 opened in the warm-up, 236 during the run" in line(236, 20)
    assert "2 connections, all opened during the run" in line(2, 0)
    assert "connection" not in line(None, None)


@pytest.mark.parametrize("event_loop", EVENT_LOOPS)
def test_the_client_runs_on_the_event_loop_asked_for(event_loop: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert bench(
        "--mock-workers", "1", "--processes", "2", "--concurrency", "2", "--requests", "6",
        "--warmup", "0", "--event-loop", event_loop, *SMALL_ANSWER, "--json", str(report),
        "--quiet",
    ) == 0
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["config"]["event_loop"] == event_loop
    # What the client processes report they really ran on.
    assert document["runs"][0]["event_loop"] == event_loop
    assert document["runs"][0]["total_chunks"] == 6 * CHUNKS_PER_ANSWER


@pytest.mark.parametrize("chunk_clock", CHUNK_CLOCKS)
@pytest.mark.parametrize("processes", ["1", "2"])
def test_each_run_records_the_clock_that_timed_its_chunks(
    chunk_clock: str, processes: str, tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    assert bench(
        "--mock-workers", "1", "--processes", processes, "--concurrency", "2", "--requests", "4",
        "--warmup", "0", "--chunk-clock", chunk_clock, *SMALL_ANSWER, "--json", str(report),
        "--quiet",
    ) == 0
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["config"]["chunk_clock"] == chunk_clock
    # On Linux over plain TCP the kernel's times are there to be had.
    assert document["runs"][0]["chunk_clock"] == chunk_clock
    assert document["runs"][0]["total_chunks"] == 4 * CHUNKS_PER_ANSWER


def test_the_kernel_clock_is_the_default() -> None:
    assert BenchConfig(workload=Workload()).chunk_clock == "kernel"
    with pytest.raises(ValueError, match="chunk_clock must be one of kernel, loop"):
        BenchConfig(workload=Workload(), chunk_clock="wall")


def test_uvloop_is_the_default_where_installed() -> None:
    assert default_event_loop() == "uvloop"
    assert BenchConfig(workload=Workload()).event_loop == "uvloop"
    with pytest.raises(ValueError, match="event_loop must be one of uvloop, asyncio"):
        BenchConfig(workload=Workload(), event_loop="trio")


@pytest.mark.parametrize("collecting", [True, False])
async def test_the_measured_run_goes_without_automatic_garbage_collection(collecting: bool) -> None:
    seen: list[bool] = []

    class WatchingTarget(CountingTarget):
        def open_stream(self) -> AsyncIterator[int]:
            seen.append(gc.isenabled())
            return super().open_stream()

    (gc.enable if collecting else gc.disable)()
    try:
        await run_load(WatchingTarget(), LoadPlan(concurrency=2, requests=4, warmup=2))
        assert gc.isenabled() is collecting
    finally:
        gc.enable()
    # The warm-up runs as the caller left the collector; the measured requests without it.
    assert seen == [collecting] * 2 + [False] * 4


async def test_garbage_in_cycles_is_still_collected_past_the_backstop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(load, "GC_BACKSTOP", 20_000)
    collected = asyncio.Event()

    def on_collection(phase: str, info: dict[str, int]) -> None:
        # Only a collection made while automatic collection is off: the backstop's.
        if phase == "stop" and not gc.isenabled():
            collected.set()

    class CycleMakingTarget(CountingTarget):
        """Each item leaves container objects in reference cycles, as failed requests do,
        until the collector has run."""

        async def _items(self) -> AsyncIterator[int]:
            for item in range(1, 2001):
                if collected.is_set():
                    return
                for _ in range(1000):
                    cycle: list[object] = []
                    cycle.append(cycle)
                await asyncio.sleep(load.LOOP_LAG_INTERVAL)  # the watcher's turn
                yield item

    gc.callbacks.append(on_collection)
    try:
        measurement = await run_load(CycleMakingTarget(), LoadPlan(concurrency=1, requests=1))
    finally:
        gc.callbacks.remove(on_collection)
    assert collected.is_set()
    assert measurement.gc_collections >= 1
    assert measurement.records[0].chunks < 2000


async def test_only_items_that_carry_output_are_timed() -> None:
    class ClosingItemTarget(CountingTarget):
        """Its third item of each request is a closing one, with no output."""

        def carries_output(self, item: int) -> bool:
            return item != 3

    measurement = await run_load(ClosingItemTarget(), LoadPlan(concurrency=2, requests=4))
    for record in measurement.records:
        assert record.chunks == 2
        assert len(record.gaps) == 1
        assert record.output_tokens == 30  # still read from the request's last item
