"""The mock's own check of `bce-auth-v1` signatures, written from Baidu's description of the
protocol ("生成认证字符串", https://cloud.baidu.com/doc/Reference/s/njwvz1yfu) and apart from
the client's signing code, so that a bug in one is not accepted by the other.

    Authorization = bce-auth-v1/{accessKeyId}/{timestamp}/{expirationPeriodInSeconds}/{signedHeaders}/{signature}
    signingKey = HMAC-SHA256-HEX(secretAccessKey, "bce-auth-v1/{accessKeyId}/{timestamp}/{expirationPeriodInSeconds}")
    signature = HMAC-SHA256-HEX(signingKey, CanonicalRequest)
    CanonicalRequest = METHOD \\n UriEncodeExceptSlash(path) \\n CanonicalQueryString \\n CanonicalHeaders
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

import attrs

AUTH_VERSION = "bce-auth-v1"
# Signed when the Authorization header lists no headers: these, and every x-bce-* header.
DEFAULT_HEADERS = ("host", "content-length", "content-type", "content-md5")
# RFC 3986's unreserved characters: the only bytes UriEncode leaves as they are.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@attrs.frozen
class SignedRequest:
    """What a signature covers, as the server received it. `query` and `headers` are (name,
    value) pairs, decoded; `path` is the decoded path."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]


@attrs.frozen
class AuthorizationParts:
    access_key: str
    timestamp: str
    expiration_seconds: int
    signed_headers: tuple[str, ...]
    """Lower-case names as listed; empty: the default set."""
    signature: str


def parse_authorization(value: str) -> AuthorizationParts | None:
    """The six `/`-separated parts of a `bce-auth-v1` Authorization header; None if malformed."""
    parts = value.split("/")
    if len(parts) != 6 or parts[0] != AUTH_VERSION:
        return None
    _, access_key, timestamp, expiration, listed, signature = parts
    if not access_key or not signature or not expiration.isdigit():
        return None
    names = tuple(name for name in listed.split(";") if name)
    return AuthorizationParts(access_key, timestamp, int(expiration), names, signature)


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """UriEncode: each UTF-8 byte that is not unreserved as `%XX`, upper-case hex."""
    encoded = []
    for byte in text.encode():
        if byte in _UNRESERVED or (keep_slash and byte == ord("/")):
            encoded.append(chr(byte))
        else:
            encoded.append(f"%{byte:02X}")
    return "".join(encoded)


def auth_string_prefix(access_key: str, timestamp: str, expiration_seconds: int) -> str:
    return f"{AUTH_VERSION}/{access_key}/{timestamp}/{expiration_seconds}"


def signing_key(secret_access_key: str, prefix: str) -> str:
    return _hmac_sha256_hex(secret_access_key, prefix)


def canonical_query_string(query: Iterable[tuple[str, str]]) -> str:
    pairs = [
        uri_encode(name) + "=" + uri_encode(value)
        for name, value in query
        if name.lower() != "authorization"
    ]
    pairs.sort()
    return "&".join(pairs)


def canonical_headers(headers: Iterable[tuple[str, str]], signed: Iterable[str]) -> str | None:
    """The CanonicalHeaders lines; None when a header listed as signed was not received."""
    received: dict[str, str] = {}
    for name, value in headers:
        received.setdefault(name.strip().lower(), value.strip())
    wanted = set(signed)
    if not wanted:
        wanted = {
            name for name in received if name in DEFAULT_HEADERS or name.startswith("x-bce-")
        }
    if not wanted <= received.keys():
        return None
    lines = [uri_encode(name) + ":" + uri_encode(received[name]) for name in wanted]
    lines.sort()
    return "\n".join(lines)


def canonical_request(request: SignedRequest, signed: Iterable[str]) -> str | None:
    headers = canonical_headers(request.headers, signed)
    if headers is None:
        return None
    return "\n".join(
        (
            request.method.upper(),
            uri_encode(request.path, keep_slash=True),
            canonical_query_string(request.query),
            headers,
        )
    )


def signature_matches(
    parts: AuthorizationParts, request: SignedRequest, secret_access_key: str
) -> bool:
    """Whether `parts.signature` is the signature of `request` under `secret_access_key`."""
    canonical = canonical_request(request, parts.signed_headers)
    if canonical is None:
        return False
    key = signing_key(
        secret_access_key,
        auth_string_prefix(parts.access_key, parts.timestamp, parts.expiration_seconds),
    )
    expected = _hmac_sha256_hex(key, canonical)
    return hmac.compare_digest(parts.signature.encode(), expected.encode())


def _hmac_sha256_hex(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()
