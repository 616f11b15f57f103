"""Costs: the ledger, spend summaries, budgets and budget alerts.

Billing rule
------------
A rental is billed over ``[active_since, ended_at or now)``: from the moment our SSH check
verified the machine (``active``), through ``stopping`` (a machine that will not die still costs
money), until the provider confirms destruction (``ended_at``, set at ``destroyed``). Provisioning
and booting time is not billed to the user. This is a deliberate simplification: providers bill
GPU time from their own "running" state, which precedes our SSH verification by seconds, and a
rental that never becomes active (failed boot, failed SSH check) costs the provider a few seconds
or minutes we do not charge on. The price is the instance's own hourly rate, read back from the
provider before the rental becomes active (sessions.provisioning._instance_readback; until then the
price at the disk asked for, ``costs.pricing.offer_price_at``): ``price_per_hour`` is the provider
cost, ``charged_price_per_hour`` adds the chargeback markup fixed at rent time
(SHOPPER_PRICE_MARKUP_PERCENT). Every money formula is in ``costs/pricing.py``.

The ledger
----------
One :class:`LedgerEntry` per rental and whole UTC hour: ``period_start = max(hour start,
active_since)``, ``period_end = min(hour end, billed end)``. An entry is written only for a
*closed* period (the hour is over, or the rental ended inside it) and never rewritten; the
unique constraint on (rental, period_start) makes a second or concurrent accrual a no-op.

Seconds telescope: an entry's ``seconds`` is ``S(period_end) - S(period_start)`` where
``S(t)`` is the whole seconds billed from ``active_since`` to ``t``, so the entries of a rental
add up to exactly ``Rental.billed_seconds()``. Amounts telescope the same way at 6 decimal
places, so a rental's ledger amounts add up to its exact cost within 0.000001.

The ledger is the record; ``Rental.cost_so_far()`` is the live figure. They agree to the cent:
:func:`rental_cost` (ledger seconds + the part not yet written, × the charged price, rounded
once, ROUND_HALF_UP) equals ``cost_so_far`` by construction (tests prove it on random rentals).
Summaries add the not-yet-written part (the open current hour, and any closed hour the accrual
job has not reached yet) on the fly, so they never depend on when the job last ran. Sums are
made in Python with Decimal (never the database's float arithmetic on SQLite) and rounded to
the cent only when shown.

Budgets
-------
Monthly (UTC calendar month), per person and team-wide (``Budget.user`` empty). ``spent`` is this
month's charged spend; ``reserved`` is the estimated remaining cost of live rentals (charged price
× time left until ``reservation_ends_at``, counted whole even when it runs into next month).
:func:`budget_reserve` runs inside ``rental_create``'s transaction after its rental lock, so two
concurrent rentals cannot both squeeze under a limit. ``costs.budget_alerts.budgets_check``
(every minute) alerts once per budget, month and threshold (80 %, 100 %) and, with
SHOPPER_BUDGET_POLICY = "stop", stops the scope's live rentals at 100 %. It lives apart because it
acts on rentals through ``sessions.services``, which imports this module: this one never imports
``sessions.services`` back (tests/test_import_graph.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, F, Max, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from costs.models import Budget, LedgerEntry
from costs.pricing import CENT, SECONDS_PER_HOUR, cents, charge_seconds
from sessions.errors import RentalError
from sessions.models import Rental

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
THRESHOLDS = (80, 100)
GROUPS = ("day", "month", "consumer", "gpu_type", "provider", "rental")
POLICY_REFUSE, POLICY_STOP = "refuse", "stop"


class BudgetExceeded(RentalError):
    """The rental's estimated cost does not fit in what is left of a budget this month."""

    code, status = "budget_exceeded", 403


# --------------------------------------------------------------------------------------------
# Money and time helpers
# --------------------------------------------------------------------------------------------
def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


def _hour_floor(dt: datetime) -> datetime:
    return _utc(dt).replace(minute=0, second=0, microsecond=0)


# The dates the costs API and page accept. Nothing was billed before 2000 and nothing will be
# after 2100; outside them Python's datetime overflows (9999-12-31 plus a day, 0001-01-01 in
# UTC+5), which was a 500. A custom period on the page is at most MAX_RANGE_DAYS long: its chart
# draws one bar per month, and 2,000 years drew 24,000 of them (a 5.7 MB page).
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2100, 12, 31)
MAX_RANGE_DAYS = 3660  # ten years (and then some for leap days)


