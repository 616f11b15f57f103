"""Vast.ai adapter (REST; v0 for search/create/get/destroy/ssh, v1 for the instance listing).

Facts and quirks cited below are from shared/providers/PROVIDERS.md section 1.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from . import http
from .base import (
    FEATURE_ATTACH_SSH_KEY,
    FEATURE_LABEL_LOOKUP,
    STATE_BOOTING,
    STATE_DELETING,
    STATE_FAILED,
    STATE_PENDING,
    STATE_RUNNING,
    STATE_STOPPED,
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
    Transient,
)
from .gpus import VRAM_TOLERANCE, vast_gpu_type

# The disk (GB) we rent with unless asked otherwise. Search sends it as ``allocated_storage`` so
# that ``dph_total`` already includes storage at this size (1.5: dph_total = base + storage).
DEFAULT_DISK_GB = 10
DEFAULT_IMAGE = "vastai/pytorch:2.5.1-cuda-12.4.1-py311"
SEARCH_LIMIT = 5000
LIST_PAGE_SIZE = 25  # the v1 listing accepts 1-25
MAX_LIST_PAGES = 1000  # a safety stop against a server that keeps returning a token

# actual_status -> normalized state (1.6 "Status vocabulary"). None means still provisioning.
_STATES: dict[str | None, str] = {
    None: STATE_PENDING,
    "": STATE_PENDING,
    "created": STATE_PENDING,
    "loading": STATE_BOOTING,
    "rebooting": STATE_BOOTING,
    "restarting": STATE_BOOTING,
    "running": STATE_RUNNING,
    "stopped": STATE_STOPPED,
    "frozen": STATE_STOPPED,  # paused with memory; still billed for the GPU, but not usable
    "exited": STATE_FAILED,  # the docs call exited/unknown/offline terminal
    "unknown": STATE_FAILED,
    "offline": STATE_FAILED,
    "destroyed": STATE_DELETING,
}


def _seg(value: str) -> str:
    """An id as one URL path segment (ids come from the database; never let one add a path)."""
    return quote(str(value).strip(), safe="")


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _query(params: dict[str, Any]) -> dict[str, str]:
    """Like the CLI's apiurl(): non-string values are JSON-encoded; requests then quote_plus-es."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


