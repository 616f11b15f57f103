"""Offers you can trust (issue 15): every provisioning outcome is recorded, and turned into a
confidence per offer and into one small policy that hides offers the evidence says will fail.

Real menus are stale (FIELD_NOTES: TensorDock, Feb 6 2026: 22 of 31 creates failed; Vast asks gone
at create, hosts without public IPs, machines that die minutes in): what we rented ourselves is
the best guide to what will rent.

**Confidence** of an offer, in [0, 1]: the chance a rental of it becomes active.

- Evidence: ``ProvisionOutcome`` rows, each weighing ``0.5 ** (age / HALF_LIFE)`` (6 h: an
  outcome of 6 h ago counts half, of a day ago 1/16; rows older than ``HORIZON`` are not read).
  A success counts 1 toward ``successes``; a failure counts ``FAILURE_WEIGHT[kind]`` toward
  ``failures`` (1, but 0.5 for "other provider error", which may not be the offer's fault).
- Fallback: the first level with at least ``MIN_EVIDENCE`` decayed attempts is the basis:
  the offer itself, then its host/machine, then its location, then the provider's GPU model (all
  within one provider). With none, the basis is ``prior``.
- Formula (a Beta prior updated with the decayed counts):
  ``confidence = (PRIOR_STRENGTH * prior + successes) / (PRIOR_STRENGTH + successes + failures)``
  with the provider's ``PRIORS`` mean as ``prior`` and ``PRIOR_STRENGTH`` = 4 pseudo-attempts.

Priors (``PRIORS``): TensorDock 0.3 (FIELD_NOTES: 9 of 31 creates succeeded in the Feb 6 campaign;
the seed rated fresh TensorDock offers 30 %); Vast.ai 0.7 (its campaign failures were mostly stale
asks and the seed's own SSH bugs; our field-faults bench: 47 of 60 active); RunPod and Lambda 0.5
(no field figures: RUNPOD_LAMBDA.md records none; neutral). Anything else: 0.5.

Labels: ``new`` (no evidence at any level), ``usually works`` (>= 0.7), ``often fails`` (< 0.4),
else ``mixed``. **Best bet** sort: ``price_per_hour / max(confidence, BEST_BET_FLOOR)``, what an
hour costs per chance of the rental working (cheap but flaky sinks; 0.05 floor).

**Hiding policy** (replaces "3 failures in 30 min hide an offer"), each hide lasts ``HIDE_FOR``
(30 min) from the failure:

- strong evidence hides at once: no public IP, no working GPU/driver, CUDA lower than advertised
  are about the machine, so every available offer on that host is hidden (the offer alone when
  the provider names no host); "offer gone" hides the offer (a refresh may list it again from a
  stale cache: FIELD_NOTES TD-STALE-NONODES, "never retry from a cache younger than the failure");
- weaker evidence (SSH never came up, died soon after start, other errors) hides the offer once
  it failed ``WEAK_FAILURES_TO_HIDE`` (2) times within ``HIDE_FOR``;
- a success clears the hiding of the offer and of every offer on its host.

The menu (``inventory/menu.py``) computes every offer's confidence once per menu build
(``Evidence.load`` then ``Evidence.confidence``), never per request; ``offer_confidence`` answers
one offer (failover uses it as a floor).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property

from django.db.models import Q
from django.utils import timezone

from inventory.models import Offer, OutcomeKind, ProvisionOutcome

log = logging.getLogger(__name__)

K = OutcomeKind
HALF_LIFE = timedelta(hours=6)
HORIZON = timedelta(days=3)  # 12 half-lives: older outcomes weigh under 1/4096
PRIOR_STRENGTH = 4.0
PRIORS = {"tensordock": 0.3, "vastai": 0.7, "runpod": 0.5, "lambda": 0.5}
DEFAULT_PRIOR = 0.5
MIN_EVIDENCE = 0.5
FAILURE_WEIGHT = {kind: 1.0 for kind in K if kind != K.SUCCESS} | {K.OTHER: 0.5}
USUALLY_WORKS = Decimal("0.7")
OFTEN_FAILS = Decimal("0.4")
BEST_BET_FLOOR = Decimal("0.05")
# A rental whose instance died this soon after it became active counts against its offer.
DIED_EARLY_WINDOW = timedelta(minutes=30)

HIDE_FOR = timedelta(minutes=30)
HIDE_HOST_AT_ONCE = frozenset({K.NO_IP, K.NO_GPU, K.CUDA_LOW})
HIDE_OFFER_AT_ONCE = frozenset({K.OFFER_GONE})
WEAK_FAILURES_TO_HIDE = 2

EVIDENCE_FIELDS = ("provider", "provider_offer_id", "host", "location", "gpu_type", "kind", "at")
BASES = ("offer", "host", "location", "gpu", "prior")
THOUSANDTH = Decimal("0.001")
TENTH = Decimal("0.1")


@dataclass(frozen=True)
class Confidence:
    """One offer's confidence, the level it rests on and the decayed counts behind it."""

    value: Decimal  # 0.000 to 1.000
    basis: str  # one of BASES
    successes: Decimal  # decayed, one decimal
    failures: Decimal

    @property
    def label(self) -> str:
        return confidence_label(self.value, self.basis)

    @cached_property
    def fields(self) -> tuple:
        """The values of ``serializers.CONFIDENCE_FIELDS``, in order (built once per level)."""
        return (self.value, self.label, self.basis, self.successes, self.failures)


