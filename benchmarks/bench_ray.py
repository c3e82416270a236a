"""The same batch locally and on Ray (1 and 2 actors), against mock worker processes.

Usage: .venv/bin/python -m benchmarks.bench_ray [--rounds N] [--small N] [--large N] [--json PATH]
(from the checkout's root)

Every run is the batch command's own code on the same JSONL input (DashScope requests, the mock
answering at full speed: 10 chunks of 24 characters each), output overwritten:
  * local: `run_batch` in this process, `--concurrency` C (C streams in flight);
  * ray-1, ray-2: `run_batch_on_ray` on a local Ray (started once, 2 CPUs) with 1 or 2 actors of
    C streams each; a run's time includes starting its actors, as a user's does.
Rounds alternate the order of the configurations; the table shows medians and [min, max].

Ray's overhead per request removes the fixed costs (actor start, Ray Data planning) by running
two sizes: ((T_ray(large) - T_ray(small)) - (T_local(large) - T_local(small))) / (large - small).
The knee: ray-2's requests/s on the large job as the concurrency per actor grows.
The rate limits: 2 actors (or an autoscaling pool of 1 to 2) under 40 requests/s given once,
either divided (each actor 20/s) or through one `ClusterRateLimiter`, counting the requests at the mock (GET /stats every 50 ms):
the steady rate from 10% to 90% of the requests, and the most in any one second. And what one
permit costs: an `acquire` awaited from the driver, in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.data

import llmstreams
from llmstreams.batch import BatchSummary, Target, run_batch
from llmstreams.mock import spawn_mock_workers
from llmstreams.ray import ClusterRateLimiter, Generate, Secrets, shared_out
from llmstreams.ray.batch import RayJob, run_batch_on_ray

RESULTS = Path(__file__).resolve().parent / "results" / "ray.json"
MODEL = "billa-7b-sft-v1"
KEY = "sk-bench-key"


def write_input(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in range(count)))
    return path


def run_local(url: str, source: Path, output: Path, concurrency: int) -> BatchSummary:
    async def main() -> BatchSummary:
        async with llmstreams.Pool(max_retries=0) as pool:
            client = llmstreams.DashScopeClient(api_key=KEY, base_url=url, pool=pool)
            with open("/dev/null", "w") as devnull:
                return await run_batch(
                    source, output, Target(client, model=MODEL), concurrency=concurrency,
                    mode="overwrite", report=lambda _: None, progress_stream=devnull,
                )

    return asyncio.run(main())


def run_ray(url: str, source: Path, output: Path, concurrency: int, actors: int) -> BatchSummary:
    job = RayJob(
        "dashscope", model=MODEL, base_url=url, actors=actors, concurrency=concurrency,
        max_retries=0, credentials=Secrets({"api_key": KEY}),
    )
    with open("/dev/null", "w") as devnull:
        return run_batch_on_ray(
            source, output, job, mode="overwrite", report=lambda _: None, progress_stream=devnull
        )


def timed(run: Callable[[], BatchSummary]) -> dict[str, float]:
    started = time.perf_counter()
    summary = run()
    elapsed = time.perf_counter() - started
    assert summary.stats.failed == 0, summary.stats.errors_by_type
    return {
        "seconds": elapsed,
        "requests_per_s": summary.stats.requests / elapsed,
        "chunks_per_s": summary.stats.chunks / elapsed,
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def server_requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as answer:
        count: int = json.load(answer)["requests"]["dashscope.generation"]
    return count


def rate_limited(url: str, count: int, scenario: str, rps: float) -> dict[str, float]:
    """Run `count` requests on 2 actors under `rps`, divided or shared (scenario "divided" or
    "cluster"; "... autoscaling": a pool of 1 to 2 actors), counting the requests at the mock
    every 50 ms: the rate from 10% to 90% of them (the job's steady state, without the actors'
    start and the last stragglers), and the most sent in any one second."""
    limiter, _, autoscaling = scenario.partition(" ")
    rows = [{"id": i, "prompt": f"question {i}"} for i in range(count)]
    options: dict[str, Any] = {
        "model": MODEL, "base_url": url, "credentials": {"api_key": KEY}, "concurrency": 16,
        "max_retries": 0,
    }
    if limiter == "divided":  # each of the 2 actors holds half the budget
        options["rate_limit"] = shared_out(llmstreams.RateLimit(requests_per_second=rps), 2)
    else:
        options["rate_limiter"] = ClusterRateLimiter(llmstreams.RateLimit(requests_per_second=rps))
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            samples.append((time.perf_counter(), server_requests(url)))

    before = server_requests(url)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = ray.data.from_items(rows).map_batches(
            Generate, fn_constructor_args=("dashscope",), fn_constructor_kwargs=options,
            batch_size=8, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                min_size=1 if autoscaling else 2, max_size=2, max_concurrent_calls_per_actor=2
            ),
        ).take_all()
    finally:
        done.set()
        sampler.join()
    assert all(row["error_type"] is None for row in results)
    counts = [(when, sent - before) for when, sent in samples]

    def when_reached(share: float) -> tuple[float, int]:
        return next((when, sent) for when, sent in counts if sent >= share * count)

    (start, sent_start), (end, sent_end) = when_reached(0.1), when_reached(0.9)
    most_in_a_second = max(
        later - sent for when, sent in counts for until, later in counts if 0 < until - when <= 1.0
    )
    return {"steady_rps": (sent_end - sent_start) / (end - start), "most_in_1s": most_in_a_second}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ray",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64, help="streams in flight per process")
    parser.add_argument("--knee", default="8,64,256", help="concurrencies per actor for the knee")
    parser.add_argument("--rate-requests", type=int, default=400)
    parser.add_argument("--only-rate-limit", action="store_true", help="skip the scaling runs")
    parser.add_argument("--rps", type=float, default=40.0)
    parser.add_argument("--mock-workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    # Ray starts its workers at niceness 15: next to the other jobs of a shared machine that
    # alone would starve them, against a local run at niceness 0.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    report = json.loads(args.json.read_text()) if args.only_rate_limit and args.json.exists() else {}
    if not args.only_rate_limit:
        report["settings"] = {
            key: getattr(args, key)
            for key in ("rounds", "small", "large", "concurrency", "knee", "mock_workers")
        }
        report.update(scaling(args))
    report["rate_limit"] = rate_limits(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    ray.shutdown()

    def cell(values: dict[str, float], digits: int = 0) -> str:
        return f"{values['median']:,.{digits}f} [{values['min']:,.{digits}f}, {values['max']:,.{digits}f}]"

    print(f"Ray workers' niceness: {os.environ['RAY_worker_niceness']}")  # noqa: SIM112
    if "runs" in report:
        print(f"{'run':<24} {'seconds':>24} {'requests/s':>26} {'chunks/s':>28}")
        for name, values in report["runs"].items():
            print(f"{name:<24} {cell(values['seconds'], 2):>24} "
                  f"{cell(values['requests_per_s']):>26} {cell(values['chunks_per_s']):>28}")
        for name, values in report["ray_overhead_ms_per_request"].items():
            print(f"Ray overhead per request, {name}: {cell(values, 3)} ms")
    print(f"one permit from the ClusterRateLimiter: {cell(report['rate_limit']['permit_ms'], 2)} ms")
    for name, values in report["rate_limit"]["measured"].items():
        print(f"rate limit {args.rps:g}/s, 2 actors, {name}: steady {cell(values['steady_rps'], 1)}"
              f" requests/s, most in one second {cell(values['most_in_1s'])}")


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    knee = [int(value) for value in args.knee.split(",")]
    with tempfile.TemporaryDirectory() as scratch, spawn_mock_workers(args.mock_workers) as url:
        inputs = {size: write_input(Path(scratch) / f"in-{size}.jsonl", size) for size in (args.small, args.large)}
        output = Path(scratch) / "out.jsonl"
        configs: dict[str, Callable[[int, int], BatchSummary]] = {
            "local": lambda size, c: run_local(url, inputs[size], output, c),
            "ray-1": lambda size, c: run_ray(url, inputs[size], output, c, 1),
            "ray-2": lambda size, c: run_ray(url, inputs[size], output, c, 2),
        }
        runs: dict[str, list[dict[str, float]]] = {}
        for round_number in range(args.rounds):
            names = list(configs)
            names = names[round_number % len(names):] + names[:round_number % len(names)]
            for size in (args.small, args.large):
                for name in names:
                    runs.setdefault(f"{name} n={size}", []).append(
                        timed(lambda name=name, size=size: configs[name](size, args.concurrency))
                    )
            for concurrency in knee:
                runs.setdefault(f"knee ray-2 c={concurrency}", []).append(
                    timed(lambda c=concurrency: configs["ray-2"](args.large, c))
                )
                runs.setdefault(f"knee local c={concurrency * 2}", []).append(
                    timed(lambda c=concurrency: configs["local"](args.large, c * 2))
                )
            print(f"round {round_number + 1} of {args.rounds} done", file=sys.stderr, flush=True)

    overheads = []
    for round_number in range(args.rounds):
        def seconds(name: str, size: int, index: int = round_number) -> float:
            return runs[f"{name} n={size}"][index]["seconds"]

        local = seconds("local", args.large) - seconds("local", args.small)
        for name in ("ray-1", "ray-2"):
            ray_delta = seconds(name, args.large) - seconds(name, args.small)
            overheads.append((name, (ray_delta - local) / (args.large - args.small)))
    return {
        "runs": {
            name: {key: spread([run[key] for run in values]) for key in values[0]}
            for name, values in runs.items()
        },
        "ray_overhead_ms_per_request": {
            name: spread([value * 1e3 for key, value in overheads if key == name])
            for name in ("ray-1", "ray-2")
        },
    }


def rate_limits(args: argparse.Namespace) -> dict[str, Any]:
    # One mock process, whose /stats counts every request the actors send.
    with spawn_mock_workers(1) as url:
        scenarios = ("divided", "cluster", "divided autoscaling", "cluster autoscaling")
        limits: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
        for round_number in range(args.rounds):
            for name in scenarios[round_number % 4:] + scenarios[:round_number % 4]:
                limits[name].append(rate_limited(url, args.rate_requests, name, args.rps))
    unlimited = ClusterRateLimiter(llmstreams.RateLimit(requests_per_second=1e9))

    async def permit_round_trips(count: int = 300) -> float:
        await unlimited.acquire()  # the permit actor is started
        started = time.perf_counter()
        for _ in range(count):
            await unlimited.acquire()
        return (time.perf_counter() - started) / count * 1e3

    return {
        "settings": {"rounds": args.rounds, "requests": args.rate_requests, "rps": args.rps},
        "permit_ms": spread([asyncio.run(permit_round_trips()) for _ in range(args.rounds)]),
        "measured": {
            name: {key: spread([run[key] for run in values]) for key in values[0]}
            for name, values in limits.items()
        },
    }


if __name__ == "__main__":
    main()
