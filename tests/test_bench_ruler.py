"""The ruler: paced answers in the OpenAI-compatible and Qianfan v1 dialects, each event stamped
with its true send time, over keep-alive connections, with its own lateness statistics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from llmstreams import OpenAICompatibleClient, Pool, QianfanClient
from llmstreams.bench import ClientTarget, LoadPlan, Workload, run_load, summarize
from llmstreams.bench.ruler import RESET_PATH, STATS_PATH, Pace, Ruler, serve, spawn_ruler

PACE = Pace(ttft=0.01, gap=0.005, chunks=6)


@pytest.fixture
async def ruler_url() -> AsyncIterator[str]:
    server = await serve(PACE)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_openai_route_streams_stamped_events_and_usage(ruler_url: str) -> None:
    async with Pool() as pool:
        client = OpenAICompatibleClient(base_url=ruler_url + "/v1", pool=pool)
        for _ in range(2):  # a second request on the kept-alive connection
            chunks = [chunk async for chunk in client.stream_chat(
                [{"role": "user", "content": "hi"}], model="ruler",
            )]
            stamped = [chunk.raw["x_sent_at"] for chunk in chunks if not chunk.is_end]
            assert len(stamped) == PACE.chunks
            assert stamped == sorted(stamped)
            assert "".join(chunk.text for chunk in chunks) == "tick " * PACE.chunks
            assert chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == PACE.chunks
        assert pool.stats().connections_in_use == 0


async def test_qianfan_route_and_max_tokens(ruler_url: str) -> None:
    async with Pool() as pool:
        client = QianfanClient(access_token="ruler", base_url=ruler_url, pool=pool)
        chunks = [chunk async for chunk in client.stream_chat(
            [{"role": "user", "content": "hi"}], model="ERNIE-Speed-8K",
            extra_params={"max_output_tokens": 3},
        )]
    assert [chunk.sentence_id for chunk in chunks] == [0, 1, 2]
    assert all(isinstance(chunk.raw["x_sent_at"], float) for chunk in chunks)


async def test_stats_count_every_event_and_reset(ruler_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(ruler_url + "/v1/chat/completions", json={"max_tokens": 4}) as response:
            body = await response.text()
        assert body.count('"x_sent_at"') == 4
        assert body.endswith("data: [DONE]\n\n")
        async with session.get(ruler_url + STATS_PATH) as response:
            stats = json.loads(await response.text())
        assert (stats["answers"], stats["events"]) == (1, 4)
        assert stats["p99_lateness_ms"] <= stats["max_lateness_ms"]
        async with session.get(ruler_url + RESET_PATH) as response:
            assert response.status == 200
        async with session.get(ruler_url + STATS_PATH) as response:
            assert json.loads(await response.text())["events"] == 0
        async with session.get(ruler_url + "/health") as response:
            assert response.status == 200
        async with session.post(ruler_url + "/v1/embeddings", json={}) as response:
            assert response.status == 404


def test_answer_lengths_spread_around_the_pace() -> None:
    ruler = Ruler(Pace(chunks=20, spread=0.5, seed=3))
    lengths = [ruler.answer_length(None) for _ in range(500)]
    assert min(lengths) >= 10 and max(lengths) <= 30
    assert len(set(lengths)) > 10
    assert ruler.answer_length(7) == 7


@pytest.mark.parametrize("settings", [{"chunks": 0}, {"spread": 1.0}, {"gap": -1.0}])
def test_impossible_paces_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Pace(**settings)  # type: ignore[arg-type]


async def test_the_harness_reports_its_error_against_a_ruler_in_another_process() -> None:
    with spawn_ruler(PACE) as url:
        async with Pool() as pool:
            client = OpenAICompatibleClient(base_url=url + "/v1", pool=pool)
            target = ClientTarget(
                client, Workload(provider="openai", model="ruler"), reads_sent_at=True
            )
            measurement = await run_load(target, LoadPlan(concurrency=4, requests=8))
    fields = summarize(
        measurement.records, duration=measurement.duration,
        cpu_seconds=measurement.cpu_seconds, peak_rss_mb=measurement.peak_rss_mb,
    ).to_json()
    assert fields["completed"] == 8
    assert fields["p99_harness_ttft_error_ms"] >= 0
    assert fields["p99_harness_itl_error_ms"] >= 0
    assert fields["p99_true_itl_ms"] > 0
    # Every chunk but the client-made end chunk carries a stamp of its own.
    for record in measurement.records:
        assert sum(error == error for error in record.send_errors) == PACE.chunks


def test_in_phase_every_answer_is_due_on_one_grid_whenever_it_started() -> None:
    pace = Pace(ttft=0.01, gap=0.05, chunks=3, in_phase=True)
    for arrived in (1000.0, 1000.013, 1000.049, 1000.071):
        dues = pace.due_times(arrived, 3)
        assert arrived + pace.ttft <= dues[0] < arrived + pace.ttft + pace.gap
        for due in dues:
            assert due / pace.gap == pytest.approx(round(due / pace.gap))
    assert pace.due_times(1000.013, 3) == pace.due_times(1000.031, 3)


def test_ramped_answers_are_due_from_their_own_start() -> None:
    pace = Pace(ttft=0.01, gap=0.05, chunks=3)
    assert pace.due_times(1000.013, 3) == pytest.approx([1000.023, 1000.073, 1000.123])
    with pytest.raises(ValueError, match="in_phase needs a gap"):
        Pace(gap=0.0, in_phase=True)


async def test_streams_against_an_in_phase_ruler_in_another_process() -> None:
    pace = Pace(ttft=0.01, gap=0.02, chunks=3, in_phase=True)
    with spawn_ruler(pace) as url:
        async with Pool() as pool:
            client = OpenAICompatibleClient(base_url=url + "/v1", pool=pool)
            target = ClientTarget(
                client, Workload(provider="openai", model="ruler"), reads_sent_at=True
            )
            measurement = await run_load(target, LoadPlan(concurrency=4, requests=8))
    records = measurement.records
    assert [record.status for record in records] == ["ok"] * 8
    assert all(sum(error == error for error in record.send_errors) == 3 for record in records)
