"""Reconciliation against what each provider really runs (safety rule 5) and start-up recovery
(safety rule 6).

- Orphan: an instance with our label prefix and no live rental (unknown, or terminal) — raised as
  an alert when first seen and destroyed once it has been an orphan for the grace period.
- Ghost: a live rental whose instance the provider says does not exist. Missing from two
  consecutive listings only makes it a suspect (listings lag: FIELD_NOTES VA-LISTING, where a new
  Vast instance stays unlisted for a minute or more); a direct ``get`` of the instance decides,
  and only its NotFound makes a ghost — alert, then closed through stopping, so the teardown
  still confirms with the provider that it is gone. Rentals younger than
  SHOPPER_CREATE_SETTLE_SECONDS are not counted at all (their instance may not be listed yet).
- A listing that fails, or is empty while rentals are live, aborts the cycle: it never means
  "all gone". Instances without our prefix are never touched.
The number of queries per cycle does not grow with the number of instances.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from inventory import providers as registry
from inventory.providers.base import NotFound, ProviderError
from sessions.alerts import alert_raise
from sessions.models import (
    IN_FLIGHT_STATUSES,
    LABEL_PREFIX,
    LIVE_STATUSES,
    Alert,
    AlertKind,
    EventKind,
    Rental,
    Status,
)
from sessions.services import enqueue, rental_event, rental_stop, rentals_resume_stopping

log = logging.getLogger(__name__)
S = Status
# A rental in these statuses has (or will have) an instance the listing must show.
EXPECT_INSTANCE = (S.BOOTING, S.VERIFYING, S.ACTIVE)


@dataclass
class ReconcileResult:
    provider: str
    aborted: str = ""
    instances: int = 0
    orphans_found: list[str] = field(default_factory=list)
    orphans_destroyed: list[str] = field(default_factory=list)
    ghosts: list[str] = field(default_factory=list)


def _rental_id(label: str | None) -> uuid.UUID | None:
    if not label or not label.startswith(LABEL_PREFIX):
        return None
    try:
        return uuid.UUID(label[len(LABEL_PREFIX) :])
    except ValueError:
        return None


def reconcile(*, provider_name: str) -> ReconcileResult:
    """One reconciliation cycle for one provider (see the module docstring)."""
    result = ReconcileResult(provider_name)
    try:
        provider = registry.get_provider(provider_name)
        instances = provider.list_instances(LABEL_PREFIX)
    except (ProviderError, registry.ProviderDisabled) as exc:
        result.aborted = f"listing failed: {exc}"
        return result
    live = Rental.objects.filter(provider=provider_name, status__in=LIVE_STATUSES)
    expecting = live.filter(status__in=EXPECT_INSTANCE).exclude(provider_instance_id="")
    ours = [i for i in instances if _rental_id(i.label)]
    result.instances = len(ours)
    if not ours and expecting.exists():
        result.aborted = "empty listing while rentals are live"
        return result

    rentals = {r.pk: r for r in Rental.objects.filter(pk__in=[_rental_id(i.label) for i in ours])}
    seen_ids = {i.instance_id for i in ours}
    now = timezone.now()
    grace = timedelta(seconds=settings.SHOPPER_ORPHAN_GRACE_SECONDS)
    open_orphans = {
        a.provider_instance_id: a
        for a in Alert.objects.filter(kind=AlertKind.ORPHAN, provider=provider_name, resolved_at__isnull=True)
    }
    for instance in ours:
        rental = rentals.get(_rental_id(instance.label))
        if rental is not None and rental.status in LIVE_STATUSES:
            continue
        alert = open_orphans.get(instance.instance_id) or alert_raise(
            AlertKind.ORPHAN,
            f"Orphan instance {instance.instance_id} ({instance.label}) at {provider_name}: "
            f"{'its rental is ' + rental.status if rental else 'no rental has this label'}; "
            f"destroying it after {grace.total_seconds():.0f} s",
            provider=provider_name,
            provider_instance_id=instance.instance_id,
        )
        result.orphans_found.append(instance.instance_id)
        if rental is not None and instance.instance_id not in open_orphans:  # once, when first found
            rental_event(
                rental, EventKind.ERROR, f"Orphan instance {instance.instance_id} found after the end"
            )
        if (
            alert is not None
            and now - alert.created_at >= grace
            and _destroy_verified(provider, instance.instance_id)
        ):
            Alert.objects.filter(pk=alert.pk).update(resolved_at=now)
            result.orphans_destroyed.append(instance.instance_id)
    # An orphan whose destroy was accepted earlier may have left the listing since: confirm with
    # the provider that it is gone before closing its alert.
    for instance_id, alert in open_orphans.items():
        if instance_id not in seen_ids and _gone(provider, instance_id):
            Alert.objects.filter(pk=alert.pk).update(resolved_at=now)
            result.orphans_destroyed.append(instance_id)

    # Ghosts: counted per listing, in bulk (no query per instance); too young to be listed yet
    # is not missing (the same settle time label lookups give a create).
    present = expecting.filter(provider_instance_id__in=seen_ids)
    present.exclude(missing_count=0).update(missing_count=0)
    settled = now - timedelta(seconds=settings.SHOPPER_CREATE_SETTLE_SECONDS)
    missing = expecting.exclude(provider_instance_id__in=seen_ids).filter(created_at__lte=settled)
    missing.update(missing_count=F("missing_count") + 1)
    for rental in missing.filter(missing_count__gte=2):
        if not _confirmed_gone(provider, rental):
            continue
        result.ghosts.append(str(rental.pk))
        alert_raise(
            AlertKind.GHOST,
            f"{rental.label}: instance {rental.provider_instance_id} missing from two listings "
            f"at {provider_name}, and {provider_name} says it does not exist",
            rental=rental,
        )
        with contextlib.suppress(Exception):
            rental_stop(
                rental=rental,
                reason="The instance is gone at the provider (missing from two listings, not found by id)",
            )
    return result


def _confirmed_gone(provider, rental: Rental) -> bool:
    """A suspect ghost is one only if a direct ``get`` says NotFound. Found: the listing lagged,
    and it stays a suspect (asked again each cycle the listing omits it); an error: undecided."""
    try:
        provider.get_instance(rental.provider_instance_id)
    except NotFound:
        return True
    except ProviderError as exc:
        log.warning("ghost check of %s: get failed, undecided: %s", rental.label, exc)
        return False
    log.info(
        "%s: instance %s missing from listings but found by id", rental.label, rental.provider_instance_id
    )
    return False


def _gone(provider, instance_id: str) -> bool:
    try:
        provider.get_instance(instance_id)
    except NotFound:
        return True
    except ProviderError:
        return False
    return False


def _destroy_verified(provider, instance_id: str) -> bool:
    """Destroy, then believe it only when the provider says the instance is gone."""
    try:
        with contextlib.suppress(NotFound):
            provider.destroy_instance(instance_id)
        provider.get_instance(instance_id)
    except NotFound:
        return True
    except ProviderError as exc:
        log.warning("orphan %s: destroy not confirmed yet: %s", instance_id, exc)
    return False


def reconcile_all() -> list[ReconcileResult]:
    """Every enabled provider; one provider's unexpected error never skips the others."""
    results = []
    for status in registry.provider_statuses():
        if not status["enabled"]:
            continue
        try:
            results.append(reconcile(provider_name=status["name"]))
        except Exception as exc:
            log.exception("reconcile %s failed", status["name"])
            results.append(ReconcileResult(status["name"], aborted=f"error: {type(exc).__name__}: {exc}"))
    return results


