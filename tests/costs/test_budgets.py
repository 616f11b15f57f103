"""Budgets: reservation at rent time (and its race), alerts once per threshold and month, policy."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.db import OperationalError, connection

from costs.budget_alerts import budgets_check
from costs.models import Budget, BudgetAlert
from costs.services import (
    BudgetExceeded,
    budget_banner,
    budget_reserve,
    budget_status,
    ledger_accrue,
)
from sessions import services
from sessions.models import Alert, AlertKind, EventKind, Rental, RentalEvent, Status
from tests.costs.conftest import utc

pytestmark = pytest.mark.django_db

NOW = utc(2025, 3, 20, 12, 0)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def fc_offer(fake, make_offer):
    """An offer at the fake cloud (tests/sessions/conftest.py) at $1.5000/h."""
    fake.add_offer("fc-1", "1.5000")
    return make_offer(provider="fakecloud", provider_offer_id="fc-1", price_per_hour="1.5000")


def rent(user, offer, hours=2):
    return services.rental_create(user=user, offer_id=offer.pk, reservation_hours=hours)


# --- status and reservation --------------------------------------------------------------------
def test_status_counts_this_months_spend_and_live_reservations(clock, billed, user, other_user):
    Budget.objects.create(user=user, monthly_limit=Decimal("100"))
    Budget.objects.create(user=None, monthly_limit=Decimal("1000"))
    billed(utc(2025, 2, 28, 20), utc(2025, 3, 1, 2), price="10.0000")  # 4 h in Feb, 2 h in March
    running = billed(NOW - timedelta(hours=1), price="3.0000")  # 1 h spent, 1 h reserved
    billed(NOW - timedelta(hours=2), utc(2025, 3, 20, 11), price="5.0000", consumer=other_user)
    status = budget_status(user=user)
    assert status["user"] == {
        "limit": Decimal("100.00"), "spent": Decimal("23.00"), "reserved": Decimal("3.00"),
        "remaining": Decimal("74.00"), "percent": Decimal("23.0"),
    }  # fmt: skip
    assert status["team"]["spent"] == Decimal("28.00")
    assert status["team"]["remaining"] == Decimal("969.00")
    running.status = Status.DESTROYED
    running.ended_at = NOW
    running.save()
    assert budget_status(user=user)["user"]["reserved"] == Decimal("0.00")
    assert budget_status(user=other_user) == {"user": None, "team": budget_status(user=user)["team"]}


def test_no_budget_means_no_limit(clock, user):
    budget_reserve(user=user, estimated_cost=Decimal("1000000"))
    assert budget_status(user=user) == {"user": None, "team": None}
    assert budget_banner(user) is None


def test_reserve_refuses_an_estimate_over_what_is_left_with_a_clear_message(clock, billed, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("10"))
    billed(NOW - timedelta(hours=1), price="3.0000")  # $3 spent, $3 reserved
    budget_reserve(user=user, estimated_cost=Decimal("4.00"))  # fits exactly
    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(user=user, estimated_cost=Decimal("4.01"))
    exc = refused.value
    assert (exc.code, exc.status) == ("budget_exceeded", 403)
    assert "$4.01" in exc.message and "$4.00 left" in exc.message
    assert "monthly budget of alice" in exc.message and "$10.00" in exc.message


def test_the_team_budget_also_limits(clock, billed, user, other_user):
    Budget.objects.create(user=None, monthly_limit=Decimal("10"))
    billed(NOW - timedelta(hours=1), utc(2025, 3, 20, 12), price="8.0000", consumer=other_user)
    with pytest.raises(BudgetExceeded, match="team's monthly budget"):
        budget_reserve(user=user, estimated_cost=Decimal("2.50"))


def test_a_budget_at_100_percent_refuses_everything(clock, billed, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("5"))
    billed(NOW - timedelta(hours=5), NOW - timedelta(hours=0), price="1.0000")
    with pytest.raises(BudgetExceeded, match="used up"):
        budget_reserve(user=user, estimated_cost=Decimal("0"))


def test_rental_create_refuses_at_the_limit_and_creates_nothing(fake, fc_offer, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("5"))
    rent(user, fc_offer)  # $3.00 reserved
    with pytest.raises(BudgetExceeded):
        rent(user, fc_offer)  # another $3.00 does not fit in $5
    assert Rental.objects.count() == 1
    rent(user, fc_offer, hours=1)  # $1.50 does
    assert Rental.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_rentals_cannot_both_squeeze_under_the_budget(fake, fc_offer, user):
    """Two threads rent at once under a budget that fits one rental.

    Proven here on SQLite, where rental_create's transaction is IMMEDIATE (one writer at a time;
    the in-memory test database answers the loser at once with "locked" and it retries, as the
    busy timeout does in production). On PostgreSQL (DATABASE_URL) the same test exercises
    pg_advisory_xact_lock in sessions.services._lock_rentals.
    """
    Budget.objects.create(user=user, monthly_limit=Decimal("5"))
    barrier = threading.Barrier(2)
    results: list[object] = []

    def run():
        try:
            barrier.wait(timeout=5)
            for _ in range(10_000):
                try:
                    results.append(rent(user, fc_offer).rental.pk)
                    break
                except OperationalError as exc:
                    if "locked" not in str(exc):
                        raise
        except Exception as exc:  # recorded, asserted below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)

    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(results) == 2 and len(refused) == 1, results
    assert Rental.objects.count() == 1


# --- alerts ------------------------------------------------------------------------------------------
def test_alerts_fire_once_per_threshold_and_month(clock, billed, user, settings):
    settings.ADMINS = [("Admin", "admin@example.com")]
    budget = Budget.objects.create(user=user, monthly_limit=Decimal("10"))
    billed(utc(2025, 3, 20, 3), utc(2025, 3, 20, 7), price="1.7500")  # $7.00
    live = billed(NOW, price="1.0000")  # nothing spent yet
    assert budgets_check() == []  # 70 %: nothing
    clock.move_to(NOW + timedelta(hours=1))  # $8.00: 80 %
    (alert,) = budgets_check()
    assert (alert.budget, alert.threshold, alert.month.isoformat()) == (budget, 80, "2025-03-01")
    assert budgets_check() == []  # once
    assert Alert.objects.filter(kind=AlertKind.BUDGET).count() == 1
    assert [m.to for m in mail.outbox] == [["admin@example.com"], ["alice@example.com"]]
    assert "80%" in mail.outbox[1].subject and "$8.00 of $10.00" in mail.outbox[1].body
    (event,) = RentalEvent.objects.filter(rental=live, kind=EventKind.WARNING)
    assert "80%" in event.reason and event.data["threshold"] == 80

    clock.move_to(NOW + timedelta(hours=3))  # $10.00: 100 %
    ledger_accrue()
    assert [a.threshold for a in budgets_check()] == [100]
    assert budgets_check() == []
    assert Rental.objects.get(pk=live.pk).status == Status.ACTIVE  # policy "refuse": not stopped
    assert "New sessions are refused." in Alert.objects.order_by("-id")[0].message

    # Next month the count starts again; both thresholds fire (once) as spending crosses them.
    clock.move_to(utc(2025, 4, 1, 10, 0))  # $10.00 in April
    ledger_accrue()
    assert [a.threshold for a in budgets_check()] == [80, 100]
    assert budgets_check() == []
    assert BudgetAlert.objects.filter(budget=budget).count() == 4


def test_team_budget_alerts_warn_every_live_rental(clock, billed, user, other_user):
    Budget.objects.create(user=None, monthly_limit=Decimal("10"))
    a = billed(NOW - timedelta(hours=4), price="1.0000")
    b = billed(NOW - timedelta(hours=4), price="1.0000", consumer=other_user)
    assert [x.threshold for x in budgets_check()] == [80]
    for rental in (a, b):
        assert RentalEvent.objects.filter(rental=rental, kind=EventKind.WARNING).count() == 1
    assert "team" in budget_banner(other_user)


def test_stop_policy_stops_the_live_rentals_of_the_scope(clock, billed, user, other_user, settings):
    settings.SHOPPER_BUDGET_POLICY = "stop"
    enqueued = []
    settings.SHOPPER_TASK_QUEUE = lambda func, *args: enqueued.append((func, *args))
    Budget.objects.create(user=user, monthly_limit=Decimal("5"))
    mine = billed(NOW - timedelta(hours=5), price="1.0000")
    pending = billed(NOW, status=Status.PENDING)
    Rental.objects.filter(pk=pending.pk).update(active_since=None)  # not billing yet
    theirs = billed(NOW - timedelta(hours=5), price="1.0000", consumer=other_user)
    assert [x.threshold for x in budgets_check()] == [80, 100]
    for rental in (mine, pending):
        rental.refresh_from_db()
        assert rental.status == Status.STOPPING
        assert rental.status_detail.startswith("Budget exhausted: the monthly budget of alice")
    assert Rental.objects.get(pk=theirs.pk).status == Status.ACTIVE
    assert budgets_check() == []  # stopping already: nothing more to do
    assert "live sessions are stopped" in budget_banner(user)


def test_banner_from_80_percent(clock, billed, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("10"))
    billed(utc(2025, 3, 20, 3), utc(2025, 3, 20, 10, 54), price="1.0000")  # $7.90
    assert budget_banner(user) is None
    billed(utc(2025, 3, 20, 3), utc(2025, 3, 20, 3, 6), price="1.0000")  # $8.00
    assert budget_banner(user) == "Your monthly budget is at 80.0% ($8.00 of $10.00)."
