"""PNG plots of benchmark runs, drawn with matplotlib (the `bench` extra, imported only here).

Three kinds, each titled with the target, provider, model and load:
- `latency.png`: cumulative distributions of TTFT, ITL (per chunk), TPOT and E2EL, one curve
  per run, each run's p50 and p99 marked on its curve and, for a few runs, written beside
  the panel;
- `<setting>_sweep.png` for each swept setting: each throughput in a panel of its own, and the
  p50 and p99 of TTFT, ITL and E2EL, one panel per metric, against it;
- `timeline.png`: requests in flight (and, in an open loop, waiting for a slot) over each run,
  averaged over short time bins.

Every axis says its unit. A log scale is used only for data spanning more than a decade, and
tick labels that would overlap are thinned until none do. No series shares a panel with one
it could hide; legends and notes sit outside the plotting areas; a panel whose values are all
equal (no spread: ITL against an unpaced mock) says so instead of drawing a line.
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
# The timeline averages the requests in flight over this many equal time bins per run.
TIMELINE_BINS = 250
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
    marked on each run's curve and, for a few runs, written beside the panel. A panel whose
    values are all equal says so instead of drawing a vertical line."""
    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    summaries = [summary for summary, _ in runs]
    colors = _colors(plt, len(runs))
    for axis, (name, axis_label, distribution_of, values_of) in zip(
        axes.flat, _LATENCIES, strict=True
    ):
        curves = [
            (summary, color, sorted(
                value * 1000.0 for record in records if record.ok for value in values_of(record)
            ))
            for (summary, records), color in zip(runs, colors, strict=False)
        ]
        curves = [curve for curve in curves if curve[2]]
        every = [value for _, _, values in curves for value in values]
        axis.set_title(name, fontsize="medium")
        axis.set_xlabel(axis_label)
        axis.set_ylabel("share of values at or below (%)")
        axis.set_ylim(0, 102)
        axis.grid(True, which="major", alpha=0.3)
        if not every:
            _say_in(axis, "no values")
            continue
        if min(every) == max(every):
            _say_in(axis, no_spread_note(name, every[0], f"all {len(every):,} {name} values"))
            axis.set_xticks([])
            continue
        notes = []
        for summary, color, values in curves:
            shares = [100.0 * (rank + 1) / len(values) for rank in range(len(values))]
            axis.step(values, shares, where="post", color=color, label=run_name(summary, summaries))
            marked = []
            for percent, marker in ((50, "o"), (99, "D")):
                value = _at(distribution_of(summary), values, percent)
                marked.append(_plain_ms(value))
                axis.plot([value], [percent], marker=marker, color=color, markersize=6,
                          markeredgecolor="black", linestyle="none")
            notes.append((" / ".join(marked), color))
        if len(runs) <= ANNOTATED_RUNS:
            _note_beside(axis, "p50 / p99 (ms)", notes)
        _scale(axis, "x", every)
    handles, labels = _first_legend_entries(axes.flat)
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


def no_spread_note(name: str, value: float, what: str) -> str:
    """What a panel whose values are all equal says instead of a line: `what` are the values
    ("all 900 ITL values")."""
    note = f"no spread: {what} are {_plain_ms(value)} ms"
    if name == "ITL" and value == 0:
        note += ("\nevery chunk of an answer arrived in the same network read\n"
                 "(an unpaced mock writes each answer at once)")
    return note


def _say_in(axis: Any, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes,
              fontsize="small", color="dimgray", gid="panel-note")


def _note_beside(axis: Any, heading: str, lines: Sequence[tuple[str, Any]]) -> None:
    """Lines of text in a column right of the axes, off the data: a heading, then one line
    per run in its colour."""
    axis.text(1.02, 1.0, heading, transform=axis.transAxes, ha="left", va="top",
              fontsize="small", gid="side-note")
    for index, (text, color) in enumerate(lines):
        axis.text(1.02, 0.92 - 0.07 * index, text, transform=axis.transAxes, ha="left",
                  va="top", fontsize="small", color=color, gid="side-note")


def _first_legend_entries(axes: Any) -> tuple[list[Any], list[str]]:
    """The legend entries of the first panel that drew curves."""
    for axis in axes:
        handles, labels = axis.get_legend_handles_labels()
        if handles:
            return list(handles), list(labels)
    return [], []


def _at(distribution: Distribution, values: Sequence[float], percent: float) -> float:
    """The percentile from the summary when it has it, else from the plotted values."""
    value = distribution.at(percent)
    if math.isnan(value):
        rank = min(len(values) - 1, max(0, math.ceil(percent / 100.0 * len(values)) - 1))
        return values[rank]
    return value


# What a sweep plots in its top row: (title, axis label, value of a summary, None when unknown).
_THROUGHPUTS: tuple[tuple[str, str, Callable[[RunSummary], float | None]], ...] = (
    ("Requests", "completed requests/s", lambda s: s.request_throughput),
    ("Chunks", "chunks/s", lambda s: s.chunk_throughput),
    ("Output tokens", "output tokens/s",
     lambda s: s.output_throughput if s.requests_with_usage else None),
)


