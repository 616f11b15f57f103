"""HTTP front of the sandbox cloud: every provider dialect, fault injection and the admin API.

The dialects come from the provider registry (``inventory.providers.PROVIDERS``): each provider
folder with a ``sandbox.py`` is served under that module's ``PREFIX``, e.g.

``/vastai/...``               the Vast.ai dialect (``inventory/providers/vastai/sandbox.py``)
``/tensordock/api/v2/...``    the TensorDock v2 dialect (``inventory/providers/tensordock/sandbox.py``)
``/runpod/v2/...``            the RunPod REST v2 dialect (``inventory/providers/runpod/sandbox.py``)
``/lambda/api/v1/...``        the Lambda Cloud API v1 dialect (``inventory/providers/lambdacloud/sandbox.py``)

A dialect module has ``DIALECT`` (its name in instance records and call counts), ``PREFIX``,
``ROUTES``, ``check_auth``, ``rate_limited`` and ``server_error``; ``bad_json`` is optional.

``/_sandbox/...``             admin API for tests (no auth, never faulted):

* ``GET /_sandbox/health``                               ``{"ok": true}``
* ``GET /_sandbox/faults`` / ``PUT /_sandbox/faults``    current fault config (see ``faults.py``)
* ``POST /_sandbox/reset``                               destroy every instance of every dialect and
  forget account objects (Lambda SSH keys, RunPod account keys)
* ``GET /_sandbox/instances``                            every instance, both dialects
* ``POST /_sandbox/instances/listing-only``              ``{"dialect": "vastai", "labels": [...]}``:
  one listing-only instance per label (running, no SSH listener; for benchmarks of large listings)
* ``POST /_sandbox/instances/{dialect}/{id}/poweroff``   what ``shutdown -h now`` on the node calls
* ``POST /_sandbox/instances/{dialect}/{id}/poweron``
* ``GET /_sandbox/calls``                                calls per ``dialect.op`` (to assert retries)
* ``GET /_sandbox/catalog``                              catalog sizes
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import time
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from urllib.parse import parse_qsl, urlsplit

from . import catalog
from .cloud import Cloud
from .faults import FaultConfigError
from .web import BadJSON, Request, Response, ok

log = logging.getLogger("sandbox.http")


class DialectError(Exception):
    """A provider's sandbox.py does not say where or under which name it is served."""


def registered_dialects(providers: Mapping | None = None) -> dict[str, tuple[str, ModuleType]]:
    """prefix -> (dialect name, module) for every registered provider folder that has a sandbox.py.

    ``providers`` is the registry (``inventory.providers.PROVIDERS`` unless a test passes one).
    Raises DialectError when a dialect lacks ``DIALECT``/``PREFIX`` or two claim one prefix or name.
    """
    if providers is None:
        from inventory.providers import PROVIDERS as providers

    dialects: dict[str, tuple[str, ModuleType]] = {}
    for reg in providers.values():
        if importlib.util.find_spec(f"{reg.package}.sandbox") is None:
            continue  # the sandbox does not speak this provider (yet)
        mod = importlib.import_module(f"{reg.package}.sandbox")
        prefix, name = getattr(mod, "PREFIX", None), getattr(mod, "DIALECT", None)
        if not (isinstance(prefix, str) and prefix.startswith("/") and isinstance(name, str) and name):
            raise DialectError(f"{mod.__name__} must declare DIALECT (a name) and PREFIX (like '/vastai')")
        if any(p == prefix or n == name for p, (n, _) in dialects.items()):
            raise DialectError(f"{mod.__name__}: prefix {prefix!r} or dialect {name!r} is already served")
        dialects[prefix] = (name, mod)
    return dialects


DIALECTS = registered_dialects()
MODULES = {dialect: mod for dialect, mod in DIALECTS.values()}
COMPILED = {
    prefix: [
        (method, re.compile(pattern), op, handler, auth) for method, pattern, op, handler, auth in mod.ROUTES
    ]
    for prefix, (_, mod) in DIALECTS.items()
}


