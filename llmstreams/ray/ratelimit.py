"""One rate limit for many Ray actors: each holds its share (`shared_out`), or a small actor
hands out the permits (`ClusterRateLimiter`)."""

from __future__ import annotations

from typing import Any

import attrs
import ray

from llmstreams.ratelimit import RateLimit, RateLimiter

# Waiting requests are calls parked in the permit actor; this many may wait at once.
_MAX_WAITING = 100_000


class _Permits:
    """The permit actor: one `RateLimiter` that every request of the cluster goes through."""

    def __init__(self, limit: RateLimit) -> None:
        self._limiter = RateLimiter(limit)

    async def acquire(self) -> None:
        await self._limiter.acquire()

    async def record_tokens(self, tokens: int) -> None:
        self._limiter.record_tokens(tokens)

    async def granted(self) -> tuple[int, int]:
        return self._limiter.requests_granted, self._limiter.tokens_recorded


def shared_out(limit: RateLimit, actors: int) -> RateLimit | None:
    """Each of `actors`' share of `limit`, or None when a share would be less than one request
    per window (a window must hold a whole request): give a `ClusterRateLimiter` then.

    The shares add up to the limit, so it holds however the work is spread; it is only reached
    while every actor is busy (not at a job's end, nor while an autoscaling pool has fewer).
    """
    shares = {
        name: None if value is None else value / actors
        for name, value in attrs.asdict(limit).items()
    }
    requests = (shares["requests_per_second"], shares["requests_per_minute"])
    if any(share is not None and share < 1 for share in requests):
        return None
    return RateLimit(**shares)


class ClusterRateLimiter:
    """Requests/s, requests/min and tokens/min held across every actor of a cluster.

        limiter = ClusterRateLimiter(RateLimit(requests_per_second=50, tokens_per_minute=200_000))
        dataset.map_batches(Generate, ..., fn_constructor_kwargs={"rate_limiter": limiter, ...})

    Creating it starts one small actor holding a `RateLimiter`; each request asks it for a
    permit (one actor call, awaited) and each finished generation reports its tokens to it
    (not awaited). Picklable: every actor given it shares the one permit actor, so the limits
    hold however many actors run and however unevenly they are loaded.
    """

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        actor_class: Any = ray.remote(_Permits)
        self._permits: Any = actor_class.options(
            num_cpus=0, max_concurrency=_MAX_WAITING
        ).remote(limit)

    def __repr__(self) -> str:
        return f"<ClusterRateLimiter {self.limit}>"

    async def acquire(self) -> None:
        await self._permits.acquire.remote()

    def record_tokens(self, tokens: int) -> None:
        if tokens > 0:
            self._permits.record_tokens.remote(tokens)

    def granted(self) -> tuple[int, int]:
        """(requests granted, tokens recorded) so far, over the whole cluster."""
        granted: tuple[int, int] = ray.get(self._permits.granted.remote(), timeout=60)
        return granted
