"""Budget alerts and the "stop" policy: what happens when a budget reaches 80 % or 100 %.

Apart from ``costs.services`` because it acts on rentals (a warning event on each, stopping them
under SHOPPER_BUDGET_POLICY = "stop") through ``sessions.services``, which itself asks
``costs.services`` for prices and the budget reservation: ``costs.services`` never imports
``sessions.services``, so the imports do not loop (tests/test_import_graph.py).
"""

from __future__ import annotations

import contextlib
from datetime import date, datetime

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from costs.models import Budget, BudgetAlert
from costs.services import (
    POLICY_STOP,
    THRESHOLDS,
    _budget_name,
    _reserved_by_consumer,
    _scope,
    _spent_by_consumer,
    budget_policy,
    month_start,
)
from sessions.alerts import alert_raise
from sessions.errors import AlreadyEnded
from sessions.models import AlertKind, EventKind, Rental, Status
from sessions.services import rental_event, rental_stop


def _scope_live_rentals(budget: Budget):
    live = Rental.objects.live()
    return live.filter(consumer_id=budget.user_id) if budget.user_id else live


def _alert_notify(budget: Budget, alert: BudgetAlert, scope: dict) -> None:
    name = _budget_name(budget)
    message = (
        f"{name[0].upper()}{name[1:]} has reached {alert.threshold}% in {alert.month:%B %Y}: "
        f"${scope['spent']} of ${scope['limit']} spent."
    )
    if alert.threshold >= 100:
        if budget_policy() == POLICY_STOP:
            message += " New sessions are refused and live sessions are being stopped."
        else:
            message += " New sessions are refused."
    who = budget.user.get_username() if budget.user_id else "team"
    alert_raise(
        AlertKind.BUDGET,
        message,
        provider="budget",
        provider_instance_id=f"{who} {alert.month:%Y-%m} {alert.threshold}%",
    )
    if budget.user_id and budget.user.email:
        send_mail(
            f"[GPU Shopper] Budget at {alert.threshold}%",
            message,
            settings.DEFAULT_FROM_EMAIL,
            [budget.user.email],
            fail_silently=True,
        )
    for rental in _scope_live_rentals(budget):
        rental_event(
            rental,
            EventKind.WARNING,
            message,
            data={"budget": budget.pk, "threshold": alert.threshold, "month": alert.month.isoformat()},
        )


def _stop_scope(budget: Budget, scope: dict) -> int:
    reason = (
        f"Budget exhausted: {_budget_name(budget)} (${scope['limit']}) is used up "
        f"(${scope['spent']} spent this month)"
    )
    stopped = 0
    for rental in _scope_live_rentals(budget).exclude(status=Status.STOPPING):
        with contextlib.suppress(AlreadyEnded):
            stopped += rental_stop(rental=rental, reason=reason)
    return stopped


def budgets_check(*, now: datetime | None = None) -> list[BudgetAlert]:
    """Alert once per budget, month and threshold (80 %, 100 %): a BudgetAlert row, an admin
    alert (emailed), an email to the user, and a warning event on each live rental of the scope.
    With SHOPPER_BUDGET_POLICY = "stop", live rentals of a scope at 100 % are stopped (every run,
    so a rental that slipped in is stopped too). Returns the alerts created by this run."""
    now = now or timezone.now()
    budgets = list(Budget.objects.select_related("user"))
    if not budgets:
        return []
    month: date = month_start(now).date()
    spent, reserved = _spent_by_consumer(now), _reserved_by_consumer(now)
    created: list[BudgetAlert] = []
    for budget in budgets:
        scope = _scope(budget, spent, reserved)
        for threshold in THRESHOLDS:
            if scope["percent"] < threshold:
                continue
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        budget=budget, month=month, threshold=threshold, spent=scope["spent"]
                    )
            except IntegrityError:
                continue  # fired already this month
            created.append(alert)
            _alert_notify(budget, alert, scope)
        if scope["percent"] >= 100 and budget_policy() == POLICY_STOP:
            _stop_scope(budget, scope)
    return created
