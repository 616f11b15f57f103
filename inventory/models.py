"""Offers (the live menu) and what we know about each provider's feed."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone
from django.utils.functional import cached_property


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
    # The machine behind the offer where the provider names one (Vast ``machine_id``, TensorDock
    # location id): confidence falls back to it when the offer itself has no history.
    host = models.CharField(max_length=128, blank=True, default="")
    reliability = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    cpu_cores = models.PositiveIntegerField(null=True, blank=True)
    ram_gb = models.PositiveIntegerField(null=True, blank=True)
    disk_gb = models.PositiveIntegerField(null=True, blank=True)
    cuda_version = models.CharField(max_length=16, blank=True)
    driver_version = models.CharField(max_length=32, blank=True)
    available = models.BooleanField(default=True)
    fetched_at = models.DateTimeField()
    first_seen_at = models.DateTimeField(default=timezone.now)
    # Set by the hiding policy after failed provisions (inventory/confidence.py offer_hide).
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

    @property
    def measured(self) -> dict | None:
        """What a node agent measured on this offer's machine (inventory/measured.py), or None."""
        from inventory.measured import measured_for  # it imports this module

        return measured_for(self.provider, self.provider_offer_id, self.gpu_type)

    # Confidence (inventory/confidence.py) of a model instance, read from the outcomes on first
    # use; the menu's rows (inventory.menu.OfferRow) carry the same names, computed per build.
    @cached_property
    def confidence_detail(self):
        from inventory.confidence import offer_confidence_detail

        return offer_confidence_detail(self)

    @property
    def confidence(self) -> Decimal:
        return self.confidence_detail.value

    @property
    def confidence_label(self) -> str:
        return self.confidence_detail.label

    @property
    def confidence_basis(self) -> str:
        return self.confidence_detail.basis

    @property
    def confidence_successes(self) -> Decimal:
        return self.confidence_detail.successes

    @property
    def confidence_failures(self) -> Decimal:
        return self.confidence_detail.failures

    @cached_property
    def value_figures(self) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
        """(usd_per_tflop_hour, usd_per_vram_gb_hour, usd_per_tbps_hour): one query for the spec
        row. The menu computes the same once per row when it is built (``serializers.with_value``)."""
        from inventory.specs import figures_of, value_figures

        spec = GpuSpec.objects.filter(canonical_name=self.gpu_type).first()
        return value_figures(self.price_per_hour, self.gpu_count, figures_of(spec) if spec else None)

    @property
    def usd_per_tflop_hour(self) -> Decimal | None:
        return self.value_figures[0]

    @property
    def usd_per_vram_gb_hour(self) -> Decimal | None:
        return self.value_figures[1]

    @property
    def usd_per_tbps_hour(self) -> Decimal | None:
        return self.value_figures[2]

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


class BenchmarkDtype(models.TextChoices):
    BF16 = "bf16", "BF16"
    FP32 = "fp32", "FP32"


class MachineBenchmark(models.Model):
    """What one rental's node agent measured on its machine (issue 18, "measured value"): dense
    matmul TFLOPS and memory GB/s of one GPU, as ``shopper/agent.py`` reports them after the handoff.

    Kept per provider machine (``machine``: ``inventory.measured.machine_key`` of the offer), so
    every offer of that machine shows it, and outlives the offer and the rental. One row per
    rental (``rental_id`` is unique; a plain UUID, not a foreign key, so inventory does not
    depend on sessions).
    """

    provider = models.CharField(max_length=32)
    machine = models.CharField(max_length=128)
    provider_offer_id = models.CharField(max_length=128)
    gpu_type = models.CharField(max_length=64, help_text="Canonical, from the offer")
    gpu_count = models.PositiveSmallIntegerField()
    gpu_name = models.CharField(max_length=64, blank=True, help_text="As the machine reported it")
    dtype = models.CharField(max_length=8, choices=BenchmarkDtype.choices)
    tflops = models.DecimalField(max_digits=7, decimal_places=1, help_text="Dense, per GPU, in dtype")
    gbps = models.DecimalField(max_digits=8, decimal_places=1, help_text="Memory bandwidth, per GPU")
    measured_at = models.DateTimeField(default=timezone.now)
    rental_id = models.UUIDField(unique=True)

    class Meta:
        indexes = [models.Index(fields=["provider", "machine", "measured_at"], name="bench_machine")]

    def __str__(self) -> str:
        return f"{self.provider}:{self.machine} {self.tflops} TFLOPS {self.dtype}, {self.gbps} GB/s"


