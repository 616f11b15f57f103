"""The lease a worker holds on a rental's provisioning or teardown.

Provisioning and teardown renew their lease at every wait, so a lease is short and a dead
worker's work is taken over within SHOPPER_LEASE_SECONDS, while a live worker is never displaced;
nothing clears leases. The expiry a worker wrote is its proof of ownership: a worker that took the
lease over wrote another. A lease is an object passed to the code that waits (a teardown can run
inline inside provisioning with a synchronous queue: each holds its own).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from sessions.models import Rental


class LeaseLost(Exception):
    """Another worker took this rental's provisioning or teardown over: ours stopped renewing
    its lease long enough for it to expire (a stalled process), so ours must stop working."""


class Lease:
    """A claim on ``field`` (a ``*_claimed_until`` column) of one rental, until ``until``."""

    def __init__(self, rental_id: int, field: str, until: datetime):
        self.rental_id = rental_id
        self.field = field
        self.until: datetime | None = until

    @classmethod
    def claim(cls, rental_id, field: str, statuses) -> Lease | None:
        """Take the lease if no live worker holds it (compare-and-swap on its expiry); None if
        another worker holds it or the rental is not in one of ``statuses``."""
        now = timezone.now()
        until = now + timedelta(seconds=settings.SHOPPER_LEASE_SECONDS)
        claimed = (
            Rental.objects.filter(pk=rental_id, status__in=statuses)
            .filter(Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lt": now}))
            .update(**{field: until})
        )
        return cls(rental_id, field, until) if claimed else None

    def renew(self) -> None:
        """Extend the lease; LeaseLost if it is no longer ours."""
        if self.until is None:
            raise LeaseLost(f"{self.field} of rental {self.rental_id} was released")
        renewed = timezone.now() + timedelta(seconds=settings.SHOPPER_LEASE_SECONDS)
        if not Rental.objects.filter(pk=self.rental_id, **{self.field: self.until}).update(
            **{self.field: renewed}
        ):
            self.until = None
            raise LeaseLost(f"{self.field} of rental {self.rental_id} was taken over")
        self.until = renewed

    def release(self) -> None:
        """Give the lease back if it is still ours (idempotent)."""
        if self.until is not None:
            Rental.objects.filter(pk=self.rental_id, **{self.field: self.until}).update(**{self.field: None})
            self.until = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
