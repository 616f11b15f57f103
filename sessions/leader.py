"""One acting safety loop among several (DESIGN.md amendment "The safety loop may run more than
once; one acts").

A lease row in the database (``SafetyLease``): a loop acts only while it holds an unexpired lease,
renews it before every pass and before every job of a pass, and gives it up when it is stopped.
Taking it is a compare-and-swap UPDATE (holder is me, or the lease has expired), so two loops
on two hosts never both win, on SQLite and PostgreSQL alike, and nothing lives in one process's
memory. A loop that dies (SIGKILL, host gone) stops renewing; another takes over once its lease
has expired: within SHOPPER_SAFETY_LEASE_SECONDS + one loop interval. Expiry is judged by each
host's clock, so hosts keep NTP time: a skew of s seconds moves a takeover by s (keep it well
under the lease).

Every job a loop runs is also safe to repeat (conditional updates: a rental is stopped once, an
alert raised once), so a leader paused past its lease that wakes mid-job does no harm; it then
sees the lease is gone before its next job and stands by.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from sessions.models import SafetyLease

LEASE_NAME = "safety"


def holder_id() -> str:
    """Host, pid and a random part: unique per process, readable on the safety page."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _ensure_row(now: datetime) -> None:
    if SafetyLease.objects.filter(name=LEASE_NAME).exists():
        return
    try:
        with transaction.atomic():
            SafetyLease.objects.create(name=LEASE_NAME, holder="", expires_at=now)
    except IntegrityError:
        pass  # another loop created it at the same moment: the row is there, which is all we need


def lease_hold(holder: str, now: datetime | None = None) -> bool:
    """Take or renew the lease; True while ``holder`` is the acting loop."""
    now = now or timezone.now()
    _ensure_row(now)
    until = now + timedelta(seconds=settings.SHOPPER_SAFETY_LEASE_SECONDS)
    mine = SafetyLease.objects.filter(name=LEASE_NAME, holder=holder).update(expires_at=until)
    if mine:
        return True
    taken = (
        SafetyLease.objects.filter(name=LEASE_NAME)
        .filter(Q(holder="") | Q(expires_at__lte=now))
        .update(holder=holder, acquired_at=now, expires_at=until)
    )
    return bool(taken)


def lease_release(holder: str) -> None:
    """Hand over at once (a stopped loop): the next loop need not wait for the lease to expire."""
    SafetyLease.objects.filter(name=LEASE_NAME, holder=holder).update(holder="", expires_at=timezone.now())


def lease_current(now: datetime | None = None) -> SafetyLease | None:
    """The lease while someone holds it (for the safety page and metrics); None when nobody acts."""
    now = now or timezone.now()
    return SafetyLease.objects.filter(name=LEASE_NAME, expires_at__gt=now).exclude(holder="").first()
