"""`llmstreams bench`: throughput and latency of the llmstreams clients under load."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmstreams import LLMStreamsError
from llmstreams.bench.eventloop import (
    CHUNK_CLOCKS,
    EVENT_LOOPS,
    default_event_loop,
    missing_uvloop_notice,
    run_on,
)
from llmstreams.bench.metrics import PERCENTILES, SLO_METRICS
from llmstreams.bench.prompts import (
    Prompt,
    PromptsError,
    from_batch_jsonl,
    from_sharegpt,
    random_prompts,
)
from llmstreams.bench.report import (
    compare_documents,
    environment,
    format_table,
    print_run,
    report_document,
    write_json,
    write_request_lines,
)
from llmstreams.bench.runner import BenchConfig, RunResult, run_benchmark
from llmstreams.bench.schedule import TraceError, read_trace
from llmstreams.bench.targets import DEFAULT_PROMPT, Workload
from llmstreams.mock.behaviour import Behaviour, BehaviourError, with_knobs
from llmstreams.providers import DEFAULT_PROVIDER, PROVIDERS
from llmstreams.providers import get as provider_named

MOCK_AUTH_METHODS = sorted({method for p in PROVIDERS.values() for method in p.mock_credentials})

DEFAULT_CONCURRENCY = "64"
DEFAULT_REQUESTS = 1000
# Random prompts made when the run has no request count (it lasts a duration).
RANDOM_PROMPTS = 1000
UNPACED_NOTICE = (
    "the mock is unpaced: it writes each answer at once, so ITL and TPOT time only the "
    "client's parsing (pace it, e.g. --chunks-per-second 20)"
)

# Mock knobs with flags of their own; any other goes through --mock-knob.
_KNOB_FLAGS: tuple[tuple[str, str], ...] = (
    ("answer_chars", "characters in each answer (mock default 240)"),
    ("chunk_chars", "characters per streamed chunk (mock default 24)"),
    ("chunks_per_second", "pace of each stream's chunks (mock default: as fast as possible)"),
    ("first_chunk_delay", "seconds between a stream's headers and its first chunk (default 0)"),
    ("response_delay", "seconds before any response's headers (default 0)"),
)

_DESCRIPTION = """\
Measure throughput and latency of the llmstreams clients under load, timing every chunk of
every request.

