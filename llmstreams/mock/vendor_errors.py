"""The two vendors' error codes, their messages and HTTP statuses, and how one maps to the other.

Qianfan codes are integers answered with HTTP 200; DashScope codes are strings, each with its own
HTTP status. A knob such as `fail_code` names one code for both vendors, so a code of one vendor
is translated to its nearest equivalent of the other where there is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import attrs

CodeT = TypeVar("CodeT")

QIANFAN_MESSAGES: dict[int, str] = {
    1: "Unknown error",
    2: "Service temporarily unavailable",
    3: "Unsupported openapi method",
    4: "Open api request limit reached",
    6: "No permission to access data",
    13: "Get service token failed",
    14: "IAM Certification failed",
    15: "app not exsits or create failed",
    17: "Open api daily request limit reached",
    18: "Open api qps request limit reached",
    19: "Open api total request limit reached",
    100: "Invalid parameter",
    110: "Access token invalid or no longer valid",
    111: "Access token expired",
    336000: "Internal error",
    336001: "Invalid Argument",
    336002: "Invalid JSON",
    336003: "Invalid Parameter",
    336004: "User authentication failed",
    336005: "API name not exist",
    336006: "the length of messages must be an odd number",
    336100: "try again later",
    336501: "Rate limit reached for RPM",
    336502: "Rate limit reached for TPM",
}


@attrs.frozen
class DashScopeCode:
    status: int
    message: str


DASHSCOPE_ERRORS: dict[str, DashScopeCode] = {
    "InvalidParameter": DashScopeCode(
        400, "Required parameter(s) missing or invalid, please check the request parameters."
    ),
    "DataInspectionFailed": DashScopeCode(400, "Input data may contain inappropriate content."),
    "BadRequest.EmptyInput": DashScopeCode(400, "Required input parameter missing from request."),
    "BadRequest.EmptyModel": DashScopeCode(400, 'Required parameter "model" missing from request.'),
    "InvalidApiKey": DashScopeCode(401, "Invalid API-key provided."),
    "AccessDenied": DashScopeCode(403, "Access denied."),
    "ModelNotFound": DashScopeCode(404, "Model not exist."),
    "RequestTimeOut": DashScopeCode(408, "Request timed out, please try again later."),
    "BadRequest.TooLarge": DashScopeCode(413, "Payload Too Large"),
    "Throttling": DashScopeCode(429, "Requests throttling triggered."),
    "Throttling.RateQuota": DashScopeCode(
        429, "Requests rate limit exceeded, please try again later."
    ),
    "Throttling.AllocationQuota": DashScopeCode(
        429, "Allocated quota exceeded, please increase your quota limit."
    ),
    "InternalError": DashScopeCode(
        500, "An internal error has occured, please try again later or contact service support."
    ),
    "SystemError": DashScopeCode(500, "An system error has occured, please try again later."),
    "ModelUnavailable": DashScopeCode(503, "Model is unavailable, please try again later."),
}


class DashScopeCodedError(Exception):
    """An error a route answers, named by a DashScope code: that code's message and HTTP status
    unless others are given. The DashScope and OpenAI-compatible routes each subclass it."""

    def __init__(self, code: str, message: str | None = None, *, status: int | None = None) -> None:
        super().__init__(code)
        known = DASHSCOPE_ERRORS[code]
        self.code = code
        self.message = message or known.message
        self.status = status or known.status


# Nearest equivalents, used when a knob names the other vendor's code.
_QIANFAN_FOR_DASHSCOPE: dict[str, int] = {
    "InvalidParameter": 336003,
    "InvalidApiKey": 110,
    "AccessDenied": 6,
    "ModelNotFound": 336005,
    "Throttling": 18,
    "Throttling.RateQuota": 336501,
    "Throttling.AllocationQuota": 336502,
    "InternalError": 336000,
    "SystemError": 336000,
    "ModelUnavailable": 336100,
}
_DASHSCOPE_FOR_QIANFAN: dict[int, str] = {
    2: "ModelUnavailable",
    4: "Throttling",
    6: "AccessDenied",
    17: "Throttling.AllocationQuota",
    18: "Throttling",
    100: "InvalidParameter",
    110: "InvalidApiKey",
    111: "InvalidApiKey",
    336000: "InternalError",
    336001: "InvalidParameter",
    336002: "InvalidParameter",
    336003: "InvalidParameter",
    336004: "AccessDenied",
    336005: "ModelNotFound",
    336100: "ModelUnavailable",
    336501: "Throttling.RateQuota",
    336502: "Throttling.AllocationQuota",
}

# The code an injected HTTP status carries when no `fail_code` names one.
_QIANFAN_FOR_STATUS: dict[int, int] = {
    400: 336003,
    401: 110,
    403: 6,
    404: 336005,
    429: 18,
    500: 336000,
    502: 2,
    503: 336100,
    504: 2,
}
_DASHSCOPE_FOR_STATUS: dict[int, str] = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    404: "ModelNotFound",
    408: "RequestTimeOut",
    413: "BadRequest.TooLarge",
    429: "Throttling",
    500: "InternalError",
    503: "ModelUnavailable",
}


class UnmappableCodeError(ValueError):
    """A knob names an error code the vendor answering the request has no equivalent for."""


def is_known_code(code: str) -> bool:
    return code in DASHSCOPE_ERRORS or (code.isdigit() and int(code) in QIANFAN_MESSAGES)


def qianfan_code(code: str) -> int:
    """The Qianfan error_code for a knob's code (a Qianfan number or a DashScope code)."""
    if code.isdigit() and int(code) in QIANFAN_MESSAGES:
        return int(code)
    if code in _QIANFAN_FOR_DASHSCOPE:
        return _QIANFAN_FOR_DASHSCOPE[code]
    raise UnmappableCodeError(f"error code {code!r} has no Qianfan equivalent")


