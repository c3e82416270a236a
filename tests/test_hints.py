"""Rough edges a new user hits: names from other APIs, base URLs in the official SDK's style, 404s."""

from __future__ import annotations

import pytest

import llmstreams
from llmstreams.mock import MockServer
from llmstreams.qianfan.models import MODELS

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def qianfan() -> llmstreams.QianfanClient:
    return llmstreams.QianfanClient(access_token="t", base_url="http://127.0.0.1:9")


def test_max_tokens_on_qianfan_v1_points_at_max_output_tokens(qianfan: llmstreams.QianfanClient) -> None:
    with pytest.raises(llmstreams.InvalidParameterError, match=r"extra_params=\{'max_output_tokens': N\}") as caught:
        qianfan.stream_chat(MESSAGES, model="ERNIE-Speed-8K", max_tokens=100)
    assert caught.value.field == "max_tokens"
    with pytest.raises(llmstreams.InvalidParameterError, match="max_output_tokens"):
        qianfan.stream_complete("def f():", model="CodeLlama-7b-Instruct", max_tokens=100)


def test_a_system_message_on_qianfan_v1_points_at_the_system_field(
    qianfan: llmstreams.QianfanClient,
) -> None:
    with_system = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    with pytest.raises(llmstreams.InvalidParameterError, match=r"extra_params=\{'system'") as caught:
        qianfan.stream_chat(with_system, model="ERNIE-Speed-8K")
    assert caught.value.field == "messages[0].role"
    with pytest.raises(llmstreams.InvalidParameterError, match=r"extra_params=\{'system'"):
        qianfan.stream_chat(MESSAGES, model="ERNIE-Speed-8K", system="Be brief.")


async def test_the_system_prompt_goes_through_extra_params(llmstreams_mock: MockServer) -> None:
    async with llmstreams.QianfanClient(api_key="k", secret_key="s", base_url=llmstreams_mock.url) as client:
        answer = await client.chat(
            MESSAGES, model="ERNIE-4.0-Turbo-8K", extra_params={"system": "Be brief."}
        )
    assert answer.text


def test_the_registry_knows_the_listed_v1_models_and_the_error_names_endpoint(
    qianfan: llmstreams.QianfanClient,
) -> None:
    names = {model.name for model in MODELS}
    assert {"ERNIE-4.0-Turbo-8K", "ERNIE-3.5-128K", "ERNIE-Speed-128K", "ERNIE-Tiny-8K",
            "ERNIE-Character-8K", "ERNIE-Novel-8K"} <= names
    assert len({model.endpoint for model in MODELS if model.name.startswith("ERNIE-Speed")}) == 4
    with pytest.raises(llmstreams.InvalidParameterError, match="endpoint='<API name>' works for any model"):
        qianfan.stream_chat(MESSAGES, model="ERNIE-5-Ultra")


async def test_dashscope_takes_the_official_sdks_base_url_style(llmstreams_mock: MockServer) -> None:
    for suffix in ("/api/v1", "/api/v1/"):
        async with llmstreams.DashScopeClient(api_key="sk-k", base_url=llmstreams_mock.url + suffix) as client:
            assert client.base_url == llmstreams_mock.url
            assert (await client.chat(MESSAGES, model="qwen-turbo")).text
    # The openai SDK's base URL of the compatible mode, as that mode's client takes it.
    async with llmstreams.OpenAICompatibleClient(
        vendor="dashscope-compatible", api_key="sk-k",
        base_url=llmstreams_mock.url + "/compatible-mode/v1",
    ) as compatible:
        assert compatible.base_url == llmstreams_mock.url + "/compatible-mode/v1"
        assert (await compatible.chat(MESSAGES, model="qwen-turbo")).text


async def test_a_404_says_http_404_once(llmstreams_mock: MockServer) -> None:
    wrong = llmstreams_mock.url + "/not-the-api"
    async with llmstreams.DashScopeClient(api_key="sk-k", base_url=wrong) as dashscope:
        with pytest.raises(llmstreams.NotFoundError) as from_dashscope:
            await dashscope.generate("Hello", model="billa-7b-sft-v1")
    async with llmstreams.QianfanClient(access_token="t", base_url=wrong) as qianfan:
        with pytest.raises(llmstreams.NotFoundError) as from_qianfan:
            await qianfan.chat(MESSAGES, model="ERNIE-Speed-8K")
    async with llmstreams.OpenAICompatibleClient(base_url=wrong + "/v1") as compatible:
        with pytest.raises(llmstreams.NotFoundError) as from_compatible:
            await compatible.chat(MESSAGES, model="any")
    for error in (from_dashscope.value, from_qianfan.value, from_compatible.value):
        assert str(error).count("404") == 2, str(error)  # "HTTP 404" and the body's "404: Not Found"
        assert str(error).count("HTTP 404") == 1, str(error)
        assert "error body" in str(error)
