"""One rule for reservation and extension hours (sessions/hours.py): at least 0.25 h, in steps of
0.25 h, the same on the page, the API and the extension (issue 12, "Reservations too short to be
real"); and an offer id is ASCII digits (issue 12: "²" passed str.isdigit and was a 500).
Bad input is a 4xx that changes nothing and asks no provider."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from sessions.forms import RentForm
from sessions.hours import MIN_HOURS, STEP_HOURS, hours_check
from sessions.lifecycle import rental_extend
from sessions.models import Rental, RentalEvent, Status
from tests.sessions.conftest import START, fresh

TOO_SHORT = ["0.0001", "0.1", "0.24"]
OFF_STEP = ["1.1", "0.3", "2.01", "11.9999"]


def test_the_rule_itself():
    assert (Decimal("0.25"), Decimal("0.25")) == (MIN_HOURS, STEP_HOURS)
    for ok in ("0.25", "0.5", "1", "1.75", "12", "12.00"):
        assert hours_check(ok, maximum=12) == Decimal(ok)
    for bad in [*TOO_SHORT, *OFF_STEP, "0", "-1", "nan", "inf", "x", "", "12.25"]:
        with pytest.raises(ValidationError):
            hours_check(bad, maximum=12)


# --- the API -------------------------------------------------------------------------------------------
@pytest.fixture
def offer(fake, make_offer):
    fake.add_offer("fc-1", "1.5000")
    return make_offer(provider="fakecloud", provider_offer_id="fc-1", price_per_hour="1.5000")


@pytest.mark.parametrize("hours", [*TOO_SHORT, *OFF_STEP, 0.1])
def test_api_refuses_a_reservation_off_the_rule(api_client, fake, offer, hours):
    response = api_client.post(
        "/api/v1/sessions", {"offer_id": str(offer.pk), "reservation_hours": hours}, format="json"
    )

    assert response.status_code == 400, response.json()
    assert response.json()["code"] == "invalid"
    assert "reservation_hours" in response.json()["detail"]
    assert not Rental.objects.exists() and fake.count("get_offer") == 0


@pytest.mark.parametrize("hours", ["0.25", "1.75", 12])
def test_api_accepts_the_smallest_and_the_steps(api_client, fake, offer, hours):
    response = api_client.post(
        "/api/v1/sessions", {"offer_id": str(offer.pk), "reservation_hours": hours}, format="json"
    )

    assert response.status_code == 201, response.json()
    rental = Rental.objects.get()
    assert rental.reservation_ends_at == START + timedelta(hours=float(Decimal(str(hours))))


@pytest.mark.parametrize("offer_id", ["²", "¹²", "٣", "１", "1²", "99999999999999999999", "-1", 1.5])
def test_api_offer_id_must_be_ascii_digits(api_client, fake, offer, offer_id):
    """ "²".isdigit() is True and int("²") raises: it was a 500; a 20-digit id overflowed SQLite."""
    response = api_client.post(
        "/api/v1/sessions", {"offer_id": offer_id, "reservation_hours": 1}, format="json"
    )

    assert response.status_code == 400, (response.status_code, response.content)
    assert "offer_id" in response.json()["detail"]
    assert not Rental.objects.exists() and fake.count("get_offer") == 0


def test_api_offer_id_as_a_json_number_still_works(api_client, fake, offer):
    response = api_client.post(
        "/api/v1/sessions", {"offer_id": offer.pk, "reservation_hours": 1}, format="json"
    )

    assert response.status_code == 201, response.json()


# --- the page ------------------------------------------------------------------------------------------
def form(hours) -> RentForm:
    return RentForm(
        data={
            "reservation_hours": hours,
            "key_source": "generate",
            "expected_price": "1.5000",
            "form_token": "5b0d0c9e-2d7a-4c84-9b5b-6a1f1b8e9d11",
        }
    )


@pytest.mark.parametrize("hours", ["0.1", "0.24", "1.1", "0.3"])
def test_the_rent_form_applies_the_same_rule(settings, hours):
    settings.SHOPPER_HARD_MAX_HOURS = 12
    f = form(hours)

    assert not f.is_valid()
    assert list(f.errors) == ["reservation_hours"]


def test_the_rent_form_messages_and_its_input_attributes(settings):
    settings.SHOPPER_HARD_MAX_HOURS = 12
    assert "at least 0.25 hours" in form("0.1").errors["reservation_hours"][0]
    assert "steps of 0.25 hours" in form("1.1").errors["reservation_hours"][0]
    assert form("0.25").is_valid() and form("11.75").is_valid()
    attrs = RentForm().fields["reservation_hours"].widget.attrs
    assert (attrs["min"], attrs["step"], attrs["max"]) == ("0.25", "0.25", "12")


def test_the_rent_page_refuses_a_too_short_reservation(client_logged_in, fake, offer):
    page = client_logged_in.get(f"/offers/{offer.pk}/rent/")
    payload = {
        "reservation_hours": "0.1",
        "key_source": "generate",
        "expected_price": "1.5000",
        "form_token": str(page.context["form"].initial["form_token"]),
    }

    response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)

    assert response.status_code == 200
    assert "at least 0.25 hours" in response.content.decode()
    assert not Rental.objects.exists() and fake.count("get_offer") == 0


# --- the extension -------------------------------------------------------------------------------------
@pytest.fixture
def rental(make_rental):
    return make_rental(
        Status.ACTIVE,
        active_since=START - timedelta(minutes=10),
        reservation_ends_at=START + timedelta(hours=2),
        hard_max_at=START + timedelta(hours=12),
    )


def snapshot(rental):
    row = fresh(rental)
    return row.reservation_ends_at, row.hard_max_at, RentalEvent.objects.filter(rental=rental).count()


@pytest.mark.parametrize("hours", [*TOO_SHORT, *OFF_STEP])
def test_api_extension_follows_the_rule(api_client, rental, hours):
    before = snapshot(rental)

    response = api_client.post(f"/api/v1/sessions/{rental.pk}/extend", {"hours": hours}, format="json")

    assert response.status_code == 400, response.json()
    assert "hours" in response.json()["detail"]
    assert snapshot(rental) == before


@pytest.mark.parametrize("hours", [*TOO_SHORT, *OFF_STEP])
def test_service_extension_follows_the_rule(rental, user, hours):
    """The page and the admin action go through the service: the rule holds there too."""
    before = snapshot(rental)

    with pytest.raises(ValidationError) as exc:
        rental_extend(rental=rental, hours=hours, actor=user)

    assert "hours" in exc.value.message_dict
    assert snapshot(rental) == before


def test_page_extension_follows_the_rule(client_logged_in, rental):
    before = snapshot(rental)

    response = client_logged_in.post(f"/sessions/{rental.pk}/extend/", {"hours": "0.1"}, follow=True)

    assert "at least 0.25 hours" in response.content.decode()
    assert snapshot(rental) == before
