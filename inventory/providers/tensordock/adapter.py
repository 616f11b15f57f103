"""TensorDock adapter (API v2, JSON:API-ish, Bearer token). ``base_url`` includes ``/api/v2``.

The v2 docs contradict themselves and live answers differ again (PROVIDERS.md 2.2/2.2b), so every
response is parsed defensively: flat or ``data``-wrapped, ``attributes`` or not, and errors may
come as HTTP 200 with ``{"status": 400, "error": ...}`` or as a JSON array of validation issues.
"""

from __future__ import annotations

import re
import shlex
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from inventory.providers import http
from inventory.providers.base import (
    FEATURE_LABEL_LOOKUP,
    FEATURE_SSH_KEY_AT_CREATE,
    STATE_BOOTING,
    STATE_DELETING,
    STATE_FAILED,
    STATE_PENDING,
    STATE_RUNNING,
    STATE_STOPPED,
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
)

from .names import tensordock_gpu_type

# The fixed configuration we offer per GPU (TensorDock prices CPU, RAM and disk separately).
DEFAULT_VCPUS_PER_GPU = 4
DEFAULT_RAM_GB_PER_GPU = 16
DEFAULT_STORAGE_GB = 100  # the documented minimum
GPU_COUNTS = (1, 2, 4, 8)
# What the API accepts for a VM's size: vCPUs in steps of 2, RAM in steps of 8 GB (PROVIDERS.md
# 2.2, the modify docs); a capped configuration is rounded down to these.
VCPU_STEP = 2
RAM_STEP_GB = 8
# ubuntu2404 had no NVIDIA driver (seed BUG-009). Only TensorDock OS image names are passed on.
DEFAULT_IMAGE = "ubuntu2204"

# TensorDock VMs are handed over without a working NVIDIA driver (FIELD_NOTES TD-NODRIVER: no
# packages on ubuntu2404, half-installed "iU" DKMS ones elsewhere) while unattended-upgrades holds
# the dpkg lock for minutes after boot (TD-DPKGLOCK). Run by cloud-init after the keys, logged to
# /root/shopper-driver-repair.log (readable over SSH); does nothing on a machine whose driver works.
# Provisioning re-reads driver and CUDA with nvidia-smi after it (the live repair ended on a newer
# driver than the VM started with).
DRIVER_REPAIR = r"""set -x
if nvidia-smi >/dev/null 2>&1; then echo "shopper: the NVIDIA driver works"; exit 0; fi
systemctl stop unattended-upgrades || true
systemctl disable unattended-upgrades || true
for i in $(seq 1 60); do fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1 || break; sleep 5; done
export DEBIAN_FRONTEND=noninteractive
dpkg --configure -a || true
if ! dkms autoinstall; then
  apt-get -o DPkg::Lock::Timeout=120 update || true
  apt-get -o DPkg::Lock::Timeout=120 install -y nvidia-driver-550 || true
fi
modprobe nvidia || true
nvidia-smi || echo "shopper: the NVIDIA driver still does not work after the repair"
"""

_STATES = {
    "creating": STATE_PENDING,
    "pending": STATE_PENDING,
    "provisioning": STATE_PENDING,
    "starting": STATE_BOOTING,
    "running": STATE_RUNNING,
    "stopping": STATE_STOPPED,
    "stopped": STATE_STOPPED,
    "stoppeddisassociated": STATE_STOPPED,
    "deleting": STATE_DELETING,
    "deleted": STATE_DELETING,
    "terminated": STATE_DELETING,
    "error": STATE_FAILED,
}
# Offer-gone answers: "No available nodes found" (TD-STALE-NONODES), "No available public IPs on
# hostnode" (TD-NOPUBLICIP), "out of stock"; nothing was created, another offer may work.
_NO_CAPACITY = (
    "no available nodes",
    "not enough",
    "capacity",
    "no available public ip",
    "out of stock",
    "unavailable",
)
_NO_MONEY = ("balance", "insufficient funds", "credit")


def _seg(value: str) -> str:
    """An id as one URL path segment (ids come from the database; never let one add a path)."""
    return quote(str(value).strip(), safe="")


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _int(value: Any) -> int:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0


def _keys(public_key: str) -> list[str]:
    """The non-empty lines of a (possibly multi-key) authorized_keys text."""
    return [line.strip() for line in (public_key or "").splitlines() if line.strip()]


def _classify(message: str, status: int | None, **kw: Any) -> ProviderError:
    low = message.lower()
    if any(s in low for s in _NO_CAPACITY):
        # /locations often lists GPUs that cannot be provisioned (seed: stale inventory).
        return OfferUnavailable(message, status=status, **kw)
    if any(s in low for s in _NO_MONEY):
        return InsufficientFunds(message, status=status, **kw)
    return PermanentError(message, status=status, **kw)


