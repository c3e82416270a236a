"""`llmstreams batch`: run every request of a JSONL file, resumably, with a progress bar."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import llmstreams
from llmstreams.batch import (
    FAIL_FAST_AFTER,
    BatchSummary,
    ForeignOutputError,
    OutputFileError,
    OutputWriteError,
    Target,
    retry_may_fix,
    run_batch,
)
from llmstreams.calls import PROMPT_AS
from llmstreams.commands import library_log_level
from llmstreams.commands.target import (
    CommandError,
    add_target_arguments,
    check_target_arguments,
    make_client,
    model_of,
    provider_list,
)
from llmstreams.mock import MockServer
from llmstreams.outputlock import OutputLockedError
from llmstreams.progress import format_duration
from llmstreams.providers import get as provider_named

DEFAULT_CONCURRENCY = 16
EXIT_OUTPUT_WRITE_FAILED = 4
EXIT_OUTPUT_LOCKED = 5
DEFAULT_ACTORS = 2
RAY_INSTALL = "pip install 'llmstreams[ray]'"

DESCRIPTION = """\
Send one request per line of INPUT (JSONL) and append one result line per request to OUTPUT.

Input lines: {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]}, plus any parameter
of the client method ("temperature": 0.5, "stop": [...], "max_tokens": 100). A prompt reaches
a chat model as its one user message; it goes to a completions API only where the provider or
model has one (Qianfan v1's completion models such as CodeLlama-7b-Instruct, --provider
openai), unless --prompt-as says otherwise. Credentials come from each provider's environment
variables (below); --mock sends everything to a local mock server instead.

Providers:
{providers}

Result lines: {"id", "text", "usage", "finish_reason", "request_id", "chunks", "attempts",
"time_to_first_chunk", "elapsed"}, or {"id", "error": {"type", "code", "http_status",
"message", ...}}. Lines are written as requests finish (not in input order).

Resuming: by default the ids already in OUTPUT are skipped, so after a crash or Ctrl-C the same
command carries on where it stopped. --retry-errors runs the failed ids again;
--overwrite starts OUTPUT afresh. A result line cut short by a kill is moved to OUTPUT.partial
(said on stderr), never deleted. OUTPUT must be empty, new, or the output of an earlier run (it
holds result lines, and ends with a whole one or one cut short); anything else is refused
(exit 2) unless --overwrite.

Failing fast: when the first {fail_fast_after} requests all fail with the same error that no
retry fixes (a bad key, no permission, an unknown model), the run stops there rather than
writing that error for every id. Once the cause is fixed, the same command runs those ids again
(no --retry-errors needed). --keep-going runs every request regardless.

On Ray (--ray, needs the ray extra): the same, with the requests streamed by --actors Ray
actors of --concurrency streams each, on a local Ray or a cluster; INPUT and OUTPUT may be
.parquet (OUTPUT a directory of parts, checked and repaired as a JSONL one). See docs/ray.md.

