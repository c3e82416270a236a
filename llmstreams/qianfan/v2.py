"""Qianfan API v2: the OpenAI-compatible dialect with Qianfan's URLs, limits and extras.

Everything on the wire is the dialect's (`llmstreams.openai.wire`); Qianfan adds its base URL,
the `/v2` path, `penalty_score`, a system message only first, at most four stop strings, and
the chunks' `is_end` / `need_clear_history` / `ban_round` (protocol.md section 5.1). An app is
chosen with the `appid` header (`extra_headers={"appid": ...}`). Keys are the console's
`bce-v3/ALTAK-...` API keys; v1's credentials belong to `QianfanClient`.
API reference: https://cloud.baidu.com/doc/qianfan-api/s/3m7of64lb
"""

from __future__ import annotations

from typing import Any, Final

from llmstreams.errors import AuthenticationError, NotFoundError
from llmstreams.openai.vendor import Vendor
from llmstreams.openai.wire import Dialect
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
    error_classes={"invalid_model": NotFoundError, "invalid_iam_token": AuthenticationError},
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
