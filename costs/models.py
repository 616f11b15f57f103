"""The ledger (what each rental cost, per billed period) and budgets."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone


class LedgerEntry(models.Model):
    """Append-only: the cost of one rental over one billed period, exact to the cent.

    ``provider_cost`` is what the provider charges us; ``amount`` is what the user is charged
    (with the chargeback markup fixed at rent time). Unique per rental and period start, so an
    accrual job that runs twice never double-charges.
    """

    rental = models.ForeignKey("rentals.Rental", on_delete=models.PROTECT, related_name="ledger_entries")
    consumer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    provider = models.CharField(max_length=32)
    gpu_type = models.CharField(max_length=64)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    seconds = models.PositiveIntegerField()
    price_per_hour = models.DecimalField(max_digits=10, decimal_places=4)
    provider_cost = models.DecimalField(max_digits=12, decimal_places=6)
    amount = models.DecimalField(max_digits=12, decimal_places=6)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["period_start"]
        constraints = [
            models.UniqueConstraint(fields=["rental", "period_start"], name="ledger_rental_period_unique"),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")), name="ledger_period_order"
            ),
        ]
        indexes = [
            models.Index(fields=["consumer", "period_start"], name="ledger_consumer_period"),
            models.Index(fields=["period_start"], name="ledger_period"),
        ]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.rental_id} {self.period_start:%Y-%m-%d %H:%M} ${self.amount}"


class Budget(models.Model):
    """A monthly spending limit: for one person, or team-wide when ``user`` is empty."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="budget"
    )
    monthly_limit = models.DecimalField(max_digits=12, decimal_places=2)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(monthly_limit__gte=0), name="budget_limit_nonnegative"),
            # At most one team-wide budget (user NULL); the one-to-one covers per-user budgets.
            models.UniqueConstraint(Coalesce("user", Value(0)), name="budget_one_per_scope"),
        ]

    def __str__(self) -> str:
        who = self.user.get_username() if self.user_id else "Team"
        return f"{who}: ${self.monthly_limit}/month"


class BudgetAlert(models.Model):
    """One threshold (80 or 100 %) crossed by one budget in one month; unique so it fires once."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    month = models.DateField(help_text="First day of the month")
    threshold = models.PositiveSmallIntegerField()
    spent = models.DecimalField(max_digits=12, decimal_places=2)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "month", "threshold"], name="budget_alert_once"),
        ]

    def __str__(self) -> str:
        return f"{self.budget} {self.threshold}% in {self.month:%Y-%m}"
