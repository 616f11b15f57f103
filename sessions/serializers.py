from __future__ import annotations

import re

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from costs import pricing
from sessions.hours import MAX_EXTENSION_HOURS, MIN_HOURS, STEP_HOURS, hours_check
from sessions.models import Rental, RentalEvent

# An offer id is a database key: ASCII digits only ("²" and "٣" pass str.isdigit but are no
# key), and small enough for a 64-bit integer column.
OFFER_ID = re.compile(r"[0-9]{1,18}")


class SessionCreateSerializer(serializers.Serializer):
    """POST /api/v1/sessions input. The hours follow sessions.hours (the page's rule too)."""

    offer_id = serializers.CharField(max_length=32, help_text="The offer's id (digits)")
    reservation_hours = serializers.DecimalField(
        max_digits=8,
        decimal_places=4,
        help_text=f"At least {MIN_HOURS} h, in steps of {STEP_HOURS} h, at most the hard maximum",
    )
    ssh_public_key = serializers.CharField(
        required=False, allow_blank=True, max_length=16000, trim_whitespace=True
    )
    generate_key = serializers.BooleanField(
        required=False, default=False, help_text="Generate a new Ed25519 pair even if you registered keys"
    )
    preset = serializers.CharField(
        required=False, allow_blank=True, max_length=32,
        help_text="`cuda`, `pytorch` or `vllm`; a 400 says why where the provider cannot run it",
    )  # fmt: skip
    image = serializers.CharField(
        required=False, allow_blank=True, max_length=200,
        help_text="Your own image instead (Vast.ai: Docker image; TensorDock: OS image name)",
    )  # fmt: skip
    disk_gb = serializers.IntegerField(
        required=False, min_value=1, max_value=10000,
        help_text="Disk in GB within the offer's limits (Vast.ai from 8, TensorDock from 100); priced",
    )  # fmt: skip
    ports = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=65535), required=False, max_length=8,
        help_text="Ports to expose (e.g. 8888 for Jupyter); where the provider cannot, a 400 says why",
    )  # fmt: skip
    onstart = serializers.CharField(
        required=False, allow_blank=True, max_length=4000, trim_whitespace=False,
        help_text="A start-up command, run in the background at boot (log: ~/onstart.log)",
    )  # fmt: skip
    idle_stop_minutes = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=1440,
        help_text="Stop after this many minutes of idle GPUs (null: never; absent: the team default)",
    )
    expected_price_per_hour = serializers.DecimalField(
        required=False,
        max_digits=10,
        decimal_places=4,
        help_text="The price you were shown; 409 price_changed if the provider now asks another.",
    )  # fmt: skip
    max_price_per_hour = serializers.DecimalField(
        required=False, max_digits=10, decimal_places=4, min_value=0,
        help_text="Failover ceiling, in the unit of expected_price_per_hour: at least the offer's "
        "price; default that price + 10 %",
    )  # fmt: skip
    failover = serializers.BooleanField(
        required=False, default=True,
        help_text="When the machine fails before it is yours for a reason about the offer, rent the "
        "best comparable offer instead (same rental, at most SHOPPER_FAILOVER_TRIES times)",
    )  # fmt: skip
    failover_any_gpu = serializers.BooleanField(
        required=False, default=False,
        help_text="Failover may take any GPU model with at least this VRAM per GPU (same count)",
    )  # fmt: skip

    def validate_offer_id(self, value: str) -> int:
        if not OFFER_ID.fullmatch(value):
            raise serializers.ValidationError("Give the offer's id: digits, e.g. 1234.")
        return int(value)

    def validate_reservation_hours(self, value):
        return hours_check(value, maximum=settings.SHOPPER_HARD_MAX_HOURS, maximum_name="the hard maximum")


class SSHSerializer(serializers.Serializer):
    host = serializers.CharField()
    port = serializers.IntegerField()
    user = serializers.CharField()
    command = serializers.CharField()


class GpuVerifiedSerializer(serializers.Serializer):
    """What nvidia-smi found on the machine before it was handed over (null until verified)."""

    name = serializers.CharField()
    count = serializers.IntegerField()
    memory_gb = serializers.FloatField(help_text="Per GPU, as nvidia-smi reports it")
    driver = serializers.CharField()
    cuda = serializers.CharField()


