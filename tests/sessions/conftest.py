"""A scriptable in-memory cloud ("fakecloud") for the rental state machine and workflows.

Nothing here is autouse: a test (or a module's ``pytestmark``) asks for the ``fake`` fixture, so
other test modules in this folder keep their own fakes.

``fake`` is a :class:`Cloud`: the provider adapter (:class:`FakeCloud`, built fresh by the registry
on every ``get_provider``) reads and writes it. It also owns a fake clock: ``sessions.services._sleep``
advances frozen time (``timezone.now``, via time-machine) and the monotonic clock the teardown
budget uses, so every wait of the services is instant and deterministic. SSH checks go to
:meth:`Cloud.ssh_run` / :meth:`Cloud.ssh_banner`, which accept a login only when the private key
matches a public key installed on the instance at that host and port.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from django.utils import timezone
from django.utils.module_loading import import_string

from inventory import providers as registry
from inventory.providers.base import (
    FEATURE_ATTACH_SSH_KEY,
    FEATURE_LABEL_LOOKUP,
    STATE_BOOTING,
    STATE_DELETING,
    STATE_RUNNING,
    CreateRequest,
    InstanceData,
    NotFound,
    OfferData,
    PermanentError,
    Provider,
    Transient,
)
from sessions import keys, services
from sessions.models import Rental, RentalEvent, Status
from sessions.ssh import SSHCheckFailed

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
GPU_OUTPUT = "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-fake-0)\n"
BANNER = "SSH-2.0-OpenSSH_9.6"


@dataclass
class Instance:
    instance_id: str
    label: str
    offer_id: str
    state: str = STATE_BOOTING
    ssh_host: str = ""
    ssh_port: int | None = None
    ssh_user: str = "root"
    keys: list[str] = field(default_factory=list)  # installed public key lines
    polls: int = 0  # get_instance calls so far
    hidden_lists: int = 0  # list_instances calls that still do not show it (listing lag)
    deleting_polls: int | None = None  # set once destroyed: get_instance calls still answering "deleting"
    request: CreateRequest | None = None

    def data(self) -> InstanceData:
        return InstanceData(
            provider="fakecloud",
            instance_id=self.instance_id,
            label=self.label,
            state=self.state,
            raw_status=self.state,
            ssh_host=self.ssh_host,
            ssh_port=self.ssh_port,
            ssh_user=self.ssh_user,
        )


class Cloud:
    """The in-memory cloud and everything a test scripts about it."""

    def __init__(self, traveller):
        self.traveller = traveller
        self.offers: dict[str, OfferData] = {}
        self.instances: dict[str, Instance] = {}
        # Scripted failures per operation ("get_offer", "create", "get", "list", "destroy",
        # "attach"), raised in order, one per call, before the operation does anything.
        self.fail: dict[str, list[Exception]] = defaultdict(list)
        # Calls that run a hook first (e.g. a concurrent stop while the create is on the wire).
        self.hooks: dict[str, Any] = {}
        self.calls: list[tuple[str, Any]] = []
        self.features = frozenset({FEATURE_ATTACH_SSH_KEY, FEATURE_LABEL_LOOKUP})
        # create stores the instance, then raises Transient this many times ("error but created").
        self.create_error_but_created = 0
        # create stores the instance, then raises PermanentError(instance_id=...) this many times.
        self.created_but_failed = 0
        self.list_lag = 0  # a new instance is hidden from this many list_instances calls
        self.boot_polls = 1  # get_instance calls answering "booting" before the final state
        self.boot_to = STATE_RUNNING  # the state an instance reaches after booting
        self.destroy_lag = 0  # get_instance calls answering "deleting" after a destroy
        self._ids = itertools.count(1001)
        self._ports = itertools.count(40001)
        # SSH: scripted failures of the next checks; ssh_down fails every check.
        self.ssh_fail: list[str] = []
        self.ssh_down = False
        self.ssh_calls: list[dict[str, Any]] = []
        # Background work: what the services enqueued; run_tasks=True runs each task at once
        # (directly, so a failing task fails the test); "q" goes through django-q2 (Q_SYNC).
        self.enqueued: list[tuple[str, Any]] = []
        self.run_tasks: bool | str = False
        self.sleeps: list[float] = []
        self.mono = 1_000.0

    # -- scripting helpers ---------------------------------------------------------------------
    def add_offer(self, offer_id: str, price: str = "1.0000", gpu_count: int = 1) -> OfferData:
        data = OfferData(
            provider="fakecloud",
            provider_offer_id=offer_id,
            gpu_type="RTX 4090 24GB",
            gpu_count=gpu_count,
            vram_gb=24,
            price_per_hour=Decimal(price),
            location="Oregon, US",
        )
        self.offers[offer_id] = data
        return data

    def add_instance(self, label: str, state: str = STATE_BOOTING, offer_id: str = "") -> Instance:
        """An instance that exists at the provider without us having created it in this test."""
        inst = Instance(instance_id=str(next(self._ids)), label=label, offer_id=offer_id, state=state)
        self.instances[inst.instance_id] = inst
        return inst

    def count(self, op: str) -> int:
        return sum(1 for name, _ in self.calls if name == op)

    def args(self, op: str) -> list[Any]:
        return [arg for name, arg in self.calls if name == op]

    def ops(self) -> list[str]:
        return [name for name, _ in self.calls]

    @property
    def now(self) -> datetime:
        return timezone.now()

    # -- the provider side -----------------------------------------------------------------------
    def _call(self, op: str, arg: Any = None) -> None:
        self.calls.append((op, arg))
        if op in self.hooks:
            self.hooks[op](arg)
        if self.fail[op]:
            raise self.fail[op].pop(0)

    def get_offer(self, offer_id: str) -> OfferData | None:
        self._call("get_offer", offer_id)
        return self.offers.get(offer_id)

    def create_instance(self, request: CreateRequest) -> str:
        self._call("create", request)
        inst = Instance(
            instance_id=str(next(self._ids)),
            label=request.label,
            offer_id=request.offer_id,
            hidden_lists=self.list_lag,
            request=request,
        )
        if FEATURE_ATTACH_SSH_KEY not in self.features:  # the key rides in the create request
            inst.keys = [line for line in request.ssh_public_key.splitlines() if line]
        self.instances[inst.instance_id] = inst
        if self.create_error_but_created:
            self.create_error_but_created -= 1
            raise Transient("502 Bad Gateway (but the instance was created)", status=502)
        if self.created_but_failed:
            self.created_but_failed -= 1
            raise PermanentError(
                "success: false, error: invalid_args", status=400, instance_id=inst.instance_id
            )
        return inst.instance_id

    def get_instance(self, instance_id: str) -> InstanceData:
        self._call("get", instance_id)
        inst = self.instances.get(instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id} not found", status=404)
        if inst.deleting_polls is not None:
            if inst.deleting_polls <= 0:
                del self.instances[instance_id]
                raise NotFound(f"instance {instance_id} not found", status=404)
            inst.deleting_polls -= 1
            inst.state = STATE_DELETING
            return inst.data()
        inst.polls += 1
        if inst.state == STATE_BOOTING and inst.polls > self.boot_polls:
            inst.state = self.boot_to
            if inst.state == STATE_RUNNING:
                inst.ssh_host, inst.ssh_port = "203.0.113.7", next(self._ports)
        return inst.data()

    def list_instances(self, label_prefix: str) -> list[InstanceData]:
        self._call("list", label_prefix)
        out = []
        for inst in list(self.instances.values()):
            if inst.hidden_lists > 0:
                inst.hidden_lists -= 1
                continue
            if inst.label.startswith(label_prefix) and inst.deleting_polls is None:
                out.append(inst.data())
        return out

    def destroy_instance(self, instance_id: str) -> None:
        self._call("destroy", instance_id)
        inst = self.instances.get(instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id} not found", status=404)
        if inst.deleting_polls is None:
            inst.deleting_polls = self.destroy_lag

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None:
        self._call("attach", (instance_id, public_key))
        inst = self.instances.get(instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id} not found", status=404)
        inst.keys.append(public_key)

    # -- SSH ---------------------------------------------------------------------------------------
    def _ssh_target(self, host: str, port: int) -> Instance:
        for inst in self.instances.values():
            if inst.ssh_host == host and inst.ssh_port == port and inst.state == STATE_RUNNING:
                return inst
        raise SSHCheckFailed(f"ConnectionRefusedError: {host}:{port}")

    def _ssh_scripted_failure(self) -> None:
        if self.ssh_down:
            raise SSHCheckFailed("TimeoutError: connection timed out")
        if self.ssh_fail:
            raise SSHCheckFailed(self.ssh_fail.pop(0))

    def ssh_run(self, *, host, port, user, private_key, command, timeout=15) -> str:
        self.ssh_calls.append(
            {"kind": "run", "host": host, "port": port, "user": user, "key": private_key, "command": command}
        )
        self._ssh_scripted_failure()
        inst = self._ssh_target(host, port)
        public = public_of(private_key)
        if not any(line.split()[:2] == public.split()[:2] for line in inst.keys):
            raise SSHCheckFailed("PermissionDenied: Permission denied (publickey)")
        return GPU_OUTPUT

    def ssh_banner(self, *, host, port, timeout=10) -> str:
        self.ssh_calls.append({"kind": "banner", "host": host, "port": port})
        self._ssh_scripted_failure()
        self._ssh_target(host, port)
        return BANNER

    # -- time and background work --------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) > 5_000:
            raise RuntimeError("runaway wait loop in the code under test")
        self.mono += seconds
        self.traveller.shift(timedelta(seconds=seconds))

    def monotonic(self) -> float:
        return self.mono

    def enqueue(self, func: str, *args: Any) -> None:
        self.enqueued.append((func, *args))
        if self.run_tasks == "q":
            _real_enqueue(func, *args)
        elif self.run_tasks:
            import_string(func)(*args)


_real_enqueue = services.enqueue


class FakeCloud(Provider):
    """The adapter the registry builds; every call goes to the test's :class:`Cloud`."""

    name = "fakecloud"
    display_name = "Fake Cloud"
    min_interval = 0.0
    cloud: Cloud | None = None

    def supports(self, feature: str) -> bool:
        return feature in self.cloud.features

    def get_offer(self, offer_id):
        return self.cloud.get_offer(offer_id)

    def create_instance(self, request):
        return self.cloud.create_instance(request)

    def get_instance(self, instance_id):
        return self.cloud.get_instance(instance_id)

    def list_instances(self, label_prefix):
        return self.cloud.list_instances(label_prefix)

    def destroy_instance(self, instance_id):
        return self.cloud.destroy_instance(instance_id)

    def attach_ssh_key(self, instance_id, public_key):
        return self.cloud.attach_ssh_key(instance_id, public_key)


