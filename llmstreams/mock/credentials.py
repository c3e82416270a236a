"""The credentials a mock server enforces, when it is told to enforce any."""

from __future__ import annotations

import attrs


def _masked(value: str | None) -> str:
    return "None" if value is None else "'***'"


@attrs.frozen
class MockCredentials:
    """Credentials the mock insists on; each one left as None is not checked.

    - `api_key` / `secret_key`: Qianfan OAuth client id and secret (`/oauth/2.0/token`).
    - `access_key` / `secret_access_key`: Qianfan AK/SK for `bce-auth-v1` signatures.
    - `dashscope_api_key`: the DashScope `Authorization: Bearer` key.

    The repr masks every value, so logging a server's settings leaks no secret.
    """

    api_key: str | None = attrs.field(default=None, repr=_masked)
    secret_key: str | None = attrs.field(default=None, repr=_masked)
    access_key: str | None = attrs.field(default=None, repr=_masked)
    secret_access_key: str | None = attrs.field(default=None, repr=_masked)
    dashscope_api_key: str | None = attrs.field(default=None, repr=_masked)
