"""Baidu Qianfan routes: the OAuth token endpoint, wenxinworkshop chat / completions, and the
IAM `BCE-BEARER` token endpoint whose tokens API v2 takes.

Qianfan answers errors as `{"error_code", "error_msg", "id"}` with HTTP 200 and
`application/json`, even to a stream request; a stream is `data: {json}` lines, each followed by
a blank line, the last with `"is_end": true`, and no `[DONE]`.
"""

from __future__ import annotations

import enum
import functools
import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
from aiohttp import web

from llmstreams.mock import delivery
from llmstreams.mock.answer import Answer, compose_answer
from llmstreams.mock.bce_signature import parse_authorization
from llmstreams.mock.behaviour import Behaviour
from llmstreams.mock.context import MockContext
from llmstreams.mock.qianfan_auth import TokenState, bce_signature_accepted, is_bce_authorization
from llmstreams.mock.templates import SLOTS, EventTemplate, json_string
from llmstreams.mock.text import count_tokens, qianfan_id
from llmstreams.mock.vendor_errors import QIANFAN_CODES, QIANFAN_MESSAGES

TOKEN_PATH = "/oauth/2.0/token"
IAM_TOKEN_PATH = "/v1/BCE-BEARER/token"
# IAM gives no token a longer life than 30 days.
IAM_MAX_LIFETIME = 2_592_000
API_PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop"
CHAT_OBJECT = "chat.completion"
_TOKEN_SCOPE = "public brain_all_scope ai_custom_yiyan_com ai_custom_qianfan_bloomz_7b1"

# (minimum, maximum, minimum excluded) of each numeric sampling parameter.
_PARAMETER_RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 1.0, True),
    "top_p": (0.0, 1.0, False),
    "penalty_score": (1.0, 2.0, False),
}
_MAX_STOP_WORDS = 4
_MAX_STOP_WORD_CHARS = 20


