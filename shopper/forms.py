"""Browser forms of the project pages: creating an API token."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone

from shopper.models import ApiToken

MAX_EXPIRY_DAYS = 365


class ApiTokenForm(forms.Form):
    """A token's name and optional expiry: in N days (1–365) or on a date (within a year)."""

    name = forms.CharField(
        label="Name",
        max_length=100,
        help_text="What uses it, e.g. “laptop CLI” or “CI nightly”.",
        error_messages={
            "required": "Give the token a name, e.g. “laptop CLI”.",
            "max_length": "Use at most 100 characters for the name.",
        },
    )
    expires_in_days = forms.IntegerField(
        label="Expires in (days)",
        required=False,
        min_value=1,
        max_value=MAX_EXPIRY_DAYS,
        error_messages={
            "invalid": f"Give a whole number of days from 1 to {MAX_EXPIRY_DAYS}.",
            "min_value": f"Give a whole number of days from 1 to {MAX_EXPIRY_DAYS}.",
            "max_value": f"Give a whole number of days from 1 to {MAX_EXPIRY_DAYS}.",
        },
    )
    expires_on = forms.DateField(
        label="or expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        error_messages={"invalid": "Give a date as YYYY-MM-DD."},
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        today = timezone.localdate()
        self.fields["expires_on"].widget.attrs.update(
            {
                "min": (today + timedelta(days=1)).isoformat(),
                "max": (today + timedelta(days=MAX_EXPIRY_DAYS)).isoformat(),
            }
        )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if ApiToken.objects.usable().filter(user=self.user, name=name).exists():
            raise forms.ValidationError(f"You already have an active token named “{name}”.")
        return name

    def clean_expires_on(self):
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        today = timezone.localdate()
        if day <= today:
            raise forms.ValidationError("Pick a date after today.")
        if day > today + timedelta(days=MAX_EXPIRY_DAYS):
            raise forms.ValidationError(f"Pick a date at most {MAX_EXPIRY_DAYS} days from today.")
        return day

    def clean(self):
        data = super().clean()
        if data.get("expires_in_days") is not None and data.get("expires_on") is not None:
            raise forms.ValidationError("Give the expiry either in days or as a date, not both.")
        return data

    @property
    def expires_at(self) -> datetime | None:
        """When the token stops working: N days from now, or the start of the chosen date."""
        days, day = self.cleaned_data.get("expires_in_days"), self.cleaned_data.get("expires_on")
        if days is not None:
            return timezone.now() + timedelta(days=days)
        if day is not None:
            return timezone.make_aware(datetime.combine(day, time.min))
        return None


class TimeZoneForm(forms.Form):
    """The settings page: the time zone pages write times in (empty: the browser's)."""

    time_zone = forms.ChoiceField(label="Time zone", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from shopper.middleware import _zones

        names = sorted(z for z in _zones() if "/" in z or z == "UTC")
        self.fields["time_zone"].choices = [("", "My browser's time zone"), *((z, z) for z in names)]
        self.fields["time_zone"].error_messages["invalid_choice"] = (
            "Pick a time zone from the list (e.g. Europe/Berlin), or your browser's."
        )
