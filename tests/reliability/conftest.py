from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llmstreams.mock import MockServer
from tests.reliability.helpers import MOCK_CREDENTIALS


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    """The mock server, insisting on the suite's credentials."""
    async with MockServer(credentials=MOCK_CREDENTIALS) as server:
        yield server
