"""The state one mock server's routes share: knobs, credentials, tokens, counters, shutdown."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Collection
from typing import Generic

import attrs
from aiohttp import web

from llmstreams.mock.behaviour import BEHAVIOUR_HEADER, Behaviour, parse_behaviour_header
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.qianfan_auth import TokenStore
from llmstreams.mock.stats import SharedCounters, StatsRecorder
from llmstreams.mock.text import request_digest
from llmstreams.mock.vendor_errors import CodeScheme, CodeT


class ServerClosing(Exception):
    """The server is stopping: whatever the handler was waiting for will not come."""


class Pacer:
    """Wakes paced streams: one timer per millisecond tick, shared by every stream due in it.

    Thousands of paced streams would otherwise each keep a timer (and a timeout context) per
    event; a tick is rounded up, so a stream is never woken early and at most 1 ms late.
    """

    def __init__(self) -> None:
        self._ticks: dict[int, list[asyncio.Future[None]]] = {}
        self._closing = False

    def until(self, when: float) -> asyncio.Future[None]:
        """A future done at loop time `when`; it fails with ServerClosing if the server stops."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._closing:
            waiter.set_exception(ServerClosing())
            return waiter
        tick = math.ceil(when * 1000)
        waiters = self._ticks.get(tick)
        if waiters is None:
            waiters = self._ticks[tick] = []
            loop.call_at(tick / 1000, self._wake, tick)
        waiters.append(waiter)
        return waiter

    def _wake(self, tick: int) -> None:
        for waiter in self._ticks.pop(tick, ()):
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        self._closing = True
        for waiters in self._ticks.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(ServerClosing())
        self._ticks.clear()


@attrs.frozen
class Received(Generic[CodeT]):
    """A generation request as its route starts on it, in the codes of the route's vendor."""

    body: bytes
    digest: bytes
    """Seeds the answer and counts the attempts: the path and the body, less the fields that
    shape only how the answer is sent."""
    behaviour: Behaviour
    injected_code: CodeT | None
    """The failure `fail_code` / `http_status` inject (on the attempts `failure_due` says)."""
    mid_stream_code: CodeT | None
    """The error `error_after` sends mid-stream; None without that knob."""


class MockContext:
    def __init__(
        self,
        *,
        behaviour: Behaviour,
        credentials: MockCredentials | None,
        token_ttl: int,
        trigger_phrase: str,
        token_key: bytes | None = None,
        shared_stats: SharedCounters | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.credentials = credentials
        self.trigger_phrase = trigger_phrase
        self.stats = StatsRecorder(shared_stats)
        self.tokens = TokenStore(token_ttl, token_key)
        self._attempts: Counter[bytes] = Counter()
        self._closing = asyncio.Event()
        self.pacer = Pacer()

    def set_behaviour(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self._attempts.clear()

    def behaviour_for(self, request: web.BaseRequest) -> Behaviour:
        """The server-wide knobs overridden by the request's header; raises BehaviourError."""
        header = request.headers.get(BEHAVIOUR_HEADER)
        if header is None:
            return self.behaviour
        return parse_behaviour_header(header, self.behaviour)

    async def receive(
        self,
        request: web.Request,
        route: str,
        codes: CodeScheme[CodeT],
        *,
        stream_only_fields: Collection[str],
    ) -> Received[CodeT]:
        """Count a generation request under `route`, read it and its knobs, then wait out its
        `response_delay`. A knob's code the vendor has no equivalent for raises at once."""
        self.stats.request(route)
        body = await request.read()
        digest = request_digest(request.path, body, ignored_fields=stream_only_fields)
        behaviour = self.behaviour_for(request)
        injected_code = codes.injected(behaviour.fail_code, behaviour.http_status)
        mid_stream_code = None if behaviour.error_after is None else codes.of(behaviour.error_code)
        await self.pause(behaviour.response_delay)
        return Received(body, digest, behaviour, injected_code, mid_stream_code)

    def failure_due(self, request_key: bytes, behaviour: Behaviour) -> bool:
        """Whether this attempt of the request gets the injected failure.

        Attempts are counted per request key only while a failure is configured, so the first
        `fail_times` attempts made under `fail_code` / `http_status` fail and later ones succeed.
        """
        if behaviour.fail_code is None and behaviour.http_status is None:
            return False
        self._attempts[request_key] += 1
        return self._attempts[request_key] <= behaviour.fail_times

    def contains_trigger(self, text: str) -> bool:
        return bool(self.trigger_phrase) and self.trigger_phrase in text

    async def pause(self, seconds: float | None) -> None:
        """Wait `seconds` (None: forever); raises ServerClosing as soon as the server stops."""
        if seconds == 0 and not self._closing.is_set():
            return
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return
        raise ServerClosing

    def begin_closing(self) -> None:
        self._closing.set()
        self.pacer.close()
