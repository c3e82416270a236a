"""The OpenAI-compatible routes of each vendor: the dialect (`openai.py`) plus their own bits.

- Qianfan v2 (`/v2/chat/completions`, `/v2/completions`): Bearer `bce-v3/...` keys (the
  tokens the IAM endpoint issued too, refused once expired), `as-` ids,
  `is_end` / `need_clear_history` / `flag` (and `ban_round` when refused) on every choice,
  cumulative usage on every chunk, error bodies with a top-level `id`.
- DashScope compatible mode (`/compatible-mode/v1/chat/completions`): `enable_thinking` turns
  reasoning on and is refused on a whole answer, the trigger phrase is refused with HTTP 400,
  error bodies with a top-level `request_id`.
- Generic (`/v1/chat/completions`, `/v1/completions`): any key or none, unless credentials
  name one.
- DeepSeek, Moonshot, Zhipu, Volcano Engine Ark, SiliconFlow: their error bodies and where
  their usage arrives (see each class).

Each is served at the path the provider registry gives it (`Provider.mock_path`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

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
from llmstreams.mock.qianfan_auth import TokenState, TokenStore
from llmstreams.mock.text import qianfan_id, request_uuid
from llmstreams.mock.vendor_errors import OPENAI_STYLE_CODES
from llmstreams.providers import PROVIDERS

QIANFAN_V2_KEY_PREFIX = "bce-v3/"
_CHAT_ID_PREFIX = "chatcmpl-"


class QianfanV2(Flavour):
    cumulative_usage = True

    def authenticate(self, request: web.Request, credentials: MockCredentials | None) -> None:
        key = bearer_key(request)
        expected = credentials.qianfan_v2_api_key if credentials else None
        if key is None or not key.startswith(QIANFAN_V2_KEY_PREFIX):
            raise OpenAIError("InvalidApiKey", "The API key must be a bce-v3/ key.")
        if expected is not None and key != expected:
            raise OpenAIError("InvalidApiKey")

    def accepts_issued_token(self, request: web.Request, tokens: TokenStore) -> bool:
        key = bearer_key(request)
        state = TokenState.UNKNOWN if key is None else tokens.bearer_state(key)
        if state is TokenState.EXPIRED:
            raise OpenAIError("InvalidApiKey", "The bearer token has expired.")
        return state is TokenState.VALID

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


class DeepSeek(Flavour):
    """The dialect as DeepSeek speaks it (reasoning on its reasoner and thinking-mode models)."""

    def thinking(self, parsed: ParsedRequest, payload: dict[str, Any]) -> bool:
        switch = payload.get("thinking")
        if isinstance(switch, dict):
            return switch.get("type") == "enabled"
        return super().thinking(parsed, payload)


class Moonshot(Flavour):
    """Errors carry a `type` only; a stream's usage, always sent, rides in the finishing choice."""

    always_usage = True
    usage_in_choice = True
    _TYPES: ClassVar[dict[str, str]] = {
        "InvalidApiKey": "invalid_authentication_error",
        "AccessDenied": "permission_denied_error",
        "ModelNotFound": "resource_not_found_error",
        "DataInspectionFailed": "content_filter",
        "Throttling": "rate_limit_reached_error",
        "Throttling.RateQuota": "rate_limit_reached_error",
        "Throttling.AllocationQuota": "exceeded_current_quota_error",
        "ModelUnavailable": "engine_overloaded_error",
    }

    def error_body(self, error: OpenAIError, response_id: str) -> Any:
        default = "server_error" if error.status >= 500 else "invalid_request_error"
        return {"error": {"type": self._TYPES.get(error.code, default), "message": error.message}}


