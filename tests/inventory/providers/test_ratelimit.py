"""The provider rate limiter is per account, shared through the database or Redis.

Two SharedRateLimiter objects on one key stand for two processes here (they share nothing but the
store); test_ratelimit_processes.py proves the same with real processes.
"""

from __future__ import annotations

import uuid

import pytest
import time_machine

from inventory.models import ProviderRateLimit
from inventory.providers import get_provider, ratelimit
from inventory.providers.base import RateLimiter
from inventory.providers.ratelimit import DatabaseStore, RedisStore, SharedRateLimiter, limiter_key

REDIS_URL = "redis://127.0.0.1:6379/0"
PREFIX = "shopper_adapters_test:ratelimit:"


@pytest.fixture(params=["database", "redis"])
def store(request):
    if request.param == "database":
        request.getfixturevalue("db")
        return DatabaseStore()
    return RedisStore(REDIS_URL, prefix=PREFIX)


def pair(store, interval=1.0):
    """Two limiters on one account, as two processes would have; their sleeps are recorded."""
    key = f"vastai@test#{uuid.uuid4().hex}"
    slept: tuple[list[float], list[float]] = ([], [])
    a = SharedRateLimiter(key, interval, store, sleep=slept[0].append)
    b = SharedRateLimiter(key, interval, store, sleep=slept[1].append)
    return a, b, slept


@time_machine.travel("2026-12-07 12:00:00Z", tick=False)
def test_two_processes_share_the_pace(store):
    a, b, (slept_a, slept_b) = pair(store)
    a.wait()
    b.wait()  # a second process on the same account waits for the next slot
    a.wait()
    assert slept_a == [pytest.approx(2.0)] and slept_b == [pytest.approx(1.0)]


@time_machine.travel("2026-12-07 12:00:00Z", tick=False)
def test_a_429_in_one_process_slows_the_other(store):
    a, b, (_, slept_b) = pair(store, interval=0.2)
    assert a.penalize() == pytest.approx(0.5)  # first 429: at least half a second
    b.wait()
    # b waits out a's backoff, and its own next slot carries the backoff too.
    assert slept_b == [pytest.approx(0.5)]
    assert a.penalize() == pytest.approx(1.0)  # it doubles, whoever saw the 429
    assert b.penalize(retry_after=7.0) == pytest.approx(7.0)  # Retry-After wins when given


@time_machine.travel("2026-12-07 12:00:00Z", tick=False)
def test_successes_relax_the_shared_backoff(store):
    a, b, (_, slept_b) = pair(store, interval=0.0)
    a.penalize()
    a.penalize()  # backoff 1.0
    for _ in range(5):
        b.relax()  # 0.5, 0.25, 0.125, 0.0625 -> 0
    with time_machine.travel("2026-12-07 12:00:10Z", tick=False):
        b.wait()
        b.wait()
    assert slept_b == []  # no interval, no backoff left: nobody waits


def test_the_old_per_process_limiter_did_not_share(no_real_sleep):
    """What the shared limiter replaces: two processes' RateLimiters never see each other."""
    a, b = RateLimiter(1.0), RateLimiter(1.0)
    a.wait()
    b.wait()
    assert no_real_sleep == []


@time_machine.travel("2026-12-07 12:00:00Z", tick=False)
def test_an_unreachable_store_falls_back_to_pacing_this_process(no_real_sleep, caplog):
    dead = RedisStore("redis://127.0.0.1:1/0")
    limiter = SharedRateLimiter("vastai@dead#x", 1.0, dead, sleep=pytest.fail)
    limiter.wait()
    limiter.wait()  # the local limiter sleeps through base.time (recorded by no_real_sleep)
    assert no_real_sleep == [pytest.approx(1.0, abs=0.05)]  # base.RateLimiter uses monotonic
    assert limiter.penalize() == pytest.approx(1.0) and "shared store unavailable" in caplog.text


@pytest.mark.django_db
def test_get_provider_shares_one_limiter_per_account(settings):
    settings.VASTAI_API_URL = "https://console.vast.ai/"
    settings.VASTAI_API_KEY = "sk-live-secret-1"
    settings.PROVIDER_MIN_INTERVAL_SECONDS = None
    settings.REDIS_URL = ""
    one, two = get_provider("vastai"), get_provider("vastai")
    assert isinstance(one.limiter, SharedRateLimiter) and isinstance(one.limiter.store, DatabaseStore)
    assert (
        one.limiter.key
        == two.limiter.key
        == limiter_key("vastai", "https://console.vast.ai", "sk-live-secret-1")
    )
    assert "sk-live-secret-1" not in one.limiter.key and one.limiter.min_interval == 1.0
    with time_machine.travel("2026-12-07 12:00:00Z", tick=False):
        one.limiter.wait()
    assert ProviderRateLimit.objects.get(key=one.limiter.key).next_at > 0
    # Another account has its own budget.
    settings.VASTAI_API_KEY = "sk-live-secret-2"
    assert get_provider("vastai").limiter.key != one.limiter.key
    # With Redis configured the state goes there.
    settings.REDIS_URL = REDIS_URL
    assert isinstance(get_provider("vastai").limiter.store, RedisStore)
    assert ratelimit._REDIS_STORES[REDIS_URL] is get_provider("vastai").limiter.store


@time_machine.travel("2026-12-07 12:00:00Z", tick=False)
def test_a_429_while_another_process_sleeps_towards_its_slot_voids_the_slot(store):
    a, b, _ = pair(store, interval=0.2)
    a.wait()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            a.penalize()  # a's call is answered 429 while b sleeps towards its slot

    b._sleep = sleep
    b.wait()
    assert slept == [pytest.approx(0.2), pytest.approx(0.5)]  # b queued again behind the 429
