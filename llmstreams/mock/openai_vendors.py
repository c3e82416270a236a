"""The OpenAI-compatible routes of each vendor: the dialect (`openai.py`) plus their own bits.

- Qianfan v2 (`/v2/chat/completions`, `/v2/completions`): Bearer `bce-v3/...` keys (the
  tokens the IAM endpoint issued too, refused once expired), `as-` ids,
  `is_end` / `need_clear_history` / `flag` (and `ban_round` when refused) on every choice,
  cumulative usage on every chunk, error bodies with a top-level `id`.
- DashScope compatible mode (`/compatible-mode/v1/chat/completions`): `enable_thinking` turns
  reasoning on and is refused on a whole answer, the trigger phrase is refused with HTTP 400,
  error bodies with a top-level `request_id`.
- Generic (`/v1/chat/completions`, `/v1/completions`): any key or none, unless credentials
  name one; any model, unless the `served_models` knob lists them (then vLLM's 404).
- DeepSeek, Moonshot, Zhipu, Volcano Engine Ark, SiliconFlow: their error bodies and where
  their usage arrives (see each class).

Each is served at the path the provider registry gives it (`Provider.mock_path`). A vendor's
key shape is its registry preset's `Vendor.key_prefix` (so the client and the mock agree): a
key without it, or no key, gets the vendor's own 401. Each vendor's flavour lists its documented
model ids (`models`) and answers another with the vendor's own error, unless `any_model`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

from aiohttp import web

from llmstreams.mock import dashscope
from llmstreams.mock.behaviour import Behaviour
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
from llmstreams.qianfan.models import V2_MODEL_IDS

_CHAT_ID_PREFIX = "chatcmpl-"


class Generic(Flavour):
    """A vLLM-like server: a model it does not serve gets vLLM's 404 body."""

    def unknown_model(self, model: str) -> OpenAIError:
        return OpenAIError("ModelNotFound", f"The model `{model}` does not exist.", status=404)

    def error_body(self, error: OpenAIError, response_id: str) -> Any:
        if error.code != "ModelNotFound":
            return super().error_body(error, response_id)
        return {
            "object": "error",
            "message": error.message,
            "type": "NotFoundError",
            "param": None,
            "code": error.status,
        }


class QianfanV2(Flavour):
    """Qianfan's v2 codes (https://cloud.baidu.com/doc/qianfan-api/s/Om9b4yj3w): a bad key is
    401 `invalid_iam_token`, a model that does not exist (or is not yours) 401 `invalid_model`."""

    cumulative_usage = True
    key_required = True
    # https://cloud.baidu.com/doc/qianfan/s/rmh4stp0j (v2 model ids), lower case.
    models = frozenset({
        *V2_MODEL_IDS.values(),
        "ernie-4.5-turbo-32k", "ernie-4.5-turbo-128k", "ernie-4.5-turbo-vl-32k",
        "ernie-4.5-8k-preview", "ernie-4.0-turbo-8k", "ernie-4.0-turbo-128k",
        "ernie-4.0-8k-latest", "ernie-3.5-128k", "ernie-speed-128k", "ernie-speed-pro-128k",
        "ernie-lite-pro-128k", "ernie-tiny-8k", "ernie-char-8k", "ernie-novel-8k",
        "ernie-x1-32k", "ernie-x1-32k-preview", "ernie-x1-turbo-32k",
        "deepseek-r1", "deepseek-v3", "deepseek-r1-distill-qwen-32b",
        "qwq-32b", "qwen3-235b-a22b", "qwen3-32b", "qwen3-8b",
    })

    def expected_key(self, credentials: MockCredentials | None) -> str | None:
        return credentials.qianfan_v2_api_key if credentials else None

    def malformed_key_message(self) -> str:
        return f"The API key must be a {self.key_prefix} key."

    def unknown_model(self, model: str) -> OpenAIError:
        return OpenAIError(
            "ModelNotFound", f"model {model} does not exist or you have no permission", status=401
        )

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
        return self._CODES.get(code) or OPENAI_STYLE_CODES[code].code

    _CODES: ClassVar[dict[str, str]] = {
        "InvalidParameter": "invalid_argument",
        "InvalidApiKey": "invalid_iam_token",
        "ModelNotFound": "invalid_model",
    }

    def choice_extras(self, *, last: bool | None, refused: bool) -> dict[str, Any]:
        extras: dict[str, Any] = {"flag": 0, "need_clear_history": refused}
        if last is not None:
            extras["is_end"] = last
        if refused:
            extras["ban_round"] = -1
        return extras


