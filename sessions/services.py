"""Rental workflows: the one status writer, renting, provisioning, stopping and verified teardown.

Safety rules (DESIGN.md) this module implements:
1. two-phase provisioning: the Rental row, with its label, is committed before any provider call;
2. every instance carries ``shopper-<uuid>``; after a create error the label is looked up before
   believing nothing was created;
3. destruction is verified: a rental becomes ``destroyed`` only once the provider says the
   instance is gone, and destroy errors are retried without end while billing stays visible.
Provider calls never run inside a database transaction.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from inventory import confidence
from inventory import providers as registry
from inventory.models import Offer, OutcomeKind
from inventory.providers.base import (
    FEATURE_ATTACH_SSH_KEY,
    STATE_FAILED,
    STATE_RUNNING,
    STATE_STOPPED,
    AuthFailed,
    CreateRequest,
    InstanceData,
    NotFound,
    OfferUnavailable,
    Provider,
    ProviderError,
)
from sessions import keys, presets
from sessions.models import (
    IN_FLIGHT_STATUSES,
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    EventCause,
    EventKind,
    Rental,
    RentalEvent,
    Status,
    token_hash,
)
from sessions.ssh import (
    GPU_QUERY,
    GpuReport,
    SSHCheckFailed,
    authorized_key_remove_command,
    gpu_mismatch,
    gpu_report_parse,
    ssh_banner,
    ssh_run,
)
from shopper.logconfig import REDACTED

log = logging.getLogger(__name__)
S = Status


# --------------------------------------------------------------------------------------------
# Errors the API and pages turn into 4xx answers: sessions/errors.py (all derive from DomainError)
# --------------------------------------------------------------------------------------------
from sessions.errors import (  # noqa: E402, F401  (re-exported: callers import them from here)
    AlreadyEnded,
    CapacityReached,
    OfferGone,
    OfferNotFound,
    PriceChanged,
    RentalError,
)


class IllegalTransition(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The one status writer
# --------------------------------------------------------------------------------------------
def rental_transition(
    rental: Rental,
    new: str,
    *,
    reason: str = "",
    actor=None,
    data: dict | None = None,
    **fields: Any,
) -> bool:
    """Move ``rental`` to ``new`` if it is still in the status we read (compare-and-swap).

    Writes the status, ``fields`` and a RentalEvent in one transaction. Returns False, changing
    nothing, when another process moved the rental first. Raises IllegalTransition for a move
    the status machine does not allow.
    """
    old = rental.status
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"illegal transition {old} -> {new}")
    if new in TERMINAL_STATUSES:
        # Ended (destroyed or failed): the generated private key is deleted and the agent's token
        # revoked with the machine, however the rental ended.
        fields.setdefault("ssh_private_key_encrypted", "")
        fields.setdefault("agent_token_hash", "")
        fields.setdefault("verify_private_key_encrypted", "")
    with transaction.atomic():
        won = Rental.objects.filter(pk=rental.pk, status=old).update(
            status=new, status_detail=reason, **fields
        )
        if not won:
            return False
        RentalEvent.objects.create(
            rental_id=rental.pk, from_status=old, to_status=new, reason=reason, actor=actor, data=data or {}
        )
    rental.status = new
    rental.status_detail = reason
    for name, value in fields.items():
        setattr(rental, name, value)
    return True


def rental_event(
    rental: Rental, kind: str, reason: str, *, actor=None, data: dict | None = None
) -> RentalEvent:
    """Record something that is not a status change (an error, a key download, an extension)."""
    return RentalEvent.objects.create(
        rental_id=rental.pk, kind=kind, reason=reason, actor=actor, data=data or {}
    )


# --------------------------------------------------------------------------------------------
# Renting
# --------------------------------------------------------------------------------------------
@dataclass
class RentalCreated:
    rental: Rental
    ssh_private_key: str | None  # only when generated; shown once in the API answer


def _hours(value: Any) -> Decimal:
    try:
        hours = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationError(
            {"reservation_hours": "Give the reservation in hours, e.g. 2 or 1.5."}
        ) from None
    hard_max = settings.SHOPPER_HARD_MAX_HOURS
    if not hours.is_finite() or hours <= 0:
        raise ValidationError({"reservation_hours": "The reservation must be more than 0 hours."})
    if hours > hard_max:
        raise ValidationError(
            {"reservation_hours": f"The reservation can be at most {hard_max} hours (the hard maximum)."}
        )
    return hours


def offer_recheck(offer: Offer, provider: Provider) -> Offer:
    """Ask the provider about the offer right before renting; update our row with the answer.

    Raises OfferGone when the provider no longer offers it. Outside any transaction.
    """
    try:
        fresh = provider.get_offer(offer.provider_offer_id)
    except ProviderError as exc:
        raise RentalError(f"{offer.provider} did not answer ({exc.code}); try again in a minute.") from exc
    if fresh is None:
        Offer.objects.filter(pk=offer.pk).update(available=False)
        raise OfferGone("This offer is no longer available; pick another one from the menu.")
    storage = fresh.storage_price_per_gb_hour
    if fresh.price_per_hour != offer.price_per_hour or (
        storage is not None and storage != offer.storage_price_per_gb_hour
    ):
        Offer.objects.filter(pk=offer.pk).update(
            price_per_hour=fresh.price_per_hour,
            price_per_gpu_hour=Offer.per_gpu(fresh.price_per_hour, offer.gpu_count),
            fetched_at=timezone.now(),
            **({"storage_price_per_gb_hour": storage} if storage is not None else {}),
        )
        offer.refresh_from_db()
    return offer


def _ssh_keys_for(user, ssh_public_key: str | None, generate_key: bool) -> tuple[list[str], bool]:
    """(public keys to install, whether a pair must be generated)."""
    if generate_key:
        if ssh_public_key:
            raise ValidationError(
                {"ssh_public_key": "Give a public key or ask for a generated pair, not both."}
            )
        return [], True
    if ssh_public_key:
        try:
            return [keys.public_key_normalize(ssh_public_key)], False
        except ValidationError as exc:
            raise ValidationError({"ssh_public_key": exc.messages}) from None
    registered = [k.public_key for k in user.ssh_keys.all()]
    return registered, not registered


# rental_create's idle_stop_minutes when the caller did not say: the team default applies.
IDLE_DEFAULT: Any = object()


def rental_create(
    *,
    user,
    offer_id: Any,
    reservation_hours: Any,
    ssh_public_key: str | None = None,
    image: str = "",
    disk_gb: int | None = None,
    preset: str = "",
    ports: Any = None,
    onstart: str = "",
    expected_price: Decimal | None = None,
    generate_key: bool = False,
    request_key: str = "",
    request_fingerprint: str = "",
    idle_stop_minutes: Any = IDLE_DEFAULT,
) -> RentalCreated:
    """Rent an offer: validate, re-check the offer with the provider, then commit the Rental and
    its first event and enqueue provisioning on commit (no instance exists yet).

    The image (or preset), disk, ports and start-up command are checked against what the
    provider can honour first (sessions/presets.py). ``expected_price`` is the hourly price the
    user was shown for the machine at the disk asked for; if the provider now asks another price
    the rental is refused with PriceChanged so the user can decide again.
    """
    from costs.pricing import offer_price_at  # costs imports sessions (DESIGN.md)

    hours = _hours(reservation_hours)
    public_keys, generate = _ssh_keys_for(user, ssh_public_key, generate_key)
    # Imported here: sessions.idle and sessions.balances import this module.
    from sessions.balances import balance_check_rental
    from sessions.idle import idle_default, idle_minutes_check

    idle_minutes = (
        idle_default() if idle_stop_minutes is IDLE_DEFAULT else idle_minutes_check(idle_stop_minutes)
    )

    offer = Offer.objects.visible().filter(pk=offer_id).first() if str(offer_id).isdigit() else None
    if offer is None:
        if str(offer_id).isdigit() and Offer.objects.filter(pk=offer_id).exists():
            raise OfferGone("This offer is no longer available; pick another one from the menu.")
        raise RentalError("No offer with that id.", http_status=404)
    try:
        provider = registry.get_provider(offer.provider)
    except registry.ProviderDisabled as exc:
        raise OfferGone(f"{offer.provider} is disabled: {exc}") from exc
    choices = presets.choices_check(
        provider=offer.provider, max_disk_gb=offer.max_disk_gb, preset=preset, image=image,
        disk_gb=disk_gb, ports=ports, onstart=onstart,
    )  # fmt: skip
    _disk_priced(offer, choices.disk_gb)
    shown = expected_price if expected_price is not None else offer_price_at(offer, choices.disk_gb)
    offer = offer_recheck(offer, provider)
    price = offer_price_at(offer, choices.disk_gb)
    if price != shown:
        raise PriceChanged(
            f"The price changed from ${shown}/h to ${price}/h. Review it and rent again.",
            price_per_hour=str(price),
        )

    private_pem = None
    if generate:
        public, private_pem = keys.keypair_generate("shopper-generated")
        public_keys = [public]
    now = timezone.now()
    with transaction.atomic():
        _lock_rentals()
        live = Rental.objects.live().count()
        if live >= settings.SHOPPER_MAX_LIVE_RENTALS:
            raise CapacityReached(
                f"The team has reached its limit of {settings.SHOPPER_MAX_LIVE_RENTALS} live machines; "
                "stop one or ask an admin to raise SHOPPER_MAX_LIVE_RENTALS."
            )
        # Budgets, in this transaction and under the same lock (raises BudgetExceeded, 403).
        # Imported here, not at module level: imports point costs -> sessions (DESIGN.md).
        from costs.pricing import estimate
        from costs.services import budget_reserve

        # The figure the rent page showed (costs.pricing: one formula).
        budget_reserve(user=user, estimated_cost=estimate(price, hours), now=now)
        # The provider account must be able to pay too (409 insufficient_balance, sessions/balances.py).
        balance_check_rental(provider=offer.provider, estimate=offer.price_per_hour * hours, now=now)
        rental = Rental.objects.create(
            consumer=user,
            offer=offer,
            provider=offer.provider,
            provider_offer_id=offer.provider_offer_id,
            gpu_type=offer.gpu_type,
            gpu_count=offer.gpu_count,
            vram_gb=offer.vram_gb,
            location=offer.location,
            price_per_hour=price,
            shown_price_per_hour=price,
            markup_percent=settings.SHOPPER_PRICE_MARKUP_PERCENT,
            image=choices.image,
            disk_gb=choices.disk_gb,
            preset=choices.preset,
            ports=list(choices.ports),
            onstart=choices.onstart,
            ssh_public_key="\n".join(public_keys),
            ssh_private_key_encrypted=keys.secret_encrypt(private_pem) if private_pem else "",
            request_key=request_key,  # unique per consumer: a repeat fails here (sessions/idempotency.py)
            request_fingerprint=request_fingerprint,
            idle_stop_minutes=idle_minutes,
            created_at=now,
            reservation_ends_at=now + timedelta(seconds=float(hours) * 3600),
            hard_max_at=now + timedelta(hours=settings.SHOPPER_HARD_MAX_HOURS),
        )
        RentalEvent.objects.create(
            rental=rental,
            from_status="",
            to_status=S.PENDING,
            reason=(
                f"Rented by {user.get_username()} for {hours.normalize():f} h at ${price}/h"
                f" ({choices.image}, {choices.disk_gb} GB disk"
                f"{', ports ' + ', '.join(map(str, choices.ports)) if choices.ports else ''})"
            ),
            actor=user,
            data={
                "offer_id": offer.pk,
                "reservation_hours": str(hours),
                "key": "generated" if generate else "given",
            },
        )
        transaction.on_commit(lambda: enqueue("sessions.tasks.provision", rental.pk))
    return RentalCreated(rental=rental, ssh_private_key=private_pem)


def offer_comparable(rental: Rental) -> Offer | None:
    """A fresh offer like ``rental``'s (same GPU model and count) on which its rent-time choices
    can be honoured: the same provider first, then the cheapest."""
    candidates = Offer.objects.visible().filter(gpu_type=rental.gpu_type, gpu_count=rental.gpu_count)
    ordered = sorted(candidates[:200], key=lambda o: (o.provider != rental.provider, o.price_per_hour, o.pk))
    custom = rental.preset in ("", presets.CUSTOM)
    for offer in ordered:
        try:
            presets.choices_check(
                provider=offer.provider, max_disk_gb=offer.max_disk_gb, disk_gb=rental.disk_gb,
                preset="" if custom else rental.preset, image=rental.image if custom else "",
                ports=list(rental.ports or []), onstart=rental.onstart,
            )  # fmt: skip
            _disk_priced(offer, rental.disk_gb)
        except ValidationError:
            continue
        return offer
    return None


def _disk_priced(offer: Offer, disk_gb: int | None) -> None:
    """A disk other than the one the menu price includes needs the offer's storage rate, or the
    price shown would not be the machine's (issue 14)."""
    default = offer.disk_gb_default or presets.limits_for(offer.provider).disk_default_gb
    if (
        disk_gb is not None
        and default is not None
        and disk_gb != default
        and (offer.storage_price_per_gb_hour is None or offer.disk_gb_default is None)
    ):
        raise ValidationError(
            {"disk_gb": f"This offer does not say what storage costs: rent it with {default} GB."}
        )


