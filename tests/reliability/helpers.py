"""What the reliability tests share: the vendors under test, faulty servers and a recording proxy.

Every server here listens on 127.0.0.1 and is reached over real sockets. The credentials are
distinctive strings, so that a search for them in logs, reprs and output files is meaningful.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from llmstreams import (
    Chunk,
    ChunkStream,
    Completion,
    DashScopeClient,
    Pool,
    QianfanClient,
    RetryPolicy,
    Timeout,
)
from llmstreams.mock import MockCredentials
from tests.support import FAST_RETRY, serving

API_KEY = "SECRET-apikey-7f3a"
SECRET_KEY = "SECRET-secretkey-91c4"
ACCESS_KEY = "SECRET-accesskey-2d6e"
SECRET_ACCESS_KEY = "SECRET-secretaccesskey-b85f"
DASHSCOPE_KEY = "sk-SECRET-dashscope-apikey-4e17"
CREDENTIAL_SECRETS = (API_KEY, SECRET_KEY, ACCESS_KEY, SECRET_ACCESS_KEY, DASHSCOPE_KEY)
MOCK_CREDENTIALS = MockCredentials(
    api_key=API_KEY,
    secret_key=SECRET_KEY,
    access_key=ACCESS_KEY,
    secret_access_key=SECRET_ACCESS_KEY,
    dashscope_api_key=DASHSCOPE_KEY,
)

USER = [{"role": "user", "content": "Tell me about the Great Wall"}]
PROMPT = "Tell me about the Great Wall"
QIANFAN_MODEL = "ERNIE-Speed-8K"
DASHSCOPE_MODEL = "billa-7b-sft-v1"
TOKEN_PATH = "/oauth/2.0/token"

Client = QianfanClient | DashScopeClient


def knobs(**values: object) -> dict[str, str]:
    """The mock's per-request behaviour header."""
    return {"X-Mock-Behaviour": "; ".join(f"{name}={value}" for name, value in values.items())}


