"""Overload and server errors before the first chunk: HTTP 429 (with Retry-After), 500, 503,
Qianfan error codes 18 and 336100 (HTTP 200), DashScope Throttling.

Each is sent again up to the retry limit, then raised as the typed error with its code and
status; max_retries=0 sends exactly one request. Requests are counted at the server.
"""

from __future__ import annotations

import asyncio
import logging

import attrs
import pytest

from llmstreams import APIError, Completion, RateLimitError, RetryPolicy, ServerError
from llmstreams.mock import MockServer
from tests.reliability.helpers import (
    DASHSCOPE,
    QIANFAN,
    Client,
    Scripted,
    ScriptedServer,
    Vendor,
    knobs,
)


@attrs.frozen
class Overload:
    vendor: Vendor
    knobs: dict[str, object]
    error: type[APIError]
    code: int | str
    status: int

    @property
    def id(self) -> str:
        shown = ",".join(f"{name}={value}" for name, value in self.knobs.items())
        return f"{self.vendor.name}-{shown}"


OVERLOADS = [
    Overload(QIANFAN, {"http_status": 429, "retry_after": 0}, RateLimitError, 18, 429),
    Overload(QIANFAN, {"http_status": 500}, ServerError, 336000, 500),
    Overload(QIANFAN, {"http_status": 503}, ServerError, 336100, 503),
    Overload(QIANFAN, {"fail_code": 18}, RateLimitError, 18, 200),
    Overload(QIANFAN, {"fail_code": 336100}, ServerError, 336100, 200),
    Overload(DASHSCOPE, {"http_status": 429, "retry_after": 0}, RateLimitError, "Throttling", 429),
    Overload(DASHSCOPE, {"http_status": 500}, ServerError, "InternalError", 500),
    Overload(DASHSCOPE, {"http_status": 503}, ServerError, "ModelUnavailable", 503),
    Overload(DASHSCOPE, {"fail_code": "Throttling"}, RateLimitError, "Throttling", 429),
    Overload(DASHSCOPE, {"fail_code": "Throttling.RateQuota"}, RateLimitError, "Throttling.RateQuota", 429),
]
overloads = pytest.mark.parametrize("overload", OVERLOADS, ids=lambda overload: overload.id)
streaming = pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])


async def send(overload: Overload, client: Client, headers: dict[str, str], *, stream: bool) -> Completion:
    vendor = overload.vendor
    if stream:
        return await vendor.stream(client, headers).collect()
    return await vendor.answer(client, headers)


@overloads
@streaming
async def test_retried_up_to_the_limit_then_raised_with_code_and_status(
    mock: MockServer, overload: Overload, stream: bool
) -> None:
    headers = knobs(**overload.knobs, fail_times=99)
    async with overload.vendor.client(mock.url) as client:
        with pytest.raises(overload.error) as caught:
            await send(overload, client, headers, stream=stream)
    error = caught.value
    assert error.code == overload.code and error.http_status == overload.status
    assert error.retryable
    assert error.partial is not None and error.partial.text == ""
    assert mock.stats.requests[overload.vendor.route] == 3  # the first attempt and 2 retries


@overloads
async def test_retried_until_it_succeeds(mock: MockServer, overload: Overload) -> None:
    async with overload.vendor.client(mock.url) as client:
        stream = overload.vendor.stream(client, knobs(**overload.knobs, fail_times=2))
        completion = await stream.collect()
    assert completion.is_complete
    assert stream.attempts == 3
    assert mock.stats.requests[overload.vendor.route] == 3


@overloads
@streaming
async def test_max_retries_zero_sends_exactly_once(
    mock: MockServer, overload: Overload, stream: bool
) -> None:
    headers = knobs(**overload.knobs, fail_times=99)
    async with overload.vendor.client(mock.url, max_retries=0) as client:
        with pytest.raises(overload.error) as caught:
            await send(overload, client, headers, stream=stream)
    assert caught.value.code == overload.code
    assert mock.stats.requests[overload.vendor.route] == 1


@pytest.mark.parametrize("vendor", [QIANFAN, DASHSCOPE], ids=lambda vendor: vendor.name)
async def test_retry_after_is_honoured(
    mock: MockServer, vendor: Vendor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmstreams")
    # An hour of backoff: only the server's Retry-After lets the retries happen in this test.
    patient = RetryPolicy(max_retries=2, backoff_base=3600, backoff_max=3600)
    async with vendor.client(mock.url, retry=patient) as client:
        with pytest.raises(RateLimitError) as caught:
            async with asyncio.timeout(60):  # fails the test instead of hanging if ignored
                await vendor.stream(
                    client, knobs(http_status=429, retry_after=0.05, fail_times=99)
                ).collect()
    assert caught.value.retry_after == 0.05
    assert caught.value.http_status == 429
    waits = [record.getMessage() for record in caplog.records if ": retry " in record.getMessage()]
    assert len(waits) == 2 and all(" in 0.05s after" in wait for wait in waits)
    assert mock.stats.requests[vendor.route] == 3


@pytest.mark.parametrize("retry_after", ["86400", "1e999"])
@pytest.mark.parametrize("vendor", [QIANFAN, DASHSCOPE], ids=lambda vendor: vendor.name)
async def test_absurd_retry_after_is_capped_by_max_retry_after(vendor: Vendor, retry_after: str) -> None:
    script = Scripted(
        [b"<html>busy</html>"], status=503, content_type="text/html",
        headers={"Retry-After": retry_after},
    )
    capped = RetryPolicy(max_retries=1, backoff_base=0.001, max_retry_after=0.01)
    async with ScriptedServer(script).running() as server, vendor.client(
        server.url, retry=capped
    ) as client:
        with pytest.raises(ServerError) as caught:
            async with asyncio.timeout(60):
                await vendor.answer(client)
    assert caught.value.http_status == 503
    assert server.generations == 2


async def test_retry_after_nan_does_not_hang() -> None:
    # The wait is chosen by the core, whichever the vendor: one vendor shows it.
    vendor = DASHSCOPE
    script = Scripted(
        [b"<html>busy</html>"], status=503, content_type="text/html",
        headers={"Retry-After": "nan"},
    )
    async with ScriptedServer(script).running() as server, vendor.client(server.url) as client:
        with pytest.raises(ServerError):
            async with asyncio.timeout(2):  # a hang detector: the retries take milliseconds
                await vendor.answer(client)
    assert server.generations == 3