def _lock_rentals() -> None:
    """Serialize rental creation so the live-instance cap cannot be squeezed by two requests.

    SQLite transactions here are IMMEDIATE (one writer at a time); PostgreSQL needs a lock.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(727001)")


def enqueue(func: str, *args: Any) -> None:
    from django_q.tasks import async_task

    kind = func.rsplit(".", 1)[-1]
    if kind in ("provision", "teardown") and args:
        # Recorded before the hand-over (a worker may start it at once): the safety loop acts
        # itself when the queue does not start it in time (sessions/stalled.py).
        from sessions.stalled import work_queued

        work_queued(args[0], kind)
    async_task(
        func, *args, q_options={"task_name": f"{func.rsplit('.', 1)[-1]}-{args[0] if args else ''}"[:100]}
    )


# --------------------------------------------------------------------------------------------
# Provisioning
# --------------------------------------------------------------------------------------------
def _sleep(seconds: float) -> None:
    """Every wait of this module goes through here (tests make it instant)."""
    if seconds > 0:
        time.sleep(seconds)


class LeaseLost(Exception):
    """Another worker took this rental's provisioning or teardown over: ours stopped renewing
    its lease long enough for it to expire (a stalled process), so ours must stop working."""


# The leases the current thread holds, innermost last: (rental id, field, until). A stack because
# a teardown can run inline inside provisioning (a synchronous queue). Provisioning and teardown
# renew their lease at every wait, so a lease is short and a dead worker's work is taken over
# within SHOPPER_LEASE_SECONDS, while a live worker is never displaced; nothing clears leases.
_held = threading.local()


def _leases() -> list:
    if not hasattr(_held, "leases"):
        _held.leases = []
    return _held.leases


def _lease_claim(rental_id, field: str, statuses) -> bool:
    """Take the lease in ``field`` if no live worker holds it (compare-and-swap on its expiry)."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.SHOPPER_LEASE_SECONDS)
    claimed = (
        Rental.objects.filter(pk=rental_id, status__in=statuses)
        .filter(Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lt": now}))
        .update(**{field: until})
    )
    _leases().append((rental_id, field, until) if claimed else None)
    return bool(claimed)


def _lease_renew() -> None:
    """Extend the innermost lease this thread holds; LeaseLost if it is no longer ours. The
    expiry we wrote is the proof of ownership: a worker that took the lease over wrote another."""
    leases = _leases()
    if not leases or leases[-1] is None:
        return
    rental_id, field, until = leases[-1]
    renewed = timezone.now() + timedelta(seconds=settings.SHOPPER_LEASE_SECONDS)
    if not Rental.objects.filter(pk=rental_id, **{field: until}).update(**{field: renewed}):
        leases[-1] = None
        raise LeaseLost(f"{field} of rental {rental_id} was taken over")
    leases[-1] = (rental_id, field, renewed)


def _lease_release() -> None:
    """Pop the innermost claim; give the lease back if it is still ours."""
    lease = _leases().pop() if _leases() else None
    if lease is not None:
        rental_id, field, until = lease
        Rental.objects.filter(pk=rental_id, **{field: until}).update(**{field: None})


def _wait(seconds: float) -> None:
    """A wait inside provisioning or teardown: renew the lease first, so the work stays ours."""
    _lease_renew()
    _sleep(seconds)


def _provider(rental: Rental) -> Provider:
    return registry.get_provider(rental.provider)


def _find_by_label(provider: Provider, rental: Rental) -> InstanceData | None:
    for instance in provider.list_instances(rental.label):
        if instance.label == rental.label:
            return instance
    return None


def rental_provision(*, rental_id) -> None:
    """Create the instance, install the key, wait for it to run, prove SSH works, then ``active``.

    Idempotent: it re-reads the rental and resumes from its status, and never creates a second
    instance (the label is looked up before any create when a previous attempt may have sent one).
    One worker at a time holds the rental's provisioning lease; a duplicate delivery returns.
    """
    claimed = _lease_claim(rental_id, "provision_claimed_until", IN_FLIGHT_STATUSES)
    try:
        if claimed:  # else ended, or another worker is provisioning it
            _provision(rental_id)
    except LeaseLost:
        log.warning("provisioning of %s stopped: another worker took it over", rental_id)
    finally:
        _lease_release()


def rentals_resume_provisioning() -> int:
    """Enqueue provisioning for every in-flight rental no live worker holds (the safety loop's
    sweep and start-up recovery): a worker that died mid-way, or a task the broker lost, leaves
    its rental with an expired lease or none. A duplicate delivery is harmless (the lease)."""
    now = timezone.now()
    ids = list(
        Rental.objects.filter(status__in=IN_FLIGHT_STATUSES)
        # Not ones created a moment ago: their first task is still on its way.
        .filter(created_at__lt=now - timedelta(seconds=settings.SHOPPER_LEASE_SECONDS))
        .filter(Q(provision_claimed_until__isnull=True) | Q(provision_claimed_until__lt=now))
        .values_list("pk", flat=True)
    )
    for rental_id in ids:
        enqueue("sessions.tasks.provision", rental_id)
    return len(ids)


def _provision(rental_id) -> None:
    rental = Rental.objects.filter(pk=rental_id).first()
    if rental is None or rental.status not in IN_FLIGHT_STATUSES:
        return
    provider = _provider(rental)
    # Already provisioning on entry: an earlier attempt may have sent the create before dying.
    resumed = rental.status == S.PROVISIONING
    if rental.status == S.PENDING and not rental_transition(
        rental, S.PROVISIONING, reason=f"Creating the instance at {provider.display_name}"
    ):
        return  # someone else moved it (stopped, or another worker claimed it)
    try:
        if rental.status == S.PROVISIONING and not _instance_create(rental, provider, resumed=resumed):
            return
        endpoints: tuple[tuple[str, int], ...] | None = None
        if rental.status == S.BOOTING:
            instance = _instance_wait_running(rental, provider)
            if instance is None:
                return
            endpoints = instance.ssh_endpoints
            _instance_readback(rental, instance)
            if not rental_transition(
                rental,
                S.VERIFYING,
                reason="The instance is running; checking that SSH works",
                ssh_host=instance.ssh_host,
                ssh_port=instance.ssh_port,
                ssh_user=instance.ssh_user or "root",
            ):
                return
        if rental.status == S.VERIFYING:
            _ssh_verify(rental, provider, endpoints)
        if rental.status == S.ACTIVE:
            rental_health_check(rental)  # once at once; then the minute job (rentals_health_check)
    except ProviderError as exc:
        rental.refresh_from_db()
        _stop_after_failure(rental, f"Provisioning failed: {exc.code}: {exc.message}"[:500])


def _instance_create(rental: Rental, provider: Provider, *, resumed: bool = False) -> bool:
    """provisioning -> booting with the instance id stored. Returns False if the rental moved.

    When resuming, the label is looked up until a create sent by the dead attempt would have
    shown in the listing (SHOPPER_CREATE_SETTLE_SECONDS after provisioning began): listings lag,
    and one miss must not lead to a second instance.
    """
    instance_id = rental.provider_instance_id
    while not instance_id and resumed:
        instance = _find_by_label(provider, rental)
        if instance:
            instance_id = instance.instance_id
            rental_event(rental, EventKind.INFO, f"Resumed: found instance {instance_id} by its label")
        elif not _create_may_be_in_flight(rental):
            break
        else:
            _wait(max(settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS, 0.01))
    if not instance_id:
        agent_token = secrets.token_urlsafe(32)
        Rental.objects.filter(pk=rental.pk).update(agent_token_hash=token_hash(agent_token))
        request = CreateRequest(
            offer_id=rental.provider_offer_id,
            label=rental.label,
            ssh_public_key=_install_keys(rental),
            image=rental.image,
            disk_gb=rental.disk_gb,
            onstart=user_startup(presets.startup_script(rental.preset, rental.onstart)) + agent_onstart(),
            env=agent_env(rental, agent_token),
            ports=tuple(rental.ports or ()),
        )
        for delay in (*CREATE_401_RETRY_SECONDS, None):
            try:
                instance_id = provider.create_instance(request)
                break
            except ProviderError as exc:
                # A provider may quote our request back in its error: the agent's token must not
                # reach the timeline (pages, API, audit) or a log line with it.
                exc.message = exc.message.replace(agent_token, REDACTED)
                exc.args = (exc.message,)
                if delay is not None and isinstance(exc, AuthFailed):
                    retry, instance_id = _create_401_retryable(rental, provider, exc, delay)
                    if instance_id:
                        break
                    if retry:
                        continue
                instance_id = _instance_after_create_error(rental, provider, exc)
                if not instance_id:
                    return False
                break
    _instance_id_store(rental, instance_id)
    rental.refresh_from_db()
    if rental.status != S.PROVISIONING:
        # Stopped while we were creating: the teardown now knows the id and destroys it.
        return False
    if provider.supports(FEATURE_ATTACH_SSH_KEY):
        for line in _install_keys(rental).splitlines():
            provider.attach_ssh_key(instance_id, line)
    return rental_transition(
        rental, S.BOOTING, reason=f"Instance {instance_id} created; waiting for it to boot"
    )


# A read-back price further than this from the one shown is recorded on the timeline (issue 14).
PRICE_DIFFERENCE_PERCENT = Decimal("1")


def _instance_readback(rental: Rental, instance: InstanceData) -> None:
    """Once the instance runs: bill the instance's own hourly rate (Vast ``dph_total`` of the
    instance, TensorDock ``rateHourly``: PROVIDERS.md 1.5, 2.2b) instead of our estimate, and
    keep the host:port the provider mapped each exposed port to. Before active, so billing never
    starts at the estimate. A difference over 1 % from the price shown is put on the timeline."""
    fields: dict[str, Any] = {}
    if rental.ports:
        fields["mapped_ports"] = {
            str(p): f"{instance.ports[p][0]}:{instance.ports[p][1]}"
            for p in rental.ports
            if p in instance.ports
        }
    read = instance.price_per_hour
    if read is not None and read > 0 and read != rental.price_per_hour:
        fields["price_per_hour"] = read
        shown = rental.shown_price_per_hour or rental.price_per_hour
        diff = ((read - shown) / shown * 100).quantize(Decimal("0.01")) if shown else Decimal("100")
        if abs(diff) > PRICE_DIFFERENCE_PERCENT:
            rental_event(
                rental, EventKind.WARNING,
                f"{instance.provider} bills this machine ${read}/h, {diff:+}% from the ${shown}/h you "
                "were shown; you are billed the provider's rate",
                data={"price_shown": str(shown), "price_billed": str(read), "difference_percent": str(diff)},
            )  # fmt: skip
    if fields:
        Rental.objects.filter(pk=rental.pk).update(**fields)
        for name, value in fields.items():
            setattr(rental, name, value)


# How long after active an inference preset's health check is still asked (models load slowly:
# FIELD_NOTES VA-LOADING saw vLLM take over 10 min), and how long one ask may take.
HEALTH_WATCH = timedelta(hours=1)
HEALTH_TIMEOUT_SECONDS = 3


def rental_health_check(rental: Rental) -> bool:
    """Ask the preset's HTTP health check on its mapped port once; on the first answer record
    ``health_ok_at`` and an event (the page then says the server answers). Never in a transaction."""
    found = presets.health_port(rental.preset, rental.ports)
    address = (rental.mapped_ports or {}).get(str(found[0])) if found else None
    if not found or not address or rental.health_ok_at or rental.status != S.ACTIVE:
        return False
    url = f"http://{address}{found[1]}"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_SECONDS) as resp:
            if not 200 <= resp.status < 300:
                return False
    except (OSError, ValueError):
        return False
    now = timezone.now()
    if Rental.objects.filter(pk=rental.pk, health_ok_at__isnull=True).update(health_ok_at=now):
        rental.health_ok_at = now
        rental_event(rental, EventKind.INFO, f"The inference server answers its health check: {url}")
    return True