def destroys_stuck_alert(now=None) -> int:
    """Alert once per rental whose destroy has not been confirmed 15 minutes after the stop."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.SHOPPER_DESTROY_ALERT_SECONDS)
    raised = 0
    for rental in Rental.objects.filter(status=S.STOPPING, stop_requested_at__lte=limit):
        if alert_raise(
            AlertKind.DESTROY_STUCK,
            f"{rental.label}: destroy of instance {rental.provider_instance_id or '?'} at {rental.provider} "
            f"still not confirmed since {rental.stop_requested_at:%Y-%m-%d %H:%M} UTC; retrying without end",
            rental=rental,
        ):
            raised += 1
    return raised


def recover_on_start() -> dict:
    """Safety-loop start-up: reconcile, then resume every rental a dead worker left half-way.

    Provisioning resumes where it stopped (the label is looked up before any create, so no
    second instance); stopping rentals get their teardown back. A rental whose lease a worker is
    still renewing is left to that worker, so restarting the safety loop alone is safe; a dead
    worker's lease expires within SHOPPER_LEASE_SECONDS and the loop's sweep resumes it then.
    """
    results = reconcile_all()
    now = timezone.now()
    resumed = 0
    for rental_id in (
        Rental.objects.filter(status__in=IN_FLIGHT_STATUSES)
        .filter(Q(provision_claimed_until__isnull=True) | Q(provision_claimed_until__lt=now))
        .values_list("pk", flat=True)
    ):
        enqueue("sessions.tasks.provision", rental_id)
        resumed += 1
    stopping = rentals_resume_stopping()
    return {"reconciled": results, "provisioning_resumed": resumed, "teardowns_resumed": stopping}