class _FakeTime:
    """Stands in for the ``time`` module inside sessions.services (only monotonic is used)."""

    def __init__(self, cloud: Cloud):
        self.monotonic = cloud.monotonic
        self.sleep = cloud.sleep


def public_of(private_pem: str) -> str:
    key = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


@pytest.fixture
def fake(settings, monkeypatch, db):
    registry.register_provider("fakecloud", f"{__name__}.FakeCloud")
    settings.FAKECLOUD_API_KEY = "fake-key"
    settings.SHOPPER_POLL_INTERVAL_SECONDS = 5
    settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS = 10
    settings.SHOPPER_LABEL_LOOKUPS_AFTER_ERROR = 3
    settings.SHOPPER_HARD_MAX_HOURS = 12
    settings.SHOPPER_MAX_LIVE_RENTALS = 20
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("0")
    settings.SHOPPER_BOOT_TIMEOUT_SECONDS = 900
    settings.SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS = 600
    settings.SHOPPER_CREATE_SETTLE_SECONDS = 120
    settings.SHOPPER_TEARDOWN_BUDGET_SECONDS = 600
    settings.SHOPPER_DESTROY_MAX_BACKOFF_SECONDS = 60
    with time_machine.travel(START, tick=False) as traveller:
        cloud = Cloud(traveller)
        FakeCloud.cloud = cloud
        monkeypatch.setattr(services, "_sleep", cloud.sleep)
        monkeypatch.setattr(services, "time", _FakeTime(cloud))
        monkeypatch.setattr(services, "ssh_run", cloud.ssh_run)
        monkeypatch.setattr(services, "ssh_banner", cloud.ssh_banner)
        monkeypatch.setattr(services, "enqueue", cloud.enqueue)
        yield cloud
    FakeCloud.cloud = None
    registry.unregister_provider("fakecloud")