def date_out_of_range(day: date) -> str | None:
    """A message when ``day`` is outside [EARLIEST_DATE, LATEST_DATE]; None when it is fine."""
    if EARLIEST_DATE <= day <= LATEST_DATE:
        return None
    return f"Give a date between {EARLIEST_DATE:%Y-%m-%d} and {LATEST_DATE:%Y-%m-%d}."


def month_start(now: datetime | None = None) -> datetime:
    """The first instant of ``now``'s UTC calendar month."""
    return _utc(now or timezone.now()).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def _whole_seconds(start: datetime, end: datetime) -> int:
    """Whole seconds from start to end (floored; 0 when end is not after start)."""
    delta = end - start
    return max(0, delta.days * 86400 + delta.seconds)


# --------------------------------------------------------------------------------------------
# Billed periods
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """One billed hour of one rental (written to the ledger or not yet)."""

    rental_id: Any
    consumer_id: int
    provider: str
    gpu_type: str
    start: datetime
    end: datetime
    seconds: int
    price_per_hour: Decimal  # provider price
    provider_cost: Decimal
    amount: Decimal  # charged (with the markup fixed at rent time)
    closed: bool

    def entry(self) -> LedgerEntry:
        return LedgerEntry(
            rental_id=self.rental_id,
            consumer_id=self.consumer_id,
            provider=self.provider,
            gpu_type=self.gpu_type,
            period_start=self.start,
            period_end=self.end,
            seconds=self.seconds,
            price_per_hour=self.price_per_hour,
            provider_cost=self.provider_cost,
            amount=self.amount,
        )


def _billed_end(rental: Rental, now: datetime) -> tuple[datetime, bool]:
    """(end of the billed interval as of ``now``, whether billing is over)."""
    if rental.ended_at is not None and rental.ended_at <= now:
        return rental.ended_at, True
    return now, False


def _periods(rental: Rental, *, since: datetime | None, now: datetime) -> Iterable[Period]:
    """The billed periods of ``rental`` from ``since`` (a period boundary; None: the start) to
    ``now``, the last one open unless the rental ended."""
    begin = rental.active_since
    if begin is None:
        return
    end, ended = _billed_end(rental, now)
    charged = rental.charged_price_per_hour
    price = rental.price_per_hour
    cursor = max(since or begin, begin)
    while cursor < end:
        hour_end = _hour_floor(cursor) + HOUR
        period_end = min(hour_end, end)
        s0, s1 = _whole_seconds(begin, cursor), _whole_seconds(begin, period_end)
        yield Period(
            rental_id=rental.pk,
            consumer_id=rental.consumer_id,
            provider=rental.provider,
            gpu_type=rental.gpu_type,
            start=cursor,
            end=period_end,
            seconds=s1 - s0,
            price_per_hour=price,
            provider_cost=charge_seconds(price, s1) - charge_seconds(price, s0),
            amount=charge_seconds(charged, s1) - charge_seconds(charged, s0),
            closed=period_end == hour_end or ended,
        )
        cursor = period_end


def _written_until() -> Subquery:
    last = LedgerEntry.objects.filter(rental=OuterRef("pk")).order_by("-period_end").values("period_end")
    return Subquery(last[:1])


def _resume_at(rental: Rental, start: datetime) -> datetime:
    """Where the unwritten periods of ``rental`` that start at or after ``start`` begin: the end of
    its last ledger entry, or the first period boundary (an hour, or active_since) at/after start."""
    since = rental.written_until
    if since is not None and since >= start:
        return since
    hour = _hour_floor(start)
    boundary = hour if hour == start else hour + HOUR
    return max(rental.active_since, boundary, since or rental.active_since)


def _unwritten(*, now: datetime) -> Any:
    """Rentals with billed time not (yet) in the ledger, annotated with ``written_until``."""
    fully_written = LedgerEntry.objects.filter(rental=OuterRef("pk"), period_end=OuterRef("ended_at"))
    return (
        Rental.objects.filter(active_since__isnull=False, active_since__lt=now)
        .filter(Q(ended_at__isnull=True) | (Q(ended_at__gt=F("active_since")) & ~Exists(fully_written)))
        .annotate(written_until=_written_until())
    )


