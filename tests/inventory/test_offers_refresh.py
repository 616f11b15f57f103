from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from inventory import providers as registry
from inventory.models import Offer, ProviderFeed
from inventory.providers.base import OfferData, Provider, RateLimited, Transient
from inventory.services import offers_refresh

pytestmark = pytest.mark.django_db


class FakeCloud(Provider):
    """Answers search_offers with whatever the test put in ``answer`` (a list or an exception)."""

    name = "fakecloud"
    display_name = "Fake Cloud"
    answer: list | Exception = []
    calls = 0

    def search_offers(self, filter=None):
        FakeCloud.calls += 1
        if isinstance(FakeCloud.answer, Exception):
            raise FakeCloud.answer
        return FakeCloud.answer


class OtherCloud(FakeCloud):
    name = "othercloud"
    display_name = "Other Cloud"
    answer: list | Exception = []

    def search_offers(self, filter=None):
        if isinstance(OtherCloud.answer, Exception):
            raise OtherCloud.answer
        return OtherCloud.answer


def offer(pid: str, price: str = "1.00", provider: str = "fakecloud", **kw) -> OfferData:
    return OfferData(
        provider=provider,
        provider_offer_id=pid,
        gpu_type=kw.pop("gpu_type", "RTX 4090 24GB"),
        gpu_count=kw.pop("gpu_count", 2),
        vram_gb=24,
        price_per_hour=Decimal(price),
        **kw,
    )


@pytest.fixture(autouse=True)
def clouds(settings):
    registry.register_provider("fakecloud", f"{__name__}.FakeCloud")
    registry.register_provider("othercloud", f"{__name__}.OtherCloud")
    settings.FAKECLOUD_API_KEY = "k1"
    settings.OTHERCLOUD_API_KEY = "k2"
    settings.SHOPPER_OFFERS_CACHE_SECONDS = 60
    settings.SHOPPER_OFFERS_MAX_BACKOFF_SECONDS = 300
    FakeCloud.answer, OtherCloud.answer, FakeCloud.calls = [], [], 0
    yield
    registry.unregister_provider("fakecloud")
    registry.unregister_provider("othercloud")


def by_id(provider="fakecloud"):
    return {o.provider_offer_id: o for o in Offer.objects.filter(provider=provider)}


def test_it_inserts_offers_with_a_per_gpu_price():
    FakeCloud.answer = [offer("a", "1.5000"), offer("b", "0.3333", gpu_count=1)]
    [fake] = [r for r in offers_refresh() if r.provider == "fakecloud"]
    assert fake.outcome == "refreshed" and fake.offers == 2
    rows = by_id()
    assert rows["a"].price_per_hour == Decimal("1.5000")
    assert rows["a"].price_per_gpu_hour == Decimal("0.7500")
    assert rows["b"].price_per_gpu_hour == Decimal("0.3333")
    assert all(o.available for o in rows.values())


def test_it_updates_in_place_and_marks_vanished_offers_unavailable():
    FakeCloud.answer = [offer("a", "1.00"), offer("b", "2.00")]
    offers_refresh()
    pk_before = by_id()["a"].pk
    FakeCloud.answer = [offer("a", "1.25")]
    offers_refresh(force=True)
    rows = by_id()
    assert rows["a"].pk == pk_before  # same row: the offer id stays stable for scripts
    assert rows["a"].price_per_hour == Decimal("1.2500") and rows["a"].available
    assert rows["b"].available is False  # vanished: unavailable, never deleted
    FakeCloud.answer = [offer("a", "1.25"), offer("b", "2.00")]
    offers_refresh(force=True)
    assert by_id()["b"].available is True


def test_it_caches_each_provider_for_60_seconds():
    FakeCloud.answer = [offer("a")]
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        offers_refresh()
        offers_refresh()
        assert FakeCloud.calls == 1
        traveller.shift(timedelta(seconds=61))
        offers_refresh()
        assert FakeCloud.calls == 2