class DashScopeCompatible(Flavour):
    """Same keys and models as the native API (https://help.aliyun.com/zh/model-studio/
    compatibility-of-openai-with-dashscope; 401 body as the service sends it)."""

    refuses_trigger = True
    key_required = True
    models = dashscope.MODELS
    wrong_key_message = (
        "Incorrect API key provided. For details, see: "
        "https://help.aliyun.com/zh/model-studio/error-code#apikey-error"
    )

    def expected_key(self, credentials: MockCredentials | None) -> str | None:
        return credentials.dashscope_api_key if credentials else None

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
    """The dialect as DeepSeek speaks it (reasoning on its reasoner and thinking-mode models).

    Its 401 and its unknown model (HTTP 400 "Model Not Exist") both carry the code
    `invalid_request_error`, as the service answers them."""

    key_required = True
    # https://api-docs.deepseek.com/ and .../quick_start/pricing (the legacy ids still answer).
    models = frozenset({
        "deepseek-flash", "deepseek-v4-flash", "deepseek-v4-pro", "deepseek-chat",
        "deepseek-reasoner",
    })
    wrong_key_message = "Authentication Fails (no such user)"

    def malformed_key_message(self) -> str:
        return f"Authentication Fails (auth header format should be Bearer {self.key_prefix}...)"

    def unknown_model(self, model: str) -> OpenAIError:
        return OpenAIError("ModelNotFound", "Model Not Exist", status=400)

    def error_body(self, error: OpenAIError, response_id: str) -> Any:
        if error.code not in ("InvalidApiKey", "ModelNotFound"):
            return super().error_body(error, response_id)
        error_type = "authentication_error" if error.code == "InvalidApiKey" else None
        return {
            "error": {
                "message": error.message,
                "type": error_type or "invalid_request_error",
                "param": None,
                "code": "invalid_request_error",
            }
        }

    def thinking(self, parsed: ParsedRequest, payload: dict[str, Any]) -> bool:
        switch = payload.get("thinking")
        if isinstance(switch, dict):
            return switch.get("type") == "enabled"
        return super().thinking(parsed, payload)