@attrs.frozen
class Vendor:
    """One vendor client as the tests drive it, with its wire format for scripted servers.

    `auth`: "token" (Qianfan api_key/secret_key: access tokens fetched and cached), "signed"
    (Qianfan access_key/secret_access_key: bce-auth-v1 signatures) or "bearer" (DashScope).
    `route`: the mock's name for the route a generation goes to.
    """

    name: str
    auth: str
    route: str

    @property
    def is_qianfan(self) -> bool:
        return self.auth != "bearer"

    def client(
        self,
        base_url: str,
        *,
        pool: Pool | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = FAST_RETRY,
        max_retries: int | None = None,
    ) -> Client:
        settings: dict[str, Any] = {
            "base_url": base_url, "pool": pool, "timeout": timeout, "retry": retry,
            "max_retries": max_retries,
        }
        if self.auth == "token":
            return QianfanClient(api_key=API_KEY, secret_key=SECRET_KEY, **settings)
        if self.auth == "signed":
            return QianfanClient(
                access_key=ACCESS_KEY, secret_access_key=SECRET_ACCESS_KEY, **settings
            )
        return DashScopeClient(api_key=DASHSCOPE_KEY, **settings)

    def stream(self, client: Client, headers: dict[str, str] | None = None) -> ChunkStream:
        if isinstance(client, QianfanClient):
            return client.stream_chat(USER, model=QIANFAN_MODEL, extra_headers=headers)
        return client.stream_generate(PROMPT, model=DASHSCOPE_MODEL, extra_headers=headers)

    async def answer(self, client: Client, headers: dict[str, str] | None = None) -> Completion:
        """A non-stream call."""
        if isinstance(client, QianfanClient):
            return await client.chat(USER, model=QIANFAN_MODEL, extra_headers=headers)
        return await client.generate(PROMPT, model=DASHSCOPE_MODEL, extra_headers=headers)

    # The vendor's wire format, for servers that script their answers byte by byte.

    def payloads(self, pieces: Sequence[str], *, ended: bool = True) -> list[bytes]:
        """The data of one well-formed stream event per piece of text; the last one ends the
        generation unless `ended` is False."""
        payloads: list[bytes] = []
        so_far = ""
        for index, piece in enumerate(pieces):
            is_end = ended and index == len(pieces) - 1
            so_far += piece
            if self.is_qianfan:
                payload: dict[str, Any] = {
                    "id": "as-reliability", "object": "chat.completion", "created": 1700000000,
                    "sentence_id": index, "is_end": is_end, "is_truncated": False,
                    "result": piece, "need_clear_history": False,
                    "usage": {"prompt_tokens": 5, "completion_tokens": index + 1,
                              "total_tokens": index + 6},
                }
                if is_end:
                    payload["finish_reason"] = "normal"
            else:
                # DashScope's default (cumulative) mode: each event carries the whole text so far.
                payload = {
                    "output": {"text": so_far, "finish_reason": "stop" if is_end else "null"},
                    "usage": {"input_tokens": 5, "output_tokens": index + 1,
                              "total_tokens": index + 6},
                    "request_id": "reliability-request",
                }
            payloads.append(json.dumps(payload, ensure_ascii=False).encode())
        return payloads

    def events(self, pieces: Sequence[str], *, ended: bool = True) -> list[bytes]:
        """`payloads(pieces)` framed as the vendor's stream events."""
        return [
            self.data_event(payload, number=number)
            for number, payload in enumerate(self.payloads(pieces, ended=ended), start=1)
        ]

    def data_event(self, data: bytes, *, number: int = 1, event: str | None = None) -> bytes:
        """One event carrying `data` in the vendor's framing (`event` overrides its type)."""
        if self.is_qianfan:
            head = b"" if event is None else f"event: {event}\n".encode()
            return head + b"data: " + data + b"\n\n"
        kind = event or "result"
        return f"id:{number}\nevent:{kind}\n:HTTP_STATUS/200\n".encode() + b"data:" + data + b"\n\n"

    def whole_body(self, text: str) -> bytes:
        """A well-formed non-stream answer."""
        if self.is_qianfan:
            payload: dict[str, Any] = {
                "id": "as-reliability", "object": "chat.completion", "created": 1700000000,
                "result": text, "is_truncated": False, "need_clear_history": False,
                "finish_reason": "normal",
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        else:
            payload = {
                "output": {"text": text, "finish_reason": "stop"},
                "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8},
                "request_id": "reliability-request",
            }
        return json.dumps(payload).encode()


QIANFAN = Vendor("qianfan", "token", "qianfan.chat")
QIANFAN_SIGNED = Vendor("qianfan-aksk", "signed", "qianfan.chat")
DASHSCOPE = Vendor("dashscope", "bearer", "dashscope.generation")
VENDORS = (QIANFAN, DASHSCOPE)
ALL_AUTH = (QIANFAN, QIANFAN_SIGNED, DASHSCOPE)


def vendor_params(vendors: Sequence[Any] = VENDORS) -> pytest.MarkDecorator:
    """Parametrize `vendor` (the items may be `pytest.param`s of a Vendor, to mark one)."""
    return pytest.mark.parametrize("vendor", vendors, ids=lambda vendor: vendor.name)


async def read_all(stream: ChunkStream, received: list[Chunk]) -> None:
    """Read `stream` to its end inside `async with`, keeping every chunk in `received`."""
    async with stream:
        async for chunk in stream:
            received.append(chunk)


async def fault_free_pieces(vendor: Vendor, client: Client) -> list[str]:
    """The texts of the chunks of a fault-free run of the request the fault tests send."""
    received: list[Chunk] = []
    await read_all(vendor.stream(client), received)
    assert received and received[-1].is_end
    return [chunk.text for chunk in received]


# --- servers that misbehave at the TCP level -----------------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound to find it free, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TcpServer:
    """Accepts connections and counts them; `silent` keeps them open without writing a byte,
    otherwise each is closed at once."""

    def __init__(self, *, silent: bool) -> None:
        self.silent = silent
        self.accepted = 0
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.silent:
            self._writers.append(writer)
        else:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TcpServer]:
        async with tcp_server(self._accept) as self.url:
            try:
                yield self
            finally:
                # Before the server closes: since Python 3.12 its close waits for every connection.
                for writer in self._writers:
                    writer.close()


