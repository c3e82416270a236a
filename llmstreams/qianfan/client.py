"""`QianfanClient`: chat and completions on Baidu Qianfan's wenxinworkshop API v1.

Baidu switched v1 off for its public cloud on 2026-08-31; private deployments and recorded
traffic still speak it. Qianfan's API v2 is OpenAI-compatible: `OpenAICompatibleClient(
vendor="qianfan")` (or `llmstreams.client_for("qianfan")`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypedDict, Unpack
from urllib.parse import urlsplit

import attrs

from llmstreams.calls import Call, PromptAs
from llmstreams.client import BaseClient
from llmstreams.errors import APIError, redact_url
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool
from llmstreams.qianfan import auth, wire
from llmstreams.qianfan.models import Kind, lookup_model, resolve_endpoint
from llmstreams.qianfan.wire import JSON_CONTENT_TYPE, PROVIDER, QianfanParser
from llmstreams.streams import ChunkStream
from llmstreams.telemetry import GenerationInfo, describe
from llmstreams.transport import Exchange, HttpRequest, ResponseHead
from llmstreams.types import Completion
from llmstreams.validation import check_int, reject_unknown

DEFAULT_BASE_URL: Final = "https://aip.baidubce.com"
BASE_URL_VARIABLE: Final = "QIANFAN_BASE_URL"
API_PREFIX: Final = "/rpc/2.0/ai_custom/v1/wenxinworkshop"


class CallParams(TypedDict, total=False):
    """The optional keyword arguments of every call; None (as leaving one out) sends nothing.

    `model` is a name from `MODELS` (any case); `endpoint` the API name of a service you
    deployed. `extra_params` adds body fields this library does not know (`system`,
    `max_output_tokens`, ...); `extra_headers` adds request headers.
    """

    model: str | None
    endpoint: str | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    penalty_score: float | None
    stop: str | Sequence[str] | None
    user_id: str | None
    extra_params: Mapping[str, Any] | None
    extra_headers: Mapping[str, str] | None


_CALL_PARAMETERS: Final = tuple(CallParams.__annotations__)
_CHAT_PARAMETERS: Final = ("messages", *_CALL_PARAMETERS)
_COMPLETE_PARAMETERS: Final = ("prompt", *_CALL_PARAMETERS)


@attrs.define(kw_only=True, eq=False)
class QianfanExchange:
    """One Qianfan generation: its request (authorized afresh per attempt) and its parser."""

    provider = PROVIDER

    _url: str
    _path: str
    _body: bytes
    _headers: Mapping[str, str]
    _auth: auth.Authenticator = attrs.field(alias="authenticator")
    telemetry: GenerationInfo | None = None
    _used: auth.Authorization | None = attrs.field(init=False, default=None)
    _waiter: auth.TokenWaiter = attrs.field(init=False, factory=auth.TokenWaiter)

    def __repr__(self) -> str:
        return f"<QianfanExchange POST {self._url}>"

    async def build_request(self) -> HttpRequest:
        authorization = await self._auth.authorize(self._path, self._waiter)
        self._used = authorization
        return HttpRequest(
            method="POST",
            url=self._url,
            body=self._body,
            headers={**self._headers, **authorization.headers},
            params=authorization.params,
        )

    def parser(self, head: ResponseHead) -> QianfanParser:
        return QianfanParser(head, hints=self._auth.rejection_hints)

    async def recover(self, error: APIError) -> bool:
        return self._auth.recover(error, self._used)


class QianfanClient(BaseClient):
    """Baidu Qianfan API v1 chat (`stream_chat` / `chat`) and completions (`stream_complete` /
    `complete`).

    One authentication method of three: `api_key` + `secret_key` (access tokens fetched,
    cached in the pool and renewed for you), `access_token` (used as given), or `access_key` +
    `secret_access_key` (each request signed, bce-auth-v1). With none given, they are read from
    the environment: QIANFAN_API_KEY + QIANFAN_SECRET_KEY (or the official SDK's QIANFAN_AK +
    QIANFAN_SK), QIANFAN_ACCESS_TOKEN, or QIANFAN_ACCESS_KEY + QIANFAN_SECRET_ACCESS_KEY (or
    the SDK's QIANFAN_ACCESS_KEY + QIANFAN_SECRET_KEY). A v2 key (`bce-v3/...`) is refused,
    naming the v2 client. Calls take `model=` (a name from `MODELS`) or `endpoint=` (a deployed
    service's API name), and the parameters of `CallParams`.

    `base_url` defaults to QIANFAN_BASE_URL, then https://aip.baidubce.com. `max_input_chars`
    limits the total characters of a chat's message contents (4800, the older models' limit;
    None to not check). `extra_headers` are sent with every request (a call's own
    `extra_headers` add to them).

        async with QianfanClient(api_key="...", secret_key="...") as client:
            async with client.stream_chat(messages, model="ERNIE-Speed-8K") as stream:
                async for chunk in stream:
                    print(chunk.text, end="")
    """

    provider = PROVIDER

    def __init__(
        self,
        *,
        api_key: str | None = None,
        secret_key: str | None = None,
        access_token: str | None = None,
        access_key: str | None = None,
        secret_access_key: str | None = None,
        base_url: str | None = None,
        pool: Pool | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
        max_input_chars: int | None = wire.DEFAULT_MAX_INPUT_CHARS,
    ) -> None:
        credentials = auth.resolve_credentials(
            {
                "api_key": api_key,
                "secret_key": secret_key,
                "access_token": access_token,
                "access_key": access_key,
                "secret_access_key": secret_access_key,
            },
            os.environ,
        )
        headers = wire.check_headers("extra_headers", extra_headers)
        if max_input_chars is not None:
            max_input_chars = check_int("max_input_chars", max_input_chars, low=1)
        if base_url is None:
            base_url = os.environ.get(BASE_URL_VARIABLE, "").strip() or DEFAULT_BASE_URL
        super().__init__(
            base_url=base_url, pool=pool, timeout=timeout, retry=retry, max_retries=max_retries
        )
        self.max_input_chars = max_input_chars
        self._base_path = urlsplit(self.base_url).path
        self._headers = {"Content-Type": JSON_CONTENT_TYPE, **headers}
        self._auth = auth.authenticator(
            credentials, pool=self.pool, base_url=self.base_url, timeout=self.timeout
        )

    def __repr__(self) -> str:
        return f"<QianfanClient base_url={redact_url(self.base_url)!r} auth={self.auth_method!r}>"

    @property
    def auth_method(self) -> str:
        """"api_key/secret_key", "access_token" or "access_key/secret_access_key"."""
        return self._auth.method

    def stream_chat(
        self, /, messages: Sequence[Mapping[str, Any]], **params: Unpack[CallParams]
    ) -> ChunkStream:
        """Stream a chat answer: iterate the returned `ChunkStream` (best inside `async with`).
        Parameters are checked here, before anything is sent."""
        return self._stream(self._exchange("chat", messages, stream=True, params=params))

    async def chat(
        self, /, messages: Sequence[Mapping[str, Any]], **params: Unpack[CallParams]
    ) -> Completion:
        """A whole chat answer, from one non-stream request."""
        return await self._complete(self._exchange("chat", messages, stream=False, params=params))

    def stream_complete(self, /, prompt: str, **params: Unpack[CallParams]) -> ChunkStream:
        """Stream a continuation of `prompt` (completions models such as CodeLlama-7b-Instruct)."""
        return self._stream(self._exchange("completions", prompt, stream=True, params=params))

    async def complete(self, /, prompt: str, **params: Unpack[CallParams]) -> Completion:
        """A whole continuation of `prompt`, from one non-stream request."""
        return await self._complete(
            self._exchange("completions", prompt, stream=False, params=params)
        )

    def _call_exchange(self, call: Call, *, stream: bool) -> Exchange:
        params: dict[str, Any] = {**call.params, "model": call.model, "endpoint": call.endpoint}
        extra = dict(params.get("extra_params") or {})
        if call.max_tokens is not None:
            extra["max_output_tokens"] = call.max_tokens
        messages = list(call.as_messages())
        if messages and messages[0].get("role") == "system":
            # v1 takes the system prompt as a field of its own.
            extra["system"] = messages.pop(0).get("content")
        if extra:
            params["extra_params"] = extra
        if call.sends_prompt(self._prompt_kind(call)):
            return self._exchange("completions", call.prompt, stream=stream, params=params)
        return self._exchange("chat", messages, stream=stream, params=params)

    @staticmethod
    def _prompt_kind(call: Call) -> PromptAs:
        """A public model's prompt goes where the model takes it; a deployed service's prompt
        goes to completions, as its name says nothing of its kind."""
        if call.model is None:
            return "completion"
        return "completion" if lookup_model(call.model).kind == "completions" else "chat"

    def _exchange(
        self, kind: Kind, input_value: Any, *, stream: bool, params: Mapping[str, Any]
    ) -> Exchange:
        given = dict(params)
        reject_unknown(
            {name: value for name, value in given.items() if name not in _CALL_PARAMETERS},
            _CHAT_PARAMETERS if kind == "chat" else _COMPLETE_PARAMETERS,
            escape_hatch="extra_params", hints=wire.V1_PARAMETER_HINTS,
        )
        input_fields: dict[str, Any]
        if kind == "chat":
            input_fields = {
                "messages": wire.check_messages(input_value, max_input_chars=self.max_input_chars)
            }
        else:
            input_fields = {"prompt": wire.check_prompt(input_value)}
        service = resolve_endpoint(kind, model=given.get("model"), endpoint=given.get("endpoint"))
        fields = {
            **input_fields,
            "stream": stream,
            **wire.sampling_fields(**{name: given.get(name) for name in wire.SAMPLING_FIELDS}),
            **wire.check_extra_params(given.get("extra_params")),
        }
        path = f"{API_PREFIX}/{kind}/{service}"
        return QianfanExchange(
            url=f"{self.base_url}{path}",
            path=f"{self._base_path}{path}",
            body=wire.encode_body(fields),
            headers={**self._headers, **wire.check_headers("extra_headers", given.get("extra_headers"))},
            authenticator=self._auth,
            telemetry=describe(
                kind, given.get("model") or given.get("endpoint"), fields, url=self.base_url,
                content=input_value,
            ),
        )
