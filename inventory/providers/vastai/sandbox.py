"""The Vast.ai dialect (served under ``/vastai``; adapter base URL ``http://HOST:PORT/vastai``).

Shapes follow ``/work/shared/providers/PROVIDERS.md`` section 1 and the ``vastai_*.json`` fixtures:
search with operator dicts (``eq neq gt gte lt lte in notin``) over the offer fields, MB for GPU
RAM, ``dph_total = dph_base + storage_cost * allocated_storage / 720``; create by accepting an
ask; ``{"instances": {...}|null}`` for one instance; the paginated v1 listing; ``no_such_ask`` on a
rented or unknown ask. Keys reach the machine only via ``POST /api/v0/instances/{id}/ssh/``.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import sys
import time

from inventory.sandbox import catalog
from inventory.sandbox.cloud import BOOTING, PENDING, RUNNING, STOPPED, VAST_FIRST_INSTANCE_ID, Cloud
from inventory.sandbox.web import Request, Response, ok

DIALECT = "vastai"
PREFIX = "/vastai"  # the sandbox serves this dialect under it (inventory/sandbox/server.py)
OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")
V1_PAGE_MAX = 25


def error(status: int, code: str, msg: str, **extra) -> Response:
    return ok({"success": False, "error": code, "msg": msg, **extra}, status)


def bad_json(exc: Exception) -> Response:
    """A request body that is not JSON, answered the way Vast answers bad arguments."""
    return error(400, "invalid_args", f"invalid JSON body: {exc}")


def check_auth(req: Request, required: bool) -> Response | None:
    key = req.bearer() or req.query.get("api_key")
    if key == "invalid" or (required and not key):
        return error(401, "auth_error", "Invalid user key")
    return None


# ---------------------------------------------------------------------------------------------
# Query language (search and select_filters)
# ---------------------------------------------------------------------------------------------
class QueryError(ValueError):
    pass


def _derived(record: dict, field: str) -> tuple[bool, object]:
    """(known, value) of a filterable field, including the filter-only ones."""
    if field == "verified":
        return True, record.get("verification") == "verified"
    if field == "datacenter":
        return True, (record.get("hosting_type") or 0) >= 1
    if field in record:
        return True, record[field]
    return False, None


def _compare(op: str, value: object, arg: object, field: str) -> bool:
    if field == "geolocation":
        # Queries use country codes ("US"); the field is "Region, CC". Accept either form.
        candidates = set() if value is None else {value, str(value)[-2:]}
        if op == "eq":
            return arg in candidates
        if op == "neq":
            return arg not in candidates
        if op in ("in", "notin"):
            hit = any(a in candidates for a in (arg or []))
            return hit if op == "in" else not hit
    if op == "eq":
        return value == arg
    if op == "neq":
        return value != arg
    if op == "in":
        return value in (arg or [])
    if op == "notin":
        return value not in (arg or [])
    if value is None or arg is None:
        return False
    try:
        a, b = float(value), float(arg)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        a, b = value, arg  # type: ignore[assignment]
    try:
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]  # type: ignore[operator]
    except TypeError:
        return False


def matches(record: dict, filters: dict) -> bool:
    """Apply every ``{field: {op: arg}}`` condition; control keys (non-dict values) are skipped,
    unknown fields are ignored (lenient, like the CLI's post-filter)."""
    for field, cond in filters.items():
        if not isinstance(cond, dict):
            continue
        known, value = _derived(record, field)
        if not known:
            continue
        for op, arg in cond.items():
            if op not in OPERATORS:
                raise QueryError(f"Unknown operator {op!r} for field {field!r}")
            if not _compare(op, value, arg, field):
                return False
    return True


def _sort(rows: list[dict], order: object) -> list[dict]:
    """``[["dph_total","asc"], ...]`` (also ``[col, dir]``, ``"-col"``, ``{"col","dir"}``)."""
    if not order:
        return rows
    if (
        isinstance(order, list)
        and len(order) == 2
        and all(isinstance(x, str) for x in order)
        and (order[1] in ("asc", "desc"))
    ):
        order = [order]
    keys: list[tuple[str, bool]] = []
    for item in order if isinstance(order, list) else [order]:
        if isinstance(item, dict):
            keys.append((item.get("col", "id"), item.get("dir", "asc") == "desc"))
        elif isinstance(item, str):
            keys.append((item.lstrip("-"), item.startswith("-")))
        elif isinstance(item, list) and item:
            keys.append((item[0], len(item) > 1 and item[1] == "desc"))
    for field, desc in reversed(keys):
        present = [r for r in rows if r.get(field) is not None]
        missing = [r for r in rows if r.get(field) is None]  # nulls last either way
        present.sort(key=lambda r, f=field: r[f], reverse=desc)
        rows = present + missing
    return rows


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------
_PRICE_CACHE: dict[tuple[int, float], list[dict]] = {}


def priced_offers(cloud: Cloud, storage: float) -> list[dict]:
    """The whole catalog priced for ``storage`` GB (cached: gpuhunt-style searches ask for all)."""
    key = (id(cloud), storage)
    if key not in _PRICE_CACHE:
        if len(_PRICE_CACHE) > 16:
            _PRICE_CACHE.clear()
        _PRICE_CACHE[key] = [catalog.price_vast_offer(o, storage) for o in cloud.vast_offers]
    return _PRICE_CACHE[key]


def search(cloud: Cloud, query: dict) -> list[dict]:
    try:
        storage = float(query.get("allocated_storage", catalog.DEFAULT_ALLOCATED_STORAGE))
    except (TypeError, ValueError) as exc:
        raise QueryError("allocated_storage must be a number") from exc
    # search_stale_s: a freshly rented ask still shows for a while (VA-NOSUCHASK).
    rented = cloud.vast_rented(shown_for=cloud.faults.vast_search_stale_s())
    rows = [o for o in priced_offers(cloud, storage) if o["id"] not in rented and matches(o, query)]
    rows = _sort(rows, query.get("order", [["score", "desc"]]))
    limit = query.get("limit")
    if isinstance(limit, int | float) and limit >= 0:
        rows = rows[: int(limit)]
    return [dict(o, rn=i + 1) for i, o in enumerate(rows)]


def h_search_bundles(cloud: Cloud, req: Request, m: re.Match) -> Response:
    if req.method == "GET":  # the older CLI form: GET /bundles/?q=<json>
        query = Request("GET", "", {}, {}, (req.query.get("q") or "{}").encode()).json({})
    else:
        query = req.json({})
    if not isinstance(query, dict):
        return error(400, "invalid_args", "query must be a JSON object")
    try:
        return ok({"offers": search(cloud, query)})
    except QueryError as exc:
        return error(400, "invalid_args", str(exc))


def h_search_asks(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({})
    query = body.get("q", {}) if isinstance(body, dict) else None
    if not isinstance(query, dict):
        return error(400, "invalid_args", "q must be a JSON object")
    try:
        return ok({"success": True, "offers": search(cloud, query)})
    except QueryError as exc:
        return error(400, "invalid_args", str(exc))


# ---------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------
_PORT_KEY = re.compile(r"^-p\s+(?:[\d.]+:)?(\d+):(\d+)(?:/(tcp|udp))?$")


def h_users_current(cloud: Cloud, req: Request, m: re.Match) -> Response:
    """The account (FIELD_NOTES X-BALANCE): ``credit`` and ``balance`` as Vast answers them; the
    sandbox keeps one figure (the real split is undocumented)."""
    credit = cloud.vast_credit
    return ok(
        {
            "id": 1,
            "username": "sandbox",
            "credit": credit,
            "balance": credit,
            "balance_threshold": 0.0,
            "can_pay": credit > 0,
        }
    )


def h_create(cloud: Cloud, req: Request, m: re.Match) -> Response:
    ask_id = int(m.group(1))
    if cloud.vast_credit <= 0:
        # X-BILLING: creates are refused at a balance <= 0 (body shape a GUESS, VCLI's wording).
        return error(400, "insufficient_credit", "Insufficient credits")
    body = req.json({}) or {}
    if not isinstance(body, dict):
        return error(400, "invalid_args", "body must be a JSON object")
    disk = body.get("disk", 10)
    if not isinstance(disk, int | float) or disk < 8:
        return error(400, "invalid_args", "disk must be >= 8")
    price = body.get("price")
    if price is not None and not isinstance(price, int | float):
        return error(400, "invalid_args", "price must be a number or null")
    with cloud.lock:
        offer = cloud.vast_offer_by_id.get(ask_id)
        if offer is None or ask_id in cloud.vast_rented():
            # The live body (FIELD_NOTES VA-NOSUCHASK): 400 invalid_args, two spaces after no_such_ask.
            msg = f"error 404/3603: no_such_ask  Instance type by id {ask_id} is not available."
            return error(400, "invalid_args", msg, ask_id=ask_id)
        offer = catalog.price_vast_offer(offer, float(disk))
        raw_env = body.get("env")
        # A docker-flags string is "not applied" (PROVIDERS.md 1.4): only a dict counts.
        env = {str(k): str(v) for k, v in raw_env.items()} if isinstance(raw_env, dict) else {}
        runtype = str(body.get("runtype") or "ssh_direc ssh_proxy")
        if "ssh" in runtype and not any(k.startswith("-p ") and k.endswith(":22") for k in env):
            env = {"-p 22:22": "1", **env}
        instance_id = str(cloud.store.next_counter("vast_instance_id", VAST_FIRST_INSTANCE_ID))
        is_bid = price is not None
        outbid = is_bid and float(price) < offer["min_bid"]
        container_ports = [
            int(mm.group(2)) for k in env if (mm := _PORT_KEY.match(k)) and mm.group(2) != "22"
        ]
        container_env = {k: v for k, v in env.items() if not k.startswith("-p ")}
        container_env.update(
            CONTAINER_ID=instance_id,
            VAST_CONTAINERLABEL=f"C.{instance_id}",
            PUBLIC_IPADDR="127.0.0.1",
        )
        onstart = body.get("onstart") or body.get("onstart_cmd") or ""
        gpu = next(
            g for g in catalog.VAST_GPUS if g.name == offer["gpu_name"] and g.ram_mb == offer["gpu_ram"]
        )
        rec = cloud.new_record(
            DIALECT,
            instance_id,
            **cloud.faults.boot_plan(DIALECT),
            label=body.get("label"),
            offer_id=str(ask_id),
            users=["root"],
            env=container_env,
            startup={"script": onstart, "shell": "/bin/bash"} if onstart else None,
            gpu={
                "name": gpu.smi_name,
                "count": offer["num_gpus"],
                "mem_mib": offer["gpu_ram"],
                "driver": offer["driver_version"],
                "cuda": f"{offer['cuda_max_good']:.1f}",
                "power": gpu.max_power,
            },
            price=offer["dph_total"],
            vast={
                "offer": offer,
                "image": str(body.get("image") or "vastai/base-image:latest"),
                "runtype": runtype,
                "onstart": onstart,
                "extra_env": [[k, v] for k, v in env.items()],
                "container_ports": container_ports,
                "disk": float(disk),
                "is_bid": is_bid,
                "bid_price": price,
                "template_hash_id": body.get("template_hash_id"),
            },
        )
        _set_container_port_env(rec)
        _serve_image_ports(rec)
        cloud.save(rec)
        if outbid:
            # Vast creates an under-bid interruptible instance stopped and says success: false.
            cloud.power_off(DIALECT, instance_id, reason="outbid")
            return ok(
                {
                    "success": False,
                    "error": "bid_too_low",
                    "msg": "Instance created in stopped state: bid below min_bid",
                    "new_contract": int(instance_id),
                }
            )
    mode = cloud.faults.create_error(DIALECT)
    if mode == "504":
        return Response(504, "HTTP 504")
    if mode == "success_false":
        return ok(
            {
                "success": False,
                "error": "internal_error",
                "msg": "Instance creation may have failed",
                "new_contract": int(instance_id),
            }
        )
    if mode:
        return Response(500, "Internal Server Error")
    return ok({"success": True, "new_contract": int(instance_id)})


def listing_only_create(cloud: Cloud, labels: list[str]) -> list[dict]:
    """One listing-only instance per label (see ``Cloud.add_listing_only``), on the catalog's
    offers in turn, priced at the default 10 GB disk; returns the records."""
    if not labels:
        return []
    offers = priced_offers(cloud, 10.0)
    first_id = cloud.store.reserve_counter("vast_instance_id", VAST_FIRST_INSTANCE_ID, len(labels))
    records = []
    for i, label in enumerate(labels):
        offer = offers[i % len(offers)]
        records.append(
            {
                "id": str(first_id + i),
                "label": label,
                "offer_id": str(offer["id"]),
                "env": {},
                "price": offer["dph_total"],
                "vast": {
                    "offer": offer,
                    "image": "vastai/base-image:latest",
                    "runtype": "ssh_direc ssh_proxy",
                    "onstart": "",
                    "extra_env": [],
                    "container_ports": [],
                    "disk": 10.0,
                    "is_bid": False,
                    "bid_price": None,
                    "template_hash_id": None,
                },
            }
        )
    return cloud.add_listing_only(DIALECT, records)


def _serve_image_ports(rec: dict) -> None:
    """The fake image's services: each exposed container port answers HTTP (200 on ``/`` and
    ``/health``, like a Jupyter or vLLM server once up) on the host port Vast mapped it to. A
    real container listens on its own port behind Docker's mapping; a sandbox node has no NAT, so
    the server listens on the mapped port itself. Started before the onstart script, at each boot."""
    ports = rec["vast"]["container_ports"]
    if not ports:
        return
    www = '"$HOME/.image-www"'
    lines = [f"mkdir -p {www} && echo ok > {www}/health && echo image > {www}/index.html"]
    for port in ports:
        lines.append(
            f'nohup {shlex.quote(sys.executable)} -m http.server "$VAST_TCP_PORT_{port}" --bind 127.0.0.1 '
            f"--directory {www} >/dev/null 2>&1 </dev/null &"
        )
    startup = rec.get("startup") or {"script": "", "shell": "/bin/bash"}
    rec["startup"] = {**startup, "script": "\n".join(lines) + "\n" + startup["script"]}


def _set_container_port_env(rec: dict) -> None:
    """Vast exposes the mapped ports to the container as VAST_TCP_PORT_<container port>."""
    rec["env"]["VAST_TCP_PORT_22"] = str(rec["ssh_port"])
    for i, port in enumerate(rec["vast"]["container_ports"]):
        rec["env"][f"VAST_TCP_PORT_{port}"] = str(rec["ssh_port"] + 1 + i)


def view(cloud: Cloud, rec: dict) -> dict:
    """The instance object of ``GET /instances/{id}/`` and the listings (fixture field order)."""
    v = rec["vast"]
    offer = v["offer"]
    phase = cloud.phase(rec)
    now = time.time()
    port = rec["ssh_port"]
    image = v["image"]
    status_msg = None
    actual = cur = nxt = intended = "running"
    ports: dict | None = None
    if rec.get("oci_fail") and phase != STOPPED:
        # VA-GPU-UNUSABLE: the container never starts (dstack matches this text; the rest GUESS).
        actual, ports = "created", {}
        status_msg = (
            "Error response from daemon: failed to create task for container: failed to create shim "
            "task: OCI runtime create failed: runc create failed: unable to start container process: "
            "error during container init: nvidia-container-cli: initialization error: nvml error: "
            "driver not loaded: unknown"
        )
    elif phase == PENDING:
        actual = None
    elif phase == BOOTING:
        actual, ports = "loading", {}
        status_msg = f"Pulling image {image}: Downloading {cloud.boot_progress(rec)}%"
    elif phase == RUNNING:
        status_msg = f"success, running {image.replace(':', '_')}/ssh"
        direct = cloud.blackhole_port(rec) if (rec.get("node") or {}).get("direct_blocked") else port
        ports = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(direct)}]}
        for i, cport in enumerate(v["container_ports"]):
            ports[f"{cport}/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(port + 1 + i)}]
    elif phase == STOPPED:
        if rec["stop_reason"] == "poweroff":
            # The container's main process ended (`shutdown -h now` inside it): docker "exited".
            actual, status_msg = "exited", "Container exited with code 0 (shutdown)"
        else:
            actual = cur = nxt = intended = "stopped"
            status_msg = "Instance stopped: outbid" if rec["stop_reason"] == "outbid" else "Instance stopped"
    networked = phase != PENDING
    running = phase == RUNNING
    # Quirk carried from the offer: whitespace around public_ipaddr that every client strips.
    ip_suffix = offer["public_ipaddr"][len(offer["public_ipaddr"].rstrip()) :]
    uptime = round((now - rec["boot_at"] - rec["boot_delay"]) / 60, 1) if running else None
    return {
        "id": int(rec["id"]),
        "machine_id": offer["machine_id"],
        "host_id": offer["host_id"],
        "bundle_id": None,
        "actual_status": actual,
        "cur_state": cur,
        "next_state": nxt,
        "intended_status": intended,
        "status_msg": status_msg,
        "label": rec.get("label"),
        "image_uuid": image,
        "image_args": [],
        "image_runtype": v["runtype"],
        "template_id": None,
        "template_hash_id": v.get("template_hash_id"),
        "template_name": None,
        "extra_env": v["extra_env"],
        "onstart": v["onstart"],
        "jupyter_token": rec["uid"] * 2,
        "public_ipaddr": "127.0.0.1" + ip_suffix if networked else None,
        "local_ipaddrs": "172.17.0.2 10.0.4.17\n" if networked else None,
        "ssh_host": "127.0.0.1" if networked else None,
        "ssh_idx": "1" if networked else None,
        "ssh_port": port if networked else None,
        "machine_dir_ssh_port": port if networked else None,
        "direct_port_start": port if networked else None,
        "direct_port_end": port + 1 + len(v["container_ports"]) if networked else None,
        "direct_port_count": offer["direct_port_count"],
        "ports": ports,
        "start_date": rec["created_at"],
        "end_date": offer["end_date"],
        "duration": round(offer["end_date"] - now, 1),
        "uptime_mins": uptime,
        "num_gpus": offer["num_gpus"],
        "gpu_name": offer["gpu_name"],
        "gpu_ram": offer["gpu_ram"],
        "gpu_totalram": offer["gpu_total_ram"],
        "gpu_util": 0.0 if running else None,
        "gpu_temp": 34.0 if running else None,
        "gpu_arch": offer["gpu_arch"],
        "gpu_frac": 1.0,
        "gpu_lanes": offer["gpu_lanes"],
        "gpu_mem_bw": offer["gpu_mem_bw"],
        "gpu_display_active": False,
        "cpu_name": offer["cpu_name"],
        "cpu_arch": offer["cpu_arch"],
        "cpu_cores": offer["cpu_cores"],
        "cpu_cores_effective": offer["cpu_cores_effective"],
        "cpu_ram": offer["cpu_ram"],
        "cpu_util": 0.5 if running else None,
        "mem_limit": round(offer["cpu_ram"] / 1000 * 0.5, 2) if running else None,
        "mem_usage": 0.35 if running else None,
        "vmem_usage": 0.0 if running else None,
        "disk_space": v["disk"],
        "disk_usage": 1.2 if running else None,
        "disk_util": round(1.2 / v["disk"], 3) if running else None,
        "disk_name": offer["disk_name"],
        "disk_bw": offer["disk_bw"],
        "inet_up": offer["inet_up"],
        "inet_down": offer["inet_down"],
        "inet_up_cost": offer["inet_up_cost"],
        "inet_down_cost": offer["inet_down_cost"],
        "inet_up_billed": 0.0 if running else None,
        "inet_down_billed": 0.0 if running else None,
        "dph_base": offer["dph_base"],
        "dph_total": offer["dph_total"],
        "storage_cost": offer["storage_cost"],
        "storage_total_cost": offer["storage_total_cost"],
        "vram_costperhour": offer["vram_costperhour"],
        "min_bid": offer["min_bid"],
        "is_bid": v["is_bid"],
        "credit_balance": None,
        "credit_discount": None,
        "credit_discount_max": 0.4,
        "reliability2": offer["reliability2"],
        "geolocation": offer["geolocation"],
        "verification": offer["verification"],
        "hosting_type": offer["hosting_type"],
        "static_ip": offer["static_ip"],
        "external": offer["external"],
        "rentable": False,
        "cuda_max_good": offer["cuda_max_good"],
        "driver_version": offer["driver_version"],
        "compute_cap": offer["compute_cap"],
        "dlperf": offer["dlperf"],
        "dlperf_per_dphtotal": offer["dlperf_per_dphtotal"],
        "total_flops": offer["total_flops"],
        "flops_per_dphtotal": offer["flops_per_dphtotal"],
        "score": offer["score"],
        "pci_gen": offer["pci_gen"],
        "pcie_bw": offer["pcie_bw"],
        "has_avx": offer["has_avx"],
        "bw_nvlink": offer["bw_nvlink"],
        "mobo_name": offer["mobo_name"],
        "os_version": offer["os_version"],
        "host_run_time": 2592000.0,
        "client_run_time": round(now - rec["created_at"], 1),
        "time_remaining": "",
        "time_remaining_isbid": "",
        "logo": "/static/logos/vastai_small2.png",
        "webpage": None,
        "search": offer["search"],
        "instance": offer["instance"],
    }


def _instance_or_none(cloud: Cloud, m: re.Match) -> dict | None:
    return cloud.get(DIALECT, str(int(m.group(1))))


def h_get(cloud: Cloud, req: Request, m: re.Match) -> Response:
    rec = _instance_or_none(cloud, m)
    return ok({"instances": view(cloud, rec) if rec else None})


def h_destroy(cloud: Cloud, req: Request, m: re.Match) -> Response:
    instance_id = str(int(m.group(1)))
    result = cloud.destroy(DIALECT, instance_id)
    if result == "not_found":
        return error(404, "no_such_instance", f"No instance with id {instance_id} found.")
    if result == "failed":
        return Response(500, "Internal Server Error")
    return ok({"success": True, "msg": "Instance destroyed successfully"})


def h_attach_ssh(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({}) or {}
    key = body.get("ssh_key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not re.match(r"^\s*(ssh-|ecdsa-|sk-)\S+\s+[A-Za-z0-9+/]+=*", key):
        return error(400, "invalid_args", "ssh_key must be an OpenSSH public key")
    with cloud.lock:
        rec = _instance_or_none(cloud, m)
        if rec is None:
            return error(404, "no_such_instance", f"No instance with id {m.group(1)} found.")
        cloud.nodes[cloud.key(rec)].add_authorized_key("root", key)
    return ok({"success": True, "msg": "ssh key added to instance"})


def h_update(cloud: Cloud, req: Request, m: re.Match) -> Response:
    """``PUT /instances/{id}/``: ``{"label": ...}`` and/or ``{"state": "stopped"|"running"}``."""
    body = req.json({}) or {}
    if not isinstance(body, dict):
        return error(400, "invalid_args", "body must be a JSON object")
    with cloud.lock:
        rec = _instance_or_none(cloud, m)
        if rec is None:
            return error(404, "no_such_instance", f"No instance with id {m.group(1)} found.")
        if "label" in body:
            rec["label"] = body["label"]
            cloud.save(rec)
        state = body.get("state")
        if state == "stopped":
            cloud.power_off(DIALECT, rec["id"], reason="api")
        elif state == "running":
            cloud.power_on(DIALECT, rec["id"])
        elif state is not None:
            return error(400, "invalid_args", f"unknown state {state!r}")
    return ok({"success": True})


def _query_value(req: Request, name: str, default: object) -> object:
    """GET parameters are JSON-encoded then URL-escaped by the CLI (``client._build_url``)."""
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _encode_token(offset: int, last_id: int) -> str:
    return base64.b64encode(
        json.dumps({"values": {"id": last_id}, "os_id": 1, "offset": offset}).encode()
    ).decode()


def _decode_token(token: object) -> int:
    try:
        return int(json.loads(base64.b64decode(str(token)))["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise QueryError("invalid after_token") from exc


ID_ORDER = [{"col": "id", "dir": "asc"}]


def h_list_v1(cloud: Cloud, req: Request, m: re.Match) -> Response:
    filters = _query_value(req, "select_filters", {}) or {}
    order = _query_value(req, "order_by", [{"col": "id", "dir": "asc"}])
    limit = _query_value(req, "limit", V1_PAGE_MAX)
    token = _query_value(req, "after_token", None)
    if not isinstance(filters, dict):
        return error(400, "invalid_args", "select_filters must be a JSON object")
    try:
        limit = max(1, min(V1_PAGE_MAX, int(limit)))  # type: ignore[arg-type]
        offset = _decode_token(token) if token else 0
        records = cloud.listable(DIALECT)
        if not filters and order == ID_ORDER:
            # What the adapter asks for: render only this page (a 5,000-instance listing read in
            # 25-row pages otherwise renders every instance for every page).
            rows = sorted(records, key=lambda r: int(r["id"]))
            page = [view(cloud, r) for r in rows[offset : offset + limit]]
        else:
            rows = _sort([v for v in (view(cloud, r) for r in records) if matches(v, filters)], order)
            page = rows[offset : offset + limit]
    except (QueryError, ValueError, TypeError) as exc:
        return error(400, "invalid_args", str(exc))
    more = offset + limit < len(rows)
    label_counts: dict[str, int] = {}
    for r in records:
        label_counts[r.get("label") or ""] = label_counts.get(r.get("label") or "", 0) + 1
    return ok(
        {
            "success": True,
            "instances_found": len(page),
            "total_instances": len(rows),
            "label_counts": label_counts,
            "next_token": _encode_token(offset + limit, page[-1]["id"]) if more and page else None,
            "instances": page,
        }
    )


def h_list_v0(cloud: Cloud, req: Request, m: re.Match) -> Response:
    """The deprecated v0 listing (the seed still used it in 2026): everything, one page."""
    return ok({"instances": _sort([view(cloud, r) for r in cloud.listable(DIALECT)], [["id", "asc"]])})


# (method, path regex, operation for faults, handler, auth required)
ROUTES = [
    ("POST", r"/api/v0/bundles/?", "search", h_search_bundles, False),
    ("GET", r"/api/v0/bundles/?", "search", h_search_bundles, False),
    ("PUT", r"/api/v0/search/asks/?", "search", h_search_asks, False),
    ("PUT", r"/api/v0/asks/(\d+)/?", "create", h_create, True),
    ("GET", r"/api/v1/instances/?", "list", h_list_v1, True),
    ("GET", r"/api/v0/instances/?", "list", h_list_v0, True),
    ("GET", r"/api/v0/instances/(\d+)/?", "get", h_get, True),
    ("DELETE", r"/api/v0/instances/(\d+)/?", "destroy", h_destroy, True),
    ("POST", r"/api/v0/instances/(\d+)/ssh/?", "attach_key", h_attach_ssh, True),
    ("PUT", r"/api/v0/instances/(\d+)/?", "label", h_update, True),
    ("GET", r"/api/v0/users/current/?", "account", h_users_current, True),
]


RATE_LIMIT_BODY = {
    "message": "The action could not be performed because there were too many requests by the "
    "client.\n\nAPI requests too frequent: endpoint threshold=4.5*1.0\n\n",
    "code": "429 Too Many Requests",
}


def rate_limited(detail: str = "") -> Response:
    # docs.vast.ai: 429 bodies are often plain text and there is no Retry-After; the limiter of
    # the field notes answers the JSON body seen live (VA-RATELIMIT), sometimes the plain text.
    if detail == "json":
        return Response(429, dict(RATE_LIMIT_BODY))
    return Response(429, "API requests too frequent")


def server_error(status: int) -> Response:
    if status in (401, 403):
        return error(status, "auth_error", "Invalid user key")
    return Response(status, "Internal Server Error" if status == 500 else f"HTTP {status}")
