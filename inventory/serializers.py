from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inventory.measured import machine_key, measured_index
from inventory.models import Offer
from inventory.specs import VALUE_FIELDS, spec_table, value_figures

OFFER_FIELDS = (
    "id",
    "provider",
    "provider_offer_id",
    "gpu_type",
    "gpu_count",
    "vram_gb",
    "price_per_hour",
    "price_per_gpu_hour",
    "location",
    "reliability",
    "cpu_cores",
    "ram_gb",
    "disk_gb",
    "cuda_version",
    "driver_version",
    "available",
    "fetched_at",
    # What renters compare on (issue 18); null where the provider does not say.
    "max_disk_gb",
    "inet_down_mbps",
    "inet_up_mbps",
    "verified",
    "datacenter",
    "max_duration_hours",
)
_PRICE, _COUNT, _GPU = (OFFER_FIELDS.index(n) for n in ("price_per_hour", "gpu_count", "gpu_type"))


def _value_field(help_text: str) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=16, decimal_places=6, read_only=True, allow_null=True, help_text=help_text
    )


class MeasuredSerializer(serializers.Serializer):
    """What a node agent measured on this offer's machine (inventory/measured.py), per GPU."""

    tflops = serializers.DecimalField(max_digits=7, decimal_places=1, help_text="Dense matmul TFLOPS")
    gbps = serializers.DecimalField(max_digits=8, decimal_places=1, help_text="Memory bandwidth, GB/s")
    dtype = serializers.ChoiceField(choices=["bf16", "fp32"])
    measured_at = serializers.DateTimeField(help_text="The latest run")
    runs = serializers.IntegerField(help_text="Rentals of this machine that reported")


# Computed per offer when the menu is built (inventory/confidence.py), never stored: the
# menu's tuples are OFFER_FIELDS (the database columns) followed by these.
CONFIDENCE_FIELDS = (
    "confidence",
    "confidence_label",
    "confidence_basis",
    "confidence_successes",
    "confidence_failures",
)
MENU_FIELDS = OFFER_FIELDS + CONFIDENCE_FIELDS
# A row of answers: the menu's columns above, then the value figures from the GPU spec table
# (inventory/specs.py; the menu computes them for every row when it is built, Menu.value_strings).
ROW_FIELDS = (*MENU_FIELDS, *VALUE_FIELDS)
_KEYS = tuple(OFFER_FIELDS.index(n) for n in ("provider", "provider_offer_id", "location", "gpu_type"))


class OfferSerializer(serializers.ModelSerializer):
    """Documents the offer shape; lists are rendered by ``offer_rows`` for speed (same output)."""

    id = serializers.CharField(read_only=True)
    measured = serializers.SerializerMethodField()
    confidence = serializers.SerializerMethodField(
        help_text="0 to 1: the chance a rental of this offer becomes active, from our own recent rentals"
    )
    confidence_label = serializers.SerializerMethodField(
        help_text='"usually works", "mixed", "often fails", or "new" (no history yet)'
    )
    confidence_basis = serializers.SerializerMethodField(
        help_text="The history it rests on: offer, host, location, gpu (the provider's GPU model) or prior"
    )
    confidence_successes = serializers.SerializerMethodField(
        help_text="Rentals that became active at that basis, decayed with age (half-life 6 h)"
    )
    confidence_failures = serializers.SerializerMethodField(
        help_text="Rentals that failed at that basis, decayed with age (half-life 6 h)"
    )
    usd_per_tflop_hour = _value_field(
        "$ per dense BF16 TFLOP-hour of the whole offer (FP32 where the GPU has no BF16); "
        "null when the GPU is not in the spec table"
    )
    usd_per_vram_gb_hour = _value_field("$ per GB of VRAM-hour; null when the GPU is not in the spec table")
    usd_per_tbps_hour = _value_field(
        "$ per TB/s of memory bandwidth-hour; null when the GPU is not in the spec table"
    )

    class Meta:
        model = Offer
        fields = (*ROW_FIELDS, "measured")
        extra_kwargs = {
            "reliability": {"help_text": "0 to 1 (the page shows percent); null if the provider has none"},
            "cuda_version": {"help_text": "The highest CUDA version the host's driver supports, e.g. '12.8'"},
            "max_disk_gb": {"help_text": "The largest disk (GB) a rental of this offer can have"},
            "inet_down_mbps": {"help_text": "Measured download speed (Mbps); null if the provider has none"},
            "inet_up_mbps": {"help_text": "Measured upload speed (Mbps); null if the provider has none"},
            "verified": {"help_text": "The provider verified this host; null if the provider does not say"},
            "datacenter": {"help_text": "Hosted in a datacenter; null if the provider does not say"},
            "max_duration_hours": {"help_text": "The longest rental allowed (hours); null: none given"},
        }

    def _confidence(self, obj):
        from inventory.confidence import Evidence

        if getattr(self, "_evidence", None) is None:  # once per serialization (the child of many=True)
            self._evidence = Evidence.load()
        return self._evidence.confidence(
            obj.provider, obj.provider_offer_id, obj.host, obj.location, obj.gpu_type
        )

    @extend_schema_field(OpenApiTypes.FLOAT)
    def get_confidence(self, obj) -> float:
        return float(self._confidence(obj).value)

    @extend_schema_field(OpenApiTypes.STR)
    def get_confidence_label(self, obj) -> str:
        return self._confidence(obj).label

    @extend_schema_field(OpenApiTypes.STR)
    def get_confidence_basis(self, obj) -> str:
        return self._confidence(obj).basis

    @extend_schema_field(OpenApiTypes.FLOAT)
    def get_confidence_successes(self, obj) -> float:
        return float(self._confidence(obj).successes)

    @extend_schema_field(OpenApiTypes.FLOAT)
    def get_confidence_failures(self, obj) -> float:
        return float(self._confidence(obj).failures)

    @extend_schema_field(MeasuredSerializer(allow_null=True))
    def get_measured(self, offer: Offer) -> dict | None:
        # One query per list (the context is shared by a list's rows), not one per offer.
        index = self.context.get("measured_index")
        if index is None:
            index = self.context["measured_index"] = measured_index()
        machine = machine_key(offer.provider, offer.provider_offer_id)
        return index.get((offer.provider, machine, offer.gpu_type))


