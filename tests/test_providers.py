"""The provider registry: every provider streams through its client against the mock, each
client class speaks one API, the vendors' errors map to the error hierarchy, and nothing outside
the registry and the vendor packages asks which provider it is talking to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import llmstreams
from llmstreams import PROVIDERS, Call, OpenAICompatibleClient, QianfanClient
from llmstreams.mock import Behaviour, MockServer
from llmstreams.mock.dashscope import MODELS as DASHSCOPE_MODELS
from llmstreams.mock.openai_vendors import FLAVOURS
from tests.support import ROOT

MESSAGES = [{"role": "user", "content": "Please introduce The Great Wall"}]
VENDORS = [name for name, provider in PROVIDERS.items() if provider.vendor is not None]


@pytest.mark.parametrize("name", list(PROVIDERS))
async def test_every_provider_streams_a_chat_from_the_mock(server: MockServer, name: str) -> None:
    provider = PROVIDERS[name]
    async with provider.mock_client(server.url) as client:
        call = Call(messages=MESSAGES, model=provider.model_for(mock=True))
        async with client.stream_call(call) as stream:
            chunks = [chunk async for chunk in stream]
    completion = stream.completion
    assert len(chunks) > 2 and chunks[-1].is_end and not any(c.is_end for c in chunks[:-1])
    assert completion.text == "".join(chunk.text for chunk in chunks) and completion.text
    assert completion.usage is not None and completion.usage.completion_tokens > 0


# A key of the wrong shape for each provider whose keys have one (Volcano Engine Ark's have none).
WRONG_SHAPE_KEYS = {
    "dashscope": "definitely-not-a-valid-key",
    "dashscope-compatible": "definitely-not-a-valid-key",
    "deepseek": "definitely-not-a-valid-key",
    "moonshot": "definitely-not-a-valid-key",
    "siliconflow": "definitely-not-a-valid-key",
    "zhipu": "no-dot-in-this-key",
    "hunyuan": "definitely-not-a-valid-key",
}
# What llmstreams raises for a model the vendor does not know, as the vendor answers it.
UNKNOWN_MODEL_ERRORS = {
    "qianfan": llmstreams.NotFoundError,  # HTTP 401 invalid_model
    "dashscope": llmstreams.InvalidRequestError,  # HTTP 400 InvalidParameter "Model not exist."
    "dashscope-compatible": llmstreams.NotFoundError,
    "openai": llmstreams.NotFoundError,  # under served_models, as vLLM
    "deepseek": llmstreams.InvalidRequestError,  # HTTP 400 "Model Not Exist"
    "moonshot": llmstreams.NotFoundError,
    "zhipu": llmstreams.NotFoundError,  # 1211
    "volcengine": llmstreams.NotFoundError,
    "siliconflow": llmstreams.NotFoundError,  # 20012
    "hunyuan": llmstreams.NotFoundError,  # not documented: the dialect's model_not_found
}


@pytest.mark.parametrize("name", list(WRONG_SHAPE_KEYS))
async def test_the_mock_refuses_a_key_of_the_wrong_shape_as_the_vendor_does(
    server: MockServer, name: str
) -> None:
    provider = PROVIDERS[name]
    base_url = server.url + provider.mock_path
    call = Call(messages=MESSAGES, model=provider.model_for(mock=True))
    async with provider.client(base_url=base_url, api_key=WRONG_SHAPE_KEYS[name]) as client:
        with pytest.raises(llmstreams.AuthenticationError) as raised:
            await client.complete_call(call)
    assert raised.value.http_status == 401 and raised.value.provider == client.provider
    assert sum(server.stats.requests.values()) == 1


def test_every_provider_but_qianfan_v1_has_its_unknown_model_error() -> None:
    assert set(UNKNOWN_MODEL_ERRORS) == set(PROVIDERS) - {"qianfan-v1"}


@pytest.mark.parametrize("name", list(UNKNOWN_MODEL_ERRORS))
async def test_an_unknown_model_gets_the_vendors_error_unless_any_model(
    server: MockServer, name: str
) -> None:
    provider = PROVIDERS[name]
    default = provider.model_for(mock=True)
    assert default is not None
    if name == "openai":
        server.set_behaviour(Behaviour(served_models=(default,)))
    call = Call(messages=MESSAGES, model=default + "-typo")
    async with provider.mock_client(server.url, max_retries=0) as client:
        with pytest.raises(UNKNOWN_MODEL_ERRORS[name]) as raised:
            await client.complete_call(call)
        assert raised.value.http_status in (400, 401, 404)
        server.set_behaviour(Behaviour(any_model=True, served_models=(default,)))
        assert (await client.complete_call(call)).text


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_the_mock_serves_every_providers_default_model(name: str) -> None:
    provider = PROVIDERS[name]
    model = provider.model_for(mock=True)
    served = DASHSCOPE_MODELS if name == "dashscope" else None
    if name in FLAVOURS:
        served = FLAVOURS[name][0].models
    assert model is not None
    assert served is None or model in served


@pytest.mark.parametrize("name", VENDORS)
async def test_every_vendor_is_served_on_its_own_route(server: MockServer, name: str) -> None:
    provider = PROVIDERS[name]
    async with provider.mock_client(server.url) as client:
        await client.complete_call(Call(prompt="hello", model=provider.model_for(mock=True)))
    assert provider.mock_route is not None
    routes = {route for route, count in server.stats.requests.items() if count}
    assert routes <= {f"{provider.mock_route}.chat", f"{provider.mock_route}.completions"}
    assert routes


async def test_client_for_reads_the_vendors_key_variable(
    monkeypatch: pytest.MonkeyPatch, server: MockServer
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-from-the-environment")
    client = llmstreams.client_for("deepseek", base_url=server.url + "/deepseek")
    assert isinstance(client, OpenAICompatibleClient) and client.has_api_key
    assert client.vendor.name == "deepseek" and client.provider == "deepseek"
    async with client:
        completion = await client.chat(MESSAGES, model="deepseek-chat")
    assert completion.text


def test_a_vendor_is_refused_by_name_with_close_matches() -> None:
    with pytest.raises(llmstreams.InvalidParameterError) as caught:
        OpenAICompatibleClient(vendor="deepsek", api_key="sk-x")
    assert caught.value.field == "vendor" and "deepseek" in str(caught.value)


@pytest.mark.parametrize(("name", "right"), [("dashscope", "DashScopeClient"), ("qianfan-v1", "QianfanClient")])
def test_a_provider_of_another_dialect_is_no_vendor(name: str, right: str) -> None:
    with pytest.raises(llmstreams.InvalidParameterError, match=right):
        OpenAICompatibleClient(vendor=name)


def test_qianfan_v1_refuses_a_v2_key_naming_the_v2_client(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(llmstreams.InvalidParameterError) as caught:
        QianfanClient(api_key="bce-v3/ALTAK-x/secret-value")
    assert "OpenAICompatibleClient(vendor='qianfan')" in str(caught.value)
    assert "secret-value" not in str(caught.value)
    for variable in ("QIANFAN_SECRET_KEY", "QIANFAN_AK", "QIANFAN_SK", "QIANFAN_ACCESS_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("QIANFAN_API_KEY", "bce-v3/ALTAK-x/secret-value")
    with pytest.raises(llmstreams.InvalidParameterError, match="client_for\\('qianfan'\\)"):
        QianfanClient()


def test_the_qianfan_vendor_refuses_a_key_that_is_not_v2s() -> None:
    with pytest.raises(llmstreams.InvalidParameterError, match="keys start bce-v3/"):
        OpenAICompatibleClient(vendor="qianfan", api_key="a-v1-api-key")


def test_dashscope_native_refuses_a_compatible_mode_url() -> None:
    with pytest.raises(llmstreams.InvalidParameterError, match="dashscope-compatible"):
        llmstreams.DashScopeClient(api_key="sk-x", base_url="https://x.example/compatible-mode/v1")


def test_a_bare_host_gets_the_vendors_api_path() -> None:
    client = OpenAICompatibleClient(
        vendor="dashscope-compatible", api_key="sk-x", base_url="https://dashscope-intl.aliyuncs.com"
    )
    assert client.base_url == "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    generic = OpenAICompatibleClient(base_url="http://127.0.0.1:8000")
    assert generic.base_url == "http://127.0.0.1:8000"


async def test_qianfan_v2_refuses_a_v1_model_name_before_sending(server: MockServer) -> None:
    async with PROVIDERS["qianfan"].mock_client(server.url) as client:
        with pytest.raises(llmstreams.InvalidParameterError, match="'ernie-speed-8k'"):
            client.stream_chat(MESSAGES, model="ERNIE-Speed-8K")
    assert sum(server.stats.requests.values()) == 0


# --- Call: one generation in every client's own terms --------------------------------------------


async def test_a_prompt_reaches_a_v1_chat_model_as_a_message_and_codellama_as_a_prompt(
    server: MockServer,
) -> None:
    async with PROVIDERS["qianfan-v1"].mock_client(server.url) as client:
        await client.complete_call(Call(prompt="hi", model="ERNIE-Speed-8K"))
        await client.complete_call(Call(prompt="def fib(n):", model="CodeLlama-7b-Instruct"))
        await client.complete_call(Call(prompt="hi", model="ERNIE-Speed-8K", prompt_as="chat"))
        with pytest.raises(llmstreams.InvalidParameterError, match="is a completions model"):
            client.stream_call(Call(prompt="hi", model="CodeLlama-7b-Instruct", prompt_as="chat"))
    requests = server.stats.requests
    assert requests["qianfan.chat"] == 2 and requests["qianfan.completions"] == 1


async def test_qianfan_v1_gets_the_system_prompt_and_length_in_its_own_fields(
    server: MockServer,
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    async with PROVIDERS["qianfan-v1"].mock_client(server.url) as client:
        completion = await client.complete_call(
            Call(messages=messages, model="ERNIE-Speed-8K", max_tokens=5)
        )
    assert completion.usage is not None and completion.usage.completion_tokens == 5


async def test_a_prompt_goes_to_completions_only_where_the_provider_has_them(server: MockServer) -> None:
    for name in ("openai", "deepseek"):
        provider = PROVIDERS[name]
        async with provider.mock_client(server.url) as client:
            await client.complete_call(Call(prompt="hi", model=provider.model_for(mock=True)))
    requests = server.stats.requests
    assert requests["openai.completions"] == 1 and requests["deepseek.chat"] == 1


def test_a_call_takes_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(llmstreams.InvalidParameterError, match="exactly one"):
        Call(prompt="a", messages=MESSAGES)
    with pytest.raises(llmstreams.InvalidParameterError, match="exactly one"):
        Call()
    with pytest.raises(llmstreams.InvalidParameterError, match="prompt_as"):
        Call(prompt="a", prompt_as="completions")  # type: ignore[arg-type]


# --- the vendors' errors and quirks ---------------------------------------------------------------

ERRORS = [
    ("InvalidApiKey", llmstreams.AuthenticationError, False),
    ("ModelNotFound", llmstreams.NotFoundError, False),
    ("Throttling", llmstreams.RateLimitError, True),
    ("Throttling.AllocationQuota", llmstreams.RateLimitError, False),
    ("DataInspectionFailed", llmstreams.ContentFilterError, False),
    ("ModelUnavailable", llmstreams.ServerError, True),
]


# SiliconFlow documents no code of its own for a content block or an unavailable model: the
# status decides there, which the status-table tests cover.
_UNDOCUMENTED = {("siliconflow", "DataInspectionFailed"), ("siliconflow", "ModelUnavailable")}


@pytest.mark.parametrize(
    ("name", "code", "error_class", "retryable"),
    [
        (name, *error)
        for name in ["deepseek", "moonshot", "zhipu", "volcengine", "siliconflow"]
        for error in ERRORS
        if (name, error[0]) not in _UNDOCUMENTED
    ],
)
async def test_each_vendors_error_bodies_map_to_the_hierarchy(
    server: MockServer, name: str, code: str, error_class: type[llmstreams.APIError], retryable: bool
) -> None:
    provider = PROVIDERS[name]
    async with provider.mock_client(server.url, max_retries=0) as client:
        with pytest.raises(llmstreams.APIError) as caught:
            await client.chat(
                MESSAGES, model=provider.model_for(mock=True),
                extra_headers={"X-Mock-Behaviour": f"fail_code={code}"},
            )
    error = caught.value
    assert type(error) is error_class, (error, error.code)
    assert error.retryable is retryable and error.provider == name
    assert error.message and error.http_status is not None


async def test_moonshots_usage_in_the_finishing_choice_is_read(server: MockServer) -> None:
    async with PROVIDERS["moonshot"].mock_client(server.url) as client:
        stream = client.stream_chat(MESSAGES, model="kimi-k2.6", include_usage=False)
        completion = await stream.collect()
    assert completion.usage is not None and completion.usage.completion_tokens > 0


async def test_a_deepseek_reasoner_streams_its_reasoning_apart(server: MockServer) -> None:
    async with PROVIDERS["deepseek"].mock_client(server.url) as client:
        completion = await client.stream_chat(MESSAGES, model="deepseek-reasoner").collect()
        plain = await client.stream_chat(
            MESSAGES, model="deepseek-v4-flash", thinking={"type": "disabled"}
        ).collect()
    assert completion.reasoning and completion.text and not plain.reasoning


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("zhipu", {"temperature": 1.5}, "temperature"),
        ("moonshot", {"temperature": 1.5}, "temperature"),
        ("zhipu", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("deepseek", {"thinking": {"type": "sometimes"}}, "thinking"),
        ("siliconflow", {"thinking_budget": 10}, "thinking_budget"),
        ("volcengine", {"reasoning_effort": "extreme"}, "reasoning_effort"),
    ],
)
async def test_vendor_limits_and_extras_are_checked_before_sending(
    server: MockServer, name: str, params: dict[str, object], field: str
) -> None:
    provider = PROVIDERS[name]
    async with provider.mock_client(server.url) as client:
        with pytest.raises(llmstreams.InvalidParameterError) as caught:
            client.stream_chat(MESSAGES, model="m", **params)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert sum(server.stats.requests.values()) == 0


# --- no provider switches outside the registry and the vendor packages ---------------------------

SWITCH = re.compile(
    r"provider\s*(==|!=)|provider\s+(not\s+)?in\s*[(\[{]|isinstance\([^)]*(Client|Provider)\b"
)
GENERIC_PLACES = ["llmstreams/batch.py", "llmstreams/fanout.py", "llmstreams/bench",
                  "llmstreams/commands", "llmstreams/ray"]


def test_nothing_outside_the_registry_asks_which_provider_it_talks_to() -> None:
    offenders = []
    for place in GENERIC_PLACES:
        path = ROOT / place
        for file in [path] if path.is_file() else sorted(Path(path).rglob("*.py")):
            for number, line in enumerate(file.read_text().splitlines(), 1):
                if SWITCH.search(line):
                    offenders.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
