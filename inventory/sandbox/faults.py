"""Fault injection for the sandbox cloud.

A fault configuration is a list of rules; each rule is scoped to a dialect (``"vastai"``,
``"tensordock"`` or ``"*"``) and an operation (``"search"``, ``"create"``, ``"get"``, ``"list"``,
``"destroy"``, ``"attach_key"``, ``"label"``, ``"power"`` or ``"*"``; a list of them is allowed)::

    {"seed": 7, "rules": [
        {"dialect": "vastai", "op": "search", "rate_limit_burst": 3},
        {"op": ["get", "list"], "error_rate": 0.2, "error_status": 503},
        {"dialect": "tensordock", "op": "create", "fail_next": 1},
        {"op": "*", "slow_ms": 250},
        {"dialect": "vastai", "create_error_but_created": 1, "create_error_mode": "success_false"},
        {"listing_lag_s": 5},
        {"destroy_fail_times": 2}]}

Counters (``rate_limit_burst``, ``fail_next``, an *integer* ``create_error_but_created``) are
consumed as they fire; ``GET /_sandbox/faults`` shows what is left. A *float*
``create_error_but_created`` (or ``error_rate``) is a probability drawn from a seeded RNG, so a run
is reproducible. ``listing_lag_s`` and ``destroy_fail_times`` are properties of every matching
instance rather than of calls. The whole config comes from ``SANDBOX_FAULTS`` (JSON) at start and
can be replaced at runtime with ``PUT /_sandbox/faults``. A bare list of rules is accepted too.

Field-notes faults (``/work/shared/providers/FIELD_NOTES.md``, "What the sandbox should reproduce";
the ids below are its sections). Probabilities are drawn per *thing*, not per call, from a hash of
the seed, so a location without public IPs stays that way for everyone, across restarts:

* ``no_public_ip: p`` (TD-NOPUBLICIP): that share of TensorDock locations has hostnodes without a
  public IP: a create with ``useDedicatedIp`` answers HTTP 200 ``{"status": 400, "error": "No
  available public IPs on hostnode"}``; ``/locations`` still offers them (the real one did),
  ``/hostnodes`` says ``has_public_ip_available: false``.
* ``stale_locations: p`` with ``stale_minutes`` (default 10) (TD-STALE-NONODES): that share of
  locations (drawn again every ``stale_minutes``) answers a create with HTTP 200 ``{"status": 400,
  "error": "No available nodes found"}`` while ``/locations`` shows ``max_count > 0``.
* ``deploy_error_locations: [ids]`` (TD-DEPLOYERR): HTTP 200 ``{"status": 500, "error":
  "unexpected error during deployment"}``; nothing created.
* ``error_status: 401`` on a create rule (TD-AUTH401): the dialect's real 401 body while reads work.
* ``search_stale_s: N`` (VA-NOSUCHASK): a rented Vast ask keeps showing in search for N s (a
  create on it is ``no_such_ask`` in the real ``400 invalid_args`` body).
* ``loading_s: [min, max]`` (VA-LOADING): an instance's boot takes that long (uniform, seeded):
  ``actual_status`` null, then ``loading`` with a pull-progress ``status_msg``.
  ``stuck_loading: p``: it never leaves ``loading``. ``oci_fail: p`` (VA-GPU-UNUSABLE): it stays
  ``created`` with ``: OCI runtime create failed:`` in ``status_msg`` and never runs.
* ``rate_per_s`` / ``rate_burst`` / ``rate_scope`` (VA-RATELIMIT, X-RATE-TD): a token bucket per
  API key (``"key"``), per key and endpoint (``"endpoint"``, the default) or for everyone
  (``"all"``), shared by every client of the sandbox (so two processes on one key share it).
  Vast answers the JSON 429 body seen live, sometimes plain text; never ``Retry-After``.
* ``list_shape`` (TD-LISTSHAPE): ``"instances"`` (documented, default), ``"array"``,
  ``"attributes"`` or ``"rotate"`` (each listing the next shape).

RunPod and Lambda (``/work/shared/providers/RUNPOD_LAMBDA.md``; ids in the same style):

* ``no_capacity: p`` with ``stale_minutes`` (RP-NOCAPACITY, 1.5: "a create can still fail for
  capacity"; L-CAPACITY, 2.7): that share of offers (RunPod GPU x data centre, Lambda type x region;
  drawn again every window) answers the create with the provider's capacity error while the
  catalog still lists stock: RunPod 400 ``no longer any instances available``, Lambda 400
  ``instance-operations/launch/insufficient-capacity``.
* ``no_public_ip: p`` on ``runpod`` (RP-NOPUBLICIP, 1.4/1.6): pods in that share of data centres run
  without a public port 22 (``ssh.direct`` null), as Community hosts do.
* ``start_ssh_422: true`` on ``runpod`` (RUNPOD_LAMBDA.md 4.2, CONFLICT): a v2 that no longer
  knows ``startSsh`` answers 422 ``additional properties 'startSsh' not allowed``.
* The generic ``loading_s`` (image pulls; Lambda boots of 3-5 min), ``oci_fail`` (RunPod
  ``ERROR``), ``stuck_loading`` (Lambda ``unhealthy``), ``die_after_s`` (RunPod ``EXITED``, Lambda
  ``unhealthy``), ``key_delay_s`` (sshd up 30-90 s after RUNNING, RPSKILL gotchas) and
  ``rate_per_s`` (RunPod 429 with ``Retry-After``; Lambda's launch limit, one per 12 s) apply too.

``FIELD_MIX`` is the small realistic mix ``make run`` starts the sandbox with (``SANDBOX_FAULTS``
unset); ``SANDBOX_FAULTS=none`` turns every fault off, ``SANDBOX_FAULTS=field`` names the mix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass

RULE_KEYS = {
    "dialect", "op", "rate_limit_burst", "fail_next", "error_rate", "error_status", "slow_ms",
    "create_error_but_created", "create_error_mode", "listing_lag_s", "destroy_fail_times",
    "no_public_ip", "stale_locations", "stale_minutes", "deploy_error_locations", "search_stale_s",
    "loading_s", "stuck_loading", "oci_fail", "rate_per_s", "rate_burst", "rate_scope", "list_shape",
    "no_capacity", "start_ssh_422",
}  # fmt: skip
LIST_SHAPES = ("instances", "array", "attributes")

# What `make run` injects unless SANDBOX_FAULTS says otherwise: what a newcomer would meet on the
# real providers, at a rate that still lets most rentals through (FIELD_NOTES headline numbers are
# far worse). Each entry is one rule; node faults (NODE_KEYS below) are drawn per new machine.
FIELD_MIX: dict = {
    "seed": 42,
    "rules": [
        # TD-NOPUBLICIP: 8 of 31 live creates; here a tenth of the locations.
        {"dialect": "tensordock", "no_public_ip": 0.1},
        # TD-STALE-NONODES: offers listed but "No available nodes found" on create.
        {"dialect": "tensordock", "stale_locations": 0.1, "stale_minutes": 10},
        # TD-NODRIVER: a tenth of TensorDock machines boot without a working NVIDIA driver; the
        # cloud-init repair fixes most within minutes (shortened here), a few never.
        {"dialect": "tensordock", "node_fault": "no_driver", "repair_s": [20, 90], "p": 0.1},
        {"dialect": "tensordock", "node_fault": "no_driver", "repair_fails": True, "p": 0.02},
        # VA-LOADING: image pulls take a while (shortened from the field's 2-8 min).
        {"dialect": "vastai", "loading_s": [5, 40]},
        # VA-NOSUCHASK: a rented ask lingers in search for a minute.
        {"dialect": "vastai", "search_stale_s": 60},
        # VA-RATELIMIT: 4.5 requests/s per key and endpoint, as the live 429 body says.
        {"dialect": "vastai", "rate_per_s": 4.5, "rate_burst": 5},
        # RP-NOCAPACITY: "a create can still fail for capacity" while the catalog lists stock.
        {"dialect": "runpod", "no_capacity": 0.05, "stale_minutes": 10},
        # RunPod image pulls, and sshd up a little after RUNNING (RPSKILL gotchas: 30-90 s).
        {"dialect": "runpod", "loading_s": [5, 30]},
        {"dialect": "runpod", "key_delay_s": [2, 10]},
        # L-CAPACITY: Lambda's insufficient-capacity on launch; boots of 3-5 min, shortened.
        {"dialect": "lambda", "no_capacity": 0.1, "stale_minutes": 10},
        {"dialect": "lambda", "loading_s": [10, 40]},
    ],
}
PRESETS = {"none": {"seed": 0, "rules": []}, "field": FIELD_MIX}


# How the banner names each fault of a mix (make run shows it on every page).
PHRASES = {
    "no_public_ip": "TensorDock hosts without public IPs",
    "stale_locations": "stale TensorDock offers",
    "deploy_error_locations": "TensorDock deployment errors",
    "loading_s": "slow Vast loads",
    "stuck_loading": "Vast loads that never finish",
    "oci_fail": "Vast containers that never start",
    "search_stale_s": "Vast offers already taken",
    "rate_per_s": "provider rate limits",
    "node_fault": "machines without a working NVIDIA driver",
    "no_capacity": "RunPod and Lambda offers already taken",
    "key_delay_s": "SSH that comes up late",
}


def describe(config: object) -> str:
    """Plain words for the faults of a config (empty when there are none)."""
    rules = _normalize(config)["rules"]
    if not rules:
        return ""
    phrases = []
    for rule in rules:
        for key, phrase in PHRASES.items():
            if rule.get(key) and phrase not in phrases:
                phrases.append(phrase)
    return ", ".join(phrases) or "injected provider errors"


def parse(text: str | None) -> object:
    """``SANDBOX_FAULTS`` / ``--faults``: empty or ``none`` (no faults), ``field`` (FIELD_MIX) or JSON."""
    text = (text or "").strip()
    if not text:
        return None
    if text.lower() in PRESETS:
        return copy.deepcopy(PRESETS[text.lower()])
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FaultConfigError(f"not JSON, 'none' or 'field': {exc}") from exc


def draw(seed: int, *parts: object) -> float:
    """A reproducible number in [0, 1) for a thing (a location, a time window): the same for every
    client and after a restart, unlike the call-order-dependent RNG."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# Node faults (FIELD_NOTES "What the sandbox should reproduce" 1, 2, 9, 12, 18, 20): properties of
