"""Fixtures tests share (a test module may define its own of the same name),
and one for all: tests reach only 127.0.0.1, never through a proxy of the machine they run on."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from llmstreams import Pool
from llmstreams.mock import MockCredentials, MockServer
from tests.support import FAST_RETRY

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_of_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pools honour the proxy variables (see `Pool`); the machine's must not apply here."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mock_credentials() -> MockCredentials | None:
    """The credentials the `server` fixture's mock checks: none (a module overrides this)."""
    return None


@pytest.fixture
async def server(mock_credentials: MockCredentials | None) -> AsyncIterator[MockServer]:
    """A mock server with the default knobs."""
    async with MockServer(credentials=mock_credentials) as mock:
        yield mock


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    """A pool whose calls retry without waiting."""
    async with Pool(retry=FAST_RETRY) as shared:
        yield shared


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw aiohttp client for talking to the mock over loopback."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Why tests were skipped, one line per reason, even under -q (unless -rs already said)."""
    if {"s", "a", "A"} & set(config.option.reportchars or ""):
        return
    reasons = Counter(
        _skip_reason(report) for report in terminalreporter.stats.get("skipped", [])
    )
    for reason, count in sorted(reasons.items()):
        terminalreporter.write_line(f"{count} skipped: {reason}")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")
