"""How the mock writes streams: send-time stamps and shared pacing, on every stream route."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from llmstreams.mock import BEHAVIOUR_HEADER, MockServer
from llmstreams.mock.dashscope import GENERATION_PATH
from llmstreams.mock.qianfan import API_PREFIX, TOKEN_PATH

DATA_LINE = re.compile(rb"^data: ?(.*)$", re.MULTILINE)


async def stream_body(
    session: aiohttp.ClientSession, server: MockServer, route: str, knobs: str
) -> bytes:
    headers = {BEHAVIOUR_HEADER: knobs, "Authorization": "Bearer bce-v3/ALTAK-a/b"}
    if route == "qianfan":
        params = {"grant_type": "client_credentials", "client_id": "k", "client_secret": "s"}
        async with session.post(server.url + TOKEN_PATH, params=params) as response:
            token = (await response.json())["access_token"]
        url = f"{server.url}{API_PREFIX}/chat/completions?access_token={token}"
        body: dict[str, object] = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    elif route == "dashscope":
        url = server.url + GENERATION_PATH
        headers["X-DashScope-SSE"] = "enable"
        headers["Authorization"] = "Bearer sk-test"
        body = {"model": "qwen-turbo", "input": {"prompt": "hi"}}
    else:
        url = server.url + route
        body = {"model": "ernie-speed-8k", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        body["stream_options"] = {"include_usage": True}
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        return await response.read()


def json_events(body: bytes) -> list[dict[str, object]]:
    return [json.loads(data) for data in DATA_LINE.findall(body) if data != b"[DONE]"]


ROUTES = ["qianfan", "dashscope", "/v1/chat/completions", "/v2/chat/completions"]


@pytest.mark.parametrize("route", ROUTES)
async def test_stamp_send_times_adds_the_monotonic_send_time_to_every_event(
    server: MockServer, session: aiohttp.ClientSession, route: str
) -> None:
    loop = asyncio.get_running_loop()
    plain = json_events(await stream_body(session, server, route, "answer_chars=72"))
    asked_at = loop.time()
    body = await stream_body(session, server, route, "answer_chars=72; stamp_send_times=true")
    read_at = loop.time()
    stamped = json_events(body)
    stamps = [event.pop("x_sent_at") for event in stamped]
    for event in plain:
        event.pop("created", None)
    for event in stamped:
        event.pop("created", None)
    assert stamped == plain
    assert all(isinstance(stamp, float) for stamp in stamps)
    # The same clock as this process's event loop, and in the order the events were written.
    assert asked_at <= stamps[0] and stamps[-1] <= read_at
    assert stamps == sorted(stamps)


async def test_stamps_go_on_the_error_event_not_on_malformed_lines(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    knobs = "answer_chars=72; stamp_send_times=true; malformed_after=1; error_after=2"
    body = await stream_body(session, server, "/v1/chat/completions", knobs)
    lines = DATA_LINE.findall(body)
    assert b"x_sent_at" not in lines[1]
    with pytest.raises(ValueError):
        json.loads(lines[1])
    error = json.loads(lines[-1])
    assert "error" in error and isinstance(error["x_sent_at"], float)


@pytest.mark.parametrize("route", ["dashscope", "/v1/chat/completions"])
async def test_many_paced_streams_share_the_timer_and_keep_every_event(
    server: MockServer, session: aiohttp.ClientSession, route: str
) -> None:
    unpaced = await stream_body(session, server, route, "answer_chars=96; chunk_chars=24")
    knobs = "answer_chars=96; chunk_chars=24; chunks_per_second=200"
    paced = await asyncio.gather(*(stream_body(session, server, route, knobs) for _ in range(50)))
    expected = json_events(unpaced)
    for event in expected:
        event.pop("created", None)
    for body in paced:
        events = json_events(body)
        for event in events:
            event.pop("created", None)
        assert events == expected
    stats = await server.wait_for(lambda stats: stats.streams_completed == 51)
    assert stats.streams_active == 0


async def test_closing_the_server_ends_paced_streams_waiting_for_their_next_event(
    session: aiohttp.ClientSession,
) -> None:
    server = MockServer()
    await server.start()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {BEHAVIOUR_HEADER: "chunks_per_second=0.01"}
    async with session.post(
        server.url + "/v1/chat/completions", json=body, headers=headers
    ) as reply:
        first = await asyncio.wait_for(reply.content.readuntil(b"\n\n"), 5)
        assert first.startswith(b"data: ")
        await server.wait_for(lambda stats: stats.streams_started == 1)
        await asyncio.wait_for(server.close(), 5)
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(reply.read(), 5)
    assert server.stats.streams_failed == 1


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v2/chat/completions"])
async def test_a_paced_stream_sends_its_usage_with_its_finish_not_a_pace_later(
    server: MockServer, session: aiohttp.ClientSession, route: str
) -> None:
    knobs = "answer_chars=36; chunk_chars=12; chunks_per_second=20; stamp_send_times=true"
    events = json_events(await stream_body(session, server, route, knobs))
    finish = next(event for event in events if event["choices"] and event["choices"][0]["finish_reason"])
    usage = events[-1]
    assert usage["choices"] == [] and usage["usage"]
    # One write carries both (one stamp). The stamps do tell writes apart: the first event went
    # out a pace before the finish. (Events in between may share a write with the finish when
    # a busy machine makes the mock fall behind, so they are not compared.)
    assert usage["x_sent_at"] == finish["x_sent_at"]
    assert events[0]["x_sent_at"] < finish["x_sent_at"]
