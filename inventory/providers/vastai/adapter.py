"""Vast.ai adapter (REST; v0 for search/create/get/destroy/ssh, v1 for the instance listing).

Facts and quirks cited below are from shared/providers/PROVIDERS.md section 1.
"""

from __future__ import annotations

import json
import shlex
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from inventory.providers import http
from inventory.providers.base import (
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
from inventory.providers.gpus import VRAM_TOLERANCE

from .names import vast_gpu_type

# The disk (GB) we rent with unless asked otherwise. Search sends it as ``allocated_storage`` so
# that ``dph_total`` already includes storage at this size (1.5: dph_total = base + storage).
DEFAULT_DISK_GB = 10
DEFAULT_IMAGE = "vastai/pytorch:2.5.1-cuda-12.4.1-py311"
SEARCH_LIMIT = 5000  # what we ask per page; the server may answer fewer (see search_offers)
MAX_SEARCH_PAGES = 500
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


def _mbps(value: Any) -> int | None:
    """``inet_down``/``inet_up`` (Mbps, a float measured by Vast) as whole Mbps; None if absent."""
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


def _verified(value: Any) -> bool | None:
    """``verification`` ("verified", "unverified", "deverified") as a bool; None if absent."""
    return None if not isinstance(value, str) or not value else value == "verified"


def _duration_hours(value: Any) -> int | None:
    """``duration`` (seconds the host still allows, PROVIDERS.md 1.5) in whole hours; None when
    absent or not positive (the docs' example shows a negative one)."""
    number = _number(value)
    return int(number // 3600) if number is not None and number > 0 else None


def _number(value: Any) -> Decimal | None:
    """A JSON number (or numeric string) as a Decimal via str(), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def cuda_version(value: Any) -> str:
    """``cuda_max_good`` (a float such as 12.8, sometimes 13 or "12.8") as ``"12.8"``/``"13.0"``:
    the highest CUDA the host's driver claims (FIELD_NOTES VA-CUDA-LIE: a claim, checked later)."""
    number = _number(value)
    if number is None or number <= 0:
        return ""
    major, _, minor = f"{number.normalize():f}".partition(".")
    return f"{major}.{minor or '0'}"


def _cpu_and_ram(raw: dict[str, Any]) -> tuple[int | None, int | None]:
    """The vCPUs and RAM (GB) this offer gets. ``cpu_ram`` is MB for the whole machine and our
    share is ``cpu_cores_effective / cpu_cores`` (gpuhunt). Either may be missing (``cpu_cores``
    can be null, PROVIDERS.md 1.5); then the share is ``gpu_frac``, the fraction of the machine's
    GPUs the offer rents, which is how Vast derives ``cpu_cores_effective`` in the first place."""
    cores, effective = _number(raw.get("cpu_cores")), _number(raw.get("cpu_cores_effective"))
    cpu_ram, frac = _number(raw.get("cpu_ram")), _number(raw.get("gpu_frac"))
    share = None
    if cores and effective:
        share = effective / cores
    elif frac and 0 < frac <= 1:
        share = frac
    if effective is None and cores and share is not None:
        effective = cores * share
    cpus = int(effective) if effective and effective >= 1 else None
    ram = int(cpu_ram * share / 1000) if cpu_ram and share is not None else None
    return cpus, ram or None


def onstart_script(public_key: str, onstart: str = "") -> str:
    """The start-up script Vast runs in the container.

    - ``~/.no_auto_tmux`` first: Vast's SSH images attach every login to tmux unless it exists,
      and a handed-off machine must give a plain shell (scripts, scp, the agent's checks).
    - The user's keys are written to root's authorized_keys here too, so login never depends on
      the account-level keys (they reach only instances created after they were added, VDOC) nor
      on the per-instance attach call alone (10-15 s late, FIELD_NOTES VA-SSH).
    """
    lines = ["touch ~/.no_auto_tmux", "mkdir -p ~/.ssh && chmod 700 ~/.ssh"]
    for key in (k.strip() for k in public_key.splitlines()):
        if key:
            quoted = shlex.quote(key)
            keys_file = "~/.ssh/authorized_keys"
            lines.append(f"grep -qxF {quoted} {keys_file} 2>/dev/null || echo {quoted} >> {keys_file}")
    lines.append("chmod 600 ~/.ssh/authorized_keys")
    if onstart.strip():
        lines.append(onstart)
    return "\n".join(lines)


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
    # How search is asked; switched for good when the server refuses a form (see _search_page).
    search_method: tuple[str, str] = ("POST", "/api/v0/bundles/")
    # What the last search_offers saw (the health endpoint reports it through ProviderFeed).
    last_search_pages: int = 0
    last_search_returned: int = 0

    def _base_query(self, f: OfferFilter) -> dict[str, Any]:
        q: dict[str, Any] = {
            # The CLI's default filters: verified, non-external, rentable, not rented.
            "verified": {"eq": True},
            "external": {"eq": False},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "type": "on-demand",
            "allocated_storage": DEFAULT_DISK_GB,
            "limit": SEARCH_LIMIT,
            # By id, so that the next page starts after the last id seen (keyset paging).
            "order": [["id", "asc"]],
        }
        if f.min_gpus:
            q["num_gpus"] = {"gte": f.min_gpus}
        if f.min_vram_gb:
            # gpu_ram is MB on the wire (GB*1000 like the CLI). Loosened by the snapping tolerance
            # because an "48GB" L40S reports 46068 MB; vram_gb is re-checked after snapping.
            q["gpu_ram"] = {"gte": int(f.min_vram_gb * 1000 * (1 - VRAM_TOLERANCE))}
        if f.max_price is not None:
            q["dph_total"] = {"lte": float(f.max_price)}  # wire format only; no money arithmetic
        return q

    def _search_page(self, q: dict[str, Any]) -> list[Any]:
        """One search request. ``POST /bundles/`` is the CLI's form; a server that answers 405
        to it is asked ``GET /bundles/?q=<json>`` (the form the seed used live in Feb 2026), and
        one that answers 404/410 the documented ``PUT /search/asks/`` (PROVIDERS.md 1.1)."""
        method, path = self.search_method
        resp = self._send_search(method, path, q)
        if method == "POST" and resp.status == 405:
            method, path = "GET", "/api/v0/bundles/"
            resp = self._send_search(method, path, q)
        if method != "PUT" and resp.status in (404, 410):
            method, path = "PUT", "/api/v0/search/asks/"
            resp = self._send_search(method, path, q)
        data = resp.data if isinstance(resp.data, dict) else {}
        if not resp.ok or data.get("success") is False or not isinstance(data.get("offers"), list):
            raise PermanentError(http.describe(self, method, path, resp, "search failed"), status=resp.status)
        self.search_method = (method, path)
        return data["offers"]

    def _send_search(self, method: str, path: str, q: dict[str, Any]) -> http.ApiResponse:
        if method == "GET":
            return self._call(method, path, params={"q": json.dumps(q)})
        if method == "PUT":
            return self._call(method, path, json={"select_cols": ["*"], "q": q})
        return self._call(method, path, json=q)

    def search_offers(self, filter: OfferFilter | None = None) -> list[OfferData]:
        """Every matching offer. The server may cap an answer below ``limit`` (64 in one report,
        FIELD_NOTES VA-LISTING), so pages are asked by id until one brings nothing new: an
        answer is never silently cut short. Too many pages raise instead of truncating."""
        f = filter or OfferFilter()
        q = self._base_query(f)
        raws: dict[int, Any] = {}
        last_id: int | None = None
        pages = 0
        for pages in range(1, MAX_SEARCH_PAGES + 1):  # noqa: B007 (reported after the loop)
            page_q = dict(q, id={"gt": last_id}) if last_id is not None else q
            rows = self._search_page(page_q)
            ids = {i: r for r in rows if isinstance(r, dict) and (i := _int(r.get("id"))) is not None}
            new = {i: r for i, r in ids.items() if i not in raws}
            if not new:
                break
            raws.update(new)
            last_id = max(raws)
        else:
            raise Transient(f"vastai search: more than {MAX_SEARCH_PAGES} pages; refusing a truncated menu")
        self.last_search_pages, self.last_search_returned = pages, len(raws)

        offers = [o for o in (self._offer(raw) for raw in raws.values()) if o is not None]
        return [
            o
            for o in offers
            if (not f.min_gpus or o.gpu_count >= f.min_gpus)
            and (not f.min_vram_gb or o.vram_gb >= f.min_vram_gb)
            and (f.max_price is None or o.price_per_hour <= f.max_price)
        ]

    def get_offer(self, offer_id: str) -> OfferData | None:
        """Ask for this one offer (an ``id`` filter), never the whole search again."""
        ask_id = _int(offer_id.strip()) if offer_id.strip().isdigit() else None
        if ask_id is None:
            return None  # not an id Vast could have given us
        q = dict(self._base_query(OfferFilter()), id={"eq": ask_id}, limit=1)
        for raw in self._search_page(q):
            if isinstance(raw, dict) and _int(raw.get("id")) == ask_id:
                return self._offer(raw)
        return None

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
        cpu_cores, ram_gb = _cpu_and_ram(raw)
        # Offers carry reliability and reliability2; some answers only the latter (which is also
        # what instances expose, PROVIDERS.md 1.5): a missing figure is not "unreliable".
        reliability = _number(raw.get("reliability"))
        if reliability is None:
            reliability = _number(raw.get("reliability2"))
        disk = raw.get("disk_space")
        # storage_cost is $/GB/month: per hour it is storage_cost / 30 / 24 (PROVIDERS.md 1.5,
        # gpuhunt; FIELD_NOTES X-BILLING), billed on top of dph_base for the disk allocated.
        storage_cost = _number(raw.get("storage_cost"))
        storage_hour = (
            (storage_cost / 720).quantize(Decimal("0.000001")) if storage_cost is not None else None
        )
        return OfferData(
            provider=self.name,
            provider_offer_id=str(raw["id"]),
            gpu_type=gpu_type,
            gpu_count=num_gpus,
            vram_gb=vram_gb,
            price_per_hour=price,
            location=_str(raw.get("geolocation")),
            host="" if raw.get("machine_id") is None else str(raw["machine_id"]),
            reliability=reliability,
            cpu_cores=cpu_cores,
            ram_gb=ram_gb,
            disk_gb=_int(disk) if isinstance(disk, int | float) else None,
            cuda_version=cuda_version(raw.get("cuda_max_good")),
            driver_version=_str(raw.get("driver_version")),
            storage_price_per_gb_hour=storage_hour,
            disk_gb_default=DEFAULT_DISK_GB,  # dph_total is asked at allocated_storage = this
            max_disk_gb=_int(disk) if isinstance(disk, int | float) else None,  # free disk on the host
            # Bandwidth is charged per GB on top of dph_total (PROVIDERS.md 1.5, X-BILLING).
            inet_down_price_per_gb=http.to_money(raw.get("inet_down_cost")),
            inet_up_price_per_gb=http.to_money(raw.get("inet_up_cost")),
            inet_down_mbps=_mbps(raw.get("inet_down")),
            inet_up_mbps=_mbps(raw.get("inet_up")),
            # The search asks for verified hosts only; the row says so itself (PROVIDERS.md 1.5).
            verified=_verified(raw.get("verification")),
            datacenter=None if _int(raw.get("hosting_type")) is None else _int(raw.get("hosting_type")) >= 1,
            max_duration_hours=_duration_hours(raw.get("duration")),
        )

    # ---------------------------------------------------------------- create
    def create_instance(self, request: CreateRequest) -> str:
        path = f"/api/v0/asks/{_seg(request.offer_id)}/"
        body = {
            "client_id": "me",
            "image": request.image or DEFAULT_IMAGE,
            "disk": request.disk_gb or DEFAULT_DISK_GB,
            "label": request.label,
            # Must be a JSON object; ports ride in it as "-p H:C": "1" keys and Vast maps each
            # container port to a host port of its choosing (PROVIDERS.md 1.4, 1.6).
            "env": {**request.env, **{f"-p {p}:{p}": "1" for p in request.ports}},
            "runtype": "ssh_direc ssh_proxy",  # sic: the SDK's spelling
            "onstart": onstart_script(request.ssh_public_key, request.onstart),
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
        text = resp.data.get("msg") if isinstance(resp.data, dict) else None
        # Key on the error code, not the status: no_such_ask comes on 400, 404 and 410, and live it
        # rides in the msg of a 400 invalid_args (FIELD_NOTES VA-NOSUCHASK). A create answered 404
        # "Offer not found" / 410 "Offer no longer available" without a code is the same.
        gone = code == "no_such_ask" or (isinstance(text, str) and "no_such_ask" in text)
        if gone or (create and not code and resp.status in (404, 410)):
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
        endpoints = self._ssh_endpoints(raw)
        host, port = endpoints[0] if endpoints else ("", None)
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
            ssh_endpoints=endpoints,
            started_at=http.to_time(raw.get("start_date")),
            ports=self._mapped_ports(raw),
        )

    @staticmethod
    def _mapped_ports(raw: dict[str, Any]) -> dict[int, tuple[str, int]]:
        """Every exposed container port but SSH as ``public_ipaddr:HostPort`` (Docker-style
        ``ports``, HostPort a string, ``{}``/null until running: PROVIDERS.md 1.6)."""
        ports = raw.get("ports") if isinstance(raw.get("ports"), dict) else {}
        ip = _str(raw.get("public_ipaddr"))
        out: dict[int, tuple[str, int]] = {}
        for key, mapping in ports.items():
            name, _, proto = str(key).partition("/")
            container = _int(name) if name.isdigit() else None
            if not ip or container in (None, 22) or proto not in ("", "tcp") or not isinstance(mapping, list):
                continue
            first = mapping[0] if mapping and isinstance(mapping[0], dict) else {}
            host_port = _int(_str(first.get("HostPort")))
            if host_port:
                out[container] = (ip, host_port)
        return out

    @staticmethod
    def _ssh_endpoints(raw: dict[str, Any]) -> tuple[tuple[str, int], ...]:
        """Direct ``public_ipaddr:ports["22/tcp"][0].HostPort`` if mapped (what the CLI's ssh-url
        prints, 1.6), then the proxy ``ssh_host:ssh_port`` (+1 for jupyter images). Both are
        kept: direct SSH timed out where the proxy worked (FIELD_NOTES VA-SSH)."""
        out: list[tuple[str, int]] = []
        ports = raw.get("ports") if isinstance(raw.get("ports"), dict) else {}
        mapping = ports.get("22/tcp")  # may be null while ssh_port is set (skypilot)
        ip = _str(raw.get("public_ipaddr"))  # may carry a trailing newline/space
        if ip and isinstance(mapping, list) and mapping and isinstance(mapping[0], dict):
            host_port = _int(_str(mapping[0].get("HostPort")))  # HostPort is a string
            if host_port:
                out.append((ip, host_port))
        host, port = _str(raw.get("ssh_host")), _int(raw.get("ssh_port"))
        if host and port:
            if "jupyter" in _str(raw.get("image_runtype")):
                port += 1
            if (host, port) not in out:
                out.append((host, port))
        return tuple(out)

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

    # ---------------------------------------------------------------- account
    def account_balance(self) -> Decimal | None:
        """``GET /api/v0/users/current/``: ``credit`` (FIELD_NOTES X-BALANCE: the seed reads
        credit; ``balance`` is undocumented). At credit <= 0 Vast stops (does not destroy) every
        instance and keeps charging storage (X-BILLING)."""
        path = "/api/v0/users/current/"
        resp = self._call("GET", path)
        data = resp.data if isinstance(resp.data, dict) else None
        if not resp.ok or data is None:
            raise self._error(resp, "GET", path)
        credit = _number(data.get("credit"))
        if credit is None:
            raise ProviderError(http.describe(self, "GET", path, resp, "no credit in the answer"))
        return credit