# the simulated machine, drawn once when an instance is created. ``p`` is the share of new
# instances a rule hits (default all), ``gpu`` limits it to GPU names containing the text
# (case-insensitive). A range ``[a, b]`` draws a value per instance.
NODE_KEYS = {
    "node_fault",  # "no_driver" (nvidia-smi exits 9) or "absent" (nvidia-smi not found, exit 127)
    "repair_s",  # the driver works this long after the boot script repaired it (default 0)
    "repair_fails",  # the repair never helps
    "dpkg_lock_s",  # unattended-upgrades holds the dpkg lock this long after boot
    "cuda_lie",  # {"actual_cuda": "12.8", "actual_driver": "570.124.04"}: nvidia-smi says less
    "die_after_s",  # the machine stops this long after it first ran
    "key_delay_s",  # every key is refused until this long after the machine runs
    "direct_blocked",  # Vast: the direct public_ipaddr port never answers; ssh_host:ssh_port works
    "p",
    "gpu",
}
NODE_FAULTS = ("no_driver", "absent")


class FaultConfigError(ValueError):
    pass


@dataclass
class Injection:
    """What to do with one call before its handler runs."""

    sleep_ms: int = 0
    kind: str = ""  # "" (none), "rate_limit" or "error"
    status: int = 0
    detail: str = ""  # rate_limit: "bucket" (the field-notes limiter) or "" (a counter)


