"""Every client the comparison runs, behind one `Target` each (`client_target(name, base_url)`).

llmstreams' clients are made in one place, `llmstreams_client`; the bare aiohttp loops are the
shared ones of `benchmarks.baselines`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

import llmstreams
from benchmarks.baselines import floor_stream, line_stream
from llmstreams.bench import ClientTarget, Target, Workload

PROMPT = "请用三句话介绍一下流式输出的好处。"
QIANFAN_MODEL = "ERNIE-Speed-8K"
QIANFAN_CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ernie_speed"
DASHSCOPE_MODEL = "billa-7b-sft-v1"
DASHSCOPE_PATH = "/api/v1/services/aigc/text-generation/generation"
# Any non-empty credentials satisfy the mock.
API_KEY, SECRET_KEY = "bench-api-key", "bench-secret-key"

CLIENTS: dict[str, str] = {
    "llmstreams-qianfan": "qianfan",
    "llmstreams-dashscope": "dashscope",
    "qianfan-sdk": "qianfan",
    "dashscope-sdk": "dashscope",
    "sse-client2-qianfan": "qianfan",
    "sse-client2-dashscope": "dashscope",
    "aiohttp-lines-qianfan": "qianfan",
    "aiohttp-lines-dashscope": "dashscope",
    "aiohttp-qianfan": "qianfan",
    "aiohttp-dashscope": "dashscope",
}
REFERENCE = {"qianfan": "llmstreams-qianfan", "dashscope": "llmstreams-dashscope"}
FLOOR = {"qianfan": "aiohttp-qianfan", "dashscope": "aiohttp-dashscope"}


class StreamError(Exception):
    """A non-llmstreams client reported an error response (named by its code)."""


class IteratorTarget:
    """A `Target` made of a function opening one request and a token counter for its last item."""

    def __init__(
        self,
        open_stream: Callable[[], AsyncIterator[Any]],
        output_tokens: Callable[[Any], int | None],
    ) -> None:
        self.open_stream = open_stream
        self.output_tokens = output_tokens


# The benchmarks' three wire dialects, as providers of the registry.
PROVIDER_OF_DIALECT = {"qianfan": "qianfan-v1", "dashscope": "dashscope", "openai": "openai"}


def llmstreams_client(vendor: str, base_url: str, pool: llmstreams.Pool, **credentials: Any) -> Any:
    """llmstreams' client for `vendor` ("qianfan" v1, "dashscope" native or "openai"): the one
    place the benchmarks make one."""
    return llmstreams.client_for(
        PROVIDER_OF_DIALECT[vendor], base_url=base_url, pool=pool, **credentials
    )


def _unlimited_session() -> aiohttp.ClientSession:
    # The same connection limits llmstreams' Pool uses, so no client queues for connections.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=10_000, limit_per_host=0))


async def _qianfan_token(session: aiohttp.ClientSession, base_url: str) -> str:
    params = {"grant_type": "client_credentials", "client_id": API_KEY, "client_secret": SECRET_KEY}
    async with session.post(base_url + "/oauth/2.0/token", params=params) as response:
        token: str = (await response.json())["access_token"]
    return token


def _qianfan_body() -> bytes:
    return json.dumps(
        {"messages": [{"role": "user", "content": PROMPT}], "stream": True}, ensure_ascii=False
    ).encode()


def _dashscope_body() -> bytes:
    return json.dumps(
        {"model": DASHSCOPE_MODEL, "input": {"prompt": PROMPT},
         "parameters": {"incremental_output": True}},
        ensure_ascii=False,
    ).encode()


DASHSCOPE_HEADERS = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
    "X-DashScope-SSE": "enable",
}


def _qianfan_tokens(item: Mapping[str, Any]) -> int | None:
    usage = item.get("usage")
    return None if usage is None else int(usage["completion_tokens"])


def _dashscope_tokens(item: Mapping[str, Any]) -> int | None:
    usage = item.get("usage")
    return None if usage is None else int(usage["output_tokens"])


@contextlib.asynccontextmanager
async def llmstreams_target(vendor: str, base_url: str) -> AsyncIterator[Target]:
    async with llmstreams.Pool(max_retries=0) as pool:
        if vendor == "qianfan":
            client = llmstreams_client(
                vendor, base_url, pool, api_key=API_KEY, secret_key=SECRET_KEY
            )
            workload = Workload("qianfan-v1", model=QIANFAN_MODEL, prompt=PROMPT)
        else:
            client = llmstreams_client(vendor, base_url, pool, api_key=API_KEY)
            workload = Workload("dashscope", model=DASHSCOPE_MODEL, prompt=PROMPT)
        yield ClientTarget(client, workload)


def _vendor_request(
    vendor: str, base_url: str, token: str | None
) -> tuple[str, dict[str, Any], Callable[[Any], int | None]]:
    """URL, `session.post` arguments and token counter of the workload, for the hand-made clients."""
    if vendor == "qianfan":
        assert token is not None
        request = {
            "params": {"access_token": token}, "headers": {"Content-Type": "application/json"},
            "data": _qianfan_body(),
        }
        return base_url + QIANFAN_CHAT_PATH, request, _qianfan_tokens
    request = {"params": {}, "headers": dict(DASHSCOPE_HEADERS), "data": _dashscope_body()}
    return base_url + DASHSCOPE_PATH, request, _dashscope_tokens


@contextlib.asynccontextmanager
async def aiohttp_target(
    vendor: str, base_url: str, stream: Callable[..., AsyncIterator[Any]]
) -> AsyncIterator[Target]:
    """A bare aiohttp loop of `benchmarks.baselines` (`floor_stream` or `line_stream`)."""
    async with _unlimited_session() as session:
        token = await _qianfan_token(session, base_url) if vendor == "qianfan" else None
        url, request, tokens = _vendor_request(vendor, base_url, token)
        yield IteratorTarget(lambda: stream(session, url, **request), tokens)


@contextlib.asynccontextmanager
async def sse_client2_target(vendor: str, base_url: str) -> AsyncIterator[Target]:
    from aiohttp_sse_client2.client import EventSource

    async with _unlimited_session() as session:
        token = await _qianfan_token(session, base_url) if vendor == "qianfan" else None
        url, request, tokens = _vendor_request(vendor, base_url, token)

        def is_last(item: Mapping[str, Any]) -> bool:
            if vendor == "qianfan":
                return bool(item.get("is_end"))
            return item.get("output", {}).get("finish_reason") not in (None, "null")

        async def open_stream() -> AsyncIterator[Any]:
            source = EventSource(
                url, option={"method": "POST"}, session=session, params=request["params"],
                data=request["data"], headers=dict(request["headers"]),
            )
            async with source:
                async for event in source:
                    item = json.loads(event.data)
                    if event.type == "error" or "error_code" in item:
                        raise StreamError(str(item.get("code") or item.get("error_code")))
                    yield item
                    # EventSource would reconnect at the end of the body and ask again.
                    if is_last(item):
                        break

        yield IteratorTarget(open_stream, tokens)


@contextlib.asynccontextmanager
async def qianfan_sdk_target(base_url: str) -> AsyncIterator[Target]:
    # The SDK reads its endpoints and credentials from the environment when imported.
    os.environ.update({
        "QIANFAN_BASE_URL": base_url,
        "QIANFAN_CONSOLE_API_BASE_URL": base_url,
        "QIANFAN_AK": API_KEY,
        "QIANFAN_SK": SECRET_KEY,
    })
    import qianfan

    chat = qianfan.ChatCompletion(model=QIANFAN_MODEL)
    messages = [{"role": "user", "content": PROMPT}]

    async def open_stream() -> AsyncIterator[Any]:
        responses = await chat.ado(messages=messages, stream=True, retry_count=0)
        async for response in responses:
            yield response

    def tokens(response: Any) -> int | None:
        usage = response.body.get("usage")
        return None if usage is None else int(usage["completion_tokens"])

    yield IteratorTarget(open_stream, tokens)


@contextlib.asynccontextmanager
async def dashscope_sdk_target(base_url: str) -> AsyncIterator[Target]:
    import dashscope
    from dashscope import AioGeneration

    dashscope.base_http_api_url = base_url + "/api/v1"
    async with _unlimited_session() as session:

        async def open_stream() -> AsyncIterator[Any]:
            responses = await AioGeneration.call(
                model=DASHSCOPE_MODEL, prompt=PROMPT, stream=True, incremental_output=True,
                api_key=API_KEY, session=session,
            )
            async for response in responses:
                # The SDK reports errors as responses rather than raising them.
                if response.status_code != 200:
                    raise StreamError(str(response.code))
                yield response

        def tokens(response: Any) -> int | None:
            usage = response.usage
            return None if usage is None else int(usage.output_tokens)

        yield IteratorTarget(open_stream, tokens)


def client_target(name: str, base_url: str) -> contextlib.AbstractAsyncContextManager[Target]:
    vendor = CLIENTS[name]
    if name.startswith("llmstreams-"):
        return llmstreams_target(vendor, base_url)
    if name.startswith("aiohttp-lines-"):
        return aiohttp_target(vendor, base_url, line_stream)
    if name.startswith("aiohttp-"):
        return aiohttp_target(vendor, base_url, floor_stream)
    if name.startswith("sse-client2-"):
        return sse_client2_target(vendor, base_url)
    if name == "qianfan-sdk":
        return qianfan_sdk_target(base_url)
    return dashscope_sdk_target(base_url)
