"""Provider account balances (sessions/balances.py): read with each reconcile, shown on the safety
page, in /metrics and in health; admins alerted when a balance covers too few hours; a rental the
account cannot pay for refused with a 409 naming the provider."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inventory.providers.base import Transient
from sessions.balances import balances_check
from sessions.models import Alert, AlertKind, ProviderBalance, Rental, Status
from tests.sessions.conftest import START

S = Status
TOKEN = "metrics-token-0123456789"


@pytest.fixture(autouse=True)
def balance_settings(settings):
    settings.SHOPPER_BALANCE_ALERT_HOURS = 24


def test_a_balance_covering_too_few_hours_alerts_once_and_says_what_running_out_does(
    fake, active_rental, mailoutbox
):
    active_rental()  # $1.50/h at the provider
    active_rental()  # burn: $3.00/h
    fake.balance = Decimal("60.00")  # 20 h < 24 h

    assert balances_check() == {"fakecloud": "60.00"}
    balances_check()

    row = ProviderBalance.objects.get(provider="fakecloud")
    assert row.balance == Decimal("60.00") and row.fetched_at == START
    (alert,) = Alert.objects.filter(kind=AlertKind.BALANCE_LOW, resolved_at__isnull=True)
    assert "$60.00: 20.0 h at the current burn of $3.00/h" in alert.message
    assert "stops the machines" in alert.message and "keeps charging their storage" in alert.message
    assert len(mailoutbox) == 1

    fake.balance = Decimal("500")  # topped up: 166 h
    balances_check()
    assert not Alert.objects.filter(kind=AlertKind.BALANCE_LOW, resolved_at__isnull=True).exists()


def test_an_empty_account_alerts_even_with_nothing_running(fake, offer):
    fake.balance = Decimal("-1.20")
    balances_check()
    (alert,) = Alert.objects.filter(kind=AlertKind.BALANCE_LOW)
    assert "no time" in alert.message


def test_no_endpoint_or_a_failing_one_stores_no_figure(fake, offer):
    fake.balance = None
    assert balances_check() == {}
    assert not ProviderBalance.objects.exists()
    fake.fail["balance"].append(Transient("503 from users/current"))
    fake.balance = Decimal("10")
    assert balances_check() == {}
    row = ProviderBalance.objects.get(provider="fakecloud")
    assert row.balance is None and "503" in row.last_error
    assert not Alert.objects.exists()


def test_the_safety_loop_reads_balances_with_each_reconcile(fake, offer):
    from sessions.management.commands import safety_loop

    fake.balance = Decimal("1000")
    loop = safety_loop.Command()
    loop.tick(reconcile_now=False)
    assert fake.count("balance") == 0
    loop.tick(reconcile_now=True)
    assert fake.count("balance") == 1
    assert ProviderBalance.objects.get(provider="fakecloud").balance == Decimal("1000")


# -------------------------------------------------------------------- refusing a rental
def rent(api_client, offer, captured, hours=2):
    payload = {"offer_id": str(offer.pk), "reservation_hours": hours}
    with captured(execute=True):
        return api_client.post("/api/v1/sessions", payload, format="json")


def test_a_rental_the_account_cannot_pay_for_is_a_409_naming_the_provider(
    fake, offer, api_client, active_rental, django_capture_on_commit_callbacks
):
    # A live rental with 1 h left at $1.50/h has $1.50 reserved; a new 2 h one needs $3.00.
    active_rental(reservation_ends_at=START + timedelta(hours=1))
    ProviderBalance.objects.create(provider="fakecloud", balance=Decimal("4.49"), fetched_at=START)
    before = Rental.objects.count()

    response = rent(api_client, offer, django_capture_on_commit_callbacks)

    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "insufficient_balance"
    assert "fakecloud account balance ($4.49)" in body["detail"]
    assert Rental.objects.count() == before  # nothing rented

    ProviderBalance.objects.filter(provider="fakecloud").update(balance=Decimal("4.50"))
    assert rent(api_client, offer, django_capture_on_commit_callbacks).status_code == 201


def test_an_unknown_balance_refuses_nothing(fake, offer, api_client, django_capture_on_commit_callbacks):
    ProviderBalance.objects.create(provider="fakecloud", balance=None, last_error="never read")
    assert rent(api_client, offer, django_capture_on_commit_callbacks).status_code == 201


# -------------------------------------------------------------------- where it is shown
def test_metrics_health_and_the_safety_page_show_it(fake, active_rental, client, settings, staff, api_client):
    active_rental()
    ProviderBalance.objects.create(provider="fakecloud", balance=Decimal("30.00"), fetched_at=START)
    settings.METRICS_TOKEN = TOKEN

    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    found = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("shopper_provider_balance_usd", (("provider", "fakecloud"),))] == 30.0
    assert found[("shopper_provider_balance_hours", (("provider", "fakecloud"),))] == 20.0

    anonymous = {p["name"]: p for p in client.get("/api/v1/health").json()["providers"]}
    assert anonymous["fakecloud"]["balance"]["usd"] == "hidden"
    signed_in = {p["name"]: p for p in api_client.get("/api/v1/health").json()["providers"]}
    assert signed_in["fakecloud"]["balance"]["usd"] == "30.0000"

    client.force_login(staff)
    page = client.get("/safety/").content.decode()
    assert "$30.00" in page and "20.0 h" in page
    assert "keeps charging their storage" in page
