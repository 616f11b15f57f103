"""The one filter class behind the offers page and ``GET /api/v1/inventory``."""

from __future__ import annotations

import functools

import django_filters as filters
from django import forms
from django.core.validators import ProhibitNullCharactersValidator, RegexValidator
from django.db.models import Case, F, FloatField, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Cast, Coalesce
from django.http import QueryDict

from inventory.models import Offer
from inventory.specs import version_key

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
    # The column headers of the page sort both ways (issue 18).
    "-price_per_gpu": ("-price_per_gpu_hour", "id"),
    "gpu_count": ("gpu_count", "price_per_hour", "id"),
    "-gpu_count": ("-gpu_count", "price_per_hour", "id"),
    "inet_down": ("inet_down_mbps", "price_per_hour", "id"),
    "-inet_down": ("-inet_down_mbps", "price_per_hour", "id"),
    "disk": ("max_disk_gb", "price_per_hour", "id"),
    "-disk": ("-max_disk_gb", "price_per_hour", "id"),
    "max_duration": ("max_duration_hours", "price_per_hour", "id"),
    "-max_duration": ("-max_duration_hours", "price_per_hour", "id"),
}
# Sort keys that are not Offer columns: computed from the GPU spec table (value_expression).
VALUE_SORT_KEY = "value"
# Columns where an offer whose provider does not say (NULL) sorts last both ways, on every
# database: "fastest network first" must not start with the unknowns. (Reliability keeps the
# backend's NULL order, as before.)
NULLS_LAST = frozenset({"inet_down_mbps", "max_disk_gb", "max_duration_hours"})
SORT_LABELS = {
    "price": "Price (low to high)",
    "-price": "Price (high to low)",
    "price_per_gpu": "Price per GPU",
    "-vram_gb": "VRAM (most first)",
    "vram_gb": "VRAM (least first)",
    "-reliability": "Reliability (best first)",
    "reliability": "Reliability (worst first)",
    "best_bet": "Best bet: cheap & works",  # price ÷ confidence; the labels must fit the sort box
    # Value = $ per TFLOP-hour: best = cheapest (the labels must fit the sort box).
    "value": "Value (best first)",
    "-value": "Value (worst first)",
    "-price_per_gpu": "Price/GPU (high to low)",
    "-gpu_count": "GPUs (most first)",
    "gpu_count": "GPUs (fewest first)",
    "-inet_down": "Download (fastest first)",
    "inet_down": "Download (slowest first)",
    "-disk": "Disk (most first)",
    "disk": "Disk (least first)",
    "-max_duration": "Max rental (longest)",
    "max_duration": "Max rental (shortest)",
}


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


def order_by_keys(keys: tuple[str, ...]) -> list:
    """``SORTS`` keys as ``order_by`` arguments, with NULLs last for the ``NULLS_LAST`` columns."""
    ordering = []
    for key in keys:
        name = key.lstrip("-")
        if name not in NULLS_LAST:
            ordering.append(key)
        elif key.startswith("-"):
            ordering.append(F(name).desc(nulls_last=True))
        else:
            ordering.append(F(name).asc(nulls_last=True))
    return ordering


VERSION = RegexValidator(r"^[0-9]{1,3}(\.[0-9]{1,3}){0,2}\Z", "Enter a version such as 12.4.")
MAX_GPU_TERMS = 20


class TermsWidget(forms.TextInput):
    """Reads every value of a repeatable query parameter (``gpu=A100&gpu=4090``)."""

    def value_from_datadict(self, data, files, name):
        return data.getlist(name) if hasattr(data, "getlist") else data.get(name)


class TermsField(forms.Field):
    """Names or parts of names, repeatable and/or comma-separated: a list of distinct terms."""

    widget = TermsWidget
    default_validators = [ProhibitNullCharactersValidator()]

    def to_python(self, value) -> list[str]:
        values = value if isinstance(value, list | tuple) else [value]
        terms: list[str] = []
        for v in values:
            for term in str(v or "").split(","):
                term = term.strip()
                if term and term not in terms:
                    terms.append(term)
        return terms

    def validate(self, value: list[str]) -> None:
        super().validate(value)
        if len(value) > MAX_GPU_TERMS:
            raise forms.ValidationError(f"At most {MAX_GPU_TERMS} names at once.")
        if any(len(term) > 64 for term in value):
            raise forms.ValidationError("Each name has at most 64 characters.")

    def run_validators(self, value: list[str]) -> None:
        for term in value:
            super().run_validators(term)


class TermsFilter(filters.Filter):
    field_class = TermsField


YES_NO = [("true", "Yes"), ("false", "No")]


def provider_choices():
    from inventory.providers import provider_statuses

    return [(p["name"], p["display_name"]) for p in provider_statuses()]


