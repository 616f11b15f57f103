"""One formula for what the user pays (issue 13, costs/pricing.py): the estimate the rent page
shows is the amount the budget reserves (rental and extension), and a reservation used in full
bills exactly that estimate, with a markup and odd hour counts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

import costs.services
from costs.models import Budget
from costs.pricing import charge, charge_seconds, estimate, offer_price_at, price_per_hour
from costs.services import BudgetExceeded, rental_cost
from sessions import services
from sessions.hours import MAX_EXTENSION_HOURS
from sessions.lifecycle import rental_extend
from sessions.models import Rental, Status

pytestmark = pytest.mark.django_db

ODD_HOURS = ["0.1", "1.33", "11.99"]  # only the service takes these (chaos run); the page steps by 0.25
PAGE_HOURS = ["0.25", "1.25", "11.75"]
MARKUPS = ["0", "7.5"]


@pytest.fixture
def offer(fake, make_offer):
    """An awkward price, so every rounding shows: $0.3333/h."""
    fake.add_offer("p-1", "0.3333")
    return make_offer(provider=fake.name, provider_offer_id="p-1", price_per_hour="0.3333")


@pytest.fixture
def reserved(monkeypatch):
    """Every estimated_cost budget_reserve is asked to reserve, in order."""
    amounts: list[Decimal] = []
    real = costs.services.budget_reserve
    monkeypatch.setattr(
        costs.services, "budget_reserve", lambda **kw: amounts.append(kw["estimated_cost"]) or real(**kw)
    )
    return amounts


# --- the formula, by hand ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "base, markup, hours, charged, amount",
    [
        ("0.3333", "7.5", "0.1", "0.3583", "0.04"),  # 0.35829750 -> 0.3583; 0.03583 -> 0.04
        ("0.3333", "7.5", "1.33", "0.3583", "0.48"),  # 0.476539 -> 0.48
        ("0.3333", "7.5", "11.99", "0.3583", "4.30"),  # 4.296017 -> 4.30
        ("1.2000", "0", "2", "1.2000", "2.40"),
        ("0.0010", "50", "0.25", "0.0015", "0.00"),  # under a cent reserves nothing, shows $0.00
        ("2.0000", "12.5", "0.5", "2.2500", "1.13"),  # 1.125: half up
    ],
)
def test_price_per_hour_and_charge_by_hand(settings, base, markup, hours, charged, amount):
    assert price_per_hour(Decimal(base), Decimal(markup)) == Decimal(charged)
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal(markup)
    assert price_per_hour(Decimal(base)) == Decimal(charged)  # None: the team's current markup
    assert charge(Decimal(charged), Decimal(hours)) == Decimal(amount)
    assert estimate(Decimal(base), Decimal(hours), Decimal(markup)) == Decimal(amount)


def test_charge_seconds_multiplies_before_it_divides():
    # 0.0018 $/h × 1 s = 0.0000005 exactly -> 0.000001; dividing 1/3600 first would give 0.
    assert charge_seconds(Decimal("0.0018"), 1) == Decimal("0.000001")
    assert charge_seconds(Decimal("0.3583"), 4788, to=Decimal("0.01")) == charge(
        Decimal("0.3583"), Decimal("1.33")
    )


# --- the rent page shows what is reserved ---------------------------------------------------
@pytest.mark.parametrize("markup", MARKUPS)
@pytest.mark.parametrize("hours", PAGE_HOURS)
def test_the_rent_page_estimate_is_the_amount_reserved(
    fake, offer, user, client, settings, reserved, markup, hours
):
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal(markup)
    client.force_login(user)
    page = client.get(reverse("sessions:rent_estimate", args=[offer.pk]), {"reservation_hours": hours})
    full = client.get(reverse("sessions:rent", args=[offer.pk]) + f"?reservation_hours={hours}")

    services.rental_create(user=user, offer_id=offer.pk, reservation_hours=hours)

    expected = charge(price_per_hour(Decimal("0.3333"), Decimal(markup)), Decimal(hours))
    assert reserved == [expected]
    assert f"<strong>${reserved[0]}</strong>" in page.content.decode()
    assert reserved[0] == reserved[0].quantize(Decimal("0.01"))  # nothing hidden past the cent
    assert full.status_code == 200


@pytest.mark.parametrize("markup", MARKUPS)
@pytest.mark.parametrize("hours", ODD_HOURS)
def test_odd_hours_reserve_the_formula_and_bill_it_when_used_in_full(
    fake, offer, user, settings, reserved, markup, hours
):
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal(markup)
    rental = services.rental_create(user=user, offer_id=offer.pk, reservation_hours=hours).rental

    charged = price_per_hour(Decimal("0.3333"), Decimal(markup))
    assert rental.charged_price_per_hour == charged
    assert reserved == [charge(charged, Decimal(hours))]
    # Used for exactly the reservation, it costs exactly what was reserved, live and in the ledger.
    start = rental.created_at
    end = start + timedelta(seconds=int(Decimal(hours) * 3600))
    Rental.objects.filter(pk=rental.pk).update(status=Status.DESTROYED, active_since=start, ended_at=end)
    rental.refresh_from_db()
    costs.services.ledger_accrue(now=end + timedelta(hours=2))
    assert rental.cost_so_far() == rental_cost(rental) == reserved[0]


def test_an_extension_reserves_the_same_formula(fake, offer, user, settings, reserved):
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("7.5")
    rental = services.rental_create(user=user, offer_id=offer.pk, reservation_hours="1").rental
    Rental.objects.filter(pk=rental.pk).update(status=Status.ACTIVE)
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("20")  # the rental keeps the markup of rent time

    rental_extend(rental=rental, hours="1.25", actor=user)

    assert reserved[-1] == charge(Decimal("0.3583"), Decimal("1.25")) == Decimal("0.45")
    assert Decimal("1.25") <= MAX_EXTENSION_HOURS


def test_a_refusal_names_the_estimate_the_page_showed(fake, offer, user, client, settings):
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("7.5")
    Budget.objects.create(user=user, monthly_limit=Decimal("4.20"))
    client.force_login(user)
    page = client.get(reverse("sessions:rent_estimate", args=[offer.pk]), {"reservation_hours": "11.75"})
    assert "<strong>$4.21</strong>" in page.content.decode()  # 11.75 × 0.3583 = 4.210025

    with pytest.raises(BudgetExceeded, match=r"estimated cost \$4\.21 "):
        services.rental_create(user=user, offer_id=offer.pk, reservation_hours="11.75")
    assert Rental.objects.count() == 0


def test_the_disk_price_goes_through_the_same_formula(make_offer):
    offer = make_offer(
        price_per_hour="0.5000", storage_price_per_gb_hour=Decimal("0.000278"), disk_gb_default=10
    )
    assert offer_price_at(offer, 100) == Decimal("0.5250")
    assert offer_price_at(offer, 10) == offer_price_at(offer, None) == Decimal("0.5000")
