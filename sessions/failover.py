"""Failover: a rental whose provisioning fails for a reason about the offer moves on by itself to
the best comparable offer (issue 15). Same rental, one timeline; never two live instances.

- Which failures: the offer is gone or has no capacity (no nodes, no public IP), the machine's
  GPUs or driver never worked, it is not what was sold (CUDA lower than advertised...), SSH never
  came up, the machine died or never started (FIELD_NOTES TD-STALE-NONODES, TD-NOPUBLICIP,
  VA-NOSUCHASK, TD-NODRIVER, VA-CUDA-LIE, VA-DIES, TD-STOPS). Not: our credentials, the provider's
  API failing, money.
- Which offers (``failover_candidates``): same GPU model and count (or, with ``failover_any_gpu``,
  any model with at least the VRAM per GPU and the same count), the rent-time choices honoured,
  priced (at the rental's disk) at most ``max_price_per_hour``, never one this rental already
  tried; cheapest first. Each is re-checked with the provider before it is taken.
- How: with no instance (the create was refused and the label lookup confirmed it) the rental
  goes straight back to pending on the next offer. With an instance, it goes to stopping with
  ``failover_pending`` set; the verified teardown (sessions/teardown.py) destroys it, confirms it
  is gone, and only then moves the rental to pending on the next offer. A stop (user, deadline,
  budget, kill switch) while the teardown runs cancels the failover.
- Limits: at most SHOPPER_FAILOVER_TRIES moves per rental; the budget reservation follows the
  new price (only the difference is reserved, under the rentals lock, like at rent time); the
  capacity cap holds because it is the same rental. With no candidate left the rental ends with
  "no comparable offer under $X/h".
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from inventory import providers as registry
from inventory.models import Offer
from inventory.providers.base import OfferUnavailable, ProviderError
from sessions.models import EventKind, Rental, RentalEvent, Status
from sessions.queue import enqueue
from sessions.services import (
    RentalError,
    _lock_rentals,
    offer_fits,
    offer_recheck,
    rental_event,
    rental_transition,
)

log = logging.getLogger(__name__)
S = Status

# Why an attempt failed, when it is about the offer (the event data's "reason").
OFFER_GONE = "offer_gone"
NO_NODES = "no_nodes"
NO_PUBLIC_IP = "no_public_ip"
GPU_BROKEN = "gpu_broken"
GPU_MISMATCH = "gpu_mismatch"
CUDA_TOO_LOW = "cuda_too_low"
SSH_NEVER_UP = "ssh_never_up"
MACHINE_DIED = "machine_died"
REASONS = {
    OFFER_GONE: "the offer was gone",
    NO_NODES: "the provider had no free node for it",
    NO_PUBLIC_IP: "the host had no public IP",
    GPU_BROKEN: "its GPUs never worked",
    GPU_MISMATCH: "the machine was not what was sold",
    CUDA_TOO_LOW: "its CUDA was lower than advertised",
    SSH_NEVER_UP: "SSH never came up",
    MACHINE_DIED: "the machine died or never started",
}
# At most this many candidates are re-checked with their provider per move (a stale menu must not
# turn one failure into hundreds of provider calls).
RECHECKS = 5
# Marks the failover transition (and the event that records a failover that found nothing).
DATA_KEY = "failover"


# A failover may move a rental to an offer at most this much dearer when the user set no ceiling.
CEILING_PERCENT = Decimal("10")


def ceiling_check(value: Any, price: Decimal) -> Decimal:
    """The rental's price ceiling for failover: the user's, at least the price rented at."""
    if value is None or value == "":
        return (price * (1 + CEILING_PERCENT / 100)).quantize(Decimal("0.0001"))
    try:
        ceiling = Decimal(str(value)).quantize(Decimal("0.0001"))
    except (InvalidOperation, ValueError):
        raise ValidationError({"max_price_per_hour": "Give the price ceiling in $/h, e.g. 1.65."}) from None
    if not ceiling.is_finite() or ceiling >= 10**6:
        raise ValidationError({"max_price_per_hour": "Give the price ceiling in $/h, e.g. 1.65."})
    if ceiling < price:
        raise ValidationError(
            {"max_price_per_hour": f"The price ceiling must be at least the offer's price (${price}/h)."}
        )
    return ceiling


def failover_cancel(rental: Rental, reason: str, actor) -> bool:
    """A stop while a failed instance is torn down for a failover: no next offer (False when the
    failover already moved the rental on)."""
    if (
        not Rental.objects.filter(pk=rental.pk, status=S.STOPPING)
        .exclude(failover_pending="")
        .update(failover_pending="")
    ):
        return False
    rental.failover_pending = ""
    rental_event(rental, EventKind.INFO, f"Failover cancelled: {reason}"[:500], actor=actor)
    return True


def create_error_reason(exc: ProviderError) -> str:
    """The failover reason of a create error ("" when it is not about the offer)."""
    if not isinstance(exc, OfferUnavailable):
        return ""
    low = exc.message.lower()
    if "public ip" in low:
        return NO_PUBLIC_IP
    if "node" in low or "capacity" in low:
        return NO_NODES
    return OFFER_GONE


def mismatch_reason(mismatch: str) -> str:
    return CUDA_TOO_LOW if "cuda" in mismatch.lower() else GPU_MISMATCH


def attempts(rental: Rental) -> int:
    """How many times this rental moved to another offer."""
    return RentalEvent.objects.filter(rental_id=rental.pk, **{f"data__{DATA_KEY}": True}).count()


def _tried_offer_ids(rental: Rental) -> set[int]:
    tried = {rental.offer_id} if rental.offer_id else set()
    for data in RentalEvent.objects.filter(rental_id=rental.pk, **{f"data__{DATA_KEY}": True}).values_list(
        "data", flat=True
    ):
        tried.add((data.get("from_offer") or {}).get("id"))
    return {t for t in tried if t}


def failover_candidates(rental: Rental) -> list[Offer]:
    """The offers ``rental`` may move to, best first (cheapest; the same provider first on a tie).

    The one place that decides what is comparable, including the confidence floor
    (SHOPPER_FAILOVER_MIN_CONFIDENCE): an offer our own history says usually fails is skipped.
    """
    from costs.pricing import offer_price_at  # costs imports sessions (DESIGN.md)
    from inventory.confidence import Evidence

    offers = (
        Offer.objects.visible().filter(gpu_count=rental.gpu_count).exclude(pk__in=_tried_offer_ids(rental))
    )
    if rental.failover_any_gpu:
        offers = offers.filter(vram_gb__gte=rental.vram_gb)
    else:
        offers = offers.filter(gpu_type=rental.gpu_type)
    ceiling = rental.max_price_per_hour
    floor = Decimal(str(settings.SHOPPER_FAILOVER_MIN_CONFIDENCE))
    evidence = Evidence.load()
    priced = []
    for offer in offers.order_by("price_per_hour", "pk")[:200]:
        price = offer_price_at(offer, rental.disk_gb)
        if (ceiling is None or price <= ceiling) and offer_fits(offer, rental):
            trust = evidence.confidence(
                offer.provider, offer.provider_offer_id, offer.host, offer.location, offer.gpu_type
            )
            if trust.value < floor:
                continue
            priced.append((price, offer.provider != rental.provider, offer.pk, offer))
    return [row[-1] for row in sorted(priced, key=lambda row: row[:3])]


def failover_ready(rental: Rental, reason: str) -> bool:
    """Whether a failure for ``reason`` should move the rental on: failover is on, the reason is
    about the offer, tries are left and some comparable offer is listed now."""
    return (
        rental.failover
        and reason in REASONS
        and attempts(rental) < settings.SHOPPER_FAILOVER_TRIES
        and bool(failover_candidates(rental))
    )


def none_message(rental: Rental) -> str:
    ceiling = rental.max_price_per_hour
    return f"no comparable offer under ${ceiling}/h" if ceiling is not None else "no comparable offer"


def none_record(rental: Rental, reason: str) -> None:
    """A failure about the offer that did not fail over: say why on the timeline."""
    if not rental.failover or reason not in REASONS:
        return
    tried = attempts(rental)
    why = none_message(rental)
    if tried >= settings.SHOPPER_FAILOVER_TRIES:
        why = f"{why} tried: the {tried} failover tries are used up"
    rental_event(
        rental, EventKind.WARNING, f"Failover: {why} ({REASONS[reason]})"[:500],
        data={"failover_none": True, "attempt": tried, "reason": reason},
    )  # fmt: skip


def failover_move(rental: Rental, reason: str, detail: str, *, provision_failed: bool = False) -> bool:
    """Move the rental (provisioning with no instance, or stopping with its instance confirmed
    gone) to pending on the best comparable offer the provider confirms. False when none is left
    or the rental was moved by someone else (stopped meanwhile). Outside any transaction."""
    from costs.pricing import offer_price_at

    if attempts(rental) >= settings.SHOPPER_FAILOVER_TRIES:
        return False
    for offer in failover_candidates(rental)[:RECHECKS]:
        try:
            provider = registry.get_provider(offer.provider)
            offer = offer_recheck(offer, provider)
        except (RentalError, registry.ProviderDisabled) as exc:
            log.info("failover of %s: offer %s skipped: %s", rental.pk, offer.pk, exc)
            continue
        price = offer_price_at(offer, rental.disk_gb)
        if rental.max_price_per_hour is not None and price > rental.max_price_per_hour:
            continue
        try:
            return _switch(rental, offer, price, reason, detail, provision_failed=provision_failed)
        except RentalError as exc:  # the budget or the provider account cannot pay for it
            rental_event(
                rental, EventKind.WARNING,
                f"Failover: {offer.provider} offer {offer.pk} at ${price}/h refused: {exc.message}"[:500],
                data={"reason": reason, "offer": _offer_data(offer, price)},
            )  # fmt: skip
    return False


def _offer_data(offer: Offer, price: Decimal) -> dict:
    return {
        "id": offer.pk, "provider": offer.provider, "provider_offer_id": offer.provider_offer_id,
        "gpu_type": offer.gpu_type, "location": offer.location, "price_per_hour": str(price),
    }  # fmt: skip


def _switch(
    rental: Rental, offer: Offer, price: Decimal, reason: str, detail: str, *, provision_failed: bool
) -> bool:
    """The move itself, in one transaction under the rentals lock: the budget takes the new
    price, then the rental's offer fields change and it goes back to pending (compare-and-swap:
    from stopping only while the failover is still wanted)."""
    old_status = rental.status
    attempt = attempts(rental) + 1
    from_offer = {
        "id": rental.offer_id, "provider": rental.provider, "provider_offer_id": rental.provider_offer_id,
        "price_per_hour": str(rental.price_per_hour), "instance": rental.provider_instance_id,
    }  # fmt: skip
    with transaction.atomic():
        _lock_rentals()
        _budget_follows(rental, offer, price)
        data = {DATA_KEY: True, "attempt": attempt, "offer": _offer_data(offer, price), "reason": reason}
        data["from_offer"] = from_offer
        if provision_failed:  # counts against the failed offer (sessions/provisioning.py)
            data.update({"provision_failed": True, "failed_offer_id": rental.offer_id})
        moved = rental_transition(
            rental, S.PENDING,
            reason=(
                f"Failover {attempt}/{settings.SHOPPER_FAILOVER_TRIES}: {REASONS[reason]} ({detail}); "
                f"renting {offer.provider} offer {offer.pk} ({offer.gpu_count}× {offer.gpu_type}, "
                f"{offer.location or 'location unknown'}) at ${price}/h instead"
            )[:1000],
            data=data,
            expect={"failover_pending": reason} if old_status == S.STOPPING else None,
            **_offer_fields(offer, price),
        )  # fmt: skip
        if moved and old_status == S.STOPPING:  # the teardown task ends here: provisioning starts over
            transaction.on_commit(lambda: enqueue("sessions.tasks.provision", rental.pk))
    return moved


def _offer_fields(offer: Offer, price: Decimal) -> dict:
    """The rental's fields for a fresh attempt on ``offer``: what the last instance left is cleared."""
    return dict(
        offer=offer, provider=offer.provider, provider_offer_id=offer.provider_offer_id,
        gpu_type=offer.gpu_type, gpu_count=offer.gpu_count, vram_gb=offer.vram_gb,
        location=offer.location, price_per_hour=price, shown_price_per_hour=price,
        provider_instance_id="", ssh_host="", ssh_port=None, ssh_user="", mapped_ports={},
        gpu_verified=None, agent_token_hash="", stop_requested_at=None, failover_pending="",
    )  # fmt: skip