class OfferFilterSet(filters.FilterSet):
    gpu = TermsFilter(
        method="filter_gpu",
        label="GPU",
        help_text="Models or parts of names; several by repeating gpu or with commas (any of them)",
    )
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
        field_name="reliability",
        lookup_expr="gte",
        min_value=0,
        max_value=1,
        label="Min reliability (0–1)",
        help_text="0 to 1, e.g. 0.95 (the page takes it in percent: min_reliability_pct)",
    )
    # The page's form enters reliability as it shows it, in percent (issue 18).
    min_reliability_pct = filters.NumberFilter(
        method="filter_reliability_pct",
        min_value=0,
        max_value=100,
        max_digits=5,
        decimal_places=2,
        label="Min reliability (%)",
        help_text="Percent, 0 to 100, e.g. 95",
    )
    min_cuda = filters.CharFilter(
        method="filter_min_version",
        max_length=11,
        validators=[VERSION],
        label="Min CUDA",
        help_text="The highest CUDA the host supports is at least this, e.g. 12.4",
    )
    min_driver = filters.CharFilter(
        method="filter_min_version",
        max_length=11,
        validators=[VERSION],
        label="Min driver",
        help_text="NVIDIA driver version at least this, e.g. 550 or 550.54.15",
    )
    min_inet_down_mbps = filters.NumberFilter(
        field_name="inet_down_mbps",
        lookup_expr="gte",
        min_value=0,
        max_value=1_000_000,
        decimal_places=0,
        label="Min download (Mbps)",
    )
    min_inet_up_mbps = filters.NumberFilter(
        field_name="inet_up_mbps",
        lookup_expr="gte",
        min_value=0,
        max_value=1_000_000,
        decimal_places=0,
        label="Min upload (Mbps)",
    )
    min_disk_gb = filters.NumberFilter(
        field_name="max_disk_gb",
        lookup_expr="gte",
        min_value=0,
        max_value=1_000_000,
        decimal_places=0,
        label="Min disk (GB)",
        help_text="The disk a rental can have",
    )
    min_duration_hours = filters.NumberFilter(
        field_name="max_duration_hours",
        lookup_expr="gte",
        min_value=0,
        max_value=1_000_000,
        decimal_places=0,
        label="Rentable for (h)",
        help_text="The host allows a rental at least this long (no limit given: left out)",
    )
    verified = filters.ChoiceFilter(choices=YES_NO, method="filter_flag", label="Verified", empty_label="Any")
    datacenter = filters.ChoiceFilter(
        choices=YES_NO, method="filter_flag", label="Datacenter", empty_label="Any"
    )
    min_confidence = filters.NumberFilter(
        method="confidence_at_least", min_value=0, max_value=1, label="Min confidence (0–1)"
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
            return queryset.order_by(*order_by_keys(keys))
        ordering = [
            (F(k.lstrip("-")).desc(nulls_last=True) if k.startswith("-") else F(k).asc(nulls_last=True))
            if k.lstrip("-") == VALUE_SORT_KEY
            else k
            for k in keys
        ]
        return queryset.annotate(**{VALUE_SORT_KEY: value_expression()}).order_by(*ordering)

    def filter_gpu(self, queryset, name, terms):
        any_term = Q()
        for term in terms:
            any_term |= Q(gpu_type__icontains=term)
        return queryset.filter(any_term)

    def filter_reliability_pct(self, queryset, name, value):
        return queryset.filter(reliability__gte=value / 100)

    def filter_min_version(self, queryset, name, value):
        column = {"min_cuda": "cuda_version", "min_driver": "driver_version"}[name]
        wanted = version_key(value)
        names = Offer.objects.order_by().values_list(column, flat=True).distinct()
        newer = [n for n in names if (key := version_key(n)) is not None and key >= wanted]
        return queryset.filter(**{f"{column}__in": newer})

    def filter_flag(self, queryset, name, value):
        return queryset.filter(**{name: value == "true"})

    @property
    def qs(self):
        qs = super().qs
        if not self.form.cleaned_data.get("sort"):
            qs = qs.order_by(*SORTS["price"])
        return qs


class PageSizeForm(forms.Form):
    page = forms.IntegerField(min_value=1, required=False)
    page_size = forms.IntegerField(min_value=1, max_value=500, required=False)


class SharedFields(dict):
    """A form class's ``base_fields`` that every form of it shares instead of deep-copying: the
    filter form's 17 fields (choices included) cost ~1 ms per copy, per menu answer. Safe because
    nothing changes a field of these forms after the class is built (validation and rendering
    only read them)."""

    def __deepcopy__(self, memo) -> dict:
        return dict(self)


@functools.cache
def _filter_form_class() -> type[forms.Form]:
    form_class = OfferFilterSet(queryset=Offer.objects.none()).get_form_class()
    form_class.base_fields = SharedFields(form_class.base_fields)
    return form_class


def filter_form(data: QueryDict) -> forms.Form:
    """The bound form ``OfferFilterSet(data).form`` is, without building the filter set.

    The filter set deep-copies its filters and builds its form class anew per instance (~0.6 ms,
    half the cost of a menu answer). The class depends only on the declared filters, so it is
    built once, and its fields are shared by its forms (``SharedFields``); the provider choices
    are still read at validation. Same fields, same cleaned data, same errors.
    """
    return _filter_form_class()(data or QueryDict())
