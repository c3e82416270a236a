"""The mock's OpenAI-compatible routes (Qianfan v2, DashScope compatible mode, generic /v1).

Raw aiohttp requests over loopback: what each route sends on the wire, its knobs and faults.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import attrs
import pytest

from llmstreams.mock import BEHAVIOUR_HEADER, Behaviour, MockCredentials, MockServer

SHORT_READ = 0.2
USER = [{"role": "user", "content": "Tell me about rivers"}]
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


@attrs.frozen
class Route:
    name: str
    path: str
    stats_name: str
    key: str | None
    chat: bool = True

    def __repr__(self) -> str:
        return self.name


QIANFAN_CHAT = Route("qianfan-v2", "/v2/chat/completions", "qianfan.v2.chat", "bce-v3/ALTAK-a/b")
QIANFAN_COMPLETIONS = Route(
    "qianfan-v2-completions",
    "/v2/completions",
    "qianfan.v2.completions",
    "bce-v3/ALTAK-a/b",
    chat=False,
)
DASHSCOPE = Route(
    "dashscope", "/compatible-mode/v1/chat/completions", "dashscope.compatible.chat", "sk-test"
)
GENERIC_CHAT = Route("openai", "/v1/chat/completions", "openai.chat", None)
GENERIC_COMPLETIONS = Route(
    "openai-completions", "/v1/completions", "openai.completions", None, chat=False
)
ROUTES = [QIANFAN_CHAT, QIANFAN_COMPLETIONS, DASHSCOPE, GENERIC_CHAT, GENERIC_COMPLETIONS]
CHAT_ROUTES = [route for route in ROUTES if route.chat]
each_route = pytest.mark.parametrize("route", ROUTES, ids=repr)
each_chat_route = pytest.mark.parametrize("route", CHAT_ROUTES, ids=repr)


def request_body(route: Route, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "ernie-speed-8k"}
    if route.chat:
        body["messages"] = USER
    else:
        body["prompt"] = "Tell me about rivers"
    body.update(fields)
    return body


async def post(
    session: aiohttp.ClientSession,
    server: MockServer,
    route: Route,
    body: dict[str, Any],
    *,
    knobs: str | None = None,
    key: str | None = "route",
) -> aiohttp.ClientResponse:
    headers = {} if knobs is None else {BEHAVIOUR_HEADER: knobs}
    bearer = route.key if key == "route" else key
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return await session.post(server.url + route.path, json=body, headers=headers)


def data_lines(body: bytes) -> list[str]:
    frames = body.split(b"\n\n")
    assert frames[-1] == b"", body[-200:]
    lines = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: "), frame
        lines.append(frame[len(b"data: ") :].decode())
    return lines


async def stream_events(
    session: aiohttp.ClientSession,
    server: MockServer,
    route: Route,
    body: dict[str, Any],
    *,
    knobs: str | None = None,
) -> list[dict[str, Any]]:
    async with await post(session, server, route, {**body, "stream": True}, knobs=knobs) as reply:
        assert reply.status == 200
        assert reply.content_type == "text/event-stream"
        lines = data_lines(await reply.read())
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def whole_answer(
    session: aiohttp.ClientSession,
    server: MockServer,
    route: Route,
    body: dict[str, Any],
    *,
    knobs: str | None = None,
) -> dict[str, Any]:
    async with await post(session, server, route, body, knobs=knobs) as reply:
        assert reply.status == 200, await reply.text()
        payload: dict[str, Any] = await reply.json()
    return payload


@attrs.frozen
class Assembled:
    text: str
    reasoning: str
    tool_calls: tuple[tuple[str, str, str], ...]
    finish_reason: str | None
    usage: dict[str, Any] | None


def assemble(events: list[dict[str, Any]]) -> Assembled:
    """What a client makes of a stream: joined text, reasoning, tool calls, last usage."""
    text, reasoning, finish_reason, usage = "", "", None, None
    calls: dict[int, list[str]] = {}
    for event in events:
        usage = event.get("usage") or usage
        for choice in event["choices"]:
            finish_reason = choice["finish_reason"] or finish_reason
            if "text" in choice:
                text += choice["text"]
                continue
            delta = choice["delta"]
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning_content", "")
            for call in delta.get("tool_calls", []):
                parts = calls.setdefault(call["index"], ["", "", ""])
                parts[0] += call.get("id", "")
                parts[1] += call["function"].get("name", "")
                parts[2] += call["function"].get("arguments", "")
    tool_calls = tuple((parts[0], parts[1], parts[2]) for parts in calls.values())
    return Assembled(text, reasoning, tool_calls, finish_reason, usage)


def assemble_whole(payload: dict[str, Any]) -> Assembled:
    choice = payload["choices"][0]
    if "text" in choice:
        return Assembled(choice["text"], "", (), choice["finish_reason"], payload.get("usage"))
    message = choice["message"]
    calls = tuple(
        (call["id"], call["function"]["name"], call["function"]["arguments"])
        for call in message.get("tool_calls", [])
    )
    return Assembled(
        message["content"] or "",
        message.get("reasoning_content", ""),
        calls,
        choice["finish_reason"],
        payload.get("usage"),
    )


@each_route
async def test_stream_and_whole_answers_are_equal_whatever_the_stream_options(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = request_body(route)
    whole = assemble_whole(await whole_answer(session, server, route, body))
    with_usage = assemble(
        await stream_events(
            session, server, route, {**body, "stream_options": {"include_usage": True}}
        )
    )
    without_usage = assemble(await stream_events(session, server, route, body))
    assert whole.text and len(whole.text) == 240
    assert whole == with_usage
    assert attrs.evolve(without_usage, usage=whole.usage) == whole
    assert whole.finish_reason == "stop"
    stats = await server.wait_for(lambda stats: stats.requests[route.stats_name] == 3)
    assert stats.streams_completed == 2


@each_chat_route
async def test_stream_starts_with_a_role_only_chunk_and_ends_with_done(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    events = await stream_events(session, server, route, request_body(route))
    first = events[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}
    assert first["finish_reason"] is None
    assert all(event["object"] == "chat.completion.chunk" for event in events)
    assert len({event["id"] for event in events}) == 1
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert [event["choices"][0]["finish_reason"] for event in events[:-1]] == [None] * (
        len(events) - 1
    )


@pytest.mark.parametrize("route", [GENERIC_CHAT, DASHSCOPE], ids=repr)
async def test_usage_comes_only_when_asked_on_a_last_chunk_without_choices(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = request_body(route)
    plain = await stream_events(session, server, route, body)
    assert not any("usage" in event for event in plain)
    asked = await stream_events(
        session, server, route, {**body, "stream_options": {"include_usage": True}}
    )
    assert [event for event in asked if "usage" in event] == [asked[-1]]
    assert asked[-1]["choices"] == []
    usage = asked[-1]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_qianfan_v2_chunks_carry_cumulative_usage_and_qianfan_extras(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    events = await stream_events(session, server, QIANFAN_CHAT, request_body(QIANFAN_CHAT))
    assert all(event["id"].startswith("as-") for event in events)
    completion_tokens = [event["usage"]["completion_tokens"] for event in events]
    assert completion_tokens == sorted(completion_tokens) and completion_tokens[-1] > 0
    choices = [event["choices"][0] for event in events]
    assert [choice["is_end"] for choice in choices] == [False] * (len(choices) - 1) + [True]
    assert all(choice["need_clear_history"] is False for choice in choices)
    assert all("ban_round" not in choice for choice in choices)


async def test_qianfan_v2_needs_a_bce_v3_key_checked_against_the_credentials(
    session: aiohttp.ClientSession,
) -> None:
    credentials = MockCredentials(qianfan_v2_api_key="bce-v3/ALTAK-right/secret")
    async with MockServer(credentials=credentials) as server:
        body = request_body(QIANFAN_CHAT)
        for key in [None, "sk-not-qianfan", "bce-v3/ALTAK-wrong/secret"]:
            async with await post(session, server, QIANFAN_CHAT, body, key=key) as reply:
                assert reply.status == 401
                payload = await reply.json()
            assert payload["error"]["code"] == "invalid_api_key"
            assert payload["id"].startswith("as-")
        headers = {"Authorization": "Bearer bce-v3/ALTAK-right/secret", "appid": "app-123"}
        async with session.post(server.url + QIANFAN_CHAT.path, json=body, headers=headers) as ok:
            assert ok.status == 200
            assert (await ok.json())["choices"][0]["message"]["content"]


async def test_dashscope_and_generic_keys(session: aiohttp.ClientSession) -> None:
    credentials = MockCredentials(dashscope_api_key="sk-right", openai_api_key="local-key")
    async with MockServer(credentials=credentials) as server:
        async with await post(
            session, server, DASHSCOPE, request_body(DASHSCOPE), key="sk-wrong"
        ) as reply:
            assert reply.status == 401
            payload = await reply.json()
        assert payload["error"]["message"] == "Incorrect API key provided."
        assert payload["error"]["code"] == "invalid_api_key"
        assert payload["request_id"]
        async with await post(
            session, server, GENERIC_CHAT, request_body(GENERIC_CHAT), key=None
        ) as reply:
            assert reply.status == 401
        async with await post(
            session, server, GENERIC_CHAT, request_body(GENERIC_CHAT), key="local-key"
        ) as reply:
            assert reply.status == 200
    async with (
        MockServer() as open_server,
        await post(
            session, open_server, GENERIC_CHAT, request_body(GENERIC_CHAT), key=None
        ) as reply,
    ):
        assert reply.status == 200


async def test_dashscope_enable_thinking_streams_reasoning_and_is_refused_whole(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    body = request_body(DASHSCOPE, model="qwen-plus", enable_thinking=True)
    streamed = assemble(await stream_events(session, server, DASHSCOPE, body))
    assert streamed.reasoning and streamed.text
    async with await post(session, server, DASHSCOPE, body) as reply:
        assert reply.status == 400
        payload = await reply.json()
    assert "enable_thinking" in payload["error"]["message"]
    assert payload["error"]["code"] == "invalid_parameter"
    plain = assemble(await stream_events(session, server, DASHSCOPE, request_body(DASHSCOPE)))
    assert plain.reasoning == ""


@each_chat_route
async def test_reasoning_models_and_the_reasoning_knob(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = request_body(route, model="deepseek-r1")
    options = {"stream_options": {"include_usage": True}}
    streamed = assemble(await stream_events(session, server, route, {**body, **options}))
    assert len(streamed.reasoning) == 120 and streamed.text
    # The reasoning is a text of its own, not the answer's opening again.
    assert streamed.reasoning[:20] != streamed.text[:20]
    details = streamed.usage and streamed.usage["completion_tokens_details"]
    assert details and details["reasoning_tokens"] > 0
    events = await stream_events(session, server, route, body)
    kinds = [set(event["choices"][0]["delta"]) for event in events]
    first_content = kinds.index({"content"})
    assert {"reasoning_content"} in kinds[:first_content]
    assert {"reasoning_content"} not in kinds[first_content:]
    knob = "reasoning_chars=50"
    plain = request_body(route)
    assert (
        len(assemble(await stream_events(session, server, route, plain, knobs=knob)).reasoning)
        == 50
    )
    off = assemble(await stream_events(session, server, route, body, knobs="reasoning_chars=0"))
    assert off.reasoning == ""
    if route is not DASHSCOPE:
        whole = assemble_whole(await whole_answer(session, server, route, body))
        assert whole == attrs.evolve(streamed, usage=whole.usage)
        assert whole.usage == streamed.usage


@each_chat_route
async def test_tool_calls_stream_their_arguments_in_pieces(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = request_body(route, tools=TOOLS, tool_choice="required")
    events = await stream_events(session, server, route, body)
    pieces = [
        call for event in events for call in event["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert len(pieces) > 1
    assert pieces[0]["id"].startswith("call_") and pieces[0]["function"]["name"] == "search"
    assert all("id" not in piece for piece in pieces[1:])
    streamed = assemble(events)
    assert streamed.finish_reason == "tool_calls" and streamed.text == ""
    ((_call_id, _name, arguments),) = streamed.tool_calls
    assert isinstance(json.loads(arguments)["query"], str)
    whole = await whole_answer(session, server, route, body)
    assert whole["choices"][0]["message"]["content"] is None
    assert assemble_whole(whole) == attrs.evolve(streamed, usage=whole.get("usage"))


@each_chat_route
async def test_tools_are_called_when_the_knob_asks_and_never_under_tool_choice_none(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    offered = request_body(route, tools=TOOLS)
    assert assemble(await stream_events(session, server, route, offered)).tool_calls == ()
    knob = "tool_calls=true"
    called = assemble(await stream_events(session, server, route, offered, knobs=knob))
    assert called.tool_calls and called.tool_calls[0][1] == "search"
    refused = request_body(route, tools=TOOLS, tool_choice="none")
    assert (
        assemble(await stream_events(session, server, route, refused, knobs=knob)).tool_calls == ()
    )
    no_tools = assemble(
        await stream_events(session, server, route, request_body(route), knobs=knob)
    )
    assert no_tools.tool_calls == () and no_tools.text


@each_route
async def test_send_usage_knob(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = request_body(route)
    forced = await stream_events(session, server, route, body, knobs="send_usage=true")
    assert forced[-1]["choices"] == [] and forced[-1]["usage"]["completion_tokens"] > 0
    asked = {**body, "stream_options": {"include_usage": True}}
    never = await stream_events(session, server, route, asked, knobs="send_usage=false")
    assert not any("usage" in event for event in never)
    assert "usage" not in await whole_answer(session, server, route, body, knobs="send_usage=false")


@each_route
async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = request_body(route, max_tokens=5)
    whole = assemble_whole(await whole_answer(session, server, route, body))
    assert whole.finish_reason == "length" and whole.usage
    assert whole.usage["completion_tokens"] == 5
    assert assemble(await stream_events(session, server, route, body)).text == whole.text


@pytest.mark.parametrize(
    ("route", "extra"),
    [(QIANFAN_CHAT, "id"), (DASHSCOPE, "request_id"), (GENERIC_CHAT, None)],
    ids=repr,
)
async def test_injected_errors_before_the_stream_are_in_the_dialect_form(
    server: MockServer, session: aiohttp.ClientSession, route: Route, extra: str | None
) -> None:
    knobs = "fail_code=Throttling; retry_after=0.5"
    body = {**request_body(route), "stream": True}
    async with await post(session, server, route, body, knobs=knobs) as reply:
        assert reply.status == 429
        assert reply.headers["Retry-After"] == "0.5"
        payload = await reply.json()
    assert payload["error"]["code"] == "rate_limit_exceeded"
    assert payload["error"]["type"] == "rate_limit_error"
    assert set(payload) == ({"error", extra} if extra else {"error"})
    async with await post(session, server, route, body, knobs=knobs) as reply:
        assert reply.status == 200
    other = {**body, "temperature": 0.5}
    async with await post(session, server, route, other, knobs="http_status=503") as reply:
        assert reply.status == 503
        assert (await reply.json())["error"]["code"] == "service_unavailable"


async def test_qianfan_v2_invalid_arguments_are_invalid_argument(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    body = request_body(QIANFAN_CHAT, temperature=7)
    async with await post(session, server, QIANFAN_CHAT, body) as reply:
        assert reply.status == 400
        payload = await reply.json()
    assert payload["error"]["code"] == "invalid_argument"
    assert "temperature" in payload["error"]["message"]


@each_route
async def test_error_after_sends_an_error_event_and_no_done(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = {**request_body(route), "stream": True}
    async with await post(
        session, server, route, body, knobs="error_after=2; error_code=Throttling"
    ) as reply:
        lines = data_lines(await reply.read())
    assert len(lines) == 3
    error = json.loads(lines[-1])
    assert error["error"]["code"] == "rate_limit_exceeded"
    await server.wait_for(lambda stats: stats.streams_failed == 1)


@each_route
async def test_disconnect_stall_and_malformed(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = {**request_body(route), "stream": True}
    async with await post(session, server, route, body, knobs="disconnect_after=2") as reply:
        with pytest.raises(aiohttp.ClientPayloadError):
            await reply.read()
    async with await post(session, server, route, body, knobs="stall_after=1") as reply:
        await reply.content.readuntil(b"\n\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reply.content.readuntil(b"\n\n"), SHORT_READ)
    async with await post(session, server, route, body, knobs="malformed_after=1") as reply:
        lines = data_lines(await reply.read())
    with pytest.raises(ValueError):
        json.loads(lines[1])
    assert lines[-1] == "[DONE]"
    good = [json.loads(line) for index, line in enumerate(lines[:-1]) if index != 1]
    assert assemble(good).text == assemble(await stream_events(session, server, route, body)).text


@each_route
async def test_huge_line_bytes_lengthens_the_first_content_event(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = {**request_body(route), "stream": True}
    async with await post(session, server, route, body, knobs="huge_line_bytes=70000") as reply:
        frames = (await reply.read()).split(b"\n\n")
    first_content = 1 if route.chat else 0
    assert len(frames[first_content]) == 70000
    json.loads(frames[first_content][len(b"data: ") :])


@pytest.mark.parametrize("route", [QIANFAN_CHAT, GENERIC_CHAT], ids=repr)
async def test_the_trigger_phrase_is_filtered(
    server: MockServer, session: aiohttp.ClientSession, route: Route
) -> None:
    body = request_body(route, messages=[{"role": "user", "content": "say [[unsafe]]"}])
    whole = await whole_answer(session, server, route, body)
    choice = whole["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("content_filter", "")
    if route is QIANFAN_CHAT:
        assert (choice["need_clear_history"], choice["ban_round"]) == (True, -1)


async def test_dashscope_refuses_the_trigger_phrase(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    body = request_body(DASHSCOPE, messages=[{"role": "user", "content": "say [[unsafe]]"}])
    async with await post(session, server, DASHSCOPE, body) as reply:
        assert reply.status == 400
        assert (await reply.json())["error"]["code"] == "data_inspection_failed"


@pytest.mark.parametrize(
    "fields",
    [{"messages": []}, {"model": ""}, {"n": 2}, {"max_tokens": 0}, {"tools": [{"type": "x"}]}],
    ids=str,
)
async def test_bad_requests_are_400(
    server: MockServer, session: aiohttp.ClientSession, fields: dict[str, Any]
) -> None:
    async with await post(
        session, server, GENERIC_CHAT, request_body(GENERIC_CHAT, **fields)
    ) as reply:
        assert reply.status == 400
        assert (await reply.json())["error"]["type"] == "invalid_request_error"


async def test_knobs_set_server_wide_apply_to_the_openai_routes(
    session: aiohttp.ClientSession,
) -> None:
    behaviour = Behaviour(answer_chars=30, chunk_chars=10, reasoning_chars=20)
    async with MockServer(behaviour=behaviour) as server:
        events = await stream_events(session, server, GENERIC_CHAT, request_body(GENERIC_CHAT))
    assembled = assemble(events)
    assert (len(assembled.text), len(assembled.reasoning)) == (30, 20)
    assert len(events) == 1 + 2 + 3 + 1
