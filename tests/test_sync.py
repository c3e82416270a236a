"""The synchronous door: the async clients driven from plain code, on llmstreams' own loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import llmstreams
from llmstreams.mock import BEHAVIOUR_HEADER, MockServer
from llmstreams.sync import SyncClient, run
from tests.support import ROOT

MESSAGES = [{"role": "user", "content": "Tell me about the sync door"}]
MODEL = "ERNIE-Speed-8K"


@pytest.fixture
def mock() -> Iterator[MockServer]:
    # Served from the private loop: a test that blocks its own loop on a sync call must not
    # also need that loop to answer.
    server = MockServer()
    run(server.start())
    yield server
    run(server.close())


@pytest.fixture
def qianfan(mock: MockServer) -> Iterator[SyncClient[llmstreams.QianfanClient]]:
    client = llmstreams.QianfanClient(api_key="k", secret_key="s", base_url=mock.url)
    with SyncClient(client) as sync_client:
        yield sync_client


def test_sync_calls_give_what_the_async_client_gives(
    mock: MockServer, qianfan: SyncClient[llmstreams.QianfanClient]
) -> None:
    answer = qianfan.chat(MESSAGES, model=MODEL)
    with qianfan.stream_chat(MESSAGES, model=MODEL) as stream:
        texts = [chunk.text for chunk in stream]
    assert answer.text and "".join(texts) == answer.text == stream.completion.text
    assert len(texts) > 1

    async def awaited() -> llmstreams.Completion:
        async with llmstreams.QianfanClient(api_key="k", secret_key="s", base_url=mock.url) as client:
            return await client.chat(MESSAGES, model=MODEL)

    assert run(awaited()).text == answer.text
    assert qianfan.complete("def fib(n):", model="CodeLlama-7b-Instruct").text


def test_dashscope_generate_and_collect(mock: MockServer) -> None:
    with SyncClient(llmstreams.DashScopeClient(api_key="sk-k", base_url=mock.url)) as client:
        whole = client.generate("Hello", model="billa-7b-sft-v1")
        streamed = client.stream_generate("Hello", model="billa-7b-sft-v1").collect()
    assert streamed.text == whole.text != ""


def test_errors_are_the_typed_ones_with_partial(
    qianfan: SyncClient[llmstreams.QianfanClient],
) -> None:
    stream = qianfan.stream_chat(
        MESSAGES, model=MODEL, extra_headers={BEHAVIOUR_HEADER: "disconnect_after=3"}
    )
    with pytest.raises(llmstreams.StreamInterruptedError) as caught:
        stream.collect()
    assert caught.value.partial is not None and caught.value.partial.chunk_count == 3
    with pytest.raises(llmstreams.InvalidParameterError, match="temperature"):
        qianfan.stream_chat(MESSAGES, model=MODEL, temperature=0)


def test_leaving_a_stream_early_frees_its_connection(
    qianfan: SyncClient[llmstreams.QianfanClient],
) -> None:
    with qianfan.stream_chat(MESSAGES, model=MODEL) as stream:
        next(stream)
        assert qianfan.client.pool.stats().open_streams == 1
    assert qianfan.client.pool.stats() == llmstreams.PoolStats(open_streams=0, connections_in_use=0)


async def test_works_where_the_calling_thread_runs_a_loop(
    qianfan: SyncClient[llmstreams.QianfanClient],
) -> None:
    # As in a Jupyter cell: this test's own loop is running while the sync call waits.
    assert qianfan.chat(MESSAGES, model=MODEL).text


def test_a_sync_call_on_the_private_loop_is_refused(
    qianfan: SyncClient[llmstreams.QianfanClient],
) -> None:
    async def nested() -> llmstreams.Completion:
        return qianfan.chat(MESSAGES, model=MODEL)

    with pytest.raises(llmstreams.UsageError, match="await the async client"):
        run(nested())


def test_a_closed_client_says_so(mock: MockServer) -> None:
    client = SyncClient(llmstreams.DashScopeClient(api_key="sk-k", base_url=mock.url))
    client.close()
    client.close()
    with pytest.raises(llmstreams.UsageError, match="closed"):
        client.generate("Hello", model="billa-7b-sft-v1")


def test_clients_left_open_are_closed_at_exit_without_warnings() -> None:
    script = textwrap.dedent(
        """
        import llmstreams
        from llmstreams.mock import MockServer
        from llmstreams.sync import SyncClient, run

        server = MockServer()
        run(server.start())
        client = SyncClient(llmstreams.QianfanClient(api_key="k", secret_key="s", base_url=server.url))
        print(client.chat([{"role": "user", "content": "hi"}], model="ERNIE-Speed-8K").chunk_count)
        run(server.close())  # the client is left open on purpose
        """
    )
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", script],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 1
    assert result.stderr == ""