class VastAI(Provider):
    name = "vastai"
    display_name = "Vast.ai"
    features = frozenset({FEATURE_ATTACH_SSH_KEY, FEATURE_LABEL_LOOKUP})
    min_interval = 1.0  # the seed saw 429s above ~2 req/s

    def _call(self, method: str, path: str, **kwargs: Any) -> http.ApiResponse:
        resp = http.request(self, method, path, **kwargs)
        # An expired 2FA session answers 404 "Session expired" (vastai cli/main.py): that is an
        # auth failure, and must never read as "instance not found" / "offer gone".
        if resp.status == 404 and "session expired" in resp.text.lower():
            raise AuthFailed(http.describe(self, method, path, resp, "session expired"), status=404)
        return resp

    # ---------------------------------------------------------------- offers
    def search_offers(self, filter: OfferFilter | None = None) -> list[OfferData]:
        f = filter or OfferFilter()
        q: dict[str, Any] = {
            # The CLI's default filters: verified, non-external, rentable, not rented.
            "verified": {"eq": True},
            "external": {"eq": False},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "type": "on-demand",
            "allocated_storage": DEFAULT_DISK_GB,
            "limit": SEARCH_LIMIT,
            "order": [["dph_total", "asc"]],
        }
        if f.min_gpus:
            q["num_gpus"] = {"gte": f.min_gpus}
        if f.min_vram_gb:
            # gpu_ram is MB on the wire (GB*1000 like the CLI). Loosened by the snapping tolerance
            # because an "48GB" L40S reports 46068 MB; vram_gb is re-checked after snapping.
            q["gpu_ram"] = {"gte": int(f.min_vram_gb * 1000 * (1 - VRAM_TOLERANCE))}
        if f.max_price is not None:
            q["dph_total"] = {"lte": float(f.max_price)}  # wire format only; no money arithmetic

        method, path = "POST", "/api/v0/bundles/"
        resp = self._call(method, path, json=q)
        if resp.status in (404, 410):
            # One third-party client says /bundles/ is gone; the documented search is the same
            # filter wrapped in {"select_cols", "q"} with the same response shape.
            method, path = "PUT", "/api/v0/search/asks/"
            resp = self._call(method, path, json={"select_cols": ["*"], "q": q})
        data = resp.data if isinstance(resp.data, dict) else {}
        if not resp.ok or data.get("success") is False or not isinstance(data.get("offers"), list):
            raise PermanentError(http.describe(self, method, path, resp, "search failed"), status=resp.status)

        offers = [o for o in (self._offer(raw) for raw in data["offers"]) if o is not None]
        return [
            o
            for o in offers
            if (not f.min_gpus or o.gpu_count >= f.min_gpus)
            and (not f.min_vram_gb or o.vram_gb >= f.min_vram_gb)
            and (f.max_price is None or o.price_per_hour <= f.max_price)
        ]

    def _offer(self, raw: Any) -> OfferData | None:
        if not isinstance(raw, dict):
            return None
        gpu_name = _str(raw.get("gpu_name"))
        num_gpus = _int(raw.get("num_gpus")) or 0
        price = http.to_money(raw.get("dph_total"))
        # Skip what gpuhunt and the CLI skip: no GPU name, already rented, not rentable.
        if not gpu_name or num_gpus <= 0 or price is None or raw.get("id") is None:
            return None
        if raw.get("rented") is True or raw.get("rentable") is False:
            return None
        gpu_type, vram_gb = vast_gpu_type(gpu_name, raw.get("gpu_ram"))

        # cpu_cores may be null (gpuhunt); cpu_ram is the whole machine in MB and our share is
        # cpu_ram * cpu_cores_effective / cpu_cores.
        cores, effective, cpu_ram = raw.get("cpu_cores"), raw.get("cpu_cores_effective"), raw.get("cpu_ram")
        ram_gb = None
        if cores and effective and cpu_ram:
            ram_gb = int(Decimal(str(cpu_ram)) * Decimal(str(effective)) / Decimal(str(cores)) / 1000)
        reliability = raw.get("reliability")
        disk = raw.get("disk_space")
        return OfferData(
            provider=self.name,
            provider_offer_id=str(raw["id"]),
            gpu_type=gpu_type,
            gpu_count=num_gpus,
            vram_gb=vram_gb,
            price_per_hour=price,
            location=_str(raw.get("geolocation")),
            reliability=Decimal(str(reliability)) if isinstance(reliability, int | float) else None,
            cpu_cores=_int(effective),  # the vCPUs we get, not the host's core count
            ram_gb=ram_gb,
            disk_gb=_int(disk) if isinstance(disk, int | float) else None,
            cuda_version=str(raw["cuda_max_good"]) if raw.get("cuda_max_good") is not None else "",
            driver_version=_str(raw.get("driver_version")),
        )

    # ---------------------------------------------------------------- create
    def create_instance(self, request: CreateRequest) -> str:
        path = f"/api/v0/asks/{_seg(request.offer_id)}/"
        body = {
            "client_id": "me",
            "image": request.image or DEFAULT_IMAGE,
            "disk": request.disk_gb or DEFAULT_DISK_GB,
            "label": request.label,
            "env": dict(request.env),  # must be a JSON object (1.4)
            "runtype": "ssh_direc ssh_proxy",  # sic: the SDK's spelling
            "onstart": request.onstart,
            "price": None,  # null price => on-demand; a number would make it a bid
            "cancel_unavail": True,
            "target_state": "running",
        }
        resp = self._call("PUT", path, json=body)
        data = resp.data if isinstance(resp.data, dict) else {}
        contract = data.get("new_contract")
        instance_id = str(contract) if contract not in (None, "", 0) else None
        if resp.ok and data.get("success") is not False and instance_id:
            return instance_id
        if resp.ok and data.get("success") is not False:
            raise PermanentError(http.describe(self, "PUT", path, resp, "no new_contract in answer"))
        # 200 + success:false can still carry new_contract (an instance was created, e.g. a
        # stopped spot): instance_id tells the caller to destroy it (dstack does the same).
        raise self._error(resp, "PUT", path, create=True, instance_id=instance_id)

    def _error(
        self, resp: http.ApiResponse, method: str, path: str, *, create: bool = False, **kw: Any
    ) -> ProviderError:
        code = resp.error_code
        msg = http.describe(self, method, path, resp, code)
        # Key on the error code, not the status: no_such_ask comes on 400, 404 and 410. A create
        # answered 404 "Offer not found" / 410 "Offer no longer available" without a code is the same.
        if code == "no_such_ask" or (create and not code and resp.status in (404, 410)):
            return OfferUnavailable(msg, status=resp.status, **kw)
        if code in ("no_such_instance",):
            return NotFound(msg, status=resp.status, **kw)
        if "insufficient" in code or "credit" in code:
            return InsufficientFunds(msg, status=resp.status, **kw)
        return PermanentError(msg, status=resp.status, **kw)

    # ---------------------------------------------------------------- read
    def get_instance(self, instance_id: str) -> InstanceData:
        path = f"/api/v0/instances/{_seg(instance_id)}/"
        resp = self._call("GET", path, params=_query({"owner": "me"}))
        if resp.status == 404:
            raise NotFound(http.describe(self, "GET", path, resp), status=404)
        if not resp.ok or not isinstance(resp.data, dict) or "instances" not in resp.data:
            raise self._error(resp, "GET", path)
        # Singular object under a plural key; null when the instance is gone (1.8 #2).
        found = resp.data["instances"]
        if isinstance(found, list):  # the legacy list form, just in case
            found = next((i for i in found if str(i.get("id")) == str(instance_id)), None)
        if not isinstance(found, dict):
            raise NotFound(f"vastai instance {instance_id} not found", status=resp.status)
        return self._instance(found)

    def list_instances(self, label_prefix: str) -> list[InstanceData]:
        # The API filters labels by equality/in only, so fetch every page and filter here.
        path = "/api/v1/instances/"
        params: dict[str, Any] = {
            "select_filters": {},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": LIST_PAGE_SIZE,
        }
        found: list[InstanceData] = []
        seen_tokens: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            resp = self._call("GET", path, params=_query(params))
            data = resp.data if isinstance(resp.data, dict) else None
            # Never read a failure as "no instances" (safety rule 5).
            if not resp.ok or data is None or data.get("success") is False:
                raise self._error(resp, "GET", path)
            if not isinstance(data.get("instances"), list):
                raise PermanentError(http.describe(self, "GET", path, resp, "no instances list"))
            for raw in data["instances"]:
                if isinstance(raw, dict) and _str(raw.get("label")).startswith(label_prefix):
                    found.append(self._instance(raw))
            token = data.get("next_token")
            if not token:
                return found
            if token in seen_tokens:
                raise Transient(f"vastai {path}: pagination token repeated")
            seen_tokens.add(token)
            params["after_token"] = str(token)
        raise Transient(f"vastai {path}: more than {MAX_LIST_PAGES} pages")

    def _instance(self, raw: dict[str, Any]) -> InstanceData:
        status = raw.get("actual_status")
        status = status.strip().lower() if isinstance(status, str) else None
        message = _str(raw.get("status_msg"))
        state = _STATES.get(status, STATE_PENDING)
        if status == "created" and "OCI runtime create failed" in message:
            state = STATE_FAILED  # dstack: a container that can never start
        host, port = self._ssh(raw)
        return InstanceData(
            provider=self.name,
            instance_id=str(raw.get("id")),
            label=_str(raw.get("label")) or None,
            state=state,
            raw_status=status or "",
            status_message=message,
            ssh_host=host,
            ssh_port=port,
            ssh_user="root",
            price_per_hour=http.to_money(raw.get("dph_total")),
        )

    @staticmethod
    def _ssh(raw: dict[str, Any]) -> tuple[str, int | None]:
        """Direct ``public_ipaddr:ports["22/tcp"][0].HostPort`` if mapped, else the proxy
        ``ssh_host:ssh_port`` (+1 for jupyter images), as the CLI's ssh-url does (1.6)."""
        ports = raw.get("ports") if isinstance(raw.get("ports"), dict) else {}
        mapping = ports.get("22/tcp")
        ip = _str(raw.get("public_ipaddr"))  # may carry a trailing newline/space
        if ip and isinstance(mapping, list) and mapping and isinstance(mapping[0], dict):
            host_port = _int(_str(mapping[0].get("HostPort")))  # HostPort is a string
            if host_port:
                return ip, host_port
        host, port = _str(raw.get("ssh_host")), _int(raw.get("ssh_port"))
        if not host or not port:
            return "", None
        if "jupyter" in _str(raw.get("image_runtype")):
            port += 1
        return host, port

    # ---------------------------------------------------------------- delete / keys
    def destroy_instance(self, instance_id: str) -> None:
        path = f"/api/v0/instances/{_seg(instance_id)}/"
        resp = self._call("DELETE", path, json={})
        data = resp.data if isinstance(resp.data, dict) else {}
        if resp.ok and data.get("success") is not False:
            return
        if resp.status == 404:
            raise NotFound(http.describe(self, "DELETE", path, resp), status=404)
        raise self._error(resp, "DELETE", path)

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None:
        # The create body's ssh key does not reliably register (seed); this call does.
        path = f"/api/v0/instances/{_seg(instance_id)}/ssh/"
        resp = self._call("POST", path, json={"ssh_key": public_key.strip()})
        data = resp.data if isinstance(resp.data, dict) else {}
        if resp.ok and data.get("success") is not False:
            return
        if resp.status == 404:
            raise NotFound(http.describe(self, "POST", path, resp), status=404)
        raise self._error(resp, "POST", path)
