"""An extension reserves its extra hours against the owner's budgets like a new rental does
(issue 12, "Extending past the budget"): refused with 403 budget_exceeded when it does not fit,
on every path (API, page, admin action), for staff too, and two concurrent extensions cannot both
squeeze in. Also the one hours rule (sessions/hours.py) for extensions.

The numbers: the rental (tests/sessions/conftest.py's offer) costs $1.50/h, has been active 10 min
($0.25 spent) and is reserved until START + 2 h ($3.00 reserved), so a $4.00 budget leaves $0.75:
a 0.5 h extension fits exactly, a 1 h one ($1.50) does not.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection

from costs.models import Budget
from costs.services import BudgetExceeded, budget_status
from sessions.lifecycle import rental_extend
from sessions.models import Rental, RentalEvent
from tests.sessions.conftest import START, events, fresh

RES_END = START + timedelta(hours=2)
HARD_MAX = START + timedelta(hours=12)


def url(rental) -> str:
    return f"/api/v1/sessions/{rental.pk}/extend"


def snapshot(rental):
    row = fresh(rental)
    return (row.reservation_ends_at, row.hard_max_at, RentalEvent.objects.filter(rental=rental).count())


@pytest.fixture
def rental(active_rental):
    return active_rental(reservation_ends_at=RES_END, hard_max_at=HARD_MAX)


@pytest.fixture
def budget(user):
    return Budget.objects.create(user=user, monthly_limit=Decimal("4.00"))


def test_the_numbers_of_this_module(rental, budget, user):
    assert budget_status(user=user)["user"] == {
        "limit": Decimal("4.00"), "spent": Decimal("0.25"), "reserved": Decimal("3.00"),
        "remaining": Decimal("0.75"), "percent": Decimal("6.3"),
    }  # fmt: skip


def test_api_extension_over_the_budget_is_403_and_nothing_changes(api_client, rental, budget):
    before = snapshot(rental)

    response = api_client.post(url(rental), {"hours": 1}, format="json")

    assert response.status_code == 403, response.json()
    body = response.json()
    assert body["code"] == "budget_exceeded"
    assert "extension" in body["detail"] and "$1.50" in body["detail"] and "$0.75 left" in body["detail"]
    assert snapshot(rental) == before


def test_api_extension_that_fits_exactly_is_reserved(api_client, rental, budget, user):
    response = api_client.post(url(rental), {"hours": "0.5"}, format="json")

    assert response.status_code == 200, response.json()
    assert fresh(rental).reservation_ends_at == RES_END + timedelta(minutes=30)
    status = budget_status(user=user)["user"]
    assert (status["reserved"], status["remaining"]) == (Decimal("3.75"), Decimal("0.00"))
    # ... and now nothing more fits, not even the smallest extension.
    refused = api_client.post(url(rental), {"hours": "0.25"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "budget_exceeded"


def test_the_team_budget_binds_extensions_too(api_client, rental, user):
    Budget.objects.create(user=None, monthly_limit=Decimal("4.00"))
    before = snapshot(rental)

    response = api_client.post(url(rental), {"hours": 1}, format="json")

    assert response.status_code == 403 and response.json()["code"] == "budget_exceeded"
    assert snapshot(rental) == before


def test_the_budget_binds_staff_extending_someone_elses_rental(staff_client, rental, budget):
    """Decided (README, rental_extend's docstring): staff raise the budget in the admin instead."""
    before = snapshot(rental)

    within = staff_client.post(url(rental), {"hours": 1}, format="json")
    override = staff_client.post(url(rental), {"hours": 11, "reason": "needs the night"}, format="json")

    assert within.status_code == 403 and within.json()["code"] == "budget_exceeded"
    assert override.status_code == 403 and override.json()["code"] == "budget_exceeded"
    assert snapshot(rental) == before
    assert events(rental, "override") == []


def test_the_owners_budget_counts_not_the_staff_members(staff_client, rental, staff):
    """A tight budget of the staff member does not stop them extending a user without one."""
    Budget.objects.create(user=staff, monthly_limit=Decimal("0.01"))

    response = staff_client.post(url(rental), {"hours": 1}, format="json")

    assert response.status_code == 200, response.json()


def test_an_extension_is_priced_with_the_rentals_own_markup(api_client, active_rental, user, settings):
    """The markup fixed at rent time, not today's setting: 1 h at $1.50 + 100 % = $3.00."""
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("0")
    rental = active_rental(
        reservation_ends_at=START + timedelta(minutes=5),
        hard_max_at=HARD_MAX,
        markup_percent=Decimal("100"),
        active_since=START,
    )
    Budget.objects.create(user=user, monthly_limit=Decimal("3.20"))  # $0.25 reserved: $2.95 left

    response = api_client.post(url(rental), {"hours": 1}, format="json")

    assert response.status_code == 403, response.json()
    assert "$3.00" in response.json()["detail"]


def test_page_extension_over_the_budget_says_so_and_changes_nothing(client, user, rental, budget):
    client.force_login(user)
    before = snapshot(rental)

    response = client.post(f"/sessions/{rental.pk}/extend/", {"hours": "1"}, follow=True)

    assert response.status_code == 200
    text = response.content.decode()
    assert "Budget exceeded" in text and "Extended:" not in text
    assert snapshot(rental) == before


def test_admin_override_over_the_budget_is_refused_with_a_message(client, staff, rental, budget):
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    before = snapshot(rental)

    response = client.post(
        "/admin/rentals/rental/",
        {
            "action": "extend_past_hard_max",
            "_selected_action": [str(rental.pk)],
            "apply": "1",
            "hours": "11",
            "reason": "demo tomorrow",
        },
        follow=True,
    )

    assert response.status_code == 200
    text = response.content.decode()
    assert "Budget exceeded" in text and "Extended 1 rental" not in text
    assert snapshot(rental) == before


# --- the race -----------------------------------------------------------------------------------------
def _race(*calls) -> list[object]:
    """Run the calls at once in threads (each with its own connection); their results or errors.

    On SQLite rental_extend's transaction is IMMEDIATE (one writer at a time; the in-memory test
    database answers the loser at once with "locked" and it retries, as the busy timeout does in
    production). On PostgreSQL (DATABASE_URL) the same run exercises pg_advisory_xact_lock.
    """
    barrier = threading.Barrier(len(calls))
    results: list[object] = []

    def run(call):
        try:
            barrier.wait(timeout=5)
            for _ in range(10_000):
                try:
                    results.append(call())
                    break
                except OperationalError as exc:
                    if "locked" not in str(exc):
                        raise
        except Exception as exc:  # recorded, asserted by the caller
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return results


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_extensions_cannot_both_squeeze_under_the_budget(active_rental, user):
    """Two rentals of one person, each extended by 1 h ($1.50) at once; $2.00 is left."""
    first = active_rental(reservation_ends_at=RES_END, hard_max_at=HARD_MAX)
    second = active_rental(reservation_ends_at=RES_END, hard_max_at=HARD_MAX)
    # $0.50 spent and $6.00 reserved by the two: $2.00 left, room for one extension.
    Budget.objects.create(user=user, monthly_limit=Decimal("8.50"))

    results = _race(
        lambda: rental_extend(rental=first, hours=1, actor=user),
        lambda: rental_extend(rental=second, hours=1, actor=user),
    )

    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    extended = [r for r in results if isinstance(r, Rental)]
    assert len(refused) == 1 and len(extended) == 1, results
    ends = sorted(
        Rental.objects.filter(pk__in=[first.pk, second.pk]).values_list("reservation_ends_at", flat=True)
    )
    assert ends == [RES_END, RES_END + timedelta(hours=1)]
    assert budget_status(user=user)["user"]["reserved"] == Decimal("7.50")


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_extensions_of_one_rental_both_count(active_rental, user):
    """Both callers hold the same stale row: each extension is added, none is lost."""
    rental = active_rental(reservation_ends_at=RES_END, hard_max_at=HARD_MAX)
    stale_a, stale_b = Rental.objects.get(pk=rental.pk), Rental.objects.get(pk=rental.pk)

    results = _race(
        lambda: rental_extend(rental=stale_a, hours=1, actor=user),
        lambda: rental_extend(rental=stale_b, hours=1, actor=user),
    )

    assert all(isinstance(r, Rental) for r in results), results
    assert fresh(rental).reservation_ends_at == RES_END + timedelta(hours=2)
    assert len(events(rental, "extend")) == 2
