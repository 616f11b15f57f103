"""The Lambda Cloud API v1 dialect (served under ``/lambda/api/v1``; adapter base URL
``http://HOST:PORT/lambda/api/v1``). The module is ``lambdacloud``: ``lambda`` is a keyword.

Shapes follow ``/work/shared/providers/RUNPOD_LAMBDA.md`` section 2 and the ``lambda_v1_*.json``
fixtures: ``{"data": ...}`` on success, ``{"error": {"code", "message", "suggestion"?}}`` on failure
(clients key on ``code``); ``/instance-types`` with ``regions_with_capacity_available`` (empty =
sold out) and prices in integer cents for the whole instance; a launch takes exactly one
registered SSH key **by name** and answers ``{"instance_ids": [...]}``; terminate answers the
instances with status ``terminating``. No stop: terminate is the only way to stop paying.

The machine: user ``ubuntu``. Lambda installs the launch's registered key into ubuntu's
``authorized_keys`` itself; ``user_data`` runs once at first boot as root, like cloud-init (a
``#!`` script, or ``#cloud-config`` whose ``runcmd`` is run). ``ip`` is absent while booting.

The sandbox cannot listen on port 22 (Lambda's only SSH port), so every instance also carries
``sandbox_ssh_port``, a field the real API never sends; the adapter reads it when present and
uses 22 otherwise.

Faults (``faults.py``): ``no_capacity`` (L-CAPACITY: the launch's ``insufficient-capacity`` 400 for
that share of (type, region) while ``/instance-types`` lists capacity), ``loading_s`` (boots of 3-5
min, shortened), ``stuck_loading`` (health checks never pass: ``unhealthy`` after the boot),
``die_after_s`` (the machine stops answering: ``unhealthy``), ``rate_per_s`` on ``create`` (one
launch per 12 s: the 429, body UNCONFIRMED).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid

from inventory.sandbox import catalog
from inventory.sandbox.cloud import RUNNING, STOPPED, Cloud
from inventory.sandbox.node import shell_join
from inventory.sandbox.web import Request, Response, ok

DIALECT = "lambda"
PREFIX = "/lambda/api/v1"
MAX_NAME = 64
MAX_PUBLIC_KEY = 4096
MAX_USER_DATA = 1024 * 1024
CAPACITY_CODE = "instance-operations/launch/insufficient-capacity"


def error(status: int, code: str, message: str, suggestion: str | None = None) -> Response:
    body: dict = {"code": code, "message": message}
    if suggestion:
        body["suggestion"] = suggestion
    return ok({"error": body}, status)


def _key_of(req: Request) -> str | None:
    """Bearer, or Basic with ``<key>:`` (both accepted, §2.1)."""
    bearer = req.bearer()
    if bearer:
        return bearer
    auth = req.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        import base64
        import binascii

        try:
            return base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def check_auth(req: Request, required: bool) -> Response | None:
    key = _key_of(req)
    if not key or key == "invalid":
        return error(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.")
    return None


def rate_limited(detail: str = "") -> Response:
    # The 429 body and Retry-After are UNCONFIRMED (RUNPOD_LAMBDA.md 4.10): Lambda's envelope, no header.
    return error(429, "global/too-many-requests", "Too many requests.")


def server_error(status: int) -> Response:
    if status == 401:
        return check_auth(Request("GET", "/", {}, {}), True)  # type: ignore[return-value]
    if status == 503:
        return error(503, "provider/internal-unavailable", "Provider is temporarily unavailable.")
    return error(status, "global/internal-error", "An internal error occurred.")


def bad_json(message: str) -> Response:
    return _invalid(f"Invalid JSON body: {message}")


def _invalid(message: str) -> Response:
    return error(400, "global/invalid-parameters", message)


# ---------------------------------------------------------------------------------------------
# Capacity and instance types
# ---------------------------------------------------------------------------------------------
_CAPACITY: dict[int, dict[str, dict[str, int]]] = {}


def capacity(cloud: Cloud) -> dict[str, dict[str, int]]:
    if id(cloud) not in _CAPACITY:
        _CAPACITY[id(cloud)] = catalog.generate_lambda_capacity(cloud.seed)
    return _CAPACITY[id(cloud)]


def free(cloud: Cloud, type_name: str, region: str) -> int:
    in_use = sum(
        1
        for r in cloud.records(DIALECT)
        if r["lambda"]["instance_type"] == type_name and r["lambda"]["region"] == region
    )
    return max(0, capacity(cloud).get(type_name, {}).get(region, 0) - in_use)


def instance_type(itype: catalog.LambdaType) -> dict:
    return {
        "name": itype.name,
        "description": f"{itype.gpus}x {itype.gpu_description}",
        "gpu_description": itype.gpu_description,
        "price_cents_per_hour": itype.price_cents,
        "specs": {
            "vcpus": itype.vcpus,
            "memory_gib": itype.memory_gib,
            "storage_gib": itype.storage_gib,
            "gpus": itype.gpus,
        },
    }


def h_instance_types(cloud: Cloud, req: Request, m: re.Match) -> Response:
    data = {}
    for itype in catalog.LAMBDA_TYPES:
        regions = [
            {"name": region, "description": catalog.LAMBDA_REGION_DESCRIPTION[region]}
            for region in capacity(cloud)[itype.name]
            if free(cloud, itype.name, region) > 0
        ]
        data[itype.name] = {"instance_type": instance_type(itype), "regions_with_capacity_available": regions}
    return ok({"data": data})


# ---------------------------------------------------------------------------------------------
# SSH keys (account objects, referenced by name)
# ---------------------------------------------------------------------------------------------
def ssh_keys(cloud: Cloud) -> list[dict]:
    return json.loads(cloud.store.get_meta("lambda_ssh_keys") or "[]")


def _save_keys(cloud: Cloud, keys: list[dict]) -> None:
    cloud.store.set_meta("lambda_ssh_keys", json.dumps(keys))


def h_keys_list(cloud: Cloud, req: Request, m: re.Match) -> Response:
    return ok({"data": ssh_keys(cloud)})


def h_keys_add(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({})
    name = body.get("name") if isinstance(body, dict) else None
    public_key = body.get("public_key") if isinstance(body, dict) else None
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        return _invalid("Invalid request data.")
    if public_key is not None and (not isinstance(public_key, str) or len(public_key) > MAX_PUBLIC_KEY):
        return _invalid("Invalid request data.")
    with cloud.lock:
        keys = ssh_keys(cloud)
        if any(k["name"] == name for k in keys):
            # The code for a duplicate name is UNCONFIRMED (§2.4): the generic one is a guess.
            return _invalid("An SSH key with this name already exists.")
        key = {"id": uuid.uuid4().hex, "name": name}
        if public_key is None:
            import asyncssh

            generated = asyncssh.generate_private_key("ssh-ed25519")
            key["public_key"] = generated.export_public_key().decode().strip()
            answer = {**key, "private_key": generated.export_private_key().decode()}
        else:
            key["public_key"] = public_key.strip()
            answer = dict(key)
        _save_keys(cloud, [*keys, key])
    return ok({"data": answer})


def h_keys_delete(cloud: Cloud, req: Request, m: re.Match) -> Response:
    with cloud.lock:
        keys = ssh_keys(cloud)
        left = [k for k in keys if k["id"] != m.group(1)]
        if len(left) == len(keys):
            return error(404, "global/object-does-not-exist", "Specified SSH key does not exist.")
        _save_keys(cloud, left)
    return ok({"data": {}})


# ---------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------
def _startup(user_data: str) -> dict | None:
    """What cloud-init would run of ``user_data``: a ``#!`` script, or ``#cloud-config`` runcmd."""
    text = user_data or ""
    if text.startswith("#!"):
        shell = "/bin/bash" if "bash" in text.splitlines()[0] else "/bin/sh"
        return {"script": text, "shell": shell}
    if text.startswith("#cloud-config"):
        try:
            import yaml

            runcmd = (yaml.safe_load(text) or {}).get("runcmd") or []
        except Exception:
            return None
        lines = "\n".join(shell_join(entry) for entry in runcmd)
        return {"script": "#!/bin/sh\n" + lines + "\n", "shell": "/bin/sh"} if lines else None
    return None