def rentals_health_check() -> int:
    """The minute job: every recently active rental whose preset server has not answered yet."""
    since = timezone.now() - HEALTH_WATCH
    rentals = Rental.objects.filter(status=S.ACTIVE, health_ok_at__isnull=True, active_since__gte=since)
    return sum(rental_health_check(r) for r in rentals.exclude(preset="").exclude(ports=[]))


def _instance_id_store(rental: Rental, instance_id: str) -> None:
    # Not a status write: stored whatever the status, so a concurrent stop can destroy it.
    Rental.objects.filter(pk=rental.pk, provider_instance_id="").update(provider_instance_id=instance_id)


# FIELD_NOTES TD-AUTH401: TensorDock answered creates with 401 for valid keys (8 sessions in one
# run, cause never found). A 401 on create while a read with the same key works is retried after
# these waits; a 401 the read confirms is a credential outage and fails at once.
CREATE_401_RETRY_SECONDS = (5.0, 20.0)


def _create_401_retryable(
    rental: Rental, provider: Provider, exc: ProviderError, delay: float
) -> tuple[bool, str]:
    """After a 401 on create: (retry?, instance id if the create happened after all).

    The read is the label lookup, so an instance made despite the 401 is adopted, never doubled."""
    try:
        instance = _find_by_label(provider, rental)
    except ProviderError:
        return False, ""  # reads fail too: the key really is refused
    if instance:
        rental_event(
            rental, EventKind.INFO, f"Found instance {instance.instance_id} by its label after a 401"
        )
        return False, instance.instance_id
    rental_event(
        rental,
        EventKind.WARNING,
        f"{rental.provider} refused the create with 401 although reads with the same key work "
        f"(a known provider fault); trying again in {delay:.0f} s",
        data={"code": exc.code, "retry_in_s": delay, "cause": EventCause.CREATE_401},
    )
    _wait(delay)
    return True, ""


