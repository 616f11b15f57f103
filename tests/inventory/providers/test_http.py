"""The shared request path: timeouts, auth header, error mapping, 429 backoff, redaction."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests
import responses
import time_machine
from responses import matchers

from inventory.providers import http
from inventory.providers.base import (
    AuthFailed,
    Provider,
    RateLimited,
    RateLimiter,
    Transient,
)

from .conftest import API_KEY, FakeLimiter, RecordingSession, add_variant, load

URL = "https://api.example.test"


class Dummy(Provider):
    name = "dummy"
    min_interval = 0.0


@pytest.fixture
def prov():
    p = Dummy(base_url=URL + "/", api_key=API_KEY, timeout=7.0, session=RecordingSession())
    p.limiter = FakeLimiter()
    return p


def test_success_sends_bearer_timeout_and_relaxes(rsps, prov):
    rsps.add(
        responses.POST,
        URL + "/things",
        json={"ok": True},
        match=[
            matchers.header_matcher({"Authorization": f"Bearer {API_KEY}"}),
            matchers.json_params_matcher({"a": 1}),
        ],
    )
    resp = http.request(prov, "POST", "/things", json={"a": 1})
    assert resp.ok and resp.data == {"ok": True}
    assert prov.session.calls[0]["timeout"] == 7.0
    assert prov.limiter.waits == 1 and prov.limiter.relaxed == 1


def test_plain_text_body_is_kept(rsps, prov):
    rsps.add(responses.GET, URL + "/x", body="not json at all", status=400, content_type="text/plain")
    resp = http.request(prov, "GET", "/x")
    assert resp.status == 400 and resp.data is None and resp.text == "not json at all"
    assert prov.limiter.relaxed == 0  # only a success relaxes the backoff


def test_plain_text_429_without_retry_after_backs_off_then_raises(rsps, prov):
    v = load("vastai_create_instance.json")["rate_limited"]
    call = add_variant(rsps, responses.GET, URL + "/x", v)
    with pytest.raises(RateLimited) as exc:
        http.request(prov, "GET", "/x")
    assert call.call_count == 1 + prov.max_retries_on_429
    assert prov.limiter.penalties == [None] * 4  # no Retry-After: the limiter decides the wait
    assert prov.limiter.waits == 4
    assert exc.value.status == 429 and exc.value.transient
    assert "API requests too frequent" in str(exc.value)


def test_429_then_200_succeeds(rsps, prov):
    rsps.add(responses.GET, URL + "/x", body="API requests too frequent", status=429)
    rsps.add(responses.GET, URL + "/x", json={"fine": 1})
    assert http.request(prov, "GET", "/x").data == {"fine": 1}
    assert prov.limiter.penalties == [None] and prov.limiter.relaxed == 1


def test_retry_after_is_honoured_and_capped(rsps, prov):
    rsps.add(responses.GET, URL + "/x", body="slow down", status=429, headers={"Retry-After": "7"})
    rsps.add(responses.GET, URL + "/x", body="slow down", status=429, headers={"Retry-After": "600"})
    rsps.add(responses.GET, URL + "/x", json={})
    http.request(prov, "GET", "/x")
    assert prov.limiter.penalties == [7.0, 60.0]


def test_real_limiter_waits_through_patched_sleep(rsps, prov, no_real_sleep):
    """With the real RateLimiter the 429 wait happens in limiter.wait(); the sleep is patched."""
    prov.limiter = RateLimiter(0.0)
    prov.max_retries_on_429 = 2
    for _ in range(3):
        rsps.add(responses.GET, URL + "/x", body="API requests too frequent", status=429)
    with pytest.raises(RateLimited) as exc:
        http.request(prov, "GET", "/x")
    assert len(no_real_sleep) == 2 and all(s > 0 for s in no_real_sleep)
    assert no_real_sleep[1] > no_real_sleep[0]  # exponential backoff
    assert exc.value.retry_after and exc.value.retry_after > 0


@time_machine.travel(1788040000, tick=False)
def test_vast_search_quota_is_not_retried(rsps, prov):
    v = load("vastai_misc.json")["search_quota_exceeded"]
    add_variant(rsps, responses.POST, URL + "/api/v0/bundles/", v)
    with pytest.raises(RateLimited) as exc:
        http.request(prov, "POST", "/api/v0/bundles/", json={})
    assert len(rsps.calls) == 1
    assert prov.limiter.penalties == []  # a daily quota is not a throttle
    assert exc.value.retry_after == pytest.approx(8000)  # X-RateLimit-Reset 1788048000 - now


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures(rsps, prov, status):
    v = load("vastai_create_instance.json")["unauthorized"]
    add_variant(rsps, responses.GET, URL + "/x", {**v, "status": status})
    with pytest.raises(AuthFailed) as exc:
        http.request(prov, "GET", "/x")
    assert exc.value.status == status and "Invalid user key" in str(exc.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient(rsps, prov, status):
    rsps.add(responses.GET, URL + "/x", body="<html>Bad Gateway</html>", status=status)
    with pytest.raises(Transient) as exc:
        http.request(prov, "GET", "/x")
    assert exc.value.status == status and exc.value.transient
    assert len(rsps.calls) == 1  # not retried: a create may have happened


@pytest.mark.parametrize("error", [requests.Timeout("read timed out"), requests.ConnectionError("refused")])
def test_transport_errors_are_transient(rsps, prov, error):
    rsps.add(responses.GET, URL + "/x", body=error)
    with pytest.raises(Transient) as exc:
        http.request(prov, "GET", "/x")
    assert type(exc.value) is Transient


def test_api_key_never_in_messages(rsps, prov):
    echo = f"bad request for key {API_KEY} " + "x" * 1000
    rsps.add(responses.GET, URL + "/x", body=echo, status=500)
    rsps.add(responses.GET, URL + "/y", body=requests.ConnectionError(f"refused {API_KEY}"))
    for path in ("/x", "/y"):
        with pytest.raises(Transient) as exc:
            http.request(prov, "GET", path)
        assert API_KEY not in str(exc.value)
    assert len(http.redact(echo, API_KEY)) <= http.SNIPPET_CHARS + 3


def test_to_money_uses_str_not_float():
    assert http.to_money(0.1 + 0.2) == Decimal("0.3000")
    assert http.to_money(0.302111) == Decimal("0.3021")
    assert http.to_money(0.12345) == Decimal("0.1235")  # half up
    assert http.to_money(None) is None and http.to_money("abc") is None
