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
- Deployment scoping (sessions/deployment.py): only this deployment's labels
  ``shopper-<deployment id>-<uuid>`` are reconciled. Another deployment's instances on a shared
  account are recorded (ForeignInstance, for the safety page) and never touched. A pre-scoping
  label ``shopper-<uuid>`` is adopted when a live rental here owns it; otherwise it is alerted
  (``unscoped_orphan``) and destroyed only by an admin (``unscoped_destroy``).
The number of queries per cycle does not grow with the number of instances.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from inventory import confidence
from inventory import providers as registry
from inventory.models import OutcomeKind
from inventory.providers.base import InstanceData, NotFound, ProviderError
from sessions.alerts import alert_raise
from sessions.deployment import ParsedLabel, deployment_id, parse_label, scoped_prefix
from sessions.models import (
    IN_FLIGHT_STATUSES,
    LABEL_PREFIX,
    LIVE_STATUSES,
    Alert,
    AlertKind,
    EventKind,
    ForeignInstance,
    Rental,
    Status,
)
from sessions.queue import enqueue
from sessions.services import rental_event, rental_stop
from sessions.teardown import rentals_resume_stopping

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
    foreign: list[str] = field(default_factory=list)  # other deployments' instances (untouched)
    unscoped: list[str] = field(default_factory=list)  # pre-scoping labels no live rental owns
    orphan_keys_deleted: list[str] = field(default_factory=list)  # per-rental SSH keys (Lambda)


def _foreign_record(provider_name: str, foreign: list[tuple[InstanceData, ParsedLabel]]) -> None:
    """Keep the safety page's list of other deployments' instances as this listing shows them."""
    now = timezone.now()
    ids = [i.instance_id for i, _ in foreign]
    ForeignInstance.objects.filter(provider=provider_name).exclude(provider_instance_id__in=ids).delete()
    if foreign:
        ForeignInstance.objects.bulk_create(
            [
                ForeignInstance(
                    provider=provider_name,
                    provider_instance_id=i.instance_id,
                    label=i.label or "",
                    deployment=p.deployment,
                    state=i.state,
                    price_per_hour=i.price_per_hour,
                    seen_at=now,
                )
                for i, p in foreign
            ],
            update_conflicts=True,
            unique_fields=["provider", "provider_instance_id"],
            update_fields=["label", "deployment", "state", "price_per_hour", "seen_at"],
        )


def reconcile(*, provider_name: str) -> ReconcileResult:
    """One reconciliation cycle for one provider (see the module docstring)."""
    result = ReconcileResult(provider_name)
    try:
        provider = registry.get_provider(provider_name)
        instances = provider.list_instances(LABEL_PREFIX)
    except (ProviderError, registry.ProviderDisabled) as exc:
        result.aborted = f"listing failed: {exc}"
        return result
    me = deployment_id()
    parsed = [(i, p) for i in instances if (p := parse_label(i.label))]
    known = {r.pk: r for r in Rental.objects.filter(pk__in=[p.rental_id for _, p in parsed])}
    # Sort every labelled instance: ours (this deployment's label, or a rental row here that
    # carries exactly that label), unscoped (a pre-scoping label no rental here owns) and
    # foreign (another deployment's label): listed, never touched.
    ours: list[tuple[InstanceData, Rental | None]] = []
    unscoped: list[InstanceData] = []
    foreign: list[tuple[InstanceData, ParsedLabel]] = []
    for instance, label in parsed:
        rental = known.get(label.rental_id)
        if rental is not None and rental.deployment_id != label.deployment:
            rental = None  # same uuid under another label: not this rental's machine
        if label.deployment == "":
            if rental is not None and rental.status in LIVE_STATUSES:
                ours.append((instance, rental))  # adopted: a live rental from before scoping
            else:
                unscoped.append(instance)
        elif label.deployment == me or rental is not None:
            ours.append((instance, rental))
        else:
            foreign.append((instance, label))
    result.foreign = [i.instance_id for i, _ in foreign]
    _foreign_record(provider_name, foreign)

    live = Rental.objects.filter(provider=provider_name, status__in=LIVE_STATUSES)
    expecting = live.filter(status__in=EXPECT_INSTANCE).exclude(provider_instance_id="")
    result.instances = len(ours)
    if not ours and expecting.exists():
        result.aborted = "empty listing while rentals are live"
        return result

    seen_ids = {i.instance_id for i, _ in ours}
    now = timezone.now()
    grace = timedelta(seconds=settings.SHOPPER_ORPHAN_GRACE_SECONDS)
    _unscoped_alerts(provider, provider_name, unscoped, result)
    open_orphans = {
        a.provider_instance_id: a
        for a in Alert.objects.filter(kind=AlertKind.ORPHAN, provider=provider_name, resolved_at__isnull=True)
    }
    for instance, rental in ours:
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

    _orphan_keys(provider, {i.label for i, _ in ours if i.label}, result)

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
        confidence.outcome_record(rental, OutcomeKind.DIED_EARLY, "gone at the provider")  # if soon
        with contextlib.suppress(Exception):
            rental_stop(
                rental=rental,
                reason="The instance is gone at the provider (missing from two listings, not found by id)",
            )
    return result


