"""Every public parameter of every client, fed any value JSON can carry, raises
`InvalidParameterError` or works.

"JSON-reachable" is what `json.loads` can give: None, booleans, integers of any size up to
Python's 4,300 digits, floats including NaN and infinities, strings with lone surrogates
(from `"\\ud800"` escapes), and lists and dicts of these, nested. A call that passes the checks
is sent to the mock over loopback: then only the server's own `APIError` may come back, never a
bare Python exception from encoding or sending the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmstreams import (
    APIError,
    ChunkStream,
    DashScopeClient,
    InvalidParameterError,
    OpenAICompatibleClient,
    Pool,
    QianfanClient,
    RateLimit,
    RetryPolicy,
    Timeout,
)
from llmstreams.mock import MockServer
from tests.reliability.helpers import (
    ACCESS_KEY,
    API_KEY,
    DASHSCOPE_KEY,
    MOCK_CREDENTIALS,
    SECRET_ACCESS_KEY,
    SECRET_KEY,
)

QIANFAN_V2_KEY = "bce-v3/ALTAK-SECRET-v2key/7c1d"
OPENAI_KEY = "SECRET-openai-key-3b9e"

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Characters of every category, surrogates included (hypothesis leaves them out by default).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
ODD_INTEGERS = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 2**63, 2**64, -(2**64), 10**400, -(10**400), 10**4000]),
)
ODD_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(st.none(), st.booleans(), ODD_INTEGERS, ODD_FLOATS, ANY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)


class Deep(dict[str, Any]):
    """JSON nested `depth` levels deep, shown briefly (its plain repr would recurse too deep)."""

    def __init__(self, depth: int) -> None:
        value: Any = "deep"
        for _ in range(depth - 1):
            value = {"x": [value]}
        super().__init__(x=[value])
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# Values no strategy reaches in a bounded search, added to every parameter's choices.
EXTREMES = st.sampled_from(
    ["\ud800", "a\udfffb", 10**400, float("nan"), Deep(5000), {"\ud800": 1}, {"k": "\udc80"}]
)
ODD = st.one_of(JSON_VALUES, EXTREMES)

MESSAGE = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system"]), ODD), "content": ODD},
    optional={"name": ODD},
)
MESSAGES = st.one_of(
    st.lists(MESSAGE, min_size=1, max_size=3),
    st.just([{"role": "user", "content": "hi"}]),
    ODD,
)


def parameter_names(function: Callable[..., Any]) -> list[str]:
    """The keyword parameters of `function`, those of its `**params: Unpack[...]` included."""
    names: list[str] = []
    hints = typing.get_type_hints(function)
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            (declared,) = typing.get_args(hints[name])
            names += declared.__annotations__
        elif name != "self":
            names.append(name)
    return names


def call_arguments(
    function: Callable[..., Any], known: dict[str, Any], *, unknown_names: bool = True
) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of `function`'s keyword parameters, each with an odd value; the ones in
    `known` sometimes keep a usable value, so that the others are reached."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name in parameter_names(function):
        choices = MESSAGES if name == "messages" else ODD
        if name in known:
            choices = st.one_of(st.just(known[name]), choices)
        optional[name] = choices
    # The input, and keyword parameters without a default, are always passed (as a batch does).
    signature = inspect.signature(function).parameters
    always = {name for name in optional if name in ("prompt", "messages") or (
        name in signature and signature[name].default is inspect.Parameter.empty
    )}
    required = {name: optional.pop(name) for name in always}
    names = ["self", "unknown", "stream", "kwargs", "_x"] if unknown_names else []
    extra = st.dictionaries(st.sampled_from(names), ODD, max_size=1) if names else st.just({})
    return st.builds(
        lambda fixed, chosen, more: {**fixed, **chosen, **more},
        st.fixed_dictionaries(required),
        st.fixed_dictionaries({}, optional=optional),
        extra,
    )


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[asyncio.AbstractEventLoop, MockServer, Pool]]:
    """A loop of its own (hypothesis tests are synchronous) running the mock and a pool."""
    loop = asyncio.new_event_loop()
    server = MockServer(credentials=attrs.evolve(
        MOCK_CREDENTIALS, qianfan_v2_api_key=QIANFAN_V2_KEY, openai_api_key=OPENAI_KEY
    ))
    loop.run_until_complete(server.start())
    pool = Pool(retry=RetryPolicy(max_retries=0))
    try:
        yield loop, server, pool
    finally:
        loop.run_until_complete(pool.close())
        loop.run_until_complete(server.close())
        loop.close()


def clients(url: str, pool: Pool) -> dict[str, Any]:
    return {
        "qianfan": QianfanClient(api_key=API_KEY, secret_key=SECRET_KEY, base_url=url, pool=pool),
        "qianfan-aksk": QianfanClient(
            access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY, base_url=url, pool=pool
        ),
        "qianfan-v2": OpenAICompatibleClient(
            vendor="qianfan", api_key=QIANFAN_V2_KEY, base_url=url, pool=pool
        ),
        "dashscope": DashScopeClient(api_key=DASHSCOPE_KEY, base_url=url, pool=pool),
        "dashscope-openai": OpenAICompatibleClient(
            vendor="dashscope-compatible", api_key=DASHSCOPE_KEY, base_url=url, pool=pool
        ),
        "openai": OpenAICompatibleClient(api_key=OPENAI_KEY, base_url=f"{url}/v1", pool=pool),
    }


USER = [{"role": "user", "content": "hi"}]
CHAT = {"messages": USER, "model": "ERNIE-Speed-8K"}
COMPLETE = {"prompt": "def add(a, b):", "model": "CodeLlama-7b-Instruct"}
GENERATE = {"prompt": "hi", "model": "billa-7b-sft-v1"}
V2_CHAT = {"messages": USER, "model": "ernie-speed-8k"}
DASHSCOPE_CHAT = {"messages": USER, "model": "qwen-turbo"}
OPENAI_CHAT = {"messages": USER, "model": "any-model"}
OPENAI_COMPLETE = {"prompt": "hi", "model": "any-model"}
METHODS = [
    ("qianfan", "stream_chat", CHAT),
    ("qianfan", "chat", CHAT),
    ("qianfan", "stream_complete", COMPLETE),
    ("qianfan", "complete", COMPLETE),
    ("qianfan-aksk", "stream_chat", CHAT),
    ("qianfan-v2", "stream_chat", V2_CHAT),
    ("qianfan-v2", "chat", V2_CHAT),
    ("dashscope", "stream_generate", GENERATE),
    ("dashscope", "generate", GENERATE),
    ("dashscope", "stream_chat", DASHSCOPE_CHAT),
    ("dashscope-openai", "stream_chat", DASHSCOPE_CHAT),
    ("dashscope-openai", "chat", DASHSCOPE_CHAT),
    ("openai", "stream_chat", OPENAI_CHAT),
    ("openai", "chat", OPENAI_CHAT),
    ("openai", "stream_complete", OPENAI_COMPLETE),
    ("openai", "complete", OPENAI_COMPLETE),
]
async def call(method: Callable[..., Any], arguments: dict[str, Any]) -> None:
    """Call, and send what passes the checks; only the checks or the server may object."""
    try:
        result = method(**arguments)
        if isinstance(result, ChunkStream):
            async with result as stream:
                await stream.collect()
        else:
            await result
    except (InvalidParameterError, APIError):
        pass


@pytest.mark.parametrize(("client_name", "method_name", "known"), METHODS,
                         ids=[f"{c}.{m}" for c, m, _ in METHODS])
def test_every_parameter_of_every_method_is_checked_or_works(
    served: tuple[asyncio.AbstractEventLoop, MockServer, Pool],
    client_name: str, method_name: str, known: dict[str, Any],
) -> None:
    loop, server, pool = served
    client = clients(server.url, pool)[client_name]
    method = getattr(client, method_name)

    @PROPERTY
    @given(call_arguments(method, known))
    def check(arguments: dict[str, Any]) -> None:
        loop.run_until_complete(call(method, arguments))

    check()


CONSTRUCTORS: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
    ("QianfanClient", QianfanClient, {"api_key": API_KEY, "secret_key": SECRET_KEY}),
    ("DashScopeClient", DashScopeClient, {"api_key": DASHSCOPE_KEY}),
    ("QianfanClient-v2", QianfanClient, {"api_key": QIANFAN_V2_KEY}),
    ("OpenAICompatibleClient", OpenAICompatibleClient, {"base_url": "http://127.0.0.1:9/v1"}),
    ("Pool", Pool, {}),
    ("Timeout", Timeout, {}),
    ("RetryPolicy", RetryPolicy, {}),
    ("RateLimit", RateLimit, {}),
]


@pytest.mark.parametrize(("name", "constructor", "known"), CONSTRUCTORS,
                         ids=[name for name, _, _ in CONSTRUCTORS])
def test_every_constructor_parameter_is_checked(
    name: str, constructor: Callable[..., Any], known: dict[str, Any]
) -> None:
    @PROPERTY
    @given(call_arguments(constructor, known, unknown_names=False))
    def check(arguments: dict[str, Any]) -> None:
        with contextlib.suppress(InvalidParameterError):
            constructor(**arguments)

    check()


async def test_a_parameter_named_like_an_argument_of_ours_is_an_unknown_parameter() -> None:
    async with DashScopeClient(api_key=DASHSCOPE_KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(InvalidParameterError, match="'self': unknown parameter"):
            client.stream_generate("hi", model="m", **{"self": 1})
