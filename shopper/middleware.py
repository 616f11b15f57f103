"""Request ids; HTMX requests whose login expired; the user's time zone."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import cache
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo, available_timezones

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.shortcuts import resolve_url
from django.utils.functional import SimpleLazyObject
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.log import log_response
from django_htmx.http import HttpResponseClientRedirect

from shopper.logconfig import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def request_id_for(request) -> str:
    """The client's X-Request-ID when it is a safe token (≤ 64 of [A-Za-z0-9-_]), else a new one."""
    incoming = request.META.get("HTTP_X_REQUEST_ID", "")
    if incoming and _SAFE_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def _log_error_response(request, response) -> None:
    """Django logs 4xx/5xx answers ("django.request") after the middleware chain, when the request
    id is no longer set; log them here, as Django would, while it is (Django then skips its own)."""
    if response.status_code >= 400:
        log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)


class RequestIdMiddleware:
    """Sets ``request.request_id`` and the logging context variable; adds ``X-Request-ID``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        request.request_id = request_id_for(request)
        token = request_id_var.set(request.request_id)
        try:
            response = self.get_response(request)
            _log_error_response(request, response)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response

    async def _acall(self, request):
        request.request_id = request_id_for(request)
        token = request_id_var.set(request.request_id)
        try:
            response = await self.get_response(request)
            _log_error_response(request, response)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response


# --------------------------------------------------------------------------------------------
# HTMX requests whose login expired
# --------------------------------------------------------------------------------------------
def _login_path() -> str:
    return urlsplit(resolve_url(settings.LOGIN_URL)).path


def _page_url(request) -> str:
    """The page the user is on (htmx sends it as HX-Current-URL), as a local path; else ''.

    An HTMX request goes to a fragment endpoint (a poll, a form post, the estimate); after
    logging in the user should land on the page, not on that fragment.
    """
    current = request.headers.get("HX-Current-URL", "")
    if not current or not url_has_allowed_host_and_scheme(
        current, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return ""
    parts = urlsplit(current)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class HtmxLoginRedirectMiddleware:
    """An HTMX request that ``login_required`` (or any view) redirects to the login page is
    answered with ``HX-Redirect`` instead, so the browser loads the login page as a whole page.

    The browser follows a plain 302 inside the XHR, so htmx would swap the login page into the
    form or status box it was updating (issue 19). Done here once for every HTMX endpoint;
    ``next`` is the page the user was on (HX-Current-URL), not the fragment URL.
    """

    sync_capable = True
    async_capable = True  # sync-only middleware would make Daphne hop threads on every request

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return self._answer(request, self.get_response(request))

    async def _acall(self, request):
        return self._answer(request, await self.get_response(request))

    @staticmethod
    def _answer(request, response):
        if request.headers.get("HX-Request") != "true" or response.status_code not in (301, 302, 303, 307):
            return response
        location = response.get("Location", "")
        if urlsplit(location).path != _login_path():
            return response
        page = _page_url(request)
        if page:
            location = f"{_login_path()}?{urlencode({REDIRECT_FIELD_NAME: page}, safe='/')}"
        return HttpResponseClientRedirect(location)


# --------------------------------------------------------------------------------------------
# The user's time zone
# --------------------------------------------------------------------------------------------
TZ_COOKIE = "tz"
# The profile's zone, kept in the session (read once per login: no query per page or poll).
PROFILE_ZONE_SESSION_KEY = "shopper_profile_tz"


class _ZoneFor:
    """This request's display zone, worked out the first time a page writes a time (an API
    answer never does, so it never touches the session for it)."""

    def __init__(self, request):
        self.request = request
        self._zone: ZoneInfo | None = None
        self._done = False

    def __call__(self) -> ZoneInfo | None:
        if not self._done:
            self._zone, self._done = user_time_zone(self.request), True
        return self._zone


# The zone pages show times in, for this request (None: UTC). Deliberately not Django's active
# time zone: date arithmetic (the costs page's periods, token expiry days, budgets) stays in UTC
# as the API's; only how a moment is written changes (the ``when`` filter).
_display_zone: ContextVar[_ZoneFor | None] = ContextVar("display_zone", default=None)


def display_zone() -> ZoneInfo | None:
    """The zone this request writes times in (None: UTC, also outside a request)."""
    resolve = _display_zone.get()
    return resolve() if resolve else None


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone_named(name: str) -> ZoneInfo | None:
    """The IANA zone called ``name``, or None when it is not one (anything a cookie may hold)."""
    if not name or len(name) > 64 or name not in _zones():
        return None
    return ZoneInfo(name)


def user_time_zone(request) -> ZoneInfo | None:
    """The zone to show times in: the one set in the person's profile, else the one the browser
    reported (cookie ``tz``, set by static/js/app.js from ``Intl.DateTimeFormat``); None (UTC)
    when neither names a real zone."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        session = request.session
        if PROFILE_ZONE_SESSION_KEY not in session:
            from shopper.models import Profile

            row = Profile.objects.filter(user=user).values_list("time_zone", flat=True).first()
            session[PROFILE_ZONE_SESSION_KEY] = row or ""
        zone = zone_named(session[PROFILE_ZONE_SESSION_KEY])
        if zone is not None:
            return zone
    return zone_named(request.COOKIES.get(TZ_COOKIE, ""))


def profile_zone_to_session(sender, request, user, **kwargs) -> None:
    """On login (``user_logged_in``, connected in ShopperConfig.ready): the profile's zone into
    the new session, so no page pays a query or a session write for it."""
    from shopper.models import Profile

    if request is not None and hasattr(request, "session"):
        row = Profile.objects.filter(user=user).values_list("time_zone", flat=True).first()
        request.session[PROFILE_ZONE_SESSION_KEY] = row or ""


def local_time(moment: datetime) -> datetime:
    """``moment`` in this request's display zone (UTC when none)."""
    return moment.astimezone(display_zone() or UTC)


class TimeZoneMiddleware:
    """Sets this request's display zone (``request.zone_name`` for templates, and what
    :func:`display_zone` answers), so every page and fragment writes times the same way."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @staticmethod
    def _start(request):
        resolve = _ZoneFor(request)
        request.zone_name = SimpleLazyObject(lambda: resolve().key if resolve() else "")
        return _display_zone.set(resolve)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        token = self._start(request)
        try:
            return self.get_response(request)
        finally:
            _display_zone.reset(token)

    async def _acall(self, request):
        # The sync view runs in a copy of this context (asgiref), so it sees the zone.
        token = self._start(request)
        try:
            return await self.get_response(request)
        finally:
            _display_zone.reset(token)
