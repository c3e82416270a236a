"""The mock's DashScope route, spoken to over real sockets with a plain aiohttp client."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from typing import Any

import aiohttp
import pytest

from llmstreams.mock import MockCredentials, MockServer
from llmstreams.mock.dashscope import GENERATION_PATH

AUTH = {"Authorization": "Bearer sk-test"}
SSE = {**AUTH, "X-DashScope-SSE": "enable", "Accept": "text/event-stream"}
FRAME = re.compile(rb"^id:(\d+)\nevent:(result|error)\n:HTTP_STATUS/(\d{3})\ndata:(.*)$")
PROMPT = {"model": "billa-7b-sft-v1", "input": {"prompt": "Write a haiku about rivers"}}


async def generate(
    session: aiohttp.ClientSession,
    server: MockServer,
    body: dict[str, Any],
    headers: dict[str, str] = AUTH,
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with session.post(server.url + GENERATION_PATH, json=body, headers=headers) as response:
        return response, await response.read()


def frames(body: bytes) -> list[tuple[int, str, int, dict[str, Any]]]:
    """(id, event, status, data) of each frame, which must have exactly the DashScope layout."""
    parts = body.split(b"\n\n")
    assert parts[-1] == b"", "the stream must end with a blank line"
    parsed = []
    for part in parts[:-1]:
        match = FRAME.match(part)
        assert match is not None, part
        event_id, event, status, data = match.groups()
        parsed.append((int(event_id), event.decode(), int(status), json.loads(data)))
    return parsed


def with_parameters(**parameters: Any) -> dict[str, Any]:
    return {**PROMPT, "parameters": parameters}


async def test_whole_answer_in_text_format(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    response, raw = await generate(session, server, PROMPT)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = json.loads(raw)
    assert list(body) == ["output", "usage", "request_id"]
    assert body["output"]["finish_reason"] == "stop"
    assert len(body["output"]["text"]) == 240
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert uuid.UUID(body["request_id"]).version == 4
    assert server.stats.requests["dashscope.generation"] == 1


async def test_whole_answer_in_message_format(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    _, raw = await generate(session, server, with_parameters(result_format="message"))
    choices = json.loads(raw)["output"]["choices"]
    assert len(choices) == 1
    assert choices[0]["finish_reason"] == "stop"
    assert choices[0]["message"]["role"] == "assistant"
    assert len(choices[0]["message"]["content"]) == 240


async def test_messages_input_is_accepted(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    body = {
        "model": "qwen-turbo",
        "input": {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello"},
            ]
        },
    }
    response, raw = await generate(session, server, body)
    assert response.status == 200
    assert json.loads(raw)["output"]["text"]


async def test_stream_is_cumulative_by_default(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    _, whole = await generate(session, server, PROMPT)
    response, raw = await generate(session, server, PROMPT, SSE)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    events = frames(raw)
    assert [event_id for event_id, *_ in events] == list(range(1, 11))
    assert {(event, status) for _, event, status, _ in events} == {("result", 200)}
    texts = [data["output"]["text"] for *_, data in events]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert [len(text) for text in texts] == list(range(24, 241, 24))
    reasons = [data["output"]["finish_reason"] for *_, data in events]
    assert reasons == ["null"] * 9 + ["stop"]
    assert texts[-1] == json.loads(whole)["output"]["text"]
    output_tokens = [data["usage"]["output_tokens"] for *_, data in events]
    assert output_tokens == sorted(output_tokens)
    assert events[-1][3]["usage"] == json.loads(whole)["usage"]


async def test_incremental_output_sends_only_the_new_piece(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    body = with_parameters(incremental_output=True)
    _, whole = await generate(session, server, body)
    _, raw = await generate(session, server, body, SSE)
    pieces = [data["output"]["text"] for *_, data in frames(raw)]
    assert len(pieces) == 10 and all(len(piece) == 24 for piece in pieces)
    assert "".join(pieces) == json.loads(whole)["output"]["text"]


async def test_the_answer_does_not_depend_on_stream_only_options(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    _, plain_whole = await generate(session, server, PROMPT)
    body = with_parameters(incremental_output=True)
    _, incremental_whole = await generate(session, server, body)
    _, raw = await generate(session, server, body, SSE)
    streamed = "".join(data["output"]["text"] for *_, data in frames(raw))
    text = json.loads(plain_whole)["output"]["text"]
    assert json.loads(incremental_whole)["output"]["text"] == streamed == text


@pytest.mark.parametrize("incremental", [False, True])
async def test_stream_in_message_format(
    server: MockServer, session: aiohttp.ClientSession, incremental: bool
) -> None:
    body = with_parameters(result_format="message", incremental_output=incremental)
    _, raw = await generate(session, server, body, SSE)
    choices = [data["output"]["choices"][0] for *_, data in frames(raw)]
    contents = [choice["message"]["content"] for choice in choices]
    assert {choice["message"]["role"] for choice in choices} == {"assistant"}
    assert [choice["finish_reason"] for choice in choices] == ["null"] * 9 + ["stop"]
    full = "".join(contents) if incremental else contents[-1]
    assert len(full) == 240


async def test_max_tokens_ends_the_stream_with_length(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    _, raw = await generate(session, server, with_parameters(max_tokens=7), SSE)
    last = frames(raw)[-1][3]
    assert last["output"]["finish_reason"] == "length"
    assert last["usage"]["output_tokens"] == 7


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "k"}])
async def test_missing_api_key_is_401(
    server: MockServer, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    response, raw = await generate(session, server, PROMPT, headers)
    assert response.status == 401
    error = json.loads(raw)
    assert (error["code"], error["message"]) == ("InvalidApiKey", "Invalid API-key provided.")
    assert uuid.UUID(error["request_id"])


async def test_configured_api_key_is_enforced(session: aiohttp.ClientSession) -> None:
    async with MockServer(credentials=MockCredentials(dashscope_api_key="sk-right")) as server:
        wrong, _ = await generate(session, server, PROMPT, {"Authorization": "Bearer sk-wrong"})
        right, _ = await generate(session, server, PROMPT, {"Authorization": "Bearer sk-right"})
        assert (wrong.status, right.status) == (401, 200)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "qwen-turbo"}, "InvalidParameter"),
        ({"model": "qwen-turbo", "input": {}}, "InvalidParameter"),
        ({"input": {"prompt": "hi"}}, "BadRequest.EmptyModel"),
        ({**PROMPT, "parameters": {"result_format": "xml"}}, "InvalidParameter"),
    ],
)
async def test_invalid_requests_are_400(
    server: MockServer, session: aiohttp.ClientSession, body: dict[str, Any], code: str
) -> None:
    for headers in (AUTH, SSE):
        response, raw = await generate(session, server, body, headers)
        assert response.status == 400
        assert response.content_type == "application/json"
        assert json.loads(raw)["code"] == code


async def test_invalid_json_is_400(server: MockServer, session: aiohttp.ClientSession) -> None:
    async with session.post(server.url + GENERATION_PATH, data=b"{", headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "InvalidParameter"


async def test_trigger_phrase_fails_data_inspection(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    body = {"model": "qwen-turbo", "input": {"prompt": "say [[unsafe]] things"}}
    response, raw = await generate(session, server, body, SSE)
    assert response.status == 400
    error = json.loads(raw)
    assert error["code"] == "DataInspectionFailed"
    assert error["message"] == "Input data may contain inappropriate content."
    assert server.stats.streams_started == 0
