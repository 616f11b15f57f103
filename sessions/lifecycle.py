"""Deadlines (safety rule 4): reservation end, hard maximum, heartbeat timeout; the warning
before a reservation ends; extending a reservation and the admin override of the hard max.

``lifecycle_enforce`` is one pass of the loop in ``manage.py safety_loop`` (every few seconds),
so a deadline is enforced well within a minute of passing; each stop records its lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sessions.alerts import alert_raise
from sessions.errors import HardMaxExceeded, RentalError
from sessions.hours import MAX_EXTENSION_HOURS, hours_check
from sessions.models import (
    DEADLINE_AGENT_SILENT,
    DEADLINE_HARD_MAX,
    DEADLINE_RESERVATION,
    AlertKind,
    EventKind,
    Rental,
    Status,
)
from sessions.services import _lock_rentals, rental_event, rental_stop
from sessions.uptime import SAFETY, up_stretch_start, uptime_touch

S = Status
# Statuses in which deadlines are enforced (stopping is already on its way out).
ENFORCED = (S.PENDING, S.PROVISIONING, S.BOOTING, S.VERIFYING, S.ACTIVE)


@dataclass
class Enforced:
    rental_id: object
    reason: str
    lag_seconds: float
    deadline_kind: str = ""  # DEADLINE_RESERVATION, DEADLINE_HARD_MAX or DEADLINE_AGENT_SILENT


def _heartbeat_deadline(rental: Rental, timeout: timedelta, stretch: datetime | None) -> datetime | None:
    """When the agent counts as silent: ``timeout`` after the last heartbeat (or ``active_since``),
    but never before ``timeout`` after the shopper could hear it again (``stretch``, the start of
    the current up stretch; None while the web side is down: nothing counts as missed)."""
    if rental.status != S.ACTIVE or not timeout or stretch is None:
        return None
    since = rental.last_heartbeat_at or rental.active_since
    return max(since, stretch) + timeout if since else None


def lifecycle_enforce(now: datetime | None = None) -> list[Enforced]:
    """Stop every rental past a deadline and warn the ones whose reservation ends soon.

    Each pass first records itself (the safety side of the up stretch, ``sessions.uptime``)."""
    now = now or timezone.now()
    uptime_touch(SAFETY, now)
    stretch = up_stretch_start(now)
    timeout = timedelta(seconds=settings.SHOPPER_HEARTBEAT_TIMEOUT_SECONDS)
    due = Q(reservation_ends_at__lte=now) | Q(hard_max_at__lte=now)
    # Within one timeout of the stretch start nobody is silent yet; after it, the deadline
    # max(last, stretch) + timeout has passed exactly when last + timeout has.
    if timeout and stretch is not None and stretch + timeout <= now:
        silent_since = now - timeout
        due |= Q(status=S.ACTIVE, last_heartbeat_at__lte=silent_since)
        due |= Q(status=S.ACTIVE, last_heartbeat_at__isnull=True, active_since__lte=silent_since)
    done = []
    for rental in Rental.objects.filter(status__in=ENFORCED).filter(due):
        deadlines = [
            (rental.hard_max_at, DEADLINE_HARD_MAX, "Hard maximum reached"),
            (rental.reservation_ends_at, DEADLINE_RESERVATION, "Reservation ended"),
            (
                _heartbeat_deadline(rental, timeout, stretch),
                DEADLINE_AGENT_SILENT,
                "The node agent went silent (no heartbeat)",
            ),
        ]
        passed = [d for d in deadlines if d[0] and d[0] <= now]
        if not passed:
            continue
        deadline, which, reason = min(passed, key=lambda d: d[0])
        lag = (now - deadline).total_seconds()
        try:
            stopped = rental_stop(rental=rental, reason=f"{reason} at {deadline:%H:%M:%S} UTC")
        except RentalError:
            continue  # ended meanwhile
        if not stopped:
            continue  # someone else stopped it between the query and now: not this deadline's doing
        rental_event(
            rental,
            EventKind.DEADLINE,
            "Deadline enforced",
            data={"deadline_kind": which, "lag_seconds": round(lag, 3), "deadline": deadline.isoformat()},
        )
        if which == DEADLINE_AGENT_SILENT:
            alert_raise(
                AlertKind.AGENT_SILENT,
                f"{rental.label}: no heartbeat since "
                f"{rental.last_heartbeat_at or rental.active_since:%Y-%m-%d %H:%M:%S} UTC; stopped it",
                rental=rental,
            )
        done.append(Enforced(rental.pk, reason, lag, which))
    _warn_before_reservation_end(now)
    return done


def _warn_before_reservation_end(now: datetime) -> None:
    soon = now + timedelta(minutes=settings.SHOPPER_RESERVATION_WARNING_MINUTES)
    for rental in Rental.objects.filter(
        status__in=ENFORCED, reservation_warned_at__isnull=True, reservation_ends_at__lte=soon
    ):
        won = Rental.objects.filter(pk=rental.pk, reservation_warned_at__isnull=True).update(
            reservation_warned_at=now
        )
        if won:
            minutes = max(0, int((rental.reservation_ends_at - now).total_seconds() // 60))
            rental_event(
                rental,
                EventKind.WARNING,
                f"The reservation ends in {minutes} min ({rental.reservation_ends_at:%H:%M} UTC); "
                "extend it to keep the machine",
            )


def rental_extend(*, rental: Rental, hours, reason: str = "", actor) -> Rental:
    """Extend the reservation by ``hours`` from its current end (or now, if later).

    Within the hard maximum the owner (or staff) may do it. Past it only staff may, with a
    reason: the hard maximum moves with the reservation, audited as an override event.

    The extra hours are reserved against the owner's budgets like a new rental's
    (``costs.services.budget_reserve``, 403 ``budget_exceeded``), in one transaction under the
    rental lock of ``rental_create``, so two concurrent extensions (or an extension and a new
    rental) cannot both squeeze under a limit. The budget binds staff too, also when they extend
    someone else's rental or override the hard maximum: a budget is the admin's own limit, and
    going past it is an explicit, audited change of the budget in the admin, not a side effect.
    """
    try:
        hours = hours_check(hours, maximum=MAX_EXTENSION_HOURS, what="extension")
    except ValidationError as exc:
        raise ValidationError({"hours": exc.messages}) from None
    reason = (reason or "").strip()
    if len(reason) > 500:
        raise ValidationError({"reason": "Keep the reason under 500 characters."})
    # Imported here, not at module level: imports point costs -> sessions (DESIGN.md).
    from costs.pricing import estimate
    from costs.services import budget_reserve

    with transaction.atomic():
        _lock_rentals()
        # Read again under the lock: the caller's row may be stale (ended, or extended by a
        # concurrent request whose extra hours are now part of the budget's "reserved").
        current = Rental.objects.filter(pk=rental.pk).first()
        if current is None or current.status not in ENFORCED:
            status = current.status if current else "gone"
            raise RentalError(f"This session is {status}; it can no longer be extended.")
        now = timezone.now()
        new_end = max(current.reservation_ends_at, now) + timedelta(seconds=float(hours) * 3600)
        fields = {"reservation_ends_at": new_end, "reservation_warned_at": None}
        if new_end > current.hard_max_at:
            if not actor.is_staff:
                raise HardMaxExceeded(
                    f"That would run past the hard maximum ({current.hard_max_at:%Y-%m-%d %H:%M} UTC). "
                    "Only an admin can extend past it, with a reason."
                )
            if not reason:
                raise ValidationError({"reason": "A reason is required to extend past the hard maximum."})
            fields["hard_max_at"] = new_end
        budget_reserve(
            user=current.consumer,
            estimated_cost=estimate(current.price_per_hour, hours, current.markup_percent),
            now=now,
            what=f"this {hours.normalize():f} h extension",
        )
        # The status is not under the rental lock (rental_transition does not take it): only an
        # enforced rental is extended, else the whole transaction (nothing written yet) rolls back.
        if not Rental.objects.filter(pk=current.pk, status__in=ENFORCED).update(**fields):
            raise RentalError("This session ended meanwhile; it can no longer be extended.")
        override = "hard_max_at" in fields
        rental_event(
            current,
            EventKind.OVERRIDE if override else EventKind.EXTEND,
            (
                f"Hard maximum overridden by {actor.get_username()}: {reason}"
                if override
                else f"Reservation extended by {hours} h by {actor.get_username()}"
                + (f": {reason}" if reason else "")
            ),
            actor=actor,
            data={
                "hours": str(hours),
                "reason": reason,
                "reservation_ends_at": new_end.isoformat(),
                "hard_max_at": (new_end if override else current.hard_max_at).isoformat(),
                "previous_hard_max_at": current.hard_max_at.isoformat(),
            },
        )
    rental.refresh_from_db()
    return rental
