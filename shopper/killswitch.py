"""The offline kill switch: ``gpu-shopper cleanup-orphans --deployment ID``.

For when the server or its database is gone. It needs only the provider keys in the environment,
the same variables the server reads (``VASTAI_API_KEY``/``VASTAI_API_URL``,
``TENSORDOCK_API_TOKEN``/``TENSORDOCK_API_URL``, ``RUNPOD_API_KEY``/``RUNPOD_API_URL``,
``LAMBDA_API_KEY``/``LAMBDA_API_URL``, ``PROVIDER_TIMEOUT_SECONDS``,
``PROVIDER_MIN_INTERVAL_SECONDS``): no database, no running server, no Django settings module.

How it stays off Django: the adapters (``inventory/providers/<provider>/adapter.py``) are
thin ``requests`` clients that read no settings when built directly with ``base_url``/``api_key``
(only ``inventory.providers.get_provider`` reads settings and the shared database/Redis rate
limiter; this module never calls it). Importing the package imports ``django.conf`` but never
touches ``settings``, so nothing needs configuring. Each adapter paces its own calls in-process.

It lists every instance labelled ``shopper-<ID>-…`` (sessions/deployment.py) on every provider
with a key, with its age and price; ``--destroy`` destroys each (after the operator types the
deployment id, or ``--yes``) and polls until the provider says it is gone (``get`` → not found),
re-sending the destroy while it is not. A listing that fails is an error, never "nothing there".
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


@dataclass
class Found:
    provider: str
    instance: object  # InstanceData


def _adapters(environ: dict[str, str]) -> tuple[list[object], list[str]]:
    """Every provider with a key in ``environ``, built directly (no settings, no shared limiter)."""
    from django.utils.module_loading import import_string

    from inventory.providers import PROVIDER_CLASSES, PROVIDER_SETTINGS

    adapters, skipped = [], []
    timeout = float(environ.get("PROVIDER_TIMEOUT_SECONDS") or 30)
    interval = environ.get("PROVIDER_MIN_INTERVAL_SECONDS") or None
    for name, (url_var, key_var, default_url) in PROVIDER_SETTINGS.items():
        if name not in PROVIDER_CLASSES:
            continue
        key = (environ.get(key_var) or "").strip()
        if not key:
            skipped.append(f"{name} (no {key_var})")
            continue
        cls = import_string(PROVIDER_CLASSES[name])
        url = (environ.get(url_var) or default_url).strip()
        kwargs: dict = {"base_url": url, "api_key": key, "timeout": timeout}
        if interval is not None:
            kwargs["min_interval"] = float(interval)
        adapters.append(cls(**kwargs))
    return adapters, skipped


def _age(started_at: datetime | None, now: datetime) -> str:
    if started_at is None:
        return "?"
    seconds = max(0, int((now - started_at).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def find(adapters: list, deployment: str, *, unscoped: bool) -> tuple[list[Found], list[str]]:
    """Every instance of ``deployment`` (and, with ``unscoped``, every pre-scoping
    ``shopper-<uuid>`` one) on each adapter; the errors of listings that failed."""
    from inventory.providers.base import ProviderError
    from sessions.deployment import LABEL_PREFIX, parse_label, scoped_prefix

    wanted = {deployment, ""} if unscoped else {deployment}
    found, errors = [], []
    for adapter in adapters:
        prefix = LABEL_PREFIX if unscoped else scoped_prefix(deployment)
        try:
            instances = adapter.list_instances(prefix)
        except ProviderError as exc:
            errors.append(f"{adapter.name}: listing failed: {exc}")
            continue
        for instance in instances:
            label = parse_label(instance.label)
            if label is not None and label.deployment in wanted:
                found.append(Found(adapter.name, instance))
    return found, errors


def destroy_confirmed(
    adapter,
    instance_id: str,
    *,
    timeout: float,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[bool, str]:
    """Destroy and poll until the provider says the instance does not exist; the destroy is
    sent again every few polls while it still does (an accepted destroy is not a gone machine)."""
    from inventory.providers.base import NotFound, ProviderError

    deadline = clock() + timeout
    polls = 0
    last = ""
    while True:
        if polls % 6 == 0:
            try:
                adapter.destroy_instance(instance_id)
            except NotFound:
                return True, "gone"
            except ProviderError as exc:
                last = f"destroy: {exc}"
        try:
            adapter.get_instance(instance_id)
            last = last or "still there"
        except NotFound:
            return True, "gone"
        except ProviderError as exc:
            last = f"get: {exc}"
        polls += 1
        if clock() >= deadline:
            return False, last or "not confirmed"
        sleep(interval)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _out(text: str) -> None:
    print(text, flush=True)


def run(args, *, environ: dict[str, str] | None = None, stdin=None, out=_out, err=_err) -> int:
    """The ``cleanup-orphans`` command (shopper/cli.py parses the arguments)."""
    from inventory.providers import PROVIDER_SETTINGS
    from sessions.deployment import InvalidDeploymentId, validate_deployment_id

    environ = dict(os.environ if environ is None else environ)
    stdin = stdin or sys.stdin
    try:
        deployment = validate_deployment_id(args.deployment)
    except InvalidDeploymentId as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    adapters, skipped = _adapters(environ)
    if not adapters:
        names = ", ".join(key_var for _, key_var, _ in PROVIDER_SETTINGS.values())
        err(f"error: no provider key in the environment ({names})")
        return EXIT_USAGE
    for name in skipped:
        err(f"skipped {name}")
    found, errors = find(adapters, deployment, unscoped=args.unscoped)
    now = datetime.now(UTC)
    rows = [
        [
            f.provider,
            f.instance.instance_id,
            f.instance.label or "",
            f.instance.state,
            _age(f.instance.started_at, now),
            "?" if f.instance.price_per_hour is None else f"{f.instance.price_per_hour:.3f}",
        ]
        for f in found
    ]
    from shopper.cli import table

    if rows:
        out(table(["provider", "instance", "label", "state", "age", "$/h"], rows, right={4, 5}))
    total = sum((f.instance.price_per_hour or Decimal(0) for f in found), Decimal(0))
    out(f"{len(found)} machine(s) of deployment {deployment}, {total:.3f} $/h in all")
    for error in errors:
        err(f"error: {error}")
    if not args.destroy or not found:
        return EXIT_ERROR if errors else EXIT_OK

    if not args.yes:
        out(f"Type the deployment id ({deployment}) to destroy these {len(found)} machine(s):")
        answer = (stdin.readline() or "").strip()
        if answer != deployment:
            out("Nothing was destroyed (the answer did not match).")
            return EXIT_ERROR
    by_name = {a.name: a for a in adapters}
    failed = 0
    for f in found:
        ok, detail = destroy_confirmed(
            by_name[f.provider], f.instance.instance_id, timeout=args.timeout, interval=args.interval
        )
        out(f"{'destroyed' if ok else 'NOT CONFIRMED'} {f.provider} {f.instance.instance_id}: {detail}")
        failed += not ok
    out(f"{len(found) - failed} destroyed and confirmed gone, {failed} not confirmed")
    return EXIT_ERROR if failed or errors else EXIT_OK
