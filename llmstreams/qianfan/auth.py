"""Qianfan authentication: which credentials a client uses, access tokens, AK/SK signatures.

API v1 takes three methods, exactly one per client (API v2's `bce-v3/` keys are bearer tokens
of the OpenAI-compatible client, and are refused here, naming it):

- `api_key` + `secret_key`: an access token is fetched from `/oauth/2.0/token`, cached in the
  pool (shared by every client and request of that pool), renewed before it runs out and
  after the service calls it invalid or expired (codes 110/111).
- `access_token`: a token the caller fetched, used as it is (it cannot be renewed).
- `access_key` + `secret_access_key`: every attempt is signed afresh (`bce-auth-v1`).

Nothing here logs or repeats a credential: reprs name the method only, and errors quote the
service's messages, never request URLs (the token request carries the secret in its query).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Protocol
from urllib.parse import urlsplit

import aiohttp
import attrs

from llmstreams.errors import (
    APIError,
    AuthenticationError,
    InvalidParameterError,
    LLMStreamsError,
    ProtocolError,
    RateLimitError,
    ServerError,
    redact_url,
    snippet,
)
from llmstreams.options import Timeout
from llmstreams.pool import Pool, connect_timeout
from llmstreams.qianfan.signing import bce_authorization, bce_timestamp
from llmstreams.qianfan.wire import JSON_CONTENT_TYPE, PROVIDER, TOKEN_ERROR_CODES
from llmstreams.transport import (
    ResponseHead,
    is_redirect,
    read_head,
    redirect_error,
    request_failure,
)

logger = logging.getLogger("llmstreams")

V2_KEY_PREFIX: Final = "bce-v3/"
V2_INSTEAD: Final = (
    "QianfanClient speaks the legacy API v1; API v2 is OpenAI-compatible: "
    "OpenAICompatibleClient(vendor='qianfan') or llmstreams.client_for('qianfan')"
)
API_KEY: Final = "api_key/secret_key"
ACCESS_TOKEN: Final = "access_token"
ACCESS_KEY: Final = "access_key/secret_access_key"

_FIELDS_BY_METHOD: Final[dict[str, tuple[str, ...]]] = {
    API_KEY: ("api_key", "secret_key"),
    ACCESS_TOKEN: ("access_token",),
    ACCESS_KEY: ("access_key", "secret_access_key"),
}

# Environment variables, as (method, field -> variable) layouts tried in order. The official SDK
# names the app key pair QIANFAN_AK/QIANFAN_SK, and the AK/SK secret QIANFAN_SECRET_KEY, which
# this library's own names use for the app secret: the meaning follows from which partner is set.
ENV_LAYOUTS: Final[tuple[tuple[str, dict[str, str]], ...]] = (
    (API_KEY, {"api_key": "QIANFAN_API_KEY", "secret_key": "QIANFAN_SECRET_KEY"}),
    (API_KEY, {"api_key": "QIANFAN_AK", "secret_key": "QIANFAN_SK"}),
    (ACCESS_TOKEN, {"access_token": "QIANFAN_ACCESS_TOKEN"}),
    (ACCESS_KEY, {"access_key": "QIANFAN_ACCESS_KEY", "secret_access_key": "QIANFAN_SECRET_ACCESS_KEY"}),
    (ACCESS_KEY, {"access_key": "QIANFAN_ACCESS_KEY", "secret_access_key": "QIANFAN_SECRET_KEY"}),
)

_CHOICES: Final = (
    "api_key and secret_key, or access_token, or access_key and secret_access_key"
)
_ENV_CHOICES: Final = (
    "QIANFAN_API_KEY and QIANFAN_SECRET_KEY, or QIANFAN_ACCESS_TOKEN, "
    "or QIANFAN_ACCESS_KEY and QIANFAN_SECRET_ACCESS_KEY"
)

# Signed on every AK/SK request; the service requires at least host.
SIGNED_HEADERS: Final = ("content-type", "host", "x-bce-date")
SIGNATURE_EXPIRATION_SECONDS: Final = 1800

# Renew a token when less than this share of its lifetime is left, but at most a day before
# and at least a minute before it runs out (so a clock or network delay cannot outrun it).
_REFRESH_SHARE: Final = 0.1
_REFRESH_MARGIN_MAX: Final = 86_400.0
_REFRESH_MARGIN_MIN: Final = 60.0
# The wait for the token endpoint when the client's Timeout sets neither first_chunk nor total.
_TOKEN_WAIT_FALLBACK: Final = 60.0


@attrs.frozen(slots=True, repr=False)
class Credentials:
    """The one authentication method a client uses, with its secrets (never shown)."""

    method: str
    values: Mapping[str, str]
    source: str

    def __repr__(self) -> str:
        return f"<Credentials {self.method} from {self.source}>"


def resolve_credentials(given: Mapping[str, str | None], environ: Mapping[str, str]) -> Credentials:
    """The credentials from the arguments, or from the environment when none were given."""
    passed = {field: value for field, value in given.items() if value is not None}
    if passed:
        return _from_arguments(passed)
    return _from_environment(environ)


def is_v2_key(api_key: str | None) -> bool:
    """Whether `api_key` is a Qianfan v2 API key (the console's `bce-v3/ALTAK-...`)."""
    return isinstance(api_key, str) and api_key.strip().startswith(V2_KEY_PREFIX)


def _from_arguments(passed: Mapping[str, str]) -> Credentials:
    for field, value in passed.items():
        if not isinstance(value, str) or not value.strip():
            raise InvalidParameterError(field, "must be a non-empty string")
    if is_v2_key(passed.get("api_key")):
        raise InvalidParameterError("api_key", f"is a Qianfan v2 key (bce-v3/...); {V2_INSTEAD}")
    methods = [
        method for method, fields in _FIELDS_BY_METHOD.items() if any(f in passed for f in fields)
    ]
    if len(methods) > 1:
        raise InvalidParameterError(
            ", ".join(passed), f"give the credentials of one authentication method only: {_CHOICES}"
        )
    method = methods[0]
    fields = _FIELDS_BY_METHOD[method]
    missing = [field for field in fields if field not in passed]
    if missing:
        given = ", ".join(field for field in fields if field in passed)
        raise InvalidParameterError(
            missing[0], f"required with {given}: {' and '.join(fields)} go together"
        )
    return Credentials(method, dict(passed), "arguments")


def _from_environment(environ: Mapping[str, str]) -> Credentials:
    def is_set(variable: str) -> bool:
        return bool(environ.get(variable, "").strip())

    complete: dict[str, dict[str, str]] = {}
    partial: list[tuple[list[str], list[str]]] = []
    for method, layout in ENV_LAYOUTS:
        present = [variable for variable in layout.values() if is_set(variable)]
        if len(present) == len(layout):
            complete.setdefault(method, layout)
        elif present:
            partial.append((present, [v for v in layout.values() if not is_set(v)]))
    if len(complete) > 1:
        variables = sorted({v for layout in complete.values() for v in layout.values()})
        raise InvalidParameterError(
            ", ".join(variables),
            "environment variables of more than one authentication method are set; pass the "
            f"credentials as arguments or leave one method's variables: {_ENV_CHOICES}",
        )
    if not complete and is_v2_key(environ.get("QIANFAN_API_KEY")):
        raise InvalidParameterError(
            "QIANFAN_API_KEY", f"holds a Qianfan v2 key (bce-v3/...); {V2_INSTEAD}"
        )
    if complete:
        ((method, layout),) = complete.items()
        values = {field: environ[variable].strip() for field, variable in layout.items()}
        return Credentials(method, values, "environment")
    if partial:
        present, missing = partial[0]
        raise InvalidParameterError(
            missing[0],
            f"environment variable missing: {', '.join(present)} is set without "
            f"{' and '.join(missing)}",
        )
    raise InvalidParameterError(
        "api_key", f"no credentials: pass {_CHOICES}, or set {_ENV_CHOICES}"
    )


@attrs.frozen(slots=True)
class AccessToken:
    """A fetched token and, in `time.monotonic()` seconds, when to renew it and when it expires."""

    value: str = attrs.field(repr=False)
    refresh_at: float
    expires_at: float

    @classmethod
    def issued(cls, value: str, lifetime: float | None, now: float) -> AccessToken:
        if lifetime is None:
            return cls(value, float("inf"), float("inf"))
        margin = max(_REFRESH_MARGIN_MIN, min(lifetime * _REFRESH_SHARE, _REFRESH_MARGIN_MAX))
        if margin >= lifetime:
            # A short-lived token: renewed late in its life rather than before every request.
            margin = lifetime * _REFRESH_SHARE
        return cls(value, now + lifetime - margin, now + lifetime)


@attrs.frozen(slots=True, repr=False)
class Authorization:
    """What one attempt adds to its request; `token` is the access token it used, if any."""

    params: Mapping[str, str]
    headers: Mapping[str, str]
    token: AccessToken | None = None

    def __repr__(self) -> str:
        return f"<Authorization params=[{', '.join(self.params)}] headers=[{', '.join(self.headers)}]>"


class Authenticator(Protocol):
    method: str
    rejection_hints: Mapping[int, str]
    """What to tell the user when the service refuses the credentials with these error codes."""

    async def authorize(self, path: str, waiter: TokenWaiter | None = None) -> Authorization:
        """What one attempt adds to its request; `waiter` is the generation's (see
        `TokenWaiter`), for the methods that fetch tokens."""

    def recover(self, error: APIError, used: Authorization | None) -> bool:
        """Whether sending again may help after `error` (the attempt used `used`)."""


class TokenWaiter:
    """One generation's place among the waiters for a token.

    When fetching fails, the transport retries each generation that waited; those retries are
    shared as the first fetch was: a generation's n-th try takes the n-th fetch of the current
    run of failures, joining it if another generation started it already. So 200 generations
    and a failing token endpoint cause 1 + max_retries fetches, not one per generation.
    `taken` is the position in that run of the next fetch this generation will take.
    """

    __slots__ = ("run", "taken")

    def __init__(self) -> None:
        self.run = -1
        self.taken = 0

    def __repr__(self) -> str:
        return f"<TokenWaiter run={self.run} taken={self.taken}>"


_MAX_FAILED_FETCHES_KEPT: Final = 32


class TokenCache:
    """The access token of one (base URL, API key, secret key), shared through the pool.

    Single-flight: however many requests need a token at once, one fetch runs and they all
    await it, and their retries share the fetches after it (see `TokenWaiter`). A token is
    dropped on a 110/111 only if it is still the cached one, so a burst of requests failing
    with the same old token causes a single renewal.
    """

    __slots__ = ("_token", "_run", "_fetches", "_first")

    def __init__(self) -> None:
        self._token: AccessToken | None = None
        # The current run of fetches since the last success: a number, and its fetches (the
        # last one may be running), of which the first `_first` were dropped to bound memory.
        self._run = 0
        self._fetches: list[asyncio.Future[AccessToken]] = []
        self._first = 0

    def __repr__(self) -> str:
        state = "empty" if self._token is None else "holding a token"
        fetching = bool(self._fetches) and not self._fetches[-1].done()
        return f"<TokenCache {state}{', fetching' if fetching else ''}>"

    async def get(
        self, fetch: Callable[[], Awaitable[AccessToken]], waiter: TokenWaiter | None = None
    ) -> AccessToken:
        token = self._token
        if token is not None and time.monotonic() < token.refresh_at:
            return token
        waiter = waiter if waiter is not None else TokenWaiter()
        fetching = self._take(fetch, waiter)
        try:
            # Shielded: a caller that gives up must not cancel the fetch the others await.
            return await asyncio.shield(fetching)
        except LLMStreamsError as error:
            if token is not None and self._token is token and time.monotonic() < token.expires_at:
                logger.warning(
                    "%s: could not renew the access token, using the current one until it "
                    "expires: %s", PROVIDER, error,
                )
                return token
            raise

    def _take(
        self, fetch: Callable[[], Awaitable[AccessToken]], waiter: TokenWaiter
    ) -> asyncio.Future[AccessToken]:
        """The fetch `waiter` awaits now: its next one in the current run, or a new one."""
        fetches = self._fetches
        if fetches and (fetches[-1].get_loop() is not asyncio.get_running_loop() or (
            fetches[-1].done() and not fetches[-1].cancelled() and fetches[-1].exception() is None
        )):
            # The last fetch succeeded (its token needs renewing now) or ran on a closed loop.
            self._start_run()
            fetches = self._fetches
        if waiter.run != self._run:
            # New to this run: join the running fetch, if any; ended failures are not its own.
            waiter.run = self._run
            running = bool(fetches) and not fetches[-1].done()
            waiter.taken = self._first + len(fetches) - (1 if running else 0)
        position = max(waiter.taken, self._first)
        waiter.taken = position + 1
        index = position - self._first
        if index < len(fetches) and not fetches[index].cancelled():
            return fetches[index]
        started = asyncio.ensure_future(fetch())
        started.add_done_callback(self._fetched)
        fetches.append(started)
        if len(fetches) > _MAX_FAILED_FETCHES_KEPT:
            del fetches[0]
            self._first += 1
        waiter.taken = self._first + len(fetches)
        return started

    def _start_run(self) -> None:
        self._run += 1
        self._fetches = []
        self._first = 0

    def invalidate(self, token: AccessToken) -> None:
        """Forget `token` after the service rejected it, unless it was already replaced."""
        if self._token is token:
            self._token = None

    def _fetched(self, fetching: asyncio.Future[AccessToken]) -> None:
        if not fetching.cancelled() and fetching.exception() is None:
            self._token = fetching.result()


def token_cache_key(base_url: str, api_key: str, secret_key: str) -> tuple[str, str, str]:
    """The pool key of a token cache: a digest, so the pool never holds the secret as a key."""
    digest = hashlib.sha256(f"{api_key}\0{secret_key}".encode()).hexdigest()
    return ("llmstreams.qianfan.access_token", base_url, digest)


class TokenAuthenticator:
    """Access-token auth from an API key and secret key, with the token cached in the pool."""

    method: str = API_KEY
    # A 110/111 only reaches the user when a freshly fetched token was refused as well.
    rejection_hints: Mapping[int, str] = dict.fromkeys(
        TOKEN_ERROR_CODES,
        "A freshly fetched access token was refused too: check that the app of api_key may "
        "use this service",
    )

    def __init__(self, pool: Pool, base_url: str, api_key: str, secret_key: str, timeout: Timeout) -> None:
        self._pool = pool
        self._token_url = f"{base_url}/oauth/2.0/token"
        self._api_key = api_key
        self._secret_key = secret_key
        self._timeout = timeout
        self._cache = pool.shared(token_cache_key(base_url, api_key, secret_key), TokenCache)

    def __repr__(self) -> str:
        return f"<TokenAuthenticator {redact_url(self._token_url)}>"

    async def authorize(self, path: str, waiter: TokenWaiter | None = None) -> Authorization:
        token = await self._cache.get(self._fetch, waiter)
        return Authorization({"access_token": token.value}, {}, token)

    def recover(self, error: APIError, used: Authorization | None) -> bool:
        if error.code not in TOKEN_ERROR_CODES or used is None or used.token is None:
            return False
        self._cache.invalidate(used.token)
        return True

    async def _fetch(self) -> AccessToken:
        url = self._token_url
        params = {
            "grant_type": "client_credentials",
            "client_id": self._api_key,
            "client_secret": self._secret_key,
        }
        logger.debug("%s: fetching an access token from %s", PROVIDER, redact_url(url))
        head, body = await request_token(
            self._pool, self._timeout, "POST", url, params=params,
            headers={"Accept": JSON_CONTENT_TYPE}, wanted="access token",
            purpose="an access token",
        )
        token = parse_token_response(head.status, body, head.retry_after, now=time.monotonic())
        logger.info("%s: fetched an access token from %s", PROVIDER, redact_url(url))
        return token


async def request_token(
    pool: Pool,
    timeout: Timeout,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    wanted: str,
    purpose: str,
    params: Mapping[str, str] | None = None,
) -> tuple[ResponseHead, bytes]:
    """The status, headers and body of a token endpoint's answer, within the client's
    first-chunk or total timeout. Never redirected, since the request carries credentials;
    errors name `url` without its query, `wanted` ("access token") and `purpose` ("an
    access token")."""
    wait, phase = _token_wait(timeout)
    try:
        async with asyncio.timeout(wait):
            async with pool.session().request(
                method, url, params=params, headers=headers, allow_redirects=False,
                proxy=pool.proxy_for(url), timeout=connect_timeout(timeout.connect),
            ) as response:
                head = read_head(response)
                if is_redirect(head.status):
                    raise redirect_error(
                        head.status, head.headers.get("Location", ""),
                        where=redact_url(url), provider=PROVIDER,
                    )
                return head, await response.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        raise request_failure(
            error, where=redact_url(url), provider=PROVIDER, timeout_phase=phase,
            wanted=wanted, purpose=f" for {purpose}",
        ) from None


def _token_wait(timeout: Timeout) -> tuple[float, str]:
    limits = [
        (seconds, phase)
        for seconds, phase in ((timeout.first_chunk, "first_chunk"), (timeout.total, "total"))
        if seconds is not None
    ]
    return min(limits) if limits else (_TOKEN_WAIT_FALLBACK, "first_chunk")


def decode_token_answer(body: bytes) -> object:
    """A token endpoint's answer as JSON; None when it is not JSON.

    The standard library's decoder, which reads NaN/Infinity: a token whose lifetime is not a
    number is still used (until refused), as with any odd lifetime.
    """
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def raise_if_busy(
    endpoint: str, status: int, detail: str, retry_after: float | None, *, code: str | None = None
) -> None:
    """Raise the retryable error of a token endpoint's HTTP 429 (RateLimitError) or 5xx
    (ServerError); any other status passes."""
    if status == 429 or status >= 500:
        cls = RateLimitError if status == 429 else ServerError
        raise cls(
            f"{endpoint} answered HTTP {status}: {detail}",
            code=code, http_status=status, provider=PROVIDER, retryable=True,
            retry_after=retry_after,
        )


def parse_token_response(
    status: int, body: bytes, retry_after: float | None, *, now: float
) -> AccessToken:
    """The token from `/oauth/2.0/token`'s answer, or the error it stands for."""
    payload = decode_token_answer(body)
    detail = _token_error_text(payload) if isinstance(payload, dict) else snippet(body)
    raise_if_busy("the token endpoint", status, detail, retry_after)
    if isinstance(payload, dict) and "access_token" in payload:
        value = payload["access_token"]
        if status != 200 or not isinstance(value, str) or not value:
            raise ProtocolError(
                f"the token endpoint answered HTTP {status} without a usable access_token",
                provider=PROVIDER,
            )
        return AccessToken.issued(value, _lifetime(payload.get("expires_in")), now)
    if isinstance(payload, dict) and ("error" in payload or "error_description" in payload):
        raise _token_error(payload, status)
    raise ProtocolError(
        f"the token endpoint answered HTTP {status} with {snippet(body)}", provider=PROVIDER
    )


def _lifetime(expires_in: object) -> float | None:
    """Seconds a token lives; None (until the service refuses it) for anything but a positive,
    finite number: NaN, infinities and integers beyond a float included."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
        return None
    try:
        seconds = float(expires_in)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _token_error_text(payload: Mapping[str, object]) -> str:
    error = str(payload.get("error", "")).strip()
    description = str(payload.get("error_description", "")).strip()
    return ": ".join(part for part in (error, description) if part) or "no error message"


def _token_error(payload: Mapping[str, object], status: int) -> APIError:
    description = str(payload.get("error_description", "")).lower()
    error = payload.get("error")
    if "unknown client id" in description:
        message = "API key not recognised: the token endpoint knows no app with this api_key"
    elif "client authentication failed" in description:
        message = "secret key rejected: the api_key is known but secret_key does not match it"
    else:
        message = "the token endpoint refused api_key/secret_key"
    message = f"{message} ({_token_error_text(payload)})"
    cls = AuthenticationError if error in ("invalid_client", "unauthorized_client") else APIError
    return cls(
        message, code=error if isinstance(error, str) else None, http_status=status, provider=PROVIDER
    )


class StaticTokenAuthenticator:
    """An access token the caller fetched: sent as it is, never renewed."""

    method: str = ACCESS_TOKEN
    rejection_hints: Mapping[int, str] = dict.fromkeys(
        TOKEN_ERROR_CODES,
        "The access_token given to QianfanClient is invalid or expired and llmstreams cannot "
        "renew it: pass api_key and secret_key instead, and tokens are fetched and renewed "
        "automatically",
    )

    def __init__(self, access_token: str) -> None:
        self._authorization = Authorization({"access_token": access_token}, {})

    def __repr__(self) -> str:
        return "<StaticTokenAuthenticator>"

    async def authorize(self, path: str, waiter: TokenWaiter | None = None) -> Authorization:
        return self._authorization

    def recover(self, error: APIError, used: Authorization | None) -> bool:
        return False


class SignatureAuthenticator:
    """AK/SK auth: each attempt signs host, content-type and a fresh x-bce-date."""

    method: str = ACCESS_KEY
    rejection_hints: Mapping[int, str] = dict.fromkeys(
        (13, 14),
        "The request signature was refused: check access_key and secret_access_key",
    )

    def __init__(self, base_url: str, access_key: str, secret_access_key: str) -> None:
        self._host = urlsplit(base_url).netloc.rpartition("@")[2]
        self._access_key = access_key
        self._secret_access_key = secret_access_key

    def __repr__(self) -> str:
        return f"<SignatureAuthenticator {self._host}>"

    async def authorize(self, path: str, waiter: TokenWaiter | None = None) -> Authorization:
        date = bce_timestamp(datetime.now(UTC))
        headers = {"Host": self._host, "Content-Type": JSON_CONTENT_TYPE, "x-bce-date": date}
        headers["Authorization"] = bce_authorization(
            access_key=self._access_key,
            secret_access_key=self._secret_access_key,
            method="POST",
            path=path,
            query={},
            headers=headers,
            timestamp=date,
            expiration_seconds=SIGNATURE_EXPIRATION_SECONDS,
            signed_headers=SIGNED_HEADERS,
        )
        return Authorization({}, headers)

    def recover(self, error: APIError, used: Authorization | None) -> bool:
        return False


def authenticator(
    credentials: Credentials, *, pool: Pool, base_url: str, timeout: Timeout
) -> Authenticator:
    values = credentials.values
    if credentials.method == API_KEY:
        return TokenAuthenticator(pool, base_url, values["api_key"], values["secret_key"], timeout)
    if credentials.method == ACCESS_TOKEN:
        return StaticTokenAuthenticator(values["access_token"])
    return SignatureAuthenticator(base_url, values["access_key"], values["secret_access_key"])
