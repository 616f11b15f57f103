"""One scriptable in-memory cloud behind a fake provider adapter, for every test that needs a provider.

:func:`install` registers the adapter (:class:`FakeCloud`) with the real registry
(``inventory.providers.register_provider``) under a name of the test's choosing and returns the
:class:`Cloud` it talks to; :func:`uninstall` removes it. Tests use the ``fake_cloud`` fixture of
tests/conftest.py rather than calling these; tests/sessions/conftest.py's ``fake`` adds a frozen
clock, instant waits and fake SSH on top for the rental workflows.

What a test scripts lives on the :class:`Cloud`: the offers it answers (``add_offer``; remove one
from ``offers`` and the offer is gone), instances, failures per operation, boot and destroy lags,
SSH answers. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

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
from sessions.queue import django_q_enqueue as _real_enqueue
from sessions.ssh import GPU_QUERY, SSHCheckFailed
from sessions.waits import Waits

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
    provider: str = "fakecloud"  # the name the cloud is registered under
    proxy: tuple[str, int] | None = None  # a second SSH endpoint (Vast's ssh_host:ssh_port)
    price: Decimal | None = None  # the instance's own hourly rate (Vast dph_total, TD rateHourly)
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)  # mapped once running

    def data(self) -> InstanceData:
        direct = ((self.ssh_host, self.ssh_port),) if self.ssh_host and self.ssh_port else ()
        return InstanceData(
            provider=self.provider,
            instance_id=self.instance_id,
            label=self.label,
            state=self.state,
            raw_status=self.state,
            ssh_host=self.ssh_host,
            ssh_port=self.ssh_port,
            ssh_user=self.ssh_user,
            ssh_endpoints=direct + ((self.proxy,) if self.proxy else ()),
            price_per_hour=self.price,
            ports=dict(self.ports),
        )


class Cloud:
    """The in-memory cloud and everything a test scripts about it.

    ``traveller`` (a time-machine traveller) is set by whoever freezes time; ``sleep`` moves it.
    """

    def __init__(self, name: str = "fakecloud", traveller=None):
        self.name = name
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
        # The account balance (Provider.account_balance); None: no balance endpoint.
        self.balance: Decimal | None = None
        # create stores the instance, then raises Transient this many times ("error but created").
        self.create_error_but_created = 0
        # create stores the instance, then raises PermanentError(instance_id=...) this many times.
        self.created_but_failed = 0
        self.list_lag = 0  # a new instance is hidden from this many list_instances calls
        self.boot_polls = 1  # get_instance calls answering "booting" before the final state
        self.boot_to = STATE_RUNNING  # the state an instance reaches after booting
        self.destroy_lag = 0  # get_instance calls answering "deleting" after a destroy
        self.instance_price: Decimal | None = None  # the rate new instances report (None: none)
        self._ids = itertools.count(1001)
        self._ports = itertools.count(40001)
        # SSH: scripted failures of the next checks; ssh_down fails every check.
        self.ssh_fail: list[str] = []
        self.ssh_down = False
        self.ssh_blocked: set[tuple[str, int]] = set()  # endpoints whose packets are dropped
        self.proxies = False  # booted instances get a proxy endpoint besides the direct one
        # nvidia-smi on the machines: fields overriding the offer's GPUs ("name", "count",
        # "mem_mib", "driver", "cuda"); the first gpu_broken_checks checks find no working driver.
        self.gpu: dict[str, Any] = {}
        self.gpu_broken_checks = 0
        self.gpu_broken_rc = 9
        self.gpu_broken_output = (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running."
        )
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
            provider=self.name,
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
        inst = Instance(
            instance_id=str(next(self._ids)), label=label, offer_id=offer_id, state=state, provider=self.name
        )
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
            provider=self.name,
            price=self.instance_price,
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
                # Exposed ports get host ports of the provider's choosing (Vast, PROVIDERS.md 1.6).
                for port in inst.request.ports if inst.request else ():
                    inst.ports[port] = (inst.ssh_host, next(self._ports))
                if self.proxies:
                    inst.proxy = ("ssh4.proxy.example", next(self._ports))
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
        if (host, port) in self.ssh_blocked:
            raise SSHCheckFailed(f"TimeoutError: {host}:{port} timed out")
        for inst in self.instances.values():
            endpoints = [(inst.ssh_host, inst.ssh_port), inst.proxy]
            if (host, port) in endpoints and inst.state == STATE_RUNNING:
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
        if command == GPU_QUERY:
            return self._gpu_answer(inst)
        if "authorized_keys" in command and "grep -vF" in command:
            blob = command.split("grep -vF ", 1)[1].split()[0].strip("'")
            inst.keys = [line for line in inst.keys if blob not in line]
            return ""
        return GPU_OUTPUT

    def _gpu_answer(self, inst: Instance) -> str:
        """What GPU_QUERY prints on this instance: its offer's GPUs (``gpu`` overrides fields),
        or a broken driver for the first ``gpu_broken_checks`` checks (TD-NODRIVER)."""
        if self.gpu_broken_checks:
            self.gpu_broken_checks -= 1
            return f"{self.gpu_broken_output}\nshopper-rc={self.gpu_broken_rc}\n"
        # An instance added by a test without an offer has the cloud's (first) offer's GPUs.
        offer = self.offers.get(inst.offer_id) or next(iter(self.offers.values()), None)
        gpu = {
            "name": "NVIDIA GeForce RTX 4090",
            "count": offer.gpu_count if offer else 1,
            "mem_mib": 24564,
            "driver": "570.133.07",
            "cuda": "12.8",
            **self.gpu,
        }
        rows = "".join(f"{gpu['name']}, {gpu['mem_mib']}, {gpu['driver']}\n" for _ in range(gpu["count"]))
        return f"{rows}shopper-rc=0\nCUDA Version: {gpu['cuda']}\n"

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

    @property
    def waits(self) -> Waits:
        """What provisioning and teardown wait and log in with: this cloud's clock and SSH."""
        return Waits(
            sleep=self.sleep, monotonic=self.monotonic, ssh_run=self.ssh_run, ssh_banner=self.ssh_banner
        )

    def enqueue(self, func: str, *args: Any) -> None:
        """The task queue (settings.SHOPPER_TASK_QUEUE in the ``fake`` fixture): records, and
        runs the task at once when ``run_tasks`` says so, with this cloud's waits."""
        self.enqueued.append((func, *args))
        if self.run_tasks == "q":
            _real_enqueue("tests.fakes.task_run", func, *args)
        elif self.run_tasks:
            task_run(func, *args)


