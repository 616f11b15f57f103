"""Throttling: DRF rate limits for the API and a failed-login limit for the login page.

API rates come from ``settings.API_THROTTLE_ANON`` / ``API_THROTTLE_USER`` and are read per request
(DRF's own classes freeze ``DEFAULT_THROTTLE_RATES`` at import time). A 429 goes through
``shopper.api.exception_handler``: ``{"detail": ..., "code": "throttled"}`` plus ``Retry-After``.

Logins: at most ``LOGIN_THROTTLE_ATTEMPTS`` failed logins per username + client address within
``LOGIN_THROTTLE_WINDOW_SECONDS`` (counted in the cache). Over the limit the login page is shown
again with status 429 and the password is not even checked, so a correct one is refused too until
the window ends.
"""

from __future__ import annotations

import hashlib
import math

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

DEFAULT_LOGIN_ATTEMPTS = 10
DEFAULT_LOGIN_WINDOW_SECONDS = 15 * 60


class AnonThrottle(AnonRateThrottle):
    """Unauthenticated API calls, per client address.

    Views that authenticate themselves (``authentication_classes = []``: health, agent heartbeat
    with its per-rental token) are exempt: probes and agents of many rentals share one address.
    """

    def get_rate(self):
        return getattr(settings, "API_THROTTLE_ANON", None) or None

    def allow_request(self, request, view):
        if getattr(view, "authentication_classes", None) == []:
            return True
        return super().allow_request(request, view)


class UserThrottle(UserRateThrottle):
    """Authenticated API calls (session or API token), per user."""

    def get_rate(self):
        return getattr(settings, "API_THROTTLE_USER", None) or None


# --------------------------------------------------------------------------------------- login
def _login_limits() -> tuple[int, int]:
    attempts = int(getattr(settings, "LOGIN_THROTTLE_ATTEMPTS", DEFAULT_LOGIN_ATTEMPTS))
    window = int(getattr(settings, "LOGIN_THROTTLE_WINDOW_SECONDS", DEFAULT_LOGIN_WINDOW_SECONDS))
    return attempts, window


def login_throttle_key(username: str, address: str) -> str:
    ident = f"{username.strip().lower()}|{address}".encode()
    return "login-fail:" + hashlib.sha256(ident).hexdigest()


class ThrottledLoginView(LoginView):
    """Django's LoginView with a failed-login limit per username + address."""

    def _key(self) -> str:
        username = self.request.POST.get("username", "") or ""
        return login_throttle_key(username, self.request.META.get("REMOTE_ADDR", ""))

    def post(self, request, *args, **kwargs):
        attempts, _ = _login_limits()
        if attempts > 0 and (cache.get(self._key()) or 0) >= attempts:
            return self._throttled()
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        attempts, window = _login_limits()
        if attempts > 0:
            key = self._key()
            cache.add(key, 0, timeout=window)  # the window starts at the first failure
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, timeout=window)
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(self._key())
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