Exit status: 0 when every id of INPUT has a successful result; 1 when some request failed
(in this run or an earlier one) or some input line was malformed or a duplicate; 2 for a usage
error (bad option, missing credentials, unreadable file, OUTPUT a directory or not writable, or
not the output of an earlier run);
3 when the run stopped early (see Failing fast); 4 when writing OUTPUT failed mid-run (disk
full: free space and run again to resume); 5 when another run is writing OUTPUT; 130 when
interrupted.
""".replace("{fail_fast_after}", str(FAIL_FAST_AFTER)).replace("{providers}", provider_list())


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "batch",
        help="run the requests of a JSONL file concurrently, resumably",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, metavar="INPUT.jsonl")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT.jsonl")
    add_target_arguments(parser, default_provider=None)
    parser.add_argument(
        "--prompt-as", choices=PROMPT_AS,
        help="send each line's prompt as one chat message or to the completions API (default: "
        "what the provider and model take)",
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--rps", type=_positive_float, help="at most this many requests per second")
    parser.add_argument("--rpm", type=_positive_float, help="at most this many requests per minute")
    parser.add_argument("--tpm", type=_positive_float, help="at most this many tokens per minute")
    parser.add_argument(
        "--max-retries", type=_non_negative_int,
        help="retries of a request that failed before its first chunk (default 2)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="log each retry (by default only the summary tells how many attempts were made)",
    )
    parser.add_argument(
        "--keep-going", action="store_true",
        help=f"run every request even when the first {FAIL_FAST_AFTER} all fail the same way",
    )
    parser.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="run the requests on Ray actors: a local Ray started for the run without ADDRESS; "
        "'auto' for the cluster of RAY_ADDRESS or the one `ray start` started on this machine; "
        "HOST:6379 for a cluster's head (give INPUT first, or write --ray=ADDRESS). Ray Client "
        "(ray://) is refused: Ray Data does not run through it. INPUT and OUTPUT may then be "
        f".parquet too. Needs the ray extra: {RAY_INSTALL}",
    )
    parser.add_argument(
        "--actors", type=_positive_int, default=DEFAULT_ACTORS,
        help=f"with --ray: actors streaming requests, each with --concurrency in flight "
        f"(default {DEFAULT_ACTORS})",
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--overwrite", action="store_const", dest="mode", const="overwrite",
        help="discard what OUTPUT holds, even if a batch did not write it, and run everything "
        "again (without it, an OUTPUT that is not the output of an earlier run is refused)",
    )
    modes.add_argument(
        "--retry-errors", action="store_const", dest="mode", const="retry_errors",
        help="drop the error lines from OUTPUT and run those ids again",
    )
    parser.set_defaults(func=run, mode="resume")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _ray_client_address(option: str) -> str | None:
    """`--ray=ray://...`, or `RAY_ADDRESS=ray://...` (which Ray reads for `auto`), as said to the
    user; None when Ray is reached some other way."""
    if option == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        return f"RAY_ADDRESS={address}" if "://" in address else None
    return f"--ray={option}" if "://" in option else None


def _usage_error(message: str) -> int:
    print(f"llmstreams batch: error: {message}", file=sys.stderr)
    return 2


def _report(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    problem = check_target_arguments(args)
    if problem is not None:
        return _usage_error(problem)
    if args.mock and args.ray not in (None, "local"):
        return _usage_error("--mock runs on this machine: use it with a local Ray (--ray alone)")
    if args.input.is_dir():
        return _usage_error(f"{args.input}: is a directory, not a JSONL file")
    if not args.input.is_file():
        return _usage_error(f"{args.input}: no such file")
    parquet_parts = args.ray is not None and args.output.suffix.lower() == ".parquet"
    if args.output.is_dir() and not parquet_parts:
        return _usage_error(f"{args.output}: is a directory; give a file name for OUTPUT")
    if args.output.exists() and os.path.samefile(args.output, args.input):
        return _usage_error("OUTPUT must not be INPUT (they are the same file)")
    if args.ray is not None and (client := _ray_client_address(args.ray)) is not None:
        return _usage_error(
            f"{client}: Ray Data does not run through Ray Client (ray://); run this command on "
            "a node of the cluster with --ray=auto, or send it there with "
            "`ray job submit -- llmstreams batch ... --ray=auto`"
        )
    if args.ray is not None and importlib.util.find_spec("ray") is None:
        return _usage_error(f"--ray needs Ray, which is not installed: {RAY_INSTALL}")
    try:
        try:
            with library_log_level(logging.WARNING if args.verbose else logging.ERROR):
                summary = _run_on_ray(args) if args.ray is not None else asyncio.run(_main(args))
        finally:
            # The run is over, only its summary is left to print: a Ctrl-C now (a second one
            # a moment after the first) must not turn a clean exit into a traceback.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
    except CommandError as error:
        print(error.lines("batch"), file=sys.stderr)
        return 2
    except OutputWriteError as error:
        print(f"llmstreams batch: error: {error}", file=sys.stderr)
        return EXIT_OUTPUT_WRITE_FAILED
    except (
        llmstreams.InvalidParameterError, OutputFileError, ForeignOutputError, ValueError,
        ConnectionError,
    ) as error:
        return _usage_error(str(error))
    except OutputLockedError as error:
        print(f"llmstreams batch: error: {error}", file=sys.stderr)
        return EXIT_OUTPUT_LOCKED
    except (KeyboardInterrupt, asyncio.CancelledError):
        # A second Ctrl-C cancels the run at once (see run_batch): the same end as the first.
        _report("interrupted; run the same command again to resume")
        return 130
    print(format_summary(summary, args.input, args.output))
    return summary.exit_code


async def _main(args: argparse.Namespace) -> BatchSummary:
    async with contextlib.AsyncExitStack() as stack:
        mock_url = (await stack.enter_async_context(MockServer())).url if args.mock else None
        pool = await stack.enter_async_context(
            llmstreams.Pool(rate_limit=_rate_limit(args), max_retries=args.max_retries)
        )
        client = make_client(args, pool, mock_url)
        target = Target(client, model=model_of(args), endpoint=args.endpoint, prompt_as=args.prompt_as)
        return await run_batch(
            args.input, args.output, target,
            concurrency=args.concurrency, mode=args.mode, report=_report, handle_signals=True,
            fail_fast=not args.keep_going,
        )


def _rate_limit(args: argparse.Namespace) -> llmstreams.RateLimit | None:
    limits = (args.rps, args.rpm, args.tpm)
    if all(limit is None for limit in limits):
        return None
    return llmstreams.RateLimit(
        requests_per_second=args.rps, requests_per_minute=args.rpm, tokens_per_minute=args.tpm
    )


def _run_on_ray(args: argparse.Namespace) -> BatchSummary:
    from llmstreams.providers import credentials_from_environment
    from llmstreams.ray.batch import RayJob, run_batch_on_ray
    from llmstreams.ray.generate import Secrets
    from llmstreams.sync import run as run_on_loop

    provider = provider_named(args.provider)
    mock = MockServer() if args.mock else None
    try:
        if mock is not None:
            run_on_loop(mock.start())
            base_url: str | None = mock.url + provider.mock_path
            credentials: dict[str, str] | None = dict(next(iter(provider.mock_credentials.values())))
        else:
            base_url = args.base_url
            credentials = credentials_from_environment(provider)
            if credentials is None and args.ray == "local":
                # A local Ray's workers have this environment: without credentials here, say so now.
                make_client(args, llmstreams.Pool(), None)
        job = RayJob(
            provider.name, model=model_of(args), endpoint=args.endpoint, base_url=base_url,
            prompt_as=args.prompt_as, credentials=None if credentials is None else Secrets(credentials),
            address=args.ray, actors=args.actors, concurrency=args.concurrency,
            max_retries=args.max_retries, rate_limit=_rate_limit(args),
        )
        return run_batch_on_ray(
            args.input, args.output, job, mode=args.mode, report=_report,
            fail_fast=not args.keep_going,
        )
    finally:
        if mock is not None:
            run_on_loop(mock.close())


def _per_second(count: int, seconds: float) -> str:
    return f"{count / seconds:,.1f}/s" if seconds > 0 else "-"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def format_summary(summary: BatchSummary, input_path: Path, output_path: Path) -> str:
    stats = summary.stats
    elapsed = summary.elapsed
    problems = []
    if summary.malformed:
        problems.append(f"{summary.malformed} malformed")
    if summary.duplicates:
        plural = "s" if summary.duplicates != 1 else ""
        problems.append(f"{summary.duplicates} duplicate id{plural}")
    errors = _by_type(stats.errors_by_type)
    lines = [
        f"batch {input_path} -> {output_path}",
        f"  input lines          {summary.input_lines:,}"
        + (f" ({', '.join(problems)})" if problems else ""),
        f"  already done         {summary.already_done:,}"
        + (f" ({summary.already_failed:,} of them failed)" if summary.already_failed else ""),
        f"  run now              {stats.requests:,}: {stats.succeeded:,} succeeded, "
        f"{stats.failed:,} failed" + (f" ({errors})" if errors else ""),
        f"  chunks               {stats.chunks:,} ({_per_second(stats.chunks, elapsed)})",
        f"  tokens               {stats.tokens:,}",
        f"  requests             {_per_second(stats.requests, elapsed)}",
        f"  time to first chunk  p50 {_ms(stats.time_to_first_chunk(0.5))}, "
        f"p99 {_ms(stats.time_to_first_chunk(0.99))}",
        "  elapsed              "
        + (f"{elapsed:.2f} s" if elapsed < 60 else format_duration(elapsed)),
    ]
    if summary.interrupted:
        lines.append(
            f"interrupted: {summary.not_run:,} requests not run; "
            "run the same command again to resume"
        )
    elif summary.stopped_early is not None:
        lines.append(
            f"stopped early: the first {FAIL_FAST_AFTER} requests all failed with the same error,"
            f" which no retry fixes:\n  {summary.stopped_early}\n"
            f"{stats.failed:,} requests failed before the run stopped (those in flight finished),"
            f" {summary.not_run:,} not run. Fix the cause and run the same command again"
            " (the failed ids run again too); --keep-going runs every request regardless"
        )
    else:
        lines += failure_advice(stats.errors_by_type, summary.already_failed)
    return "\n".join(lines)


def failure_advice(errors_by_type: Mapping[str, int], failed_before: int) -> list[str]:
    """What to do about the failed requests: --retry-errors for those a retry may fix (and
    those of an earlier run, whose errors are not counted by type); fixing the input first
    for the others."""
    may_fix = {name: count for name, count in errors_by_type.items() if retry_may_fix(name)}
    cannot_fix = {name: count for name, count in errors_by_type.items() if name not in may_fix}
    advice = []
    if may_fix:
        advice.append(
            f"{_count(may_fix)} failed with errors a retry may fix ({_by_type(may_fix)}); "
            "add --retry-errors to run them again"
        )
    if cannot_fix:
        advice.append(
            f"{_count(cannot_fix)} failed with errors a retry cannot fix "
            f"({_by_type(cannot_fix)}); each error line of the output says why: fix the "
            "input or the options, then run again with --retry-errors"
        )
    if failed_before and not may_fix:
        advice.append(
            f"{failed_before:,} failed in an earlier run; add --retry-errors to run them again"
        )
    return advice


def _count(errors: Mapping[str, int]) -> str:
    total = sum(errors.values())
    return f"{total:,} request{'s' if total != 1 else ''}"


def _by_type(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(errors.items()))