# --------------------------------------------------------------------------------------------
# Accrual
# --------------------------------------------------------------------------------------------
def ledger_accrue(*, now: datetime | None = None) -> int:
    """Append a LedgerEntry for every closed billed period not yet in the ledger.

    Idempotent and safe to run concurrently: entries are deterministic and inserted with
    ``ignore_conflicts`` on the (rental, period_start) constraint, so a period is never charged
    twice. Two queries whatever the number of rentals (candidates with their last written
    period, one bulk insert). Returns the number of entries sent to the database (a concurrent
    run may have written some of them first).
    """
    now = now or timezone.now()
    entries = [
        period.entry()
        for rental in _unwritten(now=now)
        for period in _periods(rental, since=rental.written_until, now=now)
        if period.closed
    ]
    if entries:
        LedgerEntry.objects.bulk_create(entries, ignore_conflicts=True, batch_size=500)
    return len(entries)


def rental_cost(rental: Rental, *, now: datetime | None = None) -> Decimal:
    """What the rental cost the user so far, exact to the cent: the ledger's billed seconds plus
    the seconds not yet written, × the charged price, rounded once. Equal to
    ``rental.cost_so_far(now)`` (the live figure; the ledger is the record)."""
    if rental.active_since is None:
        return Decimal("0.00")
    now = now or timezone.now()
    end = rental.ended_at or now
    ledger = rental.ledger_entries.aggregate(seconds=Sum("seconds"), last=Max("period_end"))
    written, last = ledger["seconds"] or 0, ledger["last"] or rental.active_since
    unwritten = _whole_seconds(rental.active_since, end) - _whole_seconds(rental.active_since, last)
    seconds = written + max(0, unwritten)
    return charge_seconds(rental.charged_price_per_hour, seconds, to=CENT)


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpendRecord:
    rental_id: Any
    consumer: str
    provider: str
    gpu_type: str
    start: datetime
    seconds: int
    amount: Decimal
    provider_cost: Decimal


def spend_records(
    *, start: datetime, end: datetime, user=None, now: datetime | None = None
) -> list[SpendRecord]:
    """Every billed period starting in ``[start, end)``: ledger rows plus the part not yet
    written (open hours of live rentals, closed hours the accrual has not reached).
    ``user=None``: the whole team."""
    now = now or timezone.now()
    ledger = LedgerEntry.objects.filter(period_start__gte=start, period_start__lt=end)
    if user is not None:
        ledger = ledger.filter(consumer=user)
    records = [
        SpendRecord(*row)
        for row in ledger.values_list(
            "rental_id",
            "consumer__username",
            "provider",
            "gpu_type",
            "period_start",
            "seconds",
            "amount",
            "provider_cost",
        )
    ]
    pending = (
        _unwritten(now=now)
        .filter(active_since__lt=end)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
    )
    if user is not None:
        pending = pending.filter(consumer=user)
    for rental in pending.select_related("consumer"):
        for p in _periods(rental, since=_resume_at(rental, start), now=now):
            if p.start >= end:
                break
            records.append(
                SpendRecord(
                    p.rental_id,
                    rental.consumer.get_username(),
                    p.provider,
                    p.gpu_type,
                    p.start,
                    p.seconds,
                    p.amount,
                    p.provider_cost,
                )
            )
    return records


def _key(record: SpendRecord, group_by: str) -> str:
    if group_by == "day":
        return _utc(record.start).date().isoformat()
    if group_by == "month":
        return _utc(record.start).strftime("%Y-%m")
    if group_by == "consumer":
        return record.consumer
    if group_by == "rental":
        return str(record.rental_id)
    return getattr(record, group_by)


