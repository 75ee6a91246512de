"""The in-memory rate limits (http/ratelimit.py): moving windows, counted as the ``limits``
library's moving-window strategy counts (the shared limits in Redis still use it), so a
client meets the same limits whether or not Redis is configured."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from backup_repository.http.ratelimit import (
    AUTH,
    DEFAULT,
    SERVER_HEALTH,
    Decision,
    Limit,
    MovingWindows,
    RateLimiter,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


THREE_PER_MINUTE = Limit(3, 60)


def test_a_full_window_refuses_until_its_oldest_hit_leaves_it() -> None:
    clock = Clock()
    windows = MovingWindows(clock)
    for offset in (0.0, 10.0, 20.0):
        clock.now = 1000.0 + offset
        assert windows.hit(THREE_PER_MINUTE, AUTH, "c") == Decision(True)
    clock.now = 1030.0
    assert windows.hit(THREE_PER_MINUTE, AUTH, "c") == Decision(False, 30)
    clock.now = 1059.2
    assert windows.hit(THREE_PER_MINUTE, AUTH, "c") == Decision(False, 1)
    # A hit exactly one window old still counts; the retry is never below 1 s.
    clock.now = 1060.0
    assert windows.hit(THREE_PER_MINUTE, AUTH, "c") == Decision(False, 1)
    clock.now = 1060.5
    assert windows.hit(THREE_PER_MINUTE, AUTH, "c") == Decision(True)
    # The window moves: the next room is when the hit at 1010 leaves it, not at a boundary.
    clock.now = 1065.0
    assert windows.hit(THREE_PER_MINUTE, AUTH, "c") == Decision(False, 5)
    clock.now = 1070.5
    assert windows.hit(THREE_PER_MINUTE, AUTH, "c") == Decision(True)


def test_refused_hits_are_not_counted() -> None:
    clock = Clock()
    windows = MovingWindows(clock)
    for _ in range(3):
        assert windows.hit(THREE_PER_MINUTE, AUTH, "c").allowed
    for step in range(50):
        clock.now = 1000.0 + step
        assert not windows.hit(THREE_PER_MINUTE, AUTH, "c").allowed
    clock.now = 1060.1
    assert [windows.hit(THREE_PER_MINUTE, AUTH, "c").allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


def test_buckets_and_clients_are_counted_apart() -> None:
    windows = MovingWindows(Clock())
    one = Limit(1, 60)
    assert windows.hit(one, AUTH, "a").allowed
    assert not windows.hit(one, AUTH, "a").allowed
    assert windows.hit(one, AUTH, "b").allowed
    assert windows.hit(one, SERVER_HEALTH, "a").allowed
    assert len(windows) == 3


def test_a_key_whose_hits_left_their_window_is_removed() -> None:
    clock = Clock()
    windows = MovingWindows(clock, sweep_every=60.0)
    assert windows.hit(Limit(5, 1), DEFAULT, "gone").allowed
    assert windows.hit(Limit(5, 60), AUTH, "gone").allowed
    clock.now = 1059.0
    assert windows.hit(Limit(5, 60), AUTH, "steady").allowed
    clock.now = 1060.0  # the sweep runs: the per-second key is long out of its window
    assert windows.hit(Limit(5, 60), AUTH, "steady").allowed
    assert len(windows) == 2
    clock.now = 1121.0  # the login hit of "gone" at 1000 has left its window
    assert windows.hit(Limit(5, 60), AUTH, "steady").allowed
    assert len(windows) == 1


def test_another_limit_for_a_key_starts_it_again() -> None:
    windows = MovingWindows(Clock())
    assert windows.hit(Limit(1, 60), AUTH, "c").allowed
    assert not windows.hit(Limit(1, 60), AUTH, "c").allowed
    assert [windows.hit(Limit(2, 60), AUTH, "c").allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


def test_a_limit_of_nothing_refuses() -> None:
    assert MovingWindows(Clock()).hit(Limit(0, 60), AUTH, "c") == Decision(False, 60)


async def test_the_limiter_counts_per_bucket_and_ipv6_network() -> None:
    clock = Clock()
    limiter = RateLimiter(
        default_per_second=2,
        auth_per_minute=1,
        collection_health_per_minute=0,
        server_health_per_minute=0,
        clock=clock,
    )
    assert not limiter.shared
    assert (await limiter.hit(AUTH, "2001:db8::1")).allowed
    # The same /64: the same client.
    assert await limiter.hit(AUTH, "2001:db8::2") == Decision(False, 60)
    assert (await limiter.hit(AUTH, "2001:db8:0:1::1")).allowed
    assert (await limiter.hit(DEFAULT, "192.0.2.1")).allowed
    assert (await limiter.hit(DEFAULT, "192.0.2.1")).allowed
    assert await limiter.hit(DEFAULT, "192.0.2.1") == Decision(False, 1)
    clock.now += 1.001
    assert (await limiter.hit(DEFAULT, "192.0.2.1")).allowed
    # A limit of 0 is no limit.
    assert all([(await limiter.hit(SERVER_HEALTH, "192.0.2.1")).allowed for _ in range(500)])


# Times between hits: bursts, gaps inside the window, about the window, far beyond it.
_GAPS = st.lists(
    st.one_of(
        st.just(0.0),
        st.floats(min_value=0.001, max_value=2.0),
        st.floats(min_value=2.0, max_value=9.0),
        st.floats(min_value=9.9, max_value=10.1),
        st.floats(min_value=10.0, max_value=40.0),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(gaps=_GAPS, amount=st.integers(min_value=1, max_value=4))
async def test_the_same_decisions_as_the_limits_library(gaps: list[float], amount: int) -> None:
    """Hit by hit, the same answer and the same Retry-After as ``limits``' moving window in
    its memory storage (the strategy the shared limits use), for a window of 10 s. One
    exception: when the oldest hit is exactly one window old, both refuse, but ``limits``
    reckons the wait from the next hit (its window statistics leave that one out) while a
    retry 1 s later is already allowed, which is what ours says."""
    start = 1_700_000_000.0
    clock = Clock(start)
    ours = MovingWindows(clock)
    item = RateLimitItemPerSecond(amount, 10)
    theirs = MovingWindowRateLimiter(MemoryStorage())
    limit = Limit(amount, 10)
    allowed_at: list[float] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", clock)
        for gap in gaps:
            clock.now += gap
            allowed = await theirs.hit(item, AUTH, "c")
            decision = ours.hit(limit, AUTH, "c")
            assert decision.allowed == allowed, (clock.now - start, gaps)
            if allowed:
                allowed_at.append(clock.now)
                assert decision == Decision(True)
                continue
            stats = await theirs.get_window_stats(item, AUTH, "c")
            expected = max(1, math.ceil(stats.reset_time - clock.now))
            if clock.now - 10 in allowed_at[-amount:]:
                assert decision.retry_after == 1 <= expected
            else:
                assert decision.retry_after == expected, (clock.now - start, gaps)
