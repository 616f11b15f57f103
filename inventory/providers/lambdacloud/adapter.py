"""Lambda Cloud adapter (Cloud API v1, spec 1.10.0, Bearer). ``base_url`` includes ``/api/v1``.

Facts and their sources are in shared/providers/RUNPOD_LAMBDA.md §2 (cited below as "§2.x").
The module is ``lambdacloud`` because ``lambda`` is a Python keyword.

- Offers: one per (instance type, region in ``regions_with_capacity_available``); the price is
  ``price_cents_per_hour`` for the whole instance, storage included, converted exactly (§2.3).
- SSH keys are account objects referenced by name, exactly one per launch (§2.4). Each rental gets
  its own key named by its label, registered before the launch and deleted at teardown; a key
  left behind (the delete refused while the instance terminates, a crash) is deleted later
  through ``delete_ssh_key``/``ssh_key_labels``, which the reconcile can call.
- The instance's ``name`` is our label; the listing has no name filter, so it is filtered here.
- The node agent starts from ``user_data`` (cloud-init runs a ``#!`` script at first boot).
- Launch is limited to 1 per 12 s (§2.1, CONFLICT with 1/10 s: the slower one is used), on top of
  about 1 request/s for everything else; both budgets are shared across processes.
- The deprecated host ``cloud.lambdalabs.com`` may redirect (§4.9). ``requests`` would follow a
  301 by turning a POST into a GET and dropping ``Authorization``, so no redirect is followed:
  it becomes a clear PermanentError telling the operator to set LAMBDA_API_URL.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import shlex
from decimal import Decimal, InvalidOperation
from typing import Any

import requests

from inventory.providers import http
from inventory.providers.base import (
    FEATURE_LABEL_LOOKUP,
    FEATURE_SSH_KEY_AT_CREATE,
    STATE_BOOTING,
    STATE_DELETING,
    STATE_FAILED,
    STATE_PENDING,
    STATE_RUNNING,
    AuthFailed,
    CreateRequest,
    InstanceData,
    InsufficientFunds,
    NotFound,
    OfferData,
    OfferFilter,
    OfferUnavailable,
    PermanentError,
    Provider,
    ProviderError,
    RateLimiter,
    Transient,
)
from inventory.providers.ratelimit import SharedRateLimiter

from .names import lambda_gpu_type

log = logging.getLogger(__name__)

DEFAULT_URL = "https://cloud.lambda.ai/api/v1"
LAUNCH_INTERVAL = 12.0  # seconds between launches per account (§2.1)
SSH_USER = "ubuntu"  # Lambda Stack images (dstack lambdalabs/compute.py; §2.5)
SSH_PORT = 22
MAX_NAME = 64  # instance and SSH key names (§2.4)
MAX_USER_DATA = 1024 * 1024  # cloud-init user_data, bytes (§2.4)

_STATES = {
    "booting": STATE_BOOTING,
    "active": STATE_RUNNING,  # running only once it has an ip (see _instance)
    # Undocumented; skypilot maps it to INIT. It stays "booting" here, so the boot deadline of the
    # provisioning loop turns one that never recovers into a failure (§2.5).
    "unhealthy": STATE_BOOTING,
    "terminating": STATE_DELETING,
    "terminated": STATE_DELETING,
    "preempted": STATE_FAILED,  # in the 1.10.0 enum; when it happens is UNCONFIRMED (§4.12)
}
# Gone or going: not billed any more, never "ours to tear down" again.
_ENDED = frozenset({"terminating", "terminated"})
_OFFER_ID = re.compile(r"^([a-z0-9-]+):([a-z0-9_]+)$")
CODE_CAPACITY = "instance-operations/launch/insufficient-capacity"
# Billing-account states (§2.7): our choice is InsufficientFunds, not AuthFailed.
CODES_NO_MONEY = frozenset({"global/account-inactive", "global/invalid-address"})
_CODE_IN_TEXT = re.compile(r'"code"\s*:\s*"([^"]+)"')


def cents_to_dollars(cents: Any) -> Decimal | None:
    """Integer US cents -> Decimal dollars, exactly (129 -> 1.29); None when not a number."""
    if cents is None or isinstance(cents, bool):
        return None
    try:
        amount = Decimal(str(cents).strip()) / 100
    except (InvalidOperation, ValueError):
        return None
    return http.to_money(amount) if amount.is_finite() and amount >= 0 else None


def _keys(public_key: str) -> list[str]:
    """The non-empty lines of a (possibly multi-key) authorized_keys text."""
    return [line.strip() for line in (public_key or "").splitlines() if line.strip()]


def error_code(data: Any) -> str:
    """``error.code`` of Lambda's envelope ``{"error": {"code", "message", "suggestion"?}}``."""
    error = data.get("error") if isinstance(data, dict) else None
    return http.to_text(error.get("code")) if isinstance(error, dict) else ""


