"""Batch generation: one request per line of a JSONL file, one result line per request.

Input lines are `{"id": ..., "prompt": "..."}` or `{"id": ..., "messages": [...]}`; any other
key is a parameter of the client method (`temperature`, `stop`, `extra_headers`, ...). An id
is a string or an integer; blank lines are skipped. Each line becomes a `Call` the client
sends in its own API (`stream_call`): a prompt goes to a chat model as its one user message,
and to a completions API only where the provider or model takes one (Qianfan v1's
completion models, a generic OpenAI-compatible server), unless `prompt_as` says otherwise.

Results are appended as they finish, each line with a single write, so a killed process leaves
at most one partial last line, which the next run moves aside (to OUTPUT.partial). By default a
run resumes: the ids already in the output are skipped. `overwrite` starts the output afresh;
`retry_errors` keeps the successful results and runs the failed ids again. An output that holds
something a batch did not write is refused, unless `overwrite` (see `load_previous`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import stat
import tempfile
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TextIO

import attrs

import llmstreams
from llmstreams.calls import Call, PromptAs
from llmstreams.client import BaseClient
from llmstreams.errors import LLMStreamsError, snippet
from llmstreams.fanout import FanOutStats, Job, Outcome, fan_out_as_completed
from llmstreams.outputlock import OutputLock
from llmstreams.progress import Progress

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

Mode = Literal["resume", "overwrite", "retry_errors"]

RequestId = str | int
IdKey = tuple[str, str | int]

INPUT_ERROR = "InputError"
# When the first this-many results of a run all failed with the same setup error, the rest
# would fail the same way: the run stops (unless told to keep going).
FAIL_FAST_AFTER = 10
# Errors that say the batch's setup is wrong (key, permission, model), not one request.
_SETUP_ERROR_TYPES = frozenset({"AuthenticationError", "PermissionDeniedError", "NotFoundError"})
_SETUP_FIELDS = frozenset({"model", "endpoint"})
# Errors that sending the same request again cannot fix: the request itself is wrong (its
# input line, its parameters) or its content is refused.
_NOT_FIXED_BY_RETRY = frozenset({
    INPUT_ERROR, "InvalidParameterError", "UsageError", "InvalidRequestError",
    "ContentFilterError",
})
_CONTENT_KEYS = ("prompt", "messages")
_SET_BY_COMMAND = ("model", "endpoint")


def id_key(value: object) -> IdKey | None:
    """How an id is compared (the string "7" and the integer 7 are different ids)."""
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, int) and not isinstance(value, bool):
        return ("int", value)
    return None


@attrs.frozen(slots=True)
class BatchRequest:
    """One valid input line. `prompt` and `messages` are as given (exactly one is set); the
    client checks them when the request is made."""

    id: RequestId
    line: int
    prompt: Any
    messages: Any
    params: Mapping[str, Any]


@attrs.frozen(slots=True)
class InputProblem:
    """An input line that is not a request; `id` when the line had a usable one."""

    line: int
    message: str
    id: RequestId | None = None


def parse_line(line_number: int, raw: bytes) -> BatchRequest | InputProblem | None:
    """The request on one input line; None for a blank line."""
    if not raw.strip():
        return None
    try:
        item = json.loads(raw)
    except UnicodeDecodeError:
        return InputProblem(line_number, "not UTF-8 text")
    except json.JSONDecodeError as error:
        # Some of json's messages end in "at" ("Invalid control character at"): one "at" is enough.
        reason = error.msg.removesuffix(" at")
        return InputProblem(line_number, f"not valid JSON ({reason} at column {error.colno})")
    except ValueError as error:
        # JSON, but beyond what Python reads: an integer of more than 4,300 digits.
        return InputProblem(line_number, f"not usable JSON ({str(error)[:100]})")
    except RecursionError:
        return InputProblem(line_number, "not usable JSON (nested too deeply)")
    return parse_item(line_number, item)


def parse_item(line_number: int, item: object) -> BatchRequest | InputProblem:
    """The request in one decoded input record (a JSON line, or a row of a table)."""
    if not isinstance(item, dict):
        return InputProblem(line_number, f"must be a JSON object, not {type(item).__name__}")
    item = dict(item)
    if "id" not in item:
        return InputProblem(line_number, 'has no "id"')
    request_id = item.pop("id")
    if id_key(request_id) is None:
        return InputProblem(
            line_number, f'"id" must be a string or an integer, got {_json_excerpt(request_id)}'
        )
    given = [key for key in _CONTENT_KEYS if item.get(key) is not None]
    if len(given) != 1:
        rule = 'has both "prompt" and' if given else 'has neither "prompt" nor'
        return InputProblem(line_number, f'{rule} "messages" (give one)', request_id)
    overridden = [key for key in _SET_BY_COMMAND if key in item]
    if overridden:
        return InputProblem(
            line_number, f'"{overridden[0]}" is set for the whole batch on the command line',
            request_id,
        )
    prompt, messages = item.pop("prompt", None), item.pop("messages", None)
    return BatchRequest(request_id, line_number, prompt, messages, item)


def _json_excerpt(value: object) -> str:
    """`value` as short JSON for a message; its type's name if it cannot be shown."""
    try:
        return snippet(json.dumps(value, ensure_ascii=False), 60)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) for each line of `path`."""
    with path.open("rb") as source:
        yield from enumerate(source, start=1)


@attrs.frozen(slots=True)
class Classified:
    """What to do with one non-blank input line."""

    action: Literal["run", "problem", "duplicate", "done"]
    line: int
    request: BatchRequest | None = None
    problem: InputProblem | None = None
    first_line: int | None = None
    succeeded_before: bool = False


def classify(path: Path, done: Mapping[IdKey, bool]) -> Iterator[Classified]:
    """Each non-blank input line with its fate. The first line with an id wins; later lines
    with the same id are duplicates. Ids in `done` already have a result line."""
    parsed = (parse_line(line_number, raw) for line_number, raw in read_lines(path))
    return classify_parsed((item for item in parsed if item is not None), done)


def classify_parsed(
    parsed_items: Iterable[BatchRequest | InputProblem], done: Mapping[IdKey, bool]
) -> Iterator[Classified]:
    """`classify` over input records already parsed (`parse_line`, `parse_item`)."""
    first_lines: dict[IdKey, int] = {}
    for parsed in parsed_items:
        line_number = parsed.line
        key = id_key(parsed.id)
        if key is not None:
            if key in first_lines:
                yield Classified("duplicate", line_number, first_line=first_lines[key])
                continue
            first_lines[key] = line_number
            if key in done:
                yield Classified("done", line_number, succeeded_before=done[key])
                continue
        if isinstance(parsed, InputProblem):
            yield Classified("problem", line_number, problem=parsed)
        else:
            yield Classified("run", line_number, request=parsed)


def parse_result(raw: bytes) -> tuple[IdKey, dict[str, Any]] | None:
    """The id and record of an llmstreams result line; None for any other line.

    A result line (what `result_record` and `problem_record` write) is a JSON object with an
    "id" that is a string or an integer, and either a "text" string and an "attempts" integer
    (an answer), or an "error" object with a "type" string and a "message" string (a failed
    request, or an input line that is not a request).
    """
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    key = id_key(record.get("id"))
    if key is None or not (_is_answer(record) or _is_failure(record.get("error"))):
        return None
    return key, record


def _is_answer(record: Mapping[str, Any]) -> bool:
    attempts = record.get("attempts")
    return (
        isinstance(record.get("text"), str)
        and isinstance(attempts, int) and not isinstance(attempts, bool)
    )


def _is_failure(error: object) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("type"), str) and isinstance(error.get("message"), str)
    )


# Every result line starts so (`json.dumps` of a record whose first key is "id"): an unfinished
# last line of ours is a prefix of this or starts with it.
RESULT_LINE_START = b'{"id": '
PARTIAL_SUFFIX = ".partial"


def partial_path(output: Path) -> Path:
    """Where the unfinished end of an interrupted run is moved: beside OUTPUT, named
    OUTPUT.partial (a file for JSONL output, a directory for Parquet parts)."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def looks_unfinished(tail: bytes) -> bool:
    """Whether `tail`, the bytes after the last newline, can be a result line cut short."""
    return tail.startswith(RESULT_LINE_START) or RESULT_LINE_START.startswith(tail)


