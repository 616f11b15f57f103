"""Admin alerts: recorded (the safety page lists them) and emailed once when raised."""

from __future__ import annotations

import logging

from django.core.mail import mail_admins

from sessions.models import Alert, Rental

log = logging.getLogger(__name__)


def alert_raise(
    kind: str,
    message: str,
    *,
    rental: Rental | None = None,
    provider: str = "",
    provider_instance_id: str = "",
) -> Alert | None:
    """Raise an alert unless the same one is already open; returns the new alert (or None)."""
    open_alerts = Alert.objects.filter(kind=kind, resolved_at__isnull=True)
    if rental is not None:
        open_alerts = open_alerts.filter(rental=rental)
    else:
        open_alerts = open_alerts.filter(provider=provider, provider_instance_id=provider_instance_id)
    if open_alerts.exists():
        return None
    alert = Alert.objects.create(
        kind=kind,
        rental=rental,
        provider=provider or (rental.provider if rental else ""),
        provider_instance_id=provider_instance_id or (rental.provider_instance_id if rental else ""),
        message=message,
    )
    log.warning("ALERT %s: %s", kind, message)
    mail_admins(f"[GPU Shopper] {alert.get_kind_display()}", message, fail_silently=True)
    return alert
