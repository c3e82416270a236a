"""Faults before any byte of a response: nothing listening, a silent peer, a peer that hangs up,
TLS spoken to a plain-HTTP port.

Each is an `APIConnectionError` (an `APITimeoutError` for the silent peer), sent again as the
retry policy allows (the attempts are counted at the server, or in the retry log when nothing
listens), and sent exactly once with max_retries=0.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from llmstreams import APIConnectionError, APITimeoutError, LLMStreamsError, Timeout
from llmstreams.mock import MockServer
from tests.reliability.helpers import ALL_AUTH, TcpServer, Vendor, closed_port


def attempt_params() -> list[Any]:
    params = []
    for vendor in ALL_AUTH:
        for max_retries in (2, 0):
            params.append(pytest.param(
                vendor, max_retries, id=f"{vendor.name}-max_retries={max_retries}"
            ))
    return params


def assert_nothing_received(error: LLMStreamsError) -> None:
    assert error.partial is not None
    assert error.partial.text == "" and error.partial.chunk_count == 0


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1 for record in caplog.records
        if record.name == "llmstreams" and ": retry " in record.getMessage()
    )


@pytest.mark.parametrize(("vendor", "max_retries"), attempt_params())
async def test_connection_refused(
    vendor: Vendor, max_retries: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmstreams")
    async with vendor.client(f"http://127.0.0.1:{closed_port()}", max_retries=max_retries) as client:
        stream = vendor.stream(client)
        with pytest.raises(APIConnectionError) as caught:
            await stream.collect()
    assert not isinstance(caught.value, APITimeoutError)
    assert_nothing_received(caught.value)
    assert retries_logged(caplog) == max_retries
    assert stream.attempts == max_retries + 1


@pytest.mark.parametrize(("vendor", "max_retries"), attempt_params())
async def test_connection_closed_as_soon_as_accepted(vendor: Vendor, max_retries: int) -> None:
    async with TcpServer(silent=False).running() as server, vendor.client(
        server.url, max_retries=max_retries
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await vendor.answer(client)
    assert not isinstance(caught.value, APITimeoutError)
    assert_nothing_received(caught.value)
    assert server.accepted == max_retries + 1


@pytest.mark.parametrize(("vendor", "max_retries"), attempt_params())
async def test_port_that_accepts_and_never_answers(vendor: Vendor, max_retries: int) -> None:
    async with TcpServer(silent=True).running() as server, vendor.client(
        server.url, timeout=Timeout(first_chunk=0.2), max_retries=max_retries
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            await vendor.stream(client).collect()
    assert caught.value.phase == "first_chunk"
    assert_nothing_received(caught.value)
    assert server.accepted == max_retries + 1


@pytest.mark.parametrize(("vendor", "max_retries"), attempt_params())
async def test_tls_to_a_plain_http_port(mock: MockServer, vendor: Vendor, max_retries: int) -> None:
    https_url = mock.url.replace("http://", "https://")
    async with vendor.client(https_url, max_retries=max_retries) as client:
        with pytest.raises(APIConnectionError) as caught:
            await vendor.stream(client).collect()
    assert not isinstance(caught.value, APITimeoutError)
    assert "SSL" in str(caught.value)
    assert_nothing_received(caught.value)
    stats = mock.stats
    assert stats.connections_opened == max_retries + 1
    assert sum(stats.requests.values()) == 0
