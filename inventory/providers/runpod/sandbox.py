"""The RunPod REST v2 dialect (served under ``/runpod/v2``; adapter base URL ``http://HOST:PORT/runpod/v2``).

Shapes follow ``/work/shared/providers/RUNPOD_LAMBDA.md`` section 1 and the ``runpod_v2_*.json``
fixtures: the GPU catalog with per-data-centre availability scoped by ``count`` (``include=
AVAILABILITY`` needs ``product``); ``POST /pods`` answering **201** with the Pod; errors as RFC 9457
problem+json (``{"title", "status", "detail", "errors"?}``); unknown body fields a 422 naming the
field; the capacity error as a 400 whose only sign is its ``detail`` text; ``DELETE`` a bare 204.

The pod is a container: its command is ``args`` when given (run by ``/bin/sh``, as a string), else
the image's ``CMD``, which for the official ``runpod/*`` images is ``/start.sh``. The sandbox's
``/start.sh`` does what RunPod's does: appends ``$PUBLIC_KEY`` to root's ``authorized_keys``,
"starts sshd" and keeps the container alive. So a key reaches the pod **only** through
``PUBLIC_KEY`` and only when the command still runs ``/start.sh`` — a command that replaces it
without running it gets a pod whose SSH refuses every key, as the real image would have no sshd
(RPSKILL building-images). Every image here has ``/start.sh``: the sandbox never runs a real
``sshd`` or ``ssh-keygen -A`` on the host. Paths at the container's root (``/start.sh``,
``/shopper-onstart.sh``, ``/var/log/...``) are mapped into the machine's ``fs/`` like ``/root``.

SSH: ``ssh.direct`` = ``127.0.0.1:<port>`` (and the same in ``runtime.ports``) once running with
``22/tcp`` in ``ports``; ``ssh.proxy`` is RunPod's ``ssh.runpod.io`` entry (interactive only in
reality; the sandbox does not serve it). ``account/ssh-keys`` exists only so tests can see that
nobody PUTs it (the PUT replaces every key on the account).

Faults (``faults.py``): ``no_capacity`` (RP-NOCAPACITY: the 400 on create while the catalog lists
stock), ``no_public_ip`` (RP-NOPUBLICIP: pods in that share of data centres run without a public
port, so ``ssh.direct`` stays null — what Community Cloud hosts do), ``oci_fail`` (the container
never starts: ``ERROR``), ``die_after_s`` (the pod exits by itself: ``EXITED``), ``loading_s`` (image
pulls), ``key_delay_s`` (sshd up a while after ``RUNNING``), ``start_ssh_422`` (RUNPOD_LAMBDA.md 4.2:
a v2 that refuses ``startSsh``), ``rate_per_s`` (429 with ``Retry-After``).
"""

from __future__ import annotations

import json
import re
import secrets
import string
import time
from datetime import UTC, datetime
from pathlib import Path

from inventory.sandbox import catalog
from inventory.sandbox.cloud import BOOTING, PENDING, RUNNING, STOPPED, Cloud
from inventory.sandbox.web import Request, Response, ok

DIALECT = "runpod"
PREFIX = "/runpod/v2"
CLOUDS = ("SECURE", "COMMUNITY")
NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
CREATE_FIELDS = {
    "name", "image", "templateId", "cloud", "gpu", "cpu", "dataCenterIds", "disk", "ports", "env",
    "mounts", "startSsh", "args", "dockerStartCmd", "registry", "globalNetworking", "locked",
}  # fmt: skip
GPU_FIELDS = {"id", "count", "allowedCudaVersions", "minCudaVersion"}
RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": '"minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400',
}
# Paths at the container's root that the pod's command may use: mapped into the machine's fs/.
_CONTAINER_PATH = re.compile(
    r"""(?<![\w.~/$-])(/var/log|/run/sshd|/[\w.-]+\.(?:sh|log|txt|py|json))(?=[/\s'";&|)`>]|$)"""
)
START_SH = """#!/bin/bash
# RunPod's official images start with /start.sh (sandbox copy): the PUBLIC_KEY env var goes into
# root's authorized_keys, host keys are made, sshd starts, and the container stays up.
if [ -n "$PUBLIC_KEY" ]; then
  mkdir -p {fs}/root/.ssh && chmod 700 {fs}/root/.ssh
  printf '%s\\n' "$PUBLIC_KEY" >> {fs}/root/.ssh/authorized_keys
  chmod 600 {fs}/root/.ssh/authorized_keys
fi
mkdir -p {fs}/run/sshd && date > {fs}/run/sshd/started
echo "start.sh: sshd started"
exec sleep infinity
"""