def _unscoped_alerts(provider, provider_name: str, unscoped: list[InstanceData], result) -> None:
    """Alert once per unscoped instance no live rental owns; never destroy it here. Before
    scoping, every deployment on the account labelled alike, so it may be another team's
    machine: an admin decides (safety page, ``unscoped_destroy``). An alert whose instance has
    left the listing is closed once the provider confirms it is gone."""
    listed = {i.instance_id for i in unscoped}
    approved = {
        a.provider_instance_id: a
        for a in Alert.objects.filter(
            kind=AlertKind.UNSCOPED, provider=provider_name, resolved_at__isnull=True
        ).exclude(destroy_approved_by="")
    }
    for instance in unscoped:
        result.unscoped.append(instance.instance_id)
        alert = approved.get(instance.instance_id)
        if alert is not None:  # an admin said destroy: retried each cycle until confirmed
            if _destroy_verified(provider, instance.instance_id):
                Alert.objects.filter(pk=alert.pk).update(resolved_at=timezone.now())
            continue
        alert_raise(
            AlertKind.UNSCOPED,
            f"Unscoped instance {instance.instance_id} ({instance.label}) at {provider_name}: no live "
            "rental here owns it and its label names no deployment, so it may be another deployment's; "
            "it is not destroyed automatically. Destroy it from the safety page if it is not.",
            provider=provider_name,
            provider_instance_id=instance.instance_id,
        )
    still_open = Alert.objects.filter(kind=AlertKind.UNSCOPED, resolved_at__isnull=True)
    for alert in still_open.filter(provider=provider_name):
        if alert.provider_instance_id not in listed and _gone(provider, alert.provider_instance_id):
            Alert.objects.filter(pk=alert.pk).update(resolved_at=timezone.now())


def _orphan_keys(provider, listed_labels: set[str], result: ReconcileResult) -> None:
    """Delete per-rental SSH keys (Lambda registers one per rental, named by its label) whose
    rental is not live and whose instance is no longer listed: the teardown's delete was refused
    (a key still in use while the instance terminates) or never ran (a crash between registering
    the key and launching). Only this deployment's prefix; a failure waits for the next cycle.
    A rental's row is committed before its key is registered, so a key being used by a create
    in flight always has a live rental."""
    if not hasattr(provider, "ssh_key_labels"):
        return
    try:
        names = provider.ssh_key_labels(scoped_prefix(deployment_id()))
    except ProviderError as exc:
        log.warning("%s: SSH key listing failed, orphan keys left for later: %s", result.provider, exc)
        return
    owners = {name: label.rental_id for name in names if (label := parse_label(name))}
    live = {
        str(pk)
        for pk in Rental.objects.filter(pk__in=set(owners.values()), status__in=LIVE_STATUSES).values_list(
            "pk", flat=True
        )
    }
    for name in names:
        if name in listed_labels or str(owners.get(name, "")) in live:
            continue
        try:
            provider.delete_ssh_key(name)
        except ProviderError as exc:
            log.warning("%s: orphan SSH key %s not deleted yet: %s", result.provider, name, exc)
            continue
        result.orphan_keys_deleted.append(name)


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
    return {
        "reconciled": results,
        "provisioning_resumed": resumed,
        "teardowns_resumed": stopping,
        "deployment": deployment_id(),
    }


def unscoped_destroy(alert: Alert, *, actor: str) -> bool:
    """An admin's decision: destroy the unscoped instance of this alert. Recorded on the alert
    first, so the reconcile cycle keeps destroying it until the provider confirms it is gone;
    True when that is already confirmed here. Provider calls run outside any transaction."""
    if alert.kind != AlertKind.UNSCOPED or alert.resolved_at is not None:
        return False
    Alert.objects.filter(pk=alert.pk).update(destroy_approved_by=actor[:150])
    try:
        provider = registry.get_provider(alert.provider)
    except (registry.ProviderDisabled, registry.UnknownProvider):
        return False
    if not _destroy_verified(provider, alert.provider_instance_id):
        return False
    Alert.objects.filter(pk=alert.pk, resolved_at__isnull=True).update(resolved_at=timezone.now())
    return True
