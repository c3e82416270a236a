"""`BaseClient`: what every vendor client shares (pool ownership, timeouts, retries)."""

from __future__ import annotations

from typing import Self
from urllib.parse import urlsplit

from llmstreams.calls import Call
from llmstreams.errors import InvalidParameterError, redact_url
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.origin import caller_origin, warn_left_open
from llmstreams.pool import Pool, resolve_retry
from llmstreams.streams import ChunkStream
from llmstreams.transport import Exchange
from llmstreams.types import Completion
from llmstreams.validation import check_encodable, check_optional


def validate_base_url(base_url: str) -> str:
    """`base_url` without a trailing slash, or `InvalidParameterError` (which never shows a
    password the URL carries)."""
    rule = "must be an http:// or https:// URL such as https://host[:port]"
    if not isinstance(base_url, str):
        raise InvalidParameterError("base_url", rule, type(base_url).__name__)
    check_encodable("base_url", base_url)
    try:
        parts = urlsplit(base_url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise InvalidParameterError("base_url", rule, redact_url(base_url)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise InvalidParameterError("base_url", rule, redact_url(base_url))
    if parts.query or parts.fragment:
        raise InvalidParameterError("base_url", "must not carry a query or fragment", redact_url(base_url))
    if any(character.isspace() or not character.isprintable() for character in base_url):
        raise InvalidParameterError("base_url", "must not contain spaces or control characters")
    return base_url.rstrip("/")


class BaseClient:
    """Pool, timeout and retry handling shared by the vendor clients.

    A client given `pool=` uses it and leaves it open; a client without one makes its own
    pool and closes it in `close()` / at the end of `async with`. `timeout`, `retry` and
    `max_retries` default to the pool's.
    """

    provider: str
    """The name chunks and errors carry (`qianfan`, `dashscope`, `deepseek`, ...)."""

    def __init__(
        self,
        *,
        base_url: str,
        pool: Pool | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
    ) -> None:
        self.base_url = validate_base_url(base_url)
        check_optional("pool", pool, Pool)
        check_optional("timeout", timeout, Timeout)
        check_optional("retry", retry, RetryPolicy)
        self._owns_pool = pool is None
        self._pool = pool if pool is not None else Pool(timeout=timeout, retry=retry)
        self.timeout = timeout if timeout is not None else self._pool.timeout
        self.retry = resolve_retry(retry if retry is not None else self._pool.retry, max_retries)
        self._origin = caller_origin()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} base_url={redact_url(self.base_url)!r}>"

    @property
    def pool(self) -> Pool:
        return self._pool

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client's own pool; a shared pool is left to its owner."""
        if self._owns_pool:
            await self._pool.close()

    def __del__(self) -> None:
        # `_origin` is set last in __init__: a client whose construction failed holds nothing.
        if hasattr(self, "_origin") and self._owns_pool and self._pool.in_use:
            self._pool.close_from_finalizer()
            name = type(self).__name__
            warn_left_open(
                name, self._origin,
                f"use `async with {name}(...) as client:` or `await client.close()`", self,
            )

    def stream_call(self, call: Call) -> ChunkStream:
        """Stream the generation `call` describes, in this client's own API (see `Call`)."""
        return self._stream(self._call_exchange(call, stream=True))

    async def complete_call(self, call: Call) -> Completion:
        """The whole answer to `call`, from one non-stream request."""
        return await self._complete(self._call_exchange(call, stream=False))

    def _call_exchange(self, call: Call, *, stream: bool) -> Exchange:
        raise NotImplementedError

    def _stream(self, exchange: Exchange) -> ChunkStream:
        return ChunkStream(self._pool, exchange, timeout=self.timeout, retry=self.retry)

    async def _complete(self, exchange: Exchange) -> Completion:
        async with self._stream(exchange) as stream:
            return await stream.collect()
