"""Misuse is caught with a hint: awaiting a stream, leaving a client or a stream open."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import warnings
from collections.abc import Iterator

import pytest

import llmstreams
from llmstreams.mock import BEHAVIOUR_HEADER, MockServer

MESSAGES = [{"role": "user", "content": "Tell me a long story"}]
MODEL = "ERNIE-Speed-8K"
# Long enough that the server is still writing when the client walks away.
SLOW = {BEHAVIOUR_HEADER: "answer_chars=4000; chunks_per_second=50"}


async def test_awaiting_a_stream_says_how_to_read_it(llmstreams_mock: MockServer) -> None:
    async with llmstreams.QianfanClient(
        api_key="k", secret_key="s", base_url=llmstreams_mock.url
    ) as client:
        with pytest.raises(llmstreams.UsageError, match=r"async for .*collect\(\)") as caught:
            await client.stream_chat(MESSAGES, model=MODEL)  # type: ignore[misc]
    assert isinstance(caught.value, TypeError)
    assert llmstreams_mock.stats.streams_started == 0


@contextlib.contextmanager
def warnings_shown() -> Iterator[list[str]]:
    """Every warning shown in the block (as "Category: message"), and everything reported to
    the running loop's exception handler (as "loop: message"), where aiohttp reports unclosed
    sessions too. Only the text is kept: a recorded warning would keep its source alive."""
    shown: list[str] = []

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        shown.append(f"{category.__name__}: {message}")

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: shown.append(f"loop: {context['message']}"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            yield shown
    finally:
        loop.set_exception_handler(None)


def never_closed(name: str, line: int) -> str:
    return (
        f"ResourceWarning: {name} made at {__file__}:{line} was not closed; use "
        f"`async with {name}(...) as client:` or `await client.close()`"
    )


async def test_a_client_never_closed_warns_once_naming_where_it_was_made(
    llmstreams_mock: MockServer,
) -> None:
    client = llmstreams.DashScopeClient(api_key="sk-k", base_url=llmstreams_mock.url)
    line = sys._getframe().f_lineno - 1
    await client.generate("Hello", model="billa-7b-sft-v1")
    assert llmstreams_mock.stats.open_connections == 1  # kept alive in the client's pool
    with warnings_shown() as shown:
        del client
        gc.collect()
    assert shown == [never_closed("DashScopeClient", line)]
    await llmstreams_mock.wait_for(lambda stats: stats.open_connections == 0)


async def test_a_client_collected_in_another_thread_warns_once_and_closes_on_its_loop(
    llmstreams_mock: MockServer,
) -> None:
    clients = [llmstreams.DashScopeClient(api_key="sk-k", base_url=llmstreams_mock.url)]
    line = sys._getframe().f_lineno - 1
    await clients[0].generate("Hello", model="billa-7b-sft-v1")
    # In debug mode the loop refuses calls from other threads, as it may in any mode.
    asyncio.get_running_loop().set_debug(True)
    with warnings_shown() as shown:
        await asyncio.to_thread(clients.clear)  # the last reference goes in that thread
        await llmstreams_mock.wait_for(lambda stats: stats.open_connections == 0)
    assert shown == [never_closed("DashScopeClient", line)]


async def test_closed_clients_and_clients_on_a_shared_pool_do_not_warn(
    llmstreams_mock: MockServer,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        async with llmstreams.DashScopeClient(api_key="sk-k", base_url=llmstreams_mock.url) as owner:
            await owner.generate("Hello", model="billa-7b-sft-v1")
        async with llmstreams.Pool() as pool:
            shared = llmstreams.DashScopeClient(api_key="sk-k", base_url=llmstreams_mock.url, pool=pool)
            await shared.generate("Hello", model="billa-7b-sft-v1")
            del owner, shared
            gc.collect()


async def test_a_stream_abandoned_by_break_is_released_at_once(llmstreams_mock: MockServer) -> None:
    async with llmstreams.Pool() as pool:
        client = llmstreams.QianfanClient(
            api_key="k", secret_key="s", base_url=llmstreams_mock.url, pool=pool
        )
        stream = client.stream_chat(MESSAGES, model=MODEL, extra_headers=SLOW)
        line = sys._getframe().f_lineno - 1
        async for _chunk in stream:
            break
        assert pool.stats() == llmstreams.PoolStats(open_streams=1, connections_in_use=1)
        with pytest.warns(ResourceWarning) as caught:
            del stream
            gc.collect()
        assert pool.stats() == llmstreams.PoolStats(open_streams=0, connections_in_use=0)
        stats = await llmstreams_mock.wait_for(lambda stats: stats.streams_aborted == 1)
        assert stats.streams_active == 0
    assert [str(w.message) for w in caught] == [
        f"a qianfan ChunkStream made at {__file__}:{line} was not closed; its connection is "
        "closed now. Use `async with` or read it to the end"
    ]


async def test_a_stream_read_to_its_end_does_not_warn(llmstreams_mock: MockServer) -> None:
    async with llmstreams.QianfanClient(
        api_key="k", secret_key="s", base_url=llmstreams_mock.url
    ) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            stream = client.stream_chat(MESSAGES, model=MODEL)
            async for _chunk in stream:
                pass
            del stream
            gc.collect()
