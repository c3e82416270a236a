"""Qianfan API v2 bearer tokens made from an IAM access key pair (Baidu's `BCE-BEARER` API).

Enterprise accounts hold IAM access key / secret key pairs rather than console API keys. The
IAM service turns a pair into a short-lived `bce-v3/...` token, which API v2 takes as a bearer
key: `GET https://iam.bj.baidubce.com/v1/BCE-BEARER/token?expireInSeconds=N`, signed with
`bce-auth-v1` (https://ai.baidu.com/ai-doc/WENXINWORKSHOP/Um2wxbaps), answers `userId`,
`token`, `status`, `createTime` and `expireTime` (https://cloud.baidu.com/doc/WENXINWORKSHOP/s/vm40x9q45).
Errors are IAM's `{"code", "message", "requestId"}` (https://intl.cloud.baidu.com/doc/IAM/s/Rjx4d0rxo-en).

`BearerToken` is a key source for `OpenAICompatibleClient(api_key=...)`: each generation asks
its `session` for the key. The token is cached in the pool as API v1's access tokens are
(`auth.TokenCache`: one fetch however many requests wait, renewed before it expires, and once
more when the service refuses it).
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

from llmstreams.client import validate_base_url
from llmstreams.errors import (
    APIError,
    AuthenticationError,
    InvalidParameterError,
    ProtocolError,
    redact_url,
    snippet,
)
from llmstreams.options import Timeout
from llmstreams.pool import Pool
from llmstreams.qianfan.auth import (
    AccessToken,
    TokenCache,
    TokenWaiter,
    decode_token_answer,
    raise_if_busy,
    request_token,
)
from llmstreams.qianfan.signing import bce_authorization, bce_timestamp
from llmstreams.qianfan.wire import JSON_CONTENT_TYPE, PROVIDER
from llmstreams.validation import check_int, check_text

logger = logging.getLogger("llmstreams")

IAM_URL: Final = "https://iam.bj.baidubce.com"
TOKEN_PATH: Final = "/v1/BCE-BEARER/token"
MAX_LIFETIME: Final = 2_592_000
"""The longest a token lives, 30 days; IAM shortens longer requests to it."""
DEFAULT_LIFETIME: Final = 86_400
SIGNED_HEADERS: Final = ("host", "x-bce-date")
SIGNATURE_EXPIRATION_SECONDS: Final = 1800
# IAM's codes for credentials it does not take (its common error codes).
_REFUSALS: Final = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "InvalidHTTPAuthHeader", "SignatureDoesNotMatch",
     "RequestExpired"}
)


class BearerToken:
    """API v2 bearer tokens from an IAM access key and secret key, fetched when needed.

        client = OpenAICompatibleClient(vendor="qianfan", api_key=BearerToken(ak, sk))

    `iam_url` is where the IAM service lives; `lifetime` the seconds each token is asked to
    live (at most 30 days). The repr shows neither key.
    """

    __slots__ = ("iam_url", "lifetime", "_access_key", "_secret_key", "_cache_key")

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        iam_url: str = IAM_URL,
        lifetime: int = DEFAULT_LIFETIME,
    ) -> None:
        self._access_key = _check_key("access_key", access_key)
        self._secret_key = _check_key("secret_key", secret_key)
        try:
            self.iam_url = validate_base_url(iam_url)
        except InvalidParameterError as error:
            raise InvalidParameterError("iam_url", error.rule) from None
        self.lifetime = check_int("lifetime", lifetime, low=1, high=MAX_LIFETIME)
        # The pool keys its token cache by a digest, so the pool never holds the secret.
        digest = hashlib.sha256(f"{self._access_key}\0{self._secret_key}".encode()).hexdigest()
        self._cache_key = ("llmstreams.qianfan.bearer_token", self.iam_url, self.lifetime, digest)

    def __repr__(self) -> str:
        return f"<BearerToken {redact_url(self.iam_url)} lifetime={self.lifetime}s>"

    def session(self, pool: Pool, timeout: Timeout) -> BearerTokenSession:
        """The key source of one generation: its token comes from `pool`'s cache, or is
        fetched within `timeout`."""
        return BearerTokenSession(self, pool, timeout)

    async def fetch(self, pool: Pool, timeout: Timeout) -> AccessToken:
        """A new token from the IAM service (what the cache calls when it needs one)."""
        url = self.iam_url + TOKEN_PATH
        parts = urlsplit(url)
        query = {"expireInSeconds": str(self.lifetime)}
        date = bce_timestamp(datetime.now(UTC))
        headers = {"Host": parts.netloc.rpartition("@")[2], "x-bce-date": date}
        headers["Authorization"] = bce_authorization(
            access_key=self._access_key,
            secret_access_key=self._secret_key,
            method="GET",
            path=parts.path,
            query=query,
            headers=headers,
            timestamp=date,
            expiration_seconds=SIGNATURE_EXPIRATION_SECONDS,
            signed_headers=SIGNED_HEADERS,
        )
        logger.debug("%s: fetching a bearer token from %s", PROVIDER, redact_url(url))
        head, body = await request_token(
            pool, timeout, "GET", url, params=query,
            headers={**headers, "Accept": JSON_CONTENT_TYPE}, wanted="bearer token",
            purpose="a bearer token",
        )
        token = parse_bearer_response(head.status, body, head.retry_after, now=time.monotonic())
        logger.info("%s: fetched a bearer token from %s", PROVIDER, redact_url(url))
        return token

    def cache(self, pool: Pool) -> TokenCache:
        """The pool's cache of this key pair's tokens."""
        return pool.shared(self._cache_key, TokenCache)


class BearerTokenSession:
    """One generation's use of a `BearerToken`: the key for each attempt, and what to do
    when the service refuses it."""

    __slots__ = ("_source", "_pool", "_timeout", "_cache", "_waiter", "_used")

    def __init__(self, source: BearerToken, pool: Pool, timeout: Timeout) -> None:
        self._source = source
        self._pool = pool
        self._timeout = timeout
        self._cache = source.cache(pool)
        self._waiter = TokenWaiter()
        self._used: AccessToken | None = None

    def __repr__(self) -> str:
        return f"<BearerTokenSession {self._source!r}>"

    async def key(self) -> str:
        """The bearer token to send now: the cached one, or one fetched for it."""
        self._used = await self._cache.get(self._fetch, self._waiter)
        return self._used.value

    def rejected(self) -> bool:
        """The service refused the key: drop it (unless already replaced) and say to send
        again with a new one. False when no token was sent."""
        if self._used is None:
            return False
        self._cache.invalidate(self._used)
        self._used = None
        return True

    async def _fetch(self) -> AccessToken:
        return await self._source.fetch(self._pool, self._timeout)


def parse_bearer_response(
    status: int, body: bytes, retry_after: float | None, *, now: float
) -> AccessToken:
    """The token from the IAM service's answer, or the error it stands for."""
    payload = decode_token_answer(body)
    fields = payload if isinstance(payload, dict) else {}
    code = fields.get("code") if isinstance(fields.get("code"), str) else None
    detail = ": ".join(str(part) for part in (code, fields.get("message")) if part) or snippet(body)
    raise_if_busy("the IAM token endpoint", status, detail, retry_after, code=code)
    if status in (401, 403) or code in _REFUSALS:
        raise AuthenticationError(
            f"the IAM token endpoint refused access_key/secret_key ({detail})",
            code=code, http_status=status, provider=PROVIDER,
        )
    if status != 200:
        raise APIError(
            f"the IAM token endpoint answered HTTP {status}: {detail}",
            code=code, http_status=status, provider=PROVIDER,
        )
    value = fields.get("token")
    if not isinstance(value, str) or not value:
        raise ProtocolError(
            f"the IAM token endpoint answered HTTP 200 without a token: {snippet(body)}",
            provider=PROVIDER,
        )
    if fields.get("status", "enable") != "enable":
        raise AuthenticationError(
            "the IAM token endpoint issued a disabled token: check that the access key is "
            "enabled", http_status=status, provider=PROVIDER,
        )
    return AccessToken.issued(value, _lifetime(fields), now)


def _lifetime(fields: dict[str, object]) -> float | None:
    """Seconds the token lives, from the service's own `createTime` and `expireTime` (so the
    local clock's error does not count); None when they cannot be read."""
    created, expires = _time(fields.get("createTime")), _time(fields.get("expireTime"))
    if created is None or expires is None or expires <= created:
        return None
    return (expires - created).total_seconds()


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _check_key(field: str, value: object) -> str:
    key = check_text(field, value).strip()
    if any(character.isspace() or not character.isprintable() for character in key):
        raise InvalidParameterError(field, "must not contain spaces or control characters")
    return key
