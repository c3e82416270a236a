"""A peer server no one here wrote: `fakellm` (PyPI), a mock OpenAI-compatible server, runs as
its users run it (`fakellm serve`), and llmstreams' `OpenAICompatibleClient` and the official
openai SDK talk to the same process. They must read the same answers and raise the same kinds
of error.

fakellm answers from the rules of its YAML file, first match wins (here: on a phrase of the
messages, or on a request header). What it cannot do, so what is not compared here: it sends no
usage in a stream (it ignores `stream_options`), it answers a stream request with HTTP 200 and
text whatever status its rule sets (so a stream's error comes only from a route it does not
serve), and it has no faults mid-stream.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import openai
import pytest

from llmstreams import (
    APIError,
    AuthenticationError,
    Chunk,
    InvalidRequestError,
    NotFoundError,
    OpenAICompatibleClient,
    PermissionDeniedError,
    Pool,
    RateLimitError,
    RetryPolicy,
    ServerError,
)

pytest.importorskip("fakellm", reason="needs fakellm, a peer server from PyPI: pip install -e '.[test]'")

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# uvicorn's line once it listens; with --port 0 it names the port the system gave it.
RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
MODEL = "gpt-4o-mini"
KEY = "sk-peer-test"
STATUS_HEADER = "X-Peer-Status"
# fakellm streams an answer a word to a chunk, a word every 10 ms.
ANSWER = "Rivers carve valleys, carry silt to the sea, and feed the deltas where cities grow."
TOOL_ARGUMENTS = {"query": "longest river", "limit": 3}
LONG_ANSWER = " ".join(["word"] * 500)
ERRORS: dict[int, tuple[type[openai.APIStatusError], type[APIError]]] = {
    400: (openai.BadRequestError, InvalidRequestError),
    401: (openai.AuthenticationError, AuthenticationError),
    403: (openai.PermissionDeniedError, PermissionDeniedError),
    404: (openai.NotFoundError, NotFoundError),
    429: (openai.RateLimitError, RateLimitError),
    500: (openai.InternalServerError, ServerError),
    503: (openai.InternalServerError, ServerError),
}


def messages(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def fakellm_config() -> dict[str, Any]:
    """fakellm's rules: an error for each status asked for by header, then three answers."""
    errors = [
        {
            "name": f"status-{status}",
            "when": {f"header.{STATUS_HEADER.lower()}": str(status)},
            "respond": {"status": status, "error": f"fakellm answers {status}"},
        }
        for status in ERRORS
    ]
    answers = [
        {"name": "long", "when": {"messages_contain": "at length"}, "respond": {"content": LONG_ANSWER}},
        {
            "name": "tool",
            "when": {"tools_include": "search"},
            "respond": {"tool_calls": [{"name": "search", "arguments": TOOL_ARGUMENTS}]},
        },
        {"name": "rivers", "when": {"messages_contain": "rivers"}, "respond": {"content": ANSWER}},
    ]
    return {"version": 1, "rules": errors + answers}


def _forward_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Every line of `stream` into `lines`, then None at its end (this also keeps the pipe
    drained, so the server never blocks on its log)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _address_when_running(lines: queue.Queue[str | None]) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"fakellm did not start in {STARTUP_TIMEOUT} s: {''.join(seen)}") from None
        if line is None:
            raise AssertionError(f"fakellm exited before it served: {''.join(seen)}")
        seen.append(line)
        running = RUNNING.search(line)
        if running is not None:
            return running.group(1)


