"""`QianfanClient`: chat and completions on Baidu Qianfan, API v2 (OpenAI-compatible) or the
legacy wenxinworkshop API v1."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from llmstreams.client import BaseClient
from llmstreams.errors import APIError, InvalidParameterError, redact_url
from llmstreams.openai.client import DialectEndpoint, bearer_headers
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool
from llmstreams.qianfan import auth, v2, wire
from llmstreams.qianfan.models import Kind, check_v2_model, resolve_endpoint
from llmstreams.qianfan.wire import JSON_CONTENT_TYPE, PROVIDER, QianfanParser
from llmstreams.streams import ChunkStream
from llmstreams.telemetry import GenerationInfo, describe
from llmstreams.transport import Exchange, HttpRequest, ResponseHead
from llmstreams.types import Completion
from llmstreams.validation import check_int, check_text, reject_unknown

DEFAULT_BASE_URL: Final = "https://aip.baidubce.com"
BASE_URL_VARIABLE: Final = "QIANFAN_BASE_URL"
API_PREFIX: Final = "/rpc/2.0/ai_custom/v1/wenxinworkshop"

_CALL_PARAMETERS: Final = (
    "model", "endpoint", *wire.SAMPLING_FIELDS, "extra_params", "extra_headers",
)
_CHAT_PARAMETERS: Final = ("messages", *_CALL_PARAMETERS)
_COMPLETE_PARAMETERS: Final = ("prompt", *_CALL_PARAMETERS)
# v1 parameters v2 does not take, and what to pass there instead.
_V1_ONLY: Final = {
    "top_k": "extra_body={'top_k': ...} if the model takes it",
    "user_id": "user=",
    "extra_params": "extra_body=",
}


class QianfanExchange:
    """One Qianfan generation: its request (authorized afresh per attempt) and its parser."""

    provider = PROVIDER
    __slots__ = ("telemetry", "_url", "_path", "_body", "_headers", "_auth", "_used", "_waiter")

    def __init__(
        self, *, url: str, path: str, body: bytes, headers: Mapping[str, str],
        authenticator: auth.Authenticator, telemetry: GenerationInfo | None = None,
    ) -> None:
        self.telemetry = telemetry
        self._url = url
        self._path = path
        self._body = body
        self._headers = headers
        self._auth = authenticator
        self._used: auth.Authorization | None = None
        self._waiter = auth.TokenWaiter()

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
    """Baidu Qianfan chat (`stream_chat` / `chat`) and completions (`stream_complete` / `complete`).

    API v2 (OpenAI-compatible, today's API): an `api_key` starting `bce-v3/` (the console's
    API key, or QIANFAN_API_KEY) selects it. Calls take `model=` the v2 model id
    (`ernie-speed-8k`), the dialect's parameters (`temperature`, `top_p`, `penalty_score`,
    `max_completion_tokens`, `stop`, `seed`, `tools`, ..., `extra_body`; see
    `llmstreams.openai.wire.ChatParams`), and `app_id=` is sent as the `appid` header.

    API v1 (wenxinworkshop, switched off by Baidu on 2026-08-31; private deployments still
    speak it), one method of three: `api_key` + `secret_key` (access tokens fetched, cached in
    the pool and renewed for you), `access_token` (used as given), or `access_key` +
    `secret_access_key` (each request signed, bce-auth-v1). With none given, they are read from
    the environment: QIANFAN_API_KEY + QIANFAN_SECRET_KEY (or the official SDK's QIANFAN_AK +
    QIANFAN_SK), QIANFAN_ACCESS_TOKEN, or QIANFAN_ACCESS_KEY + QIANFAN_SECRET_ACCESS_KEY (or
    the SDK's QIANFAN_ACCESS_KEY + QIANFAN_SECRET_KEY). Calls take `model=` (a name from
    `MODELS`) or `endpoint=` (a deployed service's API name).

    `api_version="v1"` or `"v2"` insists on one (credentials of the other are refused).
    `base_url` defaults to QIANFAN_BASE_URL, then https://qianfan.baidubce.com (v2) or
    https://aip.baidubce.com (v1). `max_input_chars` (v1 only) limits the total characters of a
    chat's message contents (4800, the older models' limit; None to not check). `extra_headers`
    are sent with every request (a call's own `extra_headers` add to them).

        async with QianfanClient(api_key="bce-v3/...") as client:
            async with client.stream_chat(messages, model="ernie-speed-8k") as stream:
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
        app_id: str | None = None,
        api_version: Literal["v1", "v2"] | None = None,
        base_url: str | None = None,
        pool: Pool | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
        max_input_chars: int | None = wire.DEFAULT_MAX_INPUT_CHARS,
    ) -> None:
        if api_version not in (None, "v1", "v2"):
            raise InvalidParameterError("api_version", "must be 'v1', 'v2' or None", api_version)
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
        is_v2 = credentials.method == auth.V2_API_KEY
        _check_version(api_version, is_v2, credentials.method)
        if app_id is not None:
            if not is_v2:
                raise InvalidParameterError(
                    "app_id", "is sent by API v2 only (its appid header); v1 calls go to the app "
                    "of their credentials",
                )
            check_text("app_id", app_id)
        headers = wire.check_headers("extra_headers", extra_headers)
        if max_input_chars is not None:
            max_input_chars = check_int("max_input_chars", max_input_chars, low=1)
        if base_url is None:
            base_url = os.environ.get(BASE_URL_VARIABLE, "").strip() or (
                v2.BASE_URL if is_v2 else DEFAULT_BASE_URL
            )
        super().__init__(
            base_url=base_url, pool=pool, timeout=timeout, retry=retry, max_retries=max_retries
        )
        self.api_version: Literal["v1", "v2"] = "v2" if is_v2 else "v1"
        self.max_input_chars = max_input_chars
        self._v2: DialectEndpoint | None = None
        self._auth: auth.Authenticator | None = None
        if is_v2:
            app_header = {} if app_id is None else {v2.APP_ID_HEADER: app_id}
            self._v2 = DialectEndpoint(
                api_base=self.base_url + v2.API_PREFIX,
                headers={**bearer_headers(credentials.values["api_key"]), **app_header, **headers},
                dialect=v2.DIALECT,
            )
            return
        self._base_path = urlsplit(self.base_url).path
        self._headers = {"Content-Type": JSON_CONTENT_TYPE, **headers}
        self._auth = auth.authenticator(
            credentials, pool=self.pool, base_url=self.base_url, timeout=self.timeout
        )

    def __repr__(self) -> str:
        # The auth method tells the API version: "bce-v3 api_key" is v2's.
        return f"<QianfanClient base_url={redact_url(self.base_url)!r} auth={self.auth_method!r}>"

    @property
    def auth_method(self) -> str:
        """"bce-v3 api_key" (v2), or v1's "api_key/secret_key", "access_token" or
        "access_key/secret_access_key"."""
        return auth.V2_API_KEY if self._auth is None else self._auth.method

    def stream_chat(
        self,
        /,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        endpoint: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        penalty_score: float | None = None,
        stop: str | Sequence[str] | None = None,
        user_id: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> ChunkStream:
        """Stream a chat answer: iterate the returned `ChunkStream` (best inside `async with`).

        Parameters are checked here, before anything is sent. On v2, `params` are the
        dialect's other parameters (`max_completion_tokens`, `tools`, `extra_body`...).
        """
        return self._stream(self._exchange(
            "chat", messages, stream=True, model=model, endpoint=endpoint,
            sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p,
                      "penalty_score": penalty_score, "stop": stop, "user_id": user_id},
            extra_params=extra_params, extra_headers=extra_headers, params=params,
        ))

    async def chat(
        self,
        /,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        endpoint: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        penalty_score: float | None = None,
        stop: str | Sequence[str] | None = None,
        user_id: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> Completion:
        """A whole chat answer, from one non-stream request."""
        return await self._complete(self._exchange(
            "chat", messages, stream=False, model=model, endpoint=endpoint,
            sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p,
                      "penalty_score": penalty_score, "stop": stop, "user_id": user_id},
            extra_params=extra_params, extra_headers=extra_headers, params=params,
        ))

    def stream_complete(
        self,
        /,
        prompt: str,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        penalty_score: float | None = None,
        stop: str | Sequence[str] | None = None,
        user_id: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> ChunkStream:
        """Stream a continuation of `prompt` (completions models such as CodeLlama-7b-Instruct)."""
        return self._stream(self._exchange(
            "completions", prompt, stream=True, model=model, endpoint=endpoint,
            sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p,
                      "penalty_score": penalty_score, "stop": stop, "user_id": user_id},
            extra_params=extra_params, extra_headers=extra_headers, params=params,
        ))

    async def complete(
        self,
        /,
        prompt: str,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        penalty_score: float | None = None,
        stop: str | Sequence[str] | None = None,
        user_id: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> Completion:
        """A whole continuation of `prompt`, from one non-stream request."""
        return await self._complete(self._exchange(
            "completions", prompt, stream=False, model=model, endpoint=endpoint,
            sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p,
                      "penalty_score": penalty_score, "stop": stop, "user_id": user_id},
            extra_params=extra_params, extra_headers=extra_headers, params=params,
        ))

    def _exchange(
        self,
        kind: Kind,
        input_value: Any,
        *,
        stream: bool,
        model: Any,
        endpoint: Any,
        sampling: dict[str, Any],
        extra_params: Any,
        extra_headers: Any,
        params: dict[str, Any],
    ) -> Exchange:
        if self._v2 is not None:
            return self._v2_exchange(
                kind, input_value, stream=stream, model=model, endpoint=endpoint,
                given={**sampling, "extra_params": extra_params}, extra_headers=extra_headers,
                params=params,
            )
        assert self._auth is not None
        reject_unknown(
            params, _CHAT_PARAMETERS if kind == "chat" else _COMPLETE_PARAMETERS,
            escape_hatch="extra_params", hints=wire.V1_PARAMETER_HINTS,
        )
        input_fields: dict[str, Any]
        if kind == "chat":
            input_fields = {
                "messages": wire.check_messages(input_value, max_input_chars=self.max_input_chars)
            }
        else:
            input_fields = {"prompt": wire.check_prompt(input_value)}
        service = resolve_endpoint(kind, model=model, endpoint=endpoint)
        fields = {
            **input_fields,
            "stream": stream,
            **wire.sampling_fields(**sampling),
            **wire.check_extra_params(extra_params),
        }
        path = f"{API_PREFIX}/{kind}/{service}"
        return QianfanExchange(
            url=f"{self.base_url}{path}",
            path=f"{self._base_path}{path}",
            body=wire.encode_body(fields),
            headers={**self._headers, **wire.check_headers("extra_headers", extra_headers)},
            authenticator=self._auth,
            telemetry=describe(kind, model or endpoint, fields, url=self.base_url),
        )

    def _v2_exchange(
        self,
        kind: Kind,
        input_value: Any,
        *,
        stream: bool,
        model: Any,
        endpoint: Any,
        given: dict[str, Any],
        extra_headers: Any,
        params: dict[str, Any],
    ) -> Exchange:
        assert self._v2 is not None
        if endpoint is not None:
            raise InvalidParameterError(
                "endpoint",
                "is v1's: v2 has no endpoints; call a service you deployed by the model id the "
                "console shows for it, model='...'",
            )
        for name, instead in _V1_ONLY.items():
            if given[name] is not None:
                raise InvalidParameterError(name, f"is a v1 parameter; on v2 pass {instead}")
        v2_params = {name: value for name, value in given.items() if value is not None}
        v2_params.update(params)
        if extra_headers is not None:
            v2_params["extra_headers"] = extra_headers
        return self._v2.exchange(
            kind, stream=stream, model=check_v2_model(model), input_value=input_value,
            params=v2_params,
        )


def _check_version(api_version: str | None, is_v2: bool, method: str) -> None:
    """Credentials of one API version given for the other are refused, saying which is which."""
    if api_version == "v1" and is_v2:
        raise InvalidParameterError(
            "api_key",
            "is a v2 API key (bce-v3/...), but api_version='v1' was asked for: v1 takes api_key + "
            "secret_key, access_token, or access_key + secret_access_key",
        )
    if api_version == "v2" and not is_v2:
        raise InvalidParameterError(
            "api_key",
            f"api_version='v2' takes an API key starting bce-v3/ (from the Qianfan console); the "
            f"{method} credentials given are v1's",
        )
