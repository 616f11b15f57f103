"""Offers (the live menu) and what we know about each provider's feed."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone


class OfferQuerySet(models.QuerySet):
    def visible(self, now=None) -> OfferQuerySet:
        """Offers a user may rent now: still offered and not suppressed after repeated failures."""
        now = now or timezone.now()
        return self.filter(available=True).exclude(hidden_until__gt=now)


class Offer(models.Model):
    """One rentable configuration, normalized across providers.

    ``price_per_hour`` is the whole machine including storage at the default disk size;
    ``price_per_gpu_hour`` is stored (not computed per query) because the menu sorts on it.
    Offers that vanish from a provider's answer become unavailable, never deleted: rentals and
    links keep pointing at them.
    """

    provider = models.CharField(max_length=32)
    provider_offer_id = models.CharField(max_length=128)
    gpu_type = models.CharField(max_length=64)
    gpu_count = models.PositiveSmallIntegerField()
    vram_gb = models.PositiveIntegerField(help_text="Per GPU")
    price_per_hour = models.DecimalField(max_digits=10, decimal_places=4)
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    location = models.CharField(max_length=128, blank=True)
    reliability = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    cpu_cores = models.PositiveIntegerField(null=True, blank=True)
    ram_gb = models.PositiveIntegerField(null=True, blank=True)
    disk_gb = models.PositiveIntegerField(null=True, blank=True)
    cuda_version = models.CharField(max_length=16, blank=True)
    driver_version = models.CharField(max_length=32, blank=True)
    available = models.BooleanField(default=True)
    fetched_at = models.DateTimeField()
    first_seen_at = models.DateTimeField(default=timezone.now)
    # Set by offer failure suppression (3 failed provisions in 30 min -> hidden 30 min).
    hidden_until = models.DateTimeField(null=True, blank=True)
    # Honest prices (issue 14): price_per_hour includes disk_gb_default GB of storage; each GB
    # more or less costs storage_price_per_gb_hour; traffic is per GB on top (Vast only).
    storage_price_per_gb_hour = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    disk_gb_default = models.PositiveIntegerField(null=True, blank=True)
    max_disk_gb = models.PositiveIntegerField(null=True, blank=True)
    inet_down_price_per_gb = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    inet_up_price_per_gb = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    # What renters compare on (issue 18), where the provider says it (Vast; None elsewhere):
    # measured network speed, Vast's host verification and datacenter hosting, and the longest
    # rental the host allows (Vast ``duration``: seconds until the host's ``end_date``).
    inet_down_mbps = models.PositiveIntegerField(null=True, blank=True)
    inet_up_mbps = models.PositiveIntegerField(null=True, blank=True)
    verified = models.BooleanField(null=True, blank=True)
    datacenter = models.BooleanField(null=True, blank=True)
    max_duration_hours = models.PositiveIntegerField(null=True, blank=True)

    objects = OfferQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "provider_offer_id"], name="offer_provider_id_unique")
        ]
        indexes = [
            # Used by the menu's default sort and the price filters.
            models.Index(fields=["available", "price_per_hour"], name="offer_avail_price"),
            models.Index(fields=["available", "price_per_gpu_hour"], name="offer_avail_ppgh"),
            models.Index(fields=["available", "vram_gb"], name="offer_avail_vram"),
            models.Index(fields=["available", "reliability"], name="offer_avail_rel"),
            models.Index(fields=["gpu_type"], name="offer_gpu_type"),
        ]
        ordering = ["price_per_hour", "id"]

    def __str__(self) -> str:
        return f"{self.gpu_count}× {self.gpu_type} @ {self.provider} ${self.price_per_hour}/h"

    @property
    def public_id(self) -> str:
        """The API's offer id: stable while the offer exists, opaque to scripts."""
        return str(self.pk)

    @staticmethod
    def per_gpu(price: Decimal, gpu_count: int) -> Decimal:
        return (price / max(gpu_count, 1)).quantize(Decimal("0.0001"))


class ProviderFeed(models.Model):
    """The state of one provider's offer feed: when it last answered, why it failed, and how long
    offers_refresh should wait before asking again (adaptive backoff while it rate-limits)."""

    provider = models.CharField(max_length=32, primary_key=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_fetch_at = models.DateTimeField(null=True, blank=True)
    offer_count = models.PositiveIntegerField(default=0)
    # Requests the last successful search took: Vast pages until an empty answer, so a capped
    # answer shows as more pages, never as fewer offers (FIELD_NOTES VA-LISTING).
    search_pages = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.provider


class ProviderRateLimit(models.Model):
    """One provider account's request pacing, shared by every process that calls it.

    Providers limit per account, not per process (FIELD_NOTES VA-RATELIMIT, X-RATE-TD): the web
    server, the worker and the safety loop must share one limiter, and a 429 seen by one must slow
    them all. ``inventory.providers.ratelimit`` keeps this row (or a Redis hash when REDIS_URL is
    set). Times are epoch seconds, not datetimes: they are compared with ``time.time()`` only.
    """

    key = models.CharField(max_length=160, primary_key=True)  # provider@url#hash(api key)
    next_at = models.FloatField(default=0.0)  # the earliest moment of the next call
    backoff = models.FloatField(default=0.0)  # extra seconds per call while 429s are coming
    hold_until = models.FloatField(default=0.0)  # nobody calls before this (after a 429)
    version = models.PositiveBigIntegerField(default=0)  # compare-and-swap, no row locks

    def __str__(self) -> str:
        return self.key
