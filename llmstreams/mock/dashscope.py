"""Alibaba DashScope route: text generation, whole or as server-sent events.

Errors before a stream get their real HTTP status and `{"code", "message", "request_id"}`. A
stream (asked for with `X-DashScope-SSE: enable`, never in the body) is frames of exactly
`id:N`, `event:result`, `:HTTP_STATUS/200`, `data:{json}` and a blank line; an error mid-stream
is one `event:error` frame carrying the error's status, after which the stream ends.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
from aiohttp import web

from llmstreams.dashscope import compatible
from llmstreams.mock import delivery
from llmstreams.mock.answer import compose_answer
from llmstreams.mock.behaviour import Behaviour
from llmstreams.mock.context import MockContext
from llmstreams.mock.templates import ENCODED_SLOTS, SLOTS, EventTemplate, json_string
from llmstreams.mock.text import request_uuid
from llmstreams.mock.vendor_errors import (
    DASHSCOPE_CODES,
    DashScopeCodedError,
    json_object,
)

GENERATION_PATH = "/api/v1/services/aigc/text-generation/generation"
# The native API and compatible mode take the same keys: the client's preset says their shape.
KEY_PREFIX: str = compatible.VENDOR.key_prefix or ""
SSE_HEADER = "X-DashScope-SSE"
# Options that shape only how a stream is sent; the answer itself must not depend on them.
STREAM_ONLY_FIELDS = ("parameters.incremental_output",)
_MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
_RESULT_FORMATS = frozenset({"text", "message"})
_INPUT_REQUIRED = 'Either "prompt" or "messages" must exist and cannot both be none'
# How DashScope refuses a model it does not serve (natively: HTTP 400, code InvalidParameter).
_UNKNOWN_MODEL = "Model not exist."

# The text-generation models DashScope serves, native and in compatible mode (ids are
# case-sensitive): https://help.aliyun.com/zh/model-studio/models (Qwen, QwQ, the DeepSeek
# models it hosts) and the seeds' billa-7b-sft-v1.
MODELS: frozenset[str] = frozenset({
    "qwen-turbo", "qwen-turbo-latest", "qwen-plus", "qwen-plus-latest", "qwen-max",
    "qwen-max-latest", "qwen-long", "qwen-long-latest", "qwen-flash",
    "qwen3-max", "qwen3-max-preview", "qwen3-235b-a22b", "qwen3-235b-a22b-instruct-2507",
    "qwen3-235b-a22b-thinking-2507", "qwen3-30b-a3b", "qwen3-32b", "qwen3-14b", "qwen3-8b",
    "qwen3-4b", "qwen3-1.7b", "qwen3-0.6b", "qwen3-coder-plus", "qwen3-coder-flash",
    "qwq-plus", "qwq-plus-latest", "qwq-32b", "qwen-coder-plus", "qwen-math-plus",
    "qwen2.5-72b-instruct", "qwen2.5-32b-instruct", "qwen2.5-14b-instruct",
    "qwen2.5-7b-instruct", "qwen2.5-3b-instruct", "qwen2.5-1.5b-instruct",
    "qwen2.5-0.5b-instruct", "qwen2-72b-instruct", "qwen2-7b-instruct",
    "qwen-7b-chat", "qwen-14b-chat", "qwen-72b-chat",
    "deepseek-r1", "deepseek-v3", "deepseek-v3.1", "deepseek-v3.2",
    "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-qwen-32b",
    "billa-7b-sft-v1",
})


class DashScopeError(DashScopeCodedError):
    """An error answered in DashScope's own form (`{"code", "message", "request_id"}`)."""


def add_routes(app: web.Application, context: MockContext) -> None:
    app.router.add_post(GENERATION_PATH, _GenerationRoute(context).generation)


