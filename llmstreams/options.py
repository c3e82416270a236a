"""Settings shared by the pool and every client: `Timeout` and `RetryPolicy`."""

from __future__ import annotations

import math
import random
from typing import Any

import attrs

from llmstreams.errors import InvalidParameterError
from llmstreams.validation import check_number


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        check_number(f"Timeout.{attribute.name}", value, low=0, low_open=True)


@attrs.frozen(slots=True)
class Timeout:
    """Four separate limits, in seconds (None = no limit).

    - `connect`: opening the connection: TCP, the TLS handshake and a proxy's tunnel.
    - `first_chunk`: from sending the request until the first byte of the response body
      (for a non-stream call that is the whole generation, since the server answers when done).
    - `idle`: the longest gap between two reads once the body has begun.
    - `total`: the whole request, retries included.

    The defaults never cut off a long healthy stream: only silence is limited, not length.
    """

    connect: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    first_chunk: float | None = attrs.field(default=300.0, validator=_positive_or_none)
    idle: float | None = attrs.field(default=60.0, validator=_positive_or_none)
    total: float | None = attrs.field(default=None, validator=_positive_or_none)


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameterError(attribute.name, "must be a whole number >= 0", value)


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    # Finite: an infinite or NaN wait would hang a retry.
    if not math.isfinite(check_number(f"RetryPolicy.{attribute.name}", value, low=0)):
        raise InvalidParameterError(f"RetryPolicy.{attribute.name}", "must be finite", value)


@attrs.frozen(slots=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    Requests are only ever retried before the first chunk arrived: connection failures,
    HTTP 408/409/429/5xx and the vendor's retryable error codes. The wait before retry `n` (from 0)
    is a random value in [0, min(backoff_max, backoff_base * 2**n)] ("full jitter"), or the
    server's `Retry-After` when it gave one (capped at `max_retry_after`).
    """

    max_retries: int = attrs.field(default=2, validator=_non_negative_int)
    backoff_base: float = attrs.field(default=0.5, validator=_non_negative)
    backoff_max: float = attrs.field(default=8.0, validator=_non_negative)
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.backoff_max, self.backoff_base * 2**retry_number)
        return random.uniform(0.0, ceiling)
