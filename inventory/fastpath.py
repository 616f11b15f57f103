"""The hottest reads of the product, ``GET /api/v1/inventory`` and the offers page (its HTMX
partial and the full page), answered before Django's handler.

Scripts and pages query the menu with ever new filter combinations; the menu itself changes only
when a refresh lands, and every web process holds it in memory (``inventory/menu.py``). Serving
an answer through Django still costs far more than computing it: under ASGI every
``MiddlewareMixin`` middleware runs its hooks in a worker thread, and each request gets a thread
of its own for them, which capped the menu near 270 requests/s per core pair (the full page near
150). This ASGI layer answers any valid query from the in-memory menu without leaving the event
loop: the API for a token the database confirmed moments ago, the partial for a session the
offers page confirmed moments ago, and the full page for a session whose page "shell" (base.html
and the page head, everything but the filters and results) Django rendered moments ago
(``views.SHELL_SECONDS``): that shell around the query part rendered here, with a CSRF token
masked per answer as Django's ``get_token`` masks it. Everything else (no menu built yet, a bad
host, plain HTTP where HTTPS is required, bad API input, a non-ASCII name term, pending messages,
another method or path) goes to the Django application unchanged.

The answer carries the headers the middleware would have added: Django's own security, CSRF
and CSP middleware compute them here (no I/O), and ``tests/inventory/test_fastpath.py`` and
``test_menu.py`` hold the two paths to byte-identical answers apart from the request id (and
the page's CSRF token, masked anew per answer by both).
"""

from __future__ import annotations

import io

from django.conf import settings
from django.contrib.messages.storage.cookie import CookieStorage
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.template.loader import render_to_string
from django.utils.cache import patch_vary_headers
from django.utils.log import log_response
from django_htmx.middleware import HtmxDetails
from rest_framework.exceptions import APIException, NotFound
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from common.api import exception_handler as api_exception_handler
from common.cache import local_cache
from inventory.api import render_page
from inventory.menu import holder
from inventory.views import (
    PARTIAL,
    QUERY_PART,
    ValidatedFilters,
    cached_shell,
    join_page,
    results_context,
    session_cache_key,
    wants_partial,
)
from shopper.auth import token_user_id_cached
from shopper.csp import ContentSecurityPolicyMiddleware
from shopper.logconfig import request_id_var
from shopper.middleware import REQUEST_ID_HEADER, request_id_for

PATH = "/api/v1/inventory"
PAGE_PATH = "/offers/"


def _no_response(request):  # the middleware hooks below are called directly, never chained
    return None


def _passes_django_checks(request: ASGIRequest) -> SecurityMiddleware | None:
    """The security middleware for the answer, or None if Django must answer (bad host, redirect)."""
    try:
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it
    except Exception:
        return None
    security = SecurityMiddleware(_no_response)
    if security.process_request(request) is not None:  # an HTTPS redirect: Django answers it
        return None
    return security


def _finish(request: ASGIRequest, security: SecurityMiddleware, response: HttpResponse) -> HttpResponse:
    response = CommonMiddleware(_no_response).process_response(request, response)
    response = ContentSecurityPolicyMiddleware(_no_response).process_response(request, response)
    response = security.process_response(request, response)
    response = XFrameOptionsMiddleware(_no_response).process_response(request, response)
    response = ContentSecurityPolicyMiddleware(_no_response).process_response(request, response)
    response[REQUEST_ID_HEADER] = request_id_for(request)
    return response


