"""Moonshot Kimi: https://platform.kimi.ai/docs/api/quickstart (base URL, MOONSHOT_API_KEY),
https://platform.kimi.ai/docs/api/errors (error types), .../api/models-overview (parameters).

Errors carry a `type` and no `code`. A stream's usage comes inside the finishing choice
(`choices[0].usage`). Keys of the China site (api.moonshot.cn, the default here) and the
global one (api.moonshot.ai) are not interchangeable.
"""

from __future__ import annotations

from typing import Final

from llmstreams import errors
from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.vendors.checks import thinking_switch

QUOTA_EXCEEDED: Final = "exceeded_current_quota_error"

VENDOR: Final = Vendor(
    name="moonshot",
    title="Moonshot Kimi",
    dialect=Dialect(
        provider="moonshot",
        temperature_max=1.0,
        extras={"thinking": thinking_switch("enabled", "disabled")},
        error_classes={
            "content_filter": errors.ContentFilterError,
            "invalid_request_error": errors.InvalidRequestError,
            "invalid_authentication_error": errors.AuthenticationError,
            "incorrect_api_key_error": errors.AuthenticationError,
            "permission_denied_error": errors.PermissionDeniedError,
            "access_terminated_error": errors.PermissionDeniedError,
            "resource_not_found_error": errors.NotFoundError,
            QUOTA_EXCEEDED: errors.RateLimitError,
            "rate_limit_reached_error": errors.RateLimitError,
            "engine_overloaded_error": errors.ServerError,
            "server_error": errors.ServerError,
            "unexpected_output": errors.ServerError,
            "server_unavailable": errors.ServerError,
        },
        quota_codes=frozenset({QUOTA_EXCEEDED}),
    ),
    base_url="https://api.moonshot.cn/v1",
    api_path="/v1",
    api_key_env="MOONSHOT_API_KEY",
    key_prefix="sk-",
    default_model="kimi-k2.6",
    docs="https://platform.kimi.ai/docs/api/quickstart",
)