@pytest.fixture
def offer(fake, make_offer):
    """An Offer row and the same offer at the fake provider, at $1.5000/h for 2 GPUs."""
    fake.add_offer("fc-1", "1.5000", gpu_count=2)
    return make_offer(provider="fakecloud", provider_offer_id="fc-1", price_per_hour="1.5000", gpu_count=2)


@pytest.fixture
def make_rental(fake, offer, user):
    """A Rental row written directly in any status (for state-machine tests)."""

    def make(status: str = Status.PENDING, consumer=None, **kw) -> Rental:
        now = timezone.now()
        defaults = dict(
            consumer=consumer or user,
            offer=offer,
            provider="fakecloud",
            provider_offer_id=offer.provider_offer_id,
            gpu_type=offer.gpu_type,
            gpu_count=offer.gpu_count,
            vram_gb=offer.vram_gb,
            price_per_hour=offer.price_per_hour,
            status=status,
            reservation_ends_at=now + timedelta(hours=2),
            hard_max_at=now + timedelta(hours=12),
        )
        defaults.update(kw)
        return Rental.objects.create(**defaults)

    return make


@pytest.fixture
def rent(fake, offer, user):
    """Rent ``offer`` through rental_create with a generated key; returns the RentalCreated."""

    def do(**kw):
        args = dict(user=user, offer_id=offer.pk, reservation_hours=2)
        args.update(kw)
        return services.rental_create(**args)

    return do


def transitions(rental: Rental) -> list[tuple[str, str]]:
    return [
        (e.from_status, e.to_status)
        for e in RentalEvent.objects.filter(rental_id=rental.pk, kind="transition").order_by("at", "id")
    ]


def events(rental: Rental, kind: str) -> list[RentalEvent]:
    return list(RentalEvent.objects.filter(rental_id=rental.pk, kind=kind).order_by("at", "id"))


def fresh(rental: Rental) -> Rental:
    return Rental.objects.get(pk=rental.pk)


def new_public_key(comment: str = "me@laptop") -> str:
    return keys.keypair_generate(comment)[0]
