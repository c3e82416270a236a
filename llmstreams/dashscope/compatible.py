"""DashScope's OpenAI-compatible mode: the dialect with DashScope's URLs, extras and error codes.

Everything on the wire is the dialect's (`llmstreams.openai.wire`); DashScope adds its
`/compatible-mode/v1` path, Qwen's `enable_thinking` / `thinking_budget` and `enable_search`
(thinking on streams only), its error codes, and its request id header (protocol.md section
5.2). A workspace is chosen with the `X-DashScope-WorkSpace` header.
API reference: https://help.aliyun.com/zh/model-studio/compatibility-of-openai-with-dashscope
"""

from __future__ import annotations

from typing import Any, Final

from llmstreams.dashscope.client import API_KEY_ENV, BASE_URL_ENV, COMPATIBLE_MODE_PATH
from llmstreams.dashscope.wire import _ERROR_CLASS_FOR_CODE, PROVIDER
from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.validation import check_bool, check_int

API_PATH: Final = COMPATIBLE_MODE_PATH
INTERNATIONAL_BASE_URL: Final = "https://dashscope-intl.aliyuncs.com" + API_PATH


def _check_thinking_budget(field: str, value: Any) -> int:
    return check_int(field, value, low=1)


DIALECT: Final = Dialect(
    provider=PROVIDER,
    extras={
        "enable_thinking": check_bool,
        "thinking_budget": _check_thinking_budget,
        "enable_search": check_bool,
    },
    error_classes=_ERROR_CLASS_FOR_CODE,
    request_id_headers=("x-request-id", "x-dashscope-request-id"),
    # DashScope answers a non-stream call with thinking on with HTTP 400.
    stream_only=("enable_thinking",),
)

VENDOR: Final = Vendor(
    name="dashscope-compatible",
    title="Alibaba DashScope (OpenAI-compatible mode)",
    dialect=DIALECT,
    base_url="https://dashscope.aliyuncs.com" + API_PATH,
    api_path=API_PATH,
    api_key_env=API_KEY_ENV,
    base_url_env=BASE_URL_ENV,
    key_prefix="sk-",
    default_model="qwen-plus",
    docs="https://help.aliyun.com/zh/model-studio/compatibility-of-openai-with-dashscope",
)