def _instance_after_create_error(rental: Rental, provider: Provider, exc: ProviderError) -> str:
    """Decide what a create error means. Returns the instance id if one exists after all.

    The provider may have created the instance although it answered with an error (Vast's
    ``success: false`` with ``new_contract``, a 5xx after the fact), and its listing may lag.
    """
    rental_event(
        rental,
        EventKind.ERROR,
        f"Create answered {exc.code}: {exc.message}"[:500],
        data={"cause": EventCause.CREATE_FAILED, "code": exc.code, "provider_error": exc.message[:500]},
    )
    if exc.instance_id:
        _instance_id_store(rental, exc.instance_id)
        rental.refresh_from_db()
        _stop_after_failure(rental, "The provider created the instance but reported an error; destroying it")
        return ""
    lookups = 1 if isinstance(exc, OfferUnavailable) else settings.SHOPPER_LABEL_LOOKUPS_AFTER_ERROR
    confirmed_empty = False
    for attempt in range(max(1, lookups)):
        if attempt:
            _wait(settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS)
        try:
            instance = _find_by_label(provider, rental)
        except ProviderError:
            continue
        if instance:
            rental_event(
                rental, EventKind.INFO, f"Found instance {instance.instance_id} by its label after the error"
            )
            return instance.instance_id
        confirmed_empty = True
    rental.refresh_from_db()
    confidence.outcome_record(rental, confidence.create_error_kind(exc), exc.message)
    if isinstance(exc, OfferUnavailable):
        _offer_failed(rental)
    if not confirmed_empty:
        # No listing answered: nothing proves the create did not happen. failed would be a
        # guess; stopping keeps looking (teardown finds the label or confirms it absent).
        _stop_after_failure(rental, f"Create failed ({exc.code}) and the label lookup did not answer")
        return ""
    if rental.status == S.PROVISIONING and rental_transition(
        rental, S.FAILED, reason=f"Could not create the instance: {exc.message}"[:500],
        data={PROVISION_FAILED: True}, ended_at=timezone.now(),
    ):  # fmt: skip
        _failure_record(rental, exc.message)
    return ""