def cached_answer(request: ASGIRequest) -> HttpResponse | None:
    """The full answer to ``request`` from the in-memory menu if its token was just confirmed."""
    if not token_user_id_cached(request.headers.get("Authorization", "")):
        return None
    security = _passes_django_checks(request)
    if security is None:
        return None
    menu = holder.get(wait=False)  # never blocks: a due version check runs in one thread
    if menu is None:
        return None
    status = 200
    try:
        body = render_page(menu, Request(request), allow_db=False)
    except NotFound as exc:
        # A page past the end of a narrow filter: common in a mix of queries, and through Django
        # it cost ten times an answer. The same error body and log line as Django's.
        status, body = 404, JSONRenderer().render(api_exception_handler(exc, {}).data)
    except APIException:  # a 400: Django answers it, naming the parameter
        return None
    if body is None:
        return None
    # Allow: as DRF's view answers (the parity test in test_fastpath.py holds every header equal).
    response = HttpResponse(
        body, status=status, content_type="application/json", headers={"Allow": "GET, HEAD, OPTIONS"}
    )
    response = _finish(request, security, response)
    if status >= 400:
        token = request_id_var.set(response[REQUEST_ID_HEADER])
        try:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        finally:
            request_id_var.reset(token)
    return response


def partial_answer(request: ASGIRequest) -> HttpResponse | None:
    """The offers page's HTMX partial (the results) for a session the view just confirmed.

    Only for a session cookie ``views.offer_list`` served within ``SESSION_CACHE_SECONDS``, and only
    filters the menu can answer without the database.
    """
    session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if not session_key or local_cache.get(session_cache_key(session_key)) is None:
        return None
    security = _passes_django_checks(request)
    if security is None:
        return None
    menu = holder.get(wait=False)
    if menu is None:
        return None
    context = results_context(menu, request.GET, ValidatedFilters(request.GET), allow_db=False)
    if context is None:
        return None  # a term only the database can match: Django answers
    body = render_to_string(PARTIAL, context)
    response = HttpResponse(body)
    # The session was read to authenticate: SessionMiddleware would say so.
    patch_vary_headers(response, ("Cookie",))
    return _finish(request, security, response)


def page_answer(request: ASGIRequest) -> HttpResponse | None:
    """The full offers page: the shell ``views.offer_list`` rendered for this session moments
    ago (``views.cached_shell``) around the query part rendered here, for filters the menu can answer
    without the database. A request carrying messages (their cookie) goes to Django, which
    shows them once; so does every session without a fresh shell (which also means: not
    confirmed by Django within that window)."""
    session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if not session_key or CookieStorage.cookie_name in request.COOKIES:
        return None
    shell = cached_shell(session_key)
    if shell is None:
        return None
    security = _passes_django_checks(request)
    if security is None:
        return None
    menu = holder.get(wait=False)
    if menu is None:
        return None
    context = results_context(menu, request.GET, ValidatedFilters(request.GET), allow_db=False)
    if context is None:
        return None
    csrf = CsrfViewMiddleware(_no_response)
    csrf.process_request(request)  # the CSRF secret of the cookie, or a new one (as Django does)
    response = HttpResponse(join_page(request, shell, render_to_string(QUERY_PART, context)))
    patch_vary_headers(response, ("Cookie",))
    response = csrf.process_response(request, response)  # the csrftoken cookie, refreshed
    return _finish(request, security, response)


def offers_answer(request: ASGIRequest) -> HttpResponse | None:
    """The offers page path: the HTMX partial or the full page (boosted and history-restore
    requests want the full page, as in the view)."""
    request.htmx = HtmxDetails(request)
    return partial_answer(request) if wants_partial(request) else page_answer(request)


class InventoryFastPath:
    """ASGI middleware in front of the Django application (see the module docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        answer = {PATH: cached_answer, PAGE_PATH: offers_answer}.get(scope["path"])
        if scope["type"] == "http" and scope["method"] == "GET" and answer is not None:
            # The body of a GET is never read: an empty stream stands in for it.
            response = answer(ASGIRequest(scope, io.BytesIO()))
            if response is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items()),
                            # As Django's ASGI handler sends them (the csrftoken refresh).
                            *(
                                (b"Set-Cookie", c.output(header="").encode("ascii").strip())
                                for c in response.cookies.values()
                            ),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": response.content})
                return
        await self.app(scope, receive, send)
