"""Rentals ("sessions" in the UI and API), their audit timeline, SSH keys and admin alerts."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.checks import Error, register
from django.core.signals import setting_changed
from django.db import models
from django.db.models import Q
from django.dispatch import receiver
from django.utils import timezone

from common.tokens import token_hash  # noqa: F401  (re-exported: sessions code imports it from here)
from costs import pricing
from sessions.deployment import (
    LABEL_PREFIX,
    InvalidDeploymentId,
    make_label,
    rental_default_deployment,
    validate_deployment_id,
)
from sessions.deployment import reset_cache as deployment_reset_cache

__all__ = ["LABEL_PREFIX"]


class Status(models.TextChoices):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    BOOTING = "booting"
    VERIFYING = "verifying"
    ACTIVE = "active"
    STOPPING = "stopping"
    DESTROYED = "destroyed"
    FAILED = "failed"


S = Status
# The status machine. Any live status may go to stopping; destroyed only after the provider
# confirms the instance is gone; failed only when no instance exists (label lookup confirmed).
# Back to pending only by a failover (sessions/failover.py): from provisioning when the create
# was refused and no instance exists, from stopping once the failed instance is confirmed gone.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.PROVISIONING, S.STOPPING, S.FAILED}),
    S.PROVISIONING: frozenset({S.BOOTING, S.STOPPING, S.FAILED, S.PENDING}),
    S.BOOTING: frozenset({S.VERIFYING, S.STOPPING}),
    S.VERIFYING: frozenset({S.ACTIVE, S.STOPPING}),
    S.ACTIVE: frozenset({S.STOPPING}),
    S.STOPPING: frozenset({S.DESTROYED, S.PENDING}),
    S.DESTROYED: frozenset(),
    S.FAILED: frozenset(),
}
LIVE_STATUSES = frozenset(s for s in S if s not in (S.DESTROYED, S.FAILED))
# Provisioning has not finished: a worker (holding the provisioning lease) is taking it to active.
IN_FLIGHT_STATUSES = (S.PENDING, S.PROVISIONING, S.BOOTING, S.VERIFYING)
TERMINAL_STATUSES = frozenset({S.DESTROYED, S.FAILED})
# Statuses in which the provider bills us (until destruction is confirmed).
BILLING_STATUSES = frozenset({S.ACTIVE, S.STOPPING})


class RentalQuerySet(models.QuerySet):
    def for_user(self, user) -> RentalQuerySet:
        """Owner filter: staff see everyone's rentals, others only their own."""
        if user.is_staff:
            return self
        return self.filter(consumer=user)

    def live(self) -> RentalQuerySet:
        return self.filter(status__in=LIVE_STATUSES)


