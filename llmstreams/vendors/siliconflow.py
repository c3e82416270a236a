"""SiliconFlow: https://docs.siliconflow.cn/docs/userguide/quickstart (base URL),
https://docs.siliconflow.com/en/api-reference/chat-completions/chat-completions (parameters),
https://docs.siliconflow.cn/en/faqs/error-code (errors).

Model ids are `org/Model` paths (`Qwen/Qwen2.5-7B-Instruct`; `Pro/...` for paid variants).
Error bodies are flat, `{"code": 20012, "message": ..., "data": null}` (a 401 is a bare JSON
string). Every chunk of a stream carries the usage so far; reasoning comes as
`delta.reasoning_content` (`enable_thinking`, `thinking_budget`).
"""

from __future__ import annotations

from typing import Any, Final

from llmstreams.errors import NotFoundError, RateLimitError
from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.validation import check_bool, check_int, check_number

MODEL_DOES_NOT_EXIST: Final = "20012"
PAID_BALANCE_INSUFFICIENT: Final = "30011"


def _check_thinking_budget(field: str, value: Any) -> int:
    return check_int(field, value, low=128, high=32768)


def _check_min_p(field: str, value: Any) -> float:
    return check_number(field, value, low=0, high=1)


def _check_top_k(field: str, value: Any) -> int:
    return check_int(field, value, low=1)


VENDOR: Final = Vendor(
    name="siliconflow",
    title="SiliconFlow",
    dialect=Dialect(
        provider="siliconflow",
        max_stop=4,
        extras={
            "enable_thinking": check_bool,
            "thinking_budget": _check_thinking_budget,
            "min_p": _check_min_p,
            "top_k": _check_top_k,
        },
        error_classes={
            MODEL_DOES_NOT_EXIST: NotFoundError,
            PAID_BALANCE_INSUFFICIENT: RateLimitError,
        },
        quota_codes=frozenset({PAID_BALANCE_INSUFFICIENT}),
    ),
    base_url="https://api.siliconflow.cn/v1",
    api_path="/v1",
    api_key_env="SILICONFLOW_API_KEY",
    key_prefix="sk-",
    default_model="Qwen/Qwen2.5-7B-Instruct",
    docs="https://docs.siliconflow.cn/docs/userguide/quickstart",
)
