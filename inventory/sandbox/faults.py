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
"""

from __future__ import annotations

import copy
import random
import threading
from dataclasses import dataclass

RULE_KEYS = {
    "dialect", "op", "rate_limit_burst", "fail_next", "error_rate", "error_status", "slow_ms",
    "create_error_but_created", "create_error_mode", "listing_lag_s", "destroy_fail_times",
}  # fmt: skip
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


def _normalize(config: object) -> dict:
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
        if rule.get("create_error_mode", "500") not in ("500", "success_false"):
            raise FaultConfigError('create_error_mode must be "500" or "success_false"')
        if rule.get("node_fault", "no_driver") not in NODE_FAULTS:
            raise FaultConfigError(f"node_fault must be one of {list(NODE_FAULTS)}")
        lie = rule.get("cuda_lie")
        if lie is not None and not (
            lie is True or (isinstance(lie, dict) and set(lie) <= {"actual_cuda", "actual_driver"})
        ):
            raise FaultConfigError('cuda_lie must be true or {"actual_cuda": ..., "actual_driver": ...}')
        rules.append(rule)
    return {"seed": int(config.get("seed", 0)), "rules": rules}


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

    def to_json(self) -> dict:
        with self._lock:
            return copy.deepcopy(self._config)

    def before(self, dialect: str, op: str) -> Injection:
        """Decide the call's fate: rate-limit bursts first, then fail_next, then error_rate."""
        inj = Injection()
        with self._lock:
            rules = [r for r in self._config["rules"] if _matches(r, dialect, op)]
            inj.sleep_ms = max((int(r.get("slow_ms", 0)) for r in rules), default=0)
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