class QianfanError(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or QIANFAN_MESSAGES[code]


def add_routes(app: web.Application, context: MockContext) -> None:
    routes = _QianfanRoutes(context)
    app.router.add_route("POST", TOKEN_PATH, routes.token)
    app.router.add_route("GET", TOKEN_PATH, routes.token)
    app.router.add_get(IAM_TOKEN_PATH, routes.iam_token)
    app.router.add_post(API_PREFIX + "/chat/{endpoint}", routes.chat)
    app.router.add_post(API_PREFIX + "/completions/{endpoint}", routes.completions)


class _QianfanRoutes:
    def __init__(self, context: MockContext) -> None:
        self._context = context

    async def token(self, request: web.Request) -> web.Response:
        self._context.stats.request("token")
        params = dict(request.query)
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            params.update({name: str(value) for name, value in (await request.post()).items()})
        credentials = self._context.credentials
        if params.get("grant_type") != "client_credentials":
            return _oauth_error(
                400, "unsupported_grant_type", "The authorization grant type is not supported"
            )
        client_id = params.get("client_id", "")
        if not client_id or (credentials and credentials.api_key not in (None, client_id)):
            return _oauth_error(401, "invalid_client", "unknown client id")
        client_secret = params.get("client_secret", "")
        if not client_secret or (
            credentials and credentials.secret_key not in (None, client_secret)
        ):
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        issued = self._context.tokens.issue()
        self._context.stats.token_issued()
        return web.json_response(
            {
                "refresh_token": issued.refresh_token,
                "expires_in": issued.expires_in,
                "session_key": issued.session_key,
                "access_token": issued.access_token,
                "scope": _TOKEN_SCOPE,
                "session_secret": issued.session_secret,
            }
        )

    async def iam_token(self, request: web.Request) -> web.Response:
        """A bearer token for the IAM key pair that signed the request (any signed request when
        no secret access key is configured), living `expireInSeconds` (at most 30 days)."""
        self._context.stats.request("iam.token")
        credentials = self._context.credentials
        parts = parse_authorization(request.headers.get("Authorization", ""))
        if parts is None:
            return _iam_error(400, "InvalidHTTPAuthHeader", "The HTTP authorization header is invalid.")
        if credentials is not None and credentials.access_key not in (None, parts.access_key):
            return _iam_error(
                403, "InvalidAccessKeyId",
                "The Access Key ID you provided does not exist in our records.",
            )
        if not bce_signature_accepted(request, credentials):
            return _iam_error(
                400, "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        asked = request.query.get("expireInSeconds")
        if asked is not None and not (asked.isascii() and asked.isdigit() and int(asked) > 0):
            return _iam_error(400, "InvalidHTTPRequest", "expireInSeconds must be a positive integer.")
        lifetime = min(int(asked) if asked is not None else self._context.tokens.ttl, IAM_MAX_LIFETIME)
        issued = self._context.tokens.issue_bearer(lifetime)
        self._context.stats.token_issued()
        return web.json_response(
            {
                "userId": secrets.token_hex(16),
                "token": issued.token,
                "status": "enable",
                "createTime": _iam_time(issued.created),
                "expireTime": _iam_time(issued.expires),
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, _Kind.CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, _Kind.COMPLETIONS)

    async def _generate(self, request: web.Request, kind: _Kind) -> web.StreamResponse:
        received = await self._context.receive(
            request, kind.value, QIANFAN_CODES, stream_only_fields=("stream",)
        )
        behaviour = received.behaviour
        response_id = qianfan_id(received.digest)
        try:
            self._authenticate(request)
            payload = _parse_body(received.body)
            inputs = kind.inputs(payload)
            _check_parameters(payload)
        except QianfanError as error:
            return await _send_error(request, behaviour, error, response_id)
        if received.injected_code is not None and self._context.failure_due(received.digest, behaviour):
            return await _send_error(
                request,
                behaviour,
                QianfanError(received.injected_code),
                response_id,
                status=behaviour.http_status or 200,
                headers=delivery.retry_after_headers(behaviour),
            )
        stream = payload.get("stream") is True
        if stream and behaviour.non_sse_body:
            return await delivery.send_body(
                request, behaviour, status=200, content_type="text/html", body=delivery.NON_SSE_PAGE
            )
        refused_round = self._refused_round(kind, inputs)
        prompt_text = "\n".join(inputs)
        if refused_round is not None:
            answer = Answer.empty(prompt_tokens=count_tokens(prompt_text))
        else:
            answer = compose_answer(
                received.digest,
                behaviour,
                prompt_text=prompt_text,
                max_tokens=_max_output_tokens(payload),
            )
        reply = _Reply(
            response_id=response_id,
            created=int(time.time()),
            answer=answer,
            completions=kind is _Kind.COMPLETIONS,
            ban_round=refused_round,
            mid_stream_code=received.mid_stream_code,
        )
        return await delivery.send_answer(request, self._context, behaviour, reply, stream=stream)

    def _authenticate(self, request: web.Request) -> None:
        access_token = request.query.get("access_token")
        if access_token is not None:
            state = self._context.tokens.state(access_token)
            if state is TokenState.EXPIRED:
                raise QianfanError(111)
            if state is TokenState.UNKNOWN:
                raise QianfanError(110)
            return
        if is_bce_authorization(request):
            if not bce_signature_accepted(request, self._context.credentials):
                raise QianfanError(14)
            return
        raise QianfanError(110)

    def _refused_round(self, kind: _Kind, inputs: list[str]) -> int | None:
        """The `ban_round` of an input holding the trigger phrase (-1: the current one)."""
        if self._context.contains_trigger(inputs[-1]):
            return -1
        if kind is _Kind.CHAT:
            user_turns = inputs[0::2]
            for round_number, content in enumerate(user_turns, start=1):
                if self._context.contains_trigger(content):
                    return round_number
        return None


class _Kind(enum.Enum):
    """Chat (a `messages` list) or completions (a `prompt` string)."""

    CHAT = "qianfan.chat"
    COMPLETIONS = "qianfan.completions"

    def inputs(self, payload: dict[str, Any]) -> list[str]:
        """The texts the model reads: every message's content, or the prompt alone."""
        if self is _Kind.COMPLETIONS:
            prompt = payload.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise QianfanError(336003, "prompt can't be empty")
            return [prompt]
        return _message_contents(payload.get("messages"))


def _message_contents(messages: object) -> list[str]:
    if not isinstance(messages, list) or not messages:
        raise QianfanError(336003, "messages can't be empty")
    contents: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise QianfanError(336003, f"message {index} must be an object")
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise QianfanError(336003, f"message {index} has no content")
        expected = ("user", "function") if index % 2 == 0 else ("assistant",)
        if role not in expected:
            raise QianfanError(
                336006,
                "the role of message with even index in the messages must be user or function"
                if index % 2 == 0
                else "the role of message with odd index in the messages must be assistant",
            )
        contents.append(content)
    if len(messages) % 2 == 0:
        raise QianfanError(336006)
    return contents


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise QianfanError(336002) from None
    if not isinstance(payload, dict):
        raise QianfanError(336002)
    return payload


def _check_parameters(payload: dict[str, Any]) -> None:
    for name, (low, high, low_excluded) in _PARAMETER_RANGES.items():
        value = payload.get(name)
        if value is None:
            continue
        in_range = isinstance(value, int | float) and not isinstance(value, bool)
        if in_range and (value < low or value > high or (low_excluded and value == low)):
            in_range = False
        if not in_range:
            opening = "(" if low_excluded else "["
            raise QianfanError(336003, f"{name} range is {opening}{low}, {high}]")
    top_k = payload.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise QianfanError(336003, "top_k must be a positive integer")
    stop = payload.get("stop")
    if stop is not None and (
        not isinstance(stop, list)
        or len(stop) > _MAX_STOP_WORDS
        or not all(isinstance(word, str) and len(word) <= _MAX_STOP_WORD_CHARS for word in stop)
    ):
        raise QianfanError(
            336003,
            f"stop must be at most {_MAX_STOP_WORDS} strings of at most "
            f"{_MAX_STOP_WORD_CHARS} characters",
        )
    max_tokens = payload.get("max_output_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise QianfanError(336003, "max_output_tokens must be a positive integer")


def _max_output_tokens(payload: dict[str, Any]) -> int | None:
    value = payload.get("max_output_tokens")
    return value if isinstance(value, int) else None


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


def _iam_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"requestId": str(uuid.uuid4()), "code": code, "message": message}, status=status
    )


def _iam_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _error_payload(error: QianfanError, response_id: str) -> dict[str, Any]:
    return {"error_code": error.code, "error_msg": error.message, "id": response_id}


async def _send_error(
    request: web.Request,
    behaviour: Behaviour,
    error: QianfanError,
    response_id: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    return await delivery.send_json(
        request, behaviour, status=status, payload=_error_payload(error, response_id),
        headers=headers,
    )


@attrs.frozen
class _Reply(delivery.EventPerChunk):
    """One answer rendered the Qianfan way, whole or as stream events."""

    response_id: str
    created: int
    completions: bool
    ban_round: int | None
    mid_stream_code: int | None

    def _common(self) -> dict[str, Any]:
        return {"id": self.response_id, "object": CHAT_OBJECT, "created": self.created}

    def _safety(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"need_clear_history": self.ban_round is not None}
        if self.ban_round is not None:
            fields["ban_round"] = self.ban_round
        if self.completions:
            fields["is_safe"] = 0 if self.ban_round is not None else 1
        return fields

    def _finish_reason(self) -> str:
        if self.ban_round is not None:
            return "content_filter"
        return "length" if self.answer.truncated else "normal"

    def _usage(self, index: int) -> dict[str, int]:
        prompt_tokens = self.answer.prompt_tokens
        completion_tokens = self.answer.completion_tokens[index]
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def whole(self) -> dict[str, Any]:
        return {
            **self._common(),
            "result": self.answer.text,
            "is_truncated": self.answer.truncated,
            **self._safety(),
            "finish_reason": self._finish_reason(),
            "usage": self._usage(self.chunk_count - 1),
        }

    def _event_payload(self, index: int) -> dict[str, Any]:
        is_end = index == self.chunk_count - 1
        payload = {
            **self._common(),
            "sentence_id": index,
            "is_end": is_end,
            "is_truncated": is_end and self.answer.truncated,
            "result": self.answer.chunks[index],
            **self._safety(),
        }
        if is_end:
            payload["finish_reason"] = self._finish_reason()
        payload["usage"] = self._usage(index)
        return payload

    def _data_line(self, index: int) -> bytes:
        return b"data: " + delivery.compact_json(self._event_payload(index))

    @functools.cached_property
    def _template(self) -> EventTemplate:
        """The event of every chunk but the last, open for its sentence id, text and usage."""
        payload = self._event_payload(0)
        payload.update(sentence_id=SLOTS[0], result=SLOTS[1], usage=SLOTS[2])
        return EventTemplate(payload, prefix=b"data: ", suffix=b"\n\n")

    def chunk(self, index: int, event_number: int) -> bytes:
        if index == self.chunk_count - 1:
            return self._data_line(index) + b"\n\n"
        prompt_tokens = self.answer.prompt_tokens
        completion_tokens = self.answer.completion_tokens[index]
        usage = b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
            prompt_tokens,
            completion_tokens,
            prompt_tokens + completion_tokens,
        )
        return self._template.fill(b"%d" % index, json_string(self.answer.chunks[index]), usage)

    def malformed(self, event_number: int) -> bytes:
        return (
            b'data: {"id":"'
            + self.response_id.encode()
            + b'","object":"chat.completion","result":"\n\n'
        )

    def error(self, event_number: int) -> bytes:
        assert self.mid_stream_code is not None, "error events are only sent under error_after"
        error = QianfanError(self.mid_stream_code)
        return b"data: " + delivery.compact_json(_error_payload(error, self.response_id)) + b"\n\n"
