"""Qianfan API v2: the OpenAI-compatible dialect with Qianfan's URLs, limits and extras.

Everything on the wire is the dialect's (`llmstreams.openai.wire`); Qianfan adds its base URL,
the `/v2` path, `penalty_score`, a system message only first, at most four stop strings, and
the chunks' `is_end` / `need_clear_history` / `ban_round` (protocol.md section 5.1). An app is
chosen with the `appid` header (`extra_headers={"appid": ...}`). Keys are the console's
`bce-v3/ALTAK-...` API keys, or bearer tokens made from an IAM access key pair
(`iam.BearerToken`, which `make_client` builds from `access_key=` and `secret_key=`); v1's
credentials belong to `QianfanClient`.
API reference: https://cloud.baidu.com/doc/qianfan-api/s/3m7of64lb
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from llmstreams.errors import (
    AuthenticationError,
    ContentFilterError,
    InvalidParameterError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from llmstreams.openai.client import OpenAICompatibleClient
from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.qianfan.iam import IAM_URL, BearerToken
from llmstreams.qianfan.models import check_v2_model
from llmstreams.qianfan.wire import PROVIDER
from llmstreams.validation import check_number

KEY_PREFIX: Final = "bce-v3/"


def _check_penalty_score(field: str, value: Any) -> float:
    return check_number(field, value, low=1, high=2)


DIALECT: Final = Dialect(
    provider=PROVIDER,
    max_stop=4,
    system_first_only=True,
    extras={"penalty_score": _check_penalty_score},
    id_is_request_id=True,
    choice_flags=True,
    check_model=check_v2_model,
    # https://cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w: a model that does not exist, or is
    # not the account's, is HTTP 401 `invalid_model`; the key itself is `invalid_iam_token`.
    # https://cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w (error codes). An error that comes
    # with HTTP 200 before any output (as `internal_error` under high load) is retried as a
    # 5xx would be: its class, not its status, says it is the server's.
    error_classes={
        "invalid_model": NotFoundError,
        "invalid_iam_token": AuthenticationError,
        "invalid_appid": AuthenticationError,
        "no_parameter_permission": PermissionDeniedError,
        **dict.fromkeys(
            ("malformed_json", "invalid_messages", "characters_too_long", "tokens_too_long",
             "invalid_argument"),
            InvalidRequestError,
        ),
        **dict.fromkeys(
            ("system_unsafe", "user_setting_unsafe", "functions_unsafe"), ContentFilterError
        ),
        **dict.fromkeys(
            ("rate_limit_exceeded", "rpm_rate_limit_exceeded", "tpm_rate_limit_exceeded",
             "input_tpm_rate_limit_exceeded", "output_tpm_rate_limit_exceeded",
             "user_rate_limit_exceeded", "cluster_rate_limit_exceeded",
             "cluster_rpm_rate_limit_exceeded", "cluster_tpm_rate_limit_exceeded",
             "preemptible_rate_limit_exceeded"),
            RateLimitError,
        ),
        **dict.fromkeys(("internal_error", "dispatch_internal_error"), ServerError),
    },
    parameter_hints={
        "endpoint": "it is API v1's: v2 has no endpoints; call a service you deployed by the "
        "model id the console shows for it, model='...'",
        "top_k": "it is API v1's; on v2 pass extra_body={'top_k': ...} if the model takes it",
        "user_id": "it is API v1's; on v2 pass user=",
        "extra_params": "it is API v1's; on v2 pass extra_body=",
    },
)

VENDOR: Final = Vendor(
    name="qianfan",
    title="Baidu Qianfan (API v2)",
    dialect=DIALECT,
    base_url="https://qianfan.baidubce.com/v2",
    api_path="/v2",
    api_key_env="QIANFAN_API_KEY",
    base_url_env="QIANFAN_BASE_URL",
    key_prefix=KEY_PREFIX,
    key_prefix_required=True,
    default_model="ernie-speed-8k",
    docs="https://cloud.baidu.com/doc/qianfan-api/s/3m7of64lb",
)

# The official SDK's names for the IAM key pair; QIANFAN_SECRET_ACCESS_KEY is what QianfanClient
# (API v1) also reads for the same secret.
ACCESS_KEY_ENV: Final = "QIANFAN_ACCESS_KEY"
SECRET_KEY_ENVS: Final = ("QIANFAN_SECRET_KEY", "QIANFAN_SECRET_ACCESS_KEY")
CREDENTIAL_ENV: Final = (
    f"{VENDOR.api_key_env} (bce-v3/...), or {ACCESS_KEY_ENV} + {SECRET_KEY_ENVS[0]} (an IAM "
    "access key pair)"
)


def make_client(
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    iam_url: str = IAM_URL,
    **options: Any,
) -> OpenAICompatibleClient:
    """A Qianfan API v2 client: `options` are `OpenAICompatibleClient`'s. With `access_key`
    and `secret_key` (an IAM key pair), its keys are bearer tokens made from them at `iam_url`.
    With no credentials given, QIANFAN_API_KEY is read, or else the IAM pair's variables."""
    if access_key is not None or secret_key is not None:
        if options.get("api_key") is not None and access_key is None:
            raise InvalidParameterError(
                "secret_key",
                "goes with access_key (an IAM key pair); an app's api_key and secret_key are "
                "API v1's: llmstreams.client_for('qianfan-v1', api_key=..., secret_key=...)",
            )
        if options.get("api_key") is not None:
            raise InvalidParameterError(
                "api_key", "give api_key or access_key and secret_key, not both"
            )
        options["api_key"] = BearerToken(
            _required("access_key", access_key, "secret_key"),
            _required("secret_key", secret_key, "access_key"),
            iam_url=iam_url,
        )
    elif options.get("api_key") is None and not os.environ.get(VENDOR.api_key_env, "").strip():
        pair = _iam_pair(os.environ)
        if pair is not None:
            options["api_key"] = BearerToken(*pair, iam_url=iam_url)
        elif os.environ.get(ACCESS_KEY_ENV, "").strip():
            raise InvalidParameterError(
                SECRET_KEY_ENVS[0],
                f"environment variable missing: {ACCESS_KEY_ENV} is set without "
                f"{SECRET_KEY_ENVS[0]}",
            )
    return OpenAICompatibleClient(vendor=VENDOR, **options)


def read_credentials(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The credentials `environ` holds: the API key, or else the IAM key pair (None: neither)."""
    api_key = environ.get(VENDOR.api_key_env, "").strip()
    if api_key:
        return {"api_key": api_key}
    pair = _iam_pair(environ)
    return None if pair is None else {"access_key": pair[0], "secret_key": pair[1]}


def _iam_pair(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The IAM key pair the environment holds, if both halves are set."""
    access_key = environ.get(ACCESS_KEY_ENV, "").strip()
    secret_key = next(
        (value for name in SECRET_KEY_ENVS if (value := environ.get(name, "").strip())), ""
    )
    return (access_key, secret_key) if access_key and secret_key else None


def _required(field: str, value: str | None, partner: str) -> str:
    if value is None:
        raise InvalidParameterError(field, f"required with {partner}: the two go together")
    return value