def dashscope_code(code: str) -> str:
    """The DashScope code for a knob's code (a DashScope code or a Qianfan number)."""
    if code in DASHSCOPE_ERRORS:
        return code
    if code.isdigit() and int(code) in _DASHSCOPE_FOR_QIANFAN:
        return _DASHSCOPE_FOR_QIANFAN[int(code)]
    raise UnmappableCodeError(f"error code {code!r} has no DashScope equivalent")


def qianfan_code_for_status(status: int) -> int:
    return _QIANFAN_FOR_STATUS.get(status, 336000 if status >= 500 else 100)


def dashscope_code_for_status(status: int) -> str:
    return _DASHSCOPE_FOR_STATUS.get(
        status, "InternalError" if status >= 500 else "InvalidParameter"
    )


@attrs.frozen
class OpenAIStyleCode:
    """How an OpenAI-compatible server names a DashScope code: `error.type` and `error.code`."""

    type: str
    code: str


# The OpenAI-compatible routes answer in the dialect's own words; knobs still name the codes
# above, so each DashScope code has its OpenAI-style `type` and `code` (status and message are
# the DashScope code's).
OPENAI_STYLE_CODES: dict[str, OpenAIStyleCode] = {
    "InvalidParameter": OpenAIStyleCode("invalid_request_error", "invalid_parameter"),
    "DataInspectionFailed": OpenAIStyleCode("invalid_request_error", "data_inspection_failed"),
    "BadRequest.EmptyInput": OpenAIStyleCode("invalid_request_error", "invalid_parameter"),
    "BadRequest.EmptyModel": OpenAIStyleCode("invalid_request_error", "invalid_parameter"),
    "InvalidApiKey": OpenAIStyleCode("invalid_request_error", "invalid_api_key"),
    "AccessDenied": OpenAIStyleCode("invalid_request_error", "access_denied"),
    "ModelNotFound": OpenAIStyleCode("invalid_request_error", "model_not_found"),
    "RequestTimeOut": OpenAIStyleCode("server_error", "request_timeout"),
    "BadRequest.TooLarge": OpenAIStyleCode("invalid_request_error", "request_too_large"),
    "Throttling": OpenAIStyleCode("rate_limit_error", "rate_limit_exceeded"),
    "Throttling.RateQuota": OpenAIStyleCode("rate_limit_error", "rate_limit_exceeded"),
    "Throttling.AllocationQuota": OpenAIStyleCode("insufficient_quota", "insufficient_quota"),
    "InternalError": OpenAIStyleCode("server_error", "internal_error"),
    "SystemError": OpenAIStyleCode("server_error", "internal_error"),
    "ModelUnavailable": OpenAIStyleCode("server_error", "service_unavailable"),
}


@attrs.frozen
class CodeScheme(Generic[CodeT]):
    """How one vendor's routes name the error codes the knobs ask for."""

    of: Callable[[str], CodeT]
    """The vendor's code for a knob's code (raises UnmappableCodeError where it has none)."""
    for_status: Callable[[int], CodeT]
    """The vendor's code for the HTTP status the `http_status` knob names."""

    def injected(self, fail_code: str | None, http_status: int | None) -> CodeT | None:
        """The code the `fail_code` / `http_status` knobs inject, or None for neither."""
        if fail_code is not None:
            return self.of(fail_code)
        if http_status is not None:
            return self.for_status(http_status)
        return None


QIANFAN_CODES: Final = CodeScheme(qianfan_code, qianfan_code_for_status)
DASHSCOPE_CODES: Final = CodeScheme(dashscope_code, dashscope_code_for_status)
"""The codes of the DashScope route, and of the OpenAI-compatible routes (whose bodies name each
code their own way)."""


def json_object(body: bytes, refuse: Callable[[str, str], Exception]) -> dict[str, Any]:
    """The request body as a JSON object; else `refuse(code, message)` is raised."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise refuse("InvalidParameter", "Request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise refuse("InvalidParameter", "Request body must be a JSON object.")
    return payload
