"""``manage.py provider_check [--provider NAME]``: an operator's check against the real APIs.

Read-only calls only, through the same adapters (and rate limiters) the product uses: the account
(Vast ``GET /api/v0/users/current/``: credit and balance; TensorDock has no balance endpoint we
know of, FIELD_NOTES X-BALANCE; RunPod REST v2 and Lambda have none either), the offer search,
the instance listing and, for Lambda, the account's SSH keys (ours are per rental). It prints counts and
everything it could not parse — unknown statuses, nulls and missing fields in what the adapters
need — and exits non-zero on any problem. It never rents, stops or destroys anything.

How the raw rows are seen: each adapter parses every offer/instance row through one method
(``_offer`` / ``_location_offers`` / ``_gpu_offers`` / ``_type_offers`` / ``_instance``); the
check wraps those methods on its own adapter object to look at the raw row next to what the
adapter made of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inventory.providers import (
    PROVIDER_CLASSES,
    ProviderDisabled,
    UnknownProvider,
    get_provider,
    http,
    provider_statuses,
)
from inventory.providers.base import Provider, ProviderError
from inventory.providers.lambdacloud import adapter as lambda_adapter
from inventory.providers.lambdacloud.names import lambda_gpu_type
from inventory.providers.runpod import adapter as runpod_adapter
from inventory.providers.runpod.names import runpod_gpu_type
from inventory.providers.tensordock import adapter as td_adapter
from inventory.providers.tensordock.names import tensordock_gpu_type
from inventory.providers.vastai import adapter as vast_adapter

OUR_PREFIX = "shopper-"
# Fields the adapters cannot do without: a row with one null or missing is dropped or wrong.
VAST_OFFER_FIELDS = ("id", "gpu_name", "num_gpus", "gpu_ram", "dph_total")
VAST_INSTANCE_FIELDS = ("id", "actual_status", "label", "dph_total")
TD_GPU_FIELDS = ("v0Name", "max_count", "price_per_hr")
TD_INSTANCE_FIELDS = ("id", "name", "status")
RUNPOD_GPU_FIELDS = ("id", "memory", "price", "maxCount")
RUNPOD_INSTANCE_FIELDS = ("id", "name", "status")
LAMBDA_TYPE_FIELDS = ("name", "price_cents_per_hour", "specs")
LAMBDA_INSTANCE_FIELDS = ("id", "status", "instance_type")


class Report:
    """What one provider's check found: lines to print and problems (any makes the exit non-zero)."""

    def __init__(self, name: str):
        self.name = name
        self.lines: list[str] = []
        self.problems: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(f"{self.name}: {text}")

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.name}: PROBLEM: {text}")

    def fields(self, what: str, rows: list[dict], names: tuple[str, ...], allow_null: tuple = ()) -> None:
        """Count rows missing each field, or carrying null where a value is needed."""
        for name in names:
            missing = sum(1 for r in rows if name not in r)
            nulls = sum(1 for r in rows if name in r and r[name] is None and name not in allow_null)
            if missing:
                self.problem(f"{missing} of {len(rows)} {what} have no {name!r} field")
            if nulls:
                self.problem(f"{nulls} of {len(rows)} {what} have {name!r} null")


