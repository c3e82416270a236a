"""Qianfan access tokens expiring under load (api_key + secret_key): exactly one renewal, and
every request succeeds.

The tokens expire either before 200 concurrent requests start (a warm-up having cached one),
or while the 200 requests, sent with the old token, are on their way to the server (held at a
proxy, expired, released). Expiry while streams are mid-way is
tests/test_qianfan_auth.py::test_tokens_expired_while_streams_run.
"""

from __future__ import annotations

import asyncio

import pytest

from llmstreams import Completion, Pool
from llmstreams.mock import MockServer
from tests.reliability.helpers import FAST_RETRY, QIANFAN, RecordingProxy

CONCURRENT = 200


@pytest.mark.parametrize("in_flight", [False, True], ids=["before-they-start", "in-flight"])
async def test_tokens_expire_under_200_concurrent_requests(mock: MockServer, in_flight: bool) -> None:
    async with RecordingProxy(mock.url).running() as proxy, Pool(retry=FAST_RETRY) as pool:
        # Two clients of one pool share its token cache.
        clients = [QIANFAN.client(proxy.url, pool=pool) for _ in range(2)]
        assert (await QIANFAN.answer(clients[0])).is_complete
        assert mock.stats.tokens_issued == 1

        if in_flight:
            proxy.hold()
        else:
            mock.expire_tokens()
        streams = [QIANFAN.stream(clients[index % 2]) for index in range(CONCURRENT // 2)]
        pending: list[asyncio.Future[Completion]] = [
            *(asyncio.ensure_future(stream.collect()) for stream in streams),
            *(asyncio.ensure_future(QIANFAN.answer(clients[index % 2]))
              for index in range(CONCURRENT // 2)),
        ]
        if in_flight:
            # Every request has left the client with the cached token and waits at the proxy.
            await proxy.wait_held(CONCURRENT)
            assert len(proxy.sent_tokens) == 1
            mock.expire_tokens()
            proxy.release()
        completions = await asyncio.gather(*pending)

    assert all(completion.is_complete for completion in completions)
    stats = mock.stats
    assert stats.tokens_issued == 2 and stats.requests["token"] == 2
    # Each request was refused once (code 111) and sent again once with the one new token.
    assert stats.requests["qianfan.chat"] == 1 + 2 * CONCURRENT
    assert len(proxy.sent_tokens) == 2
    assert all(stream.attempts == 2 for stream in streams)
