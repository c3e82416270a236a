"""A QianfanClient and a DashScopeClient sharing one Pool, against the mock server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llmstreams import DashScopeClient, Pool, PoolStats
from llmstreams.mock import MockCredentials, MockServer
from llmstreams.qianfan import QianfanClient

QIANFAN_KEY = "qf-api-key"
QIANFAN_SECRET = "qf-secret-key"
DASHSCOPE_KEY = "sk-ds-api-key"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    credentials = MockCredentials(
        api_key=QIANFAN_KEY, secret_key=QIANFAN_SECRET, dashscope_api_key=DASHSCOPE_KEY
    )
    async with MockServer(credentials=credentials) as mock:
        yield mock


def clients(server: MockServer, pool: Pool) -> tuple[QianfanClient, DashScopeClient]:
    qianfan = QianfanClient(
        api_key=QIANFAN_KEY, secret_key=QIANFAN_SECRET, base_url=server.url, pool=pool
    )
    dashscope = DashScopeClient(api_key=DASHSCOPE_KEY, base_url=server.url, pool=pool)
    return qianfan, dashscope


async def test_both_clients_reuse_the_same_connections(server: MockServer) -> None:
    async with Pool() as pool:
        qianfan, dashscope = clients(server, pool)
        generated = await dashscope.generate("hi", model="billa-7b-sft-v1")
        chatted = await qianfan.chat(MESSAGES, model="ERNIE-Speed-8K")
        streamed = await dashscope.stream_generate("hi again", model="billa-7b-sft-v1").collect()
        assert generated.is_complete and chatted.is_complete and streamed.is_complete
        assert chatted.text and generated.text and streamed.text
        stats = server.stats
        assert stats.requests["dashscope.generation"] == 2
        assert stats.requests["qianfan.chat"] == 1
        assert stats.requests["token"] == 1
        # One after the other, every request (the token fetch too) went over one connection.
        assert stats.connections_opened == 1
        assert pool.stats() == PoolStats(open_streams=0, connections_in_use=0)


async def test_concurrent_streams_of_both_vendors(server: MockServer) -> None:
    async with Pool() as pool:
        qianfan, dashscope = clients(server, pool)
        async with (
            qianfan.stream_chat(MESSAGES, model="ERNIE-Speed-8K") as chat,
            dashscope.stream_generate("hi", model="billa-7b-sft-v1") as generation,
        ):
            first_chat, first_generation = await asyncio.gather(
                chat.__anext__(), generation.__anext__()
            )
            assert first_chat.sentence_id == first_generation.sentence_id == 0
            assert pool.stats() == PoolStats(open_streams=2, connections_in_use=2)
            chat_completion, generation_completion = await asyncio.gather(
                chat.collect(), generation.collect()
            )
        assert chat_completion.is_complete and generation_completion.is_complete
        assert pool.stats() == PoolStats(open_streams=0, connections_in_use=0)


async def test_closing_the_clients_leaves_the_shared_pool_open(server: MockServer) -> None:
    async with Pool() as pool:
        qianfan, dashscope = clients(server, pool)
        await qianfan.close()
        await dashscope.close()
        assert not pool.closed
        assert (await dashscope.generate("hi", model="billa-7b-sft-v1")).is_complete
        assert (await qianfan.chat(MESSAGES, model="ERNIE-Speed-8K")).is_complete
    assert pool.closed