@asynccontextmanager
async def tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 running `handler` for each connection; yields its http URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


# --- an HTTP server whose generation answers the test scripts ------------------------------------


@attrs.frozen
class Scripted:
    """One scripted answer: the status, content type and the body in the pieces written."""

    parts: Sequence[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = attrs.field(factory=dict)


class ScriptedServer:
    """Answers the Qianfan token route with a fixed token and every other request with `script`.

    `generations` counts the requests that were not token requests.
    """

    TOKEN = "24.reliability-scripted-token"

    def __init__(self, script: Scripted | Callable[[int], Scripted]) -> None:
        self._script = script
        self.generations = 0
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.path == TOKEN_PATH:
            return web.json_response({"access_token": self.TOKEN, "expires_in": 2592000})
        self.generations += 1
        script = self._script if isinstance(self._script, Scripted) else self._script(self.generations)
        response = web.StreamResponse(status=script.status, headers=script.headers)
        response.content_type = script.content_type
        await response.prepare(request)
        for part in script.parts:
            await response.write(part)
        await response.write_eof()
        return response

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedServer]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        async with serving(app, backlog=1024) as self.url:
            yield self


# --- a proxy that records the secrets clients send and holds requests on demand ------------------

_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})


class RecordingProxy:
    """Forwards every request to `upstream` unchanged (Host included, so that bce signatures
    still verify) and streams the answer back.

    Records the access tokens the token endpoint issued and the ones requests carried, and
    every Authorization header sent. While `hold()` is on, generation requests wait at the
    proxy (counted in `held`) until `release()`.
    """

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self.url = ""
        self.issued_tokens: set[str] = set()
        self.sent_tokens: set[str] = set()
        self.authorizations: set[str] = set()
        self.held = 0
        self._gate = asyncio.Event()
        self._gate.set()
        self._held_changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    @property
    def secrets_seen(self) -> set[str]:
        signatures = {value.rsplit("/", 1)[-1] for value in self.authorizations}
        return self.issued_tokens | self.sent_tokens | self.authorizations | signatures

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def wait_held(self, count: int) -> None:
        async with asyncio.timeout(10):
            while self.held < count:
                await self._held_changed.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if "access_token" in request.query:
            self.sent_tokens.add(request.query["access_token"])
        if "Authorization" in request.headers:
            self.authorizations.add(request.headers["Authorization"])
        if request.path != TOKEN_PATH and not self._gate.is_set():
            self.held += 1
            self._held_changed.set()
            self._held_changed = asyncio.Event()
            await self._gate.wait()
        headers = {
            name: value for name, value in request.headers.items()
            if name.lower() not in _HOP_BY_HOP
        }
        assert self._session is not None
        async with self._session.request(
            request.method, self._upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    response.headers[name] = value
            await response.prepare(request)
            if request.path == TOKEN_PATH:
                answer = await upstream.read()
                token = json.loads(answer).get("access_token")
                if isinstance(token, str):
                    self.issued_tokens.add(token)
                await response.write(answer)
            else:
                try:
                    async for data in upstream.content.iter_any():
                        await response.write(data)
                except aiohttp.ClientPayloadError:
                    # The upstream broke its body off: break ours off too.
                    assert request.transport is not None
                    request.transport.close()
                    return response
            await response.write_eof()
        return response

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RecordingProxy]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        try:
            yield self
        finally:
            self._gate.set()
            await runner.cleanup()
            await self._session.close()

