"""Rental workflows: the one status writer, renting and stopping.

Provisioning lives in sessions/provisioning.py, verified teardown in sessions/teardown.py, the
machine's start-up script in sessions/onstart.py. Safety rule 1 (DESIGN.md) starts here: the
Rental row, with its label, is committed before any provider call (``rental_create`` only
enqueues provisioning on commit). Provider calls never run inside a database transaction.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from inventory import providers as registry
from inventory.models import Offer
from inventory.providers.base import Provider, ProviderError
from sessions import keys, presets
from sessions.models import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    EventKind,
    Rental,
    RentalEvent,
    Status,
)
from sessions.queue import enqueue

log = logging.getLogger(__name__)
S = Status


# --------------------------------------------------------------------------------------------
# Errors the API and pages turn into 4xx answers: sessions/errors.py (all derive from DomainError)
# --------------------------------------------------------------------------------------------
from sessions.errors import (  # noqa: E402  (re-exported: callers import them from here)
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
    expect: dict | None = None,
    **fields: Any,
) -> bool:
    """Move ``rental`` to ``new`` if it is still in the status we read (compare-and-swap).

    Writes the status, ``fields`` and a RentalEvent in one transaction. Returns False, changing
    nothing, when another process moved the rental first (or a field of ``expect`` no longer
    holds). Raises IllegalTransition for a move the status machine does not allow.
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
        won = Rental.objects.filter(pk=rental.pk, status=old, **(expect or {})).update(
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
    max_price_per_hour: Any = None,
    failover: bool = True,
    failover_any_gpu: bool = False,
) -> RentalCreated:
    """Rent an offer: validate, re-check the offer with the provider, then commit the Rental and
    its first event and enqueue provisioning on commit (no instance exists yet).

    The image (or preset), disk, ports and start-up command are checked against what the
    provider can honour first (sessions/presets.py). ``expected_price`` is the hourly price the
    user was shown for the machine at the disk asked for; if the provider now asks another price
    the rental is refused with PriceChanged so the user can decide again. ``max_price_per_hour``
    (default the price + 10 %) caps the offers a failover may move to (sessions/failover.py).
    """
    from costs.pricing import offer_price_at  # costs imports sessions (DESIGN.md)

    # Imported here: sessions.failover imports this module.
    from sessions.failover import ceiling_check

    hours = _hours(reservation_hours)
    public_keys, generate = _ssh_keys_for(user, ssh_public_key, generate_key)
    idle_minutes = _idle_minutes(idle_stop_minutes)
    offer, provider = _offer_to_rent(offer_id)
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

    ceiling = ceiling_check(max_price_per_hour, price)
    private_pem = None
    if generate:
        public, private_pem = keys.keypair_generate("shopper-generated")
        public_keys = [public]
    rental = _rental_insert(
        user=user, offer=offer, price=price, hours=hours, choices=choices, generated=generate,
        ssh_public_key="\n".join(public_keys),
        ssh_private_key_encrypted=keys.secret_encrypt(private_pem) if private_pem else "",
        request_key=request_key,  # unique per consumer: a repeat fails here (sessions/idempotency.py)
        request_fingerprint=request_fingerprint,
        idle_stop_minutes=idle_minutes,
        max_price_per_hour=ceiling, failover=bool(failover), failover_any_gpu=bool(failover_any_gpu),
    )  # fmt: skip
    return RentalCreated(rental=rental, ssh_private_key=private_pem)


def _idle_minutes(idle_stop_minutes: Any) -> int | None:
    # Imported here: sessions.idle imports this module.
    from sessions.idle import idle_default, idle_minutes_check

    return idle_default() if idle_stop_minutes is IDLE_DEFAULT else idle_minutes_check(idle_stop_minutes)


def _offer_to_rent(offer_id: Any) -> tuple[Offer, Provider]:
    """The visible offer with that id and its provider's adapter, or OfferGone / 404."""
    offer = Offer.objects.visible().filter(pk=offer_id).first() if str(offer_id).isdigit() else None
    if offer is None:
        if str(offer_id).isdigit() and Offer.objects.filter(pk=offer_id).exists():
            raise OfferGone("This offer is no longer available; pick another one from the menu.")
        raise OfferNotFound("No offer with that id.")
    try:
        provider = registry.get_provider(offer.provider)
    except registry.ProviderDisabled as exc:
        raise OfferGone(f"{offer.provider} is disabled: {exc}") from exc
    return offer, provider


def _rental_insert(
    *, user, offer: Offer, price: Decimal, hours: Decimal, choices, generated: bool, **fields: Any
) -> Rental:
    """Commit the Rental and its first event under the rentals lock, after the capacity cap,
    the budget and the provider balance allow it; provisioning is enqueued on commit."""
    # Imported here: sessions.balances imports this module.
    from sessions.balances import balance_check_rental

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
            **fields,
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
                "key": "generated" if generated else "given",
            },
        )
        transaction.on_commit(lambda: enqueue("sessions.tasks.provision", rental.pk))
    return rental


def offer_comparable(rental: Rental) -> Offer | None:
    """A fresh offer like ``rental``'s (same GPU model and count) on which its rent-time choices
    can be honoured: the same provider first, then the cheapest. (Failover's candidates:
    sessions/failover.py.)"""
    candidates = Offer.objects.visible().filter(gpu_type=rental.gpu_type, gpu_count=rental.gpu_count)
    ordered = sorted(candidates[:200], key=lambda o: (o.provider != rental.provider, o.price_per_hour, o.pk))
    return next((offer for offer in ordered if offer_fits(offer, rental)), None)


def offer_fits(offer: Offer, rental: Rental) -> bool:
    """Whether ``rental``'s rent-time choices (image or preset, disk, ports, start-up command) can
    be honoured on ``offer`` at a known price."""
    custom = rental.preset in ("", presets.CUSTOM)
    try:
        presets.choices_check(
            provider=offer.provider, max_disk_gb=offer.max_disk_gb, disk_gb=rental.disk_gb,
            preset="" if custom else rental.preset, image=rental.image if custom else "",
            ports=list(rental.ports or []), onstart=rental.onstart,
        )  # fmt: skip
        _disk_priced(offer, rental.disk_gb)
    except ValidationError:
        return False
    return True


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


# --------------------------------------------------------------------------------------------
# Stopping (verified teardown: sessions/teardown.py)
# --------------------------------------------------------------------------------------------
def rental_stop(*, rental: Rental, reason: str, actor=None) -> bool:
    """Done or force shutdown: move to stopping and enqueue teardown. Idempotent while stopping:
    returns True when this call moved the rental, False when it was already stopping.

    Raises AlreadyEnded for a terminal rental.
    """
    from sessions.failover import failover_cancel  # sessions.failover imports this module

    while True:
        if rental.status == S.STOPPING:
            if not rental.failover_pending or failover_cancel(rental, reason, actor):
                return False
            rental.refresh_from_db()  # the failover moved it on meanwhile: stop that
            continue
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
            stopped += rental_stop(rental=rental, reason=reason, actor=actor)
    return stopped


# --------------------------------------------------------------------------------------------
# The node agent's heartbeat (its start-up script: sessions/onstart.py)
# --------------------------------------------------------------------------------------------
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