def problem(status: int, title: str, detail: str, errors: list[str] | None = None) -> Response:
    body: dict = {"title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(status, body)  # served as application/json; the adapter reads either


def bad_json(message: str) -> Response:
    return problem(400, "Bad Request", f"invalid JSON body: {message}")


def check_auth(req: Request, required: bool) -> Response | None:
    key = req.bearer()  # Bearer only: ?api_key= works on GraphQL alone (RPPLUG)
    if not key:
        return problem(401, "Unauthorized", "missing bearer token")
    if key == "invalid":
        return problem(401, "Unauthorized", "invalid api key")
    return None


def rate_limited(detail: str = "") -> Response:
    resp = problem(429, "Too Many Requests", "rate limit exceeded for the minute window")
    resp.headers.update(RATE_LIMIT_HEADERS, **{"Retry-After": "2", "RateLimit": '"minute";r=0;t=2'})
    return resp


def server_error(status: int) -> Response:
    titles = {401: "Unauthorized", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}
    detail = "invalid api key" if status == 401 else "upstream unavailable"
    return problem(status, titles.get(status, "Internal Server Error"), detail)


# ---------------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------------
_CATALOGS: dict[int, list[dict]] = {}


def gpu_catalog(cloud: Cloud) -> list[dict]:
    key = id(cloud)
    if key not in _CATALOGS:
        _CATALOGS[key] = catalog.generate_runpod_catalog(cloud.seed)
    return _CATALOGS[key]


def gpu_entry(cloud: Cloud, gpu_id: str) -> dict | None:
    return next((g for g in gpu_catalog(cloud) if g["id"] == gpu_id), None)


def used(cloud: Cloud) -> dict[tuple[str, str], int]:
    """GPUs in use per (data centre, GPU id): every pod holds its GPUs until deleted."""
    out: dict[tuple[str, str], int] = {}
    for rec in cloud.records(DIALECT):
        rp = rec["runpod"]
        k = (rp["dataCenterId"], rp["gpu"]["id"])
        out[k] = out.get(k, 0) + rp["gpu"]["count"]
    return out


def free(cloud: Cloud, entry: dict, dc_id: str, in_use: dict) -> int:
    return max(0, entry["_stock"].get(dc_id, 0) - in_use.get((dc_id, entry["id"]), 0))


def h_catalog_gpus(cloud: Cloud, req: Request, m: re.Match) -> Response:
    include = [x.strip().upper() for x in req.query.get("include", "").split(",") if x.strip()]
    if "AVAILABILITY" in include and not req.query.get("product"):
        return problem(400, "Bad Request", "product is required when include=AVAILABILITY")
    cloud_name = req.query.get("cloud", "SECURE").upper()
    if cloud_name not in CLOUDS:
        return problem(400, "Bad Request", f"invalid cloud {cloud_name!r}")
    try:
        count = int(req.query.get("count", "1"))
    except ValueError:
        return problem(400, "Bad Request", "count must be an integer")
    in_use = used(cloud)
    names = dict(catalog.RUNPOD_DATA_CENTERS)
    gpus = []
    for entry in gpu_catalog(cloud):
        gpu = {k: v for k, v in entry.items() if not k.startswith("_")}
        if "AVAILABILITY" in include:
            centres = []
            # The sandbox's stock is all Secure Cloud: Community is in the catalog, never in stock.
            if cloud_name == "SECURE" and count <= entry["maxCount"]["secure"]:
                for dc_id in entry["_stock"]:
                    level = catalog.runpod_availability(free(cloud, entry, dc_id, in_use), count)
                    if level != "NONE":
                        centres.append({"id": dc_id, "name": names[dc_id], "availability": level})
            order = ("NONE", "LOW", "MEDIUM", "HIGH")
            gpu["availability"] = max((c["availability"] for c in centres), key=order.index, default="NONE")
            if centres:  # omitted when unavailable everywhere (RP2)
                gpu["dataCenters"] = centres
            gpu["cudaVersions"] = [{"version": v, "available": a} for v, a in catalog.RUNPOD_CUDA]
        gpus.append(gpu)
    return ok({"gpus": gpus})


def h_catalog_datacenters(cloud: Cloud, req: Request, m: re.Match) -> Response:
    include = req.query.get("include", "").upper()
    in_use = used(cloud)
    out = []
    for dc_id, name in catalog.RUNPOD_DATA_CENTERS:
        item = {"id": dc_id, "name": name, "region": dc_id.split("-")[0]}
        if "GPU_AVAILABILITY" in include:
            item["gpuAvailability"] = [
                {
                    "gpuId": e["id"],
                    "availability": catalog.runpod_availability(free(cloud, e, dc_id, in_use), 1),
                }
                for e in gpu_catalog(cloud)
                if dc_id in e["_stock"]
            ]
        out.append(item)
    return ok({"dataCenters": out})


# ---------------------------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------------------------
def _validation(errors: list[str]) -> Response:
    return problem(422, "Unprocessable Entity", "Request validation failed.", errors)


def _validate(cloud: Cloud, body: object) -> list[str]:
    if not isinstance(body, dict):
        return ["$: expected object"]
    errors = [f"$: additional properties '{k}' not allowed" for k in body if k not in CREATE_FIELDS]
    if cloud.faults.start_ssh_422(DIALECT) and "startSsh" in body:
        errors.append("$: additional properties 'startSsh' not allowed")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        errors.append("$.name: minLength 1")
    if not body.get("templateId") and not (isinstance(body.get("image"), str) and body["image"].strip()):
        errors.append("$.image: required")
    gpu = body.get("gpu")
    if not isinstance(gpu, dict) or not isinstance(gpu.get("id"), str):
        errors.append("$.gpu: required (this sandbox rents GPU pods only)")
    else:
        errors += [f"$.gpu: additional properties '{k}' not allowed" for k in gpu if k not in GPU_FIELDS]
        count = gpu.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            errors.append("$.gpu.count: minimum 1")
    if body.get("cloud", "SECURE") not in CLOUDS:
        errors.append("$.cloud: value must be one of 'SECURE', 'COMMUNITY'")
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        errors.append("$.env: expected object of strings")
    ports = body.get("ports", [])
    if not isinstance(ports, list) or not all(
        isinstance(p, str) and re.fullmatch(r"\d{1,5}/(tcp|http)", p) for p in ports
    ):
        errors.append("$.ports: items must look like '22/tcp' or '8888/http'")
    disk = body.get("disk", 20)
    if isinstance(disk, bool) or not isinstance(disk, int) or disk < 1:
        errors.append("$.disk: minimum 1")
    for name in ("args", "dockerStartCmd"):
        if name in body and not isinstance(body[name], str | list):
            errors.append(f"$.{name}: expected string")
    return errors


def _pod_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


def _command(body: dict) -> str:
    """The container's command as a shell line: ``args`` (or ``dockerStartCmd``) else the image's
    CMD, ``/start.sh``."""
    command = body.get("args") or body.get("dockerStartCmd") or ""
    if isinstance(command, list):
        command = " ".join(command)
    return command.strip() or "/start.sh"


def h_create(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({})
    errors = _validate(cloud, body)
    if errors:
        return _validation(errors)
    gpu_id, count = body["gpu"]["id"], int(body["gpu"].get("count", 1))
    cloud_name = body.get("cloud", "SECURE")
    with cloud.lock:
        entry = gpu_entry(cloud, gpu_id)
        if entry is None:
            return problem(400, "Bad Request", f"gpu type {gpu_id!r} not found")
        if count > entry["maxCount"]["secure" if cloud_name == "SECURE" else "community"]:
            return problem(400, "Bad Request", f"gpu.count {count} is above the maximum for {gpu_id!r}")
        wanted = body.get("dataCenterIds") or list(entry["_stock"])
        in_use = used(cloud)
        # dataCenterIds is "preferred" in the spec but enforced (RPPLUG): nowhere else is tried.
        dc_id = next(
            (dc for dc in wanted if cloud_name == "SECURE" and free(cloud, entry, dc, in_use) >= count), None
        )
        if dc_id is None or cloud.faults.no_capacity(DIALECT, dc_id, gpu_id):
            return problem(400, "Bad Request", NO_CAPACITY)
        env = {str(k): str(v) for k, v in (body.get("env") or {}).items()}
        if body.get("startSsh") and "PUBLIC_KEY" not in env:
            # startSsh injects the account's keys unless the request set PUBLIC_KEY (RP2).
            env["PUBLIC_KEY"] = "\n".join(k["publicKey"] for k in _account_keys(cloud))
        pod_id = _pod_id()
        gpu = catalog.RUNPOD_GPU_BY_ID[gpu_id]
        price = entry["price"]["secure"] * count + 0.10 * int(body.get("disk", 20)) / 730
        ports = list(dict.fromkeys(body.get("ports") or []))
        rec = cloud.new_record(
            DIALECT,
            pod_id,
            **cloud.faults.boot_plan(DIALECT),
            label=body["name"],
            offer_id=f"{dc_id}/{gpu_id}",
            users=["root"],
            env={**env, "RUNPOD_POD_ID": pod_id, "RUNPOD_GPU_COUNT": str(count), "RUNPOD_DC_ID": dc_id},
            startup=None,  # set below, once the machine's fs/ exists
            gpu={
                "name": gpu.smi_name,
                "count": count,
                "mem_mib": gpu.mem_mib,
                "driver": "575.57.08",
                "cuda": max(v for v, a in catalog.RUNPOD_CUDA if a),
                "power": 450,
            },
            price=round(price, 6),
            runpod={
                "image": body.get("image") or "",
                "args": body.get("args") or "",
                "disk": int(body.get("disk", 20)),
                "ports": ports,
                "gpu": {"id": gpu_id, "count": count},
                "cloud": cloud_name,
                "dataCenterId": dc_id,
                "public_ip": cloud_name == "SECURE" and not cloud.faults.no_public_ip(DIALECT, dc_id),
                "proxy_user": f"{pod_id}-{secrets.token_hex(4)}",
                "created": _iso(time.time()),
            },
        )
        node = cloud.nodes[cloud.key(rec)]
        fs = node.fs
        (fs / "var" / "log").mkdir(parents=True, exist_ok=True)
        start = fs / "start.sh"
        start.write_text(START_SH.format(fs=fs))
        start.chmod(0o755)
        rec["startup"] = {
            "script": "#!/bin/sh\n" + _container_paths(_command(body), fs) + "\n",
            "shell": "/bin/sh",
        }
        cloud.save(rec)
        pod = view(cloud, rec)
    mode = cloud.faults.create_error(DIALECT)
    if mode == "504":
        return Response(504, "HTTP 504")
    if mode:
        return server_error(500)
    return ok(pod, 201)


def _container_paths(command: str, fs: Path) -> str:
    return _CONTAINER_PATH.sub(lambda mm: str(fs) + mm.group(1), command)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(cloud: Cloud, rec: dict) -> str:
    phase = cloud.phase(rec)
    if rec.get("oci_fail") and phase == BOOTING:
        return "ERROR"  # the oci_fail fault: the container never starts
    return {PENDING: "PROVISIONING", BOOTING: "STARTING", RUNNING: "RUNNING", STOPPED: "EXITED"}[phase]


ACTIONS = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
}


def view(cloud: Cloud, rec: dict) -> dict:
    """The v2 ``Pod`` object (fixture field order)."""
    rp = rec["runpod"]
    st = status(cloud, rec)
    running = st == "RUNNING"
    direct = None
    runtime = None
    if running:
        ports = []
        extra = 0
        for spec in rp["ports"]:
            private, kind = spec.split("/")
            if kind == "http":  # served through RunPod's HTTP proxy: no public IP port
                ports.append({"private": int(private), "public": None, "type": "http", "ip": None})
                continue
            if int(private) == 22:
                public = rec["ssh_port"]
            else:
                extra += 1
                public = rec["ssh_port"] + extra
            ip = "127.0.0.1" if rp["public_ip"] else None
            ports.append({"private": int(private), "public": public if ip else None, "type": "tcp", "ip": ip})
            if int(private) == 22 and ip:
                direct = {
                    "host": ip,
                    "port": public,
                    "username": "root",
                    "command": f"ssh root@{ip} -p {public}",
                }
        count = rp["gpu"]["count"]
        runtime = {
            "uptime": int(max(0.0, time.time() - rec["boot_at"] - rec["boot_delay"])),
            "gpus": [{"util": 0, "memoryUtil": 1} for _ in range(count)],
            "cpu": {"util": 2},
            "memory": {"util": 4},
            "ports": ports,
        }
    proxy = None
    if st != "PROVISIONING":
        user = rp["proxy_user"]
        proxy = {
            "host": "ssh.runpod.io",
            "port": 22,
            "username": user,
            "command": f"ssh {user}@ssh.runpod.io",
        }
    started = rec["boot_at"] + rec["boot_delay"] if running else None
    return {
        "id": rec["id"],
        "name": rec["label"],
        "image": rp["image"],
        "args": rp["args"],
        "disk": rp["disk"],
        "ports": rp["ports"],
        "env": {k: v for k, v in rec["env"].items() if not k.startswith("RUNPOD_")},
        "registry": None,
        "status": st,
        "actions": ACTIONS[st],
        "mounts": {},
        "gpu": dict(rp["gpu"]),
        "cloud": rp["cloud"],
        "dataCenterId": None if st == "PROVISIONING" else rp["dataCenterId"],
        "cudaVersion": None if st == "PROVISIONING" else rec["gpu"]["cuda"],
        "ssh": {"proxy": proxy, "direct": direct},
        "template": None,
        # The whole pod's USD/h; 0.0 when EXITED (RP2), though the disk is still billed.
        "cost": 0.0 if st == "EXITED" else rec["price"],
        "locked": False,
        "globalNetworking": {"enabled": False},
        "runtime": runtime,
        "createdAt": rp["created"],
        "startedAt": _iso(started),
    }


def _not_found() -> Response:
    return problem(404, "Not Found", "pod not found")


def h_get(cloud: Cloud, req: Request, m: re.Match) -> Response:
    rec = cloud.get(DIALECT, m.group(1))
    return ok(view(cloud, rec)) if rec else _not_found()


def h_list(cloud: Cloud, req: Request, m: re.Match) -> Response:
    """``{"pods": [...]}``; with ``?limit=`` the cursor pages third-party v2 clients use
    (``pagination{hasNextPage, nextCursor}``, UNCONFIRMED in RP2 v2.9.0)."""
    pods = [view(cloud, r) for r in sorted(cloud.listable(DIALECT), key=lambda r: r["created_at"])]
    limit = req.query.get("limit")
    if not limit:
        return ok({"pods": pods})
    try:
        size = max(1, int(limit))
        start = int(req.query.get("cursor") or 0)
    except ValueError:
        return problem(400, "Bad Request", "limit and cursor must be integers")
    page = pods[start : start + size]
    more = start + size < len(pods)
    return ok(
        {"pods": page, "pagination": {"hasNextPage": more, "nextCursor": str(start + size) if more else None}}
    )


def h_rename(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({})
    if (
        not isinstance(body, dict)
        or set(body) != {"name"}
        or not isinstance(body["name"], str)
        or not body["name"]
    ):
        return _validation(["$.name: minLength 1"])
    with cloud.lock:
        rec = cloud.get(DIALECT, m.group(1))
        if rec is None:
            return _not_found()
        rec["label"] = body["name"]
        cloud.save(rec)
    return ok(view(cloud, rec))


def h_action(cloud: Cloud, req: Request, m: re.Match) -> Response:
    pod_id = m.group(1)
    body = req.json({})
    action = body.get("action") if isinstance(body, dict) else None
    if action not in ("start", "stop", "restart", "terminate"):
        return _validation(["$.action: value must be one of 'start', 'stop', 'restart', 'terminate'"])
    rec = cloud.get(DIALECT, pod_id)
    if rec is None:
        return _not_found()
    if action not in ACTIONS[status(cloud, rec)]:
        return problem(409, "Conflict", "action not valid for current pod status")
    if action == "terminate":
        return _delete(cloud, pod_id)
    if action in ("stop", "restart"):
        cloud.power_off(DIALECT, pod_id, reason="api")
    if action in ("start", "restart"):
        cloud.power_on(DIALECT, pod_id)
    return ok(view(cloud, rec))


def _delete(cloud: Cloud, pod_id: str) -> Response:
    result = cloud.destroy(DIALECT, pod_id)
    if result == "not_found":
        return _not_found()
    if result == "failed":
        return server_error(500)
    return Response(204, "")


def h_delete(cloud: Cloud, req: Request, m: re.Match) -> Response:
    return _delete(cloud, m.group(1))


# ---------------------------------------------------------------------------------------------
# Account SSH keys (never used by the shopper: the PUT replaces every key)
# ---------------------------------------------------------------------------------------------
def _account_keys(cloud: Cloud) -> list[dict]:
    return json.loads(cloud.store.get_meta("runpod_account_keys") or "[]")


def h_keys_get(cloud: Cloud, req: Request, m: re.Match) -> Response:
    return ok({"keys": _account_keys(cloud)})


def h_keys_put(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({})
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list):
        return _validation(["$.keys: required"])
    keys = [{"publicKey": str(k.get("publicKey") if isinstance(k, dict) else k)} for k in keys]
    cloud.store.set_meta("runpod_account_keys", json.dumps(keys))
    return ok({"keys": keys})


ROUTES = [
    ("GET", r"/catalog/gpus/?", "search", h_catalog_gpus, True),
    ("GET", r"/catalog/datacenters/?", "search", h_catalog_datacenters, True),
    ("POST", r"/pods/?", "create", h_create, True),
    ("GET", r"/pods/?", "list", h_list, True),
    ("GET", r"/pods/([^/]+)/?", "get", h_get, True),
    ("PATCH", r"/pods/([^/]+)/?", "label", h_rename, True),
    ("DELETE", r"/pods/([^/]+)/?", "destroy", h_delete, True),
    ("POST", r"/pods/([^/]+)/action/?", "power", h_action, True),
    ("GET", r"/account/ssh-keys/?", "attach_key", h_keys_get, True),
    ("PUT", r"/account/ssh-keys/?", "attach_key", h_keys_put, True),
]


def reset(cloud: Cloud) -> None:
    """``POST /_sandbox/reset``: the account's keys go with its instances."""
    cloud.store.set_meta("runpod_account_keys", "[]")
