from __future__ import annotations

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


class OfferSerializer(serializers.ModelSerializer):
    """Documents the offer shape; lists are rendered by ``offer_rows`` for speed (same output)."""

    id = serializers.CharField(read_only=True)
    measured = serializers.SerializerMethodField()

    class Meta:
        model = Offer
        fields = (*OFFER_FIELDS, "measured")

    @extend_schema_field(MeasuredSerializer(allow_null=True))
    def get_measured(self, offer: Offer) -> dict | None:
        # One query per list (the context is shared by a list's rows), not one per offer.
        index = self.context.get("measured_index")
        if index is None:
            index = self.context["measured_index"] = measured_index()
        machine = machine_key(offer.provider, offer.provider_offer_id)
        return index.get((offer.provider, machine, offer.gpu_type))


def offer_tuples(queryset):
    return queryset.values_list(*OFFER_FIELDS)


def offer_rows(tuples) -> list[dict]:
    """The OfferSerializer output, built from ``offer_tuples``: a DRF serializer costs ~3 ms per
    page of 50 offers, which alone would cap the inventory endpoint near 300 requests/s."""
    rows = []
    for r in tuples:
        (pk, provider, poid, gpu, count, vram, price, ppg, loc, rel, cpu, ram, disk, cuda, drv, avail, at) = r
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
            }
        )
    return rows
