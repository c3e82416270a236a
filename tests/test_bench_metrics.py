"""Each metric of the harness computed on hand-made records, and the workload readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmstreams.bench import RequestRecord, summarize
from llmstreams.bench.metrics import CLIENT_CPU_LIMIT, LOOP_LAG_LIMIT_MS, SHARED_READ_LIMIT
from llmstreams.bench.prompts import (
    CHARS_PER_TOKEN,
    PromptsError,
    from_batch_jsonl,
    from_sharegpt,
    random_prompts,
)


def record(
    index: int = 0,
    *,
    ttft: float | None = 0.1,
    e2el: float = 1.0,
    gaps: tuple[float, ...] = (0.3, 0.3, 0.3),
    output_tokens: int | None = 10,
    input_tokens: int | None = 5,
    status: str = "ok",
    client_queue: float = 0.0,
    send_errors: tuple[float, ...] = (),
) -> RequestRecord:
    return RequestRecord(
        index=index, start=0.0, ttft=ttft, e2el=e2el, gaps=gaps, chunks=len(gaps) + 1,
        output_tokens=output_tokens, status=status, client_queue=client_queue,
        input_tokens=input_tokens, send_errors=send_errors,
    )


def summary_of(records: list[RequestRecord], **options: object) -> dict[str, object]:
    values: dict[str, object] = {"duration": 2.0, "cpu_seconds": 0.5, "peak_rss_mb": 10.0}
    values.update(options)
    return summarize(records, **values).to_json()  # type: ignore[arg-type]


def test_tpot_counts_the_tokens_after_the_first() -> None:
    assert record(ttft=0.1, e2el=1.0, output_tokens=10).tpot == pytest.approx(0.1)
    assert record(output_tokens=1).tpot is None
    assert record(output_tokens=None).tpot is None
    assert record(ttft=None).tpot is None


def test_tpot_distribution_is_per_request_and_itl_per_chunk() -> None:
    fields = summary_of([
        record(ttft=0.1, e2el=1.1, output_tokens=11, gaps=(0.5, 0.5)),
        record(ttft=0.1, e2el=2.1, output_tokens=11, gaps=(0.2,)),
    ])
    assert fields["mean_tpot_ms"] == pytest.approx(150.0)  # (100 + 200) / 2
    assert fields["median_itl_ms"] == pytest.approx(500.0)  # gaps 200, 500, 500
    assert fields["mean_itl_ms"] == pytest.approx(400.0)


def test_throughputs_count_requests_output_and_input_tokens() -> None:
    fields = summary_of([
        record(output_tokens=10, input_tokens=5),
        record(output_tokens=20, input_tokens=7),
        record(status="TimeoutError", output_tokens=None, input_tokens=None),
    ])
    assert fields["completed"] == 2
    assert fields["request_throughput"] == 1.0
    assert fields["output_throughput"] == 15.0
    assert fields["total_token_throughput"] == 21.0  # (10 + 20 + 5 + 7) / 2 s
    assert fields["total_input_tokens"] == 12
    assert fields["errors"] == {"TimeoutError": 1}


def test_goodput_counts_the_successes_within_every_slo() -> None:
    records = [
        record(ttft=0.1, e2el=1.0, output_tokens=10),  # ttft 100 ms, tpot 100 ms: good
        record(ttft=0.6, e2el=1.5, output_tokens=10),  # ttft 600 ms: too slow
        record(ttft=0.1, e2el=2.0, output_tokens=10),  # tpot 211 ms: too slow
        record(ttft=0.1, e2el=0.1, output_tokens=1),  # no tpot, one token: good
        record(ttft=0.1, e2el=1.0, output_tokens=None),  # tpot unknown: not good
        record(ttft=0.1, status="StreamInterruptedError"),  # failed: not good
    ]
    fields = summary_of(records, slos={"ttft": 500.0, "tpot": 150.0})
    assert fields["request_goodput"] == 1.0  # 2 good in 2 s
    assert fields["goodput_slos_ms"] == {"ttft": 500.0, "tpot": 150.0}
    assert summary_of(records)["request_goodput"] is None


def test_e2el_slo_bounds_end_to_end_latency() -> None:
    assert record(e2el=0.9).meets({"e2el": 1000.0})
    assert not record(e2el=1.1).meets({"e2el": 1000.0})


def test_configurable_percentiles_name_their_fields_like_vllm() -> None:
    values = tuple(float(n) / 1000 for n in range(1, 1001))
    fields = summary_of([record(gaps=values)], percentiles=(50, 99.9))
    assert fields["p99.9_itl_ms"] == pytest.approx(999.001)
    assert fields["p50_itl_ms"] == pytest.approx(500.5)
    assert "p99_itl_ms" not in fields


def test_client_queue_is_added_to_e2el_including_queue() -> None:
    fields = summary_of([record(e2el=1.0, client_queue=0.5), record(e2el=1.0)])
    assert fields["mean_client_queue_ms"] == pytest.approx(250.0)
    assert fields["mean_e2el_ms"] == pytest.approx(1000.0)
    assert fields["mean_e2el_including_queue_ms"] == pytest.approx(1250.0)
    assert record(e2el=1.0, client_queue=0.5).to_json()["e2el_including_queue_ms"] == 1500.0


def test_cpu_per_chunk_and_share_of_a_core() -> None:
    fields = summary_of([record(gaps=(0.1,) * 999)], duration=4.0, cpu_seconds=1.0)
    assert fields["cpu_us_per_chunk"] == pytest.approx(1000.0)
    assert fields["cpu_s_per_1k_chunks"] == pytest.approx(1.0)
    assert fields["client_cpu_utilization"] == 0.25
    two = summary_of([record()], duration=4.0, cpu_seconds=4.0, processes=2)
    assert two["client_cpu_utilization"] == 0.5  # per process


def test_a_client_over_its_limits_is_called_the_bottleneck() -> None:
    calm = summary_of([record()], duration=10.0, cpu_seconds=1.0, loop_lags=[0.001] * 100)
    assert calm["client_bound"] is False
    assert calm["client_bound_reasons"] == []
    assert calm["p99_loop_lag_ms"] == pytest.approx(1.0)
    busy_cpu = summary_of([record()], duration=1.0, cpu_seconds=CLIENT_CPU_LIMIT + 0.1)
    assert busy_cpu["client_bound"] is True
    assert "client CPU" in busy_cpu["client_bound_reasons"][0]  # type: ignore[index]
    lags = [0.001] * 90 + [LOOP_LAG_LIMIT_MS / 1000 * 2] * 10
    lagging = summary_of([record()], duration=10.0, cpu_seconds=1.0, loop_lags=lags)
    assert lagging["client_bound"] is True
    assert "loop lag" in lagging["client_bound_reasons"][0]  # type: ignore[index]


def test_chunks_that_shared_a_read_are_counted_and_flagged_past_the_limit() -> None:
    # 200 requests of 10 gaps; chunks of one read share their time, so their gap is exactly 0.
    apart = [record(index, gaps=(0.1,) * 10) for index in range(199)]
    few = summary_of([*apart, record(199, gaps=(0.1,) * 8 + (0.0,) * 2)])
    assert (few["shared_read_chunks"], few["shared_read_requests"]) == (2, 1)
    assert SHARED_READ_LIMIT >= 1 / 200
    assert (few["shared_reads"], few["shared_reads_reason"]) == (False, None)
    many = summary_of([*apart, *(record(index, gaps=(0.0,) * 10) for index in range(199, 202))])
    assert many["shared_read_chunks"] == 30
    assert many["shared_reads"] is True
    assert "cannot be told apart" in many["shared_reads_reason"]  # type: ignore[operator]
    # Few chunks, but in many requests (the first chunks of a round of answers): the TTFT
    # percentiles, one value per request, are off.
    firsts = [record(index, gaps=(0.0,) + (0.1,) * 9) for index in range(3)]
    spread = summary_of([*apart[:197], *firsts])
    assert spread["shared_read_chunks"] / 2000 <= SHARED_READ_LIMIT
    assert spread["shared_reads"] is True
    # Failed requests are not timed, so not counted either.
    assert summary_of([record(gaps=(0.0, 0.0), status="ReadError")])["shared_read_chunks"] == 0


def test_each_run_says_which_clock_timed_its_chunks() -> None:
    assert summary_of([record()])["chunk_clock"] == "loop"
    assert summary_of([record()], chunk_clock="kernel")["chunk_clock"] == "kernel"


def test_harness_error_from_the_servers_true_send_times() -> None:
    # Observed minus true per chunk: the first chunk seen 2 ms late, the second 5, the third 1.
    stamped = record(gaps=(0.103, 0.096), send_errors=(0.002, 0.005, 0.001))
    fields = summary_of([stamped, record()])
    assert fields["mean_harness_ttft_error_ms"] == pytest.approx(2.0)
    assert fields["mean_harness_itl_error_ms"] == pytest.approx(3.5)  # |5-2|, |1-5|
    # True gaps: observed gap minus the change in error.
    assert fields["mean_true_itl_ms"] == pytest.approx(100.0)
    assert "mean_harness_itl_error_ms" not in summary_of([record()])


def test_request_line_carries_every_per_request_metric() -> None:
    line = record(ttft=0.1, e2el=1.0, output_tokens=10, send_errors=(0.001,) * 4).to_json()
    assert line["tpot_ms"] == pytest.approx(100.0)
    assert line["send_error_ms"] == [1.0] * 4
    assert line["input_tokens"] == 5


def test_prompts_from_a_batch_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"id": 1, "prompt": "hello", "max_tokens": 7}\n\n'
        '{"id": "b", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}\n',
        encoding="utf-8",
    )
    first, second = from_batch_jsonl(path)
    assert (first.text, first.max_tokens, first.as_messages()) == (
        "hello", 7, [{"role": "user", "content": "hello"}],
    )
    assert second.as_text() == "hi"
    assert second.params == {"temperature": 0.5}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [('{"prompt": "x"}\n', 'no "id"'), ('{"id": 1, "prompt": "x", "max_tokens": 0}\n', "max_tokens"),
     ("\n", "no usable prompt")],
)
def test_bad_prompt_files_are_refused(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PromptsError, match=complaint):
        from_batch_jsonl(path)


def test_sharegpt_takes_first_human_turns_and_answer_lengths(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([
        {"id": "a", "conversations": [
            {"from": "human", "value": "Why is the sky blue?"},
            {"from": "gpt", "value": "x" * 400},
        ]},
        {"id": "b", "conversations": [{"from": "human", "value": "alone"}]},
        {"id": "c", "conversations": [{"from": "gpt", "value": "first"}, {"from": "human", "value": "q"}]},
    ]), encoding="utf-8")
    (prompt,) = from_sharegpt(path)
    assert prompt.text == "Why is the sky blue?"
    assert prompt.max_tokens == 400 // CHARS_PER_TOKEN


def test_random_prompts_have_the_asked_lengths_and_repeat_with_the_seed() -> None:
    prompts = random_prompts([3, 5], 4, seed=1)
    assert [len((p.text or "").split()) for p in prompts] == [3, 5, 3, 5]
    assert prompts == random_prompts([3, 5], 4, seed=1)
    assert prompts != random_prompts([3, 5], 4, seed=2)


def test_chunks_without_a_stamp_of_their_own_are_left_out_of_the_harness_error() -> None:
    nan = float("nan")
    # A client-made end chunk after the last event carries no stamp of its own.
    stamped = record(gaps=(0.101, 0.0), send_errors=(0.002, 0.003, nan))
    fields = summary_of([stamped])
    assert fields["mean_harness_itl_error_ms"] == pytest.approx(1.0)
    assert fields["mean_true_itl_ms"] == pytest.approx(100.0)
    assert stamped.to_json()["send_error_ms"] == [2.0, 3.0, None]
