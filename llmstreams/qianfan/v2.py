"""Qianfan API v2: the OpenAI-compatible dialect with Qianfan's URLs, limits and extras.

Everything on the wire is the dialect's (`llmstreams.openai.wire`); Qianfan adds its base URL,
the `/v2` prefix, the `appid` header, `penalty_score`, a system message only first, at most
four stop strings, and the chunks' `is_end` / `need_clear_history` / `ban_round` (protocol.md
section 5.1). Its errors are mapped by HTTP status and the dialect's codes.
"""

from __future__ import annotations

from typing import Any, Final

from llmstreams.openai.wire import Dialect
from llmstreams.qianfan.wire import PROVIDER
from llmstreams.validation import check_number

BASE_URL: Final = "https://qianfan.baidubce.com"
API_PREFIX: Final = "/v2"
APP_ID_HEADER: Final = "appid"


def _check_penalty_score(field: str, value: Any) -> float:
    return check_number(field, value, low=1, high=2)


DIALECT: Final = Dialect(
    provider=PROVIDER,
    max_stop=4,
    system_first_only=True,
    extras={"penalty_score": _check_penalty_score},
    id_is_request_id=True,
    choice_flags=True,
)
