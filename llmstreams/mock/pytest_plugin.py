"""pytest fixtures serving the mock Qianfan/DashScope server on 127.0.0.1.

Registered through the `pytest11` entry point, so it is loaded by every pytest run in an
environment where llmstreams is installed: importing it must never fail, with or without
pytest-asyncio, and it imports the server itself only when a fixture is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llmstreams.mock.server import MockServer

try:
    import pytest_asyncio
except ImportError:
    async_fixture: Callable[..., Any] = pytest.fixture
else:
    async_fixture = pytest_asyncio.fixture

MockServerFactory = Callable[..., Awaitable["MockServer"]]


@async_fixture
async def llmstreams_mock() -> AsyncIterator[MockServer]:
    """A running mock server with the default behaviour, closed after the test."""
    from llmstreams.mock.server import MockServer

    async with MockServer() as server:
        yield server


@async_fixture
async def llmstreams_mock_factory() -> AsyncIterator[MockServerFactory]:
    """`await factory(**MockServer_kwargs)` starts a mock server, closed after the test."""
    from llmstreams.mock.server import MockServer

    started: list[MockServer] = []

    async def start(**kwargs: Any) -> MockServer:
        server = MockServer(**kwargs)
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            await server.close()
