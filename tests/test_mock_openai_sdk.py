"""The official `openai` SDK, unchanged but for `base_url`, against each OpenAI-compatible route.

What the SDK assembles (stream and whole, chat and completions, reasoning and tool calls) must be
what the mock sent: the same text as a raw request to the same route. (That llmstreams' own
clients get the same chat text and tool calls as the SDK is tested in test_openai_client.py; the
legacy completions are compared here.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import openai
import pytest

from llmstreams import OpenAICompatibleClient
from llmstreams.mock import Behaviour, MockServer

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about rivers"}]
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
]


@attrs.frozen
class Base:
    name: str
    prefix: str
    key: str
    model: str
    completions: bool

    def __repr__(self) -> str:
        return self.name


BASES = [
    Base("qianfan-v2", "/v2", "bce-v3/ALTAK-a/b", "ernie-speed-8k", completions=True),
    Base("dashscope", "/compatible-mode/v1", "sk-test", "qwen-plus", completions=False),
    Base("openai", "/v1", "no-key-needed", "m", completions=True),
]
each_base = pytest.mark.parametrize("base", BASES, ids=repr)


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock


def sdk(server: MockServer, base: Base) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + base.prefix, api_key=base.key)


async def raw_whole(server: MockServer, base: Base, path: str, body: dict[str, Any]) -> Any:
    """The mock's own whole answer, read without the SDK."""
    headers = {"Authorization": f"Bearer {base.key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + base.prefix + path, json=body, headers=headers) as reply,
    ):
        assert reply.status == 200
        return (await reply.json())["choices"][0]


@each_base
async def test_chat_stream_and_whole(server: MockServer, base: Base) -> None:
    expected = await raw_whole(
        server, base, "/chat/completions", {"model": base.model, "messages": MESSAGES}
    )
    async with sdk(server, base) as client:
        whole = await client.chat.completions.create(model=base.model, messages=MESSAGES)
        stream = await client.chat.completions.create(
            model=base.model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        pieces, usage = [], None
        async for chunk in stream:
            usage = chunk.usage or usage
            pieces += [choice.delta.content or "" for choice in chunk.choices]
    assert whole.choices[0].message.content == expected["message"]["content"]
    assert "".join(pieces) == expected["message"]["content"]
    assert len(expected["message"]["content"]) == 240
    assert whole.usage is not None and usage == whole.usage


@pytest.mark.parametrize("base", [base for base in BASES if base.completions], ids=repr)
async def test_completions_stream_and_whole(server: MockServer, base: Base) -> None:
    expected = await raw_whole(server, base, "/completions", {"model": base.model, "prompt": "Rivers"})
    async with sdk(server, base) as client:
        whole = await client.completions.create(model=base.model, prompt="Rivers")
        stream = await client.completions.create(model=base.model, prompt="Rivers", stream=True)
        pieces = [choice.text async for chunk in stream for choice in chunk.choices]
    assert whole.choices[0].text == expected["text"] == "".join(pieces)
    assert len(expected["text"]) == 240
    async with OpenAICompatibleClient(base_url=server.url + base.prefix, api_key=base.key) as ours:
        assert (await ours.complete("Rivers", model=base.model)).text == expected["text"]
        assert (await ours.stream_complete("Rivers", model=base.model).collect()).text == expected["text"]


@each_base
async def test_reasoning_reaches_the_sdk(server: MockServer, base: Base) -> None:
    body = {"model": "deepseek-r1", "messages": MESSAGES, "stream": True}
    async with sdk(server, base) as client:
        stream = await client.chat.completions.create(
            model="deepseek-r1", messages=MESSAGES, stream=True
        )
        reasoning, content = "", ""
        async for chunk in stream:
            for choice in chunk.choices:
                extra = choice.delta.model_extra or {}
                reasoning += extra.get("reasoning_content") or ""
                content += choice.delta.content or ""
    if base.name == "dashscope":
        # DashScope refuses reasoning on a whole answer; the stream is the reference.
        assert len(reasoning) == 120 and len(content) == 240
        return
    expected = await raw_whole(server, base, "/chat/completions", {**body, "stream": False})
    assert reasoning == expected["message"]["reasoning_content"]
    assert content == expected["message"]["content"]


@each_base
async def test_tool_calls_reach_the_sdk(server: MockServer, base: Base) -> None:
    body = {"model": base.model, "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required"}
    expected = (await raw_whole(server, base, "/chat/completions", body))["message"]["tool_calls"]
    async with sdk(server, base) as client:
        whole = await client.chat.completions.create(
            model=base.model, messages=MESSAGES, tools=TOOLS, tool_choice="required"
        )
        stream = await client.chat.completions.create(
            model=base.model, messages=MESSAGES, tools=TOOLS, tool_choice="required", stream=True
        )
        streamed: dict[int, list[str]] = {}
        finish_reason = None
        async for chunk in stream:
            for choice in chunk.choices:
                finish_reason = choice.finish_reason or finish_reason
                for call in choice.delta.tool_calls or []:
                    parts = streamed.setdefault(call.index, ["", "", ""])
                    parts[0] += call.id or ""
                    assert call.function is not None
                    parts[1] += call.function.name or ""
                    parts[2] += call.function.arguments or ""
    (expected_call,) = expected
    wanted = [expected_call["id"], "search", expected_call["function"]["arguments"]]
    assert streamed == {0: wanted}
    assert finish_reason == whole.choices[0].finish_reason == "tool_calls"
    (whole_call,) = whole.choices[0].message.tool_calls or []
    assert whole_call.type == "function"
    assert [whole_call.id, whole_call.function.name, whole_call.function.arguments] == wanted


async def test_the_sdk_raises_the_dialect_errors(server: MockServer) -> None:
    base = BASES[0]
    async with openai.AsyncOpenAI(
        base_url=server.url + base.prefix, api_key="sk-not-a-v2-key"
    ) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model=base.model, messages=MESSAGES)
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_iam_token"


