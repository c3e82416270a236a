"""`llmstreams batch --ray`: the batch command's run, with the requests streamed by Ray actors.

The driver (this process) does what the local batch does around the requests: it reads the
input (JSONL or Parquet), skips the ids already in the output, reports bad lines, writes each
result as it arrives and shows the progress. The requests themselves go to a Ray Data
`map_batches` over `Generate` actors. A batch whose actor dies is run again by Ray Data on
another actor; its results only reach the driver once the whole batch is done, so no id is
written twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import attrs
import ray
import ray.data
import ray.exceptions

from llmstreams.batch import (
    BatchRequest,
    BatchSummary,
    FailFast,
    IdKey,
    InputProblem,
    Mode,
    RecordWriter,
    Reporter,
    ResultWriter,
    classify_parsed,
    id_key,
    load_previous,
    lock_output,
    parse_line,
    plan,
    read_lines,
    report_previous,
)
from llmstreams.calls import PromptAs
from llmstreams.progress import Progress
from llmstreams.ratelimit import RateLimit
from llmstreams.ray.generate import RESULT_JSON_COLUMN, Generate, Secrets
from llmstreams.ray.ratelimit import ClusterRateLimiter, shared_out
from llmstreams.ray.tables import PartWriter, is_parquet, load_previous_parts, read_parquet_requests

# Batches an actor works on at once: the next is ready when the slowest rows of one finish.
CALLS_PER_ACTOR = 2


@attrs.frozen(slots=True)
class RayJob:
    """How the requests run: on which cluster, with how many actors, sent where and how."""

    provider: str
    model: str | None = None
    endpoint: str | None = None
    base_url: str | None = None
    prompt_as: PromptAs | None = None
    credentials: Secrets | None = None
    address: str | None = None
    actors: int = 2
    concurrency: int = 16
    max_retries: int | None = None
    rate_limit: RateLimit | None = None


class MixedIdsError(ValueError):
    """Parquet output asked for ids of more than one type (strings and integers)."""


def connect(address: str | None) -> bool:
    """Join the cluster at `address` ("local": start a local Ray, whatever RAY_ADDRESS says;
    None: RAY_ADDRESS's cluster, else a local Ray; "auto": RAY_ADDRESS's cluster, else the one
    `ray start` started on this machine; "host:port": the cluster whose head that is); True if
    this call started it."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address in (None, "local"):
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except ConnectionError as error:
        if not _refused_for_its_token(error):
            raise
        if address in (None, "auto"):
            address = os.environ.get("RAY_ADDRESS") or address
        raise ConnectionError(
            f"the Ray cluster at {address} wants its token: set RAY_AUTH_MODE=token, and the "
            "cluster's token in RAY_AUTH_TOKEN or in the file RAY_AUTH_TOKEN_PATH names "
            "(by default ~/.ray/auth_token)"
        ) from error
    return True


def _refused_for_its_token(error: BaseException) -> bool:
    # Ray keeps the AuthenticationError of its last attempt only as text, in the message of the
    # RuntimeError its ConnectionError comes from.
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ray.exceptions.AuthenticationError) or (
            "ray.exceptions.AuthenticationError" in str(cause)
        ):
            return True
        cause = cause.__cause__
    return False


@contextlib.contextmanager
def interrupt_requests() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) while the block runs: raise KeyboardInterrupt, as Python does, and set
    the Event this yields.

    Ray runs finalizers of its own objects in the driver's thread, and a KeyboardInterrupt
    raised inside a finalizer is printed and dropped: the batch would then run to its end and
    report success. The Event keeps the request. The handler is set even where SIGINT was
    ignored when the process started (a command started by a script in the background), as
    the local batch does; the previous one is restored after. Outside the main thread, where
    no signal handler can be set, the Event is never set.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def on_interrupt(number: int, frame: object) -> None:
        requested.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _quiet_data_context() -> None:
    """The driver shows the batch's own progress: Ray Data's bars and notes would garble it."""
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def read_requests(path: Path) -> Iterator[BatchRequest | InputProblem]:
    """The parsed records of a JSONL or Parquet input, blank lines left out."""
    if is_parquet(path):
        yield from read_parquet_requests(path)
        return
    for line_number, raw in read_lines(path):
        parsed = parse_line(line_number, raw)
        if parsed is not None:
            yield parsed


def _request_json(request: BatchRequest) -> str:
    content = {"prompt": request.prompt} if request.messages is None else {"messages": request.messages}
    return json.dumps({"id": request.id, **content, **request.params})


