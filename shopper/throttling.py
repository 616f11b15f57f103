"""Throttling: DRF rate limits for the API, a failed-login limit for the login page and the
heartbeat limit per agent token.

Every counter is a row of ``shopper.models.RateCounter``, bumped with one atomic upsert: the web
processes (compose runs several, ``make run`` two) share them, where per-process counters let each
process grant the whole allowance. Windows are fixed (they start at the first hit).

API rates come from ``settings.API_THROTTLE_ANON`` / ``API_THROTTLE_USER`` and are read per request
(DRF's own classes freeze ``DEFAULT_THROTTLE_RATES`` at import time). A 429 goes through
``common.api.exception_handler``: ``{"detail": ..., "code": "throttled"}`` plus ``Retry-After``.
The inventory fast path (``inventory/fastpath.py``) answers cached menu pages without counting
them: it must not do I/O in the event loop.

Logins: at most ``LOGIN_THROTTLE_ATTEMPTS`` login attempts per username + client address within
``LOGIN_THROTTLE_WINDOW_SECONDS``; a successful login clears the count. The attempt is counted
before the password is checked, so concurrent guesses cannot squeeze past the limit. The username
is normalized as Django's login form does (NFKC: a fullwidth ``ｖictim`` is ``victim``) and case
folded. Over the limit the login page is shown again with status 429 and the password is not even
checked, so a correct one is refused too until the window ends.
"""

from __future__ import annotations

import logging
import math
import random
import time
import unicodedata

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import LoginView
from django.db import DatabaseError, connection
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from common.tokens import token_hash
from shopper.models import RateCounter

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ counters
PRUNE_CHANCE = 0.005  # expired rows are harmless (the upsert restarts them); prune now and then


def counter_hit(key: str, window_seconds: float) -> tuple[int, float]:
    """Count one hit on ``key``; returns (hits in the current window, when the window ends).

    One statement, atomic on SQLite and PostgreSQL: an expired window restarts at 1.
    """
    now = time.time()
    table = connection.ops.quote_name(RateCounter._meta.db_table)
    key_col = connection.ops.quote_name("key")
    sql = (
        f"INSERT INTO {table} ({key_col}, count, window_ends) VALUES (%s, 1, %s) "
        f"ON CONFLICT ({key_col}) DO UPDATE SET "
        f"count = CASE WHEN {table}.window_ends <= %s THEN 1 ELSE {table}.count + 1 END, "
        f"window_ends = CASE WHEN {table}.window_ends <= %s THEN %s ELSE {table}.window_ends END "
        "RETURNING count, window_ends"
    )
    ends = now + window_seconds
    with connection.cursor() as cursor:
        cursor.execute(sql, [key, ends, now, now, ends])
        count, window_ends = cursor.fetchone()
    if random.random() < PRUNE_CHANCE:
        RateCounter.objects.filter(window_ends__lt=now).delete()
    return int(count), float(window_ends)


def counter_value(key: str) -> int:
    """Hits on ``key`` in its current window (0 when none or expired)."""
    row = RateCounter.objects.filter(key=key, window_ends__gt=time.time()).values_list("count", flat=True)
    return row.first() or 0


def counter_clear(key: str) -> None:
    RateCounter.objects.filter(key=key).delete()


class SharedCounterMixin:
    """DRF's SimpleRateThrottle on a shared fixed-window counter instead of a per-process history."""

    def allow_request(self, request, view):
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        try:
            self.count, self.window_ends = counter_hit(f"api:{self.key}", self.duration)
        except DatabaseError:
            # The counters live in the database: when it is down the request fails on its own
            # terms (health answers 503), never as a 500 from the throttle.
            log.warning("API throttle: counter unavailable (database error); request let through")
            return True
        return self.count <= self.num_requests

    def wait(self):
        return max(1.0, self.window_ends - time.time())


class AnonThrottle(SharedCounterMixin, AnonRateThrottle):
    """Unauthenticated API calls, per client address.

    Views that authenticate themselves (``authentication_classes = []``: health, agent heartbeat
    with its per-rental token) are exempt: probes and agents of many rentals share one address.
    """

    def get_rate(self):
        return settings.API_THROTTLE_ANON or None

    def allow_request(self, request, view):
        if getattr(view, "authentication_classes", None) == []:
            return True
        return super().allow_request(request, view)


class UserThrottle(SharedCounterMixin, UserRateThrottle):
    """Authenticated API calls (session or API token), per user."""

    def get_rate(self):
        return settings.API_THROTTLE_USER or None


# --------------------------------------------------------------------------------------- login
def _login_limits() -> tuple[int, int]:
    return int(settings.LOGIN_THROTTLE_ATTEMPTS), int(settings.LOGIN_THROTTLE_WINDOW_SECONDS)


def normalize_username(username: str) -> str:
    """As Django's AuthenticationForm reads it (strip, then NFKC), case folded on top: every
    spelling that could log in as one account shares its counter."""
    return unicodedata.normalize("NFKC", username.strip()).strip().casefold()


def login_throttle_key(username: str, address: str) -> str:
    ident = f"{normalize_username(username)}|{address}".encode()
    return "login:" + token_hash(ident)


class ThrottledLoginView(LoginView):
    """Django's LoginView with a failed-login limit per username + address."""

    def _key(self) -> str:
        username = self.request.POST.get("username", "") or ""
        return login_throttle_key(username, self.request.META.get("REMOTE_ADDR", ""))

    def post(self, request, *args, **kwargs):
        attempts, window = _login_limits()
        if attempts > 0:
            count, _ = counter_hit(self._key(), window)
            if count > attempts:
                return self._throttled()
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        counter_clear(self._key())
        return super().form_valid(form)

    def _throttled(self):
        _, window = _login_limits()
        minutes = max(1, math.ceil(window / 60))
        # An unbound form: the submitted password is never checked while throttled.
        form = self.get_form_class()(
            self.request, initial={"username": self.request.POST.get("username", "")}
        )
        # base.html shows messages: the login template itself stays as it is.
        messages.error(self.request, f"Too many failed login attempts. Try again in up to {minutes} minutes.")
        context = self.get_context_data(form=form, throttled=True)
        return self.render_to_response(context, status=429)
