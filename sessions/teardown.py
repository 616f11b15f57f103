"""Verified teardown: destroy the instance and mark the rental destroyed only once the provider
says it is gone (DESIGN.md safety rule 3). Destroy errors are retried without end while billing
stays visible; a teardown that ran out of its time budget is resumed by the periodic sweep.
Provider calls never run inside a database transaction.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from inventory import providers as registry
from inventory.providers.base import InstanceData, NotFound, Provider, ProviderError
from sessions.failover import failover_after_teardown
from sessions.lease import Lease, LeaseLost
from sessions.models import EventCause, EventKind, Rental, Status
from sessions.queue import enqueue
from sessions.services import rental_event, rental_transition
from sessions.waits import PRODUCTION, Waits

log = logging.getLogger(__name__)
S = Status


def _provider(rental: Rental) -> Provider:
    return registry.get_provider(rental.provider)


def _find_by_label(provider: Provider, rental: Rental) -> InstanceData | None:
    for instance in provider.list_instances(rental.label):
        if instance.label == rental.label:
            return instance
    return None


def _instance_id_store(rental: Rental, instance_id: str) -> None:
    # Not a status write: stored whatever the status, so a concurrent stop can destroy it.
    Rental.objects.filter(pk=rental.pk, provider_instance_id="").update(provider_instance_id=instance_id)


def _create_may_be_in_flight(rental: Rental) -> bool:
    """A create request may still be on the wire if provisioning began recently."""
    # The latest: a rental that failed over began provisioning once per offer.
    started = (
        rental.events.filter(to_status=S.PROVISIONING)
        .order_by("-at", "-id")
        .values_list("at", flat=True)
        .first()
    )
    if started is None:
        return False  # never reached provisioning: no create was ever sent
    return timezone.now() - started < timedelta(seconds=settings.SHOPPER_CREATE_SETTLE_SECONDS)


def rental_teardown(*, rental_id, budget_seconds: float | None = None, waits: Waits = PRODUCTION) -> bool:
    """Destroy the instance and poll until the provider confirms it is gone, then ``destroyed``.

    Errors are retried with backoff; the rental stays ``stopping`` (billing visible) with each
    error on its timeline. Returns True once destroyed; False when the time budget ran out (the
    caller, or the periodic sweep, runs it again).
    """
    budget = budget_seconds if budget_seconds is not None else settings.SHOPPER_TEARDOWN_BUDGET_SECONDS
    lease = Lease.claim(rental_id, "teardown_claimed_until", (S.STOPPING,))
    rental = Rental.objects.filter(pk=rental_id).first()
    if lease is None or rental is None:
        if lease is not None:
            lease.release()
        return rental is not None and rental.status == S.DESTROYED  # another worker is on it
    with lease:
        try:
            return _teardown(rental, budget, lease, waits)
        except LeaseLost:
            log.warning("teardown of %s stopped: another worker took it over", rental_id)
            return False


def _teardown(rental: Rental, budget: float, lease: Lease, waits: Waits) -> bool:
    provider = _provider(rental)
    deadline = waits.monotonic() + budget
    backoff = settings.SHOPPER_POLL_INTERVAL_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            gone, detail = _destroy_once(rental, provider)
        except ProviderError as exc:
            gone, detail = False, f"Destroy attempt {attempt} failed: {exc.code}: {exc.message}"[:500]
            rental_event(
                rental, EventKind.ERROR, detail, data={"attempt": attempt, "cause": EventCause.DESTROY_FAILED}
            )
        if gone:
            if rental.failover_pending:  # the next offer may be rented now (sessions/failover.py)
                return failover_after_teardown(rental, detail)
            return _mark_destroyed(rental, detail)
        if waits.monotonic() + backoff > deadline:
            return False
        waits.wait(lease, backoff)
        backoff = min(max(backoff * 2, 1), settings.SHOPPER_DESTROY_MAX_BACKOFF_SECONDS)
        rental.refresh_from_db()
        if rental.status != S.STOPPING:
            return rental.status == S.DESTROYED


def rentals_resume_stopping() -> int:
    """Enqueue teardown for every stopping rental no teardown is working on (the periodic sweep
    and worker start-up call this: a teardown that ran out of budget is picked up again)."""
    now = timezone.now()
    ids = list(
        Rental.objects.filter(status=S.STOPPING)
        .filter(Q(teardown_claimed_until__isnull=True) | Q(teardown_claimed_until__lt=now))
        .values_list("pk", flat=True)
    )
    for rental_id in ids:
        enqueue("sessions.tasks.teardown", rental_id)
    return len(ids)


def _destroy_once(rental: Rental, provider: Provider) -> tuple[bool, str]:
    """One destroy-and-check round: (gone, why)."""
    instance_id = rental.provider_instance_id
    if not instance_id:
        instance = _find_by_label(provider, rental)
        if instance is None:
            if _create_may_be_in_flight(rental):
                return False, ""
            return True, "No instance was ever created (confirmed by label lookup)"
        _instance_id_store(rental, instance.instance_id)
        instance_id = instance.instance_id
        rental.provider_instance_id = instance_id
    with contextlib.suppress(NotFound):  # already gone is what we want
        provider.destroy_instance(instance_id)
    try:
        provider.get_instance(instance_id)
    except NotFound:
        return True, f"{provider.display_name} confirmed instance {instance_id} is gone"
    return False, ""


def _mark_destroyed(rental: Rental, detail: str) -> bool:
    return rental_transition(
        rental,
        S.DESTROYED,
        reason=detail,
        ended_at=timezone.now(),
    )
