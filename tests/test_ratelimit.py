"""Client-side rate limits, checked by counting against a fake clock (never by timing)."""

from __future__ import annotations

import pytest

from llmstreams import InvalidParameterError, Pool, RateLimit, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def limiter(limit: RateLimit) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(limit, clock=clock, sleep=clock.sleep), clock


async def test_requests_per_second_grants_a_burst_then_one_window_later() -> None:
    rate, clock = limiter(RateLimit(requests_per_second=5))
    grant_times = []
    for _ in range(12):
        await rate.acquire()
        grant_times.append(clock.now)
    assert grant_times.count(0.0) == 5
    assert grant_times.count(1.0) == 5
    assert grant_times.count(2.0) == 2
    assert rate.requests_granted == 12


async def test_the_tighter_of_two_request_limits_wins() -> None:
    rate, clock = limiter(RateLimit(requests_per_second=100, requests_per_minute=3))
    for _ in range(4):
        await rate.acquire()
    assert clock.now == 60.0


async def test_tokens_per_minute_holds_requests_while_the_budget_is_spent() -> None:
    rate, clock = limiter(RateLimit(tokens_per_minute=1000))
    await rate.acquire()
    rate.record_tokens(600)
    await rate.acquire()
    assert clock.now == 0.0
    rate.record_tokens(400)
    assert rate.wait_time() == 60.0
    await rate.acquire()
    assert clock.now == 60.0
    assert rate.tokens_recorded == 1000


async def test_no_limits_never_waits() -> None:
    rate, clock = limiter(RateLimit())
    for _ in range(1000):
        await rate.acquire()
    assert clock.sleeps == []


@pytest.mark.parametrize("field", ["requests_per_second", "requests_per_minute", "tokens_per_minute"])
def test_non_positive_limits_are_rejected_by_name(field: str) -> None:
    with pytest.raises(InvalidParameterError, match=field):
        RateLimit(**{field: 0})


async def test_a_pool_takes_a_shared_limiter_or_a_limit_not_both() -> None:
    shared = RateLimiter(RateLimit(requests_per_second=5))
    async with Pool(rate_limiter=shared) as pool:
        assert pool.rate_limiter is shared
    with pytest.raises(InvalidParameterError, match="rate_limiter"):
        Pool(rate_limit=RateLimit(requests_per_second=5), rate_limiter=shared)
