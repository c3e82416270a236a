"""PNG plots of benchmark runs, drawn with matplotlib (the `bench` extra, imported only here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmstreams.bench.metrics import RequestRecord, RunSummary
from llmstreams.bench.report import run_title

LATENCY_PLOT = "latency.png"
CONCURRENCY_PLOT = "concurrency_sweep.png"
WORKERS_PLOT = "mock_workers_sweep.png"

# (label, function of a request's record giving its values in seconds)
_LATENCIES: tuple[tuple[str, Callable[[RequestRecord], Sequence[float]]], ...] = (
    ("time to first chunk", lambda record: () if record.ttft is None else (record.ttft,)),
    ("inter-chunk gap", lambda record: record.gaps),
    ("end-to-end", lambda record: (record.e2el,)),
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


def write_plots(
    runs: Sequence[tuple[RunSummary, Sequence[RequestRecord]]], directory: Path
) -> list[Path]:
    """The latency distributions of every run; for a sweep, throughput and p99 latency against
    concurrency and/or mock workers. Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [plot_latency(runs, directory / LATENCY_PLOT)]
    summaries = [summary for summary, _ in runs]
    for key, other, name in (
        ("concurrency", "mock_workers", CONCURRENCY_PLOT),
        ("mock_workers", "concurrency", WORKERS_PLOT),
    ):
        if len({summary.label.get(key) for summary in summaries}) > 1:
            written.append(plot_sweep(summaries, key, other, directory / name))
    return written


def plot_latency(
    runs: Sequence[tuple[RunSummary, Sequence[RequestRecord]]], path: Path
) -> Path:
    """Cumulative distributions (log time axis) of TTFT, inter-chunk gaps and end-to-end latency."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(_LATENCIES), figsize=(15, 4.5), constrained_layout=True)
    for axis, (name, values_of) in zip(axes, _LATENCIES, strict=True):
        for summary, records in runs:
            values = sorted(
                value * 1000.0 for record in records if record.ok for value in values_of(record)
            )
            positive = [value for value in values if value > 0]
            if not positive:
                continue
            share = [(rank + 1) / len(positive) for rank in range(len(positive))]
            axis.step(positive, share, where="post", label=_short_label(summary))
        axis.set_xscale("log")
        axis.set_xlabel(f"{name} (ms)")
        axis.set_ylabel("share of requests" if name != "inter-chunk gap" else "share of gaps")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.suptitle(
        "Latency distributions" if len(runs) != 1 else f"Latency: {run_title(runs[0][0])}",
        fontsize="medium",
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_sweep(summaries: Sequence[RunSummary], key: str, group_key: str, path: Path) -> Path:
    """Chunks/s and p99 latencies against `key`, one line per value of `group_key`."""
    plt = pyplot()
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    cpu = throughput.twinx()
    groups: dict[Any, list[RunSummary]] = {}
    for summary in summaries:
        groups.setdefault(summary.label.get(group_key), []).append(summary)
    for group, members in groups.items():
        members = sorted(members, key=lambda summary: summary.label[key])
        xs = [summary.label[key] for summary in members]
        suffix = "" if len(groups) == 1 else f" ({group_key.replace('_', ' ')} {group})"
        (line,) = throughput.plot(
            xs, [s.chunk_throughput for s in members], "o-", label=f"chunks/s{suffix}"
        )
        cpu.plot(
            xs, [s.cpu_utilization for s in members], "s--", color=line.get_color(), alpha=0.5,
            label=f"client CPU{suffix}",
        )
        for name, distribution in (("TTFT", "ttft"), ("inter-chunk", "itl"), ("end-to-end", "e2el")):
            latency.plot(
                xs, [getattr(s, distribution).at(99) for s in members], "o-",
                label=f"p99 {name}{suffix}",
            )
    x_label = key.replace("_", " ")
    ticks = sorted({summary.label[key] for summary in summaries})
    for axis in (throughput, latency):
        if key == "concurrency":
            axis.set_xscale("log", base=2)
            axis.minorticks_off()
        axis.set_xticks(ticks, [str(tick) for tick in ticks])
    throughput.set_xlabel(x_label)
    throughput.set_ylabel("chunks/s")
    throughput.set_ylim(bottom=0)
    cpu.set_ylabel("client CPU (share of one core)")
    cpu.set_ylim(0, 1.1)
    cpu.legend(fontsize="small", loc="lower right")
    latency.set_xlabel(x_label)
    latency.set_ylabel("p99 latency (ms)")
    latency.set_yscale("log")
    for axis in (throughput, latency):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(f"Throughput and p99 latency against {x_label}", fontsize="medium")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short_label(summary: RunSummary) -> str:
    label = summary.label
    parts = []
    if label.get("mode") == "open":
        parts.append(f"{label['request_rate']:g} req/s")
    else:
        parts.append(f"conc {label.get('concurrency')}")
    workers = label.get("mock_workers")
    if workers == 0:
        parts.append("mock in-process")
    elif workers is not None:
        parts.append(f"{workers} mock worker{'s' if workers != 1 else ''}")
    return ", ".join(parts)
