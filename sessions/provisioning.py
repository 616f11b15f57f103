"""Provisioning a rental: create the instance, read it back, wait for it to run, install the keys,
prove SSH and the GPUs work, then ``active``; or fail and tear down what was made.

Safety rules (DESIGN.md) this module implements:
1. two-phase provisioning: the Rental row, with its label, is committed before any provider call
   (sessions/services.py rental_create);
2. every instance carries ``shopper-<uuid>``; after a create error the label is looked up before
   believing nothing was created;
3. a failure that may leave an instance goes to ``stopping``; teardown (sessions/teardown.py)
   destroys it and verifies it is gone.
One worker at a time holds the rental's provisioning lease (sessions/lease.py), passed with the
waits (sessions/waits.py) to every function that waits. Provider calls never run inside a
database transaction.
"""

from __future__ import annotations

import logging
import secrets
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from inventory import confidence
from inventory.models import Offer, OutcomeKind
from inventory.providers.base import (
    FEATURE_ATTACH_SSH_KEY,
    STATE_FAILED,
    STATE_RUNNING,
    STATE_STOPPED,
    AuthFailed,
    CreateRequest,
    InstanceData,
    NotFound,
    OfferUnavailable,
    Provider,
    ProviderError,
)
from sessions import failover, keys, presets
from sessions.lease import Lease, LeaseLost
from sessions.models import (
    IN_FLIGHT_STATUSES,
    LIVE_STATUSES,
    EventCause,
    EventKind,
    Rental,
    Status,
    token_hash,
)
from sessions.onstart import agent_env, agent_onstart, user_startup
from sessions.queue import enqueue
from sessions.services import rental_event, rental_transition
from sessions.ssh import (
    GPU_QUERY,
    GpuReport,
    SSHCheckFailed,
    authorized_key_remove_command,
    gpu_mismatch,
    gpu_report_parse,
)
from sessions.teardown import (
    _create_may_be_in_flight,
    _find_by_label,
    _instance_id_store,
    _provider,
    rental_teardown,
)
from sessions.waits import PRODUCTION, Waits
from shopper.logconfig import REDACTED

log = logging.getLogger(__name__)
S = Status


def rental_provision(*, rental_id, waits: Waits = PRODUCTION) -> None:
    """Create the instance, install the key, wait for it to run, prove SSH works, then ``active``.

    Idempotent: it re-reads the rental and resumes from its status, and never creates a second
    instance (the label is looked up before any create when a previous attempt may have sent one).
    One worker at a time holds the rental's provisioning lease; a duplicate delivery returns.
    """
    lease = Lease.claim(rental_id, "provision_claimed_until", IN_FLIGHT_STATUSES)
    if lease is None:  # ended, or another worker is provisioning it
        return
    with lease:
        try:
            for _ in range(settings.SHOPPER_FAILOVER_TRIES + 1):
                if not _provision(rental_id, lease, waits):
                    break
                lease.renew()  # failed over: the next offer, under the same lease
        except LeaseLost:
            log.warning("provisioning of %s stopped: another worker took it over", rental_id)


def rentals_resume_provisioning() -> int:
    """Enqueue provisioning for every in-flight rental no live worker holds (the safety loop's
    sweep and start-up recovery): a worker that died mid-way, or a task the broker lost, leaves
    its rental with an expired lease or none. A duplicate delivery is harmless (the lease)."""
    now = timezone.now()
    ids = list(
        Rental.objects.filter(status__in=IN_FLIGHT_STATUSES)
        # Not ones created a moment ago: their first task is still on its way.
        .filter(created_at__lt=now - timedelta(seconds=settings.SHOPPER_LEASE_SECONDS))
        .filter(Q(provision_claimed_until__isnull=True) | Q(provision_claimed_until__lt=now))
        .values_list("pk", flat=True)
    )
    for rental_id in ids:
        enqueue("sessions.tasks.provision", rental_id)
    return len(ids)


