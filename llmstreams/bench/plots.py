"""PNG plots of benchmark runs, drawn with matplotlib (the `bench` extra, imported only here).

Three kinds, each titled with the target, provider, model and load:
- `latency.png`: cumulative distributions of TTFT, ITL (per chunk), TPOT and E2EL, one curve
  per run, with each run's p50 and p99 marked on its curve;
- `<setting>_sweep.png` for each swept setting: throughput, and p50 next to p99 latencies,
  against it;
- `timeline.png`: requests in flight (and, in an open loop, waiting for a slot) over each run.

Every axis says its unit. A log scale is used only for data spanning more than a decade, and
tick labels that would overlap are thinned until none do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmstreams.bench.metrics import Distribution, RequestRecord, RunSummary
from llmstreams.bench.report import load_description, run_title, server_description

LATENCY_PLOT = "latency.png"
TIMELINE_PLOT = "timeline.png"
# Up to this many runs, each latency panel also prints every run's p50 and p99.
ANNOTATED_RUNS = 3
# Settings a sweep can vary, with their axis labels.
SWEEPABLE: tuple[tuple[str, str], ...] = (
    ("concurrency", "concurrency (requests in flight)"),
    ("request_rate", "request rate (requests/s)"),
    ("burstiness", "burstiness (gamma shape)"),
    ("mock_workers", "mock worker processes"),
)

Runs = Sequence[tuple[RunSummary, Sequence[RequestRecord]]]

# (title, axis label, distribution of a summary, values of a record in seconds)
_LATENCIES: tuple[
    tuple[str, str, Callable[[RunSummary], Distribution], Callable[[RequestRecord], Sequence[float]]],
    ...,
] = (
    ("TTFT", "time to first chunk (ms)", lambda s: s.ttft,
     lambda r: () if r.ttft is None else (r.ttft,)),
    ("ITL", "gap between chunks (ms)", lambda s: s.itl, lambda r: r.gaps),
    ("TPOT", "time per output token (ms)", lambda s: s.tpot,
     lambda r: () if r.tpot is None else (r.tpot,)),
    ("E2EL", "end-to-end latency (ms)", lambda s: s.e2el, lambda r: (r.e2el,)),
)


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(
            "plots need matplotlib: pip install 'llmstreams[bench]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(runs: Runs, directory: Path) -> list[Path]:
    """Every plot of `runs` into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    figures = [(LATENCY_PLOT, latency_figure(runs)), (TIMELINE_PLOT, timeline_figure(runs))]
    summaries = [summary for summary, _ in runs]
    for key in swept_settings(summaries):
        figures.append((f"{key}_sweep.png", sweep_figure(summaries, key)))
    written = []
    for name, figure in figures:
        written.append(save(figure, directory / name))
    return written


def save(figure: Any, path: Path) -> Path:
    """Write `figure` as a PNG (its tick labels thinned first) and free it."""
    declutter(figure)
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    return path


def swept_settings(summaries: Sequence[RunSummary]) -> list[str]:
    """The label settings that take more than one value over the runs."""
    return [
        key for key, _ in SWEEPABLE
        if len({summary.label.get(key) for summary in summaries}) > 1
        and all(summary.label.get(key) is not None for summary in summaries)
    ]


def figure_title(summaries: Sequence[RunSummary]) -> str:
    """What the runs measured: the one run's title, or what they share and what they sweep."""
    if len(summaries) == 1:
        return run_title(summaries[0])
    label = summaries[0].label
    model = label.get("endpoint") or label.get("model")
    swept = swept_settings(summaries)
    if swept:
        load = "; ".join(
            f"{key.replace('_', ' ')} {', '.join(_value(s.label[key]) for s in summaries)}"
            for key in swept
        )
        load = f"{_shared_load(label, swept)}; sweep of {load}"
    else:
        load = f"{len(summaries)} runs"
    return f"{server_description(label)}; {label.get('provider')} {model}; {load}"


def _shared_load(label: dict[str, Any], swept: Sequence[str]) -> str:
    """The load settings the runs of a sweep share."""
    mode = label.get("mode")
    parts = [{"closed": "closed loop", "open": "open loop", "trace": "trace replay"}.get(
        str(mode), "runs"
    )]
    concurrency = label.get("concurrency")
    if "concurrency" not in swept and concurrency is not None:
        parts.append(f"{concurrency} streams" if mode == "closed" else f"at most {concurrency} in flight")
    if mode == "open" and "burstiness" not in swept:
        burstiness = label.get("burstiness") or 1.0
        parts.append("Poisson" if burstiness == 1.0 else f"burstiness {burstiness:g}")
    if label.get("ramp_up"):
        parts.append(f"{label['ramp_up']:g} s ramp-up")
    return ", ".join(parts)


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_name(summary: RunSummary, others: Sequence[RunSummary]) -> str:
    """A short legend entry: the swept settings' values, else the load."""
    swept = swept_settings(others)
    if not swept:
        return load_description(summary.label)
    return ", ".join(f"{key.replace('_', ' ')} {_value(summary.label[key])}" for key in swept)