def group_records(records: Iterable[SpendRecord], group_by: str) -> list[dict]:
    """Rows ``{"key", "amount", "provider_cost", "hours", "seconds"}`` sorted by key (money in
    cents; ``seconds`` exact, for pages showing hours and minutes)."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    sums: dict[str, list] = defaultdict(lambda: [Decimal(0), Decimal(0), 0])
    for r in records:
        row = sums[_key(r, group_by)]
        row[0] += r.amount
        row[1] += r.provider_cost
        row[2] += r.seconds
    return [
        {
            "key": key,
            "amount": cents(amount),
            "provider_cost": cents(provider_cost),
            "hours": cents(Decimal(seconds) / SECONDS_PER_HOUR),
            "seconds": seconds,
        }
        for key, (amount, provider_cost, seconds) in sorted(sums.items())
    ]


def spend_summary(
    *, start: datetime, end: datetime, user=None, group_by: str, now: datetime | None = None
) -> list[dict]:
    """Spend in ``[start, end)`` grouped by ``group_by`` (day, month, consumer, gpu_type,
    provider, rental). Each row: ``{"key": str, "amount": Decimal, "provider_cost": Decimal,
    "hours": Decimal}``, amounts in cents. ``user=None`` means the whole team."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    return group_records(spend_records(start=start, end=end, user=user, now=now), group_by)


def spend_total(records: Iterable[SpendRecord]) -> tuple[Decimal, Decimal]:
    """(charged amount, provider cost) of ``records``, in cents."""
    amount = provider_cost = Decimal(0)
    for r in records:
        amount += r.amount
        provider_cost += r.provider_cost
    return cents(amount), cents(provider_cost)


# --------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------
def budget_policy() -> str:
    policy = str(settings.SHOPPER_BUDGET_POLICY).lower()
    return POLICY_STOP if policy == POLICY_STOP else POLICY_REFUSE


def _budget_name(budget: Budget) -> str:
    if budget.user_id:
        return f"the monthly budget of {budget.user.get_username()}"
    return "the team's monthly budget"


def _budgets_for(user) -> list[Budget]:
    """The user's budget first, then the team's (either may be missing)."""
    budgets = list(Budget.objects.filter(Q(user=user) | Q(user__isnull=True)).select_related("user"))
    return sorted(budgets, key=lambda b: b.user_id is None)


def _spent_by_consumer(now: datetime, user=None) -> dict[int, Decimal]:
    """Charged spend this UTC month per consumer id (unrounded)."""
    start = month_start(now)
    ledger = LedgerEntry.objects.filter(period_start__gte=start, period_start__lt=next_month(start))
    if user is not None:
        ledger = ledger.filter(consumer=user)
    spent: dict[int, Decimal] = defaultdict(Decimal)
    for consumer_id, amount in ledger.values_list("consumer_id", "amount"):
        spent[consumer_id] += amount
    pending = _unwritten(now=now).filter(Q(ended_at__isnull=True) | Q(ended_at__gt=start))
    if user is not None:
        pending = pending.filter(consumer=user)
    for rental in pending:
        for p in _periods(rental, since=_resume_at(rental, start), now=now):
            spent[rental.consumer_id] += p.amount
    return spent


def _reserved_by_consumer(now: datetime, user=None) -> dict[int, Decimal]:
    """Estimated remaining cost of live rentals: charged price × time left in the reservation."""
    live = Rental.objects.live().filter(reservation_ends_at__gt=now)
    if user is not None:
        live = live.filter(consumer=user)
    reserved: dict[int, Decimal] = defaultdict(Decimal)
    for rental in live.only("consumer_id", "price_per_hour", "markup_percent", "reservation_ends_at"):
        delta = rental.reservation_ends_at - now
        left = Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000
        reserved[rental.consumer_id] += charge_seconds(rental.charged_price_per_hour, left)
    return reserved


def _percent(spent: Decimal, limit: Decimal) -> Decimal:
    if limit <= 0:
        return Decimal("100.0")
    return (spent * 100 / limit).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _scope(budget: Budget, spent: dict[int, Decimal], reserved: dict[int, Decimal]) -> dict:
    if budget.user_id:
        s, r = spent.get(budget.user_id, Decimal(0)), reserved.get(budget.user_id, Decimal(0))
    else:
        s, r = sum(spent.values(), Decimal(0)), sum(reserved.values(), Decimal(0))
    limit = budget.monthly_limit
    return {
        "limit": cents(limit),
        "spent": cents(s),
        "reserved": cents(r),
        "remaining": cents(max(Decimal(0), limit - s - r)),
        "percent": _percent(s, limit),
        "_spent": s,
        "_reserved": r,
    }