def sweep_figure(summaries: Sequence[RunSummary], key: str) -> Any:
    """Against `key`: each throughput in a panel of its own (top row), and the p50 and p99 of
    TTFT, ITL and E2EL, one panel per metric (bottom row), so that no series hides another."""
    plt = pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(14, 8), constrained_layout=True)
    members = sorted(summaries, key=lambda summary: summary.label[key])
    xs = [float(summary.label[key]) for summary in members]
    x_label = dict(SWEEPABLE)[key]
    for axis, (title, unit, value_of) in zip(axes[0], _THROUGHPUTS, strict=True):
        maybe = [value_of(summary) for summary in members]
        axis.set_title(title, fontsize="medium")
        axis.set_ylabel(unit)
        values = [value for value in maybe if value is not None]
        if len(values) < len(maybe):
            _say_in(axis, "unknown: no usage reported")
            continue
        axis.plot(xs, values, "o-", color="tab:blue")
        axis.set_ylim(bottom=0, top=max(values) * 1.1 or 1.0)
    swept_latencies = [latency for latency in _LATENCIES if latency[0] != "TPOT"]
    for axis, (name, _, distribution_of, _) in zip(axes[1], swept_latencies, strict=True):
        axis.set_title(f"{name} latency", fontsize="medium")
        axis.set_ylabel(f"{name} (ms)")
        lines = {
            percent: [distribution_of(summary).at(percent) for summary in members]
            for percent in (50, 99)
        }
        every = [y for ys in lines.values() for y in ys if not math.isnan(y)]
        if not every:
            _say_in(axis, "no values")
            continue
        if min(every) == max(every):
            _say_in(axis, no_spread_note(name, every[0], f"{name} p50 and p99 of every run"))
            axis.set_yticks([])
            continue
        # p99 drawn first as large hollow diamonds, p50 over it as small dots: both stay
        # visible where they are equal.
        axis.plot(xs, lines[99], "D-", color="tab:red", markersize=9, markerfacecolor="none",
                  label="p99")
        axis.plot(xs, lines[50], "o--", color="tab:blue", markersize=5, label="p50")
        _scale(axis, "y", every)
        if axis.get_yscale() == "linear":
            axis.set_ylim(bottom=0, top=max(every) * 1.1)
    for axis in axes.flat:
        axis.set_xlabel(x_label)
        _scale(axis, "x", xs)
        axis.set_xticks(xs, [_value(summary.label[key]) for summary in members])
        axis.minorticks_off()
        axis.grid(True, which="major", alpha=0.3)
    handles, labels = _first_legend_entries(axes[1])
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=len(labels),
                      fontsize="small")
    figure.suptitle(_wrap(f"Against {x_label}: {figure_title(summaries)}"), fontsize="medium")
    return figure


def timeline_figure(runs: Runs) -> Any:
    """Requests in flight over each run (one row per run), averaged over short time bins so
    that a quick succession of requests reads as a level, not as a solid block of dips; open
    loops also show the requests due but waiting for a free slot."""
    plt = pyplot()
    rows = max(1, len(runs))
    figure, axes = plt.subplots(rows, 1, figsize=(12, 2.4 * rows + 1.2), squeeze=False,
                                constrained_layout=True)
    summaries = [summary for summary, _ in runs]
    for axis, (summary, records) in zip(axes[:, 0], runs, strict=False):
        sending = [(record.start, record.start + record.e2el) for record in records]
        end = max([summary.duration, *(finish for _, finish in sending)])
        edges, levels = mean_in_flight(sending, end)
        axis.stairs(levels, edges, color="tab:blue", label="in flight", baseline=None)
        highest = max(levels)
        waiting = [(r.start - r.client_queue, r.start) for r in records if r.client_queue > 0]
        if waiting:
            edges, levels = mean_in_flight(waiting, end)
            axis.stairs(levels, edges, color="tab:red", label="waiting for a slot", baseline=None)
            highest = max([highest, *levels])
        axis.set_ylabel("in flight (bin mean)")
        axis.set_ylim(0, max(1.0, highest) * 1.15)
        axis.set_xlim(0, end)
        axis.set_title(run_name(summary, summaries), fontsize="small", loc="left")
        axis.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("time since the run began (s)")
    handles, labels = _first_legend_entries(axes[:, 0])
    figure.legend(handles, labels, loc="outside lower center", ncols=max(1, len(labels)),
                  fontsize="small")
    figure.suptitle(_wrap(f"Requests over time: {figure_title(summaries)}"), fontsize="medium")
    return figure


def mean_in_flight(
    intervals: Sequence[tuple[float, float]], end: float, bins: int = TIMELINE_BINS
) -> tuple[list[float], list[float]]:
    """How many of `intervals` were open on average (time-weighted) in each of `bins` equal
    bins from 0 to `end`: the bin edges and the means."""
    width = end / bins if end > 0 else 1.0
    edges = [width * index for index in range(bins + 1)]
    open_time = [0.0] * bins
    for start, finish in intervals:
        first, last = int(start / width), min(bins - 1, int(finish / width))
        for index in range(max(0, first), last + 1):
            overlap = min(finish, edges[index + 1]) - max(start, edges[index])
            if overlap > 0:
                open_time[index] += overlap
    return edges, [total / width for total in open_time]


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