def _body_error(data: Any) -> str | None:
    """The in-body error of a 2xx answer: ``{"status": >=400, "error": "..."}`` (seed)."""
    if isinstance(data, dict) and _int(data.get("status")) >= 400 and data.get("error"):
        return str(data["error"])
    return None


class TensorDock(Provider):
    name = "tensordock"
    display_name = "TensorDock"
    features = frozenset({FEATURE_SSH_KEY_AT_CREATE, FEATURE_LABEL_LOOKUP})
    min_interval = 0.6  # 100 requests/min per organization

    def _fail(self, resp: http.ApiResponse, method: str, path: str) -> ProviderError:
        """Map an error answer (non-2xx, or 2xx with an in-body error) to a typed error."""
        detail = http.describe(self, method, path, resp)
        # The quoted error text is the provider's and may repeat our token: redacted like ``detail``.
        if isinstance(resp.data, list):  # validation issues: [{code, message, path}]
            issues = [_str(i.get("message")) for i in resp.data if isinstance(i, dict)]
            joined = http.redact("; ".join(i for i in issues if i), self.api_key)
            return _classify(f"{self.name} {method} {path}: {joined or detail}", resp.status)
        if resp.status == 404:
            return NotFound(detail, status=404)
        if isinstance(resp.data, dict):
            text = _body_error(resp.data) or _str(resp.data.get("error")) or _str(resp.data.get("message"))
            if text:
                return _classify(f"{detail} [{http.redact(text, self.api_key)}]", resp.status)
        return PermanentError(detail, status=resp.status)

    # ---------------------------------------------------------------- offers
    def search_offers(self, filter: OfferFilter | None = None) -> list[OfferData]:
        # Auth: Bearer only. The seed also sent api_key/api_token query params here, but we hold a
        # single token and a key in a URL ends up in logs and exception messages; the docs say
        # Bearer works for every v2 endpoint.
        resp = http.request(self, "GET", "/locations")
        data = resp.data.get("data", resp.data) if isinstance(resp.data, dict) else None
        if not resp.ok or _body_error(resp.data) or not isinstance(data, dict):
            raise self._fail(resp, "GET", "/locations")
        locations = data.get("locations")
        if "locations" in data and locations is None:
            locations = []  # nothing in stock anywhere is an empty menu, not an error
        if not isinstance(locations, list):
            raise PermanentError(http.describe(self, "GET", "/locations", resp, "no locations list"))
        f = filter or OfferFilter()
        offers = [o for loc in locations if isinstance(loc, dict) for o in self._location_offers(loc)]
        return [
            o
            for o in offers
            if (not f.min_gpus or o.gpu_count >= f.min_gpus)
            and (not f.min_vram_gb or o.vram_gb >= f.min_vram_gb)
            and (f.max_price is None or o.price_per_hour <= f.max_price)
        ]

    def _location_offers(self, loc: dict[str, Any]) -> list[OfferData]:
        loc_id = _str(loc.get("id"))
        place = ", ".join(p for p in (_str(loc.get(k)) for k in ("city", "stateprovince", "country")) if p)
        offers: list[OfferData] = []
        for gpu in loc.get("gpus") or []:
            if not isinstance(gpu, dict) or not loc_id:
                continue
            v0 = _str(gpu.get("v0Name"))
            max_count = _int(gpu.get("max_count"))
            gpu_type, vram = tensordock_gpu_type(v0)
            network = gpu.get("network_features") if isinstance(gpu.get("network_features"), dict) else {}
            if network.get("dedicated_ip_available") is False:
                # We always create with useDedicatedIp (port forwards were ignored, TD-PORTFWD);
                # a host without one fails every create (TD-NOPUBLICIP, 8 of 31 creates).
                continue
            gpu_hr = _dec(gpu.get("price_per_hr"))
            # A GPU without a pricing block is priced from what the API gives: the GPU price;
            # CPU, RAM and disk are added where their unit price is given.
            pricing = gpu.get("pricing") if isinstance(gpu.get("pricing"), dict) else {}
            vcpu_hr, ram_hr, disk_hr = (
                _dec(pricing.get(k)) or Decimal("0")
                for k in ("per_vcpu_hr", "per_gb_ram_hr", "per_gb_storage_hr")
            )
            if not v0 or max_count <= 0 or not vram or gpu_hr is None:
                continue  # no stock, or no price at all
            res = gpu.get("resources") if isinstance(gpu.get("resources"), dict) else {}
            if res.get("max_storage_gb") is not None and _int(res["max_storage_gb"]) < DEFAULT_STORAGE_GB:
                continue
            for count in (c for c in GPU_COUNTS if c <= max_count):
                vcpus, ram = DEFAULT_VCPUS_PER_GPU * count, DEFAULT_RAM_GB_PER_GPU * count
                offer_id = f"{loc_id}:{v0}:{count}"
                if res.get("max_vcpus") is not None:
                    vcpus = min(vcpus, _int(res["max_vcpus"])) // VCPU_STEP * VCPU_STEP
                if res.get("max_ram_gb") is not None:
                    ram = min(ram, _int(res["max_ram_gb"])) // RAM_STEP_GB * RAM_STEP_GB
                if vcpus <= 0 or ram <= 0:
                    continue
                if (vcpus, ram) != (DEFAULT_VCPUS_PER_GPU * count, DEFAULT_RAM_GB_PER_GPU * count):
                    offer_id += f":{vcpus}:{ram}"  # a capped config must rent exactly what it priced
                # price_per_hr is per GPU; CPU, RAM and disk are billed on top (2.2 Pricing).
                total = gpu_hr * count + vcpu_hr * vcpus + ram_hr * ram + disk_hr * DEFAULT_STORAGE_GB
                offers.append(
                    OfferData(
                        provider=self.name,
                        provider_offer_id=offer_id,
                        gpu_type=gpu_type,
                        gpu_count=count,
                        vram_gb=vram,
                        price_per_hour=http.to_money(total) or Decimal("0"),
                        location=place,
                        host=str(loc_id),  # v2 offers are per location; it is the host we know
                        # TensorDock publishes no reliability figure, and /locations is often
                        # stale (seed: "No available nodes found" on create); don't invent one.
                        reliability=None,
                        cpu_cores=vcpus,
                        ram_gb=ram,
                        disk_gb=DEFAULT_STORAGE_GB,
                        # Storage is priced per GB-hour (PROVIDERS.md 2.2 Pricing); the total
                        # above includes DEFAULT_STORAGE_GB of it.
                        storage_price_per_gb_hour=disk_hr,
                        disk_gb_default=DEFAULT_STORAGE_GB,
                        max_disk_gb=_int(res["max_storage_gb"])
                        if res.get("max_storage_gb") is not None
                        else None,
                    )
                )
        return offers

    # ---------------------------------------------------------------- create
    @staticmethod
    def parse_offer_id(offer_id: str) -> tuple[str, str, int, int, int]:
        """``location:v0Name:count[:vcpus:ram]`` -> (location, v0Name, count, vcpus, ram)."""
        parts = offer_id.split(":")
        if len(parts) not in (3, 5) or not all(parts) or not all(p.isdigit() for p in parts[2:]):
            raise PermanentError(f"tensordock: malformed offer id {offer_id!r}")
        count = int(parts[2])
        vcpus, ram = (
            (int(parts[3]), int(parts[4]))
            if len(parts) == 5
            else (DEFAULT_VCPUS_PER_GPU * count, DEFAULT_RAM_GB_PER_GPU * count)
        )
        return parts[0], parts[1], count, vcpus, ram

    @staticmethod
    def cloud_init_runcmd(public_key: str, onstart: str = "", env: dict[str, str] | None = None) -> list[str]:
        """The API's ``ssh_key`` is required but was not installed (TD-SSHKEY-LATE), so every key
        (one per line) is written to root's and the default ``user``'s authorized_keys first (SSH
        works while the driver is being repaired), then DRIVER_REPAIR, then the onstart script."""
        keys = [shlex.quote(line) for line in _keys(public_key)]
        cmds = ["mkdir -p /root/.ssh && chmod 700 /root/.ssh"]
        cmds += [f"echo {key} >> /root/.ssh/authorized_keys" for key in keys]
        cmds += [
            f"mkdir -p /home/user/.ssh && echo {key} >> /home/user/.ssh/authorized_keys"
            " && chown -R user:user /home/user/.ssh"
            for key in keys
        ]
        cmds.append(f"bash -c {shlex.quote(DRIVER_REPAIR)} >> /root/shopper-driver-repair.log 2>&1")
        if onstart.strip():
            # No env support on TensorDock: export the valid names (Vast's "-p H:C" keys are not).
            exports = "".join(
                f"export {k}={shlex.quote(v)}\n"
                for k, v in (env or {}).items()
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
            )
            cmds.append(f"bash -c {shlex.quote(exports + onstart)}")
        return cmds

    def create_instance(self, request: CreateRequest) -> str:
        location_id, v0, count, vcpus, ram = self.parse_offer_id(request.offer_id)
        image = request.image if re.fullmatch(r"[a-z0-9]+", request.image or "") else DEFAULT_IMAGE
        attributes = {
            "name": request.label,  # no rename endpoint: the name is our label
            "type": "virtualmachine",
            "image": image,
            "resources": {
                "vcpu_count": vcpus,
                "ram_gb": ram,
                "storage_gb": max(DEFAULT_STORAGE_GB, request.disk_gb or 0),
                "gpus": {v0: {"count": count}},
            },
            "location_id": location_id,
            # port_forwards were ignored at some locations (seed BUG-008): SSH on ipAddress:22.
            "useDedicatedIp": True,
            # One key only: the field takes a single key (and installs none, TD-SSHKEY-LATE); all
            # of them are delivered by cloud-init below.
            "ssh_key": next(iter(_keys(request.ssh_public_key)), ""),
            "cloud_init": {
                "runcmd": self.cloud_init_runcmd(request.ssh_public_key, request.onstart, request.env)
            },
        }
        body = {"data": {"type": "virtualmachine", "attributes": attributes}}
        resp = http.request(self, "POST", "/instances", json=body)
        if not resp.ok or _body_error(resp.data):  # HTTP 200 can carry {"status": 400, "error"}
            raise self._fail(resp, "POST", "/instances")
        data = resp.data.get("data", resp.data) if isinstance(resp.data, dict) else None
        instance_id = _str(data.get("id")) if isinstance(data, dict) else ""
        if not instance_id:
            raise PermanentError(http.describe(self, "POST", "/instances", resp, "no instance id in answer"))
        return instance_id

    # ---------------------------------------------------------------- read
    def get_instance(self, instance_id: str) -> InstanceData:
        path = f"/instances/{_seg(instance_id)}"
        resp = http.request(self, "GET", path)
        if not resp.ok or _body_error(resp.data) or not isinstance(resp.data, dict):
            error = self._fail(resp, "GET", path)
            if "not found" in error.message.lower():
                raise NotFound(error.message, status=resp.status)
            raise error
        item = resp.data.get("data", resp.data)  # flat (live) or data-wrapped (3rd party)
        if not isinstance(item, dict) or not item.get("id"):
            raise NotFound(f"tensordock instance {instance_id} not found", status=resp.status)
        return self._instance(item)

    def list_instances(self, label_prefix: str) -> list[InstanceData]:
        resp = http.request(self, "GET", "/instances")
        if not resp.ok or _body_error(resp.data) or not isinstance(resp.data, dict):
            raise self._fail(resp, "GET", "/instances")
        # Three shapes seen: data[] (seed, live), data.instances[] (docs), data.attributes.instances[].
        data = resp.data.get("data")
        items: Any = None
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict):
            items = data.get("instances")
            if items is None and isinstance(data.get("attributes"), dict):
                items = data["attributes"].get("instances")
        if not isinstance(items, list):  # never read an unknown shape as "no instances"
            raise PermanentError(http.describe(self, "GET", "/instances", resp, "unrecognised list shape"))
        out = [self._instance(i) for i in items if isinstance(i, dict)]
        return [i for i in out if (i.label or "").startswith(label_prefix)]

    def _instance(self, item: dict[str, Any]) -> InstanceData:
        fields = {**item, **(item.get("attributes") if isinstance(item.get("attributes"), dict) else {})}
        status = _str(fields.get("status")).lower()  # casing is mixed: "running" vs "Stopped"
        host, port = _str(fields.get("ipAddress")), None
        if host:
            forwards = fields.get("portForwards") or []
            ssh = [f for f in forwards if isinstance(f, dict) and _int(f.get("internal_port")) == 22]
            # The external port may differ from the one asked for; with a dedicated IP and no
            # forwards, SSH is on 22 (seed BUG-008).
            port = _int(ssh[0].get("external_port")) if ssh else 22
        price = fields.get("rateHourly", fields.get("price_per_hour"))
        return InstanceData(
            provider=self.name,
            instance_id=_str(str(fields.get("id") or "")),
            label=_str(fields.get("name")) or None,
            state=_STATES.get(status, STATE_PENDING),
            raw_status=status,
            ssh_host=host,
            ssh_port=port or (22 if host else None),
            ssh_user="root",  # the key is installed for root and user; root matches Vast
            price_per_hour=http.to_money(price),
            started_at=http.to_time(fields.get("created_at", fields.get("createdAt"))),
        )

    # ---------------------------------------------------------------- delete
    def destroy_instance(self, instance_id: str) -> None:
        path = f"/instances/{_seg(instance_id)}"
        resp = http.request(self, "DELETE", path)
        if resp.status == 404:
            raise NotFound(http.describe(self, "DELETE", path, resp), status=404)
        if not resp.ok or _body_error(resp.data):
            error = self._fail(resp, "DELETE", path)
            if "not found" in error.message.lower():
                raise NotFound(error.message, status=resp.status)
            raise error
