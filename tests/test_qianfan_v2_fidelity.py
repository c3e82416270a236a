"""Qianfan API v2 as the official Qianfan SDK's own test server answers it (the facts of
`python/qianfan/tests/utils/mock_server.py` in baidubce/bce-qianfan-sdk, which PyPI's `qianfan`
does not ship, replayed by a small server of this test's own):

- a stream of three events whose last carries `"is_end": true` and its text, no
  `finish_reason`, usage on every event, then `data: [DONE]`;
- `test_retry*` models answered twice with HTTP 200 and `{"error": {"code": "internal_error",
  "message": "high load"}}`, then normally;
- errors by Qianfan v2's documented codes (https://cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

import llmstreams
from llmstreams import OpenAICompatibleClient
from tests.support import serving

KEY = "bce-v3/ALTAK-fidelity/secret-fidelity"
MESSAGES = [{"role": "user", "content": "你好"}]
STREAM_COUNT = 3


def stream_event(model: str, index: int) -> dict[str, Any]:
    return {
        "id": "as-5j1w2wzna2", "object": "chat.completion", "created": 1717488564, "model": model,
        "choices": [{
            "index": 0, "delta": {"content": f"part {index}. "},
            "is_end": index == STREAM_COUNT - 1, "need_clear_history": False,
        }],
        "usage": {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2},
    }


class SdkTestServer:
    """Answers /v2/chat/completions as the SDK's test server does; counts requests by model."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        self.requests[model] = self.requests.get(model, 0) + 1
        if model.startswith("test_retry") and self.requests[model] % 3 != 0:
            return web.json_response({"error": {"code": "internal_error", "message": "high load"}})
        code = body.get("extra_code")
        if model == "error":
            status, code = 401, code or "invalid_model"
            return web.json_response(
                {"error": {"code": code, "message": "refused", "type": "invalid_request_error"},
                 "id": "as-refused"},
                status=429 if "rate_limit" in code else status,
            )
        if not body.get("stream"):
            return web.json_response({
                "id": "as-sq01fe52em", "object": "chat.completion", "created": 1717487283,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"},
                             "finish_reason": "normal"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(STREAM_COUNT):
            await response.write(f"data: {json.dumps(stream_event(model, index))}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def sdk_server() -> AsyncIterator[tuple[SdkTestServer, str]]:
    server = SdkTestServer()
    app = web.Application()
    app.router.add_post("/v2/chat/completions", server.chat)
    async with serving(app) as url:
        yield server, url


def client(url: str, max_retries: int = 2) -> OpenAICompatibleClient:
    return OpenAICompatibleClient(vendor="qianfan", api_key=KEY, base_url=url, max_retries=max_retries)


async def test_the_event_that_says_is_end_is_the_end_chunk_with_its_text(
    sdk_server: tuple[SdkTestServer, str],
) -> None:
    _, url = sdk_server
    qianfan = client(url)
    async with qianfan, qianfan.stream_chat(MESSAGES, model="ernie-speed-8k") as stream:
        chunks = [chunk async for chunk in stream]
    assert [chunk.text for chunk in chunks] == ["part 0. ", "part 1. ", "part 2. "]
    assert [chunk.is_end for chunk in chunks] == [False, False, True]
    assert [chunk.sentence_id for chunk in chunks] == [0, 1, 2]
    end = chunks[-1]
    assert end.usage is not None and end.usage.total_tokens == 2
    assert end.request_id == "as-5j1w2wzna2"
    assert stream.completion.text == "part 0. part 1. part 2. " and stream.completion.is_complete


@pytest.mark.parametrize("stream", [True, False])
async def test_an_error_in_http_200_before_any_output_is_retried(
    sdk_server: tuple[SdkTestServer, str], stream: bool
) -> None:
    server, url = sdk_server
    async with client(url, max_retries=2) as qianfan:
        if stream:
            completion = await qianfan.stream_chat(MESSAGES, model="test_retry_a").collect()
        else:
            completion = await qianfan.chat(MESSAGES, model="test_retry_a")
    assert completion.text and server.requests["test_retry_a"] == 3


async def test_without_retries_left_the_error_in_http_200_is_a_retryable_server_error(
    sdk_server: tuple[SdkTestServer, str],
) -> None:
    server, url = sdk_server
    async with client(url, max_retries=1) as qianfan:
        with pytest.raises(llmstreams.ServerError) as caught:
            await qianfan.chat(MESSAGES, model="test_retry_b")
    assert caught.value.retryable and caught.value.code == "internal_error"
    assert "high load" in str(caught.value) and server.requests["test_retry_b"] == 2


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        ("invalid_model", llmstreams.NotFoundError),
        ("invalid_iam_token", llmstreams.AuthenticationError),
        ("rpm_rate_limit_exceeded", llmstreams.RateLimitError),
        ("tpm_rate_limit_exceeded", llmstreams.RateLimitError),
        ("system_unsafe", llmstreams.ContentFilterError),
    ],
)
async def test_qianfan_v2_error_codes_map_to_the_hierarchy(
    sdk_server: tuple[SdkTestServer, str], code: str, error_class: type[llmstreams.APIError]
) -> None:
    _, url = sdk_server
    async with client(url, max_retries=0) as qianfan:
        with pytest.raises(llmstreams.APIError) as caught:
            await qianfan.chat(MESSAGES, model="error", extra_body={"extra_code": code})
    assert type(caught.value) is error_class and caught.value.code == code
    assert caught.value.request_id == "as-refused"
