"""Browser forms: renting an offer and registering SSH public keys."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from sessions import keys, presets
from sessions.hours import MIN_HOURS, STEP_HOURS, hours_check
from sessions.models import SSHKey

KEY_REGISTERED = "registered"
KEY_PASTE = "paste"
KEY_GENERATE = "generate"


class RentForm(forms.Form):
    """Rent one offer: reservation hours and where the SSH key comes from (registered keys,
    a generated pair, or a pasted public key)."""

    reservation_hours = forms.DecimalField(
        label="Reservation (hours)",
        max_digits=6,
        decimal_places=2,
        initial=Decimal("2"),
        error_messages={
            "required": "Give the reservation in hours, e.g. 2 or 1.5.",
            "invalid": "Give the reservation in hours, e.g. 2 or 1.5.",
            "max_decimal_places": "Use at most two decimals, e.g. 1.5 or 0.25.",
            "max_digits": "Give the reservation in hours, e.g. 2 or 1.5.",
            "max_whole_digits": "Give the reservation in hours, e.g. 2 or 1.5.",
        },
    )
    key_source = forms.ChoiceField(label="SSH access", widget=forms.RadioSelect)
    ssh_public_key = forms.CharField(
        label="Public key",
        required=False,
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "ssh-ed25519 AAAA… you@laptop", "spellcheck": "false"}
        ),
    )
    idle_stop_minutes = forms.IntegerField(
        label="Stop when idle (minutes)",
        required=False,
        min_value=1,
        max_value=1440,
        help_text="Stopped after this many minutes with every GPU idle (warned first); empty: never.",
        error_messages={"invalid": "Give whole minutes (1 to 1440), or leave it empty for no idle stop."},
    )
    # Rent-time choices (sessions/presets.py); checked against the provider by rental_create.
    preset = forms.ChoiceField(label="Image", widget=forms.RadioSelect, required=False)
    image = forms.CharField(label="Your own image", required=False, max_length=200)
    disk_gb = forms.IntegerField(
        label="Disk (GB)", required=False, min_value=1, max_value=10000,
        error_messages={"invalid": "Give the disk size in whole GB, e.g. 50."},
    )  # fmt: skip
    ports = forms.CharField(label="Ports to expose", required=False, max_length=100)
    onstart = forms.CharField(
        label="Start-up command", required=False, max_length=presets.MAX_ONSTART_CHARS, strip=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
    )  # fmt: skip
    # Failover (sessions/failover.py). An unticked box is absent from the post: off.
    failover = forms.BooleanField(
        label="If the machine fails before it is mine, rent a comparable offer", required=False
    )
    failover_any_gpu = forms.BooleanField(
        label="Any GPU model with at least this VRAM will do", required=False
    )
    max_price_per_hour = forms.DecimalField(
        label="Most I pay after a failover ($/h)", required=False, min_value=0, max_digits=10,
        decimal_places=4, help_text="Empty: this price + 10 %.",
        error_messages={"invalid": "Give the price ceiling in $/h, e.g. 1.65."},
    )  # fmt: skip
    expected_price = forms.DecimalField(widget=forms.HiddenInput, max_digits=12, decimal_places=4)
    # One-time token: a second submit of the same form finds the first one's rental.
    form_token = forms.UUIDField(
        widget=forms.HiddenInput,
        error_messages={"required": "This form is out of date; reload the page and try again."},
    )

    def __init__(self, *args, key_count: int = 0, provider: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.presets = presets.presets_for(provider)
        self.limits = presets.limits_for(provider)
        self.fields["preset"].choices = [(p["key"], p["name"]) for p in self.presets] + [
            (presets.CUSTOM, "My own image")
        ]
        if not self.is_bound:
            self.initial.setdefault("preset", "cuda")
            self.initial.setdefault("disk_gb", self.limits.disk_default_gb)
            self.initial.setdefault("failover", True)
        hard_max = settings.SHOPPER_HARD_MAX_HOURS
        hours = self.fields["reservation_hours"]
        hours.help_text = f"At most {hard_max} hours; the machine is shut down when it ends."
        hours.widget.attrs.update({"min": str(MIN_HOURS), "max": str(hard_max), "step": str(STEP_HOURS)})
        # The team default (SHOPPER_IDLE_STOP_MINUTES) is filled in; the user may change or clear it.
        self.fields["idle_stop_minutes"].initial = settings.SHOPPER_IDLE_STOP_MINUTES or None
        if key_count:
            plural = "s" if key_count != 1 else ""
            choices = [
                (KEY_REGISTERED, f"Use my registered key{plural} ({key_count})"),
                (KEY_GENERATE, "Generate a new key pair for me"),
                (KEY_PASTE, "Paste a public key"),
            ]
        else:
            choices = [
                (KEY_GENERATE, "Generate a new key pair for me"),
                (KEY_PASTE, "Paste a public key"),
            ]
        self.fields["key_source"].choices = choices
        if not self.is_bound:
            self.initial.setdefault("key_source", choices[0][0])
            self.initial.setdefault("form_token", uuid.uuid4())

    def clean_reservation_hours(self) -> Decimal:
        return hours_check(
            self.cleaned_data["reservation_hours"],
            maximum=settings.SHOPPER_HARD_MAX_HOURS,
            maximum_name="the hard maximum",
        )

    def clean(self):
        data = super().clean()
        if data.get("key_source") == KEY_PASTE:
            try:
                data["ssh_public_key"] = keys.public_key_normalize(data.get("ssh_public_key", ""))
            except ValidationError as exc:
                self.add_error("ssh_public_key", exc)
        else:
            data["ssh_public_key"] = ""
        return data

    @property
    def generate_key(self) -> bool:
        return self.cleaned_data.get("key_source") == KEY_GENERATE

    @property
    def public_key(self) -> str | None:
        """The key to hand to rental_create: None means registered keys, or a generated pair."""
        return self.cleaned_data.get("ssh_public_key") or None


class SSHKeyForm(forms.ModelForm):
    class Meta:
        model = SSHKey
        fields = ["name", "public_key"]
        widgets = {
            "public_key": forms.Textarea(
                attrs={"rows": 3, "placeholder": "ssh-ed25519 AAAA… you@laptop", "spellcheck": "false"}
            ),
        }
        help_texts = {"name": "Optional: defaults to the key's comment."}

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["name"].required = False

    def clean_public_key(self) -> str:
        return keys.public_key_normalize(self.cleaned_data["public_key"])

    def clean(self):
        data = super().clean()
        line = data.get("public_key")
        if not line:
            return data
        fingerprint = keys.public_key_fingerprint(line)
        existing = SSHKey.objects.filter(user=self.user, fingerprint=fingerprint).first()
        if existing:
            self.add_error("public_key", f"You already registered this key as “{existing.name}”.")
        self.instance.user = self.user
        self.instance.fingerprint = fingerprint
        if not data.get("name"):
            parts = line.split(" ", 2)
            data["name"] = self.instance.name = (parts[2] if len(parts) > 2 else "key")[:100]
        return data

    def validate_unique(self):
        # (user, fingerprint) is checked in clean() with a clearer message; user is not a field.
        pass
