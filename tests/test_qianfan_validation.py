"""QianfanClient rejects bad parameters and credentials before anything is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmstreams import InvalidParameterError, Pool
from llmstreams.mock import MockServer
from llmstreams.qianfan import MODELS, QianfanClient
from llmstreams.qianfan.auth import ENV_LAYOUTS

USER = [{"role": "user", "content": "hello"}]
SECRETS = {
    "api_key": "app-key-VALUE-1",
    "secret_key": "app-secret-VALUE-2",
    "access_token": "token-VALUE-3",
    "access_key": "iam-ak-VALUE-4",
    "secret_access_key": "iam-sk-VALUE-5",
}
ENV_VARIABLES = sorted({variable for _, layout in ENV_LAYOUTS for variable in layout.values()})


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [*ENV_VARIABLES, "QIANFAN_BASE_URL"]:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer() as mock:
        yield mock
        # Whatever a test did, a rejected call never reached the server.
        assert sum(mock.stats.requests.values()) == 0, mock.stats.requests


@pytest.fixture
async def client(server: MockServer) -> AsyncIterator[QianfanClient]:
    async with QianfanClient(api_key="k", secret_key="s", base_url=server.url) as qianfan:
        yield qianfan


CHAT_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"temperature": 0}, "temperature", "(0, 1]"),
    ({"temperature": 1.01}, "temperature", "(0, 1]"),
    ({"temperature": "0.5"}, "temperature", "number"),
    ({"temperature": True}, "temperature", "number"),
    ({"temperature": float("nan")}, "temperature", "number"),
    ({"top_p": -0.01}, "top_p", "[0, 1]"),
    ({"top_p": 1.5}, "top_p", "[0, 1]"),
    ({"penalty_score": 0.99}, "penalty_score", "[1, 2]"),
    ({"penalty_score": 2.01}, "penalty_score", "[1, 2]"),
    ({"top_k": 0}, "top_k", "positive whole number"),
    ({"top_k": 2.5}, "top_k", "positive whole number"),
    ({"top_k": True}, "top_k", "positive whole number"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"stop": ["x" * 21]}, "stop", "at most 20 characters"),
    ({"stop": [1]}, "stop", "list of strings"),
    ({"stop": [""]}, "stop", "empty string"),
    ({"user_id": 42}, "user_id", "string"),
    ({"user_id": ""}, "user_id", "empty"),
    ({"temprature": 0.5}, "temprature", "did you mean 'temperature'"),
    ({"max_tokens": 10}, "max_tokens", "extra_params="),
    ({"extra_params": {"messages": []}}, "extra_params['messages']", "set by the method"),
    ({"extra_params": {"stream": False}}, "extra_params['stream']", "set by the method"),
    ({"extra_params": {"prompt": "x"}}, "extra_params['prompt']", "set by the method"),
    ({"extra_params": {"temperature": 9}}, "extra_params['temperature']", "temperature= argument"),
    ({"extra_params": ["system"]}, "extra_params", "dict"),
    ({"extra_params": {"system": object()}}, "extra_params", "must be JSON"),
    ({"extra_params": {"weight": float("inf")}}, "extra_params", "must be JSON"),
    ({"extra_headers": {"Authorization": "x"}}, "extra_headers", "client sets it"),
    ({"extra_headers": {"x-bce-date": "x"}}, "extra_headers", "client sets it"),
    ({"extra_headers": {"X-Trace": 1}}, "extra_headers", "must be a string"),
    ({"extra_headers": {"X-Trace": "a\r\nInjected: 1"}}, "extra_headers", "line breaks"),
    ({"model": "ERNIE-Speed-8K", "endpoint": "mine"}, "model", "not both"),
    ({"model": None}, "model", "required"),
    ({"model": "ERNIE-Speed-9K"}, "model", "ERNIE-Speed-8K"),
    ({"model": "CodeLlama-7b-Instruct"}, "model", "stream_complete() / complete()"),
    ({"model": 7}, "model", "string"),
    ({"endpoint": ""}, "endpoint", "non-empty"),
    ({"endpoint": "chat/dolly"}, "endpoint", "API name alone"),
    ({"endpoint": "my/dolly"}, "endpoint", "letters, digits"),
    ({"endpoint": ".."}, "endpoint", "letters, digits"),
    ({"endpoint": "dolly?x=1"}, "endpoint", "letters, digits"),
]


def chat_kwargs(overrides: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": "ERNIE-Speed-8K"}
    if "endpoint" in overrides and "model" not in overrides:
        kwargs = {}
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize(("overrides", "field", "rule"), CHAT_CASES)
async def test_stream_chat_rejects_before_sending(
    client: QianfanClient, overrides: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        client.stream_chat(USER, **chat_kwargs(overrides))
    assert caught.value.field == field
    assert rule in str(caught.value)


@pytest.mark.parametrize(("overrides", "field", "rule"), CHAT_CASES[:20])
async def test_chat_rejects_before_sending(
    client: QianfanClient, overrides: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        await client.chat(USER, **chat_kwargs(overrides))
    assert caught.value.field == field
    assert rule in str(caught.value)


COMPLETE_CASES: list[tuple[Any, dict[str, Any], str, str]] = [
    ("", {}, "prompt", "empty"),
    ("   ", {}, "prompt", "empty"),
    (42, {}, "prompt", "string"),
    ("x", {"model": "ERNIE-Speed-8K"}, "model", "stream_chat() / chat()"),
    ("x", {"model": "SQLCoder-7b", "temperature": 0}, "temperature", "(0, 1]"),
    ("x", {"model": "sqlcoder", "top_k": 1}, "model", "SQLCoder-7B"),
    ("x", {"model": "SQLCoder-7B", "stop": "x" * 30}, "stop", "at most 20"),
    ("x", {"model": "SQLCoder-7B", "extra_params": {"prompt": "y"}}, "extra_params['prompt']", "set by"),
    ("x", {"model": "SQLCoder-7B", "promt": "y"}, "promt", "did you mean 'prompt'"),
]


@pytest.mark.parametrize(("prompt", "kwargs", "field", "rule"), COMPLETE_CASES)
async def test_completions_reject_before_sending(
    client: QianfanClient, prompt: Any, kwargs: dict[str, Any], field: str, rule: str
) -> None:
    kwargs = {"model": "CodeLlama-7b-Instruct", **kwargs}
    with pytest.raises(InvalidParameterError) as caught:
        client.stream_complete(prompt, **kwargs)
    assert caught.value.field == field
    assert rule in str(caught.value)
    with pytest.raises(InvalidParameterError):
        await client.complete(prompt, **kwargs)


MESSAGE_CASES: list[tuple[Any, str, str]] = [
    ([], "messages", "must not be empty"),
    ("hello", "messages", "list of"),
    ({"role": "user", "content": "x"}, "messages", "list of"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages", "odd number"),
    ([{"role": "assistant", "content": "a"}], "messages[0].role", "must be 'user'"),
    ([{"role": "system", "content": "a"}], "messages[0].role", "takes no 'system' message"),
    (
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}],
        "messages[1].role",
        "must be 'assistant'",
    ),
    ([{"role": "user", "content": 5}], "messages[0].content", "string"),
    ([{"role": "user", "content": ""}], "messages[0].content", "empty"),
    ([{"role": "user"}], "messages[0]", "exactly the keys"),
    ([{"role": "user", "content": "a", "name": "n"}], "messages[0]", "exactly the keys"),
    (["hello"], "messages[0]", "dict"),
    ([{"role": "user", "content": "x" * 4801}], "messages", "at most 4800 characters"),
    (
        [
            {"role": "user", "content": "x" * 2000},
            {"role": "assistant", "content": "y" * 2000},
            {"role": "user", "content": "z" * 801},
        ],
        "messages",
        "max_input_chars",
    ),
]


@pytest.mark.parametrize(("messages", "field", "rule"), MESSAGE_CASES)
async def test_messages_rules(client: QianfanClient, messages: Any, field: str, rule: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        client.stream_chat(messages, model="ERNIE-Speed-8K")
    assert caught.value.field == field
    assert rule in str(caught.value)


async def test_the_content_limit_is_exactly_4800_by_default(client: QianfanClient) -> None:
    stream = client.stream_chat([{"role": "user", "content": "x" * 4800}], model="ERNIE-Speed-8K")
    await stream.aclose()  # never iterated: nothing is sent


async def test_max_input_chars_lifts_or_removes_the_content_limit(server: MockServer) -> None:
    long_history = [{"role": "user", "content": "x" * 9000}]
    async with QianfanClient(api_key="k", secret_key="s", base_url=server.url, max_input_chars=10_000) as roomy:
        await roomy.stream_chat(long_history, model="ERNIE-Speed-8K").aclose()
        with pytest.raises(InvalidParameterError, match="at most 10000"):
            roomy.stream_chat([{"role": "user", "content": "x" * 10_001}], model="ERNIE-Speed-8K")
    async with QianfanClient(api_key="k", secret_key="s", base_url=server.url, max_input_chars=None) as unchecked:
        await unchecked.stream_chat([{"role": "user", "content": "x" * 50_000}], model="ERNIE-Speed-8K").aclose()


@pytest.mark.parametrize("value", [0, -5, 1.5, "4800"])
def test_max_input_chars_must_be_a_positive_whole_number(value: Any) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        QianfanClient(api_key="k", secret_key="s", max_input_chars=value)
    assert caught.value.field == "max_input_chars"


def test_every_registered_model_is_found_in_any_case() -> None:
    client = QianfanClient(api_key="k", secret_key="s")
    for info in MODELS:
        for name in (info.name, info.name.lower(), info.name.upper()):
            if info.kind == "chat":
                client.stream_chat(USER, model=name)
            else:
                client.stream_complete("x", model=name)


def test_unknown_model_lists_close_matches_and_points_to_endpoint() -> None:
    client = QianfanClient(api_key="k", secret_key="s")
    with pytest.raises(InvalidParameterError) as caught:
        client.stream_chat(USER, model="Llama-2-7B")
    text = str(caught.value)
    assert "Llama-2-7B-Chat" in text
    assert "endpoint=" in text


def test_constructor_rejects_bad_base_url_and_headers() -> None:
    with pytest.raises(InvalidParameterError) as caught:
        QianfanClient(api_key="k", secret_key="s", base_url="aip.baidubce.com")
    assert caught.value.field == "base_url"
    with pytest.raises(InvalidParameterError) as caught:
        QianfanClient(api_key="k", secret_key="s", extra_headers={"Host": "evil"})
    assert caught.value.field == "extra_headers"


# --- credentials --------------------------------------------------------------------------------

CREDENTIAL_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"api_key": SECRETS["api_key"]}, "secret_key", "go together"),
    ({"secret_key": SECRETS["secret_key"]}, "api_key", "go together"),
    ({"access_key": SECRETS["access_key"]}, "secret_access_key", "go together"),
    ({"secret_access_key": SECRETS["secret_access_key"]}, "access_key", "go together"),
    (
        {"api_key": SECRETS["api_key"], "secret_key": SECRETS["secret_key"], "access_token": SECRETS["access_token"]},
        "api_key, secret_key, access_token",
        "one authentication method only",
    ),
    (
        {"access_token": SECRETS["access_token"], "secret_access_key": SECRETS["secret_access_key"]},
        "access_token, secret_access_key",
        "one authentication method only",
    ),
    ({"api_key": "", "secret_key": SECRETS["secret_key"]}, "api_key", "non-empty string"),
    ({}, "api_key", "no credentials"),
]


@pytest.mark.parametrize(("given", "field", "rule"), CREDENTIAL_CASES)
def test_credentials_must_name_exactly_one_method(given: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        QianfanClient(**given)
    assert caught.value.field == field
    assert rule in str(caught.value)
    for secret in SECRETS.values():
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)


def test_non_string_credentials_are_named_not_shown() -> None:
    with pytest.raises(InvalidParameterError) as caught:
        QianfanClient(api_key=12345, secret_key="s")  # type: ignore[arg-type]
    assert caught.value.field == "api_key"
    assert "12345" not in str(caught.value)


@pytest.mark.parametrize(
    ("environment", "method"),
    [
        ({"QIANFAN_API_KEY": "a", "QIANFAN_SECRET_KEY": "b"}, "api_key/secret_key"),
        ({"QIANFAN_AK": "a", "QIANFAN_SK": "b"}, "api_key/secret_key"),
        ({"QIANFAN_ACCESS_TOKEN": "t"}, "access_token"),
        ({"QIANFAN_ACCESS_KEY": "a", "QIANFAN_SECRET_ACCESS_KEY": "b"}, "access_key/secret_access_key"),
        # The official SDK's names for AK/SK.
        ({"QIANFAN_ACCESS_KEY": "a", "QIANFAN_SECRET_KEY": "b"}, "access_key/secret_access_key"),
        (
            {"QIANFAN_ACCESS_KEY": "a", "QIANFAN_SECRET_ACCESS_KEY": "b", "QIANFAN_SECRET_KEY": "c"},
            "access_key/secret_access_key",
        ),
    ],
)
def test_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], method: str
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert QianfanClient().auth_method == method


@pytest.mark.parametrize(
    ("environment", "field", "rule"),
    [
        ({"QIANFAN_API_KEY": "a"}, "QIANFAN_SECRET_KEY", "QIANFAN_API_KEY is set without"),
        ({"QIANFAN_SK": "a"}, "QIANFAN_AK", "QIANFAN_SK is set without"),
        (
            {"QIANFAN_API_KEY": "a", "QIANFAN_SECRET_KEY": "b", "QIANFAN_ACCESS_TOKEN": "c"},
            "QIANFAN_ACCESS_TOKEN, QIANFAN_API_KEY, QIANFAN_SECRET_KEY",
            "more than one authentication method",
        ),
        (
            {"QIANFAN_API_KEY": "a", "QIANFAN_SECRET_KEY": "b", "QIANFAN_ACCESS_KEY": "c"},
            "QIANFAN_ACCESS_KEY, QIANFAN_API_KEY, QIANFAN_SECRET_KEY",
            "more than one authentication method",
        ),
        ({"QIANFAN_API_KEY": "  "}, "api_key", "no credentials"),
    ],
)
def test_environment_credentials_must_be_complete_and_unambiguous(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], field: str, rule: str
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidParameterError) as caught:
        QianfanClient()
    assert caught.value.field == field
    assert rule in str(caught.value)


def test_explicit_credentials_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIANFAN_ACCESS_TOKEN", "t")
    assert QianfanClient(access_key="a", secret_access_key="b").auth_method == "access_key/secret_access_key"
    with pytest.raises(InvalidParameterError, match="go together"):
        QianfanClient(api_key="a")


def test_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert QianfanClient(access_token="t").base_url == "https://aip.baidubce.com"
    monkeypatch.setenv("QIANFAN_BASE_URL", "http://127.0.0.1:9/")
    assert QianfanClient(access_token="t").base_url == "http://127.0.0.1:9"
    assert QianfanClient(access_token="t", base_url="https://proxy.example").base_url == "https://proxy.example"


@pytest.mark.parametrize(
    ("given", "method"),
    [
        ({"api_key": SECRETS["api_key"], "secret_key": SECRETS["secret_key"]}, "api_key/secret_key"),
        ({"access_token": SECRETS["access_token"]}, "access_token"),
        ({"access_key": SECRETS["access_key"], "secret_access_key": SECRETS["secret_access_key"]}, "access_key/secret_access_key"),
    ],
)
async def test_repr_shows_base_url_and_method_only(given: dict[str, Any], method: str) -> None:
    async with Pool() as pool:
        client = QianfanClient(**given, base_url="http://127.0.0.1:9", pool=pool)
        text = repr(client)
        assert text == f"<QianfanClient base_url='http://127.0.0.1:9' auth='{method}'>"
        stream = client.stream_chat(USER, model="ERNIE-Speed-8K")
        inside = [repr(client._auth), repr(stream), repr(pool), repr(stream._exchange)]
        for secret in SECRETS.values():
            assert secret not in text
            assert all(secret not in part for part in inside)
        await stream.aclose()
