from django.contrib import admin

from sessions.models import Alert, Rental, RentalEvent, SSHKey


class RentalEventInline(admin.TabularInline):
    model = RentalEvent
    extra = 0
    can_delete = False
    fields = ("at", "kind", "from_status", "to_status", "reason", "actor")
    readonly_fields = fields
    ordering = ("at", "id")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Rental)
class RentalAdmin(admin.ModelAdmin):
    """Status and deadlines change only through services (one status writer): read-only here."""

    list_display = (
        "id",
        "consumer",
        "gpu_type",
        "gpu_count",
        "provider",
        "status",
        "price_per_hour",
        "created_at",
        "hard_max_at",
    )
    list_filter = ("status", "provider")
    search_fields = ("id", "consumer__username", "gpu_type", "provider_instance_id")
    list_select_related = ("consumer",)
    date_hierarchy = "created_at"
    inlines = [RentalEventInline]
    exclude = ("ssh_private_key_encrypted", "agent_token_hash")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Rental._meta.fields if f.name not in self.exclude]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(RentalEvent)
class RentalEventAdmin(admin.ModelAdmin):
    list_display = ("at", "rental", "kind", "from_status", "to_status", "reason", "actor")
    list_filter = ("kind", "to_status")
    search_fields = ("rental__id", "reason")
    list_select_related = ("rental", "actor")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SSHKey)
class SSHKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "fingerprint", "created_at")
    search_fields = ("name", "user__username", "fingerprint")
    readonly_fields = ("fingerprint", "created_at")


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("created_at", "kind", "rental", "provider", "message", "resolved_at")
    list_filter = ("kind", "provider", ("resolved_at", admin.EmptyFieldListFilter))
    readonly_fields = ("kind", "rental", "provider", "provider_instance_id", "message", "created_at")
