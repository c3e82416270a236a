"""Qianfan authentication on the mock: issued access tokens (API v1's, and API v2's bearer
tokens from the IAM `BCE-BEARER` API) and `bce-auth-v1` signatures."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

import attrs
from aiohttp import web

from llmstreams.mock.bce_signature import (
    AUTH_VERSION,
    SignedRequest,
    parse_authorization,
    signature_matches,
)
from llmstreams.mock.credentials import MockCredentials

_BCE_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class TokenState(enum.Enum):
    VALID = "valid"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@attrs.frozen
class IssuedToken:
    access_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    session_key: str = attrs.field(repr=False)
    session_secret: str = attrs.field(repr=False)
    expires_in: int


@attrs.frozen
class IssuedBearerToken:
    """A `bce-v3/ALTAK-...` token and, in wall-clock seconds, when it was made and expires."""

    token: str = attrs.field(repr=False)
    created: int
    expires: int


TOKEN_KEY_ENV = "LLMSTREAMS_MOCK_TOKEN_KEY"
BEARER_PREFIX = "bce-v3/ALTAK-"


class TokenStore:
    """The access tokens this server issued, each with the moment it expires: API v1's
    (`issue`, `state`) and API v2's bearer tokens (`issue_bearer`, `bearer_state`).

    Tokens carry an HMAC of their expiry under `key`, so that worker processes sharing a port
    (and a key) accept each other's tokens, as the real service's front ends do.
    """

    def __init__(
        self, ttl: int, key: bytes | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._bearer_expiry: dict[str, float] = {}
        self._revoked_before = float("-inf")

    @property
    def ttl(self) -> int:
        """How long the tokens this store issues live, unless asked otherwise."""
        return self._ttl

    def issue(self) -> IssuedToken:
        issued_at = int(time.time())
        app_id = f"{secrets.randbelow(10**6)}-{secrets.randbelow(10**8)}"
        suffix = f"{self._ttl}.{issued_at + self._ttl}.{app_id}"
        token = IssuedToken(
            access_token=f"24.{self._seal(suffix)}.{suffix}",
            refresh_token=f"25.{secrets.token_hex(16)}.{suffix}",
            session_key=secrets.token_urlsafe(48),
            session_secret=secrets.token_hex(16),
            expires_in=self._ttl,
        )
        self._expiry[token.access_token] = self._clock() + self._ttl
        return token

    def state(self, access_token: str) -> TokenState:
        expiry = self._expiry.get(access_token)
        if expiry is not None:
            return TokenState.VALID if self._clock() < expiry else TokenState.EXPIRED
        return self._sibling_token_state(access_token)

    def issue_bearer(self, lifetime: int) -> IssuedBearerToken:
        """A bearer token living `lifetime` seconds."""
        created = int(time.time())
        expires = created + lifetime
        suffix = f"{secrets.token_hex(8)}-{lifetime}-{expires}"
        token = IssuedBearerToken(f"{BEARER_PREFIX}{suffix}/{self._seal(suffix)}", created, expires)
        self._bearer_expiry[token.token] = self._clock() + lifetime
        return token

    def bearer_state(self, token: str) -> TokenState:
        expiry = self._bearer_expiry.get(token)
        if expiry is not None:
            return TokenState.VALID if self._clock() < expiry else TokenState.EXPIRED
        suffix, _, seal = token.removeprefix(BEARER_PREFIX).partition("/")
        if not token.startswith(BEARER_PREFIX) or not _same(seal, self._seal(suffix)):
            return TokenState.UNKNOWN
        _, lifetime, expires = suffix.split("-")
        return self._sibling_expiry_state(int(lifetime), int(expires))

    def _seal(self, suffix: str) -> str:
        return hmac.new(self._key, suffix.encode(), hashlib.sha256).hexdigest()[:32]

    def _sibling_token_state(self, access_token: str) -> TokenState:
        """A token another worker with the same key issued: its own fields say when it expires."""
        version, _, rest = access_token.partition(".")
        seal, _, suffix = rest.partition(".")
        if version != "24" or not hmac.compare_digest(seal, self._seal(suffix)):
            return TokenState.UNKNOWN
        ttl, expires_at, _ = suffix.split(".", 2)
        return self._sibling_expiry_state(int(ttl), int(expires_at))

    def _sibling_expiry_state(self, ttl: int, expires_at: int) -> TokenState:
        if expires_at - ttl <= self._revoked_before or time.time() >= expires_at:
            return TokenState.EXPIRED
        return TokenState.VALID

    def expire_all(self) -> None:
        for expiry in (self._expiry, self._bearer_expiry):
            for token in expiry:
                expiry[token] = float("-inf")
        self._revoked_before = time.time()


def is_bce_authorization(request: web.BaseRequest) -> bool:
    return request.headers.get("Authorization", "").startswith(AUTH_VERSION + "/")


def bce_signature_accepted(request: web.BaseRequest, credentials: MockCredentials | None) -> bool:
    """Whether the request's `bce-auth-v1` Authorization header is well formed, unexpired and,
    when a secret access key is configured, signed with it.

    The signature is recomputed (by the mock's own code, `bce_signature`) over the request as
    received, with the headers it names.
    """
    parts = parse_authorization(request.headers.get("Authorization", ""))
    if parts is None:
        return False
    try:
        signed_at = datetime.strptime(parts.timestamp, _BCE_TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return False
    if (datetime.now(UTC) - signed_at).total_seconds() > parts.expiration_seconds:
        return False
    expected_access_key = credentials.access_key if credentials else None
    if expected_access_key is not None and not _same(parts.access_key, expected_access_key):
        return False
    secret_access_key = credentials.secret_access_key if credentials else None
    if secret_access_key is None:
        return True
    received = SignedRequest(
        method=request.method,
        path=request.path,
        query=tuple(request.query.items()),
        headers=tuple(request.headers.items()),
    )
    return signature_matches(parts, received, secret_access_key)


def _same(received: str, expected: str) -> bool:
    return hmac.compare_digest(received.encode(), expected.encode())
