"""Idle stop: a rental whose GPUs stay below a utilisation threshold for ``idle_stop_minutes`` is
warned on its timeline, then stopped like any other ("idle for 45 min").

- The node agent reports each GPU's utilisation with its heartbeat (shopper/agent.py, nvidia-smi).
  ``heartbeat_record`` runs with every heartbeat: a heartbeat in which every GPU is below
  SHOPPER_IDLE_UTIL_PERCENT starts (or continues) the idle stretch; a busy one ends it, and so does
  one that carries no utilisation at all (an agent that cannot read the GPUs never makes a machine
  look idle).
- ``idle_enforce`` is one pass of the safety loop: warning, then stop. Both are conditional
  updates (a warning is written once; a stop moves the rental once), so a second loop or a pass
  repeated after a takeover does nothing twice.
- The setting per rental is ``idle_stop_minutes`` (null = off); the team default is
  SHOPPER_IDLE_STOP_MINUTES (unset = off), used when the user does not say.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from sessions.models import EventKind, Rental, Status
from sessions.services import AlreadyEnded, RentalError, rental_event, rental_stop

S = Status
MAX_IDLE_STOP_MINUTES = 24 * 60
# Marks "the user did not say" apart from an explicit null (off).
DEFAULT = object()
# Statuses in which the setting may still change (as in sessions/lifecycle.py).
_ENFORCED = (S.PENDING, S.PROVISIONING, S.BOOTING, S.VERIFYING, S.ACTIVE)


def idle_minutes_check(value, *, field: str = "idle_stop_minutes") -> int | None:
    """None (off) or whole minutes 1..1440; anything else is a ValidationError naming the field."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValidationError({field: "Give whole minutes (1 to 1440) or null for no idle stop."})
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not 1 <= value <= MAX_IDLE_STOP_MINUTES:
        raise ValidationError({field: "Give whole minutes (1 to 1440) or null for no idle stop."})
    return value


def idle_default() -> int | None:
    return settings.SHOPPER_IDLE_STOP_MINUTES or None


def is_idle(data: dict) -> bool:
    """Every GPU reported a utilisation and all are below the threshold. No GPUs, or any GPU
    without a utilisation, is not idle."""
    gpus = data.get("gpus") or []
    utils = [g.get("util") for g in gpus]
    if not utils or any(u is None for u in utils):
        return False
    return max(utils) < settings.SHOPPER_IDLE_UTIL_PERCENT


def heartbeat_record(rental: Rental, data: dict, now: datetime | None = None) -> None:
    """Start, continue or end the idle stretch with this heartbeat (one conditional update)."""
    now = now or timezone.now()
    rows = Rental.objects.filter(pk=rental.pk)
    if is_idle(data):
        rows.filter(idle_since__isnull=True).update(idle_since=now, idle_warned_at=None)
    else:
        rows.exclude(idle_since__isnull=True, idle_warned_at__isnull=True).update(
            idle_since=None, idle_warned_at=None
        )


def idle_set(*, rental: Rental, minutes, actor) -> Rental:
    """Set or clear a live rental's idle stop (the session page, the API, the CLI). A change
    starts the count again from the next idle heartbeat (nobody is stopped for minutes that went
    by under the old setting without a warning)."""
    minutes = idle_minutes_check(minutes)
    updated = Rental.objects.filter(pk=rental.pk, status__in=_ENFORCED).update(
        idle_stop_minutes=minutes, idle_since=None, idle_warned_at=None
    )
    if not updated:
        raise AlreadyEnded(f"This session has ended ({rental.status}); its idle stop can no longer change.")
    rental_event(
        rental,
        EventKind.INFO,
        f"Idle stop set to {minutes} min by {actor.get_username()}"
        if minutes
        else f"Idle stop turned off by {actor.get_username()}",
        actor=actor,
        data={"idle_stop_minutes": minutes},
    )
    rental.refresh_from_db()
    return rental


def _warning_before(minutes: int) -> timedelta:
    return min(timedelta(minutes=settings.SHOPPER_IDLE_WARNING_MINUTES), timedelta(minutes=minutes) / 2)


def idle_enforce(now: datetime | None = None) -> list[str]:
    """Warn, then stop, every active rental idle for its idle_stop_minutes. Returns the stopped ids."""
    now = now or timezone.now()
    stopped = []
    candidates = Rental.objects.filter(
        status=S.ACTIVE, idle_stop_minutes__isnull=False, idle_since__isnull=False
    )
    for rental in candidates:
        minutes = rental.idle_stop_minutes
        stop_at = rental.idle_since + timedelta(minutes=minutes)
        if now >= stop_at:
            try:
                moved = rental_stop(rental=rental, reason=f"idle for {minutes} min")
            except RentalError:
                continue  # ended meanwhile
            if moved:
                rental_event(
                    rental,
                    EventKind.IDLE_STOP,
                    "Idle stop enforced",
                    data={"idle_since": rental.idle_since.isoformat(), "idle_stop_minutes": minutes},
                )
                stopped.append(str(rental.pk))
        elif now >= stop_at - _warning_before(minutes) and rental.idle_warned_at is None:
            won = Rental.objects.filter(
                pk=rental.pk, idle_since=rental.idle_since, idle_warned_at__isnull=True
            ).update(idle_warned_at=now)
            if won:
                left = max(1, round((stop_at - now).total_seconds() / 60))
                rental_event(
                    rental,
                    EventKind.WARNING,
                    f"The GPUs have been idle since {rental.idle_since:%H:%M} UTC: this machine stops "
                    f"in {left} min ({stop_at:%H:%M} UTC) unless they get busy",
                    data={"idle_stop_at": stop_at.isoformat()},
                )
    return stopped
