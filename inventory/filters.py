"""The one filter class behind the offers page and ``GET /api/v1/inventory``."""

from __future__ import annotations

import functools

import django_filters as filters
from django import forms
from django.core.validators import RegexValidator
from django.db.models import Case, F, FloatField, IntegerField, OuterRef, Subquery, Value, When
from django.db.models.functions import Cast, Coalesce
from django.http import QueryDict

from inventory.models import Offer
from inventory.specs import cuda_key

SORTS = {
    "price": ("price_per_hour", "id"),
    "-price": ("-price_per_hour", "id"),
    "price_per_gpu": ("price_per_gpu_hour", "id"),
    "vram_gb": ("vram_gb", "price_per_hour", "id"),
    "-vram_gb": ("-vram_gb", "price_per_hour", "id"),
    "reliability": ("reliability", "price_per_hour", "id"),
    "-reliability": ("-reliability", "price_per_hour", "id"),
    # price / confidence (inventory/confidence.py best_bet_price): computed, not a column.
    "best_bet": ("best_bet", "price_per_hour", "id"),
    # $ per TFLOP-hour (inventory/specs.py); offers without a spec row last in both directions.
    "value": ("value", "price_per_hour", "id"),
    "-value": ("-value", "price_per_hour", "id"),
}
# Sort keys that are not Offer columns: computed from the GPU spec table (value_expression).
VALUE_SORT_KEY = "value"
SORT_LABELS = {
    "price": "Price (low to high)",
    "-price": "Price (high to low)",
    "price_per_gpu": "Price per GPU",
    "-vram_gb": "VRAM (most first)",
    "vram_gb": "VRAM (least first)",
    "-reliability": "Reliability (best first)",
    "reliability": "Reliability (worst first)",
    "best_bet": "Best bet (cheap & works)",  # price ÷ confidence; the longest label fits the box
    # Value = $ per TFLOP-hour: best = cheapest (the labels must fit the sort box).
    "value": "Value (best first)",
    "-value": "Value (worst first)",
}
CUDA_VERSION = RegexValidator(r"^[0-9]{1,3}(\.[0-9]{1,3})?$", "Enter a CUDA version such as 12.4.")


def value_expression():
    """$ per dense-BF16 TFLOP-hour of the whole offer, in the database: ``price_per_hour /
    (gpu_count * tflops)`` in double precision on every backend, so it is the float
    ``specs.value_sort_key`` computes (the in-memory menu sorts on that); NULL without a spec row."""
    from inventory.models import GpuSpec

    tflops = Subquery(
        GpuSpec.objects.filter(canonical_name=OuterRef("gpu_type"))
        .annotate(t=Coalesce("fp16_bf16_dense_tflops", "fp32_tflops"))
        .values("t")[:1]
    )
    price = Cast("price_per_hour", FloatField())
    return price / (Cast("gpu_count", FloatField()) * Cast(tflops, FloatField()))


def provider_choices():
    from inventory.providers import provider_statuses

    return [(p["name"], p["display_name"]) for p in provider_statuses()]


class OfferFilterSet(filters.FilterSet):
    gpu = filters.CharFilter(field_name="gpu_type", lookup_expr="icontains", max_length=64, label="GPU")
    min_gpus = filters.NumberFilter(
        field_name="gpu_count",
        lookup_expr="gte",
        min_value=1,
        max_value=64,
        decimal_places=0,
        label="Min GPUs",
    )
    min_vram_gb = filters.NumberFilter(
        field_name="vram_gb",
        lookup_expr="gte",
        min_value=0,
        max_value=4096,
        decimal_places=0,
        label="Min VRAM per GPU (GB)",
    )
    max_price = filters.NumberFilter(
        field_name="price_per_hour",
        lookup_expr="lte",
        min_value=0,
        max_digits=10,
        decimal_places=4,
        label="Max price ($/h)",
    )
    provider = filters.ChoiceFilter(choices=provider_choices, label="Provider", empty_label="All providers")
    location = filters.CharFilter(lookup_expr="icontains", max_length=64, label="Location")
    min_reliability = filters.NumberFilter(
        field_name="reliability", lookup_expr="gte", min_value=0, max_value=1, label="Min reliability (0–1)"
    )
    min_confidence = filters.NumberFilter(
        method="confidence_at_least", min_value=0, max_value=1, label="Min confidence (0–1)"
    )
    min_cuda = filters.CharFilter(
        method="cuda_at_least", max_length=7, validators=[CUDA_VERSION], label="Min CUDA"
    )
    sort = filters.ChoiceFilter(
        choices=list(SORT_LABELS.items()), method="sort_by", label="Sort", empty_label="Price (low to high)"
    )

    class Meta:
        model = Offer
        fields = []

    # Confidence is computed in Python (inventory/confidence.py), never a column: these two are
    # the reference the in-memory menu is held equal to (tests/inventory/test_menu.py); every
    # answer the product gives comes from the menu, which computes it once per build.
    def confidence_at_least(self, queryset, name, value):
        from inventory.confidence import confidence_map

        table = confidence_map(queryset)
        return queryset.filter(pk__in=[pk for pk, c in table.items() if c.value >= value])

    def sort_by(self, queryset, name, value):
        if value == "best_bet":
            from inventory.confidence import best_bet_price, confidence_map

            table = confidence_map(queryset)
            if not table:
                return queryset.order_by(*SORTS["price"])
            prices = dict(queryset.values_list("pk", "price_per_hour"))
            key = Case(
                *[
                    When(pk=pk, then=Value(int(best_bet_price(prices[pk], c.value) * 10_000)))
                    for pk, c in table.items()
                ],
                default=Value(0),
                output_field=IntegerField(),
            )
            return queryset.order_by(key, "price_per_hour", "id")
        keys = SORTS[value]
        if VALUE_SORT_KEY not in (k.lstrip("-") for k in keys):
            return queryset.order_by(*keys)
        ordering = [
            (F(k.lstrip("-")).desc(nulls_last=True) if k.startswith("-") else F(k).asc(nulls_last=True))
            if k.lstrip("-") == VALUE_SORT_KEY
            else k
            for k in keys
        ]
        return queryset.annotate(**{VALUE_SORT_KEY: value_expression()}).order_by(*ordering)

    def cuda_at_least(self, queryset, name, value):
        """CUDA versions compare as versions ("12.10" > "12.9"), not as text: the few distinct
        versions are compared here (``specs.cuda_key``; empty or odd ones never pass)."""
        wanted = cuda_key(value)
        versions = queryset.order_by().values_list("cuda_version", flat=True).distinct()
        return queryset.filter(cuda_version__in=[v for v in versions if (cuda_key(v) or -1) >= wanted])

    @property
    def qs(self):
        qs = super().qs
        if not self.form.cleaned_data.get("sort"):
            qs = qs.order_by(*SORTS["price"])
        return qs


class PageSizeForm(forms.Form):
    page = forms.IntegerField(min_value=1, required=False)
    page_size = forms.IntegerField(min_value=1, max_value=500, required=False)


@functools.cache
def _filter_form_class() -> type[forms.Form]:
    return OfferFilterSet(queryset=Offer.objects.none()).get_form_class()


def filter_form(data: QueryDict) -> forms.Form:
    """The bound form ``OfferFilterSet(data).form`` is, without building the filter set.

    The filter set deep-copies its filters and builds its form class anew per instance (~0.6 ms,
    half the cost of a menu answer). The class depends only on the declared filters, so it is
    built once; the form's own fields are still copied per form, and the provider choices are
    still read at validation. Same fields, same cleaned data, same errors.
    """
    return _filter_form_class()(data or QueryDict())
