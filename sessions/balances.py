"""Provider account balances (FIELD_NOTES X-BALANCE, X-BILLING).

- ``balances_check`` runs with each reconcile in the safety loop: it reads every enabled
  provider's balance where the adapter has an endpoint (``Provider.account_balance``; Vast
  ``users/current`` ``credit``; TensorDock has none we can trust), stores it in ``ProviderBalance``
  (shared by every process), and alerts admins when it covers fewer than
  SHOPPER_BALANCE_ALERT_HOURS at the current burn rate. Provider calls are outside any transaction.
- ``balance_check_rental`` is called by ``rental_create`` in its transaction, under the rental
  lock: a rental whose reservation the account cannot pay for, on top of what the live rentals
  at that provider still have reserved, is refused (409 ``insufficient_balance``, naming the
  provider). An unknown balance (no endpoint, never read) refuses nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.utils import timezone

from inventory import providers as registry
from inventory.providers.base import ProviderError
from sessions.alerts import alert_raise
from sessions.errors import InsufficientBalance
from sessions.models import LIVE_STATUSES, Alert, AlertKind, ProviderBalance, Rental

log = logging.getLogger(__name__)
CENT = Decimal("0.01")


def burn_per_hour(provider: str) -> Decimal:
    """What the live rentals at ``provider`` cost per hour at the provider's price (no markup):
    every live rental counts, as one in flight is about to bill."""
    total = Decimal(0)
    for price in Rental.objects.filter(provider=provider, status__in=LIVE_STATUSES).values_list(
        "price_per_hour", flat=True
    ):
        total += price
    return total


def reserved_cost(provider: str, now: datetime) -> Decimal:
    """What the live rentals at ``provider`` may still cost until their reservations end."""
    total = Decimal(0)
    for price, ends in Rental.objects.filter(provider=provider, status__in=LIVE_STATUSES).values_list(
        "price_per_hour", "reservation_ends_at"
    ):
        seconds = max(0, int((ends - now).total_seconds()))
        total += price * Decimal(seconds) / Decimal(3600)
    return total


def balance_check_rental(*, provider: str, estimate: Decimal, now: datetime) -> None:
    """Refuse a rental the provider account cannot pay for (see the module docstring)."""
    row = ProviderBalance.objects.filter(provider=provider, balance__isnull=False).first()
    if row is None:
        return
    needed = (reserved_cost(provider, now) + estimate).quantize(CENT, rounding=ROUND_HALF_UP)
    if row.balance < needed:
        raise InsufficientBalance(
            f"The {provider} account balance (${row.balance.quantize(CENT)}) cannot pay for this "
            f"reservation (${estimate.quantize(CENT)}) on top of what its live rentals have reserved; "
            f"an admin must top up the {provider} account.",
            provider=provider,
            balance=str(row.balance.quantize(CENT)),
            needed=str(needed),
        )


def _message(provider: str, balance: Decimal, burn: Decimal) -> str:
    covers = "no time" if balance <= 0 else f"{(balance / burn).quantize(Decimal('0.1'))} h"
    return (
        f"The {provider} account balance is ${balance.quantize(CENT)}: {covers} at the current burn of "
        f"${burn.quantize(CENT)}/h (alert below {settings.SHOPPER_BALANCE_ALERT_HOURS:g} h). When it runs "
        f"out {provider} stops the machines (it does not destroy them) and keeps charging their "
        "storage, so the balance goes negative: top it up, or stop machines here."
    )


def balances_check(now: datetime | None = None) -> dict[str, str]:
    """Read, store and judge every enabled provider's balance. Returns {provider: balance}."""
    now = now or timezone.now()
    read: dict[str, str] = {}
    for status in registry.provider_statuses():
        if not status["enabled"]:
            continue
        name = status["name"]
        try:
            balance = registry.get_provider(name).account_balance()
        except (ProviderError, registry.ProviderDisabled) as exc:
            ProviderBalance.objects.update_or_create(provider=name, defaults={"last_error": str(exc)[:500]})
            log.warning("balance of %s not read: %s", name, exc)
            continue
        if balance is None:
            continue  # no balance endpoint
        ProviderBalance.objects.update_or_create(
            provider=name, defaults={"balance": balance, "fetched_at": now, "last_error": ""}
        )
        read[name] = str(balance)
        _judge(name, balance)
    return read


def _judge(provider: str, balance: Decimal) -> None:
    burn = burn_per_hour(provider)
    hours = Decimal(str(settings.SHOPPER_BALANCE_ALERT_HOURS))
    low = balance <= 0 or (burn > 0 and balance < burn * hours)
    if low:
        alert_raise(AlertKind.BALANCE_LOW, _message(provider, balance, burn), provider=provider)
    else:
        Alert.objects.filter(kind=AlertKind.BALANCE_LOW, provider=provider, resolved_at__isnull=True).update(
            resolved_at=timezone.now()
        )
