"""Running the comparison: each client in a fresh interpreter against the mock, on a machine
otherwise quiet, repeated; and the same runs under py-spy for `--profile`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.compare.adapters import DASHSCOPE_MODEL, PROMPT, QIANFAN_MODEL, client_target
from benchmarks.compare.report import profile_table, ratios, targets
from llmstreams.bench import LoadPlan, run_load, summarize
from llmstreams.bench.report import environment
from llmstreams.mock import spawn_mock_workers

# The checkout: `python -m benchmarks.compare` imports `benchmarks` from the working directory.
REPO = Path(__file__).resolve().parents[2]
CHILD = [sys.executable, "-m", "benchmarks.compare"]

ANSWER = {"answer_chars": 1200, "chunk_chars": 12}
SCENARIOS: dict[str, dict[str, Any]] = {
    "saturated": dict(ANSWER),
    "short": {},
    "paced": {**ANSWER, "chunks_per_second": 25},
}
SWEEP_CLIENTS = ("llmstreams-dashscope", "aiohttp-dashscope")

# The figures kept from each run, and how repeats are combined (median of each).
FIELDS = (
    "request_throughput", "chunk_throughput", "output_throughput", "cpu_s_per_1k_chunks",
    "client_cpu_utilization", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms",
    "median_e2el_ms", "p99_e2el_ms", "peak_rss_mb", "failed", "completed", "total_chunks",
    "foreign_cpu_share",
)


# --------------------------------------------------------------------------- one client run


async def measure_client(name: str, base_url: str, plan: LoadPlan) -> dict[str, Any]:
    async with client_target(name, base_url) as target:
        measurement = await run_load(target, plan)
    summary = summarize(
        measurement.records, duration=measurement.duration,
        cpu_seconds=measurement.cpu_seconds, peak_rss_mb=measurement.peak_rss_mb,
        label={"client": name, "concurrency": plan.concurrency},
    )
    return summary.to_json()


def child_main(args: argparse.Namespace) -> int:
    plan = LoadPlan(
        concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
    )
    result = asyncio.run(measure_client(args.child, args.base_url, plan))
    print(json.dumps(result))
    return 0


def child_command(name: str, base_url: str, concurrency: int, duration: float, warmup: int) -> list[str]:
    """The command line of one client's run in a fresh interpreter (run it in REPO)."""
    return [
        *CHILD, "--child", name, "--base-url", base_url, "--concurrency", str(concurrency),
        "--duration", str(duration), "--warmup", str(warmup),
    ]


@attrs.frozen
class RunSettings:
    """How each client run goes: its load, where its stderr goes, and how quiet the rest of the
    machine must be (a run during which other processes used more than `max_foreign` of the
    CPUs is thrown away and done again, up to `attempts` times)."""

    concurrency: int
    duration: float
    warmup: int
    log: Path
    quiet_threshold: float
    quiet_patience: float
    max_foreign: float
    attempts: int


def run_child(name: str, base_url: str, settings: RunSettings) -> dict[str, Any]:
    """One client's run in a fresh interpreter, on a machine otherwise quiet."""
    result: dict[str, Any] = {}
    for attempt in range(1, settings.attempts + 1):
        wait_until_quiet(settings.quiet_threshold, settings.quiet_patience)
        with ForeignLoad() as foreign:
            result = _child_run(name, base_url, settings)
        result["foreign_cpu_share"] = foreign.share
        result["attempts"] = attempt
        if foreign.share is None or foreign.share <= settings.max_foreign:
            break
        print(f"(other processes took {foreign.share:.0%} of the CPUs; again)", end=" ", flush=True)
    return result


def _child_run(name: str, base_url: str, settings: RunSettings) -> dict[str, Any]:
    command = child_command(name, base_url, settings.concurrency, settings.duration, settings.warmup)
    with settings.log.open("a", encoding="utf-8") as errors:
        errors.write(f"==== {name} at {time.strftime('%H:%M:%S')}\n")
        errors.flush()
        completed = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO,
            timeout=settings.duration * 10 + 120, check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {completed.returncode}); see {settings.log}")
    return _last_json_line(completed.stdout)


def _last_json_line(output: str) -> dict[str, Any]:
    """The child's result: the last line of its output that is a JSON object."""
    line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


