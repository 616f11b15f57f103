"""The protocol every provider adapter implements, its data types and its errors.

Adapters are thin, project-owned ``requests`` clients. They turn a provider's dialect into the
normalized types below and its failures into the typed errors below; nothing above this module
ever sees a provider's JSON. Every call has an explicit timeout and goes through one rate limiter
per provider.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

import requests

# Features an adapter may or may not support (Provider.supports).
FEATURE_ATTACH_SSH_KEY = "attach_ssh_key"  # the key is installed after create (Vast)
FEATURE_SSH_KEY_AT_CREATE = "ssh_key_at_create"  # the key rides in the create request (TensorDock)
FEATURE_LABEL_LOOKUP = "label_lookup"  # list_instances can find our label after a create error


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class ProviderError(Exception):
    """A provider call failed. ``transient`` tells the caller whether retrying may help.

    ``instance_id`` is set when the provider answered with an error *and* created an instance
    anyway (Vast's ``success: false`` with ``new_contract``): the caller must destroy it.
    """

    transient: ClassVar[bool] = False
    code: ClassVar[str] = "provider_error"

    def __init__(self, message: str, *, status: int | None = None, instance_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.instance_id = instance_id


class Transient(ProviderError):
    """Timeouts, connection errors, 5xx: the call may have had an effect; retry or look it up."""

    transient = True
    code = "transient"


class RateLimited(Transient):
    """HTTP 429 (with or without Retry-After), after the adapter's own backoff gave up."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """The provider refused the request for good (validation error, bad arguments)."""

    code = "permanent"


class AuthFailed(PermanentError):
    code = "auth_failed"


class NotFound(PermanentError):
    """The instance does not exist (for destroy: it is already gone)."""

    code = "not_found"


class OfferUnavailable(PermanentError):
    """The offer was taken or has no capacity any more (Vast ``no_such_ask``, TD "No available nodes")."""

    code = "offer_unavailable"


class InsufficientFunds(PermanentError):
    code = "insufficient_funds"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OfferData:
    """One rentable configuration, normalized. ``price_per_hour`` is the whole machine, including
    storage at the default disk size; ``vram_gb`` is per GPU; ``gpu_type`` is canonical and carries
    the memory size (``"A100 SXM4 80GB"``)."""

    provider: str
    provider_offer_id: str
    gpu_type: str
    gpu_count: int
    vram_gb: int
    price_per_hour: Decimal
    location: str = ""
    reliability: Decimal | None = None
    # The machine behind the offer where the provider names one (confidence falls back to it).
    host: str = ""
    cpu_cores: int | None = None
    ram_gb: int | None = None
    disk_gb: int | None = None
    cuda_version: str = ""
    driver_version: str = ""
    # Honest prices (issue 14): what a disk size other than the default, and traffic, cost.
    # ``storage_price_per_gb_hour`` prices each GB above or below ``disk_gb_default`` (the disk
    # ``price_per_hour`` includes); ``max_disk_gb`` is the most the offer can give; the inet
    # prices are per GB transferred (Vast ``inet_down_cost``/``inet_up_cost``, not in the hourly).
    storage_price_per_gb_hour: Decimal | None = None
    disk_gb_default: int | None = None
    max_disk_gb: int | None = None
    inet_down_price_per_gb: Decimal | None = None
    inet_up_price_per_gb: Decimal | None = None
    # What renters compare on (issue 18); None where the provider does not say.
    inet_down_mbps: int | None = None
    inet_up_mbps: int | None = None
    verified: bool | None = None
    datacenter: bool | None = None
    max_duration_hours: int | None = None  # the longest rental the host allows


@dataclass(frozen=True)
class OfferFilter:
    """Server-side narrowing for search_offers. Empty means "everything rentable"."""

    min_gpus: int | None = None
    min_vram_gb: int | None = None
    max_price: Decimal | None = None


# Normalized instance states (InstanceData.state).
STATE_PENDING = "pending"  # accepted, not yet booting (Vast null/created, TD creating)
STATE_BOOTING = "booting"  # image pull / boot (Vast loading, TD starting)
STATE_RUNNING = "running"
STATE_STOPPED = "stopped"  # exists, still costs (disk), not running
STATE_FAILED = "failed"  # exists but will never run (Vast exited/offline/OCI failure, TD error)
STATE_DELETING = "deleting"  # the provider is tearing it down


@dataclass(frozen=True)
class InstanceData:
    """One instance as the provider reports it. ``ssh_host``/``ssh_port`` are empty until known.

    ``ssh_endpoints`` lists every (host, port) that may reach SSH, preferred first; the first is
    ``ssh_host``/``ssh_port``. Vast has two: direct and its proxy, and direct does not always
    answer (FIELD_NOTES VA-SSH), so the handoff tries them in order and keeps the one that works.
    """

    provider: str
    instance_id: str
    label: str | None
    state: str
    raw_status: str = ""
    status_message: str = ""
    ssh_host: str = ""
    ssh_port: int | None = None
    ssh_user: str = "root"
    price_per_hour: Decimal | None = None
    ssh_endpoints: tuple[tuple[str, int], ...] = ()
    # When the provider started it (aware UTC), None when it does not say: the offline kill
    # switch shows the age (Vast ``start_date``, TensorDock ``created_at``).
    started_at: datetime | None = None
    # Exposed ports as the provider mapped them: container/VM port -> (host, port), once running.
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateRequest:
    """What we ask a provider to start. ``label`` is ``shopper-<rental uuid>`` (safety rule 2)."""

    offer_id: str
    label: str
    ssh_public_key: str
    image: str = ""
    disk_gb: int | None = None
    onstart: str = ""  # shell script run at boot (starts the node agent)
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()  # container ports to expose (only where the provider can)


# --------------------------------------------------------------------------------------------
# Rate limiting
# --------------------------------------------------------------------------------------------
class RateLimiter:
    """Minimum interval between calls, shared by every thread of a process, with a backoff that
    grows while the provider answers 429 and relaxes after a success."""

    def __init__(self, min_interval: float, *, max_backoff: float = 30.0):
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.backoff = 0.0
        self._next_at = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            delay = max(0.0, self._next_at - now)
            self._next_at = max(now, self._next_at) + self.min_interval + self.backoff
        if delay:
            time.sleep(delay)

    def penalize(self, retry_after: float | None = None) -> float:
        """Record a 429; returns how long the caller should wait before trying again."""
        with self._lock:
            self.backoff = min(self.max_backoff, max(self.min_interval, self.backoff * 2 or 0.5))
            wait = retry_after if retry_after is not None else self.backoff
            self._next_at = max(self._next_at, time.monotonic() + wait)
            return wait

    def relax(self) -> None:
        with self._lock:
            self.backoff = self.backoff / 2 if self.backoff > 0.1 else 0.0


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------
class Provider:
    """Base class of every adapter. Subclasses set ``name``, ``features`` and implement the
    six operations; each raises only ProviderError subclasses (never ``requests`` exceptions).

    - ``search_offers(filter)`` -> every rentable offer, normalized.
    - ``create_instance(request)`` -> the provider's instance id. On an error the caller must look
      the label up (safety rule 2) before believing nothing was created.
    - ``get_instance(id)`` -> InstanceData; raises NotFound when the instance is gone.
    - ``list_instances(label_prefix)`` -> every instance whose label starts with the prefix, all
      pages. Raises on any failure: an error never reads as "no instances" (safety rule 5).
    - ``destroy_instance(id)`` -> None once the provider accepted; NotFound if already gone.
    - ``attach_ssh_key(id, key)`` -> only where ``supports(FEATURE_ATTACH_SSH_KEY)``.
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    features: ClassVar[frozenset[str]] = frozenset()
    # Seconds between calls. get_provider shares one limiter per account across processes.
    min_interval: ClassVar[float] = 1.0
    _limiters: ClassVar[dict[str, RateLimiter]] = {}
    # Requests the last search_offers took (the health endpoint shows it); adapters that page set it.
    last_search_pages: int = 1
    _limiters_lock = threading.Lock()

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float = 30.0,
        max_retries_on_429: int = 3,
        session: requests.Session | None = None,
        min_interval: float | None = None,
        limiter: Any = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries_on_429 = max_retries_on_429
        self.session = session or requests.Session()
        with Provider._limiters_lock:
            if min_interval is not None:
                self.min_interval = min_interval
            key = f"{self.name}@{self.base_url}@{self.min_interval}"
            if key not in Provider._limiters:
                Provider._limiters[key] = RateLimiter(self.min_interval)
            # registry.get_provider passes the limiter shared across processes (ratelimit.py);
            # an adapter built directly (tests, scripts) paces its own process only.
            self.limiter = limiter or Provider._limiters[key]

    def supports(self, feature: str) -> bool:
        return feature in self.features

    def search_offers(self, filter: OfferFilter | None = None) -> list[OfferData]:
        raise NotImplementedError

    def get_offer(self, offer_id: str) -> OfferData | None:
        """The offer as the provider offers it now, or None when it is gone. Adapters with a
        cheaper single-offer query override this."""
        for offer in self.search_offers():
            if offer.provider_offer_id == offer_id:
                return offer
        return None

    def create_instance(self, request: CreateRequest) -> str:
        raise NotImplementedError

    def get_instance(self, instance_id: str) -> InstanceData:
        raise NotImplementedError

    def list_instances(self, label_prefix: str) -> list[InstanceData]:
        raise NotImplementedError

    def destroy_instance(self, instance_id: str) -> None:
        raise NotImplementedError

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None:
        raise PermanentError(f"{self.name} installs SSH keys at create time")

    def account_balance(self) -> Decimal | None:
        """The account's balance in USD, or None where the provider has no balance endpoint
        (FIELD_NOTES X-BALANCE). Raises ProviderError when the endpoint exists and fails."""
        return None