class Rental(models.Model):
    """One GPU instance rented from one provider offer, from request to verified teardown.

    The offer is snapshotted (provider, offer id, GPU, price) at rent time: the menu changes,
    the price a user agreed to does not. ``status`` is written only by
    ``sessions.services.rental_transition``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    consumer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rentals")
    offer = models.ForeignKey("inventory.Offer", null=True, blank=True, on_delete=models.SET_NULL)
    provider = models.CharField(max_length=32)
    provider_offer_id = models.CharField(max_length=128)
    gpu_type = models.CharField(max_length=64)
    gpu_count = models.PositiveSmallIntegerField()
    vram_gb = models.PositiveIntegerField(default=0)
    location = models.CharField(max_length=128, blank=True)
    price_per_hour = models.DecimalField(max_digits=10, decimal_places=4, help_text="Provider price")
    markup_percent = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal("0"))
    image = models.CharField(max_length=200, blank=True)
    disk_gb = models.PositiveIntegerField(null=True, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_detail = models.TextField(blank=True)
    provider_instance_id = models.CharField(max_length=128, blank=True)

    ssh_host = models.CharField(max_length=255, blank=True)
    ssh_port = models.PositiveIntegerField(null=True, blank=True)
    ssh_user = models.CharField(max_length=64, blank=True)
    ssh_public_key = models.TextField(blank=True)
    # Fernet token of a generated private key; cleared at teardown.
    ssh_private_key_encrypted = models.TextField(blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    active_since = models.DateTimeField(null=True, blank=True)
    reservation_ends_at = models.DateTimeField()
    hard_max_at = models.DateTimeField()
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    # Leases of the provisioning and teardown tasks working on this rental (one of each at a time).
    provision_claimed_until = models.DateTimeField(null=True, blank=True)
    teardown_claimed_until = models.DateTimeField(null=True, blank=True)
    # When provisioning / teardown was handed to the task queue and no task has started on it
    # since (the oldest such hand-over; a starting task clears it). The safety loop acts itself
    # when the queue leaves it too long (sessions/stalled.py).
    provision_queued_at = models.DateTimeField(null=True, blank=True)
    teardown_queued_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    reservation_warned_at = models.DateTimeField(null=True, blank=True)
    # Idle stop (sessions/idle.py): stop after this many minutes of GPU utilisation below
    # SHOPPER_IDLE_UTIL_PERCENT; null = off. idle_since is the first of the consecutive idle
    # heartbeats (cleared by a busy one, or one without utilisation).
    idle_stop_minutes = models.PositiveIntegerField(null=True, blank=True)
    idle_since = models.DateTimeField(null=True, blank=True)
    idle_warned_at = models.DateTimeField(null=True, blank=True)

    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_data = models.JSONField(default=dict, blank=True)
    agent_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    # Consecutive reconcile listings in which the instance was missing (2 -> ghost).
    missing_count = models.PositiveSmallIntegerField(default=0)
    # Idempotency: the API's Idempotency-Key header or the rent form's one-time token, unique per
    # consumer (constraint below), so a repeated request finds the first one's rental in any web
    # process instead of renting a second machine. The fingerprint is a hash of what was asked for:
    # the same key with another request is refused (422 idempotency_key_reused) by the API.
    request_key = models.CharField(max_length=255, blank=True, default="")
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    # The deployment whose label the instance carries (sessions/deployment.py); "" for rentals
    # made before labels were scoped: they keep their old label ``shopper-<uuid>``.
    deployment_id = models.CharField(max_length=32, blank=True, default=rental_default_deployment)
    # The handoff proves the GPU: what nvidia-smi found on the machine ({"name", "count",
    # "memory_gb", "driver", "cuda"}), null until verified. When the user brought their own key, a
    # per-rental verification key of ours is installed beside it (private half here, encrypted)
    # and removed from authorized_keys after the check.
    gpu_verified = models.JSONField(null=True, blank=True)
    verify_private_key_encrypted = models.TextField(blank=True)
    # Rent-time choices (sessions/presets.py): the preset ("custom" for an image of one's own),
    # the exposed ports, the user's start-up command, and once running the host:port the
    # provider mapped each port to ({"8888": "1.2.3.4:41202"}).
    preset = models.CharField(max_length=32, blank=True, default="")
    ports = models.JSONField(default=list, blank=True)
    onstart = models.TextField(blank=True, default="")
    mapped_ports = models.JSONField(default=dict, blank=True)
    health_ok_at = models.DateTimeField(null=True, blank=True)
    # The price the user was shown and reserved at (at the disk asked for). ``price_per_hour``
    # becomes the instance's own rate read back from the provider after create (what is billed).
    shown_price_per_hour = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    # Failover (sessions/failover.py): when provisioning fails for a reason about the offer, the
    # rental moves on by itself to the best comparable offer priced at most ``max_price_per_hour``
    # (the provider's price at the rental's disk, as ``price_per_hour``; set at rent time, default
    # the price + 10 %). ``failover_any_gpu``: any GPU model with at least this VRAM per GPU (same
    # count) will do. ``failover_pending``: why the instance being torn down failed, while the
    # next offer waits for the teardown to confirm it is gone ("" otherwise).
    max_price_per_hour = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    failover = models.BooleanField(default=True)
    failover_any_gpu = models.BooleanField(default=False)
    failover_pending = models.CharField(max_length=32, blank=True, default="")

    objects = RentalQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["consumer", "-created_at"], name="rental_consumer_created"),
            models.Index(fields=["status"], name="rental_status"),
            # Used by lifecycle enforcement: only live rentals have deadlines that matter.
            models.Index(
                fields=["reservation_ends_at"],
                name="rental_res_end_live",
                condition=~Q(status__in=["destroyed", "failed"]),
            ),
            models.Index(
                fields=["hard_max_at"],
                name="rental_hard_max_live",
                condition=~Q(status__in=["destroyed", "failed"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "request_key"],
                condition=~Q(request_key=""),
                name="rental_request_key_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.status})"

    @property
    def label(self) -> str:
        """The label/name every instance carries (safety rule 2): ``shopper-<deployment>-<uuid>``."""
        return make_label(self.deployment_id, self.id)

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def has_generated_key(self) -> bool:
        return bool(self.ssh_private_key_encrypted)

    @property
    def key_filename(self) -> str:
        """The generated private key's file name: the download, the CLI and the ssh command agree."""
        return f"shopper-{str(self.id)[:8]}.pem"

    @property
    def ssh_command(self) -> str:
        if not (self.ssh_host and self.ssh_port):
            return ""
        key = f"-i ~/.ssh/{self.key_filename} " if self.has_generated_key else ""
        return f"ssh {key}-p {self.ssh_port} {self.ssh_user or 'root'}@{self.ssh_host}"

    @property
    def charged_price_per_hour(self) -> Decimal:
        """What the user is charged per hour: the provider price plus the chargeback markup
        fixed at rent time (costs.pricing, the one formula)."""
        return pricing.price_per_hour(self.price_per_hour, self.markup_percent)

    @property
    def port_links(self) -> list[dict]:
        """Each exposed port with the host:port the provider mapped it to, once active (else None)."""
        active = self.status == Status.ACTIVE
        out = []
        for port in self.ports or []:
            address = (self.mapped_ports or {}).get(str(port)) if active else None
            out.append({"port": port, "address": address, "url": f"http://{address}/" if address else None})
        return out

    @property
    def health_path(self) -> str:
        """The HTTP path whose answer says the preset's server is up ("" when it has none)."""
        from sessions.presets import health_port

        found = health_port(self.preset, self.ports)
        return found[1] if found else ""

    @property
    def price_differs(self) -> bool:
        """The provider bills another rate than the one shown at rent time (issue 14)."""
        return self.shown_price_per_hour is not None and self.shown_price_per_hour != self.price_per_hour

    def billed_seconds(self, now: datetime | None = None) -> int:
        """Billing runs from active until the provider confirms destruction (DESIGN.md costs)."""
        if not self.active_since:
            return 0
        end = self.ended_at or now or timezone.now()
        return max(0, int((end - self.active_since).total_seconds()))

    def cost_so_far(self, now: datetime | None = None) -> Decimal:
        """Charged price × billed time, to the cent (Decimal throughout)."""
        return pricing.charge_seconds(self.charged_price_per_hour, self.billed_seconds(now), to=pricing.CENT)


