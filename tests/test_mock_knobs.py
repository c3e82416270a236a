"""Every knob of the mock server, for both vendors, over real sockets.

No test sleeps: where a knob makes the server hold back, the test shows it with a short
client-side read timeout that must expire, or waits on the server's stats.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from llmstreams.mock import BEHAVIOUR_HEADER, Behaviour, MockServer
from llmstreams.mock.dashscope import GENERATION_PATH
from llmstreams.mock.qianfan import API_PREFIX, TOKEN_PATH
from llmstreams.mock.text import WORDS, answer_text, corpus_text, qianfan_id, request_digest

CHAT = API_PREFIX + "/chat/completions"
DASHSCOPE_AUTH = {"Authorization": "Bearer sk-test"}
# Long enough that a read meant to time out cannot succeed by accident, short for the suite.
SHORT_READ = 0.2


class Vendor:
    """How to ask each vendor for an answer, whole or streamed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    async def request(
        self,
        session: aiohttp.ClientSession,
        server: MockServer,
        *,
        stream: bool,
        knobs: str | None = None,
        prompt: str = "Tell me about rivers",
    ) -> aiohttp.ClientResponse:
        headers = {} if knobs is None else {BEHAVIOUR_HEADER: knobs}
        if self.name == "qianfan":
            token = await _token(session, server)
            body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
            if stream:
                body["stream"] = True
            return await session.post(
                server.url + CHAT, params={"access_token": token}, json=body, headers=headers
            )
        headers.update(DASHSCOPE_AUTH)
        if stream:
            headers["X-DashScope-SSE"] = "enable"
        body = {"model": "qwen-turbo", "input": {"prompt": prompt}}
        return await session.post(server.url + GENERATION_PATH, json=body, headers=headers)

    def answer_text(self, body: dict[str, Any]) -> str:
        return str(body["result"] if self.name == "qianfan" else body["output"]["text"])

    def error_code(self, body: dict[str, Any]) -> str:
        return str(body["error_code"] if self.name == "qianfan" else body["code"])

    def data(self, frame: bytes) -> bytes:
        """The JSON of one stream frame."""
        prefix = b"data: " if self.name == "qianfan" else b"data:"
        line = frame.split(b"\n")[-1]
        assert line.startswith(prefix), frame
        return line[len(prefix) :]


QIANFAN = Vendor("qianfan")
DASHSCOPE = Vendor("dashscope")
VENDORS = [QIANFAN, DASHSCOPE]
each_vendor = pytest.mark.parametrize("vendor", VENDORS, ids=lambda vendor: vendor.name)


async def _token(session: aiohttp.ClientSession, server: MockServer) -> str:
    params = {"grant_type": "client_credentials", "client_id": "k", "client_secret": "s"}
    async with session.post(server.url + TOKEN_PATH, params=params) as response:
        return str((await response.json())["access_token"])


def split_frames(body: bytes) -> list[bytes]:
    frames = body.split(b"\n\n")
    assert frames[-1] == b""
    return frames[:-1]


async def read_frame(response: aiohttp.ClientResponse, timeout: float = 5.0) -> bytes:
    return (await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout))[:-2]