class PortSerializer(serializers.Serializer):
    port = serializers.IntegerField(help_text="The port on the machine")
    address = serializers.CharField(
        allow_null=True, help_text="host:port as the provider maps it, once active"
    )
    url = serializers.CharField(allow_null=True)


class SessionSerializer(serializers.ModelSerializer):
    consumer = serializers.CharField(source="consumer.username", read_only=True)
    offer_id = serializers.SerializerMethodField()
    price_per_hour = serializers.DecimalField(
        source="charged_price_per_hour", max_digits=10, decimal_places=4, read_only=True
    )
    cost_so_far = serializers.SerializerMethodField()
    ssh = serializers.SerializerMethodField()
    gpu_verified = serializers.SerializerMethodField()
    label = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    ports = serializers.SerializerMethodField()
    price_shown_per_hour = serializers.SerializerMethodField(
        help_text="The price you were shown at rent time (with the markup); `price_per_hour` is billed"
    )

    class Meta:
        model = Rental
        fields = (
            "id", "consumer", "status", "status_detail", "provider", "offer_id", "provider_offer_id",
            "gpu_type", "gpu_count", "vram_gb", "location", "price_per_hour", "created_at", "active_since",
            "reservation_ends_at", "hard_max_at", "ended_at", "cost_so_far", "last_heartbeat_at", "ssh",
            "label", "provider_instance_id", "idle_stop_minutes", "idle_since", "gpu_verified",
            "preset", "image", "disk_gb", "ports", "onstart", "price_shown_per_hour", "health_ok_at",
            "max_price_per_hour", "failover", "failover_any_gpu",
        )  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(GpuVerifiedSerializer(allow_null=True))
    def get_gpu_verified(self, rental: Rental) -> dict | None:
        return rental.gpu_verified or None

    @extend_schema_field(PortSerializer(many=True))
    def get_ports(self, rental: Rental) -> list[dict]:
        return rental.port_links

    @extend_schema_field(serializers.DecimalField(max_digits=10, decimal_places=4, allow_null=True))
    def get_price_shown_per_hour(self, rental: Rental) -> str | None:
        if rental.shown_price_per_hour is None:
            return None
        return str(pricing.price_per_hour(rental.shown_price_per_hour, rental.markup_percent))

    def get_offer_id(self, rental: Rental) -> str | None:
        return str(rental.offer_id) if rental.offer_id else None

    def get_cost_so_far(self, rental: Rental) -> str:
        return str(rental.cost_so_far())

    @extend_schema_field(SSHSerializer(allow_null=True))
    def get_ssh(self, rental: Rental) -> dict | None:
        if not rental.ssh_command:
            return None
        return {
            "host": rental.ssh_host,
            "port": rental.ssh_port,
            "user": rental.ssh_user,
            "command": rental.ssh_command,
        }


class SessionCreatedSerializer(SessionSerializer):
    ssh_private_key = serializers.CharField(
        required=False, help_text="Only when generated, only in this answer"
    )

    class Meta(SessionSerializer.Meta):
        fields = (*SessionSerializer.Meta.fields, "ssh_private_key")


class EventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", default=None, allow_null=True, read_only=True)

    class Meta:
        model = RentalEvent
        fields = ("id", "at", "kind", "from_status", "to_status", "reason", "actor", "data")


class ExtendSerializer(serializers.Serializer):
    hours = serializers.DecimalField(
        max_digits=8,
        decimal_places=4,
        help_text=f"At least {MIN_HOURS} h, in steps of {STEP_HOURS} h, at most {MAX_EXTENSION_HOURS}",
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)

    def validate_hours(self, value):
        return hours_check(value, maximum=MAX_EXTENSION_HOURS, what="extension")


class IdleStopSerializer(serializers.Serializer):
    """PATCH /api/v1/sessions/{id}: set or clear the idle stop (the only field that changes)."""

    idle_stop_minutes = serializers.IntegerField(
        allow_null=True, min_value=1, max_value=1440, help_text="Idle minutes before the stop; null: off"
    )