def _normalize(config: object) -> dict:
    if isinstance(config, str):
        config = parse(config)
    if config is None or config == {}:
        return {"seed": 0, "rules": []}
    if isinstance(config, list):
        config = {"rules": config}
    if not isinstance(config, dict) or not isinstance(config.get("rules", []), list):
        raise FaultConfigError('faults must be {"rules": [...]} or a list of rules')
    rules = []
    for rule in config.get("rules", []):
        if not isinstance(rule, dict):
            raise FaultConfigError(f"a rule must be an object: {rule!r}")
        unknown = set(rule) - RULE_KEYS - NODE_KEYS
        if unknown:
            raise FaultConfigError(f"unknown fault keys: {sorted(unknown)}")
        rule = dict(rule)
        rule.setdefault("dialect", "*")
        rule.setdefault("op", "*")
        if rule.get("create_error_mode", "500") not in ("500", "504", "success_false"):
            raise FaultConfigError('create_error_mode must be "500", "504" or "success_false"')
        _check_field_keys(rule)
        if rule.get("node_fault", "no_driver") not in NODE_FAULTS:
            raise FaultConfigError(f"node_fault must be one of {list(NODE_FAULTS)}")
        lie = rule.get("cuda_lie")
        if lie is not None and not (
            lie is True or (isinstance(lie, dict) and set(lie) <= {"actual_cuda", "actual_driver"})
        ):
            raise FaultConfigError('cuda_lie must be true or {"actual_cuda": ..., "actual_driver": ...}')
        rules.append(rule)
    return {"seed": int(config.get("seed", 0)), "rules": rules}


