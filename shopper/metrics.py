"""Prometheus exposition: ``GET /metrics``.

Two kinds of metric:

* computed from the database at scrape time by ``ShopperCollector`` (rentals, alerts, feeds,
  deadline lag, spend), so they are right whichever process did the work;
* in-process provider call metrics, defined where calls happen (``inventory.providers.http``)
  and re-exported here. With ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client multiprocess
  mode; docker-compose.yml and ``make run`` set it) they are summed over every process that
  writes to that directory: the web server, the worker and the safety loop.

Access (DESIGN.md security): ``Authorization: Bearer <METRICS_TOKEN>`` when METRICS_TOKEN is set;
otherwise only loopback clients. Nothing here renders a provider key.
"""

from __future__ import annotations

import hmac
import math
import os
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from inventory.providers.http import PROVIDER_REQUEST_SECONDS, PROVIDER_REQUESTS, operation_name

__all__ = [
    "PROVIDER_REQUESTS",
    "PROVIDER_REQUEST_SECONDS",
    "ShopperCollector",
    "metrics_view",
    "operation_name",
]

STUCK_STOPPING_SECONDS = 15 * 60
DEADLINE_LAG_WINDOW = timedelta(hours=1)
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def _p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class ShopperCollector:
    """Reads the database on every scrape: a handful of aggregate queries."""

    def describe(self):
        return []  # nothing is read at registration time

    def collect(self):
        from inventory.models import ProviderFeed
        from inventory.providers import PROVIDER_CLASSES
        from sessions.models import (
            BILLING_STATUSES,
            LIVE_STATUSES,
            Alert,
            AlertKind,
            EventCause,
            EventKind,
            Rental,
            RentalEvent,
            Status,
        )

        now = timezone.now()

        # Rentals in live statuses, by status and provider (zeros included, so alerts can use them).
        rentals = GaugeMetricFamily(
            "shopper_rentals", "Live rentals by status and provider.", labels=["status", "provider"]
        )
        counts: dict[tuple[str, str], int] = {
            (str(s), p): 0 for s in sorted(LIVE_STATUSES, key=str) for p in PROVIDER_CLASSES
        }
        rows = (
            Rental.objects.filter(status__in=LIVE_STATUSES)
            .values_list("status", "provider")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for status, provider, n in rows:
            counts[(status, provider)] = n
        for (status, provider), n in sorted(counts.items()):
            rentals.add_metric([status, provider], n)
        yield rentals

        stuck = Rental.objects.filter(
            status=Status.STOPPING, stop_requested_at__lte=now - timedelta(seconds=STUCK_STOPPING_SECONDS)
        ).count()
        yield GaugeMetricFamily(
            "shopper_rentals_stuck_stopping",
            "Rentals in stopping for more than 15 minutes (destroy not yet confirmed).",
            value=stuck,
        )

        alerts = dict(
            Alert.objects.filter(kind__in=[AlertKind.ORPHAN, AlertKind.GHOST])
            .values_list("kind")
            .annotate(n=Count("pk"))
            .order_by()
        )
        yield CounterMetricFamily(
            "shopper_orphans_found",
            "Orphan instances found by reconciliation (alert rows).",
            value=alerts.get(AlertKind.ORPHAN, 0),
        )
        yield CounterMetricFamily(
            "shopper_ghosts_found",
            "Ghost rentals found by reconciliation (alert rows).",
            value=alerts.get(AlertKind.GHOST, 0),
        )

        retries = RentalEvent.objects.filter(
            kind=EventKind.ERROR, data__cause=EventCause.DESTROY_FAILED
        ).count()
        yield CounterMetricFamily(
            "shopper_destroy_retries", "Failed destroy attempts (each one is retried).", value=retries
        )

        age = GaugeMetricFamily(
            "shopper_offer_data_age_seconds",
            "Seconds since the provider's offer feed last answered successfully.",
            labels=["provider"],
        )
        for provider, last in ProviderFeed.objects.exclude(last_success_at=None).values_list(
            "provider", "last_success_at"
        ):
            age.add_metric([provider], max(0.0, (now - last).total_seconds()))
        yield age

        lags: list[float] = []
        for data in RentalEvent.objects.filter(
            kind=EventKind.DEADLINE, at__gte=now - DEADLINE_LAG_WINDOW
        ).values_list("data", flat=True):
            try:
                lags.append(float((data or {}).get("lag_seconds", 0)))
            except (TypeError, ValueError, AttributeError):
                continue
        lag = GaugeMetricFamily(
            "shopper_deadline_lag_seconds",
            "Lateness of deadline enforcement over the last hour (stat=max|p95; 0 when none).",
            labels=["stat"],
        )
        lag.add_metric(["max"], max(lags, default=0.0))
        lag.add_metric(["p95"], _p95(lags))
        yield lag

        # Decimal throughout, float only for the exposition.
        spend = Decimal(0)
        for rental in Rental.objects.filter(status__in=BILLING_STATUSES).only(
            "price_per_hour", "markup_percent"
        ):
            spend += rental.charged_price_per_hour
        yield GaugeMetricFamily(
            "shopper_spend_per_hour_usd",
            "Charged price per hour of all rentals currently billing (active, stopping).",
            value=float(spend),
        )

        # Provider balances as the safety loop last read them (sessions/balances.py).
        from sessions.balances import burn_per_hour
        from sessions.leader import lease_current
        from sessions.models import ProviderBalance

        balance = GaugeMetricFamily(
            "shopper_provider_balance_usd",
            "Provider account balance as last read (only providers with a balance endpoint).",
            labels=["provider"],
        )
        covers = GaugeMetricFamily(
            "shopper_provider_balance_hours",
            "Hours the provider balance covers at the current burn rate (absent at no burn).",
            labels=["provider"],
        )
        for row in ProviderBalance.objects.exclude(balance=None).order_by("provider"):
            balance.add_metric([row.provider], float(row.balance))
            burn = burn_per_hour(row.provider)
            if burn:
                covers.add_metric([row.provider], float(row.balance / burn))
        yield balance
        yield covers
        yield GaugeMetricFamily(
            "shopper_safety_loop_acting",
            "1 while a safety loop holds the lease (sessions/leader.py), else 0: alert on 0.",
            value=1 if lease_current(now) else 0,
        )


_db_registry = CollectorRegistry(auto_describe=False)
_db_registry.register(ShopperCollector())


def _process_registry():
    """The in-process metrics, or all processes' when prometheus multiprocess mode is on."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _denied(detail: str, code: str, status: int) -> JsonResponse:
    response = JsonResponse({"detail": detail, "code": code}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _check_access(request: HttpRequest) -> JsonResponse | None:
    token = settings.METRICS_TOKEN or ""
    if token:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _denied("Metrics require a bearer token.", "not_authenticated", 401)
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _denied("Invalid metrics token.", "authentication_failed", 401)
        return None
    if request.META.get("REMOTE_ADDR", "") not in LOOPBACK:
        return _denied(
            "Metrics are only served to loopback clients unless METRICS_TOKEN is set.", "forbidden", 403
        )
    return None


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    denied = _check_access(request)
    if denied is not None:
        return denied
    body = generate_latest(_process_registry()) + generate_latest(_db_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