class _GenerationRoute:
    def __init__(self, context: MockContext) -> None:
        self._context = context

    async def generation(self, request: web.Request) -> web.StreamResponse:
        received = await self._context.receive(
            request, "dashscope.generation", DASHSCOPE_CODES, stream_only_fields=STREAM_ONLY_FIELDS
        )
        behaviour = received.behaviour
        request_id = request_uuid(received.digest)
        try:
            self._authenticate(request)
            payload = _parse_body(received.body)
            if not (behaviour.any_model or payload["model"] in MODELS):
                raise DashScopeError("InvalidParameter", _UNKNOWN_MODEL)
            inputs = _input_texts(payload)
            parameters = _parameters(payload)
            if any(self._context.contains_trigger(text) for text in inputs):
                raise DashScopeError(
                    "DataInspectionFailed", "Input data may contain inappropriate content."
                )
        except DashScopeError as error:
            return await _send_error(request, behaviour, error, request_id)
        if received.injected_code is not None and self._context.failure_due(received.digest, behaviour):
            injected = DashScopeError(received.injected_code, status=behaviour.http_status)
            return await _send_error(
                request, behaviour, injected, request_id, headers=delivery.retry_after_headers(behaviour)
            )
        stream = request.headers.get(SSE_HEADER, "").strip().lower() == "enable"
        if stream and behaviour.non_sse_body:
            return await delivery.send_body(
                request, behaviour, status=200, content_type="text/html", body=delivery.NON_SSE_PAGE
            )
        max_tokens = parameters.get("max_tokens")
        answer = compose_answer(
            received.digest,
            behaviour,
            prompt_text="\n".join(inputs),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        )
        reply = _Reply(
            request_id=request_id,
            answer=answer,
            message_format=parameters.get("result_format") == "message",
            incremental=parameters.get("incremental_output") is True,
            mid_stream_code=received.mid_stream_code,
        )
        return await delivery.send_answer(request, self._context, behaviour, reply, stream=stream)

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, api_key = request.headers.get("Authorization", "").partition(" ")
        api_key = api_key.strip()
        credentials = self._context.credentials
        expected = credentials.dashscope_api_key if credentials else None
        if (
            scheme.lower() != "bearer"
            or not api_key.startswith(KEY_PREFIX)
            or expected not in (None, api_key)
        ):
            raise DashScopeError("InvalidApiKey")


def _parse_body(body: bytes) -> dict[str, Any]:
    payload = json_object(body, DashScopeError)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise DashScopeError("BadRequest.EmptyModel")
    return payload


def _input_texts(payload: dict[str, Any]) -> list[str]:
    """The texts the model reads: the prompt, or every message's content."""
    model_input = payload.get("input")
    if not isinstance(model_input, dict):
        raise DashScopeError("InvalidParameter", _INPUT_REQUIRED)
    prompt, messages = model_input.get("prompt"), model_input.get("messages")
    if prompt is None and messages is None:
        raise DashScopeError("InvalidParameter", _INPUT_REQUIRED)
    texts: list[str] = []
    if prompt is not None:
        if not isinstance(prompt, str):
            raise DashScopeError("InvalidParameter", "Input prompt must be a string.")
        texts.append(prompt)
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise DashScopeError("InvalidParameter", "Input messages must be a non-empty list.")
        for index, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or message.get("role") not in _MESSAGE_ROLES
                or not isinstance(message.get("content"), str)
            ):
                raise DashScopeError(
                    "InvalidParameter",
                    f"Input messages[{index}] must have a role "
                    f"({', '.join(sorted(_MESSAGE_ROLES))}) and a string content.",
                )
            texts.append(message["content"])
    return texts


def _parameters(payload: dict[str, Any]) -> dict[str, Any]:
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise DashScopeError("InvalidParameter", "Parameters must be a JSON object.")
    result_format = parameters.get("result_format", "text")
    if result_format not in _RESULT_FORMATS:
        raise DashScopeError("InvalidParameter", "result_format must be one of: text, message.")
    max_tokens = parameters.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise DashScopeError("InvalidParameter", "max_tokens must be a positive integer.")
    return parameters