def _tokens(record: Mapping[str, Any]) -> int:
    usage = record.get("usage")
    return int(usage["total_tokens"]) if isinstance(usage, dict) else 0


def run_batch_on_ray(
    input_path: Path,
    output_path: Path,
    job: RayJob,
    *,
    mode: Mode = "resume",
    report: Reporter = print,
    progress_stream: TextIO | None = None,
    fail_fast: bool = True,
) -> BatchSummary:
    """`run_batch` with the requests run by Ray actors; see the module docstring.

    Ctrl-C stops it: every result received is written, the rest runs on the next run.
    `fail_fast` as for `run_batch`; OUTPUT is locked for the run as there.
    """
    lock = lock_output(output_path)
    try:
        return _run_locked(input_path, output_path, job, mode, report, progress_stream, fail_fast)
    finally:
        lock.release()


def _run_locked(
    input_path: Path,
    output_path: Path,
    job: RayJob,
    mode: Mode,
    report: Reporter,
    progress_stream: TextIO | None,
    fail_fast: bool,
) -> BatchSummary:
    started = time.perf_counter()
    summary = BatchSummary()
    parquet_output = is_parquet(output_path)
    previous = (
        load_previous_parts(output_path, mode) if parquet_output else load_previous(output_path, mode)
    )
    report_previous(output_path, previous, summary, report)
    if parquet_output:
        _check_one_id_type(read_requests(input_path), previous.done)
    writer: PartWriter | ResultWriter = (
        PartWriter(output_path) if parquet_output else ResultWriter(output_path)
    )
    try:
        to_run: list[dict[str, Any]] = []
        plan(input_path, _collect(classify_parsed(read_requests(input_path), previous.done), to_run),
             writer, summary, report)
        if to_run:
            _run(to_run, job, writer, summary, progress_stream, FailFast(summary) if fail_fast else None)
    finally:
        writer.close()
        summary.elapsed = time.perf_counter() - started
    return summary


def _collect(items: Iterable[Any], to_run: list[dict[str, Any]]) -> Iterator[Any]:
    """Pass `classify` items through, keeping the rows of the requests to run."""
    for item in items:
        if item.action == "run":
            to_run.append({"line": item.line, "request": _request_json(item.request)})
        yield item


def _check_one_id_type(
    parsed: Iterable[BatchRequest | InputProblem], done: Mapping[IdKey, bool]
) -> None:
    kinds = {kind for kind, _ in done}
    for item in parsed:
        key = id_key(item.id)
        if key is not None:
            kinds.add(key[0])
    if len(kinds) > 1:
        raise MixedIdsError(
            "Parquet output needs ids of one type, and these are strings and integers; "
            "write JSONL output instead"
        )


def _run(
    rows: list[dict[str, Any]],
    job: RayJob,
    writer: RecordWriter,
    summary: BatchSummary,
    progress_stream: TextIO | None,
    stopper: FailFast | None,
) -> None:
    started_ray = connect(job.address)
    try:
        _quiet_data_context()
        share = None if job.rate_limit is None else shared_out(job.rate_limit, job.actors)
        limiter = (
            ClusterRateLimiter(job.rate_limit)
            if job.rate_limit is not None and share is None else None
        )
        results = ray.data.from_items(rows).map_batches(
            Generate,
            fn_constructor_args=(job.provider,),
            fn_constructor_kwargs={
                "model": job.model, "endpoint": job.endpoint, "base_url": job.base_url,
                "prompt_as": job.prompt_as,
                "credentials": job.credentials, "concurrency": job.concurrency,
                "max_retries": job.max_retries, "rate_limit": share, "rate_limiter": limiter,
                "json_column": "request",
            },
            batch_size=job.concurrency,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                size=job.actors, max_concurrent_calls_per_actor=CALLS_PER_ACTOR
            ),
        )
        progress = Progress(len(rows), label="batch", stream=progress_stream)
        try:
            with interrupt_requests() as interrupted:
                for row in results.iter_rows():
                    record = json.loads(row[RESULT_JSON_COLUMN])
                    writer.write(record)
                    error = record.get("error")
                    summary.stats.count(
                        error_type=None if error is None else error["type"],
                        attempts=record.get("attempts", 0),
                        chunks=record.get("chunks", 0),
                        tokens=_tokens(record),
                        time_to_first_chunk=record.get("time_to_first_chunk"),
                    )
                    progress.advance(failed=error is not None)
                    if interrupted.is_set():
                        summary.interrupted = True
                        break
                    if stopper is not None and stopper.should_stop(record):
                        break
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            progress.close()
    finally:
        if started_ray:
            ray.shutdown()

