"""Faults once the response has begun: the server hangs up, stalls mid-stream, stalls before the
first byte, or reports an error mid-stream.

What arrived is kept exactly: `.partial.text` is the same request's fault-free answer cut at the
chunks delivered. The request is never sent again (counted at the server).
"""

from __future__ import annotations

import pytest

from llmstreams import (
    APITimeoutError,
    Chunk,
    PoolStats,
    ServerError,
    StreamInterruptedError,
    StreamTimeoutError,
    Timeout,
)
from llmstreams.mock import MockServer
from tests.reliability.helpers import Vendor, fault_free_pieces, knobs, read_all, vendor_params


@vendor_params()
@pytest.mark.parametrize("cut_after", [1, 4])
async def test_server_closes_mid_stream(mock: MockServer, vendor: Vendor, cut_after: int) -> None:
    async with vendor.client(mock.url) as client:
        pieces = await fault_free_pieces(vendor, client)
        sent_before = mock.stats.requests[vendor.route]
        received: list[Chunk] = []
        with pytest.raises(StreamInterruptedError) as caught:
            await read_all(vendor.stream(client, knobs(disconnect_after=cut_after)), received)
        assert client.pool.stats() == PoolStats(open_streams=0, connections_in_use=0)
    error = caught.value
    assert not isinstance(error, StreamTimeoutError)
    assert [chunk.text for chunk in received] == pieces[:cut_after]
    assert error.partial is not None
    assert error.partial.text == "".join(pieces[:cut_after])
    assert error.partial.chunk_count == cut_after and not error.partial.is_complete
    assert mock.stats.requests[vendor.route] == sent_before + 1


@vendor_params()
async def test_stall_mid_stream_past_the_idle_timeout(mock: MockServer, vendor: Vendor) -> None:
    async with vendor.client(mock.url, timeout=Timeout(idle=0.3)) as client:
        pieces = await fault_free_pieces(vendor, client)
        sent_before = mock.stats.requests[vendor.route]
        received: list[Chunk] = []
        with pytest.raises(StreamTimeoutError) as caught:
            await read_all(vendor.stream(client, knobs(stall_after=2)), received)
        assert client.pool.stats() == PoolStats(open_streams=0, connections_in_use=0)
    error = caught.value
    assert error.phase == "idle"
    assert error.partial is not None and error.partial.text == "".join(pieces[:2])
    assert [chunk.text for chunk in received] == pieces[:2]
    assert mock.stats.requests[vendor.route] == sent_before + 1
    # The client hung up on the stalled stream rather than leaving it open.
    await mock.wait_for(lambda stats: stats.streams_aborted == 1)


@vendor_params()
async def test_stall_before_the_first_byte_past_its_timeout(mock: MockServer, vendor: Vendor) -> None:
    async with vendor.client(mock.url, timeout=Timeout(first_chunk=0.3)) as client:
        with pytest.raises(APITimeoutError) as caught:
            await vendor.stream(client, knobs(first_chunk_delay=60)).collect()
        assert client.pool.stats() == PoolStats(open_streams=0, connections_in_use=0)
    error = caught.value
    assert error.phase == "first_chunk"
    assert not isinstance(error, StreamInterruptedError)
    assert error.partial is not None and error.partial.text == ""
    # The response had begun (its headers came), so the generation may be under way: not resent.
    assert mock.stats.requests[vendor.route] == 1
    await mock.wait_for(lambda stats: stats.streams_aborted == 1)


@vendor_params()
async def test_retryable_error_mid_stream_is_never_resent(mock: MockServer, vendor: Vendor) -> None:
    async with vendor.client(mock.url) as client:
        pieces = await fault_free_pieces(vendor, client)
        sent_before = mock.stats.requests[vendor.route]
        received: list[Chunk] = []
        with pytest.raises(ServerError) as caught:
            await read_all(
                vendor.stream(client, knobs(error_after=3, error_code="ModelUnavailable")), received
            )
    error = caught.value
    assert error.retryable  # retryable, but the generation had begun
    assert error.code == (336100 if vendor.is_qianfan else "ModelUnavailable")
    assert error.partial is not None and error.partial.text == "".join(pieces[:3])
    assert mock.stats.requests[vendor.route] == sent_before + 1