class EventKind(models.TextChoices):
    TRANSITION = "transition"
    INFO = "info"
    ERROR = "error"
    KEY_DOWNLOAD = "key_download"
    EXTEND = "extend"
    OVERRIDE = "override"
    WARNING = "warning"
    HEARTBEAT = "heartbeat"
    DEADLINE = "deadline"  # a deadline stopped the rental (sessions/lifecycle.py)
    IDLE_STOP = "idle_stop"  # the idle rule stopped the rental (sessions/idle.py)


class EventCause(models.TextChoices):
    """Why a failure event happened, kept in ``RentalEvent.data["cause"]`` (not a column)."""

    DESTROY_FAILED = "destroy_failed"  # error: one destroy attempt failed (data: attempt)
    CREATE_FAILED = "create_failed"  # error: the create answered an error (data: code, provider_error)
    CREATE_401 = "create_401"  # warning: a 401 on create, retried (FIELD_NOTES TD-AUTH401)
    INSTANCE_FAILED = "instance_failed"  # stopping: failed to start (data: provider_error)
    BOOT_TIMEOUT = "boot_timeout"  # stopping: did not run within the boot timeout
    SSH_FAILED = "ssh_failed"  # stopping: never logged in (or lost the login) within the timeout
    MACHINE_STOPPED = "machine_stopped"  # stopping: it stopped or vanished before the check
    GPU_NO_DRIVER = "gpu_no_driver"  # stopping: the GPUs never worked (TD-NODRIVER)
    GPU_MISMATCH = "gpu_mismatch"  # stopping: not the GPUs that were sold (VA-CUDA-LIE)


# Which deadline a ``deadline`` event enforced: its data["deadline_kind"].
DEADLINE_RESERVATION, DEADLINE_HARD_MAX, DEADLINE_AGENT_SILENT = "reservation", "hard_max", "agent_silent"


class RentalEvent(models.Model):
    """Append-only: the audit log, the timeline on the page, and the outbox for live updates.

    A transition has ``from_status``/``to_status``; other events (errors, key downloads,
    extensions) leave them blank. ``actor`` is null for the system.

    ``reason`` is the human sentence and may be reworded freely: code (metrics, lifecycle,
    reconcile, chaos, tests) finds events by ``kind`` and by stable ``data`` keys, never by it:

    * ``deadline``: data ``deadline_kind`` (reservation, hard_max, agent_silent), ``deadline``
      (ISO time) and ``lag_seconds``; ``idle_stop``: ``idle_since``, ``idle_stop_minutes``.
    * failures carry ``data["cause"]`` from ``EventCause``; a provisioning failure's status change
      also ``provision_failed: true``; the provider's own words, where it gave any, are kept
      verbatim in ``provider_error`` (FIELD_NOTES quotes them).
    * ``heartbeat``, ``key_download``, ``extend``, ``override`` are their own kinds; a queue-stall
      warning has ``queue_stalled``.
    """

    rental = models.ForeignKey(Rental, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=EventKind.choices, default=EventKind.TRANSITION)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    reason = models.TextField(blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    data = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["rental", "at"], name="event_rental_at")]

    def __str__(self) -> str:
        if self.kind == EventKind.TRANSITION:
            return f"{self.from_status or '∅'} → {self.to_status}: {self.reason}"
        return f"{self.kind}: {self.reason}"