def latency_figure(runs: Runs) -> Any:
    """Cumulative distributions of TTFT, ITL, TPOT and E2EL, p50 (circle) and p99 (diamond)
    marked on each run's curve."""
    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    summaries = [summary for summary, _ in runs]
    for axis, (name, axis_label, distribution_of, values_of) in zip(
        axes.flat, _LATENCIES, strict=True
    ):
        every: list[float] = []
        notes: list[list[str]] = []
        for (summary, records), color in zip(runs, _colors(plt, len(runs)), strict=False):
            values = sorted(
                value * 1000.0 for record in records if record.ok for value in values_of(record)
            )
            if not values:
                continue
            every += values
            shares = [100.0 * (rank + 1) / len(values) for rank in range(len(values))]
            axis.step(values, shares, where="post", color=color, label=run_name(summary, summaries))
            distribution = distribution_of(summary)
            marked = []
            for percent, marker in ((50, "o"), (99, "D")):
                value = _at(distribution, values, percent)
                marked.append(f"p{percent} {_plain_ms(value)}")
                axis.plot([value], [percent], marker=marker, color=color, markersize=6,
                          markeredgecolor="black", linestyle="none")
            if len(runs) <= ANNOTATED_RUNS:
                axis.text(0.98, 0.04 + 0.08 * len(notes), "  ".join(marked) + " ms", color=color,
                          ha="right", va="bottom", transform=axis.transAxes, fontsize="small")
                notes.append(marked)
        axis.set_title(name, fontsize="medium")
        axis.set_xlabel(axis_label)
        axis.set_ylabel("share of values at or below (%)")
        axis.set_ylim(0, 102)
        if not every:
            axis.text(0.5, 0.5, "no values", ha="center", va="center", transform=axis.transAxes)
        else:
            _scale(axis, "x", every)
        axis.grid(True, which="major", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [
        Line2D([], [], marker="o", color="grey", markeredgecolor="black", linestyle="none"),
        Line2D([], [], marker="D", color="grey", markeredgecolor="black", linestyle="none"),
    ]
    labels += ["p50", "p99"]
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6),
                  fontsize="small")
    figure.suptitle(_wrap(f"Latency: {figure_title(summaries)}"), fontsize="medium")
    return figure


def _at(distribution: Distribution, values: Sequence[float], percent: float) -> float:
    """The percentile from the summary when it has it, else from the plotted values."""
    value = distribution.at(percent)
    if math.isnan(value):
        rank = min(len(values) - 1, max(0, math.ceil(percent / 100.0 * len(values)) - 1))
        return values[rank]
    return value


def sweep_figure(summaries: Sequence[RunSummary], key: str) -> Any:
    """Throughput (requests/s and chunks/s) and the p50 / p99 latencies against `key`."""
    plt = pyplot()
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    members = sorted(summaries, key=lambda summary: summary.label[key])
    xs = [float(summary.label[key]) for summary in members]
    x_label = dict(SWEEPABLE)[key]
    chunks = throughput.plot(xs, [s.chunk_throughput for s in members], "o-", color="tab:blue",
                             label="chunks/s")
    requests = throughput.twinx()
    request_line = requests.plot(xs, [s.request_throughput for s in members], "s--",
                                 color="tab:orange", label="requests/s")
    throughput.set_ylabel("chunks/s")
    requests.set_ylabel("requests/s")
    throughput.set_ylim(bottom=0)
    requests.set_ylim(bottom=0)
    throughput.legend(chunks + request_line, ["chunks/s", "requests/s"], fontsize="small",
                      loc="lower right")
    throughput.set_title("Throughput", fontsize="medium")
    every: list[float] = []
    swept_latencies = [latency for latency in _LATENCIES if latency[0] != "TPOT"]
    for (name, _, distribution_of, _), color in zip(
        swept_latencies, ("tab:blue", "tab:green", "tab:red"), strict=True
    ):
        for percent, style in ((50, "o--"), (99, "D-")):
            ys = [distribution_of(s).at(percent) for s in members]
            every += [y for y in ys if not math.isnan(y)]
            latency.plot(xs, ys, style, color=color, label=f"{name} p{percent}")
    latency.set_ylabel("latency (ms)")
    latency.set_title("Latency, p50 (dashed) and p99 (solid)", fontsize="medium")
    if every:
        _scale(latency, "y", every)
    latency.legend(fontsize="small", ncols=3)
    for axis in (throughput, latency):
        axis.set_xlabel(x_label)
        _scale(axis, "x", xs)
        axis.set_xticks(xs, [_value(summary.label[key]) for summary in members])
        axis.minorticks_off()
        axis.grid(True, which="major", alpha=0.3)
    figure.suptitle(_wrap(f"Against {x_label}: {figure_title(summaries)}"), fontsize="medium")
    return figure


