"""DashScope's OpenAI-compatible mode: the dialect with DashScope's URLs, extras and error codes.

Everything on the wire is the dialect's (`llmstreams.openai.wire`); DashScope adds its
`/compatible-mode/v1` prefix, Qwen's `enable_thinking` / `thinking_budget` and `enable_search`,
its error codes, and its request id header (protocol.md section 5.2).
"""

from __future__ import annotations

from typing import Any, Final

from llmstreams.dashscope.wire import _ERROR_CLASS_FOR_CODE, PROVIDER
from llmstreams.errors import InvalidParameterError
from llmstreams.openai.wire import Dialect
from llmstreams.validation import check_bool, check_int

API_PREFIX: Final = "/compatible-mode/v1"
INTERNATIONAL_BASE_URL: Final = "https://dashscope-intl.aliyuncs.com"
# DashScope answers a non-stream call with thinking on with HTTP 400.
_STREAM_ONLY: Final = ("enable_thinking",)


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
)


def check_whole_call(params: dict[str, Any]) -> None:
    """Refuse, before sending, what DashScope refuses on a non-stream call."""
    for name in _STREAM_ONLY:
        if params.get(name):
            raise InvalidParameterError(
                name, "DashScope takes it on streams only: call stream_chat() (and .collect())"
            )
