"""llmstreams against other ways to stream from Qianfan and DashScope, on the same workload.

Usage (the official SDKs belong in a separate virtualenv, never in the project's own):
    python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -e '.[bench,sdk]'
    /tmp/benchvenv/bin/python benchmarks/compare_clients.py [--duration 12] [--repeats 3]
    /tmp/benchvenv/bin/python benchmarks/compare_clients.py --profile llmstreams-qianfan  # py-spy

Every client streams the same answers from the same mock server (`llmstreams.mock`, in worker
processes of its own) through the same timing loop (`llmstreams.bench.load`). Each client
runs in a fresh subprocess, so `time.process_time()` counts that client's work alone.

Clients:
  llmstreams-qianfan      llmstreams.QianfanClient.stream_chat
  llmstreams-dashscope    llmstreams.DashScopeClient.stream_generate
  qianfan-sdk             the official `qianfan` SDK, async: ChatCompletion().ado(stream=True)
  dashscope-sdk           the official `dashscope` SDK, async: AioGeneration.call(stream=True)
  sse-client2-qianfan     aiohttp-sse-client2's EventSource, POST with the JSON body, closed
  sse-client2-dashscope   at the last event (it would reconnect and ask again otherwise)
  aiohttp-lines-qianfan   a bare aiohttp POST, `async for line in resp.content`, json.loads
  aiohttp-lines-dashscope of each `data:` line: the usual hand-written loop
  aiohttp-qianfan         the floor: a bare aiohttp POST reading whatever bytes arrived
  aiohttp-dashscope       (`iter_any`), split into lines, json.loads of each `data:` line

Scenarios (mock knobs; answers of 1,200 characters in 100 chunks of 12 unless said otherwise):
  saturated   chunks as fast as the mock writes them, concurrency 256: the client's ceiling
  short       the mock's default answers (240 characters in 10 chunks of 24), as fast as it
              writes them: the same ceiling with ten times the requests per chunk
  paced       25 chunks/s per stream, concurrency 256 (6,400 chunks/s offered, well within
              every client's reach): latency, and CPU when every read brings about one
              event, as with a real model

Then chunks/s of llmstreams-dashscope and its floor against the number of mock workers
(saturated, concurrency 256), to show where the client saturates its core.

In all of these the mock is the bottleneck or close to it, and each read carries about one
event. `--client-bound` runs the other side instead (benchmarks/client_bound.py): a server of
pre-built bytes, many events per read, every client in one process side by side, blocks
alternated; client CPU per chunk against the bare loop for all three dialects, p99/p99.9
latency at saturation with the connections opened, and RSS per open stream at 10,000 streams.

Writes into --out (benchmarks/results): compare_clients.json, compare_clients.png,
mock_workers_sweep.png and compare_clients.md (tables, ratios, machine and versions); the
clients' stderr (the SDKs log there) goes to compare_clients.log in the temporary directory.
"""

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
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llmstreams
from llmstreams.bench import ClientTarget, LoadPlan, Target, Workload, run_load, summarize
from llmstreams.bench.report import environment
from llmstreams.mock import spawn_mock_workers

RESULTS = Path(__file__).resolve().parent / "results"

PROMPT = "请用三句话介绍一下流式输出的好处。"
QIANFAN_MODEL = "ERNIE-Speed-8K"
QIANFAN_CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ernie_speed"
DASHSCOPE_MODEL = "billa-7b-sft-v1"
DASHSCOPE_PATH = "/api/v1/services/aigc/text-generation/generation"
# Any non-empty credentials satisfy the mock.
API_KEY, SECRET_KEY = "bench-api-key", "bench-secret-key"

ANSWER = {"answer_chars": 1200, "chunk_chars": 12}
SCENARIOS: dict[str, dict[str, Any]] = {
    "saturated": dict(ANSWER),
    "short": {},
    "paced": {**ANSWER, "chunks_per_second": 25},
}
CLIENTS: dict[str, str] = {
    "llmstreams-qianfan": "qianfan",
    "llmstreams-dashscope": "dashscope",
    "qianfan-sdk": "qianfan",
    "dashscope-sdk": "dashscope",
    "sse-client2-qianfan": "qianfan",
    "sse-client2-dashscope": "dashscope",
    "aiohttp-lines-qianfan": "qianfan",
    "aiohttp-lines-dashscope": "dashscope",
    "aiohttp-qianfan": "qianfan",
    "aiohttp-dashscope": "dashscope",
}
REFERENCE = {"qianfan": "llmstreams-qianfan", "dashscope": "llmstreams-dashscope"}
FLOOR = {"qianfan": "aiohttp-qianfan", "dashscope": "aiohttp-dashscope"}
SWEEP_CLIENTS = ("llmstreams-dashscope", "aiohttp-dashscope")