class Moonshot(Flavour):
    """Errors carry a `type` only; a stream's usage, always sent, rides in the finishing choice."""

    always_usage = True
    usage_in_choice = True
    key_required = True
    # https://platform.kimi.ai/docs/api/models-overview, https://platform.kimi.com/docs/models
    models = frozenset({
        "kimi-k3", "kimi-k2.7-code", "kimi-k2.6", "kimi-k2.5", "kimi-k2-0905-preview",
        "kimi-k2-0711-preview", "kimi-k2-turbo-preview", "kimi-k2-thinking",
        "kimi-k2-thinking-turbo", "moonshot-v1-8k", "moonshot-v1-32k", "moonshot-v1-128k",
        "moonshot-v1-8k-vision-preview", "moonshot-v1-32k-vision-preview",
        "moonshot-v1-128k-vision-preview",
    })
    wrong_key_message = "Invalid Authentication"

    def unknown_model(self, model: str) -> OpenAIError:
        return OpenAIError("ModelNotFound", f"Not found the model {model} or Permission denied")

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
    key_required = True
    # The chat-completion reference's model enum (https://docs.bigmodel.cn/api-reference).
    models = frozenset({
        "glm-5.3", "glm-5.2", "glm-5.1", "glm-5-turbo", "glm-5", "glm-4.7", "glm-4.7-flash",
        "glm-4.7-flashx", "glm-4.6", "glm-4.5", "glm-4.5-air", "glm-4.5-airx", "glm-4.5-flash",
        "glm-4-plus", "glm-4-air-250414", "glm-4-flash-250414", "glm-4-flashx-250414",
    })
    # The vendor's own words, full-width punctuation included.
    wrong_key_message = "Authorization Token非法，请确认Authorization Token正确传递。"  # noqa: RUF001

    def key_shape_ok(self, key: str) -> bool:
        """Zhipu's keys are `{id}.{secret}`."""
        return "." in key.strip(".")

    def unknown_model(self, model: str) -> OpenAIError:
        return OpenAIError("ModelNotFound", "模型不存在，请检查模型代码。", status=400)  # noqa: RUF001

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
    """Errors name an Ark code and the HTTP reason as their type. Keys have no fixed shape (UUIDs,
    newer ones `ark-...`); `model` is a model id or an endpoint id (`ep-...`)."""

    key_required = True
    # https://www.volcengine.com/docs/82379/1330310 (model ids with their version dates).
    models = frozenset({
        "doubao-seed-2-0-pro-260215", "doubao-seed-2-0-lite-260215",
        "doubao-seed-2-0-mini-260215", "doubao-seed-2-0-code-preview-260215",
        "doubao-seed-1-8-251228", "doubao-seed-1-6-251015", "doubao-seed-1-6-250615",
        "doubao-seed-1-6-flash-250828", "doubao-seed-1-6-thinking-250615",
        "doubao-1-5-pro-32k-250115", "doubao-1-5-lite-32k-250115",
        "deepseek-v4-flash-ga-260731", "deepseek-v4-pro-ga-260813",
    })
    wrong_key_message = "The API key or AK/SK in the request is missing or invalid."
    _ENDPOINT_PREFIX = "ep-"

    def serves_model(self, model: str, behaviour: Behaviour) -> bool:
        return model.startswith(self._ENDPOINT_PREFIX) or super().serves_model(model, behaviour)

    def unknown_model(self, model: str) -> OpenAIError:
        return OpenAIError(
            "ModelNotFound",
            f"The model or endpoint {model} does not exist or you do not have access to it.",
        )

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
    key_required = True
    # https://docs.siliconflow.cn/docs/userguide/quickstart and its model list (org/Model ids;
    # `Pro/` the paid variants).
    models = frozenset({
        "Qwen/Qwen3-8B", "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-32B", "Qwen/Qwen3-235B-A22B",
        "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "Qwen/QwQ-32B",
        "deepseek-ai/DeepSeek-R1", "Pro/deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-V3",
        "deepseek-ai/DeepSeek-V3.2", "Pro/deepseek-ai/DeepSeek-V3.2",
        "deepseek-ai/DeepSeek-V4-Pro", "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
        "THUDM/glm-4-9b-chat", "zai-org/GLM-4.6", "moonshotai/Kimi-K2-Instruct-0905",
        "Pro/moonshotai/Kimi-K2.5",
    })

    def unknown_model(self, model: str) -> OpenAIError:
        return OpenAIError(
            "ModelNotFound", "Model does not exist. Please check it carefully.", status=400
        )

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

    key_required = True
    # https://cloud.tencent.com/document/api/1729/101837 (the model ids of the API).
    models = frozenset({
        "hunyuan-lite", "hunyuan-standard", "hunyuan-standard-256K", "hunyuan-code",
        "hunyuan-role", "hunyuan-functioncall", "hunyuan-vision", "hunyuan-turbo",
        "hunyuan-turbo-latest", "hunyuan-large", "hunyuan-turbos-latest",
        "hunyuan-turbos-20250226", "hunyuan-t1-latest", "hunyuan-t1-20250321",
    })

    def check(self, parsed: ParsedRequest, payload: dict[str, Any]) -> None:
        value = payload.get("enable_enhancement")
        if value is not None and not isinstance(value, bool):
            raise OpenAIError("InvalidParameter", "EnableEnhancement must be a boolean.")


def _reason(status: int) -> str:
    return HTTPStatus(status).phrase.replace(" ", "")


# Each OpenAI-compatible provider of the registry, by name, with what it serves besides chat.
FLAVOURS: dict[str, tuple[type[Flavour], bool]] = {
    "qianfan": (QianfanV2, True),
    "dashscope-compatible": (DashScopeCompatible, False),
    "openai": (Generic, True),
    "deepseek": (DeepSeek, False),
    "moonshot": (Moonshot, False),
    "zhipu": (Zhipu, False),
    "volcengine": (Volcengine, False),
    "siliconflow": (SiliconFlow, False),
    "hunyuan": (Hunyuan, False),
}


def add_routes(app: web.Application, context: MockContext) -> None:
    """Every OpenAI-compatible provider's routes, at the path the registry gives it, taking keys
    of the shape its preset gives."""
    for provider in PROVIDERS.values():
        if provider.vendor is None or provider.mock_route is None:
            continue
        flavour_class, serves_completions = FLAVOURS[provider.name]
        flavour = flavour_class(key_prefix=provider.vendor.key_prefix)
        routes = OpenAIRoutes(context, flavour, provider.mock_route)
        app.router.add_post(provider.mock_path + "/chat/completions", routes.chat)
        if serves_completions:
            app.router.add_post(provider.mock_path + "/completions", routes.completions)