def _provision(rental_id, lease: Lease, waits: Waits) -> bool:
    """One attempt; True when it failed over (the rental is pending again on another offer).

    The failed instance of a failover is torn down here, at once, so the next offer follows
    without waiting for the queue (a queued teardown then finds the lease taken or the work done).
    """
    _provision_attempt(rental_id, lease, waits)
    rental = Rental.objects.filter(pk=rental_id).first()
    if rental is not None and rental.status == S.STOPPING and rental.failover_pending:
        rental_teardown(rental_id=rental_id, waits=waits)
        rental.refresh_from_db()
    return rental is not None and rental.status == S.PENDING


def _provision_attempt(rental_id, lease: Lease, waits: Waits) -> None:
    rental = Rental.objects.filter(pk=rental_id).first()
    if rental is None or rental.status not in IN_FLIGHT_STATUSES:
        return
    provider = _provider(rental)
    # Already provisioning on entry: an earlier attempt may have sent the create before dying.
    resumed = rental.status == S.PROVISIONING
    if rental.status == S.PENDING and not rental_transition(
        rental, S.PROVISIONING, reason=f"Creating the instance at {provider.display_name}"
    ):
        return  # someone else moved it (stopped, or another worker claimed it)
    try:
        if rental.status == S.PROVISIONING and not _instance_create(
            rental, provider, lease, waits, resumed=resumed
        ):
            return
        endpoints: tuple[tuple[str, int], ...] | None = None
        if rental.status == S.BOOTING:
            instance = _instance_wait_running(rental, provider, lease, waits)
            if instance is None:
                return
            endpoints = instance.ssh_endpoints
            _instance_readback(rental, instance)
            if not rental_transition(
                rental,
                S.VERIFYING,
                reason="The instance is running; checking that SSH works",
                ssh_host=instance.ssh_host,
                ssh_port=instance.ssh_port,
                ssh_user=instance.ssh_user or "root",
            ):
                return
        if rental.status == S.VERIFYING:
            _ssh_verify(rental, provider, endpoints, lease, waits)
        if rental.status == S.ACTIVE:
            rental_health_check(rental)  # once at once; then the minute job (rentals_health_check)
    except ProviderError as exc:
        rental.refresh_from_db()
        _stop_after_failure(rental, f"Provisioning failed: {exc.code}: {exc.message}"[:500])


def _instance_create(
    rental: Rental, provider: Provider, lease: Lease, waits: Waits, *, resumed: bool = False
) -> bool:
    """provisioning -> booting with the instance id stored. Returns False if the rental moved.

    When resuming, the label is looked up until a create sent by the dead attempt would have
    shown in the listing (SHOPPER_CREATE_SETTLE_SECONDS after provisioning began): listings lag,
    and one miss must not lead to a second instance.
    """
    instance_id = rental.provider_instance_id
    while not instance_id and resumed:
        instance = _find_by_label(provider, rental)
        if instance:
            instance_id = instance.instance_id
            rental_event(rental, EventKind.INFO, f"Resumed: found instance {instance_id} by its label")
        elif not _create_may_be_in_flight(rental):
            break
        else:
            waits.wait(lease, max(settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS, 0.01))
    if not instance_id:
        agent_token = secrets.token_urlsafe(32)
        Rental.objects.filter(pk=rental.pk).update(agent_token_hash=token_hash(agent_token))
        request = CreateRequest(
            offer_id=rental.provider_offer_id,
            label=rental.label,
            ssh_public_key=_install_keys(rental),
            image=rental.image,
            disk_gb=rental.disk_gb,
            onstart=user_startup(presets.startup_script(rental.preset, rental.onstart)) + agent_onstart(),
            env=agent_env(rental, agent_token),
            ports=tuple(rental.ports or ()),
        )
        for delay in (*CREATE_401_RETRY_SECONDS, None):
            try:
                instance_id = provider.create_instance(request)
                break
            except ProviderError as exc:
                # A provider may quote our request back in its error: the agent's token must not
                # reach the timeline (pages, API, audit) or a log line with it.
                exc.message = exc.message.replace(agent_token, REDACTED)
                exc.args = (exc.message,)
                if delay is not None and isinstance(exc, AuthFailed):
                    retry, instance_id = _create_401_retryable(rental, provider, exc, delay, lease, waits)
                    if instance_id:
                        break
                    if retry:
                        continue
                instance_id = _instance_after_create_error(rental, provider, exc, lease, waits)
                if not instance_id:
                    return False
                break
    _instance_id_store(rental, instance_id)
    rental.refresh_from_db()
    if rental.status != S.PROVISIONING:
        # Stopped while we were creating: the teardown now knows the id and destroys it.
        return False
    if provider.supports(FEATURE_ATTACH_SSH_KEY):
        for line in _install_keys(rental).splitlines():
            provider.attach_ssh_key(instance_id, line)
    return rental_transition(
        rental, S.BOOTING, reason=f"Instance {instance_id} created; waiting for it to boot"
    )