# The figures kept from each run, and how repeats are combined (median of each).
FIELDS = (
    "request_throughput", "chunk_throughput", "output_throughput", "cpu_s_per_1k_chunks",
    "client_cpu_utilization", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms",
    "median_e2el_ms", "p99_e2el_ms", "peak_rss_mb", "failed", "completed", "total_chunks",
    "foreign_cpu_share",
)


class StreamError(Exception):
    """A non-llmstreams client reported an error response (named by its code)."""


# --------------------------------------------------------------------------- the clients


class IteratorTarget:
    """A `Target` made of a function opening one request and a token counter for its last item."""

    def __init__(
        self,
        open_stream: Callable[[], AsyncIterator[Any]],
        output_tokens: Callable[[Any], int | None],
    ) -> None:
        self.open_stream = open_stream
        self.output_tokens = output_tokens


def _unlimited_session() -> aiohttp.ClientSession:
    # The same connection limits llmstreams' Pool uses, so no client queues for connections.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=10_000, limit_per_host=0))


async def _qianfan_token(session: aiohttp.ClientSession, base_url: str) -> str:
    params = {"grant_type": "client_credentials", "client_id": API_KEY, "client_secret": SECRET_KEY}
    async with session.post(base_url + "/oauth/2.0/token", params=params) as response:
        token: str = (await response.json())["access_token"]
    return token


def _qianfan_body() -> bytes:
    return json.dumps(
        {"messages": [{"role": "user", "content": PROMPT}], "stream": True}, ensure_ascii=False
    ).encode()


def _dashscope_body() -> bytes:
    return json.dumps(
        {"model": DASHSCOPE_MODEL, "input": {"prompt": PROMPT},
         "parameters": {"incremental_output": True}},
        ensure_ascii=False,
    ).encode()


DASHSCOPE_HEADERS = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
    "X-DashScope-SSE": "enable",
}


def _qianfan_tokens(item: Mapping[str, Any]) -> int | None:
    usage = item.get("usage")
    return None if usage is None else int(usage["completion_tokens"])


def _dashscope_tokens(item: Mapping[str, Any]) -> int | None:
    usage = item.get("usage")
    return None if usage is None else int(usage["output_tokens"])


@contextlib.asynccontextmanager
async def llmstreams_target(vendor: str, base_url: str) -> AsyncIterator[Target]:
    async with llmstreams.Pool(max_retries=0) as pool:
        client: llmstreams.QianfanClient | llmstreams.DashScopeClient
        if vendor == "qianfan":
            client = llmstreams.QianfanClient(
                api_key=API_KEY, secret_key=SECRET_KEY, base_url=base_url, pool=pool
            )
            workload = Workload("qianfan", model=QIANFAN_MODEL, prompt=PROMPT)
        else:
            client = llmstreams.DashScopeClient(api_key=API_KEY, base_url=base_url, pool=pool)
            workload = Workload("dashscope", model=DASHSCOPE_MODEL, prompt=PROMPT)
        yield ClientTarget(client, workload)


def _vendor_request(
    vendor: str, base_url: str, token: str | None
) -> tuple[str, dict[str, str], dict[str, str], bytes, Callable[[Any], int | None]]:
    """URL, query, headers, body and token counter of the workload, for the hand-made clients."""
    if vendor == "qianfan":
        assert token is not None
        return (
            base_url + QIANFAN_CHAT_PATH, {"access_token": token},
            {"Content-Type": "application/json"}, _qianfan_body(), _qianfan_tokens,
        )
    return base_url + DASHSCOPE_PATH, {}, dict(DASHSCOPE_HEADERS), _dashscope_body(), _dashscope_tokens