class Zhipu(Flavour):
    """Errors are `{"error": {"code": "<business code>", "message"}}`; usage always sent."""

    always_usage = True
    _CODES: ClassVar[dict[str, Any]] = {
        "InvalidApiKey": "1002",
        "AccessDenied": "1220",
        "ModelNotFound": "1211",
        "DataInspectionFailed": "1301",
        "Throttling": "1302",
        "Throttling.RateQuota": "1302",
        "Throttling.AllocationQuota": "1113",
        "ModelUnavailable": "1305",
    }

    def error_body(self, error: OpenAIError, response_id: str) -> Any:
        default = "500" if error.status >= 500 else "1210"
        return {"error": {"code": self._CODES.get(error.code, default), "message": error.message}}

    def thinking(self, parsed: ParsedRequest, payload: dict[str, Any]) -> bool:
        switch = payload.get("thinking")
        if isinstance(switch, dict):
            return switch.get("type") == "enabled"
        return super().thinking(parsed, payload)


class Volcengine(Flavour):
    """Errors name an Ark code and the HTTP reason as their type."""

    _CODES: ClassVar[dict[str, Any]] = {
        "InvalidApiKey": "AuthenticationError",
        "AccessDenied": "AccessDenied",
        "ModelNotFound": "InvalidEndpointOrModel.NotFound",
        "DataInspectionFailed": "SensitiveContentDetected",
        "Throttling": "RateLimitExceeded.EndpointRPMExceeded",
        "Throttling.RateQuota": "RateLimitExceeded.EndpointRPMExceeded",
        "Throttling.AllocationQuota": "AccountOverdueError",
        "ModelUnavailable": "ServerOverloaded",
    }

    def error_body(self, error: OpenAIError, response_id: str) -> Any:
        default = "InternalServiceError" if error.status >= 500 else "InvalidParameter"
        return {
            "error": {
                "code": self._CODES.get(error.code, default),
                "message": f"{error.message} Request id: {response_id}",
                "param": "",
                "type": _reason(error.status),
            }
        }


class SiliconFlow(Flavour):
    """Flat error bodies with integer codes (a 401 is a bare JSON string); usage on every chunk."""

    cumulative_usage = True
    _CODES: ClassVar[dict[str, Any]] = {
        "ModelNotFound": 20012,
        "AccessDenied": 30011,
        "Throttling.AllocationQuota": 30011,
        "InvalidParameter": 20015,
    }

    def error_body(self, error: OpenAIError, response_id: str) -> Any:
        if error.code == "InvalidApiKey":
            return "Invalid token"
        code = self._CODES.get(error.code, 50000 if error.status >= 500 else 20015)
        return {"code": code, "message": error.message, "data": None}


class Hunyuan(Flavour):
    """Hunyuan's extras are booleans; its stop strings are kept in the answer."""

    def check(self, parsed: ParsedRequest, payload: dict[str, Any]) -> None:
        value = payload.get("enable_enhancement")
        if value is not None and not isinstance(value, bool):
            raise OpenAIError("InvalidParameter", "EnableEnhancement must be a boolean.")


def _reason(status: int) -> str:
    return HTTPStatus(status).phrase.replace(" ", "")


# Each OpenAI-compatible provider of the registry, by name, with what it serves besides chat.
FLAVOURS: dict[str, tuple[Flavour, bool]] = {
    "qianfan": (QianfanV2(), True),
    "dashscope-compatible": (DashScopeCompatible(), False),
    "openai": (Flavour(), True),
    "deepseek": (DeepSeek(), False),
    "moonshot": (Moonshot(), False),
    "zhipu": (Zhipu(), False),
    "volcengine": (Volcengine(), False),
    "siliconflow": (SiliconFlow(), False),
    "hunyuan": (Hunyuan(), False),
}


def add_routes(app: web.Application, context: MockContext) -> None:
    """Every OpenAI-compatible provider's routes, at the path the registry gives it."""
    for provider in PROVIDERS.values():
        if provider.vendor is None or provider.mock_route is None:
            continue
        flavour, serves_completions = FLAVOURS[provider.name]
        routes = OpenAIRoutes(context, flavour, provider.mock_route)
        app.router.add_post(provider.mock_path + "/chat/completions", routes.chat)
        if serves_completions:
            app.router.add_post(provider.mock_path + "/completions", routes.completions)