By default (or with --mock) the target is the embedded mock server, started in separate
worker processes so that the client's CPU figures are its own. --base-url benchmarks any
server speaking the provider's protocol instead, with the credentials the provider's client
reads from the environment (see `llmstreams chat --help` for each provider's variables).
--provider openai --base-url http://host:port/v1 --model M benchmarks any OpenAI-compatible
server (vLLM, SGLang). Credentials are never printed or recorded.

Load: a closed loop keeps --concurrency requests in flight (--ramp-up spreads their starts);
an open loop (--rate) sends requests at Poisson or gamma (--burstiness) arrival times whatever
the others are doing, at most --concurrency at once when given (a due request then waits:
client_queue); --trace replays arrival offsets. Comma lists sweep. Each run lasts --requests
requests or --duration seconds (whichever comes first), after --warmup uncounted requests;
--processes N spreads it over N client processes. Prompts: --prompt, --prompts (batch JSONL),
--sharegpt or --random-input-len; --max-tokens asks for an output length.

Measured per request (chunk times are those of the network reads that carried them): TTFT,
ITL (per chunk), TPOT (per output token, from usage), E2EL, client queue, status. Reported
per run: request/output/total-token throughput, goodput (--goodput ttft:MS tpot:MS e2el:MS),
mean/median/std and --percentiles of each latency, errors by type, client CPU per chunk and
share of a core, event-loop lag p99, peak RSS, and whether the client itself was the
bottleneck. Against the mock, every event carries its true send time, so each run also
reports the harness's own TTFT and ITL error. JSON field names follow vLLM's bench serve
(request_throughput, output_throughput, total_token_throughput, request_goodput,
mean_ttft_ms, median_tpot_ms, p99_itl_ms, p99_e2el_ms, ...); docs/bench.md defines each.
"""

_EPILOG = """\
examples:
  llmstreams bench --concurrency 64 --requests 2000 --warmup 100
  llmstreams bench --concurrency 1,16,64 --duration 5 --warmup 4 --chunks-per-second 20 --json out.json --plots plots/
  llmstreams bench --rate 200 --duration 30 --chunks-per-second 20 --answer-chars 600
  llmstreams bench --rate 5,10,20 --concurrency 64 --burstiness 0.5 --goodput ttft:500 tpot:50
  llmstreams bench compare before.json after.json
  llmstreams bench --mock-workers 1,2 --concurrency 256 --duration 10
  llmstreams bench --provider dashscope --no-stream --requests 500
  llmstreams bench --provider deepseek --concurrency 16 --requests 200
  llmstreams bench --provider qianfan-v1 --base-url http://127.0.0.1:8000 --concurrency 8 --requests 100
  llmstreams bench --provider openai --base-url http://127.0.0.1:8000/v1 --model qwen2.5-7b
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark throughput and latency against the mock server or a given URL",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency", metavar="N[,N...]", type=_positive_list,
        help=f"closed loop: keep N requests in flight (default {DEFAULT_CONCURRENCY}); with "
        "--rate or --trace: at most N in flight, a due request waiting for a free slot; a "
        "comma list sweeps",
    )
    arrivals = load.add_mutually_exclusive_group()
    arrivals.add_argument(
        "--rate", metavar="R[,R...]", type=_rate_list,
        help="open loop: R requests per second on average, each sent when due whatever the "
        "others are doing; a comma list sweeps",
    )
    arrivals.add_argument(
        "--trace", metavar="JSONL", type=Path,
        help='open loop replaying arrival offsets: one {"offset_s": seconds} per line',
    )
    load.add_argument(
        "--burstiness", metavar="B[,B...]", type=_burstiness_list, default=(1.0,),
        help="open loop: shape of the gamma-distributed gaps between arrivals: 1 Poisson "
        "(default), below 1 burstier, above 1 more even; a comma list sweeps",
    )
    load.add_argument(
        "--ramp-up", metavar="S", type=_non_negative_float, default=0.0,
        help="seconds over which an open loop's rate rises linearly from 0, or over which a "
        "closed loop's streams start one after another (default 0)",
    )
    load.add_argument(
        "--requests", metavar="N", type=_positive_int,
        help=f"measured requests per run (default {DEFAULT_REQUESTS} unless --duration is given)",
    )
    load.add_argument(
        "--duration", metavar="S", type=_positive_float,
        help="seconds per run; requests in flight at the end finish and are counted",
    )
    load.add_argument(
        "--warmup", metavar="N", type=_non_negative_int, default=20,
        help="requests sent before each run and not counted, at the run's concurrency (an "
        "open loop warms up with up to 32 at once); default 20",
    )
    load.add_argument(
        "--seed", metavar="N", type=int, default=0,
        help="seed of the arrivals and random prompts (default 0)",
    )
    load.add_argument(
        "--processes", metavar="N", type=_positive_int, default=1,
        help="client processes sharing each run's load, their results merged (default 1); "
        "when one core is not enough for the client",
    )
    load.add_argument(
        "--event-loop", choices=EVENT_LOOPS, default=default_event_loop(),
        help="the client's event loop (default: uvloop where installed, else asyncio); "
        "uvloop leaves the loop less to do per event, so events wait less to be timed",
    )
    load.add_argument(
        "--chunk-clock", choices=CHUNK_CLOCKS, default="kernel",
        help="what times each chunk: the kernel's arrival time of its bytes (default; Linux, "
        "plain TCP; elsewhere the loop's, and the run says so) or the loop's (when the event "
        "loop got to its socket)",
    )

    target = parser.add_argument_group("target")
    target.add_argument(
        "--base-url", metavar="URL",
        help="benchmark this server instead of the mock (credentials from the environment)",
    )
    target.add_argument(
        "--mock-workers", metavar="N[,N...]", type=_worker_list, default=(1,),
        help="mock server processes (default 1); a comma list sweeps; 0 runs the mock inside "
        "this process, so that its CPU counts as the client's",
    )
    for name, description in _KNOB_FLAGS:
        target.add_argument(
            "--" + name.replace("_", "-"), dest=name, metavar="VALUE", help=f"mock: {description}"
        )
    target.add_argument(
        "--mock-knob", metavar="KEY=VALUE", action="append", default=[], type=_knob,
        help="mock: any other knob of the mock (see `llmstreams mock --help`); repeatable",
    )

    target.add_argument(
        "--mock", action="store_true",
        help="benchmark the embedded mock server (the default when no --base-url is given)",
    )
    target.add_argument(
        "--mock-auth", choices=MOCK_AUTH_METHODS,
        help="mock: how the client authenticates, for providers with several methods: "
        "qianfan-v1 takes api_key (default; an access token fetched once) or access_key "
        "(every request signed, bce-auth-v1)",
    )

    request = parser.add_argument_group("request")
    request.add_argument(
        "--provider", choices=list(PROVIDERS), default=DEFAULT_PROVIDER, metavar="NAME",
        help=f"(default {DEFAULT_PROVIDER}) one of: {', '.join(PROVIDERS)}",
    )
    request.add_argument("--model", help="model id (default: the provider's; see llmstreams chat --help)")
    request.add_argument(
        "--endpoint", help="qianfan-v1: the API name of a deployed service, instead of --model"
    )
    prompts = request.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="the prompt every request sends (default: a short question)"
    )
    prompts.add_argument(
        "--prompts", metavar="JSONL", type=Path,
        help="prompts from a batch input file (lines of {\"id\", \"prompt\" or \"messages\", "
        "...}; a line's max_tokens is its output length), sent in turn",
    )
    prompts.add_argument(
        "--sharegpt", metavar="JSON", type=Path,
        help="the first human turn of each ShareGPT conversation, asking for about as many "
        "tokens as its reference answer",
    )
    prompts.add_argument(
        "--random-input-len", metavar="N[,N...]", type=_positive_list,
        help="random prompts of N words (about N tokens) each; a comma list cycles lengths",
    )
    request.add_argument(
        "--max-tokens", metavar="N", type=_positive_int,
        help="output length asked of every request (max_tokens; Qianfan v1: max_output_tokens)",
    )
    request.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=True,
        help="stream the answers (default) or ask for whole answers (each counts as one chunk)",
    )
    request.add_argument(
        "--incremental-output", action=argparse.BooleanOptionalAction, default=True,
        help="DashScope: ask for incremental events (default); --no-incremental-output makes "
        "each event carry the whole text so far",
    )
    request.add_argument(
        "--max-retries", metavar="N", type=_non_negative_int, default=0,
        help="client retries per request (default 0: every failure is counted)",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="PATH", type=Path, help="write the report as JSON")
    output.add_argument(
        "--requests-jsonl", metavar="PATH", type=Path,
        help="write one JSON line per measured request (its run's label, status, ttft_ms, "
        "itl_ms, e2el_ms, chunks, output_tokens)",
    )
    output.add_argument(
        "--plots", metavar="DIR", type=Path,
        help="write PNG plots: latency distributions; throughput and p99 latency against "
        "concurrency and mock workers for a sweep (needs matplotlib: llmstreams[bench])",
    )
    output.add_argument(
        "--percentiles", metavar="P[,P...]", type=_percentile_list, default=PERCENTILES,
        help="percentiles reported (default 50,90,99); e.g. 50,90,99,99.9",
    )
    output.add_argument(
        "--goodput", metavar="METRIC:MS", nargs="+", type=_slo,
        help="SLOs of the good requests counted in request_goodput, e.g. ttft:500 tpot:50 "
        f"({', '.join(SLO_METRICS)}, in milliseconds)",
    )
    output.add_argument(
        "--quiet", action="store_true",
        help="print only the summary table (units under each heading)",
    )
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="bench_command", metavar="{compare}")
    compare = commands.add_parser(
        "compare", help="print two JSON reports side by side, with ratios",
        description="Print the runs of two `llmstreams bench --json` reports side by side, "
        "run by run, with the ratio B/A of every figure.",
    )
    compare.add_argument("first", metavar="A.json", type=Path)
    compare.add_argument("second", metavar="B.json", type=Path)
    compare.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    documents = []
    for path in (args.first, args.second):
        try:
            documents.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            print(f"llmstreams bench compare: cannot read {path}: {error}", file=sys.stderr)
            return 2
    try:
        print(compare_documents(*documents))
    except ValueError as error:
        print(f"llmstreams bench compare: {error}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except (ValueError, BehaviourError, PromptsError, TraceError) as error:
        print(f"llmstreams bench: {error}", file=sys.stderr)
        return 2
    if args.plots is not None:
        from llmstreams.bench.plots import PlotsUnavailable, pyplot

        try:
            pyplot()
        except PlotsUnavailable as error:
            print(f"llmstreams bench: {error}", file=sys.stderr)
            return 2
    notice = missing_uvloop_notice() if config.event_loop == "asyncio" else None
    if notice is not None:
        print(f"llmstreams bench: {notice}", file=sys.stderr)
    print(_describe_target(config), flush=True)
    if unpaced_mock(config):
        print(f"llmstreams bench: {UNPACED_NOTICE}", file=sys.stderr, flush=True)
    try:
        results = run_on(
            config.event_loop,
            run_benchmark(config, on_run=None if args.quiet else _print_result),
            kernel_clock=config.chunk_clock == "kernel",
        )
    except LLMStreamsError as error:
        print(f"llmstreams bench: {error}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, TimeoutError) as error:
        print(f"llmstreams bench: the benchmark failed: {error}", file=sys.stderr)
        return 1
    summaries = [result.summary for result in results]
    print(format_table(summaries))
    if args.json is not None:
        write_json(report_document(summaries, config=config.to_json(), env=environment()), args.json)
        print(f"JSON report: {args.json}")
    if args.requests_jsonl is not None:
        args.requests_jsonl.parent.mkdir(parents=True, exist_ok=True)
        with args.requests_jsonl.open("w", encoding="utf-8") as output:
            count = write_request_lines(_labelled(results), output)
        print(f"{count} requests: {args.requests_jsonl}")
    if args.plots is not None:
        from llmstreams.bench.plots import write_plots

        for path in write_plots([(r.summary, r.records) for r in results], args.plots):
            print(f"plot: {path}")
    return 0


def _config(args: argparse.Namespace) -> BenchConfig:
    provider = provider_named(args.provider)
    if args.endpoint is not None and not provider.takes_endpoint:
        raise ValueError(f"--endpoint is for --provider qianfan-v1; {provider.name} takes --model")
    if args.endpoint is not None and args.model is not None:
        raise ValueError("give --model or --endpoint, not both")
    if args.mock and args.base_url is not None:
        raise ValueError("give --mock or --base-url, not both")
    if args.base_url is not None and args.model is None and provider.default_model is None:
        raise ValueError(f"--provider {provider.name} with --base-url needs --model (a model the server serves)")
    if args.mock_auth is not None and args.mock_auth not in provider.mock_credentials:
        raise ValueError(
            f"--mock-auth: {provider.name} authenticates with {', '.join(provider.mock_credentials)}"
        )
    open_loop = args.rate is not None or args.trace is not None
    if args.burstiness != (1.0,) and args.rate is None:
        raise ValueError("--burstiness shapes the arrivals of --rate; give a rate")
    requests = args.requests
    if requests is None and args.duration is None and args.trace is None:
        requests = DEFAULT_REQUESTS
    knobs = _knobs(args)
    if args.base_url is not None and knobs:
        raise ValueError("mock knobs apply to the mock server only, not to --base-url")
    workload = Workload(
        provider=args.provider,
        model=args.model,
        endpoint=args.endpoint,
        prompt=args.prompt,
        stream=args.stream,
        incremental_output=args.incremental_output,
        prompts=_prompts(args, requests),
        max_tokens=args.max_tokens,
    )
    concurrencies: tuple[int | None, ...] = args.concurrency or (
        (None,) if open_loop else _positive_list(DEFAULT_CONCURRENCY)
    )
    return BenchConfig(
        workload=workload,
        concurrencies=concurrencies,
        rates=args.rate or (None,),
        burstiness=args.burstiness,
        ramp_up=args.ramp_up,
        trace=None if args.trace is None else read_trace(args.trace),
        requests=requests,
        duration=args.duration,
        warmup=args.warmup,
        seed=args.seed,
        base_url=args.base_url,
        mock_workers=args.mock_workers,
        knobs=knobs,
        max_retries=args.max_retries,
        mock_auth=args.mock_auth,
        percentiles=args.percentiles,
        slos=dict(args.goodput or ()),
        processes=args.processes,
        event_loop=args.event_loop,
        chunk_clock=args.chunk_clock,
    )


def _prompts(args: argparse.Namespace, requests: int | None) -> tuple[Prompt, ...]:
    if args.prompts is not None:
        return from_batch_jsonl(args.prompts)
    if args.sharegpt is not None:
        return from_sharegpt(args.sharegpt)
    if args.random_input_len is not None:
        count = max(requests or 0, RANDOM_PROMPTS)
        return random_prompts(args.random_input_len, count, seed=args.seed)
    return ()


def _knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The mock knobs given, checked by the mock's own rules, as typed values."""
    texts = [(name, getattr(args, name)) for name, _ in _KNOB_FLAGS if getattr(args, name) is not None]
    texts += args.mock_knob
    behaviour = with_knobs(Behaviour(), texts)
    return {name: getattr(behaviour, name) for name, _ in texts}


def _describe_target(config: BenchConfig) -> str:
    if config.base_url is not None:
        return f"llmstreams bench: {config.workload.provider} at {_without_userinfo(config.base_url)}"
    workers = ", ".join(str(count) for count in config.mock_workers)
    knobs = ", ".join(f"{name}={value}" for name, value in config.knobs.items()) or "defaults"
    return (
        f"llmstreams bench: {config.workload.provider} against the mock "
        f"({workers} worker process(es); knobs: {knobs})"
    )


def unpaced_mock(config: BenchConfig) -> bool:
    """Whether the target is the mock writing every answer as fast as it can."""
    return config.base_url is None and not config.knobs.get("chunks_per_second")


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _print_result(result: RunResult) -> None:
    print_run(result.summary)


def _labelled(results: list[RunResult]) -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
    return [(result.summary.label, result.records) for result in results]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _rate_list(text: str) -> tuple[float, ...]:
    return _float_list(text, _positive_float)


def _burstiness_list(text: str) -> tuple[float, ...]:
    return _float_list(text, _positive_float)


def _percentile_list(text: str) -> tuple[float, ...]:
    def one(part: str) -> float:
        value = float(part)
        if not 0 < value < 100:
            raise argparse.ArgumentTypeError(f"a percentile is between 0 and 100, got {part}")
        return value

    return tuple(sorted(set(_float_list(text, one))))


def _float_list(text: str, parse: Callable[[str], float]) -> tuple[float, ...]:
    values = tuple(parse(part.strip()) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}")
    return values


def _slo(text: str) -> tuple[str, float]:
    metric, colon, value = text.partition(":")
    if not colon or metric not in SLO_METRICS:
        raise argparse.ArgumentTypeError(
            f"expected METRIC:MILLISECONDS with METRIC one of {', '.join(SLO_METRICS)}, got {text!r}"
        )
    return metric, _positive_float(value)


def _positive_list(text: str) -> tuple[int, ...]:
    return _int_list(text, _positive_int)


def _worker_list(text: str) -> tuple[int, ...]:
    return _int_list(text, _non_negative_int)


def _int_list(text: str, parse: Callable[[str], int]) -> tuple[int, ...]:
    values = tuple(parse(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}")
    return values


def _knob(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return name.strip(), value