def with_confidence(rows, evidence=None):
    """Rows of ``OFFER_FIELDS`` + ``host`` as ``MENU_FIELDS`` tuples: each offer's confidence
    (inventory/confidence.py) from one read of the outcomes, appended."""
    from inventory.confidence import Evidence

    evidence = evidence or Evidence.load()
    confidence = evidence.confidence
    provider, poid, location, gpu = _KEYS
    for row in rows:
        c = confidence(row[provider], row[poid], row[-1], row[location], row[gpu])
        yield row[:-1] + c.fields


def with_value(row: tuple, specs: dict) -> tuple:
    """A ``MENU_FIELDS`` tuple extended to ``ROW_FIELDS`` with its value figures."""
    return (*row, *value_figures(row[_PRICE], row[_COUNT], specs.get(row[_GPU])))


def offer_tuples(queryset) -> list[tuple]:
    """``ROW_FIELDS`` tuples of ``queryset`` (two queries for the offers and their spec rows, one
    for the confidence evidence)."""
    rows = list(with_confidence(queryset.values_list(*OFFER_FIELDS, "host")))
    specs = spec_table(names={r[_GPU] for r in rows}) if rows else {}
    return [with_value(r, specs) for r in rows]


def offer_rows(tuples) -> list[dict]:
    """The OfferSerializer output, built from ``offer_tuples``: a DRF serializer costs ~3 ms per
    page of 50 offers, which alone would cap the inventory endpoint near 300 requests/s. Value
    figures come as Decimals (``with_value``) or as the menu's strings (``Menu.value_strings``)."""
    rows = []
    for r in tuples:
        (pk, provider, poid, gpu, count, vram, price, ppg, loc, rel, cpu, ram, disk, cuda, drv, avail, at) = (
            r[:17]
        )
        (max_disk, inet_down, inet_up, verified, datacenter, max_hours) = r[17:23]
        conf, label, basis, successes, failures = r[23:28]
        per_tflop, per_vram, per_tbps = r[28:31]
        rows.append(
            {
                "id": str(pk),
                "provider": provider,
                "provider_offer_id": poid,
                "gpu_type": gpu,
                "gpu_count": count,
                "vram_gb": vram,
                "price_per_hour": f"{price:.4f}",
                "price_per_gpu_hour": f"{ppg:.4f}",
                "location": loc,
                "reliability": None if rel is None else f"{rel:.4f}",
                "cpu_cores": cpu,
                "ram_gb": ram,
                "disk_gb": disk,
                "cuda_version": cuda,
                "driver_version": drv,
                "available": avail,
                "fetched_at": at.isoformat().replace("+00:00", "Z"),
                "max_disk_gb": max_disk,
                "inet_down_mbps": inet_down,
                "inet_up_mbps": inet_up,
                "verified": verified,
                "datacenter": datacenter,
                "max_duration_hours": max_hours,
                "confidence": float(conf),
                "confidence_label": label,
                "confidence_basis": basis,
                "confidence_successes": float(successes),
                "confidence_failures": float(failures),
                "usd_per_tflop_hour": None if per_tflop is None else str(per_tflop),
                "usd_per_vram_gb_hour": None if per_vram is None else str(per_vram),
                "usd_per_tbps_hour": None if per_tbps is None else str(per_tbps),
            }
        )
    return rows


class GpuProviderPriceSerializer(serializers.Serializer):
    provider = serializers.CharField()
    cheapest_price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4)
    offers = serializers.IntegerField()


class GpuModelSerializer(serializers.Serializer):
    """One GPU model of the compare view (``inventory/compare.py``); documents ``GET /api/v1/gpus``."""

    gpu_type = serializers.CharField(help_text="Canonical GPU name; `gpu=` on the menu filters to it")
    vram_gb = serializers.IntegerField(help_text="Per GPU")
    offers = serializers.IntegerField(help_text="Offers available now")
    cheapest_price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4)
    providers = GpuProviderPriceSerializer(many=True, help_text="Cheapest price per GPU-hour per provider")
    tflops = serializers.DecimalField(
        max_digits=8,
        decimal_places=2,
        allow_null=True,
        help_text="Dense BF16 TFLOPS per GPU (else FP32)",
    )
    usd_per_tflop_hour = _value_field("Of the model's best-value offer; null when not in the spec table")
    usd_per_vram_gb_hour = _value_field("Of the model's best-value offer; null when not in the spec table")
    usd_per_tbps_hour = _value_field("Of the model's best-value offer; null when not in the spec table")
    best_confidence = serializers.DecimalField(
        max_digits=4,
        decimal_places=3,
        help_text="0 to 1: the highest confidence of the model's offers (field `confidence` of the menu)",
    )


class GpuListSerializer(serializers.Serializer):
    results = GpuModelSerializer(many=True)