# --------------------------------------------------------------------------- a quiet machine


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [float(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


def system_busy(seconds: float = 1.0) -> float | None:
    """The share of all CPUs busy over the next `seconds` (None where unknown)."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def wait_until_quiet(threshold: float, patience: float) -> float | None:
    """Wait (up to `patience` seconds) until other work leaves the CPUs at most `threshold`
    busy, so that runs do not compete with it; returns the last share measured."""
    deadline = time.monotonic() + patience
    while True:
        busy = system_busy()
        if busy is None or busy <= threshold or time.monotonic() >= deadline:
            return busy
        print(f"(machine {busy:.0%} busy; waiting)", end=" ", flush=True)
        time.sleep(2.0)


class ForeignLoad:
    """Measures, over a `with` block, the share of all CPUs used by processes other than this
    one and its children (the client run and the mock workers): work that competes with the
    measured run. `share` is None where /proc/stat or psutil is missing."""

    def __init__(self) -> None:
        self.share: float | None = None
        self._start: tuple[float, float, float] | None = None

    def __enter__(self) -> ForeignLoad:
        self._start = self._sample()
        return self

    def __exit__(self, *exc_info: object) -> None:
        end = self._sample()
        if self._start is None or end is None:
            return
        busy, total, ours = (after - before for after, before in zip(end, self._start, strict=True))
        if total > 0:
            self.share = round(max(busy - ours, 0.0) / total, 3)

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(busy, total) CPU seconds of the machine and CPU seconds of our process tree."""
        times = _cpu_times()
        try:
            import psutil
        except ImportError:
            return None
        if times is None:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        ours = 0.0
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                cpu = process.cpu_times()
                ours += cpu.user + cpu.system
        finished = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours += finished.ru_utime + finished.ru_stime
        return times[0] / ticks, times[1] / ticks, ours


# --------------------------------------------------------------------------- the comparison


def combine(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repeated runs."""
    combined: dict[str, Any] = {}
    for field in FIELDS:
        values = [run[field] for run in runs if run.get(field) is not None]
        combined[field] = statistics.median(values) if values else None
    per_1k = combined["cpu_s_per_1k_chunks"]
    combined["chunks_per_cpu_second"] = round(1000.0 / per_1k) if per_1k else None
    combined["errors"] = {
        name: sum(run["errors"].get(name, 0) for run in runs)
        for name in sorted({name for run in runs for name in run["errors"]})
    }
    return combined


def run_comparison(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / "compare_clients.log"
    log.write_text("")
    settings = RunSettings(
        concurrency=args.concurrency, duration=args.duration, warmup=args.warmup, log=log,
        quiet_threshold=args.quiet_threshold, quiet_patience=args.quiet_patience,
        max_foreign=args.max_foreign, attempts=args.attempts,
    )
    scenarios: dict[str, dict[str, Any]] = {}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for scenario in args.scenarios:
        knobs = SCENARIOS[scenario]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.clients}
        with spawn_mock_workers(args.mock_workers, **knobs) as base_url:
            for repeat in range(args.repeats):
                for name in args.clients:
                    print(f"[{scenario} {repeat + 1}/{args.repeats}] {name} ...", end=" ", flush=True)
                    run = run_child(name, base_url, settings)
                    runs[name].append(run)
                    print(
                        f"{run['chunk_throughput']:,.0f} chunks/s, "
                        f"{run['cpu_s_per_1k_chunks']} CPU s/1k chunks, "
                        f"{run['failed']} failed", flush=True,
                    )
        raw[scenario] = runs
        scenarios[scenario] = {name: combine(client_runs) for name, client_runs in runs.items()}
    sweep: dict[str, list[dict[str, Any]]] = {}
    for workers in args.worker_sweep:
        with spawn_mock_workers(workers, **SCENARIOS["saturated"]) as base_url:
            for name in SWEEP_CLIENTS:
                print(f"[mock workers {workers}] {name} ...", end=" ", flush=True)
                run = run_child(name, base_url, settings)
                run["mock_workers"] = workers
                sweep.setdefault(name, []).append(run)
                print(f"{run['chunk_throughput']:,.0f} chunks/s, "
                      f"client CPU {run['client_cpu_utilization']:.0%} of a core", flush=True)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "config": {
            "concurrency": args.concurrency, "duration": args.duration, "warmup": args.warmup,
            "repeats": args.repeats, "mock_workers": args.mock_workers,
            "scenarios": {name: SCENARIOS[name] for name in args.scenarios},
            "worker_sweep": list(args.worker_sweep), "prompt": PROMPT,
            "quiet_threshold": args.quiet_threshold, "max_foreign": args.max_foreign,
            "models": {"qianfan": QIANFAN_MODEL, "dashscope": DASHSCOPE_MODEL},
        },
        "scenarios": scenarios,
        "ratios": {name: ratios(results) for name, results in scenarios.items()},
        "targets": targets(scenarios),
        "mock_workers_sweep": sweep,
        "runs": raw,
    }


# --------------------------------------------------------------------------- profiles


def profile_clients(args: argparse.Namespace) -> int:
    """Run each client of `args.profile` once per scenario under py-spy and write where its CPU
    time goes, per function and per file, as a share and in microseconds per chunk."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is needed: pip install py-spy", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for scenario in args.scenarios:
        with spawn_mock_workers(args.mock_workers, **SCENARIOS[scenario]) as base_url:
            for name in args.profile:
                wait_until_quiet(args.quiet_threshold, args.quiet_patience)
                raw = args.out / f"profile_{name}_{scenario}.raw"
                command = [
                    py_spy, "record", "--rate", "400", "--format", "raw", "--output", str(raw),
                    "--", *child_command(name, base_url, args.concurrency, args.duration, args.warmup),
                ]
                completed = subprocess.run(
                    command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                    cwd=REPO, check=True,
                )
                run = _last_json_line(completed.stdout)
                text = profile_table(raw.read_text(), run, title=f"{name}, {scenario}")
                path = args.out / f"profile_{name}_{scenario}.txt"
                path.write_text(text)
                raw.unlink()
                print(text)
    return 0
