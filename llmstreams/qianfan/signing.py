"""Baidu Cloud `bce-auth-v1` request signing (the AK/SK alternative to access tokens).

Pure functions of their inputs: the client uses them to sign requests and the mock server to
verify them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

AUTH_VERSION = "bce-auth-v1"
DEFAULT_SIGNED_HEADERS = frozenset({"host", "content-md5", "content-length", "content-type"})
BCE_HEADER_PREFIX = "x-bce-"


def bce_timestamp(now: datetime) -> str:
    """The `x-bce-date` form of an aware datetime: UTC `YYYY-MM-DDThh:mm:ssZ`."""
    if now.tzinfo is None:
        raise ValueError("bce_timestamp needs an aware datetime, got a naive one")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bce_uri_encode(text: str) -> str:
    """Percent-encode UTF-8 as uppercase `%XX`, everything but `A-Z a-z 0-9 - . _ ~` (`/` too)."""
    return quote(text, safe="")


def bce_canonical_query_string(query: Mapping[str, str]) -> str:
    """`enc(name)=enc(value)` pairs, sorted, `&`-joined; an `authorization` parameter is left out."""
    return "&".join(
        sorted(
            f"{bce_uri_encode(name)}={bce_uri_encode(value)}"
            for name, value in query.items()
            if name.lower() != "authorization"
        )
    )


def bce_canonical_headers(
    headers: Mapping[str, str], signed_headers: Iterable[str] | None = None
) -> str:
    """`enc(lower(name)):enc(trim(value))` lines for the signed headers, sorted, `\\n`-joined.

    `signed_headers=None` signs the default set: host, content-md5, content-length, content-type
    and every `x-bce-*` header present. Otherwise exactly the named headers are signed, and each
    must be present. Names match case-insensitively.
    """
    return _format_canonical_headers(_headers_to_sign(headers, signed_headers))


def bce_signing_key(
    *, access_key: str, secret_access_key: str, timestamp: str, expiration_seconds: int
) -> str:
    """hex(HMAC-SHA256(secret access key, auth string prefix)), the key the request is signed with."""
    prefix = _auth_string_prefix(access_key, timestamp, expiration_seconds)
    return _hmac_sha256_hex(secret_access_key, prefix)


def bce_authorization(
    *,
    access_key: str,
    secret_access_key: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    timestamp: str,
    expiration_seconds: int = 1800,
    signed_headers: Iterable[str] | None = None,
) -> str:
    """The `Authorization` header value for a request.

    `timestamp` is the request's `x-bce-date`. With `signed_headers=None` the default header set is
    signed and the signed-headers part of the result is empty (the server then assumes the
    default set); otherwise the given headers are signed and listed.
    """
    header_values = _headers_to_sign(headers, signed_headers)
    prefix = _auth_string_prefix(access_key, timestamp, expiration_seconds)
    signing_key = _hmac_sha256_hex(secret_access_key, prefix)
    canonical_request = "\n".join(
        (
            method.upper(),
            path,
            bce_canonical_query_string(query),
            _format_canonical_headers(header_values),
        )
    )
    signature = _hmac_sha256_hex(signing_key, canonical_request)
    listed_headers = "" if signed_headers is None else ";".join(sorted(header_values))
    return f"{prefix}/{listed_headers}/{signature}"


def _auth_string_prefix(access_key: str, timestamp: str, expiration_seconds: int) -> str:
    return f"{AUTH_VERSION}/{access_key}/{timestamp}/{expiration_seconds}"


def _hmac_sha256_hex(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def _headers_to_sign(
    headers: Mapping[str, str], signed_headers: Iterable[str] | None
) -> dict[str, str]:
    """Lower-case name -> trimmed value of each header to sign."""
    present = {name.strip().lower(): value.strip() for name, value in headers.items()}
    if signed_headers is None:
        return {
            name: value
            for name, value in present.items()
            if name in DEFAULT_SIGNED_HEADERS or name.startswith(BCE_HEADER_PREFIX)
        }
    wanted = {name.strip().lower() for name in signed_headers}
    missing = wanted - present.keys()
    if missing:
        raise ValueError(f"headers to sign are not in the request: {', '.join(sorted(missing))}")
    return {name: present[name] for name in wanted}


def _format_canonical_headers(header_values: Mapping[str, str]) -> str:
    return "\n".join(
        sorted(
            f"{bce_uri_encode(name)}:{bce_uri_encode(value)}"
            for name, value in header_values.items()
        )
    )
