"""DeepSeek: https://api-docs.deepseek.com/ (API reference), .../quick_start/error_codes,
.../guides/thinking_mode.

Reasoning arrives as `delta.reasoning_content` in thinking mode (`thinking={"type": ...}`,
`reasoning_effort`); usage rides on the last chunk when asked for; SSE keep-alive comments come
while a request waits. 402 (insufficient balance) is an account problem, not retried.
"""

from __future__ import annotations

from typing import Final

from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.vendors.checks import one_of, thinking_switch

VENDOR: Final = Vendor(
    name="deepseek",
    title="DeepSeek",
    dialect=Dialect(
        provider="deepseek",
        max_stop=16,
        extras={
            "thinking": thinking_switch("enabled", "disabled"),
            "reasoning_effort": one_of(("none", "low", "high", "max")),
        },
    ),
    base_url="https://api.deepseek.com",
    api_key_env="DEEPSEEK_API_KEY",
    key_prefix="sk-",
    default_model="deepseek-v4-flash",
    docs="https://api-docs.deepseek.com/",
)
