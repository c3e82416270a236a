"""The OpenAI-compatible routes of each vendor: the dialect (`openai.py`) plus their own bits.

- Qianfan v2 (`/v2/chat/completions`, `/v2/completions`): Bearer `bce-v3/...` keys, `as-` ids,
  `is_end` / `need_clear_history` / `flag` (and `ban_round` when refused) on every choice,
  cumulative usage on every chunk, error bodies with a top-level `id`.
- DashScope compatible mode (`/compatible-mode/v1/chat/completions`): `enable_thinking` turns
  reasoning on and is refused on a whole answer, the trigger phrase is refused with HTTP 400,
  error bodies with a top-level `request_id`.
- Generic (`/v1/chat/completions`, `/v1/completions`): any key or none, unless credentials
  name one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from llmstreams.mock.context import MockContext
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.openai import (
    Flavour,
    OpenAIError,
    OpenAIRoutes,
    ParsedRequest,
    bearer_key,
)
from llmstreams.mock.text import qianfan_id, request_uuid
from llmstreams.mock.vendor_errors import OPENAI_STYLE_CODES

QIANFAN_V2_PREFIX = "/v2"
DASHSCOPE_COMPATIBLE_PREFIX = "/compatible-mode/v1"
OPENAI_PREFIX = "/v1"
QIANFAN_V2_KEY_PREFIX = "bce-v3/"
_CHAT_ID_PREFIX = "chatcmpl-"


class QianfanV2(Flavour):
    route_prefix = "qianfan.v2"
    cumulative_usage = True

    def authenticate(self, request: web.Request, credentials: MockCredentials | None) -> None:
        key = bearer_key(request)
        expected = credentials.qianfan_v2_api_key if credentials else None
        if key is None or not key.startswith(QIANFAN_V2_KEY_PREFIX):
            raise OpenAIError("InvalidApiKey", "The API key must be a bce-v3/ key.")
        if expected is not None and key != expected:
            raise OpenAIError("InvalidApiKey")

    def response_id(self, digest: bytes) -> str:
        return qianfan_id(digest)

    def error_extras(self, response_id: str) -> dict[str, Any]:
        return {"id": response_id}

    def error_code_name(self, code: str) -> str:
        return "invalid_argument" if code == "InvalidParameter" else OPENAI_STYLE_CODES[code].code

    def choice_extras(self, *, last: bool | None, refused: bool) -> dict[str, Any]:
        extras: dict[str, Any] = {"flag": 0, "need_clear_history": refused}
        if last is not None:
            extras["is_end"] = last
        if refused:
            extras["ban_round"] = -1
        return extras


class DashScopeCompatible(Flavour):
    route_prefix = "dashscope.compatible"
    refuses_trigger = True

    def authenticate(self, request: web.Request, credentials: MockCredentials | None) -> None:
        key = bearer_key(request)
        expected = credentials.dashscope_api_key if credentials else None
        if key is None or expected not in (None, key):
            raise OpenAIError("InvalidApiKey", "Incorrect API key provided.")

    def response_id(self, digest: bytes) -> str:
        return _CHAT_ID_PREFIX + request_uuid(digest)

    def error_extras(self, response_id: str) -> dict[str, Any]:
        return {"request_id": response_id.removeprefix(_CHAT_ID_PREFIX)}

    def check(self, parsed: ParsedRequest, payload: dict[str, Any]) -> None:
        thinking = payload.get("enable_thinking")
        if thinking is not None and not isinstance(thinking, bool):
            raise OpenAIError("InvalidParameter", "parameter.enable_thinking must be a boolean.")
        if thinking and not parsed.stream:
            raise OpenAIError(
                "InvalidParameter",
                "parameter.enable_thinking must be set to false for non-streaming calls",
            )

    def thinking(self, parsed: ParsedRequest, payload: dict[str, Any]) -> bool:
        enabled = payload.get("enable_thinking")
        return enabled if isinstance(enabled, bool) else super().thinking(parsed, payload)


def add_routes(app: web.Application, context: MockContext) -> None:
    qianfan = OpenAIRoutes(context, QianfanV2())
    app.router.add_post(QIANFAN_V2_PREFIX + "/chat/completions", qianfan.chat)
    app.router.add_post(QIANFAN_V2_PREFIX + "/completions", qianfan.completions)
    dashscope = OpenAIRoutes(context, DashScopeCompatible())
    app.router.add_post(DASHSCOPE_COMPATIBLE_PREFIX + "/chat/completions", dashscope.chat)
    generic = OpenAIRoutes(context, Flavour())
    app.router.add_post(OPENAI_PREFIX + "/chat/completions", generic.chat)
    app.router.add_post(OPENAI_PREFIX + "/completions", generic.completions)