def h_launch(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({})
    if not isinstance(body, dict):
        return _invalid("Invalid request data.")
    region, type_name = body.get("region_name"), body.get("instance_type_name")
    key_names = body.get("ssh_key_names")
    name = body.get("name")
    user_data = body.get("user_data") or ""
    if not isinstance(region, str) or not isinstance(type_name, str):
        return _invalid("Invalid request data.")
    if not isinstance(key_names, list) or len(key_names) != 1:
        return _invalid("Exactly one SSH key name must be given.")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
        return _invalid("Invalid request data.")
    if not isinstance(user_data, str) or len(user_data.encode()) > MAX_USER_DATA:
        return _invalid("Invalid request data.")
    if body.get("quantity", 1) != 1:
        return _invalid("This sandbox launches one instance per request.")
    itype = catalog.LAMBDA_TYPE_BY_NAME.get(type_name)
    if itype is None or region not in catalog.LAMBDA_REGION_DESCRIPTION:
        return _invalid("Invalid request data.")
    with cloud.lock:
        key = next((k for k in ssh_keys(cloud) if k["name"] == key_names[0]), None)
        if key is None:
            return error(404, "global/object-does-not-exist", "Specified SSH key does not exist.")
        if free(cloud, type_name, region) <= 0 or cloud.faults.no_capacity(DIALECT, region, type_name):
            return error(
                400,
                CAPACITY_CODE,
                "Not enough capacity to fulfill launch request.",
                "Choose an instance type with more availability, or try again later.",
            )
        instance_id = uuid.uuid4().hex
        rec = cloud.new_record(
            DIALECT,
            instance_id,
            **cloud.faults.boot_plan(DIALECT),
            label=name,
            offer_id=f"{region}:{type_name}",
            users=["ubuntu"],
            env={},
            startup=_startup(user_data),
            gpu={
                "name": itype.smi_name,
                "count": itype.gpus,
                "mem_mib": itype.mem_mib,
                "driver": "570.133.20",
                "cuda": "12.8",
                "power": 700,
            },
            price=itype.price_cents / 100,
            **{
                "lambda": {
                    "instance_type": type_name,
                    "region": region,
                    "ssh_key_names": [key["name"]],
                    "private_ip": f"10.19.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}",
                    "jupyter_token": secrets.token_hex(16),
                }
            },
        )
        node = cloud.nodes[cloud.key(rec)]
        node.home("root").mkdir(parents=True, exist_ok=True)  # user_data runs as root
        node.add_authorized_key("ubuntu", key["public_key"])
    mode = cloud.faults.create_error(DIALECT)
    if mode == "504":
        return Response(504, "HTTP 504")
    if mode:
        return server_error(500)
    return ok({"data": {"instance_ids": [instance_id]}})


def status(cloud: Cloud, rec: dict) -> str:
    phase = cloud.phase(rec)
    if phase == STOPPED:
        return "unhealthy"  # no stop on Lambda: a machine that went down fails its health checks
    if rec.get("never_runs") and time.time() - rec["boot_at"] >= rec["boot_delay"]:
        return "unhealthy"  # stuck_loading: the health checks never pass
    return "active" if phase == RUNNING else "booting"


def _actions(st: str) -> dict:
    if st == "booting":
        reason = {"available": False, "reason_code": "vm-has-not-launched",
                  "reason_description": "The instance has not launched yet."}  # fmt: skip
        return {k: dict(reason) for k in ("migrate", "rebuild", "restart", "cold_reboot")} | {
            "terminate": {"available": True}
        }
    if st == "terminating":
        reason = {"available": False, "reason_code": "vm-is-terminating",
                  "reason_description": "The instance is terminating."}  # fmt: skip
        return {k: dict(reason) for k in ("migrate", "rebuild", "restart", "cold_reboot", "terminate")}
    return {k: {"available": True} for k in ("migrate", "rebuild", "restart", "cold_reboot", "terminate")}


def view(cloud: Cloud, rec: dict, st: str | None = None) -> dict:
    """The v1 ``Instance`` (fixture field order); ``ip`` and friends absent while booting."""
    lam = rec["lambda"]
    st = st or status(cloud, rec)
    item: dict = {"id": rec["id"]}
    if rec.get("label"):
        item["name"] = rec["label"]
    if st in ("active", "unhealthy", "terminating"):
        item.update(ip="127.0.0.1", private_ip=lam["private_ip"])
    item.update(
        status=st,
        ssh_key_names=list(lam["ssh_key_names"]),
        file_system_names=[],
        region={"name": lam["region"], "description": catalog.LAMBDA_REGION_DESCRIPTION[lam["region"]]},
        instance_type=instance_type(catalog.LAMBDA_TYPE_BY_NAME[lam["instance_type"]]),
    )
    if "ip" in item:
        item.update(
            hostname="127-0-0-1.cloud.lambda.ai",
            jupyter_token=lam["jupyter_token"],
            jupyter_url=f"https://jupyter-{rec['id']}.lambdaspaces.com/?token={lam['jupyter_token']}",
            sandbox_ssh_port=rec["ssh_port"],
        )
    item.update(actions=_actions(st), tags=[], firewall_rulesets=[])
    return item


def h_list(cloud: Cloud, req: Request, m: re.Match) -> Response:
    items = [view(cloud, r) for r in sorted(cloud.listable(DIALECT), key=lambda r: r["created_at"])]
    return ok({"data": items})


def _not_found() -> Response:
    return error(404, "global/object-does-not-exist", "Specified instance does not exist.")


def h_get(cloud: Cloud, req: Request, m: re.Match) -> Response:
    rec = cloud.get(DIALECT, m.group(1))
    return ok({"data": view(cloud, rec)}) if rec else _not_found()


def h_rename(cloud: Cloud, req: Request, m: re.Match) -> Response:
    body = req.json({})
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or len(name) > MAX_NAME:
        return _invalid("Invalid request data.")
    with cloud.lock:
        rec = cloud.get(DIALECT, m.group(1))
        if rec is None:
            return _not_found()
        rec["label"] = name
        cloud.save(rec)
    return ok({"data": view(cloud, rec)})


def _ids(req: Request) -> list[str] | None:
    body = req.json({})
    ids = body.get("instance_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return None
    return ids


def h_terminate(cloud: Cloud, req: Request, m: re.Match) -> Response:
    ids = _ids(req)
    if ids is None:
        return _invalid("Invalid request data.")
    if any(cloud.get(DIALECT, i) is None for i in ids):
        return _not_found()  # one unknown id fails the call (UNCONFIRMED for batches, 4.12)
    terminated = []
    for instance_id in ids:
        rec = cloud.get(DIALECT, instance_id)
        if rec is None:
            continue
        item = view(cloud, rec, "terminating")
        result = cloud.destroy(DIALECT, instance_id)
        if result == "failed":
            return server_error(500)
        terminated.append(item)
    return ok({"data": {"terminated_instances": terminated}})


def h_restart(cloud: Cloud, req: Request, m: re.Match) -> Response:
    ids = _ids(req)
    if ids is None:
        return _invalid("Invalid request data.")
    if any(cloud.get(DIALECT, i) is None for i in ids):
        return _not_found()
    restarted = []
    for instance_id in ids:
        cloud.power_off(DIALECT, instance_id, reason="api")
        cloud.power_on(DIALECT, instance_id)
        restarted.append(view(cloud, cloud.get(DIALECT, instance_id)))
    return ok({"data": {"restarted_instances": restarted}})


ROUTES = [
    ("GET", r"/instance-types/?", "search", h_instance_types, True),
    ("POST", r"/instance-operations/launch/?", "create", h_launch, True),
    ("POST", r"/instance-operations/terminate/?", "destroy", h_terminate, True),
    ("POST", r"/instance-operations/restart/?", "power", h_restart, True),
    ("GET", r"/instances/?", "list", h_list, True),
    ("GET", r"/instances/([^/]+)/?", "get", h_get, True),
    ("POST", r"/instances/([^/]+)/?", "label", h_rename, True),
    ("GET", r"/ssh-keys/?", "ssh_keys", h_keys_list, True),
    ("POST", r"/ssh-keys/?", "ssh_keys", h_keys_add, True),
    ("DELETE", r"/ssh-keys/([^/]+)/?", "ssh_keys", h_keys_delete, True),
]


def reset(cloud: Cloud) -> None:
    """``POST /_sandbox/reset``: the account's keys go with its instances."""
    cloud.store.set_meta("lambda_ssh_keys", "[]")
