"""One rate limiter per provider account, shared by every process that calls the provider.

Vast.ai limits per endpoint per identity (bearer + client IP): "all processes using one key from
one host share the budget" (FIELD_NOTES VA-RATELIMIT); TensorDock allows 100 requests/min per
organization (X-RATE-TD). A per-process limiter lets the web server, the worker and the safety loop
each use the whole budget, and a 429 one of them sees slows nobody else. So the limiter's state —
the next free slot and the current 429 backoff — lives in Redis when ``REDIS_URL`` is set, else in
the database (``inventory.ProviderRateLimit``), and every change is a compare-and-swap.

``SharedRateLimiter`` speaks the protocol of ``base.RateLimiter`` (``wait``, ``penalize``,
``relax``), which ``http.request`` drives. If the store cannot be reached, the call is paced by a
process-local limiter instead (logged): a broken limiter store must not stop teardowns.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .base import RateLimiter

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 100
REDIS_TTL_SECONDS = 3600
MIN_BACKOFF = 0.5  # the first 429 waits at least this long (same as base.RateLimiter)


@dataclass(frozen=True)
class State:
    """``next_at``: the next free slot; ``backoff``: added to every slot while 429s come;
    ``hold_until``: nobody calls before this (the last 429's wait). Epoch seconds."""

    next_at: float = 0.0
    backoff: float = 0.0
    hold_until: float = 0.0


# A state change: (now, state) -> (new state, value returned to the caller).
Change = Callable[[float, State], tuple[State, float]]


def reserve(min_interval: float) -> Change:
    """Take the next slot (returned, as a time): then push it one interval (plus backoff) on."""

    def change(now: float, st: State) -> tuple[State, float]:
        slot = max(now, st.next_at, st.hold_until)
        return State(slot + min_interval + st.backoff, st.backoff, st.hold_until), slot

    return change


def held(now: float, st: State) -> tuple[State, float]:
    """Until when the last 429 holds every caller."""
    return st, st.hold_until


def penalize(min_interval: float, max_backoff: float, retry_after: float | None) -> Change:
    """A 429: double the backoff (capped) and hold every caller until it has passed, including
    those already sleeping towards a slot they reserved before it (they check ``held``)."""

    def change(now: float, st: State) -> tuple[State, float]:
        backoff = min(max_backoff, max(min_interval, st.backoff * 2 or MIN_BACKOFF))
        wait = retry_after if retry_after is not None else backoff
        until = max(st.hold_until, now + wait)
        return State(max(st.next_at, until), backoff, until), wait

    return change


def relax(now: float, st: State) -> tuple[State, float]:
    """A success: halve the backoff, down to nothing."""
    return State(st.next_at, st.backoff / 2 if st.backoff > 0.1 else 0.0, st.hold_until), 0.0


class StoreUnavailable(Exception):
    """The shared store did not answer (or kept losing the compare-and-swap)."""


class Store(Protocol):
    def apply(self, key: str, change: Change) -> float: ...


class DatabaseStore:
    """The state in ``inventory.ProviderRateLimit``; a versioned UPDATE, so no row locks and no
    long transaction (each change is one short autocommit statement)."""

    def apply(self, key: str, change: Change) -> float:
        from django.db import DatabaseError

        from inventory.models import ProviderRateLimit

        try:
            for _ in range(CAS_ATTEMPTS):
                row, _ = ProviderRateLimit.objects.get_or_create(key=key)
                old = State(row.next_at, row.backoff, row.hold_until)
                new, value = change(time.time(), old)
                if new == old:
                    return value  # nothing to write (a check, or relax with no backoff)
                updated = ProviderRateLimit.objects.filter(key=key, version=row.version).update(
                    next_at=new.next_at,
                    backoff=new.backoff,
                    hold_until=new.hold_until,
                    version=row.version + 1,
                )
                if updated:
                    return value
        except DatabaseError as exc:
            raise StoreUnavailable(f"database: {type(exc).__name__}: {exc}") from exc
        raise StoreUnavailable(f"database: {CAS_ATTEMPTS} compare-and-swap attempts lost")


class RedisStore:
    """The state in a Redis hash, changed under WATCH/MULTI (optimistic, like the database)."""

    def __init__(self, url: str, prefix: str = "shopper:ratelimit:"):
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix

    def apply(self, key: str, change: Change) -> float:
        import redis

        name = self.prefix + key
        result: list[float] = []

        def run(pipe: Any) -> None:
            raw = pipe.hgetall(name)
            old = State(*(float(raw.get(f.encode(), 0.0)) for f in ("next_at", "backoff", "hold_until")))
            new, value = change(time.time(), old)
            pipe.multi()
            if new != old:
                pipe.hset(
                    name,
                    mapping={"next_at": new.next_at, "backoff": new.backoff, "hold_until": new.hold_until},
                )
                pipe.expire(name, REDIS_TTL_SECONDS)
            result[:] = [value]

        try:
            self._redis.transaction(run, name)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return result[0]


class SharedRateLimiter:
    """``base.RateLimiter``'s protocol over a shared store (see the module docstring)."""

    def __init__(
        self,
        key: str,
        min_interval: float,
        store: Store,
        *,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.key = key
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.store = store
        self._sleep = sleep
        self._fallback = RateLimiter(min_interval, max_backoff=max_backoff)

    def _apply(self, change: Change, fallback: Callable[[], float]) -> float:
        try:
            return self.store.apply(self.key, change)
        except StoreUnavailable as exc:
            log.warning("rate limiter %s: shared store unavailable (%s); pacing this process", self.key, exc)
            return fallback()

    def wait(self) -> None:
        def local() -> float:
            self._fallback.wait()
            return time.time()

        while True:
            slot = self._apply(reserve(self.min_interval), local)
            delay = slot - time.time()
            if delay > 0:
                self._sleep(delay)
            # A 429 that came in while we slept towards our slot voids it: queue again after it.
            if self._apply(held, lambda: 0.0) <= slot:
                return

    def penalize(self, retry_after: float | None = None) -> float:
        change = penalize(self.min_interval, self.max_backoff, retry_after)
        return self._apply(change, lambda: self._fallback.penalize(retry_after))

    def relax(self) -> None:
        def local() -> float:
            self._fallback.relax()
            return 0.0

        self._apply(relax, local)


_REDIS_STORES: dict[str, RedisStore] = {}


def limiter_key(provider_name: str, base_url: str, api_key: str) -> str:
    """One budget per account: the provider, where it lives, and a hash of the key (never the
    key itself: the row and the Redis key are readable by anyone with database access)."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return f"{provider_name}@{base_url.rstrip('/')}#{digest}"[:160]


def shared_limiter(provider_name: str, base_url: str, api_key: str, min_interval: float) -> SharedRateLimiter:
    """The limiter ``registry.get_provider`` gives every adapter: Redis when configured, else the
    database. Both are reachable from the web server, the worker and the safety loop."""
    from django.conf import settings

    url = settings.REDIS_URL or ""
    store: Store = DatabaseStore()
    if url:
        if url not in _REDIS_STORES:  # one connection pool per process, not per adapter
            _REDIS_STORES[url] = RedisStore(url)
        store = _REDIS_STORES[url]
    return SharedRateLimiter(limiter_key(provider_name, base_url, api_key), min_interval, store)
