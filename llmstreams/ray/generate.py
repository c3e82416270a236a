"""`Generate`: the callable class that runs batch requests inside Ray Data's actors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import attrs
import pyarrow

import llmstreams
from llmstreams import providers
from llmstreams.batch import (
    INPUT_ERROR,
    BatchRequest,
    InputProblem,
    Target,
    parse_item,
    parse_line,
    problem_record,
    result_record,
)
from llmstreams.calls import PromptAs
from llmstreams.fanout import Outcome, run_job
from llmstreams.ratelimit import Limiter, RateLimit
from llmstreams.validation import check_int

DEFAULT_CONCURRENCY = 64

# The result columns of a request-schema dataset, in order; every row has every column.
RESULT_COLUMNS = (
    "id", "text", "reasoning", "usage", "finish_reason", "request_id", "chunks", "attempts",
    "time_to_first_chunk", "elapsed", "partial_text", "error_type", "error_code",
    "error_http_status", "error_message", "error_retryable", "error_field", "error_request_id",
)
_RECORD_FIELDS = (
    "id", "text", "usage", "finish_reason", "request_id", "chunks", "attempts",
    "time_to_first_chunk", "elapsed", "partial_text",
)
_ERROR_FIELDS = ("type", "code", "http_status", "message", "retryable", "field", "request_id")
_USAGE = pyarrow.struct(
    [(name, pyarrow.int64()) for name in ("prompt_tokens", "completion_tokens", "total_tokens")]
)
# Types of the columns after `id` (whose type is the input's).
RESULT_TYPES = {
    "text": pyarrow.string(), "reasoning": pyarrow.string(), "usage": _USAGE,
    "finish_reason": pyarrow.string(), "request_id": pyarrow.string(), "chunks": pyarrow.int64(),
    "attempts": pyarrow.int64(), "time_to_first_chunk": pyarrow.float64(),
    "elapsed": pyarrow.float64(), "partial_text": pyarrow.string(),
    "error_type": pyarrow.string(), "error_code": pyarrow.string(),
    "error_http_status": pyarrow.int64(), "error_message": pyarrow.string(),
    "error_retryable": pyarrow.bool_(), "error_field": pyarrow.string(),
    "error_request_id": pyarrow.string(),
}
RESULT_JSON_COLUMN = "result"


def _as_dict(values: Mapping[str, str]) -> dict[str, str]:
    return dict(values)


@attrs.frozen(slots=True, repr=False)
class Secrets:
    """Client keyword arguments that are secrets (`api_key`, `secret_key`, ...).

    Their names are shown, never their values: not by repr, not in Ray's task and actor names.
    Ray pickles them with the actor's constructor arguments into its object store, which holds
    data, not the text its logs and dashboard show.
    """

    values: Mapping[str, str] = attrs.field(converter=_as_dict)

    def __repr__(self) -> str:
        return f"<Secrets {', '.join(sorted(self.values)) or 'none'}>"


def columns_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A result record of the batch command (`result_record`, `problem_record`) as one row of
    `RESULT_COLUMNS`: the error's fields become `error_*` columns, absent values None.
    `error_code` is text, since vendors' codes are numbers or strings."""
    row = {name: record.get(name) for name in _RECORD_FIELDS}
    row["reasoning"] = record.get("reasoning", "" if "text" in record else None)
    error: Mapping[str, Any] = record.get("error") or {}
    for name in _ERROR_FIELDS:
        row[f"error_{name}"] = error.get(name)
    if row["error_code"] is not None:
        row["error_code"] = str(row["error_code"])
    return {name: row[name] for name in RESULT_COLUMNS}


def result_table(rows: list[dict[str, Any]]) -> pyarrow.Table:
    """Rows of `RESULT_COLUMNS` as a table with the same column types whatever the values (a
    batch without errors still has typed, all-null error columns)."""
    arrays = [pyarrow.array([row["id"] for row in rows])]
    arrays += [
        pyarrow.array([row[name] for row in rows], type=kind) for name, kind in RESULT_TYPES.items()
    ]
    return pyarrow.Table.from_arrays(arrays, names=list(RESULT_COLUMNS))