class ForeignOutputError(LLMStreamsError):
    """OUTPUT holds something an llmstreams batch did not write; refused before anything in it
    was changed or any request was sent."""

    hint = "Choose another OUTPUT, or add --overwrite to replace what it holds"

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}, so it is not the output of an earlier batch run")
        self.path = path


def setup_error(error: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """For the `error` of a result line that says the setup is wrong (bad key, no permission,
    unknown model), what identifies it (type, code, field); None for any other error."""
    kind = error.get("type")
    if kind in _SETUP_ERROR_TYPES or (
        kind == "InvalidParameterError" and error.get("field") in _SETUP_FIELDS
    ):
        return (kind, error.get("code"), error.get("field"))
    return None


def retry_may_fix(error_type: str) -> bool:
    """Whether a request that failed with an error of this type may succeed when sent again
    unchanged (not an error of its input, parameters, content or the batch's setup)."""
    return error_type not in _NOT_FIXED_BY_RETRY and error_type not in _SETUP_ERROR_TYPES


@attrs.frozen(slots=True)
class PreviousResults:
    """What an earlier run left in the output: id -> whether it succeeded.

    `moved_bytes`: what an interrupted run left half-written, moved out of the output into the
    file or directory `moved_to` (`partial_path`). `setup_errors`: failed ids dropped from the
    output to run again, since their error was about the setup (which may have been fixed
    since).
    """

    done: dict[IdKey, bool]
    unreadable_lines: list[int]
    moved_bytes: int = 0
    moved_to: Path | None = None
    setup_errors: int = 0


def load_previous(path: Path, mode: Mode) -> PreviousResults:
    """Prepare the output for this run: check it is ours, repair it, read what is done.

    `overwrite` empties it, whatever it holds. Otherwise it must be empty (blank lines at
    most) or hold at least one result line (`parse_result`), or `ForeignOutputError` is raised
    before anything is changed. Lines between results that are not results are reported and
    kept, never used. After the last newline there may be:
    - a whole result without its newline: kept (the newline is added), its request was paid for;
    - the start of a result line (`looks_unfinished`), after at least one result: a write cut
      short by a killed run, appended with a newline to `partial_path` and cut from the output;
    - anything else: `ForeignOutputError`.

    `retry_errors` drops every error line, so that those ids run again; any other run drops the
    lines of setup errors (`setup_error`). When a line is dropped the output is rewritten
    atomically, via a temporary file beside the real file, with its mode (a symlinked output
    stays a symlink).
    """
    if mode == "overwrite" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return PreviousResults({}, [])
    done: dict[IdKey, bool] = {}
    unreadable: list[int] = []
    kept: list[bytes] = []
    results = dropped = setup_errors = 0
    whole_size = 0
    tail = b""
    for line_number, raw in read_lines(path):
        if not raw.endswith(b"\n"):
            if parse_result(raw) is None:
                tail = raw
                break
            raw += b"\n"
        whole_size += len(raw)
        result = parse_result(raw)
        if result is None:
            if raw.strip():
                unreadable.append(line_number)
            kept.append(raw)
            continue
        results += 1
        key, record = result
        error = record.get("error")
        succeeded = not isinstance(error, dict)
        if isinstance(error, dict) and (mode == "retry_errors" or setup_error(error) is not None):
            dropped += 1
            setup_errors += mode != "retry_errors"
            continue
        done[key] = succeeded
        kept.append(raw)
    if not results and (unreadable or tail.strip()):
        raise ForeignOutputError(path, "holds no llmstreams result lines")
    if tail and not looks_unfinished(tail):
        raise ForeignOutputError(
            path, f"ends with {len(tail)} bytes after its last newline that are not a result line"
        )
    moved_to = _move_aside(path, tail) if tail else None
    if dropped:
        _replace_contents(path, kept)
    elif path.stat().st_size != whole_size:
        _fit_to(path, whole_size)
    return PreviousResults(done, unreadable, len(tail), moved_to, setup_errors)


def _move_aside(path: Path, tail: bytes) -> Path:
    """Append the unfinished last line `tail` of the output at `path`, and a newline, to its
    `partial_path`, written through before the output is cut."""
    sidecar = partial_path(path)
    with sidecar.open("ab") as partial:
        partial.write(tail + b"\n")
        partial.flush()
        os.fsync(partial.fileno())
    return sidecar


def _fit_to(path: Path, size: int) -> None:
    """Cut the output at `path` to `size` bytes, or add the newline its last line lacks."""
    with path.open("r+b") as output:
        if output.seek(0, os.SEEK_END) < size:
            output.write(b"\n")
        else:
            output.truncate(size)


def _replace_contents(path: Path, lines: list[bytes]) -> None:
    """Atomically give the file at `path` (a symlink's target) these lines, keeping its mode."""
    real = Path(os.path.realpath(path))
    mode = stat.S_IMODE(real.stat().st_mode)
    descriptor, temporary = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as output:
            output.writelines(lines)
        os.chmod(temporary, mode)
        os.replace(temporary, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class OutputFileError(LLMStreamsError):
    """The output file cannot be used (a directory, or in one that cannot be written); raised
    before any request was sent."""

    hint = "Choose an OUTPUT file in a directory you can write"

    def __init__(self, path: Path, error: OSError, *, action: str = "cannot use") -> None:
        cause = error.strerror or str(error) or type(error).__name__
        super().__init__(f"{action} {path}: {cause}")
        self.path = path


class OutputWriteError(OutputFileError):
    """Writing results failed (disk full, file size limit, I/O error)."""

    hint = (
        "Every result written before is kept: free space (or fix the cause) and run the same "
        "command again to resume"
    )

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(path, error, action="cannot write results to")


class ResultWriter:
    """Appends result lines, each with one write() of the whole line, straight to the OS.

    Unbuffered on purpose: a line is in the kernel's hands as soon as `write` returns, so it
    survives the process being killed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines_written = 0

    def __repr__(self) -> str:
        return f"<ResultWriter {str(self.path)!r} lines_written={self.lines_written}>"

    def write(self, record: Mapping[str, Any]) -> None:
        try:
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        except UnicodeEncodeError:
            # A lone surrogate (from a \ud800-style escape in the input): only escapes can carry it.
            data = (json.dumps(record) + "\n").encode()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as error:
            raise OutputWriteError(self.path, error) from None
        self.lines_written += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _usage(usage: llmstreams.Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def result_record(request: BatchRequest, outcome: Outcome) -> dict[str, Any]:
    """The output line for a request: its answer, or its error (type, code, message)."""
    timings = {
        "attempts": outcome.attempts,
        "time_to_first_chunk": _seconds(outcome.time_to_first_chunk),
        "elapsed": _seconds(outcome.elapsed),
    }
    completion = outcome.completion
    if completion is not None:
        return {
            "id": request.id,
            "text": completion.text,
            "usage": _usage(completion.usage),
            "finish_reason": completion.finish_reason,
            "request_id": completion.request_id,
            "chunks": completion.chunk_count,
            **timings,
        } | ({"reasoning": completion.reasoning} if completion.reasoning else {})
    error = outcome.error
    assert error is not None
    details: dict[str, Any] = {"type": type(error).__name__, "message": error.message}
    if isinstance(error, llmstreams.APIError):
        details.update(code=error.code, http_status=error.http_status, retryable=error.retryable)
    if isinstance(error, llmstreams.InvalidParameterError):
        details["field"] = error.field
    if error.request_id:
        details["request_id"] = error.request_id
    record: dict[str, Any] = {"id": request.id, "error": details}
    if error.partial is not None and error.partial.text:
        record["partial_text"] = error.partial.text
    record.update(timings)
    return record


def problem_record(problem: InputProblem) -> dict[str, Any]:
    return {
        "id": problem.id,
        "line": problem.line,
        "error": {"type": INPUT_ERROR, "message": f"input line {problem.line}: {problem.message}"},
    }


@attrs.frozen(slots=True)
class Target:
    """Where the requests go: a client, the model (or Qianfan v1 endpoint) for all of them, and
    how a bare prompt is sent (None: as the client decides for the model)."""

    client: BaseClient
    model: str | None = None
    endpoint: str | None = None
    prompt_as: PromptAs | None = None

    def job(self, request: BatchRequest) -> Job:
        """The fan-out job sending `request`; parameter errors surface as its outcome."""
        client = self.client

        params = dict(request.params)
        max_tokens = params.pop("max_tokens", None)

        def start() -> llmstreams.ChunkStream:
            return client.stream_call(Call(
                prompt=request.prompt, messages=request.messages, model=self.model,
                endpoint=self.endpoint, max_tokens=max_tokens, prompt_as=self.prompt_as,
                params=params,
            ))

        return start


@attrs.define
class BatchSummary:
    """How a batch run went."""

    input_lines: int = 0
    to_run: int = 0
    already_done: int = 0
    already_failed: int = 0
    malformed: int = 0
    duplicates: int = 0
    unreadable_output_lines: int = 0
    moved_bytes: int = 0
    interrupted: bool = False
    stopped_early: str | None = None
    """Why the run stopped before the end: its first results all failed with one setup error."""
    setup_errors_rerun: int = 0
    elapsed: float = 0.0
    stats: FanOutStats = attrs.field(factory=FanOutStats)

    @property
    def not_run(self) -> int:
        return self.to_run - self.stats.requests

    @property
    def exit_code(self) -> int:
        """0: every id of the input has a successful result and every line was usable.
        1: some request failed (now or in an earlier run), or some line was malformed or a
        duplicate. 3: stopped early, since the first requests all failed with the same setup
        error (fix it and run again). 130: interrupted before the end (run again to resume)."""
        if self.interrupted:
            return 130
        if self.stopped_early is not None:
            return 3
        if self.stats.failed or self.already_failed or self.malformed or self.duplicates:
            return 1
        return 0


Reporter = Callable[[str], None]
MAX_REPORTED_PROBLEMS = 20


async def run_batch(
    input_path: Path,
    output_path: Path,
    target: Target,
    *,
    concurrency: int = 64,
    mode: Mode = "resume",
    report: Reporter = print,
    progress_stream: TextIO | None = None,
    handle_signals: bool = False,
    fail_fast: bool = True,
) -> BatchSummary:
    """Run every request of `input_path` not yet in `output_path`; see the module docstring.

    With `fail_fast`, when the first `FAIL_FAST_AFTER` results all fail with the same setup
    error (bad key, no permission, unknown model), the run stops there and says why in
    `summary.stopped_early`; the ids that failed so run again next time.

    `report` receives the messages about the input and output (malformed lines with their
    numbers, duplicates, a repaired output). With `handle_signals`, SIGINT and SIGTERM stop the
    run gracefully (the jobs running are cancelled, every finished result is written); a
    second one cancels at once.
    """
    started = time.perf_counter()
    summary = BatchSummary()
    lock, previous, writer = open_output(output_path, mode)
    try:
        report_previous(output_path, previous, summary, report)
        plan(input_path, classify(input_path, previous.done), writer, summary, report)
        await _run_requests(
            input_path, previous, target, writer, summary,
            concurrency=concurrency, progress_stream=progress_stream,
            handle_signals=handle_signals, fail_fast=fail_fast, report=report,
        )
    finally:
        writer.close()
        lock.release()
        summary.elapsed = time.perf_counter() - started
    return summary


# A failure of these while preparing the output is one of writing (the disk), not of the path.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO})


def lock_output(path: Path) -> OutputLock:
    """The held lock of the output `path` for one run (its directory made if need be).

    Raises `OutputLockedError` when another run holds it, `OutputFileError` when the lock
    cannot be made there.
    """
    lock = OutputLock(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as error:
        raise OutputFileError(path, error) from None
    return lock


def open_output(path: Path, mode: Mode) -> tuple[OutputLock, PreviousResults, ResultWriter]:
    """Lock the output for this run, repair it, read what is done and open it for appending.

    Raises `OutputLockedError` when another run holds it, `OutputFileError` when it cannot be
    used (a directory, a directory that cannot be written) or written.
    """
    if path.is_dir():
        raise OutputFileError(path, IsADirectoryError(errno.EISDIR, "it is a directory"))
    lock = lock_output(path)
    try:
        previous = load_previous(path, mode)
        writer = ResultWriter(path)
    except OSError as error:
        lock.release()
        if error.errno in _WRITE_ERRNOS:
            raise OutputWriteError(path, error) from None
        raise OutputFileError(path, error) from None
    except BaseException:
        lock.release()
        raise
    return lock, previous, writer


class FailFast:
    """Stops a run when its first `FAIL_FAST_AFTER` results all failed with the same setup error
    (and more were to run): that error would only repeat for every id."""

    def __init__(self, summary: BatchSummary) -> None:
        self._summary = summary
        self._first_errors: set[tuple[Any, ...] | None] = set()

    def should_stop(self, record: Mapping[str, Any]) -> bool:
        """Take the result `record` just counted in the summary; True (and the summary's
        `stopped_early` set) when the run should stop."""
        summary = self._summary
        if not summary.stats.requests <= FAIL_FAST_AFTER < summary.to_run:
            return False
        self._first_errors.add(setup_error(record["error"]) if "error" in record else None)
        if summary.stats.requests == FAIL_FAST_AFTER and len(self._first_errors) == 1 > (
            None in self._first_errors
        ):
            summary.stopped_early = _describe_error(record["error"])
            return True
        return False


def _describe_error(error: Mapping[str, Any]) -> str:
    code = f" (code {error['code']})" if error.get("code") is not None else ""
    return f"{error['type']}{code}: {error['message']}"


def _some(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(number) for number in numbers[:limit])
    return shown + (", ..." if len(numbers) > limit else "")


def report_previous(
    output_path: Path, previous: PreviousResults, summary: BatchSummary, report: Reporter
) -> None:
    """Count and report what was repaired or ignored in the output of an earlier run."""
    summary.moved_bytes = previous.moved_bytes
    summary.unreadable_output_lines = len(previous.unreadable_lines)
    summary.setup_errors_rerun = previous.setup_errors
    if previous.moved_bytes:
        report(
            f"{output_path}: moved what an interrupted run left half-written"
            f" ({previous.moved_bytes} bytes) to {previous.moved_to}"
        )
    if previous.setup_errors:
        report(
            f"{output_path}: running again the {previous.setup_errors} ids that failed with an"
            " error about the setup (key, permission, model)"
        )
    if previous.unreadable_lines:
        report(
            f"{output_path}: ignoring {len(previous.unreadable_lines)} lines that are not"
            f" results (lines {_some(previous.unreadable_lines)})"
        )


class RecordWriter(typing.Protocol):
    """Where result records go (`ResultWriter`, or a table format's writer)."""

    def write(self, record: Mapping[str, Any]) -> None: ...


def plan(
    input_path: Path,
    items: Iterable[Classified],
    writer: RecordWriter,
    summary: BatchSummary,
    report: Reporter,
) -> None:
    """First pass over the input: count what will run, report and record the bad lines."""
    reported = 0
    for item in items:
        summary.input_lines += 1
        if item.action == "run":
            summary.to_run += 1
            continue
        if item.action == "done":
            summary.already_done += 1
            summary.already_failed += not item.succeeded_before
            continue
        if item.action == "duplicate":
            summary.duplicates += 1
            message = f"duplicate id (first on line {item.first_line}); skipped"
        else:
            assert item.problem is not None
            summary.malformed += 1
            message = item.problem.message
            if item.problem.id is not None:
                writer.write(problem_record(item.problem))
        if reported < MAX_REPORTED_PROBLEMS:
            report(f"{input_path}:{item.line}: {message}")
        reported += 1
    if reported > MAX_REPORTED_PROBLEMS:
        report(f"{input_path}: ... and {reported - MAX_REPORTED_PROBLEMS} more problems")


# Descriptors a run needs besides one socket per stream: the event loop, files, the mock or
# DNS threads, lazily imported modules.
DESCRIPTOR_MARGIN = 32


def fit_to_descriptors(concurrency: int, report: Reporter) -> int:
    """`concurrency`, if the process may open a socket for each stream; else the soft limit on
    open files is raised as far as the hard limit allows, and what still does not fit lowers
    the concurrency. Each change is reported."""
    if resource is None:  # pragma: no cover - Windows
        return concurrency
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = _descriptors_in_use()
    needed = in_use + concurrency + DESCRIPTOR_MARGIN
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return concurrency
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass
        else:
            report(f"raised the limit on open files from {soft} to {wanted} for {concurrency} streams at once")
            soft = wanted
    if soft >= needed:
        return concurrency
    fitted = max(1, soft - in_use - DESCRIPTOR_MARGIN)
    report(
        f"concurrency lowered from {concurrency} to {fitted}: this process may open only {soft} "
        "files (ulimit -n); raise that limit for more streams at once"
    )
    return fitted


def _descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return DESCRIPTOR_MARGIN


async def _run_requests(
    input_path: Path,
    previous: PreviousResults,
    target: Target,
    writer: ResultWriter,
    summary: BatchSummary,
    *,
    concurrency: int,
    progress_stream: TextIO | None,
    handle_signals: bool,
    fail_fast: bool,
    report: Reporter,
) -> None:
    """Second pass over the input: run the requests, writing each result as it finishes."""
    in_flight: dict[int, BatchRequest] = {}
    stopper = FailFast(summary) if fail_fast else None

    def jobs() -> Iterator[Job]:
        index = 0
        for item in classify(input_path, previous.done):
            if item.action == "run":
                assert item.request is not None
                in_flight[index] = item.request
                index += 1
                yield target.job(item.request)

    if not summary.to_run:
        return
    concurrency = fit_to_descriptors(min(concurrency, summary.to_run), report)
    progress = Progress(summary.to_run, label="batch", stream=progress_stream)
    outcomes = fan_out_as_completed(jobs(), concurrency=concurrency)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if summary.interrupted and main_task is not None:
            main_task.cancel()
        summary.interrupted = True
        outcomes.stop()

    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for number in signals:
        loop.add_signal_handler(number, on_signal)
    try:
        async with outcomes:
            async for outcome in outcomes:
                record = result_record(in_flight.pop(outcome.index), outcome)
                writer.write(record)
                summary.stats.add(outcome)
                progress.advance(failed=not outcome.ok)
                if stopper is not None and stopper.should_stop(record):
                    outcomes.stop()
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        progress.close()