def _budget_follows(rental: Rental, offer: Offer, price: Decimal) -> None:
    """Reserve the difference the new price makes over the rest of the reservation (the old
    price is already counted for this live rental); raises BudgetExceeded or the balance refusal."""
    from costs.pricing import estimate
    from costs.services import budget_reserve
    from sessions.balances import balance_check_rental

    now = timezone.now()
    left = max(timedelta(0), rental.reservation_ends_at - now)
    hours = (Decimal(left.total_seconds()) / 3600).quantize(Decimal("0.0001"))
    before = estimate(rental.price_per_hour, hours, rental.markup_percent)
    after = estimate(price, hours, rental.markup_percent)
    if after > before:
        budget_reserve(
            user=rental.consumer, estimated_cost=after - before, now=now, what=f"the failover to ${price}/h"
        )
    if offer.provider != rental.provider:
        balance_check_rental(provider=offer.provider, estimate=offer.price_per_hour * hours, now=now)


def failover_after_teardown(rental: Rental, detail: str) -> bool:
    """The failed instance is confirmed gone: move on to the next offer, or end the rental (its
    final status says there was no comparable offer). Returns True (the teardown is done)."""
    reason = rental.failover_pending
    if failover_move(rental, reason, detail):
        return True
    rental.refresh_from_db()
    if rental.status != S.STOPPING:
        return rental.status == S.DESTROYED
    if not rental.failover_pending:  # a stop cancelled the failover meanwhile
        return rental_transition(rental, S.DESTROYED, reason=detail, ended_at=timezone.now())
    none_record(rental, reason)
    ended = timezone.now()
    return rental_transition(
        rental, S.DESTROYED, reason=f"{detail}; {none_message(rental)}"[:1000],
        expect={"failover_pending": reason}, ended_at=ended, failover_pending="",
    ) or rental_transition(rental, S.DESTROYED, reason=detail, ended_at=ended)  # fmt: skip
