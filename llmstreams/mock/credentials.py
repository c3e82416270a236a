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
    - `dashscope_api_key`: the DashScope `Authorization: Bearer` key (native and compatible mode).
    - `qianfan_v2_api_key`: the Qianfan v2 `Authorization: Bearer bce-v3/...` key.
    - `openai_api_key`: the `Authorization: Bearer` key of the generic `/v1` routes.

    The repr masks every value, so logging a server's settings leaks no secret.
    """

    api_key: str | None = attrs.field(default=None, repr=_masked)
    secret_key: str | None = attrs.field(default=None, repr=_masked)
    access_key: str | None = attrs.field(default=None, repr=_masked)
    secret_access_key: str | None = attrs.field(default=None, repr=_masked)
    dashscope_api_key: str | None = attrs.field(default=None, repr=_masked)
    qianfan_v2_api_key: str | None = attrs.field(default=None, repr=_masked)
    openai_api_key: str | None = attrs.field(default=None, repr=_masked)