class OutcomeKind(models.TextChoices):
    """How one provisioning attempt of an offer ended (issue 15, FIELD_NOTES failure modes)."""

    SUCCESS = "success", "became active"
    OFFER_GONE = "offer_gone", "offer gone at create"  # VA-NOSUCHASK, TD-STALE-NONODES
    NO_IP = "no_ip", "no public IP on the host"  # TD-NOPUBLICIP
    NO_GPU = "no_gpu", "no working GPU or driver"  # TD-NODRIVER, VA-GPU-UNUSABLE, wrong GPU
    SSH_NEVER_UP = "ssh_never_up", "SSH never came up"  # VA-SSH, TD-PORTFWD, boot timeouts
    DIED_EARLY = "died_early", "died soon after start"  # TD-STOPS, VA-DIES
    CUDA_LOW = "cuda_low", "CUDA lower than advertised"  # VA-CUDA-LIE
    OTHER = "other", "other provider error"


class ProvisionOutcome(models.Model):
    """One provisioning attempt's result, kept to learn which offers can really be rented.

    Snapshotted (provider, offer, host, location, GPU model) so the history outlives the offer
    row; ``inventory.confidence`` turns recent rows into each offer's confidence and hides offers
    the evidence says will fail. At most one row per (rental, offer): a later, more telling kind
    (died soon after a success) replaces the earlier one.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    rental = models.ForeignKey("rentals.Rental", null=True, blank=True, on_delete=models.SET_NULL)
    offer = models.ForeignKey(Offer, null=True, blank=True, on_delete=models.SET_NULL)
    provider = models.CharField(max_length=32)
    provider_offer_id = models.CharField(max_length=128)
    host = models.CharField(max_length=128, blank=True, default="")
    location = models.CharField(max_length=128, blank=True, default="")
    gpu_type = models.CharField(max_length=64, blank=True, default="")
    kind = models.CharField(max_length=16, choices=OutcomeKind.choices)
    detail = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["provider", "provider_offer_id"], name="outcome_offer")]

    def __str__(self) -> str:
        return f"{self.provider}:{self.provider_offer_id} {self.kind} at {self.at:%Y-%m-%d %H:%M}"


class GpuSpec(models.Model):
    """Peak per-GPU specifications of one canonical GPU model (``inventory/data/gpu_specs.csv``).

    Data, not code: loaded by a data migration and reloaded with ``manage.py load_gpu_specs``.
    ``canonical_name`` joins it to ``Offer.gpu_type``. Figures are vendor peaks per GPU device
    (dense tensor rates), not measurements; ``inventory/specs.py`` turns them into value figures.
    """

    canonical_name = models.CharField(max_length=64, unique=True)
    vendor = models.CharField(max_length=32, blank=True)
    architecture = models.CharField(max_length=64, blank=True)
    vram_gb = models.PositiveIntegerField(help_text="Nominal memory per GPU as sold")
    memory_bandwidth_gbps = models.DecimalField(max_digits=8, decimal_places=1, help_text="GB/s")
    fp32_tflops = models.DecimalField(max_digits=8, decimal_places=2)
    fp16_bf16_dense_tflops = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Blank: no usable half precision",
    )
    fp8_dense_tflops = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    tdp_w = models.DecimalField(max_digits=7, decimal_places=1, null=True, blank=True)
    interconnect = models.CharField(max_length=200, blank=True)
    compute_capability = models.CharField(max_length=16, blank=True)
    source = models.TextField(blank=True)
    notes = models.TextField(blank=True)
    # Part of the menu version: a reload rebuilds every process's in-memory menu.
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["canonical_name"]

    def __str__(self) -> str:
        return self.canonical_name