@each_vendor
async def test_fail_code_fails_the_first_attempts_of_each_request(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    knobs = "fail_code=Throttling.RateQuota; fail_times=2"
    outcomes = []
    for prompt in ["one", "one", "two", "one"]:
        async with await vendor.request(
            session, server, stream=False, knobs=knobs, prompt=prompt
        ) as response:
            body = await response.json()
            outcomes.append((response.status, body.get("error_code") or body.get("code")))
    if vendor is QIANFAN:
        failed = (200, 336501)
        assert body.get("result")
    else:
        failed = (429, "Throttling.RateQuota")
    succeeded = (200, None)
    assert outcomes == [failed, failed, failed, succeeded]


async def test_fail_code_uses_the_vendor_message(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    async with await QIANFAN.request(
        session, server, stream=True, knobs="fail_code=336100"
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert (body["error_code"], body["error_msg"]) == (336100, "try again later")


@each_vendor
async def test_http_status_with_retry_after(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    knobs = "http_status=503; retry_after=2; fail_times=1"
    async with await vendor.request(session, server, stream=True, knobs=knobs) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "2"
        assert response.content_type == "application/json"
        code = vendor.error_code(await response.json())
    assert code == ("336100" if vendor is QIANFAN else "ModelUnavailable")
    async with await vendor.request(session, server, stream=True, knobs=knobs) as response:
        assert response.status == 200
        assert "Retry-After" not in response.headers
        assert response.content_type == "text/event-stream"


async def test_fractional_retry_after_is_kept(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    knobs = "http_status=429; retry_after=0.25"
    async with await DASHSCOPE.request(session, server, stream=False, knobs=knobs) as response:
        assert (response.status, response.headers["Retry-After"]) == (429, "0.25")
        assert (await response.json())["code"] == "Throttling"


async def test_server_wide_failure_knobs(session: aiohttp.ClientSession) -> None:
    behaviour = Behaviour(http_status=429, retry_after=1, fail_code="336501")
    async with (
        MockServer(behaviour=behaviour) as server,
        await QIANFAN.request(session, server, stream=False) as response,
    ):
        assert (response.status, response.headers["Retry-After"]) == (429, "1")
        assert (await response.json())["error_code"] == 336501


async def test_a_code_of_the_other_vendor_is_translated(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    async with await QIANFAN.request(
        session, server, stream=False, knobs="fail_code=InternalError"
    ) as response:
        assert (await response.json())["error_code"] == 336000
    async with await DASHSCOPE.request(
        session, server, stream=False, knobs="fail_code=336502"
    ) as response:
        assert response.status == 429
        assert (await response.json())["code"] == "Throttling.AllocationQuota"


async def test_a_code_without_equivalent_is_a_mock_error(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    async with await QIANFAN.request(
        session, server, stream=False, knobs="fail_code=BadRequest.TooLarge"
    ) as response:
        assert response.status == 400
        assert "no Qianfan equivalent" in await response.text()


@each_vendor
async def test_error_after_sends_a_mid_stream_error_and_ends(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    async with await vendor.request(
        session, server, stream=True, knobs="error_after=3"
    ) as response:
        assert response.status == 200
        frames = split_frames(await response.read())
    assert len(frames) == 4
    error = json.loads(vendor.data(frames[-1]))
    if vendor is QIANFAN:
        assert (error["error_code"], error["error_msg"]) == (336000, "Internal error")
        assert frames[-1].startswith(b"data: {")
    else:
        assert frames[-1].startswith(b"id:4\nevent:error\n:HTTP_STATUS/500\ndata:{")
        assert error["code"] == "InternalError"
        assert error["request_id"]
    stats = await server.wait_for(lambda stats: stats.streams_failed == 1)
    assert stats.streams_completed == 0


async def test_error_code_picks_the_mid_stream_error(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    knobs = "error_after=0; error_code=Throttling"
    async with await DASHSCOPE.request(session, server, stream=True, knobs=knobs) as response:
        frames = split_frames(await response.read())
    assert frames == [frames[0]] and frames[0].startswith(b"id:1\nevent:error\n:HTTP_STATUS/429\n")


@each_vendor
async def test_disconnect_after_leaves_the_body_unfinished(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    received = b""
    async with await vendor.request(
        session, server, stream=True, knobs="disconnect_after=2"
    ) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in response.content.iter_any():
                received += piece
    assert len(split_frames(received)) == 2
    await server.wait_for(lambda stats: stats.streams_failed == 1)


@each_vendor
async def test_stall_after_sends_nothing_more_until_the_client_leaves(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    async with await vendor.request(
        session, server, stream=True, knobs="stall_after=2"
    ) as response:
        await read_frame(response)
        await read_frame(response)
        with pytest.raises(TimeoutError):
            await read_frame(response, timeout=SHORT_READ)
        assert server.stats.streams_active == 1
        response.close()
    stats = await server.wait_for(lambda stats: stats.streams_aborted == 1)
    assert stats.streams_active == 0


async def test_closing_the_server_ends_stalled_streams(session: aiohttp.ClientSession) -> None:
    server = MockServer(behaviour=Behaviour(stall_after=1))
    await server.start()
    async with await DASHSCOPE.request(session, server, stream=True) as response:
        await read_frame(response)
        await asyncio.wait_for(server.close(), 5)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert server.stats.streams_failed == 1


@each_vendor
async def test_malformed_after_sends_one_invalid_json_line_then_carries_on(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    async with await vendor.request(
        session, server, stream=True, knobs="malformed_after=1"
    ) as response:
        frames = split_frames(await response.read())
    assert len(frames) == 11
    with pytest.raises(json.JSONDecodeError):
        json.loads(vendor.data(frames[1]))
    for frame in [frames[0], *frames[2:]]:
        json.loads(vendor.data(frame))
    await server.wait_for(lambda stats: stats.streams_completed == 1)


@each_vendor
async def test_huge_line_bytes_makes_the_first_data_line_that_long(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    async with await vendor.request(
        session, server, stream=True, knobs="huge_line_bytes=300000"
    ) as response:
        frames = split_frames(await response.read())
    first_line = frames[0].split(b"\n")[-1]
    assert len(first_line) == 300000
    first = json.loads(vendor.data(frames[0]))
    assert len(vendor.answer_text(first)) > 299000
    assert len(frames) == 10


@each_vendor
async def test_non_sse_body_answers_a_stream_request_with_html(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    async with await vendor.request(
        session, server, stream=True, knobs="non_sse_body=1"
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert (await response.read()).startswith(b"<html>")
    async with await vendor.request(
        session, server, stream=False, knobs="non_sse_body=1"
    ) as response:
        assert response.content_type == "application/json"


@each_vendor
@pytest.mark.parametrize("stream", [False, True])
async def test_trickle_sends_the_same_bytes_in_many_pieces(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor, stream: bool
) -> None:
    async with await vendor.request(session, server, stream=stream) as response:
        expected = await response.read()
    pieces = []
    async with await vendor.request(
        session, server, stream=stream, knobs="trickle=yes"
    ) as response:
        async for piece in response.content.iter_any():
            pieces.append(piece)
    assert b"".join(pieces) == expected
    assert len(pieces) > expected.count(b"\n") + 1


@each_vendor
async def test_chunk_and_answer_lengths(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    knobs = "answer_chars=100; chunk_chars=7"
    async with await vendor.request(session, server, stream=True, knobs=knobs) as response:
        frames = split_frames(await response.read())
    texts = [vendor.answer_text(json.loads(vendor.data(frame))) for frame in frames]
    assert len(frames) == 15
    if vendor is QIANFAN:
        assert [len(text) for text in texts] == [7] * 14 + [2]
    else:
        assert [len(text) for text in texts] == [*range(7, 100, 7), 100]


@each_vendor
async def test_answers_end_with_a_whole_sentence_at_exactly_their_length(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    for answer_chars in (12, 100, 241):
        knobs = f"answer_chars={answer_chars}"
        async with await vendor.request(session, server, stream=False, knobs=knobs) as response:
            text = vendor.answer_text(await response.json())
        assert len(text) == answer_chars and text.endswith("."), text
        assert all(word.strip(".").lower() in WORDS for word in text.split()), text


def test_corpus_texts_are_whole_sentences_of_every_length() -> None:
    for sentence in range(0, 2048, 101):
        for length in (*range(3, 40), 99, 240, 1000):
            text = corpus_text(sentence, length)
            assert len(text) == length and text.endswith("."), (sentence, length, text)
            assert all(word.strip(".").lower() in WORDS for word in text.split()), text
            assert "  " not in text and ".." not in text and not text.startswith(" ")
    assert corpus_text(7, 240) == corpus_text(7, 240)  # deterministic


async def test_empty_answer_is_one_empty_event(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    async with await QIANFAN.request(
        session, server, stream=True, knobs="answer_chars=0"
    ) as response:
        frames = split_frames(await response.read())
    event = json.loads(QIANFAN.data(frames[0]))
    assert len(frames) == 1 and (event["result"], event["is_end"]) == ("", True)


@each_vendor
async def test_response_delay_holds_back_the_headers(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            vendor.request(session, server, stream=True, knobs="response_delay=60"), SHORT_READ
        )
    await asyncio.wait_for(server.close(), 5)


async def test_first_chunk_delay_sends_headers_then_holds_back_the_events(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    async with await DASHSCOPE.request(
        session, server, stream=True, knobs="first_chunk_delay=60"
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        with pytest.raises(TimeoutError):
            await read_frame(response, timeout=SHORT_READ)
        await asyncio.wait_for(server.close(), 5)


async def test_chunks_per_second_paces_the_events(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    async with await QIANFAN.request(
        session, server, stream=True, knobs="chunks_per_second=0.01"
    ) as response:
        first = json.loads(QIANFAN.data(await read_frame(response)))
        assert first["sentence_id"] == 0
        with pytest.raises(TimeoutError):
            await read_frame(response, timeout=SHORT_READ)
    await server.wait_for(lambda stats: stats.streams_aborted == 1)


@each_vendor
async def test_answers_are_deterministic_per_request(
    server: MockServer, session: aiohttp.ClientSession, vendor: Vendor
) -> None:
    answers = []
    for prompt in ["same", "same", "different"]:
        async with await vendor.request(session, server, stream=False, prompt=prompt) as response:
            answer = await response.json()
            answer.pop("created", None)  # Qianfan's answer time, the one field that may differ
            answers.append(answer)
    assert answers[0] == answers[1]
    assert vendor.answer_text(answers[0]) != vendor.answer_text(answers[2])


def test_answers_do_not_depend_on_the_process() -> None:
    script = (
        "from llmstreams.mock.text import answer_text, request_digest, qianfan_id;"
        "digest = request_digest('/p', b'{\"a\": 1}');"
        "print(qianfan_id(digest), answer_text(digest, 80))"
    )
    digest = request_digest("/p", b'{"a": 1}')
    other_process = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert other_process.stdout == f"{qianfan_id(digest)} {answer_text(digest, 80)}\n"


async def test_set_behaviour_applies_to_later_requests(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    server.set_behaviour(Behaviour(answer_chars=48))
    assert server.behaviour.answer_chars == 48
    async with await DASHSCOPE.request(session, server, stream=False) as response:
        assert len(DASHSCOPE.answer_text(await response.json())) == 48


async def test_header_knobs_override_server_wide_ones(session: aiohttp.ClientSession) -> None:
    async with (
        MockServer(behaviour=Behaviour(answer_chars=48, chunk_chars=12)) as server,
        await DASHSCOPE.request(session, server, stream=True, knobs="answer_chars=24") as response,
    ):
        frames = split_frames(await response.read())
    assert len(frames) == 2


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ("bogus=1", "unknown knob 'bogus'"),
        ("chunk_chars=abc", "chunk_chars='abc' is not an integer"),
        ("chunk_chars=0", "'chunk_chars' must be >= 1: 0"),
        ("response_delay=soon", "response_delay='soon' is not a number"),
        ("response_delay=nan", "response_delay must be a finite number"),
        ("trickle=maybe", "trickle='maybe' is not a boolean"),
        ("fail_code=E42", "fail_code 'E42' is neither a Qianfan error_code nor a DashScope code"),
        ("http_status=200", "'http_status' must be >= 400: 200"),
        ("stall_after", "'stall_after' is not key=value"),
    ],
)
async def test_bad_behaviour_headers_are_400_with_a_clear_message(
    server: MockServer, session: aiohttp.ClientSession, knobs: str, message: str
) -> None:
    for vendor in VENDORS:
        async with await vendor.request(session, server, stream=True, knobs=knobs) as response:
            assert response.status == 400
            text = await response.text()
        assert text.startswith(f"llmstreams mock: {BEHAVIOUR_HEADER}: ")
        assert message in text


async def test_optional_knobs_can_be_reset_per_request(session: aiohttp.ClientSession) -> None:
    async with (
        MockServer(behaviour=Behaviour(error_after=0)) as server,
        await DASHSCOPE.request(session, server, stream=True, knobs="error_after=none") as response,
    ):
        frames = split_frames(await response.read())
    assert len(frames) == 10
