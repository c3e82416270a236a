"""The OpenAI-compatible dialect: chat completions and legacy completions, whole or streamed.

This module knows the shared shape (request fields, `chat.completion.chunk` events, the role-only
first chunk, reasoning text, tool-call argument pieces, the usage-only last chunk, `data: [DONE]`,
`{"error": {...}}` bodies). A vendor (`openai_vendors.py`) adds its auth, ids, error extras and
choice extras on top by subclassing `Flavour`.

A stream and a whole answer to the same request carry the same text, reasoning, tool calls and
usage: the answer's seed leaves out `stream` and `stream_options`.
"""

from __future__ import annotations

import enum
import functools
import itertools
import json
import time
from typing import Any, ClassVar

import attrs
from aiohttp import web

from llmstreams.mock import delivery
from llmstreams.mock.answer import compose_answer
from llmstreams.mock.behaviour import Behaviour
from llmstreams.mock.context import MockContext
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.qianfan_auth import TokenStore
from llmstreams.mock.templates import SLOTS, EventTemplate, json_string
from llmstreams.mock.text import (
    answer_text,
    count_tokens,
    split_chunks,
    token_counts_at,
)
from llmstreams.mock.vendor_errors import (
    DASHSCOPE_CODES,
    OPENAI_STYLE_CODES,
    DashScopeCodedError,
    json_object,
)

STREAM_ONLY_FIELDS = ("stream", "stream_options")
DEFAULT_REASONING_CHARS = 120
DONE = b"data: [DONE]\n\n"
# Model ids that name a reasoning model (deepseek-r1, ernie-x1, qwq, *-thinking, *-reasoner).
_REASONING_MODEL_MARKS = ("r1", "x1", "qwq", "thinking", "reasoner")
_MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TOOL_ARGUMENT_CHARS = 48


class OpenAIError(DashScopeCodedError):
    """An error answered in the dialect's form; `code` is a DashScope code (see vendor_errors)."""


class Kind(enum.Enum):
    CHAT = "chat"
    COMPLETIONS = "completions"