def _public(scope: dict | None) -> dict | None:
    return None if scope is None else {k: v for k, v in scope.items() if not k.startswith("_")}


def _status(user, now: datetime) -> tuple[list[tuple[Budget, dict]], dict[str, dict | None]]:
    budgets = _budgets_for(user)
    out: dict[str, dict | None] = {"user": None, "team": None}
    scopes: list[tuple[Budget, dict]] = []
    if not budgets:
        return scopes, out
    team = any(b.user_id is None for b in budgets)
    who = None if team else user
    spent, reserved = _spent_by_consumer(now, who), _reserved_by_consumer(now, who)
    for budget in budgets:
        scope = _scope(budget, spent, reserved)
        scopes.append((budget, scope))
        out["user" if budget.user_id else "team"] = scope
    return scopes, out


def budget_status(*, user, now: datetime | None = None) -> dict:
    """``{"user": {...} | None, "team": {...} | None}``; each scope has ``limit``, ``spent``
    (this UTC month, charged), ``reserved`` (remaining estimate of live rentals), ``remaining``
    (limit − spent − reserved, not below 0) and ``percent`` (spent / limit), money in cents."""
    _, out = _status(user, now or timezone.now())
    return {k: _public(v) for k, v in out.items()}


def budget_reserve(
    *, user, estimated_cost: Decimal, now: datetime | None = None, what: str = "this session"
) -> None:
    """Refuse a rental (or an extension) whose estimate does not fit in the user's or the team's
    budget. ``what`` names it in the message ("this session", "this 2 h extension").

    Call it inside the transaction that creates the rental (or extends it), after the rental
    lock (``sessions.services._lock_rentals``): the writers are serialized, so the live rentals
    counted in ``reserved`` include every rental and extension committed before, and two
    concurrent ones cannot both squeeze under a limit. Raises :class:`BudgetExceeded`
    (403 budget_exceeded). A budget at 100 % refuses every new rental and extension (both
    policies).
    """
    now = now or timezone.now()
    estimate = Decimal(estimated_cost)
    scopes, _ = _status(user, now)
    for budget, scope in scopes:
        name = _budget_name(budget)
        limit, spent, reserved = budget.monthly_limit, scope["_spent"], scope["_reserved"]
        if spent >= limit:
            raise BudgetExceeded(
                f"Budget exceeded: {name} (${cents(limit)}) is used up this month "
                f"(${cents(spent)} spent); no new sessions or extensions until next month or until "
                "an admin raises it.",
                budget="user" if budget.user_id else "team",
                limit=str(cents(limit)),
                remaining="0.00",
                estimate=str(cents(estimate)),
            )
        if spent + reserved + estimate > limit:
            remaining = cents(max(Decimal(0), limit - spent - reserved))
            raise BudgetExceeded(
                f"Budget exceeded: {what}'s estimated cost ${cents(estimate)} is more than the "
                f"${remaining} left of {name} (${cents(limit)}: ${cents(spent)} spent and "
                f"${cents(reserved)} reserved by live sessions this month). Ask for fewer hours or "
                "ask an admin to raise the budget.",
                budget="user" if budget.user_id else "team",
                limit=str(cents(limit)),
                remaining=str(remaining),
                estimate=str(cents(estimate)),
            )


def budget_banner(user, *, now: datetime | None = None) -> str | None:
    """A banner for every page when the user's or the team's budget is at 80 % or more this month."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    status = budget_status(user=user, now=now)
    messages = []
    for key, label in (("user", "Your monthly budget"), ("team", "The team's monthly budget")):
        scope = status[key]
        if scope is None or scope["percent"] < THRESHOLDS[0]:
            continue
        text = f"{label} is at {scope['percent']}% (${scope['spent']} of ${scope['limit']})"
        if scope["percent"] >= 100:
            text += "; new sessions are refused"
            if budget_policy() == POLICY_STOP:
                text += " and live sessions are stopped"
        messages.append(text + ".")
    return " ".join(messages) or None


def consumer_lookup(username: str):
    return get_user_model().objects.filter(username=username).first()