def confidence_label(value: Decimal, basis: str) -> str:
    if basis == "prior":
        return "new"
    if value >= USUALLY_WORKS:
        return "usually works"
    if value < OFTEN_FAILS:
        return "often fails"
    return "mixed"


def best_bet_price(price_per_hour: Decimal, confidence: Decimal) -> Decimal:
    """The best-bet sort key: the price per hour divided by the chance the rental works."""
    return (Decimal(price_per_hour) / max(Decimal(confidence), BEST_BET_FLOOR)).quantize(Decimal("0.0001"))


def _weight(age: timedelta) -> float:
    return 0.5 ** (max(age.total_seconds(), 0.0) / HALF_LIFE.total_seconds())


class Evidence:
    """Decayed success/failure counts per level, read once (one query) at ``now``."""

    def __init__(self, rows, now: datetime) -> None:
        self.now = now
        self.counts: dict[tuple, list[float]] = {}
        self._cache: dict[tuple, Confidence] = {}  # per level key: thousands of offers share one
        for provider, offer_id, host, location, gpu, kind, at in rows:
            w = _weight(now - at)
            success = kind == K.SUCCESS
            add = w if success else w * FAILURE_WEIGHT.get(kind, 1.0)
            for key in _keys(provider, offer_id, host, location, gpu):
                pair = self.counts.setdefault(key, [0.0, 0.0])
                pair[0 if success else 1] += add

    @classmethod
    def load(cls, now: datetime | None = None) -> Evidence:
        now = now or timezone.now()
        rows = ProvisionOutcome.objects.filter(at__gte=now - HORIZON, at__lte=now)
        return cls(rows.values_list(*EVIDENCE_FIELDS).iterator(chunk_size=2000), now)

    def confidence(self, provider: str, offer_id: str, host: str, location: str, gpu: str) -> Confidence:
        """The offer's confidence at the first level with evidence (offer, host, location, GPU
        model), else the provider's prior. A few dict lookups: the menu asks it for every offer."""
        counts = self.counts
        for key in (
            ("offer", provider, offer_id),
            ("host", provider, host),
            ("location", provider, location),
            ("gpu", provider, gpu),
        ):
            found = counts.get(key)
            if found is not None and found[0] + found[1] >= MIN_EVIDENCE:
                break
        else:
            key, found = ("prior", provider, ""), [0.0, 0.0]
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = _confidence(provider, key[0], found)
        return cached


def _keys(provider: str, offer_id: str, host: str, location: str, gpu: str) -> list[tuple]:
    keys = [("offer", provider, offer_id)]
    keys += [(level, provider, v) for level, v in (("host", host), ("location", location), ("gpu", gpu)) if v]
    return keys


def _confidence(provider: str, basis: str, counts: list[float]) -> Confidence:
    successes, failures = counts
    prior = PRIORS.get(provider, DEFAULT_PRIOR)
    value = (PRIOR_STRENGTH * prior + successes) / (PRIOR_STRENGTH + successes + failures)
    return Confidence(
        value=Decimal(repr(value)).quantize(THOUSANDTH, ROUND_HALF_UP),
        basis=basis,
        successes=Decimal(repr(successes)).quantize(TENTH, ROUND_HALF_UP),
        failures=Decimal(repr(failures)).quantize(TENTH, ROUND_HALF_UP),
    )


def offer_confidence(offer: Offer, now: datetime | None = None) -> float:
    """One offer's confidence in [0, 1] now (failover's floor). Reads the outcome table."""
    return float(offer_confidence_detail(offer, now).value)


def offer_confidence_detail(offer: Offer, now: datetime | None = None) -> Confidence:
    now = now or timezone.now()
    q = Q(provider_offer_id=offer.provider_offer_id) | Q(gpu_type=offer.gpu_type)
    if offer.host:
        q |= Q(host=offer.host)
    if offer.location:
        q |= Q(location=offer.location)
    rows = ProvisionOutcome.objects.filter(q, provider=offer.provider, at__gte=now - HORIZON, at__lte=now)
    evidence = Evidence(rows.values_list(*EVIDENCE_FIELDS), now)
    return evidence.confidence(
        offer.provider, offer.provider_offer_id, offer.host, offer.location, offer.gpu_type
    )


def confidence_map(offers, now: datetime | None = None) -> dict[int, Confidence]:
    """Confidence of each offer of ``offers`` (model instances) by pk, from one read."""
    evidence = Evidence.load(now)
    return {
        o.pk: evidence.confidence(o.provider, o.provider_offer_id, o.host, o.location, o.gpu_type)
        for o in offers
    }