@pytest.fixture(scope="module")
def fakellm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`fakellm serve` on a free port of 127.0.0.1 for the module; yields its base URL."""
    config = Path(tmp_path_factory.mktemp("fakellm")) / "fakellm.yaml"
    # JSON is YAML: fakellm reads this file with yaml.safe_load.
    config.write_text(json.dumps(fakellm_config()), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "fakellm.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_forward_lines, args=(process.stderr, lines), daemon=True)
    reader.start()
    try:
        yield _address_when_running(lines)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        reader.join(STOP_TIMEOUT)


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    async with Pool(max_retries=0) as shared:
        yield shared


@pytest.fixture
def ours(fakellm_url: str, pool: Pool) -> OpenAICompatibleClient:
    return OpenAICompatibleClient(base_url=fakellm_url + "/v1", api_key=KEY, pool=pool)


@pytest.fixture
async def sdk(fakellm_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=fakellm_url + "/v1", api_key=KEY, max_retries=0, timeout=STARTUP_TIMEOUT
    ) as client:
        yield client


async def our_chunks(ours: OpenAICompatibleClient, **params: Any) -> list[Chunk]:
    async with ours.stream_chat(messages("Tell me about rivers"), model=MODEL, **params) as stream:
        chunks = [chunk async for chunk in stream]
    assert [chunk.is_end for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert [chunk.sentence_id for chunk in chunks] == list(range(len(chunks)))
    return chunks


def received_nothing(error: APIError) -> bool:
    """Whether `error` came before any output: its `.partial` is empty."""
    return error.partial is not None and error.partial.chunk_count == 0 and not error.partial.text


async def test_the_whole_chat_agrees(ours: OpenAICompatibleClient, sdk: openai.AsyncOpenAI) -> None:
    whole = await ours.chat(messages("Tell me about rivers"), model=MODEL)
    theirs = await sdk.chat.completions.create(model=MODEL, messages=messages("Tell me about rivers"))
    (choice,) = theirs.choices
    assert whole.text == choice.message.content == ANSWER
    assert whole.finish_reason == choice.finish_reason == "stop"
    assert whole.is_complete and whole.model == theirs.model == MODEL
    assert theirs.usage is not None and whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (
        theirs.usage.prompt_tokens, theirs.usage.completion_tokens, theirs.usage.total_tokens
    )
    assert whole.usage.completion_tokens > 0


@pytest.mark.parametrize("include_usage", [True, False])
async def test_the_streamed_chat_agrees(
    ours: OpenAICompatibleClient, sdk: openai.AsyncOpenAI, pool: Pool, include_usage: bool
) -> None:
    chunks = await our_chunks(ours, include_usage=include_usage)
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=messages("Tell me about rivers"), stream=True,
        stream_options={"include_usage": include_usage},
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usages = []
    async with stream:
        async for event in stream:
            usages.append(event.usage)
            for choice in event.choices:
                pieces += [choice.delta.content] if choice.delta.content else []
                finish_reasons += [choice.finish_reason] if choice.finish_reason else []
    assert [chunk.text for chunk in chunks if chunk.text] == pieces
    assert "".join(pieces) == ANSWER == "".join(chunk.text for chunk in chunks)
    assert finish_reasons == ["stop"] and chunks[-1].finish_reason == "stop"
    # fakellm never streams usage, asked or not: both read none.
    assert set(usages) == {None} and all(chunk.usage is None for chunk in chunks)
    assert pool.stats().connections_in_use == 0 and pool.stats().open_streams == 0


async def test_the_stream_and_the_whole_chat_agree(ours: OpenAICompatibleClient) -> None:
    async with ours.stream_chat(messages("Tell me about rivers"), model=MODEL) as stream:
        async for _ in stream:
            pass
    streamed = stream.completion
    whole = await ours.chat(messages("Tell me about rivers"), model=MODEL)
    assert streamed.text == whole.text and streamed.finish_reason == whole.finish_reason
    assert streamed.is_complete and streamed.chunk_count == len(ANSWER.split(" ")) + 1


async def test_tool_calls_agree(ours: OpenAICompatibleClient, sdk: openai.AsyncOpenAI) -> None:
    tools: list[Any] = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    question = messages("Find the longest river")
    arguments = json.dumps(TOOL_ARGUMENTS)
    async with ours.stream_chat(question, model=MODEL, tools=tools) as stream:
        async for _ in stream:
            pass
    whole = await ours.chat(question, model=MODEL, tools=tools)
    theirs = await sdk.chat.completions.create(model=MODEL, messages=question, tools=tools)
    (their_call,) = theirs.choices[0].message.tool_calls or []
    assert their_call.type == "function"
    for completion in (stream.completion, whole):
        (call,) = completion.tool_calls
        assert (call.name, call.arguments) == (their_call.function.name, their_call.function.arguments)
        assert call.arguments == arguments and call.id is not None and call.id.startswith("call_")
        assert completion.finish_reason == theirs.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("status", list(ERRORS))
async def test_an_error_status_is_the_same_kind_of_error(
    ours: OpenAICompatibleClient, sdk: openai.AsyncOpenAI, status: int
) -> None:
    their_class, our_class = ERRORS[status]
    headers = {STATUS_HEADER: str(status)}
    with pytest.raises(their_class) as theirs:
        await sdk.chat.completions.create(model=MODEL, messages=messages("Hi"), extra_headers=headers)
    with pytest.raises(our_class) as caught:
        await ours.chat(messages("Hi"), model=MODEL, extra_headers=headers)
    assert type(caught.value) is our_class
    assert caught.value.http_status == theirs.value.status_code == status
    assert isinstance(theirs.value.body, dict)
    assert theirs.value.body["message"] == caught.value.args[0] == f"fakellm answers {status}"
    assert theirs.value.code is None and caught.value.code is None
    # Retryable where the SDK would retry: 429 and every 5xx.
    assert caught.value.retryable == (status == 429 or status >= 500)
    assert received_nothing(caught.value)


async def requests_matched(fakellm_url: str, rule: str) -> int:
    """How many requests fakellm answered with `rule`, from its own stats."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STOP_TIMEOUT)) as session,
        session.get(fakellm_url + "/_fakellm/stats") as reply,
    ):
        stats = await reply.json()
    return int(stats["by_rule"].get(rule, 0))


