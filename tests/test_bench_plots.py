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
    mean_in_flight,
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
    assert [axis.get_ylabel() for axis in figure.axes] == [
        "completed requests/s", "chunks/s", "output tokens/s", "TTFT (ms)", "ITL (ms)", "E2EL (ms)",
    ]
    for latency in figure.axes[3:]:
        assert sorted(line.get_label() for line in latency.get_lines()) == ["p50", "p99"]
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
    labels = [patch.get_label() for patch in timeline.axes[0].patches]
    assert labels == ["in flight", "waiting for a slot"]
    check_and_save(timeline, tmp_path / "timeline_open.png")


def test_timeline_averages_the_requests_in_flight_over_time_bins() -> None:
    edges, means = mean_in_flight([(0.0, 2.0), (1.0, 3.0), (1.5, 1.75)], 3.0, bins=6)
    assert edges == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert means == [1.0, 1.0, 2.0, 2.5, 1.0, 1.0]


def test_timeline_of_back_to_back_requests_is_a_level_not_a_block(tmp_path: Path) -> None:
    # One stream, each request following the last after 10 µs: the old step plot drew a dip
    # to 0 for each, which at this density filled the panel.
    records = [RequestRecord(i, i * 0.00301, 0.001, 0.003, (), 1, None, "ok") for i in range(600)]
    label = {"provider": "qianfan", "model": "m", "mode": "closed", "concurrency": 1}
    summary = summarize(records, duration=600 * 0.00301, cpu_seconds=0.1, peak_rss_mb=1.0,
                        label=label)
    figure = timeline_figure([(summary, records)])
    (levels,) = figure.axes[0].patches
    assert all(0.99 < value <= 1.0 for value in levels.get_data().values)
    assert_legends_and_notes_off_the_data(figure)
    check_and_save(figure, tmp_path / "timeline_back_to_back.png")


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


def unpaced(concurrency: int, count: int = 60) -> Run:
    """Runs as against an unpaced mock: every chunk of an answer arrives in the same read."""
    records = [
        RequestRecord(index, index * 0.004, 0.003 + index * 1e-5, 0.0032 + index * 1e-5,
                      (0.0,) * 9, 10, 41, "ok")
        for index in range(count)
    ]
    label = {"provider": "qianfan", "model": "ernie-speed-8k", "mode": "closed",
             "concurrency": concurrency, "request_rate": None, "mock_workers": 1}
    summary = summarize(records, duration=count * 0.004, cpu_seconds=0.1, peak_rss_mb=1.0,
                        label=label)
    return summary, records


def notes(axis: Any) -> list[str]:
    return [text.get_text() for text in axis.texts]


def assert_legends_and_notes_off_the_data(figure: Any) -> None:
    """No legend inside a panel; the figure's legends and every note beside a panel clear
    every panel's plotting area."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    panels = [axis.get_window_extent(renderer) for axis in figure.axes]
    assert all(axis.get_legend() is None for axis in figure.axes)
    boxes = [legend.get_window_extent(renderer) for legend in figure.legends]
    boxes += [text.get_window_extent(renderer) for axis in figure.axes for text in axis.texts
              if text.get_gid() == "side-note"]
    for box in boxes:
        assert not any(box.overlaps(panel) for panel in panels), box


def test_a_panel_without_spread_says_so_instead_of_drawing_a_line(tmp_path: Path) -> None:
    runs = [unpaced(1), unpaced(16)]
    figure = latency_figure(runs)
    itl = figure.axes[1]
    assert itl.get_title() == "ITL"
    assert itl.get_lines() == []
    (note,) = notes(itl)
    assert note.startswith("no spread: all 1,080 ITL values are 0 ms")
    assert "same network read" in note
    # The other panels have spread and keep their curves.
    assert all(axis.get_lines() for axis in (figure.axes[0], figure.axes[3]))
    check_and_save(figure, tmp_path / "latency_unpaced.png")

    sweep = sweep_figure([summary for summary, _ in runs], "concurrency")
    itl = sweep.axes[4]
    assert itl.get_ylabel() == "ITL (ms)" and itl.get_lines() == []
    assert notes(itl)[0].startswith("no spread: ITL p50 and p99 of every run are 0 ms")
    check_and_save(sweep, tmp_path / "sweep_unpaced.png")


def test_percentiles_are_written_beside_the_panels_and_legends_outside(tmp_path: Path) -> None:
    runs = [closed(1), closed(16, seed=1), closed(256, seed=2)]
    figure = latency_figure(runs)
    ttft = figure.axes[0]
    side = [text for text in ttft.texts if text.get_gid() == "side-note"]
    assert [text.get_text() for text in side[:1]] == ["p50 / p99 (ms)"]
    assert len(side) == 1 + len(runs)
    assert_legends_and_notes_off_the_data(figure)
    check_and_save(figure, tmp_path / "latency_three_runs.png")
    for drawn in (sweep_figure([s for s, _ in runs], "concurrency"), timeline_figure(runs)):
        assert_legends_and_notes_off_the_data(drawn)
        pyplot().close(drawn)


def test_sweep_series_never_share_a_panel(tmp_path: Path) -> None:
    # Chunks/s is requests/s times a constant here: on twin axes the two lines coincided.
    runs = [unpaced(1), unpaced(16), unpaced(256)]
    figure = sweep_figure([summary for summary, _ in runs], "concurrency")
    assert len(figure.axes) == 6  # no twin axes
    requests, chunks, tokens, ttft, _, e2el = figure.axes
    for axis in (requests, chunks, tokens):
        assert len(axis.get_lines()) == 1
    # TTFT and E2EL are nearly equal against an unpaced mock: each has its own panel.
    assert [line.get_label() for line in ttft.get_lines()] == ["p99", "p50"]
    assert [line.get_label() for line in e2el.get_lines()] == ["p99", "p50"]
    check_and_save(figure, tmp_path / "sweep_separate_panels.png")
