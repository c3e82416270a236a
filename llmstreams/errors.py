"""Every error llmstreams raises, in one hierarchy.

Each error says what happened, to which request (the server's request id when it gave one)
and what the caller can do. Errors raised once a request was sent carry `.partial`: a
`Completion` of everything received before the error (empty text if nothing arrived).
Messages and reprs never contain credentials: error texts are built from server messages,
codes and field names only, never from request URLs or headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

if TYPE_CHECKING:
    from llmstreams.types import Completion

_NOT_GIVEN: Any = object()
_MAX_SNIPPET = 200


def snippet(data: bytes | str, limit: int = _MAX_SNIPPET) -> str:
    """A short printable excerpt of what the server sent, for error messages."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters in all)"


def redact_url(url: str) -> str:
    """`url` with the password of its `user:password@` part (if any) replaced by `***`."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{separator}{user}:***@{host}{slash}{path}"


class LLMStreamsError(Exception):
    """Base class of every llmstreams error."""

    hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        request_id: str | None = None,
        partial: Completion | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.request_id = request_id
        self.partial = partial

    def __str__(self) -> str:
        context = [f"provider {self.provider}"] if self.provider else []
        if self.request_id:
            context.append(f"request id {self.request_id}")
        text = self.message
        if context:
            text += f" ({', '.join(context)})"
        if self.partial is not None and self.partial.chunk_count:
            text += (
                f". {len(self.partial.text)} characters in {self.partial.chunk_count} chunks"
                " arrived before this error and are kept in .partial"
            )
        if self.hint:
            text += f". {self.hint}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class InvalidParameterError(LLMStreamsError, ValueError):
    """A parameter broke a documented rule; raised before anything was sent."""

    hint = "Nothing was sent; fix the parameter and call again"

    def __init__(self, field: str, rule: str, value: Any = _NOT_GIVEN) -> None:
        shown = "" if value is _NOT_GIVEN else f", got {value!r}"
        super().__init__(f"invalid parameter {field!r}: {rule}{shown}")
        self.field = field
        self.rule = rule


class UsageError(LLMStreamsError, TypeError):
    """llmstreams was called in a way that cannot work; the message says the way that does."""


class APIError(LLMStreamsError):
    """The service answered with an error.

    `code` is the vendor's code (an int for Qianfan, a string for DashScope), `message` the
    vendor's text, `http_status` the HTTP status (for DashScope mid-stream errors, the one in
    the `:HTTP_STATUS/NNN` line). `retryable` says whether llmstreams may send the request again
    (only ever before the first chunk); `retry_after` is the server's requested wait in seconds.
    """

    hint = "See the vendor's error code documentation"

    def __init__(
        self,
        message: str,
        *,
        code: int | str | None = None,
        http_status: int | None = None,
        provider: str | None = None,
        request_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        partial: Completion | None = None,
    ) -> None:
        super().__init__(message, provider=provider, request_id=request_id, partial=partial)
        self.code = code
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f"HTTP {self.http_status}" if self.http_status is not None else ""
        code = f"code {self.code}" if self.code is not None else ""
        head = ", ".join(part for part in (code, status) if part)
        base = super().__str__()
        return f"{head}: {base}" if head else base


class AuthenticationError(APIError):
    """Credentials were rejected (bad key, bad secret, invalid or expired token, bad signature)."""

    hint = "Check the credentials named above"


class PermissionDeniedError(APIError):
    """The credentials are valid but may not use this model or service."""

    hint = "Enable the service or model for this account, or use other credentials"


class NotFoundError(APIError):
    """The model, endpoint or app does not exist."""

    hint = "Check the model name or endpoint"


class InvalidRequestError(APIError):
    """The service rejected the request's contents."""

    hint = "Fix the request; sending it again unchanged will fail again"


class RateLimitError(APIError):
    """A rate or quota limit was hit."""

    hint = "Slow down (a client-side rate limit helps), or raise max_retries to wait it out"


class ContentFilterError(APIError):
    """The input or output was blocked by the service's content inspection."""

    hint = "Change the input; the service will not answer this content"


class ServerError(APIError):
    """The service failed or is overloaded."""

    hint = "Usually temporary; retry later or raise max_retries"


class APIConnectionError(LLMStreamsError):
    """The service could not be reached, or the connection failed before the response began."""

    hint = "Check the base URL and the network; max_retries sets how often it is tried again"


class TLSCertificateError(APIConnectionError):
    """The server's TLS certificate was not trusted: signed by a CA this client does not trust,
    self-signed, expired, or made out to another host.

    Never retried: the same certificate gets the same verdict on every attempt.
    """

    hint = (
        "If this server is yours (or a TLS-inspecting proxy's), trust the CA that signed its "
        "certificate: SSL_CERT_FILE=ca.pem, or Pool(ssl=ssl.create_default_context(cafile=...))"
    )


class APITimeoutError(APIConnectionError):
    """A timeout (`Timeout.connect`, `first_chunk`, `idle` or `total`) ran out.

    `phase` names which one.
    """

    hint = "Raise the Timeout named above if the service is just slow"

    def __init__(
        self,
        message: str,
        *,
        phase: str,
        provider: str | None = None,
        request_id: str | None = None,
        partial: Completion | None = None,
    ) -> None:
        super().__init__(message, provider=provider, request_id=request_id, partial=partial)
        self.phase = phase


class StreamInterruptedError(LLMStreamsError):
    """The connection broke, or went idle, after the response began.

    The generation is never sent again automatically: what arrived is in `.partial`.
    """

    hint = "Call again to generate anew, or continue from .partial.text"


class StreamTimeoutError(StreamInterruptedError, APITimeoutError):
    """The stream went quiet for longer than `Timeout.idle` (or ran past `Timeout.total`)."""

    hint = StreamInterruptedError.hint


class ProtocolError(LLMStreamsError):
    """The server sent something that is not the vendor's protocol.

    The message quotes a truncated snippet of what was received.
    """

    hint = "The base URL may point at something that is not this vendor's API"


# What an HTTP status alone says, for every vendor: the error class, and whether the request may
# be sent again. Retryable are the statuses that say the server did not carry the request out
# and may if asked again: 408 (it gave up waiting for the request), 409 (a conflicting request
# held what it needed; OpenAI's API documents it as worth retrying), 429 (a rate limit) and
# every 5xx (it failed or is overloaded). No vendor here gives 408 or 409 another meaning, so the
# rule is one for all. A vendor's own error codes, where its body has one, come first (see the
# code tables in the vendor modules); a status this table does not name claims no cause.
_STATUS_CLASSES: Final[dict[int, type[APIError]]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: ServerError,
    409: ServerError,
    410: NotFoundError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
}
_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})


def status_error_class(status: int) -> type[APIError]:
    """The error class an HTTP error status stands for (APIError itself for one it does not name)."""
    if status >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status, APIError)


def is_retryable_status(status: int) -> bool:
    """Whether a request answered with this status may be sent again (see `_STATUS_CLASSES`)."""
    return status in _RETRYABLE_STATUSES or status >= 500