def without_nulls(value: Any) -> Any:
    """A table row as the JSON object it stands for: a null field is an absent key."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


class Generate:
    """Streams one generation per row of a `ray.data.Dataset`; use with `map_batches`.

        results = dataset.map_batches(
            Generate, fn_constructor_args=("dashscope",),
            fn_constructor_kwargs={"model": "qwen-turbo", "concurrency": 64},
            batch_size=256, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=4, max_concurrent_calls_per_actor=4),
        )

    Each actor holds one `Pool` and one client, and streams at most `concurrency` generations
    at once, over every batch it is given. Rows are in the batch command's request schema:
    `id`, `prompt` or `messages`, and any parameter of the client method as a column (a null is
    an absent parameter). Results have `RESULT_COLUMNS`; a failure is a row with its `error_*`
    columns (and the text streamed before it in `partial_text`), never a failed Ray task, unless
    `fail_fast` is set: then the first failure raises.

    With `json_column`, each row's request is instead the JSON text of an input line of
    `llmstreams batch` in that column (its line number in the column `line`), and each result is
    the JSON text of the batch command's result line, in the column `result`: what
    `llmstreams batch --ray` runs, since a JSON line may mix types (string and integer ids)
    that a table column cannot.

    Credentials: `credentials` (the client's keyword arguments, kept in `Secrets`), else the
    environment of the worker. `rate_limit` holds each actor (give each its share of a budget:
    `shared_out`); `rate_limiter` shares one limiter, e.g. a `ClusterRateLimiter`, across all.
    """

    def __init__(
        self,
        provider: str,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        base_url: str | None = None,
        prompt_as: PromptAs | None = None,
        credentials: Mapping[str, str] | Secrets | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_retries: int | None = None,
        timeout: llmstreams.Timeout | None = None,
        rate_limit: RateLimit | None = None,
        rate_limiter: Limiter | None = None,
        fail_fast: bool = False,
        json_column: str | None = None,
    ) -> None:
        registered = providers.get(provider)
        model = model if model is not None or endpoint is not None else registered.default_model
        if model is None and endpoint is None:
            raise llmstreams.InvalidParameterError(
                "model", f"give model= ({registered.name} has no default model)"
            )
        check_int("concurrency", concurrency, low=1)
        self.provider = provider
        self.model = model
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.fail_fast = fail_fast
        self.json_column = json_column
        secrets = Secrets(credentials) if isinstance(credentials, Mapping) else credentials
        # Made here, so that missing credentials fail the actor at its start; the pool opens
        # its session on first use, in the event loop Ray runs the calls in.
        pool = llmstreams.Pool(
            max_retries=max_retries, timeout=timeout, rate_limit=rate_limit, rate_limiter=rate_limiter
        )
        client = registered.client(
            pool=pool, base_url=base_url, **({} if secrets is None else secrets.values)
        )
        self._target = Target(client, model=model, endpoint=endpoint, prompt_as=prompt_as)
        self._slots = asyncio.Semaphore(concurrency)

    def __repr__(self) -> str:
        what = f"model={self.model!r}" if self.model is not None else f"endpoint={self.endpoint!r}"
        return f"<Generate {self.provider} {what} concurrency={self.concurrency}>"

    async def __call__(self, batch: pyarrow.Table) -> pyarrow.Table | dict[str, list[Any]]:
        rows: list[dict[str, Any]] = batch.to_pylist()
        if self.json_column is not None:
            parsed = [
                parse_line(row.get("line") or 0, row[self.json_column].encode()) for row in rows
            ]
        else:
            parsed = [parse_item(0, without_nulls(row)) for row in rows]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._result(item)) for item in parsed]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        records = [task.result() for task in tasks]
        if self.json_column is not None:
            # ASCII: a lone surrogate (from a \ud800-style escape in the input) is valid JSON
            # text only escaped, and an Arrow string must be valid UTF-8.
            return {RESULT_JSON_COLUMN: [json.dumps(record) for record in records]}
        return result_table([columns_of(record) for record in records])

    async def _result(self, parsed: BatchRequest | InputProblem | None) -> dict[str, Any]:
        if parsed is None:
            parsed = InputProblem(0, "is blank")
        if isinstance(parsed, InputProblem):
            if self.json_column is not None:
                return problem_record(parsed)
            return {"id": parsed.id, "error": {"type": INPUT_ERROR, "message": parsed.message}}
        async with self._slots:
            outcome: Outcome = await run_job(0, self._target.job(parsed))
        if self.fail_fast and outcome.error is not None:
            outcome.error.add_note(f"raised for the request with id {parsed.id!r} (fail_fast=True)")
            raise outcome.error
        return result_record(parsed, outcome)
