"""GET /api/v1/costs (API.md) and the 403 budget_exceeded of POST /api/v1/sessions."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine

from costs.models import Budget
from inventory import providers as registry
from inventory.providers.base import OfferData, Provider
from sessions.models import Rental, RentalEvent
from tests.costs.conftest import utc

pytestmark = pytest.mark.django_db

NOW = utc(2025, 3, 20, 12, 0)


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def spend(billed, user, other_user):
    """alice: $3.00 on vastai today and $5.00 on tensordock on 03-02; bob: $4.00; Feb: $10."""
    billed(NOW - timedelta(hours=2), price="1.5000")
    billed(utc(2025, 3, 2, 10), utc(2025, 3, 2, 12), price="2.5000", provider="tensordock", gpu_type="A100")
    billed(NOW - timedelta(hours=1), price="4.0000", consumer=other_user)
    billed(utc(2025, 2, 10, 10), utc(2025, 2, 10, 11), price="10.0000")


def test_a_user_sees_their_own_spend_this_month(api_client, spend, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("20"))
    response = api_client.get("/api/v1/costs")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["from"] == "2025-03-01T00:00:00Z" and body["to"] == "2025-03-20T12:00:00Z"
    assert (body["consumer"], body["period"], body["currency"]) == ("alice", "month", "USD")
    assert (body["total"], body["provider_cost"], body["hours"]) == ("8.00", "8.00", "4.00")
    assert body["series"] == [
        {"period": "2025-03", "amount": "8.00", "provider_cost": "8.00", "hours": "4.00"}
    ]
    assert [(r["key"], r["amount"]) for r in body["by_provider"]] == [
        ("tensordock", "5.00"),
        ("vastai", "3.00"),
    ]
    assert [(r["key"], r["amount"]) for r in body["by_gpu_type"]] == [
        ("A100", "5.00"),
        ("RTX 4090 24GB", "3.00"),
    ]
    assert "by_consumer" not in body
    assert body["budget"]["user"] == {
        "limit": "20.00", "spent": "8.00", "reserved": "0.00", "remaining": "12.00", "percent": "40.0"
    }  # fmt: skip
    assert body["budget"]["team"] is None


def test_period_day_and_an_inclusive_to_date(api_client, spend):
    body = api_client.get("/api/v1/costs", {"period": "day", "from": "2025-02-01", "to": "2025-03-02"}).json()
    assert body["to"] == "2025-03-03T00:00:00Z"
    assert [(r["period"], r["amount"]) for r in body["series"]] == [
        ("2025-02-10", "10.00"),
        ("2025-03-02", "5.00"),
    ]
    assert body["total"] == "15.00"


def test_staff_see_the_team_and_one_person(staff_client, spend):
    body = staff_client.get("/api/v1/costs").json()
    assert body["consumer"] is None and body["total"] == "12.00"
    assert [(r["key"], r["amount"]) for r in body["by_consumer"]] == [("alice", "8.00"), ("bob", "4.00")]
    bob = staff_client.get("/api/v1/costs", {"consumer": "bob"}).json()
    assert (bob["consumer"], bob["total"]) == ("bob", "4.00") and "by_consumer" not in bob


def test_markup_shows_charged_and_provider_cost(api_client, billed):
    billed(NOW - timedelta(hours=2), price="1.0000", markup_percent=Decimal("25"))
    body = api_client.get("/api/v1/costs").json()
    assert (body["total"], body["provider_cost"]) == ("2.50", "2.00")


def test_a_user_cannot_ask_for_someone_else(api_client, spend):
    response = api_client.get("/api/v1/costs", {"consumer": "bob"})
    assert response.status_code == 403
    assert response.json() == {
        "detail": "consumer= is for staff only; you see your own spend.",
        "code": "forbidden",
    }
    assert api_client.get("/api/v1/costs", {"consumer": "alice"}).json()["total"] == "8.00"


@pytest.mark.parametrize(
    "params,name",
    [
        ({"period": "week"}, "period"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2025-13-01"}, "to"),
        ({"from": "2025-03-10", "to": "2025-03-01"}, "to"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(api_client, params, name):
    response = api_client.get("/api/v1/costs", params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and body["detail"].startswith(f"{name}: ")


def test_staff_unknown_consumer_is_a_400(staff_client):
    response = staff_client.get("/api/v1/costs", {"consumer": "nobody"})
    assert response.status_code == 400 and response.json()["detail"] == "consumer: No user named 'nobody'."


def test_anonymous_is_refused(client):
    assert client.get("/api/v1/costs").status_code in (401, 403)


# --- POST /api/v1/sessions over budget ---------------------------------------------------------------
class BudgetCloud(Provider):
    name = "budgetcloud"
    display_name = "Budget Cloud"

    def get_offer(self, offer_id):
        return OfferData("budgetcloud", offer_id, "RTX 4090 24GB", 1, 24, Decimal("1.2000"))


def test_renting_over_budget_is_403_budget_exceeded_and_creates_nothing(
    api_client, user, make_offer, settings, monkeypatch, django_capture_on_commit_callbacks
):
    registry.register_provider("budgetcloud", f"{__name__}.BudgetCloud")
    settings.BUDGETCLOUD_API_KEY = "k"
    enqueued = []
    settings.SHOPPER_TASK_QUEUE = lambda func, *args: enqueued.append(func)
    try:
        offer = make_offer(provider="budgetcloud", provider_offer_id="b-1", price_per_hour="1.2000")
        Budget.objects.create(user=user, monthly_limit=Decimal("2"))
        with django_capture_on_commit_callbacks(execute=True):
            response = api_client.post(
                "/api/v1/sessions", {"offer_id": str(offer.pk), "reservation_hours": 2}, format="json"
            )
        assert response.status_code == 403
        body = response.json()
        assert body["code"] == "budget_exceeded"
        assert "estimated cost $2.40" in body["detail"] and "$2.00 left" in body["detail"]
        assert not Rental.objects.exists() and not RentalEvent.objects.exists() and enqueued == []
        with django_capture_on_commit_callbacks(execute=True):
            ok = api_client.post(
                "/api/v1/sessions", {"offer_id": str(offer.pk), "reservation_hours": 1}, format="json"
            )
        assert ok.status_code == 201, ok.json()
    finally:
        registry.unregister_provider("budgetcloud")