def dispatch(cloud: Cloud, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
    parts = urlsplit(raw_path)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    path = parts.path
    if path.startswith("/_sandbox"):
        return admin(cloud, Request(method, path[len("/_sandbox") :], query, headers, body))
    for prefix, (dialect, mod) in DIALECTS.items():
        if path == prefix or path.startswith(prefix + "/"):
            req = Request(method, path[len(prefix) :], query, headers, body)
            return dialect_call(cloud, dialect, mod, COMPILED[prefix], req)
    return ok({"error": "not_found", "msg": f"no route for {path}"}, 404)


def dialect_call(cloud: Cloud, dialect: str, mod, routes, req: Request) -> Response:
    path_matched = False
    for method, pattern, op, handler, auth_required in routes:
        m = pattern.fullmatch(req.path)
        if not m:
            continue
        path_matched = True
        if method != req.method:
            continue
        cloud.count_call(dialect, op)
        inj = cloud.faults.before(dialect, op, req.bearer() or req.query.get("api_key"))
        if inj.sleep_ms:
            time.sleep(inj.sleep_ms / 1000)
        if inj.kind == "rate_limit":
            return mod.rate_limited(inj.detail)
        if inj.kind == "error":
            return mod.server_error(inj.status)
        denied = mod.check_auth(req, auth_required)
        if denied is not None:
            return denied
        try:
            return handler(cloud, req, m)
        except BadJSON as exc:
            if hasattr(mod, "bad_json"):
                return mod.bad_json(exc)
            return ok([{"code": "invalid_json", "message": str(exc), "path": []}], 400)
    if path_matched:
        return ok({"error": "method_not_allowed"}, 405)
    return ok({"error": "not_found", "msg": f"no route for {req.path}"}, 404)


_DIALECT_NAMES = "|".join(map(re.escape, MODULES))
_INSTANCE_ADMIN = re.compile(rf"/instances/({_DIALECT_NAMES})/([^/]+)/(poweroff|poweron)/?")


def admin(cloud: Cloud, req: Request) -> Response:
    path, method = req.path.rstrip("/"), req.method
    if path == "/health":
        return ok({"ok": True})
    if path == "/faults" and method == "GET":
        return ok(cloud.faults.to_json())
    if path == "/faults" and method == "PUT":
        try:
            cloud.faults.set(req.json({}))
        except (BadJSON, FaultConfigError) as exc:
            return ok({"error": str(exc)}, 400)
        return ok(cloud.faults.to_json())
    if path == "/reset" and method == "POST":
        destroyed = cloud.reset()
        for _, mod in DIALECTS.values():
            if hasattr(mod, "reset"):
                mod.reset(cloud)  # account objects: Lambda's SSH keys, RunPod's account keys
        return ok({"destroyed": destroyed})
    if path == "/instances" and method == "GET":
        return ok({"instances": [cloud.admin_view(r) for r in cloud.records()]})
    if path == "/instances/listing-only" and method == "POST":
        return listing_only(cloud, req)
    if path == "/balance" and method == "PUT":
        try:
            body = req.json({})
        except BadJSON as exc:
            return ok({"error": str(exc)}, 400)
        credit = body.get("vastai") if isinstance(body, dict) else None
        if isinstance(credit, bool) or not isinstance(credit, int | float):
            return ok({"error": 'give {"vastai": <credit in USD>}'}, 400)
        cloud.vast_credit = float(credit)
        return ok({"vastai": cloud.vast_credit})
    if path == "/calls" and method == "GET":
        return ok(dict(cloud.calls))
    if path == "/catalog" and method == "GET":
        td = catalog.td_offer_count(cloud.td_locations)
        return ok(
            {
                "seed": cloud.seed,
                "vastai_offers": len(cloud.vast_offers),
                "tensordock_locations": len(cloud.td_locations),
                "tensordock_offers": td,
                "runpod_gpu_types": len(MODULES["runpod"].gpu_catalog(cloud)),
                "lambda_instance_types": len(catalog.LAMBDA_TYPES),
                "total_offers": len(cloud.vast_offers) + td,
            }
        )
    m = _INSTANCE_ADMIN.fullmatch(path)
    if m and method == "POST":
        dialect, instance_id, action = m.groups()
        done = (
            cloud.power_off(dialect, instance_id, reason="poweroff")
            if action == "poweroff"
            else cloud.power_on(dialect, instance_id)
        )
        return ok({"ok": True}) if done else ok({"error": "no such instance"}, 404)
    return ok({"error": "not_found"}, 404)


def listing_only(cloud: Cloud, req: Request) -> Response:
    try:
        body = req.json({})
    except BadJSON as exc:
        return ok({"error": str(exc)}, 400)
    labels = body.get("labels") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("dialect") != "vastai":
        return ok({"error": 'dialect must be "vastai" (the dialect whose listing is paged)'}, 400)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return ok({"error": "labels must be a list of strings"}, 400)
    records = MODULES["vastai"].listing_only_create(cloud, labels)
    return ok({"instances": [{"id": r["id"], "label": r["label"]} for r in records]}, 201)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SandboxCloud/1.0"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK, adding ~40 ms to every keep-alive call on loopback.
    disable_nagle_algorithm = True
    cloud: Cloud  # set on the subclass made by make_server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            resp = dispatch(self.cloud, self.command, self.path, headers, body)
        except Exception:
            log.error("unhandled error on %s %s\n%s", self.command, self.path, traceback.format_exc())
            resp = Response(500, "Internal Server Error")
        data, content_type = resp.encode()
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # e.g. a `shutdown` script killed while waiting for our answer

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)


def make_server(cloud: Cloud, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"cloud": cloud})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