class Flavour:
    """One vendor's bits on top of the dialect; this base is a generic OpenAI-compatible server."""

    cumulative_usage = False
    """Every chunk carries the usage so far (Qianfan v2)."""
    refuses_trigger = False
    """The trigger phrase is refused with HTTP 400 (True) or answered as `content_filter`."""
    always_usage = False
    """A stream ends with the usage whether or not `stream_options.include_usage` asked for it."""
    usage_in_choice = False
    """A stream's usage goes in the finishing choice (`choices[0].usage`), not a chunk of its own."""
    key_required = False
    """A request without a key is refused (every vendor; a generic server takes none)."""
    models: ClassVar[frozenset[str] | None] = None
    """The vendor's documented model ids; None: the `served_models` knob decides (a generic
    server)."""
    wrong_key_message: str | None = None
    """The message of the vendor's 401 (None: DashScope's own)."""

    def __init__(self, key_prefix: str | None = None) -> None:
        """`key_prefix`: how the vendor's keys start (the registry's `Vendor.key_prefix`)."""
        self.key_prefix = key_prefix

    def expected_key(self, credentials: MockCredentials | None) -> str | None:
        """The one key the server was told to take (None: any key of the right shape)."""
        return credentials.openai_api_key if credentials else None

    def key_shape_ok(self, key: str) -> bool:
        """Whether `key` has the shape of the vendor's keys (a key that does not is surely
        wrong, and the vendor answers it as any wrong key)."""
        return self.key_prefix is None or key.startswith(self.key_prefix)

    def malformed_key_message(self) -> str | None:
        """The message of the 401 to a key of the wrong shape."""
        return self.wrong_key_message

    def authenticate(self, request: web.Request, credentials: MockCredentials | None) -> None:
        """Raise OpenAIError("InvalidApiKey") unless the request's key is acceptable."""
        key = bearer_key(request)
        expected = self.expected_key(credentials)
        if key is None:
            if self.key_required or expected is not None:
                raise OpenAIError("InvalidApiKey", self.wrong_key_message)
            return
        if not self.key_shape_ok(key):
            raise OpenAIError("InvalidApiKey", self.malformed_key_message())
        if expected is not None and key != expected:
            raise OpenAIError("InvalidApiKey", self.wrong_key_message)

    def serves_model(self, model: str, behaviour: Behaviour) -> bool:
        """Whether the vendor knows `model` (the `any_model` knob aside)."""
        if self.models is None:
            return behaviour.served_models is None or model in behaviour.served_models
        return model in self.models

    def unknown_model(self, model: str) -> OpenAIError:
        """The vendor's error for a model it does not know."""
        return OpenAIError(
            "ModelNotFound", f"The model `{model}` does not exist or you do not have access to it."
        )

    def accepts_issued_token(self, request: web.Request, tokens: TokenStore) -> bool:
        """Whether the request's key is a token this server issued and still honours (it then
        needs no other check); raise OpenAIError("InvalidApiKey") for one that expired."""
        return False

    def response_id(self, digest: bytes) -> str:
        return "chatcmpl-" + digest[:12].hex()

    def error_extras(self, response_id: str) -> dict[str, Any]:
        """Top-level fields an error body carries next to `error`."""
        return {}

    def error_code_name(self, code: str) -> str:
        return OPENAI_STYLE_CODES[code].code

    def error_status(self, error: OpenAIError) -> int:
        """The HTTP status of an error answer."""
        return error.status

    def error_body(self, error: OpenAIError, response_id: str) -> Any:
        """The body of an error answer (a mock `code`, see vendor_errors)."""
        return {
            "error": {
                "message": error.message,
                "type": OPENAI_STYLE_CODES[error.code].type,
                "param": None,
                "code": self.error_code_name(error.code),
            },
            **self.error_extras(response_id),
        }

    def check(self, parsed: ParsedRequest, payload: dict[str, Any]) -> None:
        """Vendor rules beyond the dialect's; raise OpenAIError."""

    def thinking(self, parsed: ParsedRequest, payload: dict[str, Any]) -> bool:
        """Whether the model reasons before answering when no knob says."""
        model = parsed.model.lower()
        return any(mark in model for mark in _REASONING_MODEL_MARKS)

    def choice_extras(self, *, last: bool | None, refused: bool) -> dict[str, Any]:
        """Fields this vendor adds to each choice: of a chunk (`last`: is it the stream's last
        choice) or of a whole answer (`last` None)."""
        return {}


