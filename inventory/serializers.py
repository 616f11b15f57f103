from __future__ import annotations

from rest_framework import serializers

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
    # What renters compare on (issue 18); null where the provider does not say.
    "max_disk_gb",
    "inet_down_mbps",
    "inet_up_mbps",
    "verified",
    "datacenter",
    "max_duration_hours",
)


class OfferSerializer(serializers.ModelSerializer):
    """Documents the offer shape; lists are rendered by ``offer_rows`` for speed (same output)."""

    id = serializers.CharField(read_only=True)

    class Meta:
        model = Offer
        fields = OFFER_FIELDS
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


def offer_tuples(queryset):
    return queryset.values_list(*OFFER_FIELDS)


def offer_rows(tuples) -> list[dict]:
    """The OfferSerializer output, built from ``offer_tuples``: a DRF serializer costs ~3 ms per
    page of 50 offers, which alone would cap the inventory endpoint near 300 requests/s."""
    rows = []
    for r in tuples:
        (pk, provider, poid, gpu, count, vram, price, ppg, loc, rel, cpu, ram, disk, cuda, drv, avail, at) = (
            r[:17]
        )
        (max_disk, inet_down, inet_up, verified, datacenter, max_hours) = r[17:23]
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
            }
        )
    return rows
