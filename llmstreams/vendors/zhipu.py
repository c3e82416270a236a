"""Zhipu GLM (BigModel): https://docs.bigmodel.cn/cn/api (base URL, bearer key),
https://docs.z.ai/api-reference/api-code (error codes), the chat-completion reference
(parameters: temperature 0-1, at most 4 stop strings, `thinking`, `do_sample`, `request_id`).

Errors are `{"error": {"code": "1211", "message": ...}}` with string business codes. Usage is
sent on the finishing chunk of every stream, asked for or not; a stream stopped by the content
filter finishes with `finish_reason: "sensitive"`.
"""

from __future__ import annotations

from typing import Final

from llmstreams import errors
from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.validation import check_bool, check_text
from llmstreams.vendors.checks import one_of, thinking_switch

ARREARS: Final = "1113"

VENDOR: Final = Vendor(
    name="zhipu",
    title="Zhipu GLM",
    dialect=Dialect(
        provider="zhipu",
        temperature_max=1.0,
        max_stop=4,
        extras={
            "thinking": thinking_switch("enabled", "disabled"),
            "reasoning_effort": one_of(("none", "minimal", "low", "medium", "high", "xhigh", "max")),
            "do_sample": check_bool,
            "request_id": check_text,
            "user_id": check_text,
            "tool_stream": check_bool,
        },
        error_classes={
            **dict.fromkeys(("1000", "1001", "1002", "1003", "1004"), errors.AuthenticationError),
            ARREARS: errors.RateLimitError,
            **dict.fromkeys(("1210", "1212", "1213", "1214", "1215", "1261"), errors.InvalidRequestError),
            "1211": errors.NotFoundError,
            "1220": errors.PermissionDeniedError,
            **dict.fromkeys(("1221", "1222"), errors.NotFoundError),
            "1301": errors.ContentFilterError,
            "1302": errors.RateLimitError,
            "1305": errors.ServerError,
        },
        quota_codes=frozenset({ARREARS}),
    ),
    base_url="https://open.bigmodel.cn/api/paas/v4",
    api_path="/api/paas/v4",
    api_key_env="ZHIPUAI_API_KEY",
    base_url_env="ZHIPUAI_BASE_URL",
    default_model="glm-4.7-flash",
    docs="https://docs.bigmodel.cn/cn/api",
)