def bearer_key(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


@attrs.frozen
class ParsedRequest:
    kind: Kind
    model: str
    inputs: list[str]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    tool_name: str | None
    """The function a tool call would call (None: the request offers no tool)."""
    tool_choice_forces: bool
    """`tool_choice` is "required" or names a function."""


class OpenAIRoutes:
    """The handlers of one vendor's chat (and completions) routes."""

    def __init__(self, context: MockContext, flavour: Flavour, route: str) -> None:
        """`route`: the stats name of the routes (`<route>.chat`, `<route>.completions`)."""
        self._context = context
        self._flavour = flavour
        self._route = route

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, Kind.CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, Kind.COMPLETIONS)

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        flavour = self._flavour
        received = await self._context.receive(
            request, f"{self._route}.{kind.value}", DASHSCOPE_CODES,
            stream_only_fields=STREAM_ONLY_FIELDS,
        )
        behaviour = received.behaviour
        response_id = flavour.response_id(received.digest)
        try:
            if not flavour.accepts_issued_token(request, self._context.tokens):
                flavour.authenticate(request, self._context.credentials)
            payload = _parse_body(received.body)
            parsed = _parse_request(kind, payload)
            if not (behaviour.any_model or flavour.serves_model(parsed.model, behaviour)):
                raise flavour.unknown_model(parsed.model)
            flavour.check(parsed, payload)
            refused = any(self._context.contains_trigger(text) for text in parsed.inputs)
            if refused and flavour.refuses_trigger:
                raise OpenAIError("DataInspectionFailed")
        except OpenAIError as error:
            return await self._send_error(request, behaviour, error, response_id)
        if received.injected_code is not None and self._context.failure_due(received.digest, behaviour):
            injected = OpenAIError(received.injected_code, status=behaviour.http_status)
            return await self._send_error(
                request, behaviour, injected, response_id, headers=delivery.retry_after_headers(behaviour)
            )
        if parsed.stream and behaviour.non_sse_body:
            return await delivery.send_body(
                request, behaviour, status=200, content_type="text/html", body=delivery.NON_SSE_PAGE
            )
        reply = self._reply(received.digest, behaviour, parsed, payload, response_id, refused)
        if received.mid_stream_code is not None:
            mid_stream_error = flavour.error_body(OpenAIError(received.mid_stream_code), response_id)
            reply = attrs.evolve(reply, mid_stream_error=mid_stream_error)
        return await delivery.send_answer(request, self._context, behaviour, reply, stream=parsed.stream)

    def _reply(
        self,
        digest: bytes,
        behaviour: Behaviour,
        parsed: ParsedRequest,
        payload: dict[str, Any],
        response_id: str,
        refused: bool,
    ) -> Reply:
        flavour = self._flavour
        answer = compose_answer(
            digest,
            behaviour,
            prompt_text="\n".join(parsed.inputs),
            max_tokens=parsed.max_tokens,
        )
        content = () if refused else answer.chunks
        reasoning_chars = behaviour.reasoning_chars
        if reasoning_chars is None:
            thinks = parsed.kind is Kind.CHAT and flavour.thinking(parsed, payload)
            reasoning_chars = DEFAULT_REASONING_CHARS if thinks else 0
        reasoning: tuple[str, ...] = ()
        if reasoning_chars and parsed.kind is Kind.CHAT and not refused:
            text = answer_text(digest, reasoning_chars, b"reasoning")
            reasoning = tuple(split_chunks(text, behaviour.chunk_chars))
        tool_call: ToolCall | None = None
        if parsed.tool_name is not None and (behaviour.tool_calls or parsed.tool_choice_forces):
            arguments = json.dumps(
                {"query": answer_text(digest, _TOOL_ARGUMENT_CHARS, b"arguments")}
            )
            tool_call = ToolCall(
                id="call_" + digest[12:24].hex(),
                name=parsed.tool_name,
                argument_pieces=tuple(split_chunks(arguments, behaviour.chunk_chars)),
            )
            content = ()
        if refused:
            finish_reason = "content_filter"
        elif tool_call is not None:
            finish_reason = "tool_calls"
        else:
            finish_reason = "length" if answer.truncated else "stop"
        usage = behaviour.send_usage
        return Reply(
            flavour=flavour,
            kind=parsed.kind,
            response_id=response_id,
            created=int(time.time()),
            model=parsed.model,
            reasoning=reasoning,
            content=tuple(content),
            tool_call=tool_call,
            finish_reason=finish_reason,
            refused=refused,
            prompt_tokens=answer.prompt_tokens,
            whole_usage=usage is not False,
            stream_usage=usage is True
            or (usage is None and (parsed.include_usage or flavour.always_usage)),
            chunk_usage=usage is not False and flavour.cumulative_usage,
        )

    async def _send_error(
        self,
        request: web.Request,
        behaviour: Behaviour,
        error: OpenAIError,
        response_id: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        return await delivery.send_json(
            request, behaviour, status=self._flavour.error_status(error),
            payload=self._flavour.error_body(error, response_id),
            headers=headers,
        )


def _parse_body(body: bytes) -> dict[str, Any]:
    return json_object(body, OpenAIError)


def _parse_request(kind: Kind, payload: dict[str, Any]) -> ParsedRequest:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("InvalidParameter", "model is required and must be a string.")
    inputs = _prompt(payload) if kind is Kind.COMPLETIONS else _message_contents(payload)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise OpenAIError("InvalidParameter", "stream must be a boolean.")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise OpenAIError("InvalidParameter", "stream_options must be an object.")
    _check_number(payload, "temperature", 0.0, 2.0)
    _check_number(payload, "top_p", 0.0, 1.0)
    n = payload.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise OpenAIError("InvalidParameter", "n must be 1.")
    tool_name, forces = (None, False) if kind is Kind.COMPLETIONS else _tool_choice(payload)
    return ParsedRequest(
        kind=kind,
        model=model,
        inputs=inputs,
        stream=stream,
        include_usage=bool(options and options.get("include_usage") is True),
        max_tokens=_max_tokens(payload),
        tool_name=tool_name,
        tool_choice_forces=forces,
    )


def _prompt(payload: dict[str, Any]) -> list[str]:
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise OpenAIError("InvalidParameter", "prompt must be a non-empty string.")
    return [prompt]


def _message_contents(payload: dict[str, Any]) -> list[str]:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("InvalidParameter", "messages must be a non-empty list.")
    contents: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _MESSAGE_ROLES:
            raise OpenAIError(
                "InvalidParameter",
                f"messages[{index}] must be an object whose role is one of "
                f"{', '.join(sorted(_MESSAGE_ROLES))}.",
            )
        content = message.get("content")
        if isinstance(content, str):
            contents.append(content)
        elif isinstance(content, list):
            contents.extend(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        elif content is not None or message["role"] != "assistant":
            raise OpenAIError("InvalidParameter", f"messages[{index}].content must be a string.")
    return contents


def _check_number(payload: dict[str, Any], name: str, low: float, high: float) -> None:
    value = payload.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise OpenAIError("InvalidParameter", f"{name} must be a number in [{low}, {high}].")


def _max_tokens(payload: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OpenAIError("InvalidParameter", f"{name} must be a positive integer.")
        return value
    return None


def _tool_choice(payload: dict[str, Any]) -> tuple[str | None, bool]:
    """The function a tool call would name, and whether `tool_choice` demands a call."""
    tools = payload.get("tools")
    if tools is None:
        return None, False
    names: list[str] = []
    if isinstance(tools, list):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.append(function["name"])
    if not names or len(names) != len(tools):
        raise OpenAIError(
            "InvalidParameter",
            'tools must be a list of {"type": "function", "function": {"name"}}.',
        )
    choice = payload.get("tool_choice", "auto")
    if choice == "none":
        return None, False
    if choice in ("auto", "required"):
        return names[0], choice == "required"
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and function.get("name") in names:
        return str(function["name"]), True
    raise OpenAIError(
        "InvalidParameter",
        'tool_choice must be "none", "auto", "required" or name an offered tool.',
    )


@attrs.frozen
class ToolCall:
    id: str
    name: str
    argument_pieces: tuple[str, ...]

    @property
    def arguments(self) -> str:
        return "".join(self.argument_pieces)


@attrs.frozen
class Reply:
    """One answer in the dialect: whole JSON, or pre-rendered `data:` events and `[DONE]`."""

    flavour: Flavour
    kind: Kind
    response_id: str
    created: int
    model: str
    reasoning: tuple[str, ...]
    content: tuple[str, ...]
    tool_call: ToolCall | None
    finish_reason: str
    refused: bool
    prompt_tokens: int
    whole_usage: bool
    stream_usage: bool
    """A last `choices: []` chunk carries the usage."""
    chunk_usage: bool
    """Every chunk carries the usage so far."""
    mid_stream_error: dict[str, Any] | None = None
    events: tuple[bytes, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self._render_events()))

    # -- the StreamEvents / Answer protocol of delivery.py

    @property
    def chunk_count(self) -> int:
        return len(self.events)

    @property
    def closing(self) -> bytes:
        return DONE

    def chunk(self, index: int, event_number: int) -> bytes:
        return self.events[index]

    def malformed(self, event_number: int) -> bytes:
        return (
            b'data: {"id":"' + self.response_id.encode() + b'","choices":[{"index":0,"delta":'
            b'{"content":"\n\n'
        )

    def error(self, event_number: int) -> bytes:
        assert self.mid_stream_error is not None, "error events are only sent under error_after"
        return _event(self.mid_stream_error)

    def with_first_line_length(self, length: int) -> Reply:
        """The first content event's data line made `length` bytes long (see pad_first_chunk)."""
        if not self.content:
            return self
        first_content = 1 + len(self.reasoning) if self.kind is Kind.CHAT else 0

        def first_line_length(chunks: list[str]) -> int:
            padded = attrs.evolve(self, content=tuple(chunks))
            return len(padded.events[first_content]) - 2

        chunks = delivery.pad_first_chunk(list(self.content), length, first_line_length)
        return attrs.evolve(self, content=tuple(chunks))

    def whole(self) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.kind is Kind.CHAT:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if self.tool_call else "".join(self.content),
            }
            if self.reasoning:
                message["reasoning_content"] = "".join(self.reasoning)
            if self.tool_call is not None:
                message["tool_calls"] = [
                    {
                        "id": self.tool_call.id,
                        "type": "function",
                        "function": {
                            "name": self.tool_call.name,
                            "arguments": self.tool_call.arguments,
                        },
                    }
                ]
            choice["message"] = message
        else:
            choice["text"] = "".join(self.content)
            choice["logprobs"] = None
        choice["finish_reason"] = self.finish_reason
        choice.update(self.flavour.choice_extras(last=None, refused=self.refused))
        payload = self._common("chat.completion" if self.kind is Kind.CHAT else "text_completion")
        payload["choices"] = [choice]
        if self.whole_usage:
            payload["usage"] = self._usage(self._completion_tokens()[-1])
        return payload

    # -- rendering

    def _common(self, obj: str) -> dict[str, Any]:
        return {"id": self.response_id, "object": obj, "created": self.created, "model": self.model}

    def _pieces(self) -> list[tuple[str, str]]:
        """Every piece of generated text in order: (what, text)."""
        pieces = [("reasoning", piece) for piece in self.reasoning]
        pieces += [("content", piece) for piece in self.content]
        if self.tool_call is not None:
            pieces += [("arguments", piece) for piece in self.tool_call.argument_pieces]
        return pieces

    def _completion_tokens(self) -> tuple[int, ...]:
        """Completion tokens once each piece of `_pieces()` is out: [0, after 1st, ..., total]."""
        arguments = self.tool_call.argument_pieces if self.tool_call else ()
        return _completion_token_counts(self.reasoning, self.content, arguments)

    def _usage(self, completion_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }
        if self.reasoning:
            # Reasoning comes first, so the reasoning tokens so far are the first ones sent.
            reasoning_tokens = count_tokens("".join(self.reasoning))
            usage["completion_tokens_details"] = {
                "reasoning_tokens": min(reasoning_tokens, completion_tokens)
            }
        return usage

    def _chunk(self, delta: dict[str, Any], *, last: bool, usage: Any) -> dict[str, Any]:
        """One chunk's payload; `usage` is its usage (None: the chunk carries none)."""
        choice: dict[str, Any] = {"index": 0}
        if self.kind is Kind.CHAT:
            choice["delta"] = delta
        else:
            choice.update(delta, logprobs=None)
        choice["finish_reason"] = self.finish_reason if last else None
        choice.update(self.flavour.choice_extras(last=last, refused=self.refused))
        payload = self._common(
            "chat.completion.chunk" if self.kind is Kind.CHAT else "text_completion"
        )
        payload["choices"] = [choice]
        if usage is not None:
            payload["usage"] = usage
        return payload

    def _render_events(self) -> list[bytes]:
        chat = self.kind is Kind.CHAT
        tokens = self._completion_tokens() if self.chunk_usage or self.stream_usage else ()
        response_id = json_string(self.response_id)

        def event(template: EventTemplate, *values: bytes, number: int) -> bytes:
            if self.chunk_usage:
                return template.fill(response_id, *values, delivery.compact_json(self._usage(tokens[number])))
            return template.fill(response_id, *values)

        events = []
        if chat:
            role = {"role": "assistant", "content": ""}
            events.append(event(self._template("role", role, text_slot=False), number=0))
        text_field = {"reasoning": "reasoning_content", "content": "content" if chat else "text"}
        call_started = False
        for number, (what, piece) in enumerate(self._pieces(), start=1):
            delta: dict[str, Any]
            if what == "arguments":
                assert self.tool_call is not None
                call: dict[str, Any] = {"index": 0, "function": {"arguments": SLOTS[1]}}
                if not call_started:
                    # The first piece of the call also names it.
                    call = {
                        "index": 0, "id": self.tool_call.id, "type": "function",
                        "function": {"name": self.tool_call.name, "arguments": SLOTS[1]},
                    }
                delta = {"tool_calls": [call]}
                what = "arguments" if call_started else "call"
                call_started = True
            else:
                delta = {text_field[what]: SLOTS[1]}
            events.append(event(self._template(what, delta), json_string(piece), number=number))
        finish = {} if chat else {"text": ""}
        closing = event(self._template("finish", finish, last=True, text_slot=False), number=-1)
        if self.stream_usage and self.flavour.usage_in_choice:
            payload = self._chunk(finish, last=True, usage=None)
            payload["choices"][0]["usage"] = self._usage(tokens[-1])
            closing = _event(payload)
        elif self.stream_usage:
            # The usage chunk goes out with the finish chunk, as servers send it: in the same
            # step, not one pace later.
            payload = self._common("chat.completion.chunk" if chat else "text_completion")
            payload["choices"] = []
            payload["usage"] = self._usage(tokens[-1])
            closing += _event(payload)
        events.append(closing)
        return events

    def _template(
        self, what: str, delta: dict[str, Any], *, last: bool = False, text_slot: bool = True
    ) -> EventTemplate:
        """The event of one kind of chunk (`what`), its slots the response id, the text (with
        `text_slot`: `delta` holds SLOTS[1]) and, when every chunk carries it, the usage; shared
        by every answer of the same shape."""
        key = (
            self.flavour, self.kind, self.refused, self.chunk_usage, self.created, self.model,
            self.finish_reason if last else None, what,
        )
        template = _TEMPLATES.get(key)
        if template is None:
            usage_slot = SLOTS[2] if text_slot else SLOTS[1]
            payload = self._chunk(delta, last=last, usage=usage_slot if self.chunk_usage else None)
            payload["id"] = SLOTS[0]
            template = EventTemplate(payload, prefix=b"data: ", suffix=b"\n\n")
            if len(_TEMPLATES) >= _MAX_TEMPLATES:
                _TEMPLATES.clear()
            _TEMPLATES[key] = template
        return template


# Event templates by answer shape (see Reply._template); the key holds the `created` second and
# the model asked for, so the table is emptied when it fills up rather than growing.
_TEMPLATES: dict[tuple[Any, ...], EventTemplate] = {}
_MAX_TEMPLATES = 512


@functools.lru_cache(maxsize=1024)
def _completion_token_counts(
    reasoning: tuple[str, ...], content: tuple[str, ...], arguments: tuple[str, ...]
) -> tuple[int, ...]:
    """The completion tokens after each piece, reasoning then content then tool-call arguments,
    from 0 (answers repeat: the mock composes them from one corpus)."""
    counts = [0]
    for pieces in (reasoning, content, arguments):
        base = counts[-1]
        ends = list(itertools.accumulate(len(piece) for piece in pieces))
        counts += [base + count for count in token_counts_at("".join(pieces), ends)]
    return tuple(counts)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + delivery.compact_json(payload) + b"\n\n"
