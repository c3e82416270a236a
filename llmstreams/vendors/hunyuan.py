"""Tencent Hunyuan, OpenAI-compatible endpoint: https://cloud.tencent.com/document/product/1729/111007
(base URL, HUNYUAN_API_KEY, parameters), https://cloud.tencent.com/document/product/1729/97730
(keys start `sk-`).

Hunyuan's own extras (`enable_enhancement`: search enhancement, off by default since
2025-04-20; `citation`, `enable_recommended_questions`, `force_search_enhancement`,
`search_info`) are keyword arguments. Usage comes with the last chunk when asked for. Its stop
strings are kept in the answer (the reverse of the dialect's rule). Its error codes on this
endpoint are not documented: errors are mapped by HTTP status.
"""

from __future__ import annotations

from typing import Final

from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
from llmstreams.validation import check_bool

VENDOR: Final = Vendor(
    name="hunyuan",
    title="Tencent Hunyuan",
    dialect=Dialect(
        provider="hunyuan",
        extras={
            name: check_bool
            for name in (
                "enable_enhancement", "citation", "enable_recommended_questions",
                "force_search_enhancement", "search_info",
            )
        },
    ),
    base_url="https://api.hunyuan.cloud.tencent.com/v1",
    api_path="/v1",
    api_key_env="HUNYUAN_API_KEY",
    key_prefix="sk-",
    default_model="hunyuan-turbos-latest",
    docs="https://cloud.tencent.com/document/product/1729/111007",
)