# A read-back price further than this from the one shown is recorded on the timeline (issue 14).
PRICE_DIFFERENCE_PERCENT = Decimal("1")


def _instance_readback(rental: Rental, instance: InstanceData) -> None:
    """Once the instance runs: bill the instance's own hourly rate (Vast ``dph_total`` of the
    instance, TensorDock ``rateHourly``: PROVIDERS.md 1.5, 2.2b) instead of our estimate, and
    keep the host:port the provider mapped each exposed port to. Before active, so billing never
    starts at the estimate. A difference over 1 % from the price shown is put on the timeline."""
    fields: dict[str, Any] = {}
    if rental.ports:
        fields["mapped_ports"] = {
            str(p): f"{instance.ports[p][0]}:{instance.ports[p][1]}"
            for p in rental.ports
            if p in instance.ports
        }
    read = instance.price_per_hour
    if read is not None and read > 0 and read != rental.price_per_hour:
        fields["price_per_hour"] = read
        shown = rental.shown_price_per_hour or rental.price_per_hour
        diff = ((read - shown) / shown * 100).quantize(Decimal("0.01")) if shown else Decimal("100")
        if abs(diff) > PRICE_DIFFERENCE_PERCENT:
            rental_event(
                rental, EventKind.WARNING,
                f"{instance.provider} bills this machine ${read}/h, {diff:+}% from the ${shown}/h you "
                "were shown; you are billed the provider's rate",
                data={"price_shown": str(shown), "price_billed": str(read), "difference_percent": str(diff)},
            )  # fmt: skip
    if fields:
        Rental.objects.filter(pk=rental.pk).update(**fields)
        for name, value in fields.items():
            setattr(rental, name, value)


# How long after active an inference preset's health check is still asked (models load slowly:
# FIELD_NOTES VA-LOADING saw vLLM take over 10 min), and how long one ask may take.
HEALTH_WATCH = timedelta(hours=1)
HEALTH_TIMEOUT_SECONDS = 3


def rental_health_check(rental: Rental) -> bool:
    """Ask the preset's HTTP health check on its mapped port once; on the first answer record
    ``health_ok_at`` and an event (the page then says the server answers). Never in a transaction."""
    found = presets.health_port(rental.preset, rental.ports)
    address = (rental.mapped_ports or {}).get(str(found[0])) if found else None
    if not found or not address or rental.health_ok_at or rental.status != S.ACTIVE:
        return False
    url = f"http://{address}{found[1]}"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_SECONDS) as resp:
            if not 200 <= resp.status < 300:
                return False
    except (OSError, ValueError):
        return False
    now = timezone.now()
    if Rental.objects.filter(pk=rental.pk, health_ok_at__isnull=True).update(health_ok_at=now):
        rental.health_ok_at = now
        rental_event(rental, EventKind.INFO, f"The inference server answers its health check: {url}")
    return True


