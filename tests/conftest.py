"""Suite-wide: tests reach only 127.0.0.1, never through a proxy of the machine they run on."""

from __future__ import annotations

import pytest

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_of_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pools honour the proxy variables (see `Pool`); the machine's must not apply here."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