@pytest.mark.parametrize(("status", "sent"), [(400, 1), (429, 2), (500, 2)])
async def test_both_send_a_request_again_after_the_same_statuses(
    fakellm_url: str, pool: Pool, status: int, sent: int
) -> None:
    rule, headers = f"status-{status}", {STATUS_HEADER: str(status)}
    before = await requests_matched(fakellm_url, rule)
    async with openai.AsyncOpenAI(
        base_url=fakellm_url + "/v1", api_key=KEY, max_retries=1, timeout=STARTUP_TIMEOUT
    ) as sdk:
        with pytest.raises(openai.APIStatusError):
            await sdk.chat.completions.create(model=MODEL, messages=messages("Hi"), extra_headers=headers)
    by_the_sdk = await requests_matched(fakellm_url, rule) - before
    ours = OpenAICompatibleClient(
        base_url=fakellm_url + "/v1", api_key=KEY, pool=pool,
        retry=RetryPolicy(max_retries=1, backoff_base=0),
    )
    with pytest.raises(APIError):
        await ours.chat(messages("Hi"), model=MODEL, extra_headers=headers)
    by_us = await requests_matched(fakellm_url, rule) - before - by_the_sdk
    assert by_us == by_the_sdk == sent


async def test_a_route_fakellm_does_not_serve_is_not_found(
    fakellm_url: str, pool: Pool, sdk: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as theirs:
        await sdk.completions.create(model=MODEL, prompt="Rivers")
    assert theirs.value.status_code == 404
    ours = OpenAICompatibleClient(base_url=fakellm_url + "/v1", api_key=KEY, pool=pool)
    with pytest.raises(NotFoundError) as legacy:
        await ours.complete("Rivers", model=MODEL)
    elsewhere = OpenAICompatibleClient(base_url=fakellm_url + "/v9", api_key=KEY, pool=pool)
    with pytest.raises(NotFoundError) as streamed:
        await our_chunks(elsewhere)
    assert legacy.value.http_status == streamed.value.http_status == 404
    assert received_nothing(streamed.value)
    assert pool.stats().connections_in_use == 0 and pool.stats().open_streams == 0


async def test_leaving_a_stream_early_releases_its_connection(
    ours: OpenAICompatibleClient, pool: Pool
) -> None:
    async with ours.stream_chat(messages("Tell me at length"), model=MODEL) as stream:
        async for chunk in stream:
            assert chunk.text == "word"
            break
    assert pool.stats().connections_in_use == 0 and pool.stats().open_streams == 0
    assert not stream.completion.is_complete
    # The connection was closed, not handed back half read: the next request opens a new one.
    opened = pool.stats().connections_opened
    assert (await ours.chat(messages("Tell me about rivers"), model=MODEL)).text == ANSWER
    assert pool.stats().connections_opened == opened + 1