def rentals_health_check() -> int:
    """The minute job: every recently active rental whose preset server has not answered yet."""
    since = timezone.now() - HEALTH_WATCH
    rentals = Rental.objects.filter(status=S.ACTIVE, health_ok_at__isnull=True, active_since__gte=since)
    return sum(rental_health_check(r) for r in rentals.exclude(preset="").exclude(ports=[]))


# FIELD_NOTES TD-AUTH401: TensorDock answered creates with 401 for valid keys (8 sessions in one
# run, cause never found). A 401 on create while a read with the same key works is retried after
# these waits; a 401 the read confirms is a credential outage and fails at once.
CREATE_401_RETRY_SECONDS = (5.0, 20.0)


def _create_401_retryable(
    rental: Rental, provider: Provider, exc: ProviderError, delay: float, lease: Lease, waits: Waits
) -> tuple[bool, str]:
    """After a 401 on create: (retry?, instance id if the create happened after all).

    The read is the label lookup, so an instance made despite the 401 is adopted, never doubled."""
    try:
        instance = _find_by_label(provider, rental)
    except ProviderError:
        return False, ""  # reads fail too: the key really is refused
    if instance:
        rental_event(
            rental, EventKind.INFO, f"Found instance {instance.instance_id} by its label after a 401"
        )
        return False, instance.instance_id
    rental_event(
        rental,
        EventKind.WARNING,
        f"{rental.provider} refused the create with 401 although reads with the same key work "
        f"(a known provider fault); trying again in {delay:.0f} s",
        data={"code": exc.code, "retry_in_s": delay, "cause": EventCause.CREATE_401},
    )
    waits.wait(lease, delay)
    return True, ""


def _instance_after_create_error(
    rental: Rental, provider: Provider, exc: ProviderError, lease: Lease, waits: Waits
) -> str:
    """Decide what a create error means. Returns the instance id if one exists after all.

    The provider may have created the instance although it answered with an error (Vast's
    ``success: false`` with ``new_contract``, a 5xx after the fact), and its listing may lag.
    """
    rental_event(
        rental,
        EventKind.ERROR,
        f"Create answered {exc.code}: {exc.message}"[:500],
        data={"cause": EventCause.CREATE_FAILED, "code": exc.code, "provider_error": exc.message[:500]},
    )
    if exc.instance_id:
        _instance_id_store(rental, exc.instance_id)
        rental.refresh_from_db()
        _stop_after_failure(rental, "The provider created the instance but reported an error; destroying it")
        return ""
    lookups = 1 if isinstance(exc, OfferUnavailable) else settings.SHOPPER_LABEL_LOOKUPS_AFTER_ERROR
    confirmed_empty = False
    for attempt in range(max(1, lookups)):
        if attempt:
            waits.wait(lease, settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS)
        try:
            instance = _find_by_label(provider, rental)
        except ProviderError:
            continue
        if instance:
            rental_event(
                rental, EventKind.INFO, f"Found instance {instance.instance_id} by its label after the error"
            )
            return instance.instance_id
        confirmed_empty = True
    rental.refresh_from_db()
    # Recorded against the offer that failed, before a failover moves the rental on.
    confidence.outcome_record(rental, confidence.create_error_kind(exc), exc.message)
    if isinstance(exc, OfferUnavailable):
        _offer_failed(rental)
    if not confirmed_empty:
        # No listing answered: nothing proves the create did not happen. failed would be a
        # guess; stopping keeps looking (teardown finds the label or confirms it absent).
        _stop_after_failure(rental, f"Create failed ({exc.code}) and the label lookup did not answer")
        return ""
    _create_failed(rental, exc)
    return ""


