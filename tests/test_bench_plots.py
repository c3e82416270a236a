"""The bench plots: every figure is drawn, checked for overlapping tick labels with the
renderer's own bounding boxes (`overlapping_tick_labels`), for units on its axes and a title naming what was measured,
and written as a PNG (run with --basetemp to keep and look at them)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from llmstreams.bench import RequestRecord, summarize
from llmstreams.bench.metrics import RunSummary
from llmstreams.bench.plots import (
    declutter,
    latency_figure,
    overlapping_tick_labels,
    pyplot,
    sweep_figure,
    timeline_figure,
    write_plots,
)

Run = tuple[RunSummary, list[RequestRecord]]


def made_run(
    label: dict[str, Any], *, seed: int, scale: float = 1.0, queue: float = 0.0, count: int = 120
) -> Run:
    """Requests whose latencies spread over several decades, started over ten seconds."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        ttft = rng.lognormvariate(-3.0, 1.2) * scale
        gaps = tuple(rng.lognormvariate(-4.0, 1.5) * scale for _ in range(10))
        records.append(RequestRecord(
            index=index, start=index * 0.08, ttft=ttft, e2el=ttft + sum(gaps), gaps=gaps,
            chunks=11, output_tokens=40, status="ok",
            client_queue=rng.random() * queue, input_tokens=8,
        ))
    base = {"provider": "openai", "model": "qwen2.5-7b", "stream": True, "target": "url",
            "server": "127.0.0.1:8000", "mock_workers": None, "ramp_up": 0.0}
    summary = summarize(records, duration=12.0, cpu_seconds=1.5, peak_rss_mb=80.0,
                        label={**base, **label}, percentiles=(50, 90, 99))
    return summary, records


def closed(concurrency: int, seed: int = 0, count: int = 120) -> Run:
    return made_run({"mode": "closed", "concurrency": concurrency, "request_rate": None},
                    seed=seed, scale=1 + concurrency / 256, count=count)


def check_and_save(figure: Any, path: Path) -> None:
    declutter(figure)
    assert overlapping_tick_labels(figure) == []
    for axis in figure.axes:
        if axis.get_xlabel():
            assert "(" in axis.get_xlabel() or axis.get_xlabel() in ("",), axis.get_xlabel()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_latency_cdfs_of_one_run(tmp_path: Path) -> None:
    run = closed(64)
    figure = latency_figure([run])
    title = figure._suptitle.get_text()
    for part in ("127.0.0.1:8000", "openai", "qwen2.5-7b", "closed loop, 64 streams"):
        assert part in title
    xlabels = [axis.get_xlabel() for axis in figure.axes]
    assert all(label.endswith("(ms)") for label in xlabels)
    # TTFT and ITL span several decades: log scale.
    assert figure.axes[0].get_xscale() == "log"
    check_and_save(figure, tmp_path / "latency_one_run.png")


def test_latency_scale_is_linear_within_a_decade(tmp_path: Path) -> None:
    records = [
        RequestRecord(i, 0.0, 0.1 + i * 0.001, 0.5 + i * 0.001, (0.02, 0.03), 3, 10, "ok")
        for i in range(50)
    ]
    label = {"provider": "qianfan", "model": "ERNIE-Speed-8K", "mode": "closed",
             "concurrency": 4, "mock_workers": 1}
    summary = summarize(records, duration=1.0, cpu_seconds=0.1, peak_rss_mb=10.0, label=label)
    figure = latency_figure([(summary, records)])
    assert [axis.get_xscale() for axis in figure.axes[:4]] == ["linear"] * 4
    assert "mock, 1 worker process" in figure._suptitle.get_text()
    check_and_save(figure, tmp_path / "latency_linear.png")


def test_concurrency_sweep_thins_crowded_ticks(tmp_path: Path) -> None:
    runs = [closed(2 ** power, seed=power, count=40) for power in range(13)]  # 1 .. 4096
    figure = sweep_figure([summary for summary, _ in runs], "concurrency")
    assert figure.axes[0].get_xscale() == "log"
    assert figure.axes[0].get_xlabel() == "concurrency (requests in flight)"
    assert figure.axes[1].get_ylabel() == "latency (ms)"
    names = [line.get_label() for line in figure.axes[1].get_lines()]
    for metric in ("TTFT", "ITL", "E2EL"):
        assert f"{metric} p50" in names and f"{metric} p99" in names
    assert "sweep of concurrency 1, 2, 4" in figure._suptitle.get_text()
    check_and_save(figure, tmp_path / "concurrency_sweep.png")
    latency = latency_figure(runs)
    check_and_save(latency, tmp_path / "latency_sweep.png")


def test_rate_sweep_and_open_loop_timeline(tmp_path: Path) -> None:
    runs = [
        made_run({"mode": "open", "concurrency": 32, "request_rate": rate, "burstiness": 1.0},
                 seed=int(rate), queue=0.5)
        for rate in (5.0, 10.0, 20.0, 40.0)
    ]
    sweep = sweep_figure([summary for summary, _ in runs], "request_rate")
    assert sweep.axes[0].get_xlabel() == "request rate (requests/s)"
    assert sweep.axes[0].get_xscale() == "linear"  # 5 to 40: within a decade
    check_and_save(sweep, tmp_path / "rate_sweep.png")
    timeline = timeline_figure(runs)
    assert timeline.axes[-1].get_xlabel() == "time since the run began (s)"
    labels = [line.get_label() for line in timeline.axes[0].get_lines()]
    assert labels == ["in flight", "waiting for a slot"]
    assert all(tick == int(tick) for tick in timeline.axes[0].get_yticks())
    check_and_save(timeline, tmp_path / "timeline_open.png")


def test_timeline_counts_requests_in_flight() -> None:
    records = [
        RequestRecord(0, 0.0, 0.1, 2.0, (), 1, None, "ok"),
        RequestRecord(1, 1.0, 0.1, 2.0, (), 1, None, "ok"),
    ]
    label = {"provider": "qianfan", "model": "m", "mode": "closed", "concurrency": 2}
    summary = summarize(records, duration=3.0, cpu_seconds=0.1, peak_rss_mb=1.0, label=label)
    figure = timeline_figure([(summary, records)])
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.0, 0.0, 1.0, 2.0, 3.0]
    assert list(line.get_ydata()) == [0, 1, 2, 1, 0]
    pyplot().close(figure)


def test_write_plots_names_one_file_per_figure(tmp_path: Path) -> None:
    runs = [closed(1), closed(16, seed=1), closed(256, seed=2)]
    written = write_plots(runs, tmp_path / "plots")
    assert sorted(path.name for path in written) == [
        "concurrency_sweep.png", "latency.png", "timeline.png",
    ]
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("count", [1, 3])
def test_runs_without_values_still_draw(tmp_path: Path, count: int) -> None:
    records = [RequestRecord(i, 0.0, None, 0.1, (), 0, None, "TimeoutError") for i in range(3)]
    label = {"provider": "dashscope", "model": "m", "mode": "closed", "concurrency": 2}
    summary = summarize(records, duration=1.0, cpu_seconds=0.1, peak_rss_mb=1.0, label=label)
    figure = latency_figure([(summary, records)] * count)
    check_and_save(figure, tmp_path / f"empty_{count}.png")