def task_run(func: str, *args: Any) -> None:
    """Run a task as the worker would, but provisioning and teardown wait on the fake cloud."""
    if func in ("sessions.tasks.provision", "sessions.tasks.teardown") and FakeCloud.cloud:
        import_string(func)(*args, waits=FakeCloud.cloud.waits)
    else:
        import_string(func)(*args)


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

    def account_balance(self):
        self.cloud._call("balance")
        return self.cloud.balance


def public_of(private_pem: str) -> str:
    key = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def install(name: str = "fakecloud", display_name: str = "Fake Cloud") -> Cloud:
    """Register the fake adapter as provider ``name`` and return its new, empty :class:`Cloud`.

    One fake provider at a time: the adapter class carries the name and the cloud. The caller
    also sets the ``<NAME>_API_KEY`` setting, or the registry reports the provider disabled.
    """
    cloud = Cloud(name=name)
    FakeCloud.name, FakeCloud.display_name, FakeCloud.cloud = name, display_name, cloud
    # Under a real provider's name (its limits then apply, sessions/presets.py) the real entry is
    # put back by uninstall.
    _replaced[name] = (registry.PROVIDER_CLASSES.get(name), registry.PROVIDER_SETTINGS.get(name))
    registry.register_provider(name, f"{__name__}.FakeCloud")
    return cloud


_replaced: dict[str, tuple] = {}


def uninstall() -> None:
    if FakeCloud.cloud is None:  # nothing installed
        return
    registry.unregister_provider(FakeCloud.name)
    cls, conf = _replaced.pop(FakeCloud.name, (None, None))
    if cls is not None:
        registry.PROVIDER_CLASSES[FakeCloud.name] = cls
    if conf is not None:
        registry.PROVIDER_SETTINGS[FakeCloud.name] = conf
    FakeCloud.name, FakeCloud.display_name, FakeCloud.cloud = "fakecloud", "Fake Cloud", None
