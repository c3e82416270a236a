"""Benchmark harness behind `llmstreams bench`: load generation, per-request timing, reports.

`run_load(target, LoadPlan(...))` drives any client wrapped as a `Target` (see
`llmstreams.bench.load`); `run_benchmark(BenchConfig(...))` runs a whole sweep of the
llmstreams clients against the mock server or a given URL.
"""

from llmstreams.bench.load import LoadPlan, Measurement, Target, measure_request, run_load
from llmstreams.bench.metrics import Distribution, RequestRecord, RunSummary, summarize
from llmstreams.bench.runner import BenchConfig, RunResult, run_benchmark
from llmstreams.bench.targets import ClientTarget, Workload

__all__ = [
    "BenchConfig",
    "ClientTarget",
    "Distribution",
    "LoadPlan",
    "Measurement",
    "RequestRecord",
    "RunResult",
    "RunSummary",
    "Target",
    "Workload",
    "measure_request",
    "run_benchmark",
    "run_load",
    "summarize",
]
