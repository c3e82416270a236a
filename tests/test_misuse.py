"""Misuse is caught with a hint: awaiting a stream, leaving a client or a stream open."""

from __future__ import annotations

import gc
import sys
import warnings

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


async def test_a_client_never_closed_warns_naming_where_it_was_made(
    llmstreams_mock: MockServer,
) -> None:
    client = llmstreams.DashScopeClient(api_key="k", base_url=llmstreams_mock.url)
    line = sys._getframe().f_lineno - 1
    await client.generate("Hello", model="billa-7b-sft-v1")
    pool = client.pool
    with pytest.warns(ResourceWarning) as caught:
        del client
        gc.collect()
    ours = [str(w.message) for w in caught if "DashScopeClient" in str(w.message)]
    assert ours == [
        f"DashScopeClient made at {__file__}:{line} was not closed; use "
        "`async with DashScopeClient(...) as client:` or `await client.close()`"
    ]
    await pool.close()


async def test_closed_clients_and_clients_on_a_shared_pool_do_not_warn(
    llmstreams_mock: MockServer,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        async with llmstreams.DashScopeClient(api_key="k", base_url=llmstreams_mock.url) as owner:
            await owner.generate("Hello", model="billa-7b-sft-v1")
        async with llmstreams.Pool() as pool:
            shared = llmstreams.DashScopeClient(api_key="k", base_url=llmstreams_mock.url, pool=pool)
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