@contextlib.asynccontextmanager
async def aiohttp_target(vendor: str, base_url: str) -> AsyncIterator[Target]:
    """The floor: the least any client must do (send, cut the body into lines, json.loads each
    `data:` line), with aiohttp's cheapest read (whatever bytes have arrived) and no checks."""
    async with _unlimited_session() as session:
        token = await _qianfan_token(session, base_url) if vendor == "qianfan" else None
        url, params, headers, body, tokens = _vendor_request(vendor, base_url, token)

        async def open_stream() -> AsyncIterator[Any]:
            async with session.post(url, params=params, data=body, headers=headers) as response:
                if response.status != 200:
                    raise StreamError(f"HTTP {response.status}")
                pending = b""
                async for data in response.content.iter_any():
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if line.startswith(b"data:"):
                            yield json.loads(line[5:])

        yield IteratorTarget(open_stream, tokens)


@contextlib.asynccontextmanager
async def aiohttp_lines_target(vendor: str, base_url: str) -> AsyncIterator[Target]:
    """The usual hand-written loop: `async for line in response.content` (one read per line)."""
    async with _unlimited_session() as session:
        token = await _qianfan_token(session, base_url) if vendor == "qianfan" else None
        url, params, headers, body, tokens = _vendor_request(vendor, base_url, token)

        async def open_stream() -> AsyncIterator[Any]:
            async with session.post(url, params=params, data=body, headers=headers) as response:
                if response.status != 200:
                    raise StreamError(f"HTTP {response.status}")
                async for line in response.content:
                    if line.startswith(b"data:"):
                        yield json.loads(line[5:])

        yield IteratorTarget(open_stream, tokens)


@contextlib.asynccontextmanager
async def sse_client2_target(vendor: str, base_url: str) -> AsyncIterator[Target]:
    from aiohttp_sse_client2.client import EventSource

    async with _unlimited_session() as session:
        token = await _qianfan_token(session, base_url) if vendor == "qianfan" else None
        url, params, headers, body, tokens = _vendor_request(vendor, base_url, token)

        def is_last(item: Mapping[str, Any]) -> bool:
            if vendor == "qianfan":
                return bool(item.get("is_end"))
            return item.get("output", {}).get("finish_reason") not in (None, "null")

        async def open_stream() -> AsyncIterator[Any]:
            source = EventSource(
                url, option={"method": "POST"}, session=session, params=params,
                data=body, headers=dict(headers),
            )
            async with source:
                async for event in source:
                    item = json.loads(event.data)
                    if event.type == "error" or "error_code" in item:
                        raise StreamError(str(item.get("code") or item.get("error_code")))
                    yield item
                    # EventSource would reconnect at the end of the body and ask again.
                    if is_last(item):
                        break

        yield IteratorTarget(open_stream, tokens)


@contextlib.asynccontextmanager
async def qianfan_sdk_target(base_url: str) -> AsyncIterator[Target]:
    # The SDK reads its endpoints and credentials from the environment when imported.
    os.environ.update({
        "QIANFAN_BASE_URL": base_url,
        "QIANFAN_CONSOLE_API_BASE_URL": base_url,
        "QIANFAN_AK": API_KEY,
        "QIANFAN_SK": SECRET_KEY,
    })
    import qianfan

    chat = qianfan.ChatCompletion(model=QIANFAN_MODEL)
    messages = [{"role": "user", "content": PROMPT}]

    async def open_stream() -> AsyncIterator[Any]:
        responses = await chat.ado(messages=messages, stream=True, retry_count=0)
        async for response in responses:
            yield response

    def tokens(response: Any) -> int | None:
        usage = response.body.get("usage")
        return None if usage is None else int(usage["completion_tokens"])

    yield IteratorTarget(open_stream, tokens)


@contextlib.asynccontextmanager
async def dashscope_sdk_target(base_url: str) -> AsyncIterator[Target]:
    import dashscope
    from dashscope import AioGeneration

    dashscope.base_http_api_url = base_url + "/api/v1"
    async with _unlimited_session() as session:

        async def open_stream() -> AsyncIterator[Any]:
            responses = await AioGeneration.call(
                model=DASHSCOPE_MODEL, prompt=PROMPT, stream=True, incremental_output=True,
                api_key=API_KEY, session=session,
            )
            async for response in responses:
                # The SDK reports errors as responses rather than raising them.
                if response.status_code != 200:
                    raise StreamError(str(response.code))
                yield response

        def tokens(response: Any) -> int | None:
            usage = response.usage
            return None if usage is None else int(usage.output_tokens)

        yield IteratorTarget(open_stream, tokens)


