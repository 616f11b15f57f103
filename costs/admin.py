from django.contrib import admin

from costs.models import Budget, BudgetAlert, LedgerEntry


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    list_display = ("period_start", "period_end", "rental", "consumer", "provider", "gpu_type", "amount")
    list_filter = ("provider", "gpu_type")
    search_fields = ("rental__id", "consumer__username")
    date_hierarchy = "period_start"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("__str__", "user", "monthly_limit", "updated_at")
    search_fields = ("user__username",)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ("budget", "month", "threshold", "spent", "created_at")
    readonly_fields = ("budget", "month", "threshold", "spent", "created_at")