def _offer_failed(rental: Rental) -> None:
    if rental.offer_id:
        Offer.objects.filter(pk=rental.offer_id).update(available=False)


def _instance_wait_running(rental: Rental, provider: Provider) -> InstanceData | None:
    """Poll until the instance runs and has an SSH endpoint. None if the rental moved or failed."""
    deadline = timezone.now() + timedelta(seconds=settings.SHOPPER_BOOT_TIMEOUT_SECONDS)
    missing = 0
    while True:
        rental.refresh_from_db()
        if rental.status != S.BOOTING:
            return None
        try:
            instance = provider.get_instance(rental.provider_instance_id)
            missing = 0
        except NotFound:
            missing += 1
            instance = None
            if missing >= 3:
                confidence.outcome_record(rental, OutcomeKind.DIED_EARLY, "disappeared while booting")
                _stop_after_failure(rental, "The instance disappeared while booting")
                return None
        except ProviderError as exc:
            if not exc.transient:
                raise
            instance = None
        if instance and instance.state == STATE_FAILED:
            confidence.outcome_record(
                rental, confidence.start_failure_kind(instance.status_message), instance.status_message
            )
            _stop_after_failure(
                rental,
                f"The instance failed to start: {instance.raw_status} {instance.status_message}",
                data={
                    "cause": EventCause.INSTANCE_FAILED,
                    "provider_error": f"{instance.raw_status} {instance.status_message}"[:500],
                },
            )
            return None
        if instance and instance.state == STATE_RUNNING and instance.ssh_host and instance.ssh_port:
            return instance
        if timezone.now() >= deadline:
            confidence.outcome_record(
                rental, OutcomeKind.SSH_NEVER_UP, "did not start within the boot timeout"
            )
            _stop_after_failure(
                rental,
                "The instance did not start within the boot timeout",
                data={"cause": EventCause.BOOT_TIMEOUT},
            )
            return None
        _wait(settings.SHOPPER_POLL_INTERVAL_SECONDS)


