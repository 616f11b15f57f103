from __future__ import annotations

from rest_framework import serializers

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
)
# A row of answers: the Offer columns above, then the value figures from the GPU spec table
# (inventory/specs.py; the menu computes them for every row when it is built).
ROW_FIELDS = (*OFFER_FIELDS, *VALUE_FIELDS)


def with_value(row: tuple, specs: dict) -> tuple:
    """An ``OFFER_FIELDS`` tuple extended to ``ROW_FIELDS`` with its value figures."""
    return (*row, *value_figures(row[_PRICE], row[_COUNT], specs.get(row[_GPU])))


_PRICE, _COUNT, _GPU = (OFFER_FIELDS.index(n) for n in ("price_per_hour", "gpu_count", "gpu_type"))


def _value_field(help_text: str) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=16, decimal_places=6, read_only=True, allow_null=True, help_text=help_text
    )


class OfferSerializer(serializers.ModelSerializer):
    """Documents the offer shape; lists are rendered by ``offer_rows`` for speed (same output)."""

    id = serializers.CharField(read_only=True)
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
        fields = ROW_FIELDS


def offer_tuples(queryset) -> list[tuple]:
    """``ROW_FIELDS`` tuples of ``queryset`` (two queries: the offers and their spec rows)."""
    rows = list(queryset.values_list(*OFFER_FIELDS))
    specs = spec_table(names={r[_GPU] for r in rows}) if rows else {}
    return [with_value(r, specs) for r in rows]


def offer_rows(tuples) -> list[dict]:
    """The OfferSerializer output, built from ``offer_tuples``: a DRF serializer costs ~3 ms per
    page of 50 offers, which alone would cap the inventory endpoint near 300 requests/s. Value
    figures come as Decimals (``with_value``) or as the menu's strings (``Menu.value_strings``)."""
    rows = []
    columns = len(OFFER_FIELDS)  # then the VALUE_FIELDS
    for r in tuples:
        (pk, provider, poid, gpu, count, vram, price, ppg, loc, rel, cpu, ram, disk, cuda, drv, avail, at) = (
            r[:columns]
        )
        per_tflop, per_vram, per_tbps = r[columns:]
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
        max_digits=5,
        decimal_places=4,
        allow_null=True,
        help_text="Best offer confidence, if offers have one",
    )


class GpuListSerializer(serializers.Serializer):
    results = GpuModelSerializer(many=True)
