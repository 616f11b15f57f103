"""API rate limits (DRF) and the failed-login limit (shopper/throttling.py)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine
from django.core.cache import cache, caches
from django.urls import reverse
from django.utils import timezone
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory
from rest_framework.views import APIView

pytestmark = pytest.mark.django_db

PASSWORD = "pw-alice-123"  # tests/conftest.py's user


# ------------------------------------------------------------------------------- API
def test_suite_defaults_are_high(settings):
    # pyproject's [tool.pytest_env] keeps the rest of the suite unthrottled.
    assert settings.API_THROTTLE_USER == "100000/min"
    assert settings.API_THROTTLE_ANON == "100000/min"
    assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] == [
        "shopper.throttling.AnonThrottle",
        "shopper.throttling.UserThrottle",
    ]


def test_user_throttle_returns_429_in_the_error_format(api_client, settings):
    settings.API_THROTTLE_USER = "3/min"
    for _ in range(3):
        assert api_client.get("/api/v1/sessions").status_code == 200
    resp = api_client.get("/api/v1/sessions")
    assert resp.status_code == 429
    body = resp.json()
    assert body["code"] == "throttled"
    assert set(body) == {"detail", "code"}
    assert int(resp["Retry-After"]) > 0


def test_user_throttle_is_per_user(api_client, other_user, settings):
    settings.API_THROTTLE_USER = "2/min"
    for _ in range(2):
        api_client.get("/api/v1/sessions")
    assert api_client.get("/api/v1/sessions").status_code == 429
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.get("/api/v1/sessions").status_code == 200


def test_user_throttle_window_passes(api_client, settings):
    settings.API_THROTTLE_USER = "1/min"
    with time_machine.travel(timezone.now(), tick=False) as clock:
        assert api_client.get("/api/v1/sessions").status_code == 200
        assert api_client.get("/api/v1/sessions").status_code == 429
        clock.shift(timedelta(seconds=61))
        assert api_client.get("/api/v1/sessions").status_code == 200


class OpenView(APIView):
    """An API view open to anonymous clients, with the project's default throttles."""

    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"ok": True})


def test_anon_throttle_returns_429_in_the_error_format(settings):
    settings.API_THROTTLE_ANON = "2/min"
    factory = APIRequestFactory()
    view = OpenView.as_view()
    for _ in range(2):
        assert view(factory.get("/open")).status_code == 200
    resp = view(factory.get("/open"))
    resp.render()
    assert resp.status_code == 429
    body = json.loads(resp.content)
    assert body["code"] == "throttled" and set(body) == {"detail", "code"}
    assert int(resp["Retry-After"]) > 0
    # Another address has its own allowance.
    assert view(factory.get("/open", REMOTE_ADDR="10.9.9.9")).status_code == 200


def test_anonymous_api_calls_without_credentials_are_refused_not_throttled(settings):
    settings.API_THROTTLE_ANON = "1/min"
    client = APIClient()
    for _ in range(3):
        assert client.get("/api/v1/sessions").status_code in (401, 403)


def test_self_authenticating_endpoints_are_not_anon_throttled(settings):
    """Health probes and node agents (many rentals behind one address) are exempt."""
    settings.API_THROTTLE_ANON = "1/min"
    client = APIClient()
    for _ in range(3):
        assert client.get("/api/v1/health").status_code == 200
        assert client.post("/api/v1/agent/heartbeat", {}, format="json").status_code != 429


# ------------------------------------------------------------------------------- login
@pytest.fixture
def login_limits(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 3
    settings.LOGIN_THROTTLE_WINDOW_SECONDS = 15 * 60


def login(client, username="alice", password="wrong-password", addr="10.0.0.1"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=addr)


def test_login_throttled_after_the_limit_even_with_the_right_password(client, user, login_limits):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(3):
            resp = login(client)
            assert resp.status_code == 200
            assert b"didn&#x27;t match" in resp.content or b"didn't match" in resp.content
        resp = login(client)
        assert resp.status_code == 429
        assert b"Too many failed login attempts" in resp.content
        assert b'value="alice"' in resp.content

        resp = login(client, password=PASSWORD)
        assert resp.status_code == 429
        assert "_auth_user_id" not in client.session

        # Another address, or another username from this one, is not affected.
        assert login(client, addr="10.0.0.2", password=PASSWORD).status_code == 302
        client.logout()
        assert login(client, username="bob").status_code == 200

        clock.shift(timedelta(minutes=16))
        resp = login(client, password=PASSWORD)
        assert resp.status_code == 302
        assert "_auth_user_id" in client.session


def test_success_resets_the_failure_count(client, user, login_limits):
    for _ in range(2):
        assert login(client).status_code == 200
    assert login(client, password=PASSWORD).status_code == 302
    client.logout()
    for _ in range(3):
        assert login(client).status_code == 200
    assert login(client).status_code == 429


def test_username_case_does_not_escape_the_limit(client, user, login_limits):
    for name in ["alice", "Alice", "ALICE"]:
        assert login(client, username=name).status_code == 200
    assert login(client, username="aLiCe ").status_code == 429


def test_login_page_unchanged_for_get_and_default_limit(client, settings):
    assert settings.LOGIN_THROTTLE_ATTEMPTS == 10
    assert settings.LOGIN_THROTTLE_WINDOW_SECONDS == 900
    resp = client.get(reverse("login"))
    assert resp.status_code == 200
    assert b'name="password"' in resp.content


# ------------------------------------------------------------------------ across processes
def test_a_unicode_variant_of_the_username_shares_its_counter(client, user, login_limits):
    """Django's login form normalizes the username (NFKC): fullwidth ａｌｉｃｅ logs in as alice,
    so it must not get a fresh allowance while alice is locked."""
    assert login(client, username="ａｌｉｃｅ", password=PASSWORD).status_code == 302  # a real variant
    client.logout()
    for name in ["alice", "ａｌｉｃｅ", "ＡＬＩＣＥ"]:
        assert login(client, username=name).status_code == 200
    resp = login(client, username="ａlice", password=PASSWORD)
    assert resp.status_code == 429
    assert "_auth_user_id" not in client.session


def test_login_counters_are_not_in_process_memory(client, user, login_limits):
    """Another web process has another memory: a cleared cache must not forget the failures."""
    for _ in range(3):
        assert login(client).status_code == 200
    cache.clear()
    caches["local"].clear()
    assert login(client, password=PASSWORD).status_code == 429


def test_api_counters_are_not_in_process_memory(api_client, settings):
    settings.API_THROTTLE_USER = "2/min"
    for _ in range(2):
        assert api_client.get("/api/v1/sessions").status_code == 200
    cache.clear()
    caches["local"].clear()
    assert api_client.get("/api/v1/sessions").status_code == 429


def test_counter_windows_restart_after_they_end():
    from shopper.throttling import counter_hit, counter_value

    with time_machine.travel(timezone.now(), tick=False) as clock:
        assert counter_hit("t:x", 10)[0] == 1
        assert counter_hit("t:x", 10)[0] == 2
        assert counter_value("t:x") == 2
        clock.shift(timedelta(seconds=10))
        assert counter_value("t:x") == 0
        count, ends = counter_hit("t:x", 10)
        assert count == 1 and ends == pytest.approx(timezone.now().timestamp() + 10)
