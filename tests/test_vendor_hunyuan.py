"""Tencent Hunyuan's preset: its URL, key variable and extras, against the mock's Hunyuan route.
(Streaming, errors and the command line are covered for every provider in test_providers.py
and test_provider_cli.py.)"""

from __future__ import annotations

import json

import pytest

import llmstreams
from llmstreams import PROVIDERS, OpenAICompatibleClient
from llmstreams.mock import MockServer

MESSAGES = [{"role": "user", "content": "你好"}]


def test_the_preset_names_the_documented_endpoint_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUNYUAN_API_KEY", "sk-hunyuan-from-the-environment")
    client = llmstreams.client_for("hunyuan")
    assert isinstance(client, OpenAICompatibleClient) and client.has_api_key
    assert client.base_url == "https://api.hunyuan.cloud.tencent.com/v1"
    assert "sk-hunyuan-from-the-environment" not in repr(client)


async def test_enable_enhancement_is_sent_and_answered(server: MockServer) -> None:
    provider = PROVIDERS["hunyuan"]
    async with provider.mock_client(server.url) as client:
        completion = await client.stream_chat(
            MESSAGES, model="hunyuan-turbos-latest", enable_enhancement=True
        ).collect()
    assert completion.text and completion.usage is not None
    assert server.stats.requests["hunyuan.chat"] == 1


async def test_a_wrong_extra_is_refused_before_sending(server: MockServer) -> None:
    async with PROVIDERS["hunyuan"].mock_client(server.url) as client:
        with pytest.raises(llmstreams.InvalidParameterError) as caught:
            client.stream_chat(MESSAGES, model="hunyuan-lite", enable_enhancement="yes")  # type: ignore[arg-type]
    assert caught.value.field == "enable_enhancement"
    assert server.stats.requests["hunyuan.chat"] == 0


async def test_the_mock_refuses_what_hunyuan_refuses(server: MockServer) -> None:
    # A client that does not check Hunyuan's extras, so that the mock gets to refuse it.
    route = server.url + PROVIDERS["hunyuan"].mock_path
    async with OpenAICompatibleClient(base_url=route, api_key="sk-x", max_retries=0) as client:
        with pytest.raises(llmstreams.InvalidRequestError) as caught:
            await client.chat(
                MESSAGES, model="hunyuan-lite", extra_body={"enable_enhancement": "yes"}
            )
    assert caught.value.http_status == 400 and "EnableEnhancement" in json.dumps(caught.value.message)
