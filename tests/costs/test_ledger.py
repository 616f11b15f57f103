"""The ledger: accrual over time, idempotency, exact totals, billing while stopping, markup."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
import time_machine
from django.utils import timezone

from costs import services
from costs.models import LedgerEntry
from costs.services import ledger_accrue, rental_cost, spend_summary
from sessions.models import Status
from tests.costs.conftest import utc

pytestmark = pytest.mark.django_db


def exact(rental, now) -> Decimal:
    """The reference: charged price × billed seconds / 3600, to the cent."""
    value = rental.charged_price_per_hour * rental.billed_seconds(now) / Decimal(3600)
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def entries(rental) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(rental=rental).order_by("period_start"))


def assert_contiguous(rental) -> None:
    rows = entries(rental)
    assert rows[0].period_start == rental.active_since
    for before, after in itertools.pairwise(rows):
        assert after.period_start == before.period_end  # no gap, no overlap


def test_accrual_across_hour_day_and_month_boundaries_with_restarts(billed):
    start = utc(2025, 1, 31, 22, 20, 30, 500_000)
    with time_machine.travel(start, tick=False) as clock:
        rental = billed(start, price="2.5000")
        assert ledger_accrue() == 0  # the first hour is still open

        clock.move_to(utc(2025, 1, 31, 22, 59, 59))
        assert ledger_accrue() == 0

        clock.move_to(utc(2025, 1, 31, 23, 0, 0))
        assert ledger_accrue() == 1
        (first,) = entries(rental)
        assert (first.period_start, first.period_end) == (start, utc(2025, 1, 31, 23))
        assert first.seconds == 2369  # 39 min 29.5 s, whole seconds

        # The worker was down for a while: the next run catches up, crossing day and month.
        clock.move_to(utc(2025, 2, 1, 1, 30))
        assert ledger_accrue() == 2
        assert ledger_accrue() == 0  # a restart re-runs: nothing new
        assert [e.period_start for e in entries(rental)] == [start, utc(2025, 1, 31, 23), utc(2025, 2, 1, 0)]

        # Destroyed at 02:10:05.25; the accrual runs after, writes the last partial hour once.
        ended = utc(2025, 2, 1, 2, 10, 5, 250_000)
        rental.status, rental.ended_at = Status.DESTROYED, ended
        rental.save(update_fields=["status", "ended_at"])
        clock.move_to(utc(2025, 2, 1, 3, 0, 30))
        assert ledger_accrue() == 2
        clock.move_to(utc(2025, 3, 1, 0, 0, 0))
        assert ledger_accrue() == 0

        rows = entries(rental)
        assert rows[-1].period_end == ended
        assert_contiguous(rental)
        assert sum(e.seconds for e in rows) == rental.billed_seconds()
        assert rental_cost(rental) == rental.cost_so_far() == exact(rental, None)

        months = spend_summary(start=utc(2025, 1, 1), end=utc(2025, 3, 1), group_by="month")
        assert [r["key"] for r in months] == ["2025-01", "2025-02"]
        assert sum(r["hours"] for r in months) == Decimal("3.83")  # 3 h 49 min 34 s
        days = spend_summary(start=utc(2025, 1, 1), end=utc(2025, 3, 1), group_by="day")
        assert [r["key"] for r in days] == ["2025-01-31", "2025-02-01"]


def test_running_twice_or_concurrently_never_double_charges(billed):
    start = utc(2025, 3, 1, 10, 15)
    with time_machine.travel(utc(2025, 3, 1, 16, 5), tick=False):
        for price in ("1.0000", "3.3333", "0.4567"):
            billed(start, price=price)
        assert ledger_accrue() == 18
        assert ledger_accrue() == 0
        # Two workers that read the same candidates before either wrote: both insert everything.
        LedgerEntry.objects.all().delete()
        now = timezone.now()
        batches = [
            [
                p.entry()
                for r in services._unwritten(now=now)
                for p in services._periods(r, since=None, now=now)
                if p.closed
            ]
            for _ in range(2)
        ]
        for batch in batches:
            LedgerEntry.objects.bulk_create(batch, ignore_conflicts=True)
        assert LedgerEntry.objects.count() == 18
        assert ledger_accrue() == 0


def test_a_rental_stuck_in_stopping_keeps_accruing_until_destruction_is_confirmed(billed):
    start = utc(2025, 3, 3, 9, 0)
    with time_machine.travel(start, tick=False) as clock:
        rental = billed(start, price="4.0000")
        clock.move_to(utc(2025, 3, 3, 9, 30))
        rental.status = Status.STOPPING  # destroy keeps failing; the provider still bills
        rental.save(update_fields=["status"])
        clock.move_to(utc(2025, 3, 3, 12, 0, 1))
        assert ledger_accrue() == 3
        assert rental_cost(rental) == Decimal("12.00")
        clock.move_to(utc(2025, 3, 3, 12, 20))
        rental.status, rental.ended_at = Status.DESTROYED, utc(2025, 3, 3, 12, 20)
        rental.save(update_fields=["status", "ended_at"])
        clock.move_to(utc(2025, 3, 3, 15, 0))
        assert ledger_accrue() == 1
        assert ledger_accrue() == 0
        assert rental_cost(rental) == rental.cost_so_far() == Decimal("13.33")
        assert sum(e.amount for e in entries(rental)) == Decimal("13.333333")


def test_exact_totals_for_200_random_rentals(billed, other_user, user):
    rng = random.Random(20250301)
    base = utc(2025, 2, 27, 0, 0)
    rentals = []
    for _ in range(200):
        active = base + timedelta(seconds=rng.randrange(0, 3 * 86400), microseconds=rng.randrange(10**6))
        ended = None
        if rng.random() < 0.7:
            ended = active + timedelta(seconds=rng.randrange(0, 30 * 3600), microseconds=rng.randrange(10**6))
        price = Decimal(rng.randrange(1, 400_000)) / 10_000  # 4 decimals, up to $40/h
        markup = rng.choice([Decimal("0"), Decimal("12.50"), Decimal("7.25")])
        rentals.append(
            billed(active, ended, price=price, markup_percent=markup, consumer=rng.choice([user, other_user]))
        )
    final = utc(2025, 3, 3, 12, 0)
    # The job runs at irregular times (and some runs are missed).
    runs = sorted(base + timedelta(seconds=rng.randrange(0, 5 * 86400)) for _ in range(12))
    for at in [*runs, final]:
        if at <= final:
            ledger_accrue(now=at)

    for rental in rentals:
        rental.refresh_from_db()
        assert rental_cost(rental, now=final) == rental.cost_so_far(final) == exact(rental, final)
        if rental.ended_at and rental.ended_at > rental.active_since:
            rows = entries(rental)
            assert sum(e.seconds for e in rows) == rental.billed_seconds()
            exact_amount = rental.charged_price_per_hour * rental.billed_seconds() / Decimal(3600)
            assert abs(sum(e.amount for e in rows) - exact_amount) <= Decimal("0.000001")
            assert_contiguous(rental)

    # Summaries (ledger + the open part of live rentals) agree with the rentals' own figures.
    window = dict(start=utc(2025, 2, 1), end=utc(2025, 4, 1), now=final)
    by_rental = {r["key"]: r["amount"] for r in spend_summary(**window, group_by="rental")}
    for rental in rentals:
        if rental.billed_seconds(final):
            assert abs(by_rental[str(rental.pk)] - exact(rental, final)) <= Decimal("0.01")
    team = sum(r["amount"] for r in spend_summary(**window, group_by="month"))
    people = spend_summary(**window, group_by="consumer")
    assert {r["key"] for r in people} == {"alice", "bob"}
    assert abs(sum(r["amount"] for r in people) - team) <= Decimal("0.02")
    assert abs(team - sum(exact(r, final) for r in rentals)) <= Decimal("2.00")  # cent rounding per row


def test_summaries_include_the_open_hour_without_waiting_for_the_job(billed):
    with time_machine.travel(utc(2025, 3, 5, 10, 45), tick=False):
        rental = billed(utc(2025, 3, 5, 8, 15), price="1.2000")
        rows = spend_summary(start=utc(2025, 3, 1), end=utc(2025, 4, 1), group_by="rental")
        assert rows == [
            {"key": str(rental.pk), "amount": Decimal("3.00"), "provider_cost": Decimal("3.00"),
             "hours": Decimal("2.50"), "seconds": 9000}
        ]  # fmt: skip
        ledger_accrue()
        assert LedgerEntry.objects.count() == 2
        assert spend_summary(start=utc(2025, 3, 1), end=utc(2025, 4, 1), group_by="rental") == rows
        # A window that cuts the rental: only the periods starting in it.
        morning = spend_summary(start=utc(2025, 3, 5, 9), end=utc(2025, 3, 5, 10), group_by="day")
        assert morning == [
            {"key": "2025-03-05", "amount": Decimal("1.20"), "provider_cost": Decimal("1.20"),
             "hours": Decimal("1.00"), "seconds": 3600}
        ]  # fmt: skip
        assert spend_summary(start=utc(2025, 3, 6), end=utc(2025, 3, 7), group_by="day") == []


def test_markup_is_charged_and_provider_cost_recorded_separately(billed, settings):
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("10")
    with time_machine.travel(utc(2025, 3, 5, 12, 0), tick=False):
        rental = billed(utc(2025, 3, 5, 9, 0), price="2.0000", markup_percent=Decimal("10"))
        ledger_accrue()
        rows = entries(rental)
        assert {(e.price_per_hour, e.provider_cost, e.amount) for e in rows} == {
            (Decimal("2.0000"), Decimal("2.000000"), Decimal("2.200000"))
        }
        (row,) = spend_summary(start=utc(2025, 3, 1), end=utc(2025, 4, 1), group_by="provider")
        assert (row["key"], row["amount"], row["provider_cost"]) == (
            "vastai",
            Decimal("6.60"),
            Decimal("6.00"),
        )
        assert rental_cost(rental) == rental.cost_so_far() == Decimal("6.60")
        # The markup is fixed at rent time: changing the setting later changes nothing.
        settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("50")
        assert rental_cost(rental) == Decimal("6.60")


def test_bad_group_by_is_refused():
    with pytest.raises(ValueError):
        spend_summary(start=utc(2025, 3, 1), end=utc(2025, 4, 1), group_by="week")


def test_accrual_costs_a_constant_number_of_queries(billed, django_assert_max_num_queries):
    with time_machine.travel(utc(2025, 3, 5, 12, 30), tick=False):
        for i in range(60):
            billed(utc(2025, 3, 5, 2, i), price="1.0000")
        # The candidates, then inserts in batches (SQLite takes ~80 rows per statement): no query
        # per rental or per entry.
        with django_assert_max_num_queries(10):
            assert ledger_accrue() == 600
        with django_assert_max_num_queries(1):
            assert ledger_accrue() == 0


def test_the_jobs_are_scheduled_every_minute(billed):
    from costs import tasks
    from shopper.schedules import SCHEDULES

    jobs = {s["name"]: s for s in SCHEDULES}
    assert jobs["costs.accrue"] == {"name": "costs.accrue", "func": "costs.tasks.accrue", "minutes": 1}
    assert jobs["costs.check_budgets"]["func"] == "costs.tasks.check_budgets"
    billed(utc(2020, 1, 1, 10), utc(2020, 1, 1, 12))
    assert tasks.accrue() == 2
    assert tasks.check_budgets() == 0