def client_target(name: str, base_url: str) -> contextlib.AbstractAsyncContextManager[Target]:
    vendor = CLIENTS[name]
    if name.startswith("llmstreams-"):
        return llmstreams_target(vendor, base_url)
    if name.startswith("aiohttp-lines-"):
        return aiohttp_lines_target(vendor, base_url)
    if name.startswith("aiohttp-"):
        return aiohttp_target(vendor, base_url)
    if name.startswith("sse-client2-"):
        return sse_client2_target(vendor, base_url)
    if name == "qianfan-sdk":
        return qianfan_sdk_target(base_url)
    return dashscope_sdk_target(base_url)


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
    command = [
        sys.executable, __file__, "--child", name, "--base-url", base_url,
        "--concurrency", str(settings.concurrency), "--duration", str(settings.duration),
        "--warmup", str(settings.warmup),
    ]
    with settings.log.open("a", encoding="utf-8") as errors:
        errors.write(f"==== {name} at {time.strftime('%H:%M:%S')}\n")
        errors.flush()
        completed = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=errors, text=True,
            timeout=settings.duration * 10 + 120, check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {completed.returncode}); see {settings.log}")
    return _last_json_line(completed.stdout)


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


def _last_json_line(output: str) -> dict[str, Any]:
    """The child's result: the last line of its output that is a JSON object."""
    line = next(line for line in reversed(output.splitlines()) if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


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

# Stacks outside the measured work: imports at start-up, statistics at the end.
_NOT_MEASURED = ("_find_and_load", "summarize (", "Distribution.of_seconds")


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
                    "--", sys.executable, __file__, "--child", name, "--base-url", base_url,
                    "--concurrency", str(args.concurrency), "--duration", str(args.duration),
                    "--warmup", str(args.warmup),
                ]
                completed = subprocess.run(
                    command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True
                )
                run = _last_json_line(completed.stdout)
                text = profile_table(raw.read_text(), run, title=f"{name}, {scenario}")
                path = args.out / f"profile_{name}_{scenario}.txt"
                path.write_text(text)
                raw.unlink()
                print(text)
    return 0


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
        f"Recorded {report['date']} by `benchmarks/compare_clients.py`.",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=lambda text: text.split(","), default=list(CLIENTS),
                        help="comma list of clients (default: all)")
    parser.add_argument("--scenarios", type=lambda text: text.split(","), default=list(SCENARIOS),
                        help="comma list of scenarios (default: saturated,paced)")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per run (12)")
    parser.add_argument("--warmup", type=int, default=256, help="warm-up requests per run (256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per client, median kept (3)")
    parser.add_argument("--mock-workers", type=int, default=1, help="mock processes (1)")
    parser.add_argument("--worker-sweep", type=lambda text: [int(part) for part in text.split(",") if part],
                        default=[1, 2, 3], help="mock worker counts to sweep; empty to skip (1,2,3)")
    parser.add_argument("--quiet-threshold", type=float, default=0.2,
                        help="before each run, wait until the CPUs are at most this busy (0.2)")
    parser.add_argument("--quiet-patience", type=float, default=300.0,
                        help="longest wait for a quiet machine, seconds (300)")
    parser.add_argument("--max-foreign", type=float, default=0.1,
                        help="run again when other processes used more than this share of the "
                        "CPUs during a run (0.1)")
    parser.add_argument("--attempts", type=int, default=4,
                        help="most tries of a run disturbed by other processes (4)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--profile", type=lambda text: text.split(","),
                        help="instead of comparing, profile these clients with py-spy and write "
                        "profile_<client>_<scenario>.txt into --out")
    parser.add_argument("--client-bound", action="store_true",
                        help="run the client-bound scenario (benchmarks/client_bound.py) instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.client_bound:
        import client_bound

        return client_bound.main(["--out", str(args.out), *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.child:
        return child_main(args)
    chosen = set(args.clients) | set(args.profile or ())
    unknown = sorted(chosen - set(CLIENTS)) + sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown clients or scenarios: {', '.join(unknown)}")
    if args.profile:
        return profile_clients(args)
    report = run_comparison(args)
    (args.out / "compare_clients.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = markdown(report)
    (args.out / "compare_clients.md").write_text(text + "\n")
    print()
    print(text)
    for path in plot(report, args.out):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
