from django.contrib import admin

from inventory.models import MachineBenchmark, Offer, ProviderFeed, ProvisionOutcome


@admin.register(Offer)
class OfferAdmin(admin.ModelAdmin):
    list_display = (
        "gpu_type",
        "gpu_count",
        "vram_gb",
        "price_per_hour",
        "provider",
        "location",
        "reliability",
        "available",
        "fetched_at",
    )
    list_filter = ("provider", "available", "gpu_count")
    search_fields = ("gpu_type", "location", "provider_offer_id")
    readonly_fields = [f.name for f in Offer._meta.fields if f.name != "hidden_until"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False  # offers come from providers only


@admin.register(ProviderFeed)
class ProviderFeedAdmin(admin.ModelAdmin):
    list_display = (
        "provider",
        "last_success_at",
        "offer_count",
        "consecutive_failures",
        "next_fetch_at",
        "last_error",
    )
    readonly_fields = (
        "provider",
        "last_attempt_at",
        "last_success_at",
        "last_error",
        "consecutive_failures",
        "offer_count",
    )


@admin.register(MachineBenchmark)
class MachineBenchmarkAdmin(admin.ModelAdmin):
    """What node agents measured (issue 18); a wrong row may be deleted, none are added by hand."""

    list_display = ("provider", "machine", "gpu_type", "dtype", "tflops", "gbps", "measured_at")
    list_filter = ("provider", "dtype")
    search_fields = ("machine", "gpu_type", "gpu_name")
    readonly_fields = [f.name for f in MachineBenchmark._meta.fields]


@admin.register(ProvisionOutcome)
class ProvisionOutcomeAdmin(admin.ModelAdmin):
    """What each rental attempt's offer did (issue 15): read-only, the product writes it."""

    list_display = ("at", "provider", "provider_offer_id", "host", "location", "gpu_type", "kind", "detail")
    list_filter = ("provider", "kind")
    search_fields = ("provider_offer_id", "host", "location", "gpu_type")
    readonly_fields = [f.name for f in ProvisionOutcome._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False
