"""The ASGI fast path for ``GET /api/v1/inventory``, through the real ASGI application.

The contract: a cached page for a just-confirmed token is answered without Django's handler, with
exactly the bytes and headers Django would have sent; anything else is Django's to answer.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.utils import timezone

from inventory import fastpath
from inventory.menu import CHECK_SECONDS, holder
from inventory.models import ProviderFeed
from shopper.auth import TOKEN_CACHE_SECONDS
from shopper.logconfig import request_id_var
from shopper.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)

QUERY = b"sort=-price&min_vram_gb=16"


@pytest.fixture
def menu(make_offer):
    make_offer(gpu_type="RTX 4090 24GB", price_per_hour="0.3500")
    make_offer(gpu_type="A100 SXM4 80GB", vram_gb=80, price_per_hour="1.9000")


@pytest.fixture
def token(user):
    return ApiToken.issue(user=user, name="poller")[1]


@pytest.fixture
def django_calls():
    """Paths of the requests that reached Django's handler (not answered by the fast path)."""
    return []


@pytest.fixture
def get(django_calls):
    """get(authorization, query=, host=, method=) -> the answer of the real ASGI application."""

    async def counted(scope, receive, send):
        django_calls.append(scope["path"])
        # Built per request, as shopper.asgi builds it, so a test's settings reach the middleware.
        await ASGIStaticFilesHandler(get_asgi_application())(scope, receive, send)

    app = fastpath.InventoryFastPath(counted)

    def call(authorization, *, query=QUERY, host=b"testserver", method="GET"):
        headers = [(b"host", host), (b"x-request-id", b"req-1")]
        if authorization:
            headers.append((b"authorization", authorization.encode()))
        communicator = HttpCommunicator(app, method, "/api/v1/inventory", headers=headers)
        communicator.scope["query_string"] = query
        response = async_to_sync(communicator.get_response)(timeout=10)
        response["headers"] = sorted((k.decode().lower(), v.decode()) for k, v in response["headers"])
        return response

    return call


def test_a_repeated_query_is_answered_without_django_byte_for_byte(menu, token, django_calls, get):
    first = get(f"Token {token}")
    assert first["status"] == 200 and django_calls == ["/api/v1/inventory"]
    second = get(f"Token {token}")
    assert django_calls == ["/api/v1/inventory"]  # the second never reached Django
    assert second["body"] == first["body"]
    assert second["headers"] == first["headers"]  # same security headers, length, request id
    assert ("x-frame-options", "DENY") in second["headers"]
    assert ("x-request-id", "req-1") in second["headers"]


def test_any_other_query_is_answered_without_django_once_the_menu_is_built(menu, token, django_calls, get):
    get(f"Token {token}")
    for query in (b"sort=price", b"gpu=a100", b"page_size=1&page=2", b"provider=vastai"):
        assert get(f"Token {token}", query=query)["status"] == 200
    assert len(django_calls) == 1


@pytest.mark.parametrize("authorization", [None, "Token not-a-token", "Bearer x", "Token "])
def test_without_a_confirmed_token_django_answers(menu, token, django_calls, authorization, get):
    get(f"Token {token}")  # the page is cached
    response = get(authorization)
    assert response["status"] == 401
    assert len(django_calls) == 2


def test_a_disallowed_host_is_djangos_400_not_a_cached_page(menu, token, django_calls, get):
    get(f"Token {token}")
    response = get(f"Token {token}", host=b"evil.example")
    assert response["status"] == 400
    assert len(django_calls) == 2


def test_plain_http_is_redirected_when_https_is_required(menu, token, django_calls, settings, get):
    get(f"Token {token}")
    settings.SECURE_SSL_REDIRECT = True
    response = get(f"Token {token}")
    assert response["status"] == 301
    assert dict(response["headers"])["location"].startswith("https://")


def test_other_methods_and_bad_input_are_djangos(menu, token, django_calls, get):
    get(f"Token {token}")
    assert get(f"Token {token}", method="POST")["status"] == 405
    bad = get(f"Token {token}", query=b"min_vram_gb=lots")
    assert bad["status"] == 400 and b"min_vram_gb" in bad["body"]
    assert len(django_calls) == 3


def test_a_refresh_changes_the_version_and_the_next_answer(menu, token, make_offer, django_calls, get):
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        before = get(f"Token {token}")
        make_offer(gpu_type="H100 SXM 80GB", vram_gb=80, price_per_hour="0.1000")
        ProviderFeed.objects.create(provider="vastai", last_attempt_at=timezone.now())  # a refresh
        traveller.shift(timedelta(seconds=CHECK_SECONDS + 1))
        stale = get(f"Token {token}")  # the previous menu, while one thread checks and rebuilds
        holder.wait_idle()
        after = get(f"Token {token}")
    assert b"H100" not in stale["body"]
    assert after["status"] == 200 and b"H100" in after["body"] and b"H100" not in before["body"]


def test_a_revoked_token_stops_working_within_seconds(menu, token, django_calls, get):
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        assert get(f"Token {token}")["status"] == 200
        ApiToken.objects.update(revoked_at=timezone.now())
        traveller.shift(timedelta(seconds=TOKEN_CACHE_SECONDS + 1))
        assert get(f"Token {token}")["status"] == 401


def test_a_page_past_the_end_is_the_same_404_from_the_fast_path(menu, token, django_calls, get, monkeypatch):
    first = get(f"Token {token}", query=b"page=9")  # the token is not confirmed yet: Django
    assert first["status"] == 404 and django_calls == ["/api/v1/inventory"]
    logged = []

    def log_response(message, *args, response, request):
        logged.append((message % args, response.status_code, request_id_var.get()))

    monkeypatch.setattr(fastpath, "log_response", log_response)
    second = get(f"Token {token}", query=b"page=9")
    assert django_calls == ["/api/v1/inventory"]  # answered without Django
    assert (second["status"], second["headers"], second["body"]) == (404, first["headers"], first["body"])
    assert logged == [("Not Found: /api/v1/inventory", 404, "req-1")]  # as Django logs it
