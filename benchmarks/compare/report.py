"""What the comparison's numbers say: ratios to llmstreams, the targets met, the Markdown
report, the plots and the py-spy profile tables."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.compare.adapters import CLIENTS, DASHSCOPE_MODEL, FLOOR, QIANFAN_MODEL, REFERENCE


def ratios(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each client against llmstreams for the same vendor.

    cpu_per_chunk: the client's CPU per chunk / llmstreams' (the floor's is below 1).
    llmstreams_chunk_throughput_over_client: llmstreams' chunks/s / the client's (above 1:
    llmstreams is faster).
    llmstreams_chunks_per_cpu_second_over_client: the same for the chunks each client handles
    per second of its own CPU, i.e. its chunks/s once it has a whole core to itself.
    p50/p99 e2el, p99 itl: the client's latency / llmstreams'.
    """
    table: dict[str, dict[str, float | None]] = {}
    for name, figures in results.items():
        reference = results.get(REFERENCE[CLIENTS[name]])
        if reference is None:
            continue
        table[name] = {
            "cpu_per_chunk": _ratio(figures["cpu_s_per_1k_chunks"], reference["cpu_s_per_1k_chunks"]),
            "llmstreams_chunk_throughput_over_client": _ratio(
                reference["chunk_throughput"], figures["chunk_throughput"]
            ),
            "llmstreams_chunks_per_cpu_second_over_client": _ratio(
                reference["chunks_per_cpu_second"], figures["chunks_per_cpu_second"]
            ),
            "p50_e2el": _ratio(figures["median_e2el_ms"], reference["median_e2el_ms"]),
            "p99_e2el": _ratio(figures["p99_e2el_ms"], reference["p99_e2el_ms"]),
            "p99_itl": _ratio(figures["p99_itl_ms"], reference["p99_itl_ms"]),
        }
    return table


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def targets(scenarios: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The benchmark targets from the brief in every scenario measured, each with the measured
    value and a verdict; rows whose `met` is None give scale (what the floor itself reaches)."""
    checks: list[dict[str, Any]] = []
    for scenario, results in scenarios.items():
        for vendor in ("qianfan", "dashscope"):
            ours, floor = results.get(REFERENCE[vendor]), results.get(FLOOR[vendor])
            if ours and floor:
                value = _ratio(ours["cpu_s_per_1k_chunks"], floor["cpu_s_per_1k_chunks"])
                checks.append({
                    "scenario": scenario,
                    "target": f"{REFERENCE[vendor]} CPU per chunk <= 1.3x {FLOOR[vendor]}",
                    "value": value, "met": value is not None and value <= 1.3,
                })
        if results is scenarios.get("paced"):
            continue  # the paced scenario offers less than any client can take: no ceiling
        for sdk, vendor, wanted in (("qianfan-sdk", "qianfan", 3.0), ("dashscope-sdk", "dashscope", 1.5)):
            ours, theirs, floor = (results.get(name) for name in (REFERENCE[vendor], sdk, FLOOR[vendor]))
            if not (ours and theirs):
                continue
            for field, what in (("chunk_throughput", "chunks/s"), ("chunks_per_cpu_second", "chunks per CPU s")):
                value = _ratio(ours[field], theirs[field])
                checks.append({
                    "scenario": scenario,
                    "target": f"{REFERENCE[vendor]} {what} >= {wanted}x {sdk}",
                    "value": value, "met": value is not None and value >= wanted,
                })
            if floor:
                checks.append({
                    "scenario": scenario,
                    "target": f"(scale: {FLOOR[vendor]} chunks/s / {sdk})",
                    "value": _ratio(floor["chunk_throughput"], theirs["chunk_throughput"]),
                    "met": None,
                })
    return checks



# Stacks outside the measured work: imports at start-up, statistics at the end.
_NOT_MEASURED = ("_find_and_load", "summarize (", "Distribution.of_seconds")


def profile_table(raw: str, run: Mapping[str, Any], *, title: str, limit: int = 35) -> str:
    """py-spy's raw stacks as self time per function and per file (measured work only)."""
    by_function: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or any(marker in stack for marker in _NOT_MEASURED):
            continue
        count = int(count_text)
        total += count
        where, function = _frame(stack.rsplit(";", 1)[-1])
        by_function[f"{where}:{function}"] += count
        by_file[where] += count
    us_per_chunk = (run["cpu_s_per_1k_chunks"] or 0.0) * 1000.0
    lines = [
        f"# Where the CPU goes: {title}",
        f"# {run['cpu_s_per_1k_chunks']} CPU s per 1,000 chunks = {us_per_chunk:.1f} us per chunk; "
        f"{total} samples at 400 Hz (py-spy, self time; start-up and statistics left out)",
        "",
        "## by file",
    ]
    for where, count in by_file.most_common(limit):
        lines.append(f"{100 * count / total:5.1f}%  {us_per_chunk * count / total:6.2f} us/chunk  {where}")
    lines += ["", "## by function"]
    for where, count in by_function.most_common(limit):
        lines.append(f"{100 * count / total:5.1f}%  {us_per_chunk * count / total:6.2f} us/chunk  {where}")
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> tuple[str, str]:
    """(file, function) of a py-spy frame `function (path:line)`, paths shortened."""
    function, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path or "?", function


# --------------------------------------------------------------------------- outputs


def markdown(report: Mapping[str, Any]) -> str:
    env = report["environment"]
    config = report["config"]
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items())
    lines = [
        "# llmstreams against other clients",
        "",
        f"Recorded {report['date']} by `python -m benchmarks.compare`.",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, {env['platform']}; "
        f"Python {env['python']}; {packages}.",
        f"Workload: {QIANFAN_MODEL} chat (Qianfan) / {DASHSCOPE_MODEL} incremental (DashScope); "
        f"closed loop at concurrency "
        f"{config['concurrency']}, {config['duration']:g} s per run after {config['warmup']} "
        f"warm-up requests; median of {config['repeats']} runs; mock in "
        f"{config['mock_workers']} worker process(es); each client in its own process.",
        "",
    ]
    for scenario, results in report["scenarios"].items():
        lines += [
            f"## {scenario}: {describe_scenario(config['scenarios'][scenario])}",
            "",
            "| client | chunks/s | req/s | CPU s / 1k chunks | chunks per CPU s | CPU vs llmstreams "
            "| llmstreams chunks/s ÷ client | TTFT p50 ms | ITL p99 ms | E2E p50 ms | E2E p99 ms "
            "| client CPU | failed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        scenario_ratios = report["ratios"][scenario]
        for name, figures in results.items():
            ratio = scenario_ratios.get(name, {})
            lines.append(
                f"| {name} | {_fmt(figures['chunk_throughput'], 0)} | "
                f"{_fmt(figures['request_throughput'], 1)} | "
                f"{_fmt(figures['cpu_s_per_1k_chunks'], 4)} | "
                f"{_fmt(figures['chunks_per_cpu_second'], 0)} | {_fmt(ratio.get('cpu_per_chunk'), 2)}x | "
                f"{_fmt(ratio.get('llmstreams_chunk_throughput_over_client'), 2)}x | "
                f"{_fmt(figures['median_ttft_ms'], 1)} | {_fmt(figures['p99_itl_ms'], 1)} | "
                f"{_fmt(figures['median_e2el_ms'], 1)} | {_fmt(figures['p99_e2el_ms'], 1)} | "
                f"{_fmt(figures['client_cpu_utilization'], 2)} | {figures['failed']} |"
            )
        lines.append("")
    lines += ["## Targets", "", "| scenario | target | measured | met |", "|---|---|---:|---|"]
    for check in report["targets"]:
        verdict = "" if check["met"] is None else "yes" if check["met"] else "NO"
        lines.append(
            f"| {check['scenario']} | {check['target']} | {_fmt(check['value'], 2)}x | {verdict} |"
        )
    lines.append("")
    if report["mock_workers_sweep"]:
        lines += [
            "## Chunks/s against mock worker processes (saturated, concurrency "
            f"{config['concurrency']})",
            "",
            "| client | mock workers | chunks/s | client CPU (share of a core) |",
            "|---|---:|---:|---:|",
        ]
        for name, runs in report["mock_workers_sweep"].items():
            for run in runs:
                lines.append(
                    f"| {name} | {run['mock_workers']} | {_fmt(run['chunk_throughput'], 0)} | "
                    f"{_fmt(run['client_cpu_utilization'], 2)} |"
                )
        lines.append("")
    return "\n".join(lines)


def describe_scenario(knobs: Mapping[str, Any]) -> str:
    chars = knobs.get("answer_chars", 240)
    chunks = -(-chars // knobs.get("chunk_chars", 24))
    pace = knobs.get("chunks_per_second")
    speed = f"{pace:g} chunks/s per stream" if pace else "as fast as the mock writes them"
    return f"{chars:,}-character answers in {chunks} chunks, {speed}"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def plot(report: Mapping[str, Any], out: Path) -> list[Path]:
    from llmstreams.bench.plots import pyplot

    plt = pyplot()
    written = []
    scenarios = report["scenarios"]
    panels = (
        ("chunk_throughput", "chunks/s"),
        ("cpu_s_per_1k_chunks", "client CPU s per 1,000 chunks"),
        ("p99_e2el_ms", "p99 end-to-end latency (ms)"),
    )
    figure, axes = plt.subplots(
        len(scenarios), len(panels), figsize=(16, 4.2 * len(scenarios)), constrained_layout=True,
        squeeze=False,
    )
    for row, (scenario, results) in enumerate(scenarios.items()):
        names = list(results)
        colours = ["tab:blue" if name.startswith("llmstreams") else
                   "tab:gray" if name.startswith("aiohttp") else "tab:orange" for name in names]
        for column, (field, title) in enumerate(panels):
            axis = axes[row][column]
            values = [results[name][field] or 0 for name in names]
            axis.barh(names, values, color=colours)
            axis.invert_yaxis()
            axis.set_title(f"{scenario}: {title}", fontsize="medium")
            axis.grid(True, axis="x", alpha=0.3)
            for position, value in enumerate(values):
                shown = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
                axis.text(value, position, f" {shown}", va="center", fontsize="small")
    figure.suptitle(
        f"Same workload, same mock server, concurrency {report['config']['concurrency']}",
        fontsize="medium",
    )
    path = out / "compare_clients.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)
    if report["mock_workers_sweep"]:
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        for name, runs in report["mock_workers_sweep"].items():
            workers = [run["mock_workers"] for run in runs]
            left.plot(workers, [run["chunk_throughput"] for run in runs], "o-", label=name)
            right.plot(workers, [run["client_cpu_utilization"] for run in runs], "o-", label=name)
        left.set_ylabel("chunks/s")
        right.set_ylabel("client CPU (share of one core)")
        right.set_ylim(0, 1.1)
        for axis in (left, right):
            axis.set_xlabel("mock worker processes")
            axis.set_xticks(sorted({run["mock_workers"] for runs in report["mock_workers_sweep"].values() for run in runs}))
            axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize="small")
        figure.suptitle(f"Saturated streams against mock workers ({os.cpu_count()} cores)", fontsize="medium")
        path = out / "mock_workers_sweep.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
