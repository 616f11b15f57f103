"""RunPod adapter on the REST v2 API (Bearer key). ``base_url`` includes ``/v2``.

Sources: /work/shared/providers/RUNPOD_LAMBDA.md section 1 (RP2 = runpod/docs v2 OpenAPI v2.9.0,
RPPLUG = RunPod's own migration notes). v1 is retired (410) and GraphQL is deprecated; v2 has no
balance or spot route, and we offer neither, so this adapter makes no GraphQL call at all.

Choices:
- Secure Cloud only. Community pods may get no public IP, and RunPod's SSH proxy is an interactive
  shell only (no scp, sftp or forwarding), which our handoff cannot use (1.4, 1.6).
- The rental's key rides in the pod's ``PUBLIC_KEY`` env, which the official images' ``/start.sh``
  appends to authorized_keys before starting sshd. The account's key list is never touched: its
  PUT replaces every key on the account (1.5).
- Our onstart script starts from ``args`` (RunPod has no cloud-init) and still ``exec``s the
  image's ``/start.sh`` so sshd comes up; an image without one gets our key and sshd directly.
- v2 has drifted since v2.9.0: every answer is parsed defensively (``runtime`` null or ``{}``,
  optional cursor pagination, a deleted pod as 404 or TERMINATED).
"""

from __future__ import annotations

import logging
import re
import shlex
from decimal import Decimal
from typing import Any

from inventory.providers import http
from inventory.providers.base import (
    FEATURE_LABEL_LOOKUP,
    FEATURE_SSH_KEY_AT_CREATE,
    STATE_BOOTING,
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
)

from .names import runpod_gpu_type

log = logging.getLogger(__name__)

CLOUD = "SECURE"  # see the module docstring: Community Cloud is left out
GPU_COUNTS = (1, 2, 4, 8)  # one catalog call per count: availability is scoped by count (1.4)
DEFAULT_DISK_GB = 40
# Container disk: $0.10 per GB-month while running (RPDOC:pods/pricing). The month length is
# UNCONFIRMED (RUNPOD_LAMBDA.md 4.5); 720 h gives the higher hourly figure, so we never under-quote.
DISK_PRICE_PER_GB_MONTH = Decimal("0.10")
HOURS_PER_MONTH = 720
DISK_PRICE_PER_GB_HOUR = DISK_PRICE_PER_GB_MONTH / HOURS_PER_MONTH
DEFAULT_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
MAX_LIST_PAGES = 100
# The only form of "no capacity": 400 with this detail, no machine-readable code (1.5, RPPLUG).
NO_CAPACITY = "no longer any instances available"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_STATES = {
    "PROVISIONING": STATE_PENDING,
    "STARTING": STATE_BOOTING,
    "RUNNING": STATE_RUNNING,  # only once SSH is known (see _instance)
    "EXITED": STATE_STOPPED,  # the disk is kept and billed
    "ERROR": STATE_FAILED,
}
GONE = "TERMINATED"

# Runs as the container's command. Keeps the image's own start-up (sshd via /start.sh) and starts
# our onstart script beside it; the script text travels in the SHOPPER_ONSTART env var so no
# quoting of it is needed here.
START_COMMAND = (
    'printf "%s\\n" "$SHOPPER_ONSTART" > /shopper-onstart.sh; '
    "(bash /shopper-onstart.sh > /var/log/shopper-onstart.log 2>&1 &); "
    "if [ -x /start.sh ]; then exec /start.sh; fi; "
    # An image without RunPod's /start.sh: install the key and start sshd ourselves.
    'mkdir -p /root/.ssh && printf "%s\\n" "$PUBLIC_KEY" >> /root/.ssh/authorized_keys; '
    "chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys; "
    "ssh-keygen -A; mkdir -p /run/sshd; (service ssh start || /usr/sbin/sshd); "
    "exec sleep infinity"
)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def make_offer_id(cloud: str, data_center: str, count: int, gpu_id: str) -> str:
    """``CLOUD:dataCenterId:count:gpu id``; the GPU id goes last and verbatim (RPV1 even has
    ``"NVIDIA  RTX A4500"`` with two spaces)."""
    return f"{cloud}:{data_center}:{count}:{gpu_id}"


def parse_offer_id(value: str) -> tuple[str, str, int, str]:
    parts = (value or "").split(":", 3)
    if len(parts) != 4 or parts[0] not in ("SECURE", "COMMUNITY") or not parts[1]:
        raise PermanentError(f"runpod: malformed offer id {value!r}")
    if not parts[2].isdigit() or int(parts[2]) < 1 or not parts[3].strip():
        raise PermanentError(f"runpod: malformed offer id {value!r}")
    return parts[0], parts[1], int(parts[2]), parts[3]


