"""A whole benchmark: the target server (mock worker processes or a given URL), the sweep over
mock worker counts and load levels, one measured run per combination."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs

from llmstreams import Pool
from llmstreams.bench.load import LoadPlan, run_load
from llmstreams.bench.metrics import RequestRecord, RunSummary, summarize
from llmstreams.bench.targets import ClientTarget, Workload, make_client
from llmstreams.mock import Behaviour, MockServer, spawn_mock_workers


@attrs.frozen(slots=True)
class BenchConfig:
    """Everything one `llmstreams bench` invocation measures.

    One run per (mock worker count, concurrency) pair, or per mock worker count at `rate`.
    `base_url` set: the runs go to that server and `mock_workers` / `knobs` are unused.
    `mock_workers` 0 runs the mock inside this process (its CPU then counts as the client's).
    `qianfan_auth` is how a QianfanClient authenticates to the mock (see QIANFAN_AUTH_METHODS).
    """

    workload: Workload
    concurrencies: tuple[int, ...] = (64,)
    rate: float | None = None
    requests: int | None = 1000
    duration: float | None = None
    warmup: int = 0
    seed: int = 0
    base_url: str | None = None
    mock_workers: tuple[int, ...] = (1,)
    knobs: Mapping[str, Any] = attrs.field(factory=dict)
    max_retries: int = 0
    qianfan_auth: str = "api_key"

    def plans(self) -> list[LoadPlan]:
        if self.rate is not None:
            return [self._plan(concurrency=None)]
        return [self._plan(concurrency=level) for level in self.concurrencies]

    def _plan(self, concurrency: int | None) -> LoadPlan:
        return LoadPlan(
            concurrency=concurrency, rate=self.rate, requests=self.requests,
            duration=self.duration, warmup=self.warmup, seed=self.seed,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.workload.provider,
            "model": self.workload.model_or_default,
            "endpoint": self.workload.endpoint,
            "stream": self.workload.stream,
            "incremental_output": self.workload.incremental_output,
            "protocol": self.workload.protocol if self.workload.provider == "dashscope" else None,
            "prompt_chars": len(self.workload.prompt),
            "concurrencies": None if self.rate is not None else list(self.concurrencies),
            "request_rate": self.rate,
            "requests": self.requests,
            "duration": self.duration,
            "warmup": self.warmup,
            "seed": self.seed,
            "target": "url" if self.base_url is not None else "mock",
            "mock_workers": None if self.base_url is not None else list(self.mock_workers),
            "mock_knobs": None if self.base_url is not None else dict(self.knobs),
            "max_retries": self.max_retries,
            "qianfan_auth": self.qianfan_auth if self.workload.provider == "qianfan" else None,
        }


@attrs.frozen(slots=True)
class RunResult:
    summary: RunSummary
    records: tuple[RequestRecord, ...]


async def run_benchmark(
    config: BenchConfig, on_run: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """Every run of `config`, in order; `on_run` is told of each as soon as it is done."""
    results: list[RunResult] = []
    groups: Sequence[int | None] = [None] if config.base_url is not None else config.mock_workers
    for workers in groups:
        async with _server(config, workers) as base_url, Pool() as pool:
            mock_auth = None if workers is None else config.qianfan_auth
            client = make_client(
                config.workload.provider, base_url=base_url, pool=pool,
                max_retries=config.max_retries, mock_auth=mock_auth,
                protocol=config.workload.protocol,
            )
            target = ClientTarget(client, config.workload)
            for plan in config.plans():
                measurement = await run_load(target, plan)
                label = {
                    "provider": config.workload.provider,
                    "model": config.workload.model_or_default,
                    "endpoint": config.workload.endpoint,
                    "stream": config.workload.stream,
                    "mode": plan.mode,
                    "concurrency": plan.concurrency,
                    "request_rate": plan.rate,
                    "mock_workers": workers,
                }
                if config.workload.provider == "qianfan" and mock_auth is not None:
                    label["qianfan_auth"] = mock_auth
                summary = summarize(
                    measurement.records, duration=measurement.duration,
                    cpu_seconds=measurement.cpu_seconds, peak_rss_mb=measurement.peak_rss_mb,
                    label=label,
                )
                result = RunResult(summary, measurement.records)
                results.append(result)
                if on_run is not None:
                    on_run(result)
    return results


@contextlib.asynccontextmanager
async def _server(config: BenchConfig, workers: int | None) -> AsyncIterator[str | None]:
    if workers is None:
        yield config.base_url
    elif workers == 0:
        async with MockServer(behaviour=Behaviour(**config.knobs)) as server:
            yield server.url
    else:
        async with spawn_mock_workers(workers, **config.knobs) as url:
            yield url
