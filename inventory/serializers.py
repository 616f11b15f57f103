from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inventory.measured import machine_key, measured_index
from inventory.models import Offer

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

    class Meta:
        model = Offer
        fields = (*MENU_FIELDS, "measured")

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


def offer_tuples(queryset) -> list[tuple]:
    return list(with_confidence(queryset.values_list(*OFFER_FIELDS, "host")))


def offer_rows(tuples) -> list[dict]:
    """The OfferSerializer output, built from ``offer_tuples``: a DRF serializer costs ~3 ms per
    page of 50 offers, which alone would cap the inventory endpoint near 300 requests/s."""
    rows = []
    for r in tuples:
        (pk, provider, poid, gpu, count, vram, price, ppg, loc, rel, cpu, ram, disk, cuda, drv, avail, at) = (
            r[:17]
        )
        conf, label, basis, successes, failures = r[17:22]
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
                "confidence": float(conf),
                "confidence_label": label,
                "confidence_basis": basis,
                "confidence_successes": float(successes),
                "confidence_failures": float(failures),
            }
        )
    return rows