def _create_failed(rental: Rental, exc: ProviderError) -> None:
    """No instance exists (the label lookup confirmed it): fail over to the next offer when the
    refusal was about the offer, else ``failed``."""
    offer_id = rental.offer_id
    why = f"Could not create the instance: {exc.message}"
    reason = failover.create_error_reason(exc)
    if rental.status != S.PROVISIONING:
        return
    if failover.failover_ready(rental, reason) and failover.failover_move(
        rental, reason, why[:300], provision_failed=True
    ):
        return
    if rental.failover and reason:
        failover.none_record(rental, reason)
        why = f"{why}; {failover.none_message(rental)}"
    rental_transition(
        rental, S.FAILED, reason=why[:500], data={PROVISION_FAILED: True, "failed_offer_id": offer_id},
        ended_at=timezone.now(),
    )  # fmt: skip


def _offer_failed(rental: Rental) -> None:
    if rental.offer_id:
        Offer.objects.filter(pk=rental.offer_id).update(available=False)


def _instance_wait_running(
    rental: Rental, provider: Provider, lease: Lease, waits: Waits
) -> InstanceData | None:
    """Poll until the instance runs and has an SSH endpoint. None if the rental moved or failed."""
    deadline = timezone.now() + timedelta(seconds=settings.SHOPPER_BOOT_TIMEOUT_SECONDS)
    missing = 0
    while True:
        rental.refresh_from_db()
        if rental.status != S.BOOTING:
            return None
        try:
            instance = provider.get_instance(rental.provider_instance_id)
            missing = 0
        except NotFound:
            missing += 1
            instance = None
            if missing >= 3:
                confidence.outcome_record(rental, OutcomeKind.DIED_EARLY, "disappeared while booting")
                _stop_after_failure(
                    rental, "The instance disappeared while booting", failover_reason=failover.MACHINE_DIED
                )
                return None
        except ProviderError as exc:
            if not exc.transient:
                raise
            instance = None
        if instance and instance.state == STATE_FAILED:
            confidence.outcome_record(
                rental, confidence.start_failure_kind(instance.status_message), instance.status_message
            )
            _stop_after_failure(
                rental,
                f"The instance failed to start: {instance.raw_status} {instance.status_message}",
                data={
                    "cause": EventCause.INSTANCE_FAILED,
                    "provider_error": f"{instance.raw_status} {instance.status_message}"[:500],
                },
                failover_reason=failover.MACHINE_DIED,
            )
            return None
        if instance and instance.state == STATE_RUNNING and instance.ssh_host and instance.ssh_port:
            return instance
        if timezone.now() >= deadline:
            confidence.outcome_record(
                rental, OutcomeKind.SSH_NEVER_UP, "did not start within the boot timeout"
            )
            _stop_after_failure(
                rental,
                "The instance did not start within the boot timeout",
                data={"cause": EventCause.BOOT_TIMEOUT},
                failover_reason=failover.MACHINE_DIED,
            )
            return None
        waits.wait(lease, settings.SHOPPER_POLL_INTERVAL_SECONDS)


def _verify_key(rental: Rental) -> str | None:
    """The private key the check logs in with: the generated one (the user's own, so the login
    the user will make is the one proved), else our per-rental verification key."""
    if rental.ssh_private_key_encrypted:
        return keys.secret_decrypt(rental.ssh_private_key_encrypted)
    if rental.verify_private_key_encrypted:
        return keys.secret_decrypt(rental.verify_private_key_encrypted)
    return None