def timeline_figure(runs: Runs) -> Any:
    """Requests in flight over each run (one row per run); open loops also show the requests
    due but waiting for a free slot."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = max(1, len(runs))
    figure, axes = plt.subplots(rows, 1, figsize=(12, 2.4 * rows + 1.0), squeeze=False,
                                constrained_layout=True)
    summaries = [summary for summary, _ in runs]
    for axis, (summary, records) in zip(axes[:, 0], runs, strict=False):
        sending = [(record.start, record.start + record.e2el) for record in records]
        times, counts = _in_flight(sending)
        axis.step(times, counts, where="post", color="tab:blue", label="in flight")
        waiting = [(r.start - r.client_queue, r.start) for r in records if r.client_queue > 0]
        if waiting:
            times, counts = _in_flight(waiting)
            axis.step(times, counts, where="post", color="tab:red", label="waiting for a slot")
        axis.set_ylabel("requests")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(bottom=0)
        axis.set_xlim(left=0)
        axis.set_title(run_name(summary, summaries), fontsize="small", loc="left")
        axis.legend(fontsize="small", loc="upper right")
        axis.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("time since the run began (s)")
    figure.suptitle(_wrap(f"Requests over time: {figure_title(summaries)}"), fontsize="medium")
    return figure


def _in_flight(intervals: Sequence[tuple[float, float]]) -> tuple[list[float], list[int]]:
    """A step function of how many intervals are open at each change."""
    changes = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    times, counts, current = [0.0], [0], 0
    for when, change in changes:
        current += change
        times.append(when)
        counts.append(current)
    return times, counts


def _scale(axis: Any, which: str, values: Sequence[float]) -> None:
    """Log scale for positive data spanning more than a decade, with ticks at 1, 2 and 5 times
    each power of ten labelled as plain numbers; else linear."""
    positive = [value for value in values if value > 0]
    set_scale = axis.set_xscale if which == "x" else axis.set_yscale
    if not (positive and len(positive) == len(values) and max(positive) > 10 * min(positive)):
        set_scale("linear")
        return
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    set_scale("log")
    ruler = axis.xaxis if which == "x" else axis.yaxis
    ruler.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ruler.set_major_formatter(FuncFormatter(_plain))
    ruler.set_minor_locator(NullLocator())
    ruler.set_minor_formatter(NullFormatter())


def _plain_ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.3g}"


def _plain(value: float, _position: Any = None) -> str:
    """A tick value as people write it: 0.5, 20, 1,000, 50,000."""
    if value >= 1:
        return f"{value:,.0f}"
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _colors(plt: Any, count: int) -> list[Any]:
    """Distinct colours: the default cycle for a few runs, a sequential map for more (a sweep
    reads as an ordered progression)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if count <= len(cycle):
        return list(cycle[:count])
    return [plt.get_cmap("viridis")(index / max(1, count - 1)) for index in range(count)]


def _wrap(title: str, width: int = 110) -> str:
    """A long title on as many lines as it needs, broken after "; "."""
    lines, current = [], ""
    for part in title.split("; "):
        candidate = f"{current}; {part}" if current else part
        if current and len(candidate) > width:
            lines.append(current + ";")
            current = part
        else:
            current = candidate
    return "\n".join([*lines, current])


def overlapping_tick_labels(figure: Any) -> list[tuple[str, str]]:
    """Pairs of visible tick labels of one axis whose drawn boxes overlap."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return [pair for ruler in _rulers(figure) for pair in _overlaps(ruler, renderer)]


def declutter(figure: Any) -> None:
    """Thin the tick labels of every crowded axis (every other one, repeatedly) until none
    overlap; minor tick labels go first."""
    from matplotlib.ticker import NullFormatter

    for _ in range(8):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        crowded = [ruler for ruler in _rulers(figure) if _overlaps(ruler, renderer)]
        if not crowded:
            return
        for ruler in crowded:
            ruler.set_minor_formatter(NullFormatter())
            ticks = list(ruler.get_ticklocs())
            texts = [label.get_text() for label in ruler.get_ticklabels()]
            low, high = sorted(ruler.get_view_interval())
            shown = [(tick, text) for tick, text in zip(ticks, texts, strict=True)
                     if low <= tick <= high]
            if len(shown) > 2:
                kept = shown[::2]
                ruler.set_ticks([tick for tick, _ in kept], [text for _, text in kept])


def _rulers(figure: Any) -> list[Any]:
    return [ruler for axis in figure.axes for ruler in (axis.xaxis, axis.yaxis)]


def _overlaps(ruler: Any, renderer: Any) -> list[tuple[str, str]]:
    labels = [
        label for label in ruler.get_ticklabels(minor=False) + ruler.get_ticklabels(minor=True)
        if label.get_visible() and label.get_text()
    ]
    boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in labels]
    return [
        (first, second)
        for (first, a), (second, b) in itertools.combinations(boxes, 2)
        if a.overlaps(b)
    ]
