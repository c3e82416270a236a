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


@pytest.mark.parametrize(
    ("limit", "every"),
    [
        (RateLimit(requests_per_second=0.2), 5.0),
        (RateLimit(requests_per_second=0.25), 4.0),
        (RateLimit(requests_per_minute=0.5), 120.0),
    ],
)
async def test_rates_below_one_per_window_are_held_exactly(limit: RateLimit, every: float) -> None:
    rate, clock = limiter(limit)
    grant_times = []
    for _ in range(6):
        await rate.acquire()
        grant_times.append(clock.now)
    assert grant_times == [every * number for number in range(6)]


async def test_a_fractional_rate_above_one_is_held_over_time() -> None:
    # 2.5 per second: never more than 3 at once, 25 in any 10 seconds after the first burst.
    rate, clock = limiter(RateLimit(requests_per_second=2.5))
    grant_times = []
    for _ in range(33):
        await rate.acquire()
        grant_times.append(clock.now)
    assert max(grant_times.count(time) for time in grant_times) == 3
    assert grant_times[-1] == pytest.approx(12.0)
    assert sum(1 for time in grant_times if time < 10.0) == 27


async def test_an_absurd_token_count_does_not_overflow() -> None:
    rate, _clock = limiter(RateLimit(tokens_per_minute=1000))
    await rate.acquire()
    rate.record_tokens(10**400)
    assert rate.wait_time() == 60.0


async def test_a_pool_takes_a_shared_limiter_or_a_limit_not_both() -> None:
    shared = RateLimiter(RateLimit(requests_per_second=5))
    async with Pool(rate_limiter=shared) as pool:
        assert pool.rate_limiter is shared
    with pytest.raises(InvalidParameterError, match="rate_limiter"):
        Pool(rate_limit=RateLimit(requests_per_second=5), rate_limiter=shared)