def _public_of(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{public.decode()} shopper-verify"


def _install_keys(rental: Rental) -> str:
    """The public keys the instance gets: the rental's, plus (when the user brought their own key,
    which we cannot log in with) a per-rental verification key of ours, made once and kept
    encrypted on the rental so a resumed check uses the same one."""
    if rental.ssh_private_key_encrypted:
        return rental.ssh_public_key
    if not rental.verify_private_key_encrypted:
        _, private_pem = keys.keypair_generate("shopper-verify")
        encrypted = keys.secret_encrypt(private_pem)
        Rental.objects.filter(pk=rental.pk).update(verify_private_key_encrypted=encrypted)
        rental.verify_private_key_encrypted = encrypted
    verify_public = _public_of(keys.secret_decrypt(rental.verify_private_key_encrypted))
    return "\n".join([*rental.ssh_public_key.splitlines(), verify_public])


def _gpu_verify_timeout(provider_name: str) -> float:
    """SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS, or the provider's own from
    SHOPPER_GPU_VERIFY_TIMEOUT_OVERRIDES (TensorDock's driver repair takes 2-5 min, TD-NODRIVER)."""
    overrides = getattr(settings, "SHOPPER_GPU_VERIFY_TIMEOUT_OVERRIDES", {}) or {}
    return float(overrides.get(provider_name, settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS))


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"


def _ssh_endpoints(
    rental: Rental, provider: Provider, endpoints: tuple[tuple[str, int], ...] | None
) -> list[tuple[str, int]]:
    """The stored endpoint first, then the provider's others (Vast: direct, then its proxy
    ``ssh_host:ssh_port``; direct SSH did not answer where the proxy did, FIELD_NOTES VA-SSH).
    A resumed check asks the provider once; if it cannot answer, the stored endpoint is tried."""
    if endpoints is None:
        try:
            endpoints = provider.get_instance(rental.provider_instance_id).ssh_endpoints
        except ProviderError:
            endpoints = ()
    out = [(rental.ssh_host, rental.ssh_port)] if rental.ssh_host and rental.ssh_port else []
    return out + [e for e in endpoints if e not in out]


def _instance_stopped(rental: Rental, provider: Provider) -> str:
    """Why the instance will never answer ("" while it may): it stopped or failed right after
    starting (TD-STOPS, VA-DIES) or is gone. A provider error is not an answer."""
    try:
        instance = provider.get_instance(rental.provider_instance_id)
    except NotFound:
        return "The machine disappeared at the provider before it could be checked"
    except ProviderError:
        return ""
    if instance.state in (STATE_STOPPED, STATE_FAILED):
        status = f"{instance.raw_status} {instance.status_message}".strip()
        return f"The machine stopped right after starting ({status})"
    return ""


@dataclass
class _SSHCheck:
    """What one SSH/GPU check carries from round to round."""

    private_key: str | None
    candidates: list[tuple[str, int]]
    ssh_deadline: Any
    gpu_timeout: float
    offer_cuda: str
    gpu_deadline: Any = None  # set at the first login
    last_error: str = ""
    gpu_error: str = ""


def _ssh_verify(
    rental: Rental,
    provider: Provider,
    endpoints: tuple[tuple[str, int], ...] | None,
    lease: Lease,
    waits: Waits,
) -> None:
    """Prove the handoff: log in over SSH and check, with nvidia-smi, that the machine has the GPUs
    that were sold (model, count, VRAM, CUDA at least what the offer said) before ``active``.

    The login uses the generated key, or our verification key beside the user's own (removed from
    authorized_keys once the check passed). Every endpoint is tried each round and the one that
    answers is handed off. Logging in is retried until the SSH timeout; from the first login the
    GPUs have SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS (per provider) to work (TensorDock repairs its
    driver at boot, TD-NODRIVER). A machine that is not what was sold, never logs in, never gets a
    working driver or stops is torn down, the offer hidden, and nothing is billed (billing starts
    at ``active``)."""
    check = _SSHCheck(
        private_key=_verify_key(rental),
        candidates=_ssh_endpoints(rental, provider, endpoints),
        ssh_deadline=timezone.now() + timedelta(seconds=settings.SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS),
        gpu_timeout=_gpu_verify_timeout(rental.provider),
        offer_cuda=rental.offer.cuda_version if rental.offer_id and rental.offer else "",
    )
    while True:
        if check.gpu_deadline is None and timezone.now() >= check.ssh_deadline:
            break
        if check.gpu_deadline is not None and timezone.now() >= check.gpu_deadline:
            why = f"had no working NVIDIA driver after {_minutes(check.gpu_timeout)} ({check.gpu_error})"
            if not check.gpu_error:  # logged in once, then never again
                why = f"could not be checked within {_minutes(check.gpu_timeout)}: {check.last_error}"
            confidence.outcome_record(rental, OutcomeKind.NO_GPU, why)
            _stop_after_gpu_failure(
                rental,
                f"The machine {why}",
                cause=EventCause.GPU_NO_DRIVER if check.gpu_error else EventCause.SSH_FAILED,
                failover_reason=failover.GPU_BROKEN,
            )
            return
        rental.refresh_from_db()
        if rental.status != S.VERIFYING:
            return
        logged_in, finished = _ssh_verify_round(rental, check, waits)
        if finished:
            return
        waits.wait(lease, settings.SHOPPER_POLL_INTERVAL_SECONDS)
        if not logged_in:  # a machine that stopped will never answer: ask the provider
            stopped = _instance_stopped(rental, provider)
            if stopped:
                rental.refresh_from_db()
                confidence.outcome_record(rental, OutcomeKind.DIED_EARLY, stopped)
                _stop_after_failure(
                    rental,
                    f"{stopped}. It was destroyed and you pay nothing."[:500],
                    data={"cause": EventCause.MACHINE_STOPPED},
                    failover_reason=failover.MACHINE_DIED,
                )
                return
    confidence.outcome_record(rental, OutcomeKind.SSH_NEVER_UP, check.last_error)
    _stop_after_failure(
        rental,
        f"Could not log in over SSH within the timeout: {check.last_error}"[:500],
        data={"cause": EventCause.SSH_FAILED},
        failover_reason=failover.SSH_NEVER_UP,
    )


def _ssh_verify_round(rental: Rental, check: _SSHCheck, waits: Waits) -> tuple[bool, bool]:
    """Try every endpoint once: (logged in, finished: active or torn down)."""
    logged_in = False
    for host, port in check.candidates:
        user = rental.ssh_user or "root"
        try:
            if check.private_key is None:
                # Rented before verification keys existed: nothing of ours can log in.
                output = waits.ssh_banner(host=host, port=port)
            else:
                output = waits.ssh_run(
                    host=host, port=port, user=user, private_key=check.private_key, command=GPU_QUERY
                )
        except SSHCheckFailed as exc:
            check.last_error = f"{exc} ({host}:{port})" if len(check.candidates) > 1 else str(exc)
            continue
        logged_in = True
        if check.private_key is None:
            _active(rental, host, port, "SSH is up; log in with your own key (GPUs not checked)", output)
            return True, True
        if check.gpu_deadline is None:
            check.gpu_deadline = timezone.now() + timedelta(seconds=check.gpu_timeout)
        report = gpu_report_parse(output)
        if report.error:
            if check.gpu_error != report.error:
                rental_event(rental, EventKind.INFO, f"Logged in; the GPUs do not work yet: {report.error}")
            check.gpu_error = report.error
            break  # the same machine behind every endpoint: wait and ask again
        if _gpu_handoff(rental, check, waits, (host, port, user), report, output):
            return True, True
    return logged_in, False


def _gpu_handoff(
    rental: Rental,
    check: _SSHCheck,
    waits: Waits,
    login: tuple[str, int, str],
    report: GpuReport,
    output: str,
) -> bool:
    """The GPUs answered: tear down a machine that is not what was rented, else remove our
    verification key and hand it over (``active``). False when the key removal failed (the
    next endpoint, or the next round, tries again)."""
    host, port, user = login
    mismatch = gpu_mismatch(
        report,
        gpu_type=rental.gpu_type,
        gpu_count=rental.gpu_count,
        vram_gb=rental.vram_gb,
        cuda=check.offer_cuda,
    )
    if mismatch:
        confidence.outcome_record(rental, confidence.gpu_mismatch_kind(mismatch), mismatch)
        _stop_after_gpu_failure(
            rental,
            f"The machine is not what was rented: {mismatch}",
            report,
            cause=EventCause.GPU_MISMATCH,
            failover_reason=failover.mismatch_reason(mismatch),
        )
        return True
    if not rental.ssh_private_key_encrypted:
        try:  # our verification key leaves the machine before it is handed over
            waits.ssh_run(
                host=host, port=port, user=user, private_key=check.private_key,
                command=authorized_key_remove_command(_public_of(check.private_key)),
            )  # fmt: skip
        except SSHCheckFailed as exc:
            check.last_error = f"removing the verification key: {exc}"
            return False
    reason = (
        f"SSH login and GPUs verified ({report.count}× {report.name}, "
        f"driver {report.driver}, CUDA {report.cuda or 'unknown'}); the machine is yours"
    )
    _active(rental, host, port, reason, output, gpu_verified=report.as_json())
    return True


def _active(
    rental: Rental, host: str, port: int, reason: str, output: str, gpu_verified: dict | None = None
) -> None:
    if (host, port) != (rental.ssh_host, rental.ssh_port):
        reason += f" (through {host}:{port}; {rental.ssh_host}:{rental.ssh_port} did not answer)"
    rental_transition(
        rental, S.ACTIVE, reason=reason, data={"check": output.strip()[:500]},
        active_since=timezone.now(), ssh_host=host, ssh_port=port,
        gpu_verified=gpu_verified, verify_private_key_encrypted="",
    )  # fmt: skip
    if rental.status == S.ACTIVE:
        confidence.outcome_record(rental, OutcomeKind.SUCCESS)


def _stop_after_gpu_failure(
    rental: Rental,
    reason: str,
    report: GpuReport | None = None,
    *,
    cause: str,
    failover_reason: str = "",
) -> None:
    """The machine is not what was sold, or its GPUs never worked: torn down like any failed
    provisioning; the caller records the outcome, which hides its host at once (it lied, or it
    hands over broken drivers: FIELD_NOTES TD-NODRIVER, VA-CUDA-LIE; inventory/confidence.py)."""
    rental.refresh_from_db()
    data = {"cause": cause, **({"gpu_found": report.as_json()} if report else {})}
    if rental.status == S.VERIFYING:
        _stop_after_failure(
            rental, f"{reason}. It was destroyed and you pay nothing."[:500], data=data,
            failover_reason=failover_reason,
        )  # fmt: skip


def _stop_after_failure(
    rental: Rental, reason: str, data: dict | None = None, *, failover_reason: str = ""
) -> bool:
    """A failure that may leave an instance goes to stopping (never straight to failed).
    When the failure is about the offer (``failover_reason``) and the rental may fail over, the
    teardown moves it on to the next offer once the instance is gone (``failover_pending``).
    Returns whether this call moved the rental."""
    if rental.status not in LIVE_STATUSES or rental.status == S.STOPPING:
        return False
    pending = failover_reason if failover.failover_ready(rental, failover_reason) else ""
    data = {PROVISION_FAILED: True, "failed_offer_id": rental.offer_id, **(data or {})}
    if pending:
        data["failover_pending"] = pending
    if not rental_transition(
        rental, S.STOPPING, reason=reason, data=data, stop_requested_at=timezone.now(),
        failover_pending=pending,
    ):  # fmt: skip
        return False
    transaction.on_commit(lambda: enqueue("sessions.tasks.teardown", rental.pk))
    _failure_record(rental, reason)
    if failover_reason and not pending:
        failover.none_record(rental, failover_reason)
    return True


# Marks the timeline events of failed provisioning.
PROVISION_FAILED = "provision_failed"


def _failure_record(rental: Rental, reason: str) -> None:
    """Every provisioning failure is an outcome of its offer: ``other`` unless the call site
    already recorded the specific reason (the first one stands). Recording it applies the hiding
    policy of inventory/confidence.py (it replaced "3 failures in 30 min hide an offer"). Called
    before a failover moves the rental to another offer, so it counts against the one that failed."""
    confidence.outcome_record(rental, OutcomeKind.OTHER, reason)