def _no_redirects(resp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """A response hook: runs before ``requests`` would follow a redirect, so none is followed."""
    if resp.is_redirect:
        raise PermanentError(
            f"lambda {resp.request.method} {resp.url}: HTTP {resp.status_code} redirect to "
            f"{resp.headers.get('Location', '?')}; set LAMBDA_API_URL to the current host "
            f"({DEFAULT_URL}): a followed redirect turns POST into GET and drops the API key",
            status=resp.status_code,
        )
    return resp


class _LaunchPacing:
    """The limiter http.request drives for a launch: wait for the launch slot (1 per 12 s) and the
    general one; a 429 on launch backs off the launch budget only (at least 12 s without a
    Retry-After), so teardowns are not held up by launches."""

    def __init__(self, launch: Any, general: Any):
        self.launch = launch
        self.general = general

    def wait(self) -> None:
        self.launch.wait()
        self.general.wait()

    def penalize(self, retry_after: float | None = None) -> float:
        return self.launch.penalize(retry_after)

    def relax(self) -> None:
        self.launch.relax()
        self.general.relax()


class LambdaCloud(Provider):
    name = "lambda"
    display_name = "Lambda"
    features = frozenset({FEATURE_SSH_KEY_AT_CREATE, FEATURE_LABEL_LOOKUP})
    min_interval = 1.0  # "about 1 request/s" (§2.1)

    def __init__(self, *, launch_limiter: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        # PROVIDER_MIN_INTERVAL_SECONDS (passed as min_interval) is only ever set for the local
        # sandbox: there the launch pacing is lowered with it; a real account keeps 12 s.
        explicit = kwargs.get("min_interval")
        self.launch_interval = LAUNCH_INTERVAL if explicit is None else float(explicit)
        self.session.hooks.setdefault("response", [])
        if _no_redirects not in self.session.hooks["response"]:
            self.session.hooks["response"].append(_no_redirects)
        self.launch_limiter = launch_limiter or self._default_launch_limiter()

    def _default_launch_limiter(self) -> Any:
        """Shared like the general limiter when that one is shared (registry.get_provider), so
        every process keeps to the account's one launch per 12 s; else one per process."""
        if isinstance(self.limiter, SharedRateLimiter):
            key = self.limiter.key[:150] + ":launch"
            return SharedRateLimiter(key, self.launch_interval, self.limiter.store)
        key = f"{self.name}@{self.base_url}@{self.launch_interval}:launch"
        with Provider._limiters_lock:
            return Provider._limiters.setdefault(key, RateLimiter(self.launch_interval))

    # ------------------------------------------------------------------ calls
    def _call(self, method: str, path: str, *, json: Any = None, launch: bool = False) -> http.ApiResponse:
        """One API call; 403 billing-account codes become InsufficientFunds (http.request turns
        every 403 into AuthFailed, and quotes the body in its message)."""
        caller: Any = self
        if launch:
            caller = copy.copy(self)  # the same session and key; only the pacing differs
            caller.limiter = _LaunchPacing(self.launch_limiter, self.limiter)
        try:
            return http.request(caller, method, path, json=json)
        except AuthFailed as exc:
            match = _CODE_IN_TEXT.search(exc.message)
            if exc.status == 403 and match and match.group(1) in CODES_NO_MONEY:
                message = exc.message.replace("authentication failed", "the account cannot be billed")
                raise InsufficientFunds(message, status=403) from exc
            raise

    def _fail(
        self, resp: http.ApiResponse, method: str, path: str, *, one_object: bool = False
    ) -> ProviderError:
        """Map an error answer to a typed error by ``error.code`` (the texts may change, §2.1).
        A 404 is NotFound only where the call names one object (an instance, a key): a 404 on
        a launch names a missing resource (an SSH key, a file system), and on a listing it must
        never read as "nothing there"."""
        detail = http.describe(self, method, path, resp)
        code = error_code(resp.data)
        if code.startswith("provider/"):  # an upstream failure of Lambda's (§2.1)
            return Transient(detail, status=resp.status)
        if code == CODE_CAPACITY:
            return OfferUnavailable(detail, status=resp.status)
        if resp.status == 404 and one_object:
            return NotFound(detail, status=404)
        return PermanentError(detail, status=resp.status)  # quota, invalid parameters, 409 ...

    def _data(
        self, method: str, path: str, *, json: Any = None, launch: bool = False, one_object: bool = False
    ) -> Any:
        resp = self._call(method, path, json=json, launch=launch)
        if not resp.ok:
            raise self._fail(resp, method, path, one_object=one_object)
        if not isinstance(resp.data, dict) or "data" not in resp.data:
            # Never read an unknown shape as "nothing there" (safety rule 5).
            raise PermanentError(http.describe(self, method, path, resp, "no data in answer"))
        return resp.data["data"]

    # ------------------------------------------------------------------ offers
    def search_offers(self, filter: OfferFilter | None = None) -> list[OfferData]:
        data = self._data("GET", "/instance-types")
        if not isinstance(data, dict):
            raise PermanentError(f"{self.name} GET /instance-types: data is not an object")
        f = filter or OfferFilter()
        offers = [o for entry in data.values() if isinstance(entry, dict) for o in self._type_offers(entry)]
        return [
            o
            for o in offers
            if (not f.min_gpus or o.gpu_count >= f.min_gpus)
            and (not f.min_vram_gb or o.vram_gb >= f.min_vram_gb)
            and (f.max_price is None or o.price_per_hour <= f.max_price)
        ]

    def _type_offers(self, entry: dict[str, Any]) -> list[OfferData]:
        itype = entry.get("instance_type") if isinstance(entry.get("instance_type"), dict) else {}
        type_name = http.to_text(itype.get("name"))
        specs = itype.get("specs") if isinstance(itype.get("specs"), dict) else {}
        price = cents_to_dollars(itype.get("price_cents_per_hour"))
        gpu_type, vram = lambda_gpu_type(
            http.to_text(itype.get("gpu_description")) or http.to_text(itype.get("description")), type_name
        )
        # The count from specs.gpus; the description's "8x" only when specs lacks it (§2.3).
        count = http.to_int(specs.get("gpus")) or http.to_int(
            re.match(r"\d*", http.to_text(itype.get("description"))).group()
        )
        if not type_name or price is None or count <= 0 or not vram:
            return []  # CPU-only types, or nothing we could price or name
        storage = http.to_int(specs.get("storage_gib")) or None
        offers = []
        # An empty regions_with_capacity_available means sold out (dstack): no offer at all.
        for region in entry.get("regions_with_capacity_available") or []:
            region_name = http.to_text(region.get("name")) if isinstance(region, dict) else ""
            if not _OFFER_ID.match(f"{region_name}:{type_name}"):
                continue
            offers.append(
                OfferData(
                    provider=self.name,
                    provider_offer_id=f"{region_name}:{type_name}",
                    gpu_type=gpu_type,
                    gpu_count=count,
                    vram_gb=vram,
                    price_per_hour=price,
                    location=http.to_text(region.get("description")) or region_name,
                    reliability=None,  # Lambda publishes none; don't invent one
                    cpu_cores=http.to_int(specs.get("vcpus")) or None,
                    ram_gb=http.to_int(specs.get("memory_gib")) or None,
                    disk_gb=storage,
                    # Storage is included in the price and fixed per type: no other size is sold.
                    storage_price_per_gb_hour=Decimal("0"),
                    disk_gb_default=storage,
                    max_disk_gb=storage,
                )
            )
        return offers

    # ------------------------------------------------------------------ create
    @staticmethod
    def parse_offer_id(offer_id: str) -> tuple[str, str]:
        """``region:instance_type`` -> (region, instance type)."""
        match = _OFFER_ID.match(offer_id or "")
        if not match:
            raise PermanentError(f"lambda: malformed offer id {offer_id!r}")
        return match.group(1), match.group(2)

    @staticmethod
    def user_data(public_key: str, onstart: str = "", env: dict[str, str] | None = None) -> str:
        """The cloud-init script: every key line into ubuntu's authorized_keys (the launch takes
        exactly one registered key; the others, e.g. our verification key, come this way), then
        the onstart script (the node agent) with ``env`` exported, as root."""
        lines = ["#!/bin/bash", "install -d -m 700 -o ubuntu -g ubuntu /home/ubuntu/.ssh"]
        for key in _keys(public_key):
            q = shlex.quote(key)
            lines.append(
                f"grep -qxF {q} /home/ubuntu/.ssh/authorized_keys 2>/dev/null"
                f" || echo {q} >> /home/ubuntu/.ssh/authorized_keys"
            )
        lines.append("chown ubuntu:ubuntu /home/ubuntu/.ssh/authorized_keys")
        if onstart.strip():
            exports = "".join(
                f"export {k}={shlex.quote(v)}\n"
                for k, v in (env or {}).items()
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
            )
            lines.append(f"bash -c {shlex.quote(exports + onstart)}")
        return "\n".join(lines) + "\n"

    def create_instance(self, request: CreateRequest) -> str:
        region, type_name = self.parse_offer_id(request.offer_id)
        keys = _keys(request.ssh_public_key)
        if not keys:
            raise PermanentError("lambda: a launch needs an SSH public key")
        if not request.label or len(request.label) > MAX_NAME:
            raise PermanentError(f"lambda: the label must be 1-{MAX_NAME} characters: {request.label!r}")
        user_data = self.user_data(request.ssh_public_key, request.onstart, request.env)
        if len(user_data.encode()) > MAX_USER_DATA:
            raise PermanentError(f"lambda: user_data is over {MAX_USER_DATA} bytes")
        key_name = self.register_ssh_key(request.label, keys[0])
        body = {
            "region_name": region,
            "instance_type_name": type_name,
            "ssh_key_names": [key_name],  # exactly one (§2.4)
            "file_system_names": [],
            # Not in the 1.10.0 schema, but in its own curl example and sent by dstack/skypilot
            # (§4.11): one instance per launch either way.
            "quantity": 1,
            "name": request.label,
            "user_data": user_data,
        }
        try:
            data = self._data("POST", "/instance-operations/launch", json=body, launch=True)
        except ProviderError as exc:
            if not exc.transient:
                # Refused: nothing was created, so the key is ours to remove now. After a
                # transient error the instance may exist and boot with it: teardown removes it.
                self._delete_key_quietly(request.label)
            raise
        ids = data.get("instance_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not ids or not http.to_text(ids[0]):
            # Accepted but no id: the caller looks the label up (safety rule 2).
            raise Transient(f"{self.name} launch: no instance id in the answer {str(data)[:200]}")
        return http.to_text(ids[0])

    # ------------------------------------------------------------------ SSH keys
    def _ssh_keys(self) -> list[dict[str, Any]]:
        data = self._data("GET", "/ssh-keys")
        if not isinstance(data, list):
            raise PermanentError(f"{self.name} GET /ssh-keys: data is not a list")
        return [k for k in data if isinstance(k, dict)]

    def register_ssh_key(self, label: str, public_key: str) -> str:
        """Register ``public_key`` under the name ``label`` (one key per rental) and return the
        name. A key already there under that name (a retried create) is reused when it is the
        same key and replaced when not; the code for a duplicate name is UNCONFIRMED (§2.4), so
        after a refused add the list decides whether the key is there."""
        for key in self._ssh_keys():
            if http.to_text(key.get("name")) == label:
                if http.to_text(key.get("public_key")) == public_key.strip():
                    return label
                self._delete_key_id(http.to_text(key.get("id")))
        try:
            self._data("POST", "/ssh-keys", json={"name": label, "public_key": public_key.strip()})
        except PermanentError:
            if any(
                http.to_text(k.get("name")) == label
                and http.to_text(k.get("public_key")) == public_key.strip()
                for k in self._ssh_keys()
            ):
                return label  # a concurrent retry added it first
            raise
        return label

    def _delete_key_id(self, key_id: str) -> None:
        with contextlib.suppress(NotFound):  # already deleted: the goal is reached
            self._data("DELETE", f"/ssh-keys/{http.path_segment(key_id)}", one_object=True)

    def delete_ssh_key(self, label: str) -> int:
        """Delete every account SSH key named ``label``; returns how many were deleted. For the
        teardown and for the reconcile's orphan keys. Raises ProviderError when the provider
        refuses (e.g. a key still in use by a terminating instance: try again later)."""
        deleted = 0
        for key in self._ssh_keys():
            if http.to_text(key.get("name")) == label and http.to_text(key.get("id")):
                self._delete_key_id(http.to_text(key["id"]))
                deleted += 1
        return deleted

    def ssh_key_labels(self, label_prefix: str) -> list[str]:
        """Names of the account's SSH keys that start with ``label_prefix`` (ours). A reconcile
        deletes those whose rental is over and whose instance is gone (``delete_ssh_key``)."""
        return sorted(
            {
                http.to_text(k.get("name"))
                for k in self._ssh_keys()
                if http.to_text(k.get("name")).startswith(label_prefix)
            }
        )

    def _delete_key_quietly(self, label: str) -> None:
        try:
            self.delete_ssh_key(label)
        except ProviderError as exc:
            # Left for the reconcile (ssh_key_labels); a key costs nothing, a lost error does.
            log.warning("lambda: SSH key %s not deleted yet: %s", label, exc.message)

    # ------------------------------------------------------------------ read
    def get_instance(self, instance_id: str) -> InstanceData:
        path = f"/instances/{http.path_segment(instance_id)}"
        item = self._data("GET", path, one_object=True)
        if not isinstance(item, dict) or not http.to_text(item.get("id")):
            raise PermanentError(f"{self.name} GET {path}: no instance in the answer")
        if http.to_text(item.get("status")).lower() == "terminated":
            raise NotFound(f"{self.name} instance {instance_id} is terminated", status=200)
        return self._instance(item)

    def list_instances(self, label_prefix: str) -> list[InstanceData]:
        data = self._data("GET", "/instances")  # no pagination, no name filter (§2.2)
        if not isinstance(data, list):
            raise PermanentError(f"{self.name} GET /instances: data is not a list")
        out = [
            self._instance(i)
            for i in data
            if isinstance(i, dict) and http.to_text(i.get("status")).lower() != "terminated"
        ]
        # A missing name is no label (§2.6): never ours.
        return [i for i in out if i.label is not None and i.label.startswith(label_prefix)]

    def _instance(self, item: dict[str, Any]) -> InstanceData:
        status = http.to_text(item.get("status")).lower()
        ip = http.to_text(item.get("ip"))  # absent or null while booting (§4.12): .get() covers both
        state = _STATES.get(status, STATE_PENDING)
        if state == STATE_RUNNING and not ip:
            state = STATE_BOOTING
        itype = item.get("instance_type") if isinstance(item.get("instance_type"), dict) else {}
        reachable = bool(ip) and status not in _ENDED
        # Lambda's SSH port is always 22. The local sandbox cannot listen on 22 and says where it
        # listens instead in a field of its own, which the real API never sends.
        port = http.to_int(item.get("sandbox_ssh_port")) or SSH_PORT
        return InstanceData(
            provider=self.name,
            instance_id=http.to_text(item.get("id")),
            label=http.to_text(item.get("name")) or None,
            state=state,
            raw_status=status,
            status_message="health checks failing" if status == "unhealthy" else "",
            ssh_host=ip if reachable else "",
            ssh_port=port if reachable else None,
            ssh_user=SSH_USER,
            price_per_hour=cents_to_dollars(itype.get("price_cents_per_hour")),
            ssh_endpoints=((ip, port),) if reachable else (),
            # The default firewall lets in only ICMP and TCP 22 (§2.8): no other port is mapped.
            ports={SSH_PORT: (ip, port)} if reachable else {},
        )

    # ------------------------------------------------------------------ delete
    def destroy_instance(self, instance_id: str) -> None:
        """Terminate (there is no stop, §2.2), one id per call (§4.12), then delete the rental's
        SSH key, named like the instance. A refused key delete never fails the teardown."""
        body = {"instance_ids": [str(instance_id).strip()]}
        data = self._data("POST", "/instance-operations/terminate", json=body, one_object=True)
        terminated = data.get("terminated_instances") if isinstance(data, dict) else None
        for item in terminated if isinstance(terminated, list) else []:
            name = http.to_text(item.get("name")) if isinstance(item, dict) else ""
            if name and name in (item.get("ssh_key_names") or []):
                self._delete_key_quietly(name)
