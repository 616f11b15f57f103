"""Extending a reservation: the owner within the hard maximum; only staff past it, with a reason,
audited as an override. Bad input is a 4xx and changes nothing. Via the API and the service."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from sessions.lifecycle import HardMaxExceeded, rental_extend
from sessions.models import RentalEvent, Status
from sessions.services import RentalError
from tests.sessions.conftest import START, events, fresh

S = Status
RES_END = START + timedelta(hours=2)
HARD_MAX = START + timedelta(hours=12)


def url(rental) -> str:
    return f"/api/v1/sessions/{rental.pk}/extend"


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def snapshot(rental):
    row = fresh(rental)
    return (
        row.status,
        row.reservation_ends_at,
        row.hard_max_at,
        row.reservation_warned_at,
        RentalEvent.objects.filter(rental=rental).count(),
    )


@pytest.fixture
def rental(active_rental):
    return active_rental(reservation_ends_at=RES_END, hard_max_at=HARD_MAX)


# --- the API ----------------------------------------------------------------------------------------


def test_owner_extends_within_the_hard_max(api_client, rental, user):
    response = api_client.post(url(rental), {"hours": 3}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["id"] == str(rental.pk) and body["status"] == "active"
    assert when(body["reservation_ends_at"]) == RES_END + timedelta(hours=3)
    assert when(body["hard_max_at"]) == HARD_MAX
    row = fresh(rental)
    assert row.reservation_ends_at == RES_END + timedelta(hours=3) and row.hard_max_at == HARD_MAX
    [extend] = events(rental, "extend")
    assert extend.actor == user
    assert extend.data["hours"] == "3.0000"
    assert when(extend.data["reservation_ends_at"]) == RES_END + timedelta(hours=3)
    assert events(rental, "override") == []


def test_owner_extends_up_to_exactly_the_hard_max(api_client, rental):
    response = api_client.post(url(rental), {"hours": 10}, format="json")

    assert response.status_code == 200, response.json()
    assert fresh(rental).reservation_ends_at == HARD_MAX == fresh(rental).hard_max_at


def test_owner_past_the_hard_max_is_refused_403_and_nothing_changes(api_client, rental):
    before = snapshot(rental)

    response = api_client.post(url(rental), {"hours": "10.5", "reason": "please"}, format="json")

    assert response.status_code == 403
    assert response.json()["code"] == "hard_max_exceeded"
    assert snapshot(rental) == before


def test_staff_past_the_hard_max_without_a_reason_is_400(staff_client, rental):
    before = snapshot(rental)

    for reason in ("", "   "):
        response = staff_client.post(url(rental), {"hours": 11, "reason": reason}, format="json")
        assert response.status_code == 400, response.json()
        assert "reason" in response.json()["detail"]
    response = staff_client.post(url(rental), {"hours": 11}, format="json")
    assert response.status_code == 400

    assert snapshot(rental) == before


def test_staff_override_with_a_reason_moves_the_hard_max_audited(staff_client, rental, staff):
    new_deadline = RES_END + timedelta(hours=11)

    response = staff_client.post(
        url(rental), {"hours": 11, "reason": "training run needs the night"}, format="json"
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert when(body["reservation_ends_at"]) == new_deadline
    assert when(body["hard_max_at"]) == new_deadline
    row = fresh(rental)
    assert row.hard_max_at == new_deadline and row.reservation_ends_at == new_deadline
    [override] = events(rental, "override")
    assert override.actor == staff
    assert "training run needs the night" in override.reason and "carol" in override.reason
    assert override.data["reason"] == "training run needs the night"
    assert when(override.data["hard_max_at"]) == new_deadline
    assert when(override.data["previous_hard_max_at"]) == HARD_MAX
    assert events(rental, "extend") == []


def test_staff_within_the_hard_max_is_a_plain_extension(staff_client, rental, staff):
    response = staff_client.post(url(rental), {"hours": 1}, format="json")

    assert response.status_code == 200
    assert fresh(rental).hard_max_at == HARD_MAX
    assert [e.actor for e in events(rental, "extend")] == [staff]
    assert events(rental, "override") == []


def test_another_user_gets_404_and_nothing_changes(other_client, rental):
    before = snapshot(rental)

    response = other_client.post(url(rental), {"hours": 1}, format="json")

    assert response.status_code == 404
    assert snapshot(rental) == before


@pytest.mark.parametrize("hours", [0, -1, "x", 1000, "", None, "NaN", "1e400"])
def test_bad_hours_are_400_and_nothing_changes(api_client, rental, hours):
    before = snapshot(rental)

    response = api_client.post(url(rental), {"hours": hours}, format="json")

    assert response.status_code == 400, (response.status_code, response.content)
    assert response.json()["code"] == "invalid"
    assert snapshot(rental) == before


def test_missing_hours_is_400(api_client, rental):
    before = snapshot(rental)
    assert api_client.post(url(rental), {}, format="json").status_code == 400
    assert snapshot(rental) == before


@pytest.mark.parametrize("status", [S.STOPPING, S.DESTROYED, S.FAILED])
def test_extending_an_ended_rental_is_refused_and_nothing_changes(
    api_client, staff_client, make_rental, status
):
    rental = make_rental(status, reservation_ends_at=RES_END, hard_max_at=HARD_MAX)
    before = snapshot(rental)

    owner = api_client.post(url(rental), {"hours": 1}, format="json")
    admin = staff_client.post(url(rental), {"hours": 20, "reason": "override"}, format="json")

    assert 400 <= owner.status_code < 500 and 400 <= admin.status_code < 500
    assert status in owner.json()["detail"]
    assert snapshot(rental) == before


def test_extension_resets_the_warning_so_it_is_given_again(api_client, active_rental):
    rental = active_rental(
        reservation_ends_at=START + timedelta(minutes=10),
        hard_max_at=HARD_MAX,
        reservation_warned_at=START - timedelta(minutes=5),
    )

    assert api_client.post(url(rental), {"hours": "0.5"}, format="json").status_code == 200

    row = fresh(rental)
    assert row.reservation_warned_at is None
    assert row.reservation_ends_at == START + timedelta(minutes=40)


def test_a_reservation_already_past_is_extended_from_now(api_client, active_rental, fake):
    rental = active_rental(reservation_ends_at=START - timedelta(minutes=1), hard_max_at=HARD_MAX)

    assert api_client.post(url(rental), {"hours": 1}, format="json").status_code == 200

    assert fresh(rental).reservation_ends_at == START + timedelta(hours=1)


# --- the service directly ---------------------------------------------------------------------------


def test_service_owner_within_the_hard_max(rental, user):
    out = rental_extend(rental=rental, hours="1.5", reason="", actor=user)

    assert out.reservation_ends_at == RES_END + timedelta(hours=1, minutes=30)
    assert out.hard_max_at == HARD_MAX
    assert len(events(rental, "extend")) == 1


def test_service_owner_past_the_hard_max_raises_403(rental, user):
    before = snapshot(rental)

    with pytest.raises(HardMaxExceeded) as exc:
        rental_extend(rental=rental, hours=11, reason="please", actor=user)

    assert exc.value.status == 403 and exc.value.code == "hard_max_exceeded"
    assert snapshot(rental) == before


def test_service_staff_past_the_hard_max_needs_a_reason(rental, staff):
    before = snapshot(rental)

    with pytest.raises(ValidationError) as exc:
        rental_extend(rental=rental, hours=11, reason="  ", actor=staff)

    assert "reason" in exc.value.message_dict
    assert snapshot(rental) == before


def test_service_staff_override(rental, staff):
    out = rental_extend(rental=rental, hours=11, reason="demo tomorrow", actor=staff)

    assert out.hard_max_at == RES_END + timedelta(hours=11) == out.reservation_ends_at
    [override] = events(rental, "override")
    assert (override.actor, override.data["reason"]) == (staff, "demo tomorrow")


@pytest.mark.parametrize("hours", [0, -1, "x", 1000, 168.0001, "inf", "nan", None])
def test_service_bad_hours(rental, user, hours):
    before = snapshot(rental)

    with pytest.raises(ValidationError) as exc:
        rental_extend(rental=rental, hours=hours, reason="", actor=user)

    assert "hours" in exc.value.message_dict
    assert snapshot(rental) == before


@pytest.mark.parametrize("status", [S.STOPPING, S.DESTROYED, S.FAILED])
def test_service_refuses_ended_rentals(make_rental, staff, status):
    rental = make_rental(status, reservation_ends_at=RES_END, hard_max_at=HARD_MAX)
    before = snapshot(rental)

    with pytest.raises(RentalError):
        rental_extend(rental=rental, hours=1, reason="x", actor=staff)

    assert snapshot(rental) == before


def test_service_refuses_a_rental_that_ended_after_it_was_read(rental, user):
    """The in-memory row still says active, the database says stopping: nothing is written."""
    from sessions.models import Rental

    Rental.objects.filter(pk=rental.pk).update(status=S.STOPPING)
    before = snapshot(rental)

    with pytest.raises(RentalError):
        rental_extend(rental=rental, hours=1, reason="", actor=user)

    assert snapshot(rental) == before