def _spy(provider: Provider, method: str, seen: list) -> None:
    """Record the raw argument of every call of ``provider.<method>`` (on this object only)."""
    original: Callable = getattr(provider, method)

    def wrapper(raw: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(raw)
        return original(raw, *args, **kwargs)

    setattr(provider, method, wrapper)


def _run(report: Report, what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ProviderError as exc:  # already redacted by the adapter (http.describe)
        report.problem(f"{what} failed: {exc.code}: {exc.message}")
        return None


def check_vastai(provider: Provider) -> Report:
    report = Report(provider.name)
    account = _run(report, "account", lambda: http.request(provider, "GET", "/api/v0/users/current/"))
    if account is not None:
        data = account.data if isinstance(account.data, dict) else None
        if not account.ok or data is None:
            report.problem(f"account: {http.describe(provider, 'GET', '/api/v0/users/current/', account)}")
        else:
            report.info("auth ok")
            report.fields("account answers", [data], ("credit", "balance"))
            shown = ", ".join(f"{k} {data[k]}" for k in ("credit", "balance") if data.get(k) is not None)
            report.info(f"account: {shown or 'no balance given'}")

    raws: list = []
    _spy(provider, "_offer", raws)
    offers = _run(report, "search", provider.search_offers)
    if offers is not None:
        pages = getattr(provider, "last_search_pages", 0)
        report.info(f"search: {len(offers)} offers usable of {len(raws)} rows in {pages} page(s)")
        rows = [r for r in raws if isinstance(r, dict)]
        if len(rows) < len(raws):
            report.problem(f"{len(raws) - len(rows)} search rows are not objects")
        report.fields("offers", rows, VAST_OFFER_FIELDS)

    seen: list = []
    _spy(provider, "_instance", seen)
    instances = _run(report, "list instances", lambda: provider.list_instances(""))
    if instances is not None:
        _instances_summary(report, instances)
        report.fields("instances", seen, VAST_INSTANCE_FIELDS, allow_null=("actual_status", "label"))
        known = set(vast_adapter._STATES)
        for status, n in Counter(_lower(r.get("actual_status")) for r in seen).items():
            if status not in known:
                report.problem(f"{n} instance(s) with unknown actual_status {status!r}")
    return report


def check_tensordock(provider: Provider) -> Report:
    report = Report(provider.name)
    report.info("account: no balance endpoint (TensorDock v2 documents none we rely on)")
    locations: list = []
    _spy(provider, "_location_offers", locations)
    offers = _run(report, "search", provider.search_offers)
    if offers is not None:
        gpus = [g for loc in locations if isinstance(loc, dict) for g in (loc.get("gpus") or [])]
        report.info(f"search: {len(offers)} offers from {len(locations)} locations ({len(gpus)} GPU entries)")
        report.fields("locations", [loc for loc in locations if isinstance(loc, dict)], ("id",))
        report.fields("GPU entries", [g for g in gpus if isinstance(g, dict)], TD_GPU_FIELDS)
        unsized = sorted({g.get("v0Name") for g in gpus if isinstance(g, dict) and _unsized(g.get("v0Name"))})
        if unsized:
            report.problem(f"GPU names without a memory size: {unsized[:10]}")

    seen: list = []
    _spy(provider, "_instance", seen)
    instances = _run(report, "list instances (auth)", lambda: provider.list_instances(""))
    if instances is not None:
        report.info("auth ok")
        _instances_summary(report, instances)
        rows = [{**r, **(r.get("attributes") or {})} for r in seen if isinstance(r, dict)]
        report.fields("instances", rows, TD_INSTANCE_FIELDS)
        known = set(td_adapter._STATES)
        for status, n in Counter(_lower(r.get("status")) for r in rows).items():
            if status not in known:
                report.problem(f"{n} instance(s) with unknown status {status!r}")
    return report


def check_runpod(provider: Provider) -> Report:
    report = Report(provider.name)
    report.info("account: no balance endpoint (RunPod REST v2 has none)")
    gpus: list = []
    _spy(provider, "_gpu_offers", gpus)
    offers = _run(report, "search (auth)", provider.search_offers)
    if offers is not None:
        report.info("auth ok")
        unique = {g.get("id"): g for g in gpus if isinstance(g, dict)}
        report.info(f"search: {len(offers)} Secure Cloud offers from {len(unique)} GPU types")
        report.fields("GPU types", list(unique.values()), RUNPOD_GPU_FIELDS)
        unsized = sorted(
            str(g.get("id"))
            for g in unique.values()
            if runpod_gpu_type(str(g.get("id") or ""), http.to_int(g.get("memory")))[1] == 0
        )
        if unsized:
            report.problem(f"GPU types without a memory size: {unsized[:10]}")
    _instances_check(report, provider, RUNPOD_INSTANCE_FIELDS, {*runpod_adapter._STATES, "terminated"})
    return report


def check_lambda(provider: Provider) -> Report:
    report = Report(provider.name)
    report.info("account: no balance endpoint (Lambda Cloud API v1 has none)")
    entries: list = []
    _spy(provider, "_type_offers", entries)
    offers = _run(report, "search (auth)", provider.search_offers)
    if offers is not None:
        report.info("auth ok")
        types = [e.get("instance_type") for e in entries if isinstance(e, dict)]
        types = [t for t in types if isinstance(t, dict)]
        sold_out = sum(
            1 for e in entries if isinstance(e, dict) and not e.get("regions_with_capacity_available")
        )
        report.info(f"search: {len(offers)} offers from {len(entries)} instance types ({sold_out} sold out)")
        report.fields("instance types", types, LAMBDA_TYPE_FIELDS)
        unsized = sorted(
            str(t.get("name"))
            for t in types
            if (t.get("specs") or {}).get("gpus")
            and lambda_gpu_type(
                str(t.get("gpu_description") or t.get("description") or ""), str(t.get("name") or "")
            )[1]
            == 0
        )
        if unsized:
            report.problem(f"GPU instance types without a memory size: {unsized[:10]}")
    keys = _run(report, "SSH keys", lambda: provider.ssh_key_labels(OUR_PREFIX))
    if keys is not None:
        report.info(f"SSH keys: {len(keys)} labelled {OUR_PREFIX}… (one per rental; orphans go at reconcile)")
    _instances_check(report, provider, LAMBDA_INSTANCE_FIELDS, set(lambda_adapter._STATES))
    return report


def _instances_check(report: Report, provider: Provider, fields: tuple[str, ...], known: set[str]) -> None:
    seen: list = []
    _spy(provider, "_instance", seen)
    instances = _run(report, "list instances", lambda: provider.list_instances(""))
    if instances is None:
        return
    _instances_summary(report, instances)
    rows = [r for r in seen if isinstance(r, dict)]
    report.fields("instances", rows, fields)
    for status, n in Counter(_lower(r.get("status")) for r in rows).items():
        if status not in {k.lower() for k in known}:
            report.problem(f"{n} instance(s) with unknown status {status!r}")


def _lower(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) else value


def _unsized(v0_name: Any) -> bool:
    return isinstance(v0_name, str) and tensordock_gpu_type(v0_name)[1] == 0


def _instances_summary(report: Report, instances: list) -> None:
    ours = [i for i in instances if (i.label or "").startswith(OUR_PREFIX)]
    states = Counter(i.raw_status or "null" for i in instances)
    shown = ", ".join(f"{s} {n}" for s, n in sorted(states.items())) or "none"
    report.info(f"instances: {len(instances)} ({len(ours)} labelled {OUR_PREFIX}…); statuses: {shown}")


CHECKS: dict[str, Callable[[Provider], Report]] = {
    "vastai": check_vastai,
    "tensordock": check_tensordock,
    "runpod": check_runpod,
    "lambda": check_lambda,
}


class Command(BaseCommand):
    help = "Read-only check of the provider APIs with the configured keys: counts and anything unparsable."

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=sorted(PROVIDER_CLASSES), help="check only this one")

    def handle(self, *args, **options):
        names = [options["provider"]] if options.get("provider") else [s["name"] for s in provider_statuses()]
        problems: list[str] = []
        checked = 0
        for name in names:
            if name not in CHECKS:
                continue  # a provider registered without a check (tests' fakes)
            try:
                provider = get_provider(name)
            except (ProviderDisabled, UnknownProvider) as exc:
                if options.get("provider"):
                    problems.append(f"{name}: PROBLEM: {exc}")
                else:
                    self.stdout.write(f"{name}: skipped ({exc})")
                continue
            report = CHECKS[name](provider)
            checked += 1
            for line in report.lines + report.problems:
                self.stdout.write(line)
            problems += report.problems
        if not checked and not problems:
            problems.append("no provider has an API key: nothing was checked")
        if problems:
            for line in problems:
                self.stderr.write(line)
            raise CommandError(f"provider_check: {len(problems)} problem(s)")
        self.stdout.write(f"provider_check: {checked} provider(s) OK")
