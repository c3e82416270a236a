"""Fixtures the mock server's tests share (a test module may define its own of the same name)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from llmstreams.mock import MockServer


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    """A mock server with the default knobs."""
    async with MockServer() as mock:
        yield mock


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw aiohttp client for talking to the mock over loopback."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client