def _probability(rule: dict, name: str) -> None:
    value = rule.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise FaultConfigError(f"{name} must be a probability between 0 and 1")


def _check_field_keys(rule: dict) -> None:
    """Bad values are refused when set (PUT answers 400), never found mid-request."""
    for name in ("no_public_ip", "stale_locations", "stuck_loading", "oci_fail", "no_capacity"):
        _probability(rule, name)
    for name in ("stale_minutes", "search_stale_s", "rate_per_s", "rate_burst"):
        value = rule.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise FaultConfigError(f"{name} must be a positive number")
    span = rule.get("loading_s", [0, 0])
    if not (
        isinstance(span, list)
        and len(span) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in span)
        and span[0] <= span[1]
    ):
        raise FaultConfigError("loading_s must be [min, max] seconds")
    locations = rule.get("deploy_error_locations", [])
    if not isinstance(locations, list) or not all(isinstance(x, str) for x in locations):
        raise FaultConfigError("deploy_error_locations must be a list of location ids")
    if rule.get("rate_scope", "endpoint") not in ("endpoint", "key", "all"):
        raise FaultConfigError('rate_scope must be "endpoint", "key" or "all"')
    if rule.get("list_shape", "instances") not in (*LIST_SHAPES, "rotate"):
        raise FaultConfigError(f"list_shape must be one of {[*LIST_SHAPES, 'rotate']}")


def _matches(rule: dict, dialect: str, op: str) -> bool:
    ops = rule["op"] if isinstance(rule["op"], list) else [rule["op"]]
    return rule["dialect"] in ("*", dialect) and ("*" in ops or op in ops)