async def test_dashscope_compatible_mode_refuses_a_key_without_sk(server: MockServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=server.url + "/compatible-mode/v1", api_key="definitely-not-a-valid-key"
    ) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="qwen-plus", messages=MESSAGES)
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
    body = raised.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert body["message"].startswith("Incorrect API key provided.")


@pytest.mark.parametrize(
    ("prefix", "key", "model", "status", "error_class"),
    [
        ("/compatible-mode/v1", "sk-test", "qwen-turbbo", 404, openai.NotFoundError),
        ("/v2", "bce-v3/ALTAK-a/b", "ernie-4", 401, openai.AuthenticationError),
        ("/deepseek", "sk-test", "deepseek-r1", 400, openai.BadRequestError),
        ("/moonshot/v1", "sk-test", "kimi-k9", 404, openai.NotFoundError),
        ("/api/paas/v4", "id.secret", "glm-9", 400, openai.BadRequestError),
        ("/api/v3", "any-ark-key", "doubao-nope", 404, openai.NotFoundError),
        ("/siliconflow/v1", "sk-test", "Qwen/Nope", 400, openai.BadRequestError),
    ],
)
async def test_the_sdk_gets_each_vendors_unknown_model_error(
    server: MockServer, prefix: str, key: str, model: str, status: int, error_class: type
) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + prefix, api_key=key) as client:
        with pytest.raises(error_class) as raised:
            await client.chat.completions.create(model=model, messages=MESSAGES)
        assert raised.value.status_code == status
        answered = await client.chat.completions.create(
            model=model, messages=MESSAGES, extra_headers={"X-Mock-Behaviour": "any_model=true"}
        )
    assert answered.choices[0].message.content


async def test_a_vllm_like_server_refuses_a_model_it_does_not_serve(
    llmstreams_mock_factory: Any,
) -> None:
    mock = await llmstreams_mock_factory(behaviour=Behaviour(served_models=("served",)))
    async with openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="none") as client:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.chat.completions.create(model="other", messages=MESSAGES)
        served = await client.chat.completions.create(model="served", messages=MESSAGES)
    assert raised.value.body == {
        "object": "error", "message": "The model `other` does not exist.",
        "type": "NotFoundError", "param": None, "code": 404,
    }
    assert served.model == "served"
