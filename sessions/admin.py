from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse

from sessions.lifecycle import rental_extend
from sessions.models import Alert, Rental, RentalEvent, SSHKey
from sessions.services import RentalError


class OverrideForm(forms.Form):
    """The admin action's intermediate form: how many hours, and why (required, audited)."""

    hours = forms.DecimalField(min_value=0.25, max_value=168, decimal_places=2, initial=1)
    reason = forms.CharField(max_length=500, widget=forms.TextInput(attrs={"size": 60}))


@admin.action(description="Extend past the hard maximum (with a reason)")
def extend_past_hard_max(modeladmin, request, queryset):
    form = OverrideForm(request.POST if "apply" in request.POST else None)
    if "apply" in request.POST and form.is_valid():
        done = 0
        for rental in queryset:
            try:
                rental_extend(
                    rental=rental,
                    hours=form.cleaned_data["hours"],
                    reason=form.cleaned_data["reason"],
                    actor=request.user,
                )
                done += 1
            except (RentalError, ValidationError) as exc:
                modeladmin.message_user(
                    request, f"{rental.label}: {getattr(exc, 'message', exc)}", messages.ERROR
                )
        if done:
            modeladmin.message_user(request, f"Extended {done} rental(s); each override is on its timeline.")
        return None
    return TemplateResponse(
        request,
        "admin/rentals/extend_past_hard_max.html",
        {
            **modeladmin.admin_site.each_context(request),
            "rentals": queryset,
            "form": form,
            "title": "Extend past the hard maximum",
            "opts": modeladmin.model._meta,
        },
    )


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
    actions = [extend_past_hard_max]
    exclude = ("ssh_private_key_encrypted", "agent_token_hash", "verify_private_key_encrypted")

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