class Faults:
    def __init__(self, config: object = None):
        self._lock = threading.Lock()
        self.set(config)

    def set(self, config: object) -> None:
        cfg = _normalize(config)
        with self._lock:
            self._config = cfg
            self._rng = random.Random(cfg["seed"])
            self._buckets: dict[tuple, tuple[float, float]] = {}  # key -> (tokens, at)
            self._shapes = 0

    def to_json(self) -> dict:
        with self._lock:
            return copy.deepcopy(self._config)

    def before(self, dialect: str, op: str, api_key: str | None = None) -> Injection:
        """Decide the call's fate: rate limits first, then fail_next, then error_rate."""
        inj = Injection()
        with self._lock:
            rules = [r for r in self._config["rules"] if _matches(r, dialect, op)]
            inj.sleep_ms = max((int(r.get("slow_ms", 0)) for r in rules), default=0)
            for i, r in enumerate(self._config["rules"]):
                if not (r.get("rate_per_s") and _matches(r, dialect, op)):
                    continue
                if not self._take_token(i, r, dialect, op, api_key):
                    inj.kind, inj.status = "rate_limit", 429
                    # Vast answers JSON mostly and plain text sometimes (VA-RATELIMIT).
                    inj.detail = "text" if self._rng.random() < 0.25 else "json"
                    return inj
            for r in rules:
                if r.get("rate_limit_burst", 0) > 0:
                    r["rate_limit_burst"] -= 1
                    inj.kind, inj.status = "rate_limit", 429
                    return inj
            for r in rules:
                if r.get("fail_next", 0) > 0:
                    r["fail_next"] -= 1
                    inj.kind, inj.status = "error", int(r.get("error_status", 500))
                    return inj
            for r in rules:
                if r.get("error_rate", 0) and self._rng.random() < float(r["error_rate"]):
                    inj.kind, inj.status = "error", int(r.get("error_status", 500))
                    return inj
        return inj

    def _take_token(self, index: int, rule: dict, dialect: str, op: str, api_key: str | None) -> bool:
        """A token bucket refilled at ``rate_per_s`` up to ``rate_burst``; caller holds the lock."""
        scope = rule.get("rate_scope", "endpoint")
        key = (index, dialect, "" if scope == "all" else api_key or "", op if scope == "endpoint" else "")
        rate = float(rule["rate_per_s"])
        burst = float(rule.get("rate_burst", max(1.0, rate)))
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True

    def _values(self, dialect: str, op: str, name: str) -> list:
        with self._lock:
            return [r[name] for r in self._config["rules"] if name in r and _matches(r, dialect, op)]

    def td_create_refusal(self, location_id: str, dedicated_ip: bool, now: float | None = None) -> str | None:
        """The in-body error a TensorDock create at this location gets (TD-DEPLOYERR,
        TD-STALE-NONODES, TD-NOPUBLICIP), or None. Deterministic per location (and time window)."""
        now = time.time() if now is None else now
        seed = self._config["seed"]
        if any(location_id in ids for ids in self._values("tensordock", "create", "deploy_error_locations")):
            return "deploy_error"
        with self._lock:
            stale = [
                (float(r["stale_locations"]), float(r.get("stale_minutes", 10)))
                for r in self._config["rules"]
                if r.get("stale_locations") and _matches(r, "tensordock", "create")
            ]
        for p, minutes in stale:
            if draw(seed, "stale", location_id, int(now // (minutes * 60))) < p:
                return "no_nodes"
        if dedicated_ip and self.td_no_public_ip(location_id):
            return "no_public_ip"
        return None

    def no_capacity(self, dialect: str, *thing: str, now: float | None = None) -> bool:
        """RP-NOCAPACITY / L-CAPACITY: does a create on this offer get the capacity error now?
        Drawn per offer and ``stale_minutes`` window, the same for every client."""
        now = time.time() if now is None else now
        seed = self._config["seed"]
        with self._lock:
            rules = [
                (float(r["no_capacity"]), float(r.get("stale_minutes", 10)))
                for r in self._config["rules"]
                if r.get("no_capacity") and _matches(r, dialect, "create")
            ]
        return any(
            draw(seed, "no_capacity", dialect, *thing, int(now // (minutes * 60))) < p for p, minutes in rules
        )

    def no_public_ip(self, dialect: str, place: str) -> bool:
        """RP-NOPUBLICIP: machines in this place (a RunPod data centre) get no public port."""
        seed = self._config["seed"]
        return any(
            draw(seed, "no_public_ip", dialect, place) < float(p)
            for p in self._values(dialect, "create", "no_public_ip")
            if dialect != "tensordock"
        )

    def start_ssh_422(self, dialect: str) -> bool:
        return any(self._values(dialect, "create", "start_ssh_422"))

    def td_no_public_ip(self, location_id: str) -> bool:
        seed = self._config["seed"]
        return any(
            draw(seed, "no_public_ip", location_id) < float(p)
            for p in self._values("tensordock", "create", "no_public_ip")
        )

    def vast_search_stale_s(self) -> float:
        return max((float(v) for v in self._values("vastai", "search", "search_stale_s")), default=0.0)

    def boot_plan(self, dialect: str) -> dict:
        """Per-instance boot faults drawn at create: ``boot_delay`` (``loading_s``), ``never_runs``
        and ``oci_fail``; an empty dict when none apply."""
        plan: dict = {}
        with self._lock:
            for r in self._config["rules"]:
                if not _matches(r, dialect, "create"):
                    continue
                if "loading_s" in r:
                    low, high = (float(x) for x in r["loading_s"])
                    plan["boot_delay"] = max(plan.get("boot_delay", 0.0), self._rng.uniform(low, high))
                if r.get("stuck_loading") and self._rng.random() < float(r["stuck_loading"]):
                    plan["never_runs"] = True
                if r.get("oci_fail") and self._rng.random() < float(r["oci_fail"]):
                    plan.update(never_runs=True, oci_fail=True)
        return plan

    def list_shape(self, dialect: str) -> str:
        shapes = self._values(dialect, "list", "list_shape")
        if not shapes:
            return "instances"
        if shapes[-1] != "rotate":
            return shapes[-1]
        with self._lock:
            self._shapes += 1
            return LIST_SHAPES[self._shapes % len(LIST_SHAPES)]

    def create_error(self, dialect: str) -> str | None:
        """For a create that succeeded: answer an error anyway? Returns the mode or None."""
        with self._lock:
            for r in self._config["rules"]:
                value = r.get("create_error_but_created")
                if not value or not _matches(r, dialect, "create"):
                    continue
                if isinstance(value, bool | int):
                    r["create_error_but_created"] = int(value) - 1
                    return r.get("create_error_mode", "500")
                if self._rng.random() < float(value):
                    return r.get("create_error_mode", "500")
        return None

    def listing_lag(self, dialect: str) -> float:
        with self._lock:
            return max(
                (
                    float(r.get("listing_lag_s", 0))
                    for r in self._config["rules"]
                    if _matches(r, dialect, "list")
                ),
                default=0.0,
            )

    def destroy_fail_times(self, dialect: str) -> int:
        with self._lock:
            return max(
                (
                    int(r.get("destroy_fail_times", 0))
                    for r in self._config["rules"]
                    if _matches(r, dialect, "destroy")
                ),
                default=0,
            )

    def node(self, dialect: str, gpu_name: str = "") -> dict:
        """The node faults of a new instance: every matching rule with node keys whose ``p`` hits,
        ranges drawn, later rules winning. {} for a healthy machine."""
        out: dict = {}
        with self._lock:
            for r in self._config["rules"]:
                keys = (set(r) & NODE_KEYS) - {"p", "gpu"}
                if not keys or not _matches(r, dialect, "node"):
                    continue
                if r.get("gpu") and str(r["gpu"]).lower() not in gpu_name.lower():
                    continue
                if "p" in r and self._rng.random() >= float(r["p"]):
                    continue
                for key in keys:
                    value = r[key]
                    if isinstance(value, list) and len(value) == 2:
                        value = self._rng.uniform(float(value[0]), float(value[1]))
                    out[key] = value
        if out.get("cuda_lie") is True:
            out["cuda_lie"] = {"actual_cuda": "12.8", "actual_driver": "570.124.04"}
        return out
