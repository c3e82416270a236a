"""The mock's Qianfan routes, spoken to over real sockets with a plain aiohttp client."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from llmstreams.mock import MockCredentials, MockServer
from llmstreams.mock.qianfan import API_PREFIX, TOKEN_PATH
from llmstreams.qianfan.signing import bce_authorization, bce_timestamp

CHAT = API_PREFIX + "/chat/completions"
COMPLETIONS = API_PREFIX + "/completions/codellama_7b_instruct"
ID_PATTERN = re.compile(r"^as-[a-z0-9]{10}$")
USER_HI = [{"role": "user", "content": "Please introduce The Great Wall"}]


async def fetch_token(session: aiohttp.ClientSession, server: MockServer) -> str:
    params = {"grant_type": "client_credentials", "client_id": "key", "client_secret": "secret"}
    async with session.post(server.url + TOKEN_PATH, params=params) as response:
        assert response.status == 200
        return str((await response.json())["access_token"])


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[aiohttp.ClientResponse, bytes]:
    params = {} if token is None else {"access_token": token}
    async with session.post(url, params=params, json=body, headers=headers) as response:
        return response, await response.read()


def data_events(body: bytes) -> list[dict[str, Any]]:
    """Each frame of a Qianfan stream must be exactly one `data: {json}` line."""
    frames = body.split(b"\n\n")
    assert frames[-1] == b"", "the stream must end with a blank line"
    events = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ") and b"\n" not in frame, frame
        events.append(json.loads(frame[len(b"data: ") :]))
    return events


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_token_issues_a_remembered_access_token(
    server: MockServer, session: aiohttp.ClientSession, method: str
) -> None:
    params = {"grant_type": "client_credentials", "client_id": "any", "client_secret": "thing"}
    async with session.request(method, server.url + TOKEN_PATH, params=params) as response:
        assert response.status == 200
        token = await response.json()
    assert set(token) == {
        "refresh_token",
        "expires_in",
        "session_key",
        "access_token",
        "scope",
        "session_secret",
    }
    assert token["access_token"].startswith("24.")
    assert token["expires_in"] == 2592000
    assert server.stats.tokens_issued == 1
    response, _ = await post(
        session, server.url + CHAT, {"messages": USER_HI}, token=token["access_token"]
    )
    assert response.status == 200


async def test_token_enforces_configured_credentials(session: aiohttp.ClientSession) -> None:
    credentials = MockCredentials(api_key="the-key", secret_key="the-secret")
    async with MockServer(credentials=credentials) as server:
        cases = [
            ("wrong-key", "the-secret", 401, "unknown client id"),
            ("the-key", "wrong-secret", 401, "Client authentication failed"),
            ("the-key", "the-secret", 200, None),
        ]
        for client_id, client_secret, status, description in cases:
            params = {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            }
            async with session.post(server.url + TOKEN_PATH, params=params) as response:
                assert response.status == status
                body = await response.json()
            if description is not None:
                assert body == {"error": "invalid_client", "error_description": description}
        assert server.stats.tokens_issued == 1


async def test_token_rejects_other_grant_types(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    params = {"grant_type": "password", "client_id": "k", "client_secret": "s"}
    async with session.post(server.url + TOKEN_PATH, params=params) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "unsupported_grant_type"


async def test_chat_answer_has_the_documented_fields(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    token = await fetch_token(session, server)
    response, raw = await post(session, server.url + CHAT, {"messages": USER_HI}, token=token)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = json.loads(raw)
    assert list(body) == [
        "id",
        "object",
        "created",
        "result",
        "is_truncated",
        "need_clear_history",
        "finish_reason",
        "usage",
    ]
    assert ID_PATTERN.match(body["id"])
    assert body["object"] == "chat.completion"
    assert len(body["result"]) == 240
    assert body["is_truncated"] is False
    assert body["need_clear_history"] is False
    assert body["finish_reason"] == "normal"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_completions_answer_carries_is_safe(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    token = await fetch_token(session, server)
    _, raw = await post(session, server.url + COMPLETIONS, {"prompt": "def is_even"}, token=token)
    body = json.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["is_safe"] == 1
    assert len(body["result"]) == 240
    assert server.stats.requests["qianfan.completions"] == 1


async def test_any_endpoint_name_is_served(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    token = await fetch_token(session, server)
    _, raw = await post(
        session, server.url + API_PREFIX + "/chat/my_dolly_12b", {"messages": USER_HI}, token=token
    )
    assert "result" in json.loads(raw)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_stream_is_one_data_line_per_event_and_matches_the_whole_answer(
    server: MockServer, session: aiohttp.ClientSession, path: str
) -> None:
    token = await fetch_token(session, server)
    body: dict[str, Any] = {"messages": USER_HI} if path == CHAT else {"prompt": "list files"}
    _, whole = await post(session, server.url + path, body, token=token)
    response, raw = await post(session, server.url + path, {**body, "stream": True}, token=token)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert b"[DONE]" not in raw
    events = data_events(raw)
    assert len(events) == 10
    assert [event["sentence_id"] for event in events] == list(range(10))
    assert [event["is_end"] for event in events] == [False] * 9 + [True]
    assert all(len(event["result"]) == 24 for event in events)
    assert "".join(event["result"] for event in events) == json.loads(whole)["result"]
    completion_tokens = [event["usage"]["completion_tokens"] for event in events]
    assert completion_tokens == sorted(completion_tokens) and completion_tokens[0] > 0
    assert events[-1]["usage"] == json.loads(whole)["usage"]
    assert [("finish_reason" in event) for event in events] == [False] * 9 + [True]
    assert events[-1]["finish_reason"] == "normal"
    assert {event["id"] for event in events} == {json.loads(whole)["id"]}
    assert all(event["is_truncated"] is False for event in events)
    assert all(event["need_clear_history"] is False for event in events)
    assert all(("is_safe" in event) == (path == COMPLETIONS) for event in events)


async def test_max_output_tokens_truncates(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    token = await fetch_token(session, server)
    body = {"messages": USER_HI, "max_output_tokens": 5}
    _, raw = await post(session, server.url + CHAT, body, token=token)
    answer = json.loads(raw)
    assert answer["is_truncated"] is True
    assert answer["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 5
    assert 0 < len(answer["result"]) < 240


@pytest.mark.parametrize("stream", [False, True])
async def test_errors_are_plain_json_with_http_200_even_for_streams(
    server: MockServer, session: aiohttp.ClientSession, stream: bool
) -> None:
    body = {"messages": USER_HI, "stream": stream}
    response, raw = await post(session, server.url + CHAT, body, token="24.not-issued")
    assert response.status == 200
    assert response.content_type == "application/json"
    error = json.loads(raw)
    assert error["error_code"] == 110
    assert error["error_msg"] == "Access token invalid or no longer valid"
    assert ID_PATTERN.match(error["id"])


async def test_missing_auth_is_error_110(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    _, raw = await post(session, server.url + CHAT, {"messages": USER_HI})
    assert json.loads(raw)["error_code"] == 110


async def test_expired_tokens_answer_111(session: aiohttp.ClientSession) -> None:
    async with MockServer(token_ttl=0) as server:
        token = await fetch_token(session, server)
        _, raw = await post(session, server.url + CHAT, {"messages": USER_HI}, token=token)
        assert json.loads(raw) == {
            "error_code": 111,
            "error_msg": "Access token expired",
            "id": json.loads(raw)["id"],
        }


async def test_expire_tokens_expires_every_token_issued_so_far(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    old_token = await fetch_token(session, server)
    server.expire_tokens()
    new_token = await fetch_token(session, server)
    _, old = await post(session, server.url + CHAT, {"messages": USER_HI}, token=old_token)
    _, new = await post(session, server.url + CHAT, {"messages": USER_HI}, token=new_token)
    assert json.loads(old)["error_code"] == 111
    assert "result" in json.loads(new)


def signed_headers(
    server: MockServer,
    *,
    access_key: str,
    secret_access_key: str,
    signed_at: datetime | None = None,
) -> dict[str, str]:
    timestamp = bce_timestamp(signed_at or datetime.now(UTC))
    headers = {
        "Host": f"127.0.0.1:{server.port}",
        "Content-Type": "application/json",
        "x-bce-date": timestamp,
    }
    headers["Authorization"] = bce_authorization(
        access_key=access_key,
        secret_access_key=secret_access_key,
        method="POST",
        path=CHAT,
        query={},
        headers=headers,
        timestamp=timestamp,
        signed_headers=["host", "content-type", "x-bce-date"],
    )
    return headers


async def test_bce_signature_is_verified_against_the_configured_keys(
    session: aiohttp.ClientSession,
) -> None:
    credentials = MockCredentials(access_key="my-ak", secret_access_key="my-sk")
    async with MockServer(credentials=credentials) as server:
        good = signed_headers(server, access_key="my-ak", secret_access_key="my-sk")
        _, raw = await post(session, server.url + CHAT, {"messages": USER_HI}, headers=good)
        assert "result" in json.loads(raw)

        for bad in [
            signed_headers(server, access_key="my-ak", secret_access_key="wrong-sk"),
            signed_headers(server, access_key="other-ak", secret_access_key="my-sk"),
            signed_headers(
                server,
                access_key="my-ak",
                secret_access_key="my-sk",
                signed_at=datetime.now(UTC) - timedelta(hours=1),
            ),
        ]:
            _, raw = await post(session, server.url + CHAT, {"messages": USER_HI}, headers=bad)
            error = json.loads(raw)
            assert (error["error_code"], error["error_msg"]) == (14, "IAM Certification failed")


async def test_bce_signature_detects_a_tampered_body_header(session: aiohttp.ClientSession) -> None:
    credentials = MockCredentials(secret_access_key="my-sk")
    async with MockServer(credentials=credentials) as server:
        headers = signed_headers(server, access_key="any-ak", secret_access_key="my-sk")
        headers["Content-Type"] = "application/json; charset=latin-1"
        _, raw = await post(session, server.url + CHAT, {"messages": USER_HI}, headers=headers)
        assert json.loads(raw)["error_code"] == 14


async def test_without_credentials_any_well_formed_signature_is_accepted(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    headers = signed_headers(server, access_key="whoever", secret_access_key="whatever")
    _, raw = await post(session, server.url + CHAT, {"messages": USER_HI}, headers=headers)
    assert "result" in json.loads(raw)
    headers["Authorization"] = "bce-auth-v1/not-enough-parts"
    _, raw = await post(session, server.url + CHAT, {"messages": USER_HI}, headers=headers)
    assert json.loads(raw)["error_code"] == 14


@pytest.mark.parametrize(
    ("path", "body", "code", "message"),
    [
        (CHAT, b"{not json", 336002, "Invalid JSON"),
        (CHAT, b"{}", 336003, "messages can't be empty"),
        (COMPLETIONS, b'{"prompt": ""}', 336003, "prompt can't be empty"),
        (
            CHAT,
            json.dumps({"messages": USER_HI * 2}).encode(),
            336006,
            "the role of message with odd index in the messages must be assistant",
        ),
        (
            CHAT,
            json.dumps(
                {"messages": [*USER_HI, {"role": "assistant", "content": "Hello"}]}
            ).encode(),
            336006,
            "the length of messages must be an odd number",
        ),
        (
            CHAT,
            json.dumps({"messages": USER_HI, "temperature": 0}).encode(),
            336003,
            "temperature range is (0.0, 1.0]",
        ),
        (
            CHAT,
            json.dumps({"messages": USER_HI, "stop": ["a", "b", "c", "d", "e"]}).encode(),
            336003,
            "stop must be at most 4 strings of at most 20 characters",
        ),
    ],
)
async def test_invalid_requests_get_the_documented_error_codes(
    server: MockServer,
    session: aiohttp.ClientSession,
    path: str,
    body: bytes,
    code: int,
    message: str,
) -> None:
    token = await fetch_token(session, server)
    async with session.post(
        server.url + path, params={"access_token": token}, data=body
    ) as response:
        assert response.status == 200
        error = await response.json()
    assert (error["error_code"], error["error_msg"]) == (code, message)


async def test_trigger_phrase_in_the_last_message_clears_history(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    token = await fetch_token(session, server)
    body = {"messages": [{"role": "user", "content": "tell me [[unsafe]] things"}]}
    _, raw = await post(session, server.url + CHAT, body, token=token)
    answer = json.loads(raw)
    assert answer["need_clear_history"] is True
    assert answer["ban_round"] == -1
    assert answer["result"] == ""
    assert answer["usage"]["completion_tokens"] == 0

    _, raw = await post(session, server.url + CHAT, {**body, "stream": True}, token=token)
    events = data_events(raw)
    assert len(events) == 1
    assert events[0]["is_end"] is True
    assert (events[0]["need_clear_history"], events[0]["ban_round"]) == (True, -1)
    assert events[0]["result"] == ""


async def test_trigger_phrase_in_an_earlier_round_names_that_round(
    session: aiohttp.ClientSession,
) -> None:
    async with MockServer(trigger_phrase="forbidden") as server:
        token = await fetch_token(session, server)
        messages = [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "something forbidden"},
            {"role": "assistant", "content": "no"},
            {"role": "user", "content": "and now?"},
        ]
        _, raw = await post(session, server.url + CHAT, {"messages": messages}, token=token)
        answer = json.loads(raw)
        assert (answer["need_clear_history"], answer["ban_round"]) == (True, 2)

        _, raw = await post(session, server.url + COMPLETIONS, {"prompt": "forbidden"}, token=token)
        answer = json.loads(raw)
        assert (answer["need_clear_history"], answer["ban_round"], answer["is_safe"]) == (
            True,
            -1,
            0,
        )
