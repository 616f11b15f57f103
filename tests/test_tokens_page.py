"""The API tokens page: create (key shown once), list, revoke, expiry and bad input."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from common.cache import local_cache
from shopper.auth import TOKEN_CACHE_PREFIX
from shopper.models import ApiToken

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"gs_[A-Za-z0-9_-]{20,}")


def create(client, **data):
    return client.post(reverse("tokens"), {"name": "laptop", **data})


def raw_key(response) -> str:
    keys = set(KEY_RE.findall(response.content.decode()))
    assert len(keys) == 1, keys
    return keys.pop()


def test_anonymous_is_sent_to_login(client):
    for response in (client.get(reverse("tokens")), client.post(reverse("tokens"), {"name": "x"})):
        assert response.status_code == 302
        assert reverse("login") in response["Location"]
    assert not ApiToken.objects.exists()


def test_create_shows_the_key_once_and_it_authenticates(client_logged_in, user, caplog):
    with caplog.at_level(logging.INFO, logger="shopper.views"):
        response = create(client_logged_in, name="CI nightly")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = raw_key(response)
    html = response.content.decode()
    assert "not shown again" in html
    assert "Authorization: Token &lt;key&gt;" in html
    # the CLI hint names this site, so it works as pasted (--url)
    assert f"gpu-shopper config --url http://testserver --token {raw}" in html

    token = ApiToken.objects.get(user=user)
    assert token.name == "CI nightly" and token.expires_at is None
    assert token.prefix == raw[:8] and raw not in token.key_hash
    # Never kept for later: not in the session, not in a later page.
    assert raw not in str(dict(client_logged_in.session))
    listing = client_logged_in.get(reverse("tokens")).content.decode()
    assert raw not in listing and not KEY_RE.search(listing)
    assert f"{token.prefix}…" in listing and "CI nightly" in listing

    # Audit trail: who, which token, never the key.
    assert any("api token created" in r.getMessage() and "alice" in r.getMessage() for r in caplog.records)
    assert token.prefix in caplog.text and raw not in caplog.text

    client_logged_in.logout()
    api = client_logged_in.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Token {raw}")
    assert api.status_code == 200


def test_expiry_in_days_and_on_a_date(client_logged_in, user):
    before = timezone.now()
    raw_key(create(client_logged_in, name="thirty", expires_in_days="30"))
    token = ApiToken.objects.get(name="thirty")
    assert before + timedelta(days=30) <= token.expires_at <= timezone.now() + timedelta(days=30)

    day = timezone.localdate() + timedelta(days=10)
    raw_key(create(client_logged_in, name="dated", expires_on=day.isoformat()))
    token = ApiToken.objects.get(name="dated")
    assert timezone.localtime(token.expires_at).date() == day
    assert (token.expires_at.hour, token.expires_at.minute) == (0, 0)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"name": ""}, "Give the token a name"),
        ({"name": "   "}, "Give the token a name"),
        ({"name": "x" * 101}, "at most 100 characters"),
        ({"expires_in_days": "0"}, "from 1 to 365"),
        ({"expires_in_days": "366"}, "from 1 to 365"),
        ({"expires_in_days": "soon"}, "from 1 to 365"),
        ({"expires_in_days": "1.5"}, "from 1 to 365"),
        ({"expires_on": "yesterday"}, "YYYY-MM-DD"),
        ({"expires_on": "2000-01-01"}, "after today"),
        ({"expires_on": (timezone.localdate() + timedelta(days=400)).isoformat()}, "at most 365 days"),
        (
            {"expires_in_days": "5", "expires_on": (timezone.localdate() + timedelta(days=5)).isoformat()},
            "not both",
        ),
    ],
)
def test_bad_input_shows_errors_and_creates_nothing(client_logged_in, data, error):
    response = create(client_logged_in, **data)
    assert response.status_code == 400
    html = response.content.decode()
    assert error in html
    assert not KEY_RE.search(html)
    assert not ApiToken.objects.exists()


def test_a_second_active_token_with_the_same_name_is_refused(client_logged_in):
    raw_key(create(client_logged_in, name="laptop"))
    response = create(client_logged_in, name="laptop")  # e.g. the browser re-posting the form
    assert response.status_code == 400
    assert "already have an active token named" in response.content.decode()
    assert ApiToken.objects.count() == 1


def test_revoke_stops_the_token_at_once(client_logged_in, user, caplog):
    raw = raw_key(create(client_logged_in, name="script"))
    token = ApiToken.objects.get()
    auth = {"HTTP_AUTHORIZATION": f"Token {raw}"}
    from django.test import Client

    api = Client()
    assert api.get("/api/v1/sessions", **auth).status_code == 200
    assert api.get("/api/v1/inventory", **auth).status_code == 200  # primes the fast-path cache
    assert local_cache.get(f"{TOKEN_CACHE_PREFIX}{token.key_hash}") == user.pk

    with caplog.at_level(logging.INFO, logger="shopper.views"):
        response = client_logged_in.post(reverse("token_revoke", args=[token.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("tokens")
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert local_cache.get(f"{TOKEN_CACHE_PREFIX}{token.key_hash}") is None
    assert "api token revoked" in caplog.text and token.prefix in caplog.text and raw not in caplog.text

    assert api.get("/api/v1/sessions", **auth).status_code == 401
    assert api.get("/api/v1/inventory", **auth).status_code == 401

    page = client_logged_in.get(reverse("tokens")).content.decode()
    assert "revoked" in page and "Revoked the token" in page
    assert reverse("token_revoke", args=[token.pk]) not in page  # no second revoke button


def test_revoke_with_htmx_returns_the_table(client_logged_in):
    raw_key(create(client_logged_in, name="script"))
    token = ApiToken.objects.get()
    response = client_logged_in.post(reverse("token_revoke", args=[token.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="token-table">')
    assert "Revoked the token" in html and "<html" not in html


def test_revoking_someone_elses_token_is_404(client_logged_in, other_user):
    token, _ = ApiToken.issue(user=other_user, name="bob's")
    response = client_logged_in.post(reverse("token_revoke", args=[token.pk]))
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert client_logged_in.post(reverse("token_revoke", args=[999999])).status_code == 404
    # Nor is it listed.
    assert "bob&#x27;s" not in client_logged_in.get(reverse("tokens")).content.decode()


def test_revoke_needs_post_and_login(client, user):
    token, _ = ApiToken.issue(user=user, name="t")
    url = reverse("token_revoke", args=[token.pk])
    assert client.post(url).status_code == 302
    client.force_login(user)
    assert client.get(url).status_code == 405
    token.refresh_from_db()
    assert token.revoked_at is None


def test_statuses_in_the_list(client_logged_in, user):
    now = timezone.now()
    ApiToken.issue(user=user, name="fresh", expires_at=now + timedelta(days=3))
    ApiToken.issue(user=user, name="old", expires_at=now - timedelta(minutes=1))
    gone, _ = ApiToken.issue(user=user, name="gone")
    ApiToken.objects.filter(pk=gone.pk).update(revoked_at=now)

    html = client_logged_in.get(reverse("tokens")).content.decode()
    rows = {m.group(1): m.group(2) for m in re.finditer(r'class="gpu">([^<]+)</td>(.*?)</tr>', html, re.S)}
    assert ">active<" in rows["fresh"]
    assert ">expired<" in rows["old"]
    assert ">revoked<" in rows["gone"]
    # An expired token may be re-created under the same name.
    raw_key(create(client_logged_in, name="old"))