class SSHKey(models.Model):
    """A public key a user registered; rentals without an explicit key install these."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100)
    public_key = models.TextField()
    fingerprint = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["user", "fingerprint"], name="sshkey_user_fingerprint_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class AlertKind(models.TextChoices):
    ORPHAN = "orphan", "Orphan instance"
    GHOST = "ghost", "Ghost rental"
    DESTROY_STUCK = "destroy_stuck", "Destroy still failing"
    AGENT_SILENT = "agent_silent", "Agent gone silent"
    BUDGET = "budget", "Budget threshold"
    QUEUE_STALLED = "queue_stalled", "Task queue stalled"
    BALANCE_LOW = "balance_low", "Provider balance low"
    # An instance with a pre-scoping label no live rental owns: maybe another deployment's
    # (both used to label alike), so only an admin destroys it (safety page).
    UNSCOPED = "unscoped_orphan", "Unscoped instance"


class Alert(models.Model):
    """Something an admin must look at. Emailed once when raised; listed on the safety page."""

    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    rental = models.ForeignKey(
        Rental, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    provider = models.CharField(max_length=32, blank=True)
    provider_instance_id = models.CharField(max_length=128, blank=True)
    message = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Unscoped instances: the admin who said destroy it (reconcile retries until confirmed).
    destroy_approved_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.message[:60]}"


class QueueProbe(models.Model):
    """A tiny task handed to the task queue by ``manage.py worker_health``: when one enqueued a
    while ago has still not started, the queue has stopped moving (sessions/stalled.py)."""

    enqueued_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-enqueued_at"]

    def __str__(self) -> str:
        return f"probe {self.pk} queued {self.enqueued_at:%H:%M:%S}, started {self.started_at or 'not yet'}"


class UpStretch(models.Model):
    """One row per side of the shopper ("web", "safety"): since when it has been up without a gap.

    Every web process and every safety-loop pass touch their side's row (``sessions.uptime``);
    a touch that comes more than ``SHOPPER_UPTIME_GAP_SECONDS`` after the previous one starts a
    new stretch. Kept in the database so every process, on any host, sees the same stretch.
    """

    role = models.CharField(max_length=16, primary_key=True)
    since = models.DateTimeField()
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.role} up since {self.since:%Y-%m-%d %H:%M:%S} (seen {self.seen_at:%H:%M:%S})"


class SafetyLease(models.Model):
    """Which safety loop acts (sessions/leader.py). One row per lease name; a loop acts only
    while ``holder`` is itself and ``expires_at`` is ahead. Several loops (one per host) race
    for it with a compare-and-swap update, so it works the same on SQLite and PostgreSQL."""

    name = models.CharField(max_length=32, primary_key=True)
    holder = models.CharField(max_length=128, blank=True)
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.holder or 'nobody'} until {self.expires_at:%H:%M:%S}"


class ProviderBalance(models.Model):
    """A provider account's balance as last read by the safety loop (sessions/balances.py);
    shared by every process: the web refuses a rental the account cannot pay for from it."""

    provider = models.CharField(max_length=32, primary_key=True)
    balance = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    fetched_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.provider}: {self.balance}"


class DeploymentIdentity(models.Model):
    """This deployment's generated id (one row, pk=1), when SHOPPER_DEPLOYMENT_ID is not set."""

    deployment_id = models.CharField(max_length=32)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.deployment_id


class ForeignInstance(models.Model):
    """An instance labelled by another deployment on a shared provider account, as the last
    reconcile listing showed it. Listed on the safety page; never touched."""

    provider = models.CharField(max_length=32)
    provider_instance_id = models.CharField(max_length=128)
    label = models.CharField(max_length=255)
    deployment = models.CharField(max_length=32)
    state = models.CharField(max_length=32, blank=True)
    price_per_hour = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["deployment", "provider", "provider_instance_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_instance_id"], name="foreign_instance_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.provider_instance_id} ({self.label})"


@register()
def deployment_id_check(app_configs, **kwargs) -> list[Error]:
    """A bad SHOPPER_DEPLOYMENT_ID stops the start (migrate, web, safety loop), not a reconcile."""
    configured = settings.SHOPPER_DEPLOYMENT_ID or ""
    if not configured:
        return []
    try:
        validate_deployment_id(configured)
    except InvalidDeploymentId as exc:
        return [Error(str(exc), hint="Leave it empty to have one generated.", id="rentals.E001")]
    return []


@receiver(setting_changed)
def _deployment_setting_changed(*, setting: str, **kwargs) -> None:
    if setting == "SHOPPER_DEPLOYMENT_ID":
        deployment_reset_cache()