# --------------------------------------------------------------------------------------------
# Recording outcomes, and the hiding policy
# --------------------------------------------------------------------------------------------


def outcome_record(rental, kind: str, detail: str = "") -> ProvisionOutcome | None:
    """Record how provisioning ``rental``'s offer ended, then apply the hiding policy.

    One row per (rental, offer): the first kind recorded stands (call sites name the specific
    reason before the generic failure path records ``other``), except that ``died_early`` replaces
    a success when the instance died within ``DIED_EARLY_WINDOW`` of becoming active (a later
    death is not the offer's fault and is ignored). Never raises: provisioning must go on.
    """
    try:
        return _outcome_record(rental, OutcomeKind(kind), detail)
    except Exception:
        log.exception("recording the outcome %s of rental %s failed", kind, getattr(rental, "pk", None))
        return None


def _outcome_record(rental, kind: OutcomeKind, detail: str) -> ProvisionOutcome | None:
    now = timezone.now()
    existing = ProvisionOutcome.objects.filter(
        rental_id=rental.pk, provider_offer_id=rental.provider_offer_id
    ).first()
    if kind == K.DIED_EARLY and rental.active_since is not None:
        if now - rental.active_since > DIED_EARLY_WINDOW:
            return None
        if existing is not None and existing.kind == K.SUCCESS:
            ProvisionOutcome.objects.filter(pk=existing.pk).update(kind=kind, at=now, detail=detail[:300])
            existing.kind, existing.at, existing.detail = kind, now, detail[:300]
            offer_hide(existing)
            return existing
    if existing is not None:
        return existing
    offer = Offer.objects.filter(pk=rental.offer_id).first() if rental.offer_id else None
    outcome = ProvisionOutcome.objects.create(
        at=now,
        rental_id=rental.pk,
        offer=offer,
        provider=rental.provider,
        provider_offer_id=rental.provider_offer_id,
        host=offer.host if offer else "",
        location=rental.location or (offer.location if offer else ""),
        gpu_type=rental.gpu_type,
        kind=kind,
        detail=detail[:300],
    )
    offer_hide(outcome)
    return outcome


def offer_hide(outcome: ProvisionOutcome) -> int:
    """The hiding policy (module docstring) for one new outcome. Returns offers changed."""
    now = outcome.at
    same_offer = Q(provider=outcome.provider, provider_offer_id=outcome.provider_offer_id)
    same_host = Q(provider=outcome.provider, host=outcome.host) if outcome.host else same_offer
    if outcome.kind == K.SUCCESS:
        return Offer.objects.filter(same_offer | same_host, hidden_until__gt=now).update(hidden_until=None)
    if outcome.kind in HIDE_HOST_AT_ONCE:
        target = same_host
    elif outcome.kind in HIDE_OFFER_AT_ONCE:
        target = same_offer
    else:
        recent = ProvisionOutcome.objects.filter(
            provider=outcome.provider, provider_offer_id=outcome.provider_offer_id, at__gt=now - HIDE_FOR
        ).exclude(kind=K.SUCCESS)
        if recent.count() < WEAK_FAILURES_TO_HIDE:
            return 0
        target = same_offer
    until = now + HIDE_FOR
    # Never shortens a longer hide (an admin may have set one by hand).
    return (
        Offer.objects.filter(target)
        .filter(Q(hidden_until__isnull=True) | Q(hidden_until__lt=until))
        .update(hidden_until=until)
    )


# --------------------------------------------------------------------------------------------
# Classifying what the provisioning code saw (sessions/services.py call sites)
# --------------------------------------------------------------------------------------------


def create_error_kind(exc) -> str:
    """A create error's outcome: no public IP (TD-NOPUBLICIP), offer gone (VA-NOSUCHASK,
    TD-STALE-NONODES, out of stock: ``OfferUnavailable``), else other."""
    from inventory.providers.base import OfferUnavailable

    message = str(getattr(exc, "message", exc)).lower()
    if "public ip" in message:
        return K.NO_IP
    if isinstance(exc, OfferUnavailable):
        return K.OFFER_GONE
    return K.OTHER


def start_failure_kind(message: str) -> str:
    """An instance that failed before running: a container that never got its GPU (VA-GPU-UNUSABLE
    "OCI runtime create failed") is no GPU; anything else stopped or died right after start."""
    lowered = message.lower()
    return K.NO_GPU if "oci runtime" in lowered or "nvidia" in lowered else K.DIED_EARLY


def gpu_mismatch_kind(mismatch: str) -> str:
    """``sessions.ssh.gpu_mismatch``'s reason: an older CUDA than the offer said (VA-CUDA-LIE), or
    not the GPUs that were sold."""
    return K.CUDA_LOW if "older than the cuda" in mismatch.lower() else K.NO_GPU