def _error_payload(error: DashScopeError, request_id: str) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "request_id": request_id}


async def _send_error(
    request: web.Request,
    behaviour: Behaviour,
    error: DashScopeError,
    request_id: str,
    *,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    return await delivery.send_json(
        request, behaviour, status=error.status, payload=_error_payload(error, request_id),
        headers=headers,
    )


@attrs.frozen
class _Reply(delivery.EventPerChunk):
    """One answer rendered the DashScope way, whole or as stream frames."""

    request_id: str
    message_format: bool
    incremental: bool
    mid_stream_code: str | None

    def _payload(self, text: str, finish_reason: str, index: int) -> dict[str, Any]:
        input_tokens = self.answer.prompt_tokens
        output_tokens = self.answer.completion_tokens[index]
        usage = {
            "total_tokens": input_tokens + output_tokens,
            "output_tokens": output_tokens,
            "input_tokens": input_tokens,
        }
        return _result_payload(self.message_format, text, finish_reason, usage, self.request_id)

    def _finish_reason(self) -> str:
        return "length" if self.answer.truncated else "stop"

    def whole(self) -> dict[str, Any]:
        return self._payload(self.answer.text, self._finish_reason(), self.chunk_count - 1)

    def _text(self, index: int) -> str:
        if self.incremental:
            return self.answer.chunks[index]
        return "".join(self.answer.chunks[: index + 1])

    def _data_line(self, index: int) -> bytes:
        is_last = index == self.chunk_count - 1
        finish_reason = self._finish_reason() if is_last else "null"
        return b"data:" + delivery.compact_json(self._payload(self._text(index), finish_reason, index))

    def chunk(self, index: int, event_number: int) -> bytes:
        answer = self.answer
        is_last = index == len(answer.chunks) - 1
        input_tokens = answer.prompt_tokens
        output_tokens = answer.completion_tokens[index]
        return _result_template(
            self.message_format, self._finish_reason() if is_last else "null"
        ).fill(
            b"%d" % event_number,
            json_string(self._text(index)),
            b'{"total_tokens":%d,"output_tokens":%d,"input_tokens":%d}'
            % (input_tokens + output_tokens, output_tokens, input_tokens),
            json_string(self.request_id),
        )

    def malformed(self, event_number: int) -> bytes:
        return _frame(
            event_number, "result", 200, b'data:{"output":{"finish_reason":"null","text":"'
        )

    def error(self, event_number: int) -> bytes:
        assert self.mid_stream_code is not None, "error events are only sent under error_after"
        error = DashScopeError(self.mid_stream_code)
        data = b"data:" + delivery.compact_json(_error_payload(error, self.request_id))
        return _frame(event_number, "error", error.status, data)


def _result_payload(
    message_format: bool, text: str, finish_reason: str, usage: Any, request_id: str
) -> dict[str, Any]:
    output: dict[str, Any]
    if message_format:
        output = {
            "choices": [
                {
                    "finish_reason": finish_reason,
                    "message": {"role": "assistant", "content": text},
                }
            ]
        }
    else:
        output = {"finish_reason": finish_reason, "text": text}
    return {"output": output, "usage": usage, "request_id": request_id}


@functools.lru_cache(maxsize=16)
def _result_template(message_format: bool, finish_reason: str) -> EventTemplate:
    """A `result` event, open for its id, text, usage and request id: one per answer format
    and finish reason, shared by every answer."""
    payload = _result_payload(message_format, SLOTS[1], finish_reason, SLOTS[2], SLOTS[3])
    head = b"id:" + ENCODED_SLOTS[0] + b"\nevent:result\n:HTTP_STATUS/200\ndata:"
    return EventTemplate(payload, prefix=head, suffix=b"\n\n")


def _frame(event_number: int, event: str, status: int, data_line: bytes) -> bytes:
    head = f"id:{event_number}\nevent:{event}\n:HTTP_STATUS/{status}\n".encode()
    return head + data_line + b"\n\n"