def test_rate_limiting_backs_off_up_to_five_minutes_and_keeps_the_offers():
    FakeCloud.answer = [offer("a")]
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        offers_refresh()
        FakeCloud.answer = RateLimited("API requests too frequent")
        waits = []
        for _ in range(6):
            traveller.shift(timedelta(seconds=301))
            before = timezone.now()
            [fake] = [r for r in offers_refresh() if r.provider == "fakecloud"]
            assert fake.outcome == "rate_limited"
            waits.append((ProviderFeed.objects.get(pk="fakecloud").next_fetch_at - before).total_seconds())
        assert waits == [60, 120, 240, 300, 300, 300]
        assert by_id()["a"].available  # a failed answer never hides what we had
        FakeCloud.answer = [offer("a", "0.90")]
        traveller.shift(timedelta(seconds=301))
        offers_refresh()
        feed = ProviderFeed.objects.get(pk="fakecloud")
        assert feed.consecutive_failures == 0 and feed.last_error == ""


def test_one_provider_failing_never_hides_the_others_offers():
    FakeCloud.answer = [offer("a")]
    OtherCloud.answer = [offer("z", provider="othercloud")]
    offers_refresh()
    FakeCloud.answer = Transient("502 Bad Gateway")
    OtherCloud.answer = [offer("z", "0.50", provider="othercloud")]
    results = {r.provider: r.outcome for r in offers_refresh(force=True)}
    assert results["fakecloud"] == "error" and results["othercloud"] == "refreshed"
    assert by_id()["a"].available
    assert by_id("othercloud")["z"].price_per_hour == Decimal("0.5000")
    assert "502" in ProviderFeed.objects.get(pk="fakecloud").last_error


def test_a_provider_without_a_key_is_disabled_and_its_offers_are_withdrawn(settings):
    FakeCloud.answer = [offer("a")]
    offers_refresh()
    settings.FAKECLOUD_API_KEY = ""
    results = {r.provider: r for r in offers_refresh(force=True)}
    assert results["fakecloud"].outcome == "disabled"
    assert "FAKECLOUD_API_KEY" in results["fakecloud"].detail
    assert not by_id()["a"].available
    assert FakeCloud.calls == 1


def test_the_health_endpoint_reports_providers_and_needs_no_login(client):
    FakeCloud.answer = [offer("a")]
    offers_refresh()
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok" and body["database"] == "ok"
    providers = {p["name"]: p for p in body["providers"]}
    assert providers["fakecloud"]["enabled"] and providers["fakecloud"]["offers"] == 1
    assert providers["vastai"]["enabled"] is False
    assert "VASTAI_API_KEY" in providers["vastai"]["reason"]


def test_the_health_endpoint_shows_provider_error_text_only_to_signed_in_users(client, api_client):
    FakeCloud.answer = Transient("upstream said: account 4412 is over its spending limit")
    offers_refresh()
    anonymous = {p["name"]: p for p in client.get("/api/v1/health").json()["providers"]}
    signed_in = {p["name"]: p for p in api_client.get("/api/v1/health").json()["providers"]}
    assert anonymous["fakecloud"]["last_error"] == "failing"
    bad_token = client.get("/api/v1/health", HTTP_AUTHORIZATION="Token gs_not-a-real-token")
    assert bad_token.status_code == 200  # a probe is never refused
    assert {p["name"]: p for p in bad_token.json()["providers"]}["fakecloud"]["last_error"] == "failing"
    assert "account 4412" in signed_in["fakecloud"]["last_error"]


def test_the_health_endpoint_answers_503_when_the_database_is_down(client, monkeypatch):
    from django.db import connection
    from django.db.utils import OperationalError

    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", broken)
    response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json()["status"] == "error"


def test_the_offers_page_says_which_providers_are_disabled(client_logged_in):
    html = client_logged_in.get("/offers/").content.decode()
    assert "disabled — no API key set (VASTAI_API_KEY)" in html


def test_the_inventory_cache_follows_a_refresh(api_client):
    FakeCloud.answer = [offer("a", "1.00")]
    offers_refresh()
    first = api_client.get("/api/v1/inventory", {"provider": "fakecloud"}).json()
    assert [r["price_per_hour"] for r in first["results"]] == ["1.0000"]
    FakeCloud.answer = [offer("a", "2.00")]
    with time_machine.travel(timezone.now() + timedelta(seconds=1)):
        offers_refresh(force=True)
        second = api_client.get("/api/v1/inventory", {"provider": "fakecloud"}).json()
    assert [r["price_per_hour"] for r in second["results"]] == ["2.0000"]
