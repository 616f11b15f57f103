"""django-q2 entry points for costs (scheduled every minute in shopper/schedules.py); thin."""

from __future__ import annotations

from costs import budget_alerts, services


def accrue() -> int:
    """Append ledger entries for every closed billed hour not yet written (idempotent)."""
    return services.ledger_accrue()


def check_budgets() -> int:
    """Fire budget alerts at 80 % / 100 % (once per budget, month and threshold); apply the policy."""
    return len(budget_alerts.budgets_check())