def _verify_key(rental: Rental) -> str | None:
    """The private key the check logs in with: the generated one (the user's own, so the login
    the user will make is the one proved), else our per-rental verification key."""
    if rental.ssh_private_key_encrypted:
        return keys.secret_decrypt(rental.ssh_private_key_encrypted)
    if rental.verify_private_key_encrypted:
        return keys.secret_decrypt(rental.verify_private_key_encrypted)
    return None


def _public_of(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{public.decode()} shopper-verify"


def _install_keys(rental: Rental) -> str:
    """The public keys the instance gets: the rental's, plus (when the user brought their own key,
    which we cannot log in with) a per-rental verification key of ours, made once and kept
    encrypted on the rental so a resumed check uses the same one."""
    if rental.ssh_private_key_encrypted:
        return rental.ssh_public_key
    if not rental.verify_private_key_encrypted:
        _, private_pem = keys.keypair_generate("shopper-verify")
        encrypted = keys.secret_encrypt(private_pem)
        Rental.objects.filter(pk=rental.pk).update(verify_private_key_encrypted=encrypted)
        rental.verify_private_key_encrypted = encrypted
    verify_public = _public_of(keys.secret_decrypt(rental.verify_private_key_encrypted))
    return "\n".join([*rental.ssh_public_key.splitlines(), verify_public])


def _gpu_verify_timeout(provider_name: str) -> float:
    """SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS, or the provider's own from
    SHOPPER_GPU_VERIFY_TIMEOUT_OVERRIDES (TensorDock's driver repair takes 2-5 min, TD-NODRIVER)."""
    overrides = getattr(settings, "SHOPPER_GPU_VERIFY_TIMEOUT_OVERRIDES", {}) or {}
    return float(overrides.get(provider_name, settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS))


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"


def _ssh_endpoints(
    rental: Rental, provider: Provider, endpoints: tuple[tuple[str, int], ...] | None
) -> list[tuple[str, int]]:
    """The stored endpoint first, then the provider's others (Vast: direct, then its proxy
    ``ssh_host:ssh_port``; direct SSH did not answer where the proxy did, FIELD_NOTES VA-SSH).
    A resumed check asks the provider once; if it cannot answer, the stored endpoint is tried."""
    if endpoints is None:
        try:
            endpoints = provider.get_instance(rental.provider_instance_id).ssh_endpoints
        except ProviderError:
            endpoints = ()
    out = [(rental.ssh_host, rental.ssh_port)] if rental.ssh_host and rental.ssh_port else []
    return out + [e for e in endpoints if e not in out]


def _instance_stopped(rental: Rental, provider: Provider) -> str:
    """Why the instance will never answer ("" while it may): it stopped or failed right after
    starting (TD-STOPS, VA-DIES) or is gone. A provider error is not an answer."""
    try:
        instance = provider.get_instance(rental.provider_instance_id)
    except NotFound:
        return "The machine disappeared at the provider before it could be checked"
    except ProviderError:
        return ""
    if instance.state in (STATE_STOPPED, STATE_FAILED):
        status = f"{instance.raw_status} {instance.status_message}".strip()
        return f"The machine stopped right after starting ({status})"
    return ""


def _ssh_verify(
    rental: Rental, provider: Provider, endpoints: tuple[tuple[str, int], ...] | None = None
) -> None:
    """Prove the handoff: log in over SSH and check, with nvidia-smi, that the machine has the GPUs
    that were sold (model, count, VRAM, CUDA at least what the offer said) before ``active``.

    The login uses the generated key, or our verification key beside the user's own (removed from
    authorized_keys once the check passed). Every endpoint is tried each round and the one that
    answers is handed off. Logging in is retried until the SSH timeout; from the first login the
    GPUs have SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS (per provider) to work (TensorDock repairs its
    driver at boot, TD-NODRIVER). A machine that is not what was sold, never logs in, never gets a
    working driver or stops is torn down, the offer hidden, and nothing is billed (billing starts
    at ``active``)."""
    private_key = _verify_key(rental)
    candidates = _ssh_endpoints(rental, provider, endpoints)
    ssh_deadline = timezone.now() + timedelta(seconds=settings.SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS)
    gpu_timeout = _gpu_verify_timeout(rental.provider)
    gpu_deadline = None  # set at the first login
    last_error = gpu_error = ""
    offer_cuda = rental.offer.cuda_version if rental.offer_id and rental.offer else ""
    while True:
        if gpu_deadline is None and timezone.now() >= ssh_deadline:
            break
        if gpu_deadline is not None and timezone.now() >= gpu_deadline:
            why = f"had no working NVIDIA driver after {_minutes(gpu_timeout)} ({gpu_error})"
            if not gpu_error:  # logged in once, then never again
                why = f"could not be checked within {_minutes(gpu_timeout)}: {last_error}"
            confidence.outcome_record(rental, OutcomeKind.NO_GPU, why)
            _stop_after_gpu_failure(
                rental,
                f"The machine {why}",
                cause=EventCause.GPU_NO_DRIVER if gpu_error else EventCause.SSH_FAILED,
            )
            return
        rental.refresh_from_db()
        if rental.status != S.VERIFYING:
            return
        logged_in = False
        for host, port in candidates:
            user = rental.ssh_user or "root"
            try:
                if private_key is None:
                    # Rented before verification keys existed: nothing of ours can log in.
                    output = ssh_banner(host=host, port=port)
                else:
                    output = ssh_run(
                        host=host, port=port, user=user, private_key=private_key, command=GPU_QUERY
                    )
            except SSHCheckFailed as exc:
                last_error = f"{exc} ({host}:{port})" if len(candidates) > 1 else str(exc)
                continue
            logged_in = True
            if private_key is None:
                _active(rental, host, port, "SSH is up; log in with your own key (GPUs not checked)", output)
                return
            if gpu_deadline is None:
                gpu_deadline = timezone.now() + timedelta(seconds=gpu_timeout)
            report = gpu_report_parse(output)
            if report.error:
                if gpu_error != report.error:
                    rental_event(
                        rental, EventKind.INFO, f"Logged in; the GPUs do not work yet: {report.error}"
                    )
                gpu_error = report.error
                break  # the same machine behind every endpoint: wait and ask again
            mismatch = gpu_mismatch(
                report,
                gpu_type=rental.gpu_type,
                gpu_count=rental.gpu_count,
                vram_gb=rental.vram_gb,
                cuda=offer_cuda,
            )
            if mismatch:
                confidence.outcome_record(rental, confidence.gpu_mismatch_kind(mismatch), mismatch)
                _stop_after_gpu_failure(
                    rental,
                    f"The machine is not what was rented: {mismatch}",
                    report,
                    cause=EventCause.GPU_MISMATCH,
                )
                return
            if not rental.ssh_private_key_encrypted:
                try:  # our verification key leaves the machine before it is handed over
                    ssh_run(
                        host=host, port=port, user=user, private_key=private_key,
                        command=authorized_key_remove_command(_public_of(private_key)),
                    )  # fmt: skip
                except SSHCheckFailed as exc:
                    last_error = f"removing the verification key: {exc}"
                    continue
            reason = (
                f"SSH login and GPUs verified ({report.count}× {report.name}, "
                f"driver {report.driver}, CUDA {report.cuda or 'unknown'}); the machine is yours"
            )
            _active(rental, host, port, reason, output, gpu_verified=report.as_json())
            return
        _wait(settings.SHOPPER_POLL_INTERVAL_SECONDS)
        if not logged_in:  # a machine that stopped will never answer: ask the provider
            stopped = _instance_stopped(rental, provider)
            if stopped:
                rental.refresh_from_db()
                confidence.outcome_record(rental, OutcomeKind.DIED_EARLY, stopped)
                _stop_after_failure(
                    rental,
                    f"{stopped}. It was destroyed and you pay nothing."[:500],
                    data={"cause": EventCause.MACHINE_STOPPED},
                )
                return
    confidence.outcome_record(rental, OutcomeKind.SSH_NEVER_UP, last_error)
    _stop_after_failure(
        rental,
        f"Could not log in over SSH within the timeout: {last_error}"[:500],
        data={"cause": EventCause.SSH_FAILED},
    )


def _active(
    rental: Rental, host: str, port: int, reason: str, output: str, gpu_verified: dict | None = None
) -> None:
    if (host, port) != (rental.ssh_host, rental.ssh_port):
        reason += f" (through {host}:{port}; {rental.ssh_host}:{rental.ssh_port} did not answer)"
    rental_transition(
        rental, S.ACTIVE, reason=reason, data={"check": output.strip()[:500]},
        active_since=timezone.now(), ssh_host=host, ssh_port=port,
        gpu_verified=gpu_verified, verify_private_key_encrypted="",
    )  # fmt: skip
    if rental.status == S.ACTIVE:
        confidence.outcome_record(rental, OutcomeKind.SUCCESS)


def _stop_after_gpu_failure(
    rental: Rental, reason: str, report: GpuReport | None = None, *, cause: str
) -> None:
    """The machine is not what was sold, or its GPUs never worked: torn down like any failed
    provisioning; the caller records the outcome, which hides its host at once (it lied, or it
    hands over broken drivers: FIELD_NOTES TD-NODRIVER, VA-CUDA-LIE; inventory/confidence.py)."""
    rental.refresh_from_db()
    data = {"cause": cause, **({"gpu_found": report.as_json()} if report else {})}
    if rental.status == S.VERIFYING:
        _stop_after_failure(rental, f"{reason}. It was destroyed and you pay nothing."[:500], data=data)


def _stop_after_failure(rental: Rental, reason: str, data: dict | None = None) -> bool:
    """A failure that may leave an instance goes to stopping (never straight to failed).
    Returns whether this call moved the rental."""
    if (
        rental.status in LIVE_STATUSES
        and rental.status != S.STOPPING
        and rental_transition(
            rental,
            S.STOPPING,
            reason=reason,
            data={PROVISION_FAILED: True, **(data or {})},
            stop_requested_at=timezone.now(),
        )
    ):
        transaction.on_commit(lambda: enqueue("sessions.tasks.teardown", rental.pk))
        _failure_record(rental, reason)
        return True
    return False


# Marks the timeline events of failed provisioning.
PROVISION_FAILED = "provision_failed"


def _failure_record(rental: Rental, reason: str) -> None:
    """Every provisioning failure is an outcome of its offer: ``other`` unless the call site
    already recorded the specific reason (the first one stands). Recording it applies the hiding
    policy of inventory/confidence.py (it replaced "3 failures in 30 min hide an offer")."""
    confidence.outcome_record(rental, OutcomeKind.OTHER, reason)


# --------------------------------------------------------------------------------------------
# Stopping and verified teardown
# --------------------------------------------------------------------------------------------
def rental_stop(*, rental: Rental, reason: str, actor=None) -> Rental:
    """Done or force shutdown: move to stopping and enqueue teardown. Idempotent while stopping."""
    rental_request_stop(rental=rental, reason=reason, actor=actor)
    return rental


def rental_request_stop(*, rental: Rental, reason: str, actor=None) -> bool:
    """rental_stop that tells whether this call moved the rental (False: it was already stopping).

    Raises AlreadyEnded for a terminal rental.
    """
    while True:
        if rental.status == S.STOPPING:
            return False
        if rental.status not in LIVE_STATUSES:
            raise AlreadyEnded(f"This session has already ended ({rental.status}).")
        if rental_transition(
            rental, S.STOPPING, reason=reason, actor=actor, stop_requested_at=timezone.now()
        ):
            transaction.on_commit(lambda: enqueue("sessions.tasks.teardown", rental.pk))
            return True
        rental.refresh_from_db()  # lost a race: look again


def rentals_stop_all(*, actor, reason: str) -> int:
    """The kill switch: move every live rental to stopping (teardown follows). Returns how many
    this call stopped."""
    stopped = 0
    for rental in Rental.objects.live().exclude(status=S.STOPPING):
        with contextlib.suppress(AlreadyEnded):
            stopped += rental_request_stop(rental=rental, reason=reason, actor=actor)
    return stopped


def rental_teardown(*, rental_id, budget_seconds: float | None = None) -> bool:
    """Destroy the instance and poll until the provider confirms it is gone, then ``destroyed``.

    Errors are retried with backoff; the rental stays ``stopping`` (billing visible) with each
    error on its timeline. Returns True once destroyed; False when the time budget ran out (the
    caller, or the periodic sweep, runs it again).
    """
    budget = budget_seconds if budget_seconds is not None else settings.SHOPPER_TEARDOWN_BUDGET_SECONDS
    claimed = _lease_claim(rental_id, "teardown_claimed_until", (S.STOPPING,))
    try:
        rental = Rental.objects.filter(pk=rental_id).first()
        if not claimed or rental is None:
            return rental is not None and rental.status == S.DESTROYED  # another worker is on it
        return _teardown(rental, budget)
    except LeaseLost:
        log.warning("teardown of %s stopped: another worker took it over", rental_id)
        return False
    finally:
        _lease_release()


def _teardown(rental: Rental, budget: float) -> bool:
    provider = _provider(rental)
    deadline = time.monotonic() + budget
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
            return _mark_destroyed(rental, detail)
        if time.monotonic() + backoff > deadline:
            return False
        _wait(backoff)
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


def _create_may_be_in_flight(rental: Rental) -> bool:
    """A create request may still be on the wire if provisioning began recently."""
    started = rental.events.filter(to_status=S.PROVISIONING).values_list("at", flat=True).first()
    if started is None:
        return False  # never reached provisioning: no create was ever sent
    return timezone.now() - started < timedelta(seconds=settings.SHOPPER_CREATE_SETTLE_SECONDS)


def _mark_destroyed(rental: Rental, detail: str) -> bool:
    return rental_transition(
        rental,
        S.DESTROYED,
        reason=detail,
        ended_at=timezone.now(),
    )


# --------------------------------------------------------------------------------------------
# The node agent's start-up (the agent itself arrives with the safety issue)
# --------------------------------------------------------------------------------------------
def agent_env(rental: Rental, agent_token: str) -> dict[str, str]:
    """The node agent's configuration (shopper/agent.py --help); the token travels only here."""
    return {
        "SHOPPER_URL": settings.SHOPPER_PUBLIC_URL,
        "SHOPPER_RENTAL_ID": str(rental.pk),
        "SHOPPER_AGENT_TOKEN": agent_token,
        "SHOPPER_HARD_DEADLINE": rental.hard_max_at.isoformat(),
        "SHOPPER_HEARTBEAT_SECONDS": str(getattr(settings, "SHOPPER_AGENT_HEARTBEAT_SECONDS", 30)),
        "SHOPPER_UNREACHABLE_SECONDS": str(getattr(settings, "SHOPPER_AGENT_UNREACHABLE_SECONDS", 900)),
    }


def user_startup(script: str) -> str:
    """The preset's and the user's start-up command, run in the background (so a server that
    never returns, or an ``exit``, cannot keep the node agent from starting) without the agent's
    token in its environment; its output goes to ``~/onstart.log``."""
    if not script.strip():
        return ""
    return (
        "# The start-up command chosen at rent time (log: ~/onstart.log)\n"
        f"(unset SHOPPER_AGENT_TOKEN; nohup bash -c {shlex.quote(script)} "
        '>>"${HOME:-/root}/onstart.log" 2>&1 </dev/null &)\n'
    )


def agent_onstart() -> str:
    """The start-up script: Vast ``onstart`` (bash) or TensorDock runcmd ``bash -c '<exports>...'``.

    It runs with ``agent_env`` in its environment. python3 (not curl/wget, which images may lack)
    fetches ``$SHOPPER_URL/agent.py`` into a fresh ``mktemp -d`` directory (under $TMPDIR, else
    $HOME, else /tmp) and starts it in its own session, so it outlives this script, logging to
    ``agent.log`` next to it. No secret here: the token stays in the environment.
    """
    return r"""# Cloud GPU Shopper: start the node agent (heartbeats; powers the node off when it must)
PY="$(command -v python3 || command -v python || true)"
if [ -z "$PY" ] || [ -z "${SHOPPER_URL:-}" ]; then
  echo "shopper-agent: python3 or SHOPPER_URL missing; the node agent is not running" >&2
  exit 0
fi
# A fresh directory under $HOME (found next to the user's files, gone with a sandbox machine's files)
AGENT_DIR="$(mktemp -d "${TMPDIR:-${HOME:-/tmp}}/shopper-agent.XXXXXX" 2>/dev/null || mktemp -d)"
"$PY" - "$AGENT_DIR/agent.py" <<'PYEOF'
import os, sys, time, urllib.request
url = os.environ["SHOPPER_URL"].rstrip("/") + "/agent.py"
for attempt in range(10):
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            data = resp.read()
        if data.startswith(b"#!"):
            break
    except Exception as exc:
        print("shopper-agent: download failed: %s" % exc, file=sys.stderr)
    time.sleep(min(3 * (attempt + 1), 30))
else:
    sys.exit("shopper-agent: could not download " + url)
with open(sys.argv[1], "wb") as f:
    f.write(data)
PYEOF
[ -s "$AGENT_DIR/agent.py" ] && cd "$AGENT_DIR" || exit 0
export SHOPPER_AGENT_STATE="${SHOPPER_AGENT_STATE:-$AGENT_DIR/state.json}"
SETSID="$(command -v setsid || true)"
nohup $SETSID "$PY" "$AGENT_DIR/agent.py" >>"$AGENT_DIR/agent.log" 2>&1 </dev/null &
echo "shopper-agent: started (pid $!), log $AGENT_DIR/agent.log"
"""


def rental_heartbeat(*, rental: Rental, data: dict) -> str:
    """Record a node agent heartbeat (not a status write) and tell the agent what to do.

    "shutdown" when the rental is stopping or past its hard max (then it is also stopped here, so
    the hard max is enforced even if the lifecycle worker lags); otherwise "continue".
    """
    now = timezone.now()
    Rental.objects.filter(pk=rental.pk).update(last_heartbeat_at=now, last_heartbeat_data=data)
    if rental.last_heartbeat_at is None:
        rental_event(rental, EventKind.HEARTBEAT, "The node agent reported in", data=data)
    rental.last_heartbeat_at, rental.last_heartbeat_data = now, data
    if rental.status == S.STOPPING:
        return "shutdown"
    if now >= rental.hard_max_at:
        with contextlib.suppress(AlreadyEnded):
            rental_stop(rental=rental, reason="Hard maximum reached (reported by the node agent)")
        return "shutdown"
    return "continue"
