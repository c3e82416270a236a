"""QianfanClient against the mock server: streams, whole answers, errors, retries, early exits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llmstreams import (
    APIError,
    AuthenticationError,
    Chunk,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Pool,
    ProtocolError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StreamInterruptedError,
    StreamTimeoutError,
    Timeout,
)
from llmstreams.mock import MockCredentials, MockServer
from llmstreams.mock.vendor_errors import QIANFAN_MESSAGES
from llmstreams.qianfan import QianfanClient

CREDENTIALS = MockCredentials(
    api_key="app-key", secret_key="app-secret", access_key="iam-ak", secret_access_key="iam-sk"
)
FAST_RETRY = RetryPolicy(max_retries=2, backoff_base=0.001, backoff_max=0.001)
NO_RETRY = RetryPolicy(max_retries=0)
USER = [{"role": "user", "content": "Please introduce The Great Wall"}]
CHAT_MODEL = "ERNIE-Speed-8K"
CODE_MODEL = "CodeLlama-7b-Instruct"


def knobs(**values: object) -> dict[str, str]:
    """The per-request mock behaviour header."""
    return {"X-Mock-Behaviour": "; ".join(f"{name}={value}" for name, value in values.items())}


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer(credentials=CREDENTIALS) as mock:
        yield mock


@pytest.fixture
async def client(server: MockServer) -> AsyncIterator[QianfanClient]:
    async with QianfanClient(
        api_key="app-key", secret_key="app-secret", base_url=server.url, retry=FAST_RETRY
    ) as qianfan:
        yield qianfan


@pytest.fixture
async def signed_client(server: MockServer) -> AsyncIterator[QianfanClient]:
    """AK/SK auth: no token endpoint and no token renewal in the way of error mapping."""
    async with QianfanClient(
        access_key="iam-ak", secret_access_key="iam-sk", base_url=server.url, retry=NO_RETRY
    ) as qianfan:
        yield qianfan


async def read_until_error(stream: object, received: list[Chunk]) -> BaseException:
    with pytest.raises(Exception) as caught:  # each test checks the exact type
        async with stream as opened:  # type: ignore[attr-defined]
            async for chunk in opened:
                received.append(chunk)
    return caught.value


# --- answers ------------------------------------------------------------------------------------


async def test_stream_chat_chunks_and_chat_completion_agree(client: QianfanClient, server: MockServer) -> None:
    chunks: list[Chunk] = []
    async with client.stream_chat(USER, model=CHAT_MODEL) as stream:
        async for chunk in stream:
            chunks.append(chunk)
        streamed = stream.completion
    assert len(chunks) > 2
    assert [chunk.sentence_id for chunk in chunks] == list(range(len(chunks)))
    assert [chunk.is_end for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(chunk.id and chunk.id.startswith("as-") for chunk in chunks)
    assert all(isinstance(chunk.created, int) for chunk in chunks)
    assert chunks[-1].finish_reason == "normal"
    usages = [chunk.usage for chunk in chunks]
    assert all(usage is not None for usage in usages)
    assert [u.completion_tokens for u in usages if u] == sorted(u.completion_tokens for u in usages if u)
    assert streamed.text == "".join(chunk.text for chunk in chunks)
    assert streamed.is_complete and streamed.chunk_count == len(chunks)

    whole = await client.chat(USER, model=CHAT_MODEL)
    assert whole.text == streamed.text
    assert whole.usage == chunks[-1].usage
    assert whole.id == chunks[0].id == whole.request_id
    assert whole.finish_reason == "normal"
    assert whole.is_complete and whole.chunk_count == 1
    assert whole.need_clear_history is False and whole.is_truncated is False
    assert server.stats.requests["qianfan.chat"] == 2


async def test_stream_complete_and_complete_carry_is_safe(client: QianfanClient, server: MockServer) -> None:
    prompt = "In Bash, how do I list all text files in the current directory?"
    chunks = [chunk async for chunk in client.stream_complete(prompt, model=CODE_MODEL)]
    assert chunks and all(chunk.is_safe is True for chunk in chunks)
    assert chunks[-1].is_end
    whole = await client.complete(prompt, model=CODE_MODEL, temperature=0.5)
    assert whole.is_safe is True
    assert whole.text  # a different request body (temperature) gets its own answer
    same = await client.complete(prompt, model=CODE_MODEL)
    assert same.text == "".join(chunk.text for chunk in chunks)
    assert server.stats.requests["qianfan.completions"] == 3
    assert server.stats.requests["qianfan.chat"] == 0


async def test_sampling_parameters_are_sent_and_accepted(client: QianfanClient) -> None:
    completion = await client.chat(
        USER, model="ernie-speed-8k", temperature=0.7, top_k=3, top_p=0.9, penalty_score=1.2,
        stop=["\n\n", "END"], user_id="user-1",
    )
    assert completion.text and completion.is_complete


async def test_extra_params_reach_the_body(client: QianfanClient) -> None:
    completion = await client.chat(USER, model=CHAT_MODEL, extra_params={"max_output_tokens": 3})
    assert completion.is_truncated is True
    assert completion.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


async def test_dolly_style_custom_endpoint_for_chat_and_completions(client: QianfanClient, server: MockServer) -> None:
    chunks = [chunk async for chunk in client.stream_chat(USER, endpoint="dolly_12b_prod")]
    assert chunks[-1].is_end
    completion = await client.complete("def fib(n):", endpoint="my-coder.v2")
    assert completion.is_complete
    assert server.stats.requests["qianfan.chat"] == 1
    assert server.stats.requests["qianfan.completions"] == 1


async def test_trigger_phrase_in_the_current_question(client: QianfanClient) -> None:
    messages = [{"role": "user", "content": "tell me [[unsafe]]"}]
    chunks = [chunk async for chunk in client.stream_chat(messages, model=CHAT_MODEL)]
    assert chunks[-1].need_clear_history is True
    assert chunks[-1].ban_round == -1
    completion = await client.chat(messages, model=CHAT_MODEL)
    assert completion.need_clear_history is True
    assert completion.ban_round == -1
    assert completion.text == ""
    assert completion.finish_reason == "content_filter"


async def test_trigger_phrase_in_an_earlier_round(client: QianfanClient) -> None:
    messages = [
        {"role": "user", "content": "first [[unsafe]]"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "and now?"},
    ]
    completion = await client.chat(messages, model=CHAT_MODEL)
    assert completion.need_clear_history is True
    assert completion.ban_round == 1


async def test_trigger_phrase_on_completions_sets_is_safe_false(client: QianfanClient) -> None:
    completion = await client.complete("[[unsafe]] code", model=CODE_MODEL)
    assert completion.is_safe is False
    assert completion.need_clear_history is True


async def test_huge_event_line(client: QianfanClient) -> None:
    chunks = [
        chunk
        async for chunk in client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(huge_line_bytes=300_000))
    ]
    assert len(chunks[0].text) > 250_000
    assert chunks[-1].is_end


async def test_a_body_trickled_byte_by_byte_parses_the_same(client: QianfanClient) -> None:
    plain = await client.stream_chat(USER, model=CHAT_MODEL).collect()
    trickled = await client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(trickle="true")).collect()
    assert trickled.text == plain.text
    assert trickled.chunk_count == plain.chunk_count


async def test_many_concurrent_streams(client: QianfanClient, server: MockServer) -> None:
    async def one(index: int) -> str:
        messages = [{"role": "user", "content": f"question {index}"}]
        return (await client.stream_chat(messages, model=CHAT_MODEL).collect()).text

    texts = await asyncio.gather(*(one(index) for index in range(100)))
    assert all(texts)
    assert server.stats.requests["qianfan.chat"] == 100
    assert server.stats.requests["token"] == 1
    assert client.pool.stats().connections_in_use == 0


async def test_constructor_and_call_extra_headers(server: MockServer) -> None:
    async with QianfanClient(
        access_key="iam-ak", secret_access_key="iam-sk", base_url=server.url, retry=NO_RETRY,
        extra_headers=knobs(fail_code=336003, fail_times=99),
    ) as qianfan:
        with pytest.raises(InvalidRequestError):
            await qianfan.chat(USER, model=CHAT_MODEL)
        # A call's own header replaces the client's.
        completion = await qianfan.chat(USER, model=CHAT_MODEL, extra_headers=knobs(answer_chars=10))
        assert len(completion.text) == 10


async def test_a_shared_pool_is_left_open(server: MockServer) -> None:
    async with Pool(retry=FAST_RETRY) as pool:
        async with QianfanClient(api_key="app-key", secret_key="app-secret", base_url=server.url, pool=pool) as first:
            await first.chat(USER, model=CHAT_MODEL)
        assert not pool.closed
        second = QianfanClient(access_key="iam-ak", secret_access_key="iam-sk", base_url=server.url, pool=pool)
        assert (await second.chat(USER, model=CHAT_MODEL)).is_complete
        await second.close()
        assert not pool.closed


# --- errors -------------------------------------------------------------------------------------

ERROR_CODES: list[tuple[int, type[APIError], bool]] = [
    (110, AuthenticationError, False),
    (111, AuthenticationError, False),
    (13, AuthenticationError, False),
    (14, AuthenticationError, False),
    (6, PermissionDeniedError, False),
    (336004, PermissionDeniedError, False),
    (3, NotFoundError, False),
    (15, NotFoundError, False),
    (336005, NotFoundError, False),
    (4, RateLimitError, False),
    (17, RateLimitError, False),
    (18, RateLimitError, True),
    (19, RateLimitError, False),
    (336501, RateLimitError, True),
    (336502, RateLimitError, True),
    (1, ServerError, False),
    (2, ServerError, True),
    (336000, ServerError, False),
    (336100, ServerError, True),
    (100, InvalidRequestError, False),
    (336001, InvalidRequestError, False),
    (336002, InvalidRequestError, False),
    (336003, InvalidRequestError, False),
    (336006, InvalidRequestError, False),
]


@pytest.mark.parametrize(("code", "expected", "retryable"), ERROR_CODES)
async def test_error_codes_map_to_error_classes(
    signed_client: QianfanClient, server: MockServer, code: int, expected: type[APIError], retryable: bool
) -> None:
    headers = knobs(fail_code=code, fail_times=99)
    with pytest.raises(expected) as streamed:
        await signed_client.stream_chat(USER, model=CHAT_MODEL, extra_headers=headers).collect()
    with pytest.raises(expected) as whole:
        await signed_client.chat(USER, model=CHAT_MODEL, extra_headers=headers)
    for error in (streamed.value, whole.value):
        assert type(error) is expected
        assert error.code == code
        assert error.message.startswith(QIANFAN_MESSAGES[code])
        assert error.request_id is not None and error.request_id.startswith("as-")
        assert error.provider == "qianfan"
        assert error.retryable is retryable
        assert error.partial is not None and error.partial.text == ""
    assert server.stats.requests["qianfan.chat"] == 2


@pytest.mark.parametrize("code", [2, 18, 336100, 336501, 336502])
async def test_retryable_codes_are_retried_before_the_first_chunk(
    client: QianfanClient, server: MockServer, code: int
) -> None:
    stream = client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(fail_code=code, fail_times=1))
    completion = await stream.collect()
    assert completion.is_complete
    assert stream.attempts == 2
    assert server.stats.requests["qianfan.chat"] == 2


async def test_retries_stop_at_max_retries(client: QianfanClient, server: MockServer) -> None:
    with pytest.raises(RateLimitError) as caught:
        await client.chat(USER, model=CHAT_MODEL, extra_headers=knobs(fail_code=18, fail_times=99))
    assert caught.value.code == 18
    assert server.stats.requests["qianfan.chat"] == 3  # the first attempt and two retries


@pytest.mark.parametrize("code", [1, 4, 6, 17, 336003, 336005])
async def test_other_codes_are_not_retried(client: QianfanClient, server: MockServer, code: int) -> None:
    with pytest.raises(APIError) as caught:
        await client.chat(USER, model=CHAT_MODEL, extra_headers=knobs(fail_code=code, fail_times=1))
    assert caught.value.code == code
    assert server.stats.requests["qianfan.chat"] == 1


@pytest.mark.parametrize(("status", "expected"), [(500, ServerError), (502, ServerError), (503, ServerError), (429, RateLimitError)])
async def test_http_5xx_and_429_are_retried(
    client: QianfanClient, server: MockServer, status: int, expected: type[APIError]
) -> None:
    stream = client.stream_chat(
        USER, model=CHAT_MODEL, extra_headers=knobs(http_status=status, fail_times=1, retry_after=0)
    )
    assert (await stream.collect()).is_complete
    assert stream.attempts == 2
    with pytest.raises(expected) as caught:
        await client.chat(
            [{"role": "user", "content": "other"}], model=CHAT_MODEL,
            extra_headers=knobs(http_status=status, fail_times=99, retry_after=0),
        )
    assert caught.value.http_status == status
    assert caught.value.retryable is True
    assert caught.value.retry_after == 0.0
    assert server.stats.requests["qianfan.chat"] == 2 + 3


async def test_error_event_before_any_chunk_is_retried_if_retryable(client: QianfanClient, server: MockServer) -> None:
    with pytest.raises(ServerError) as caught:
        await client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(error_after=0, error_code=336100)).collect()
    assert caught.value.code == 336100
    assert server.stats.requests["qianfan.chat"] == 3


async def test_error_event_mid_stream_is_raised_and_never_retried(client: QianfanClient, server: MockServer) -> None:
    received: list[Chunk] = []
    stream = client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(error_after=3, error_code=336100))
    error = await read_until_error(stream, received)
    assert type(error) is ServerError
    assert error.code == 336100 and error.retryable is True  # retryable in kind, but too late
    assert len(received) == 3
    assert error.partial is not None
    assert error.partial.text == "".join(chunk.text for chunk in received)
    assert error.partial.chunk_count == 3 and not error.partial.is_complete
    assert server.stats.requests["qianfan.chat"] == 1


async def test_disconnect_mid_stream_keeps_the_partial_text(client: QianfanClient, server: MockServer) -> None:
    received: list[Chunk] = []
    stream = client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(disconnect_after=2))
    error = await read_until_error(stream, received)
    assert isinstance(error, StreamInterruptedError)
    assert len(received) == 2
    assert error.partial is not None and error.partial.text == received[0].text + received[1].text
    assert server.stats.requests["qianfan.chat"] == 1
    assert client.pool.stats().connections_in_use == 0


async def test_malformed_event_mid_stream_is_a_protocol_error(client: QianfanClient, server: MockServer) -> None:
    received: list[Chunk] = []
    stream = client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(malformed_after=2))
    error = await read_until_error(stream, received)
    assert isinstance(error, ProtocolError)
    assert len(received) == 2
    assert error.partial is not None and error.partial.text == "".join(chunk.text for chunk in received)
    assert server.stats.requests["qianfan.chat"] == 1


async def test_html_instead_of_events_is_a_protocol_error(client: QianfanClient, server: MockServer) -> None:
    with pytest.raises(ProtocolError, match="Network sign-in") as caught:
        await client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(non_sse_body="true")).collect()
    assert "text/html" in str(caught.value)
    assert server.stats.requests["qianfan.chat"] == 1


async def test_a_stalled_stream_times_out_with_its_partial(server: MockServer) -> None:
    async with QianfanClient(
        api_key="app-key", secret_key="app-secret", base_url=server.url, timeout=Timeout(idle=0.2)
    ) as qianfan:
        received: list[Chunk] = []
        stream = qianfan.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(stall_after=1))
        error = await read_until_error(stream, received)
        assert isinstance(error, StreamTimeoutError)
        assert error.phase == "idle"
        assert error.partial is not None and error.partial.text == received[0].text
        assert server.stats.requests["qianfan.chat"] == 1


async def test_leaving_a_stream_early_releases_its_connection(client: QianfanClient, server: MockServer) -> None:
    async with client.stream_chat(USER, model=CHAT_MODEL, extra_headers=knobs(stall_after=2)) as stream:
        async for chunk in stream:
            assert chunk.sentence_id == 0
            break
    assert client.pool.stats().connections_in_use == 0
    assert client.pool.stats().open_streams == 0
    stats = await server.wait_for(lambda s: s.streams_aborted == 1)
    assert stats.streams_completed == 0
