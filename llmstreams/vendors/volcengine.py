"""Volcano Engine Ark (Doubao): https://www.volcengine.com/docs/82379/1298454 (chat API: base
URL, ARK_API_KEY, parameters), https://www.volcengine.com/docs/82379/1299023 (error codes).

`model` is a model id (`doubao-seed-1-6-flash-250828`) or an endpoint id (`ep-...`). Errors are
`{"error": {"code": "InvalidEndpointOrModel.NotFound", "message": ..., "type": "NotFound"}}`.
Reasoning arrives as `delta.reasoning_content`; usage in a last `choices: []` chunk when asked.
"""

from __future__ import annotations

from typing import Final

from llmstreams import errors
from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.vendors.checks import one_of, thinking_switch

ACCOUNT_OVERDUE: Final = "AccountOverdueError"

VENDOR: Final = Vendor(
    name="volcengine",
    title="Volcano Engine Ark",
    dialect=Dialect(
        provider="volcengine",
        max_stop=4,
        extras={
            "thinking": thinking_switch("enabled", "disabled", "auto"),
            "reasoning_effort": one_of(
                ("none", "minimal", "low", "medium", "high", "xhigh", "max")
            ),
            "service_tier": one_of(("auto", "default", "fast", "flex")),
        },
        error_classes={
            "AuthenticationError": errors.AuthenticationError,
            ACCOUNT_OVERDUE: errors.RateLimitError,
            "AccessDenied": errors.PermissionDeniedError,
            "ModelNotOpen": errors.PermissionDeniedError,
            "InvalidEndpointOrModel.NotFound": errors.NotFoundError,
            "SensitiveContentDetected": errors.ContentFilterError,
            "InputTextSensitiveContentDetected": errors.ContentFilterError,
            "OutputTextSensitiveContentDetected": errors.ContentFilterError,
            "ServerOverloaded": errors.ServerError,
            "InternalServiceError": errors.ServerError,
        },
        quota_codes=frozenset({ACCOUNT_OVERDUE}),
    ),
    base_url="https://ark.cn-beijing.volces.com/api/v3",
    api_path="/api/v3",
    api_key_env="ARK_API_KEY",
    default_model="doubao-seed-1-6-flash-250828",
    docs="https://www.volcengine.com/docs/82379/1298454",
)