class RunPod(Provider):
    name = "runpod"
    display_name = "RunPod"
    features = frozenset({FEATURE_SSH_KEY_AT_CREATE, FEATURE_LABEL_LOOKUP})
    # RP2's example quota is 60/min (also 3000/h, 50000/day; real values UNCONFIRMED). A 429
    # carries Retry-After in seconds, which http.request hands to the shared limiter.
    min_interval = 1.0

    # ---------------------------------------------------------------- errors
    def _fail(self, resp: http.ApiResponse, method: str, path: str, *, create: bool = False) -> ProviderError:
        """Map a v2 problem+json answer to a typed error (RUNPOD_LAMBDA.md 1.9)."""
        data = _dict(resp.data)
        detail = " ".join(
            [http.to_text(data.get("detail"))]
            + [http.to_text(e) for e in data.get("errors") or [] if isinstance(e, str)]
        ).strip()
        message = http.describe(self, method, path, resp)
        if isinstance(data.get("error"), str):  # v1's envelope, never v2's (RPPLUG)
            return PermanentError(f"{message} [reached the retired v1 API, not v2]", status=resp.status)
        if resp.status == 400 and NO_CAPACITY in detail.lower():
            return OfferUnavailable(message, status=400)
        if resp.status == 402:
            return InsufficientFunds(message, status=402)
        if resp.status == 404 and not create:
            return NotFound(message, status=404)
        if resp.status == 410:
            return PermanentError(f"{message} [a retired RunPod API was called]", status=410)
        return PermanentError(message, status=resp.status)

    def _call(self, method: str, path: str, **kw: Any) -> http.ApiResponse:
        resp = http.request(self, method, path, **kw)
        if not resp.ok:
            raise self._fail(resp, method, path)
        return resp

    # ---------------------------------------------------------------- offers
    def _catalog(self, count: int) -> list[dict[str, Any]]:
        # include=AVAILABILITY requires product (else 400); count and cloud scope the availability.
        params = {"include": "AVAILABILITY", "product": "POD", "cloud": CLOUD, "count": str(count)}
        resp = self._call("GET", "/catalog/gpus", params=params)
        gpus = _dict(resp.data).get("gpus")
        if not isinstance(gpus, list):
            raise PermanentError(http.describe(self, "GET", "/catalog/gpus", resp, "no gpus list"))
        return [g for g in gpus if isinstance(g, dict)]

    def _gpu_offers(self, gpu: dict[str, Any], count: int) -> list[OfferData]:
        """One offer per data centre with stock. A GPU is skipped when it is not in our cloud
        (``secure`` false: its ``price.secure`` is then meaningless, 1.4), above its ``maxCount``,
        unpriced, or without availability information (never show stock we cannot vouch for)."""
        gpu_id = gpu.get("id") if isinstance(gpu.get("id"), str) else ""
        price = http.to_money(_dict(gpu.get("price")).get(CLOUD.lower()))
        if not gpu_id.strip() or gpu.get(CLOUD.lower()) is not True or not price or price <= 0:
            return []
        if count > http.to_int(_dict(gpu.get("maxCount")).get(CLOUD.lower())):
            return []
        if http.to_text(gpu.get("availability")).upper() in ("", "NONE"):
            return []
        gpu_type, vram = runpod_gpu_type(gpu_id, http.to_int(gpu.get("memory")))
        if not vram:
            return []
        cudas = [
            http.to_text(c.get("version"))
            for c in gpu.get("cudaVersions") or []
            if isinstance(c, dict) and c.get("available") is True
        ]
        cuda = max(cudas, key=lambda v: tuple(http.to_int(p) for p in v.split(".")), default="")
        total = price * count + DISK_PRICE_PER_GB_HOUR * DEFAULT_DISK_GB
        offers = []
        for dc in gpu.get("dataCenters") or []:
            dc_id = http.to_text(dc.get("id")) if isinstance(dc, dict) else ""
            if not dc_id or http.to_text(dc.get("availability")).upper() in ("", "NONE"):
                continue
            offers.append(
                OfferData(
                    provider=self.name,
                    provider_offer_id=make_offer_id(CLOUD, dc_id, count, gpu_id),
                    gpu_type=gpu_type,
                    gpu_count=count,
                    vram_gb=vram,
                    price_per_hour=http.to_money(total) or Decimal("0"),
                    location=http.to_text(dc.get("name")) or dc_id,
                    reliability=None,  # RunPod publishes none
                    disk_gb=DEFAULT_DISK_GB,
                    cuda_version=cuda,
                    storage_price_per_gb_hour=DISK_PRICE_PER_GB_HOUR,
                    disk_gb_default=DEFAULT_DISK_GB,
                    # No egress fees (RPDOC:pods/pricing).
                    inet_down_price_per_gb=Decimal("0"),
                    inet_up_price_per_gb=Decimal("0"),
                )
            )
        return offers

    def search_offers(self, filter: OfferFilter | None = None) -> list[OfferData]:
        f = filter or OfferFilter()
        counts = [c for c in GPU_COUNTS if not f.min_gpus or c >= f.min_gpus]
        offers = [o for count in counts for gpu in self._catalog(count) for o in self._gpu_offers(gpu, count)]
        self.last_search_pages = len(counts)
        return [
            o
            for o in offers
            if (not f.min_vram_gb or o.vram_gb >= f.min_vram_gb)
            and (f.max_price is None or o.price_per_hour <= f.max_price)
        ]

    def get_offer(self, offer_id: str) -> OfferData | None:
        """One catalog call (the offer's count) instead of search_offers' four."""
        cloud, _, count, _ = parse_offer_id(offer_id)
        if cloud != CLOUD:
            return None
        for gpu in self._catalog(count):
            for offer in self._gpu_offers(gpu, count):
                if offer.provider_offer_id == offer_id:
                    return offer
        return None

    # ---------------------------------------------------------------- create
    def create_body(self, request: CreateRequest) -> dict[str, Any]:
        """The ``POST /pods`` body (RP2 CreatePodRequest; unknown fields are a 422)."""
        cloud, data_center, count, gpu_id = parse_offer_id(request.offer_id)
        if cloud != CLOUD:
            # Never offered (see the module docstring): a Community pod may get no public IP.
            raise PermanentError(f"runpod: only {CLOUD} Cloud is rented, not {cloud} ({request.offer_id!r})")
        keys = "\n".join(line.strip() for line in (request.ssh_public_key or "").splitlines() if line.strip())
        # Vast-style "-p H:C" keys and other invalid names cannot be env vars.
        env = {k: str(v) for k, v in request.env.items() if _ENV_NAME.fullmatch(k)}
        # Set by us, so /start.sh installs this key and startSsh does not inject the account's.
        env["PUBLIC_KEY"] = keys
        # The v2 default exposes nothing: without 22/tcp there is no direct SSH (RPPLUG 3).
        ports = ["22/tcp"] + [f"{p}/tcp" for p in dict.fromkeys(request.ports) if p != 22]
        body: dict[str, Any] = {
            "name": request.label,
            "image": request.image.strip() or DEFAULT_IMAGE,
            "cloud": cloud,
            "gpu": {"id": gpu_id, "count": count},
            # Enforced, not "preferred": a wrong one gives the capacity 400 (RPPLUG).
            "dataCenterIds": [data_center],
            "disk": max(1, request.disk_gb or DEFAULT_DISK_GB),
            "ports": ports,
            "env": env,
        }
        if request.onstart.strip():
            env["SHOPPER_ONSTART"] = request.onstart
            body["args"] = f"bash -c {shlex.quote(START_COMMAND)}"
        body["startSsh"] = True
        return body

    def create_instance(self, request: CreateRequest) -> str:
        body = self.create_body(request)
        resp = self._create(body)
        # CONFLICT (RUNPOD_LAMBDA.md 4.2): RP2 and skypilot send startSsh, RPPLUG says v2 removed
        # it. A 422 naming it created nothing, so the same body without it is sent once.
        if resp.status == 422 and "startssh" in resp.text.lower():
            log.info("runpod: startSsh refused (422); creating without it")
            body.pop("startSsh")
            resp = self._create(body)
        if not resp.ok:
            raise self._fail(resp, "POST", "/pods", create=True)
        pod_id = http.to_text(_dict(resp.data).get("id"))
        if not pod_id:
            raise PermanentError(http.describe(self, "POST", "/pods", resp, "no pod id in answer"))
        return pod_id

    def _create(self, body: dict[str, Any]) -> http.ApiResponse:
        try:
            return http.request(self, "POST", "/pods", json=body)
        except AuthFailed as exc:
            # 403 on create: the account cannot use that pool (RP2); the key itself works.
            if exc.status == 403:
                raise OfferUnavailable(exc.message, status=403) from exc
            raise

    # ---------------------------------------------------------------- read
    def get_instance(self, instance_id: str) -> InstanceData:
        path = f"/pods/{http.path_segment(instance_id)}"
        resp = self._call("GET", path)
        pod = _dict(resp.data)
        if not http.to_text(pod.get("id")):
            raise PermanentError(http.describe(self, "GET", path, resp, "no pod in answer"))
        # A deleted pod may still be read as TERMINATED instead of 404 (1.7): gone either way.
        if http.to_text(pod.get("status")).upper() == GONE:
            raise NotFound(f"runpod pod {instance_id} is terminated", status=resp.status)
        return self._instance(pod)

    def list_instances(self, label_prefix: str) -> list[InstanceData]:
        """Every pod whose name starts with the prefix (no server-side filter, 1.7). Follows
        ``pagination.nextCursor`` when the answer has one (UNCONFIRMED in RP2, seen in 3rd-party
        clients); an unknown shape or a broken cursor chain raises, never reads as "no pods"."""
        pods: list[dict[str, Any]] = []
        params: dict[str, str] | None = None
        seen: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            resp = self._call("GET", "/pods", params=params)
            page = _dict(resp.data).get("pods")
            if not isinstance(page, list):
                raise PermanentError(http.describe(self, "GET", "/pods", resp, "no pods list"))
            pods += [p for p in page if isinstance(p, dict)]
            pagination = _dict(_dict(resp.data).get("pagination"))
            cursor = http.to_text(pagination.get("nextCursor"))
            if not pagination.get("hasNextPage") and not cursor:
                break
            if not cursor or cursor in seen:
                raise PermanentError(http.describe(self, "GET", "/pods", resp, "broken pagination"))
            seen.add(cursor)
            params = {"cursor": cursor}
        else:
            raise PermanentError(f"runpod GET /pods: more than {MAX_LIST_PAGES} pages")
        out = [self._instance(p) for p in pods if http.to_text(p.get("status")).upper() != GONE]
        return [i for i in out if i.instance_id and (i.label or "").startswith(label_prefix)]

    @staticmethod
    def ssh_endpoint(pod: dict[str, Any]) -> tuple[str, int | None]:
        """``ssh.direct``, else the public mapping of port 22 in ``runtime.ports`` (skypilot).
        ``ssh.proxy`` is never used: it is an interactive shell only (RP2 PodSsh)."""
        direct = _dict(_dict(pod.get("ssh")).get("direct"))
        if http.to_text(direct.get("host")) and http.to_int(direct.get("port")):
            return http.to_text(direct["host"]), http.to_int(direct["port"])
        for port in _dict(pod.get("runtime")).get("ports") or []:
            port = _dict(port)
            is_ssh = (
                http.to_int(port.get("private")) == 22 and http.to_text(port.get("type")).lower() == "tcp"
            )
            if is_ssh and http.to_text(port.get("ip")) and http.to_int(port.get("public")):
                return http.to_text(port["ip"]), http.to_int(port["public"])
        return "", None

    def _instance(self, pod: dict[str, Any]) -> InstanceData:
        status = http.to_text(pod.get("status")).upper()
        state = _STATES.get(status, STATE_PENDING)
        host, port = self.ssh_endpoint(pod)
        message = ""
        if state == STATE_RUNNING and not host:
            # Running without a public port 22 (a Community host without public IP, or not yet
            # mapped): booting, so the provisioning deadline decides, not a proxy-only handoff.
            state = STATE_BOOTING
            message = "running without a public SSH port (RunPod's proxy is interactive only)"
        ports: dict[int, tuple[str, int]] = {}
        for item in _dict(pod.get("runtime")).get("ports") or []:
            item = _dict(item)
            if (
                http.to_text(item.get("ip"))
                and http.to_int(item.get("public"))
                and http.to_int(item.get("private"))
            ):
                ports[http.to_int(item["private"])] = (http.to_text(item["ip"]), http.to_int(item["public"]))
        return InstanceData(
            provider=self.name,
            instance_id=http.to_text(pod.get("id")),
            label=http.to_text(pod.get("name")) or None,
            state=state,
            raw_status=status.lower(),
            status_message=message,
            ssh_host=host,
            ssh_port=port,
            ssh_user="root",
            # The whole pod's USD/h; 0.0 once EXITED although its disk is still billed (1.6).
            price_per_hour=http.to_money(pod.get("cost")),
            ssh_endpoints=((host, port),) if host and port else (),
            started_at=http.to_time(pod.get("createdAt")) or http.to_time(pod.get("startedAt")),
            ports=ports,
        )

    # ---------------------------------------------------------------- delete
    def destroy_instance(self, instance_id: str) -> None:
        """``DELETE /pods/{id}``: 204, and the pod leaves the list. 404 is NotFound (already
        gone); 409 (a cluster member) is PermanentError."""
        self._call("DELETE", f"/pods/{http.path_segment(instance_id)}")
