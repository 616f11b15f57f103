"""Offer workflows: refreshing the menu from every enabled provider."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max
from django.utils import timezone

from inventory import providers as registry
from inventory.models import GpuSpec, Offer, ProviderFeed
from inventory.providers.base import OfferData, ProviderError, RateLimited

log = logging.getLogger(__name__)

OFFER_UPDATE_FIELDS = [
    "gpu_type",
    "gpu_count",
    "vram_gb",
    "price_per_hour",
    "price_per_gpu_hour",
    "location",
    "host",
    "reliability",
    "cpu_cores",
    "ram_gb",
    "disk_gb",
    "cuda_version",
    "driver_version",
    "storage_price_per_gb_hour",
    "disk_gb_default",
    "max_disk_gb",
    "inet_down_price_per_gb",
    "inet_up_price_per_gb",
    "inet_down_mbps",
    "inet_up_mbps",
    "verified",
    "datacenter",
    "max_duration_hours",
    "available",
    "fetched_at",
]

# The columns an upsert writes, in this order (COPY on PostgreSQL).
COPY_FIELDS = ["provider", "provider_offer_id", *OFFER_UPDATE_FIELDS, "first_seen_at"]


@dataclass
class RefreshResult:
    provider: str
    outcome: str  # "refreshed", "cached", "disabled", "rate_limited", "error"
    offers: int = 0
    detail: str = ""


def offers_refresh(*, force: bool = False, now=None) -> list[RefreshResult]:
    """Fetch every provider's offers and upsert them; one provider failing never touches the
    other's offers.

    Each provider is asked at most once per ``SHOPPER_OFFERS_CACHE_SECONDS`` (unless ``force``);
    while it fails or rate-limits, the wait doubles up to ``SHOPPER_OFFERS_MAX_BACKOFF_SECONDS``.
    Offers missing from a successful answer become unavailable; a failed answer changes nothing.
    """
    results = []
    for status in registry.provider_statuses():
        name = status["name"]
        now_ = now or timezone.now()
        feed, _ = ProviderFeed.objects.get_or_create(provider=name)
        if not status["enabled"]:
            # A provider switched off must not stay rentable from stale rows.
            withdrawn = Offer.objects.filter(provider=name, available=True).update(available=False)
            changes = {"last_attempt_at": now_} if withdrawn else {}  # a new menu version
            ProviderFeed.objects.filter(pk=name).update(last_error=status["reason"], offer_count=0, **changes)
            results.append(RefreshResult(name, "disabled", detail=status["reason"]))
            continue
        if not force and feed.next_fetch_at and feed.next_fetch_at > now_:
            results.append(RefreshResult(name, "cached", feed.offer_count))
            continue
        results.append(_refresh_provider(name, feed, now_))
    return results


def _refresh_provider(name: str, feed: ProviderFeed, now) -> RefreshResult:
    try:
        provider = registry.get_provider(name)
        offers = provider.search_offers()  # outside any transaction: it may take seconds
    except (ProviderError, registry.ProviderDisabled) as exc:
        return _record_failure(name, feed, now, exc)
    count = offers_upsert(provider=name, offers=offers, fetched_at=now)
    ProviderFeed.objects.filter(pk=name).update(
        last_attempt_at=now,
        last_success_at=now,
        last_error="",
        consecutive_failures=0,
        next_fetch_at=now + timedelta(seconds=settings.SHOPPER_OFFERS_CACHE_SECONDS),
        offer_count=count,
        search_pages=provider.last_search_pages,
    )
    return RefreshResult(name, "refreshed", count)


def _record_failure(name: str, feed: ProviderFeed, now, exc: Exception) -> RefreshResult:
    failures = feed.consecutive_failures + 1
    base = settings.SHOPPER_OFFERS_CACHE_SECONDS
    wait = min(base * 2 ** (failures - 1), settings.SHOPPER_OFFERS_MAX_BACKOFF_SECONDS)
    if isinstance(exc, RateLimited) and exc.retry_after:
        wait = max(wait, min(exc.retry_after, settings.SHOPPER_OFFERS_MAX_BACKOFF_SECONDS))
    ProviderFeed.objects.filter(pk=name).update(
        last_attempt_at=now,
        last_error=f"{type(exc).__name__}: {exc}"[:500],
        consecutive_failures=failures,
        next_fetch_at=now + timedelta(seconds=wait),
    )
    outcome = "rate_limited" if isinstance(exc, RateLimited) else "error"
    log.warning("offers_refresh %s %s (retry in %ss): %s", name, outcome, wait, exc)
    return RefreshResult(name, outcome, detail=str(exc))


def offers_upsert(*, provider: str, offers: list[OfferData], fetched_at) -> int:
    """Insert or update offers in bulk; those of ``provider`` not in ``offers`` become unavailable."""
    rows = {}
    for o in offers:
        if o.provider != provider or o.gpu_count < 1:
            continue
        values = {name: getattr(o, name) for name in OFFER_UPDATE_FIELDS if hasattr(o, name)}
        values.update(
            provider=provider,
            price_per_gpu_hour=Offer.per_gpu(o.price_per_hour, o.gpu_count),
            available=True,
            fetched_at=fetched_at,
            first_seen_at=fetched_at,
        )
        rows[o.provider_offer_id] = [
            values[name] if name != "provider_offer_id" else o.provider_offer_id for name in COPY_FIELDS
        ]
    if connection.vendor == "postgresql":
        _upsert_postgresql(provider, list(rows.values()), fetched_at)
    else:
        with transaction.atomic():
            Offer.objects.bulk_create(
                [Offer(**dict(zip(COPY_FIELDS, row, strict=True))) for row in rows.values()],
                batch_size=500,
                update_conflicts=True,
                unique_fields=["provider", "provider_offer_id"],
                update_fields=OFFER_UPDATE_FIELDS,
            )
            _withdraw_vanished(provider, fetched_at)
    return len(rows)


def _withdraw_vanished(provider: str, fetched_at) -> None:
    # Vanished offers: everything of this provider this answer did not touch.
    Offer.objects.filter(provider=provider, available=True, fetched_at__lt=fetched_at).update(available=False)


def _upsert_postgresql(provider: str, rows: list[list], fetched_at) -> None:
    """The same upsert as ``bulk_create(update_conflicts=True)``, through COPY into a temporary
    table and one ``INSERT … ON CONFLICT DO UPDATE``: Django builds and binds every row of a
    bulk_create in Python, which made a refresh of 100k offers take 10.6 s. Then ANALYZE, so
    the planner knows the new distribution of a menu that may have changed wholesale."""
    table = Offer._meta.db_table
    columns = [Offer._meta.get_field(name).column for name in COPY_FIELDS]
    names = ", ".join(columns)
    updates = ", ".join(
        f"{Offer._meta.get_field(name).column} = EXCLUDED.{Offer._meta.get_field(name).column}"
        for name in OFFER_UPDATE_FIELDS
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE offer_load ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA"
        )
        with cursor.cursor.copy(f"COPY offer_load ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM offer_load "
            f"ON CONFLICT (provider, provider_offer_id) DO UPDATE SET {updates}"
        )
        cursor.execute("DROP TABLE offer_load")  # ON COMMIT does not fire inside an outer transaction
        _withdraw_vanished(provider, fetched_at)
    if len(rows) >= 1000:
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {table}")


def menu_version() -> str:
    """Changes whenever any provider's offers or the GPU spec table were written (two tiny
    queries). Every write of ``Offer.available`` or its columns goes with a new
    ``last_attempt_at``: web processes rebuild their in-memory menu (``inventory/menu.py``) on a
    new version only."""
    latest = ProviderFeed.objects.aggregate(v=Max("last_attempt_at"))["v"]
    version = latest.isoformat() if latest else "0"
    # The value figures come from the GPU spec table: a reload (load_gpu_specs) is a new menu.
    specs = GpuSpec.objects.aggregate(at=Max("updated_at"), n=Count("id"))
    return f"{version} specs {specs['n']}@{specs['at'].isoformat() if specs['at'] else '-'}"


def offers_freshness() -> dict:
    """Per-provider feed state for the menu's "as of 40 s ago" line and the health endpoint."""
    feeds = {f.provider: f for f in ProviderFeed.objects.all()}
    out = []
    for status in registry.provider_statuses():
        feed = feeds.get(status["name"])
        out.append(
            {
                **status,
                "last_success_at": feed.last_success_at if feed else None,
                "last_error": feed.last_error if feed else "",
                "offers": feed.offer_count if feed else 0,
                "search_pages": feed.search_pages if feed else 0,
            }
        )
    return {"providers": out, "sandbox": settings.SHOPPER_SANDBOX}
