"""Project-level pages and endpoints: the home dashboard, API tokens, health."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.utils import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.response import Response

from common.cache import local_cache
from common.htmx import HtmxHttpRequest, is_fragment
from inventory.services import offers_freshness
from shopper.auth import TOKEN_CACHE_PREFIX, ApiTokenAuthentication
from shopper.forms import ApiTokenForm, TimeZoneForm
from shopper.middleware import PROFILE_ZONE_SESSION_KEY, TZ_COOKIE, zone_named
from shopper.models import ApiToken, Profile

log = logging.getLogger(__name__)

LIVE_LIMIT = 20
RECENT_LIMIT = 10
TEAM_LIVE_LIMIT = 100
CENT = Decimal("0.01")


# --------------------------------------------------------------------------------------------
# Home dashboard
# --------------------------------------------------------------------------------------------
def _month_spend(records) -> Decimal:
    """This month's charged spend of ``records``, rounded once (as the budget's "spent" is)."""
    from costs.services import group_records

    return sum((row["amount"] for row in group_records(records, "month")), Decimal(0)).quantize(CENT)


@require_GET
@login_required
def home(request: HtmxHttpRequest) -> HttpResponse:
    """My live and recent sessions and my spend this month; staff also see the whole team.

    A bounded number of queries whatever the number of rentals: one per table, plus the
    budget and spend reads of ``costs.services`` (no per-row queries: cost so far is computed
    from the row itself).
    """
    # costs → sessions → inventory; the project package wires them (imported here, not at
    # import time, so that loading shopper.urls does not depend on the apps' import order).
    from costs import services as costs
    from costs.views import budget_meter
    from sessions.models import LIVE_STATUSES, Rental

    user, now = request.user, timezone.now()
    mine = Rental.objects.filter(consumer=user)
    context = {
        "now": now,
        "live_rentals": list(mine.live().order_by("-created_at")[:LIVE_LIMIT]),
    }
    if is_fragment(request):
        return render(request, "home.html#live-sessions", context)

    start = costs.month_start(now)
    end = costs.next_month(start)
    budgets = costs.budget_status(user=user, now=now)
    if user.is_staff:  # the team's spend records hold mine too: read them once
        team_records = costs.spend_records(start=start, end=end, now=now)
        name = user.get_username()
        my_records = [r for r in team_records if r.consumer == name]
    else:
        my_records = costs.spend_records(start=start, end=end, user=user, now=now)
    context.update(
        recent_rentals=list(mine.exclude(status__in=LIVE_STATUSES).order_by("-created_at")[:RECENT_LIMIT]),
        month=start,
        my_spend=_month_spend(my_records),
        my_budget=budget_meter(budgets["user"]),
    )
    if user.is_staff:
        people = costs.group_records(team_records, "consumer")
        context.update(
            team_live=list(
                Rental.objects.live().select_related("consumer").order_by("-created_at")[:TEAM_LIVE_LIMIT]
            ),
            team_spend=_month_spend(team_records),
            team_people=sorted(people, key=lambda row: -row["amount"])[:10],
            team_budget=budget_meter(budgets["team"]),
        )
    return render(request, "home.html", context)


# --------------------------------------------------------------------------------------------
# API tokens
# --------------------------------------------------------------------------------------------
def _tokens_context(request: HttpRequest, **extra) -> dict:
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at")
    return {"tokens": tokens, "now": timezone.now(), **extra}


@require_http_methods(["GET", "POST"])
@login_required
def tokens(request: HtmxHttpRequest) -> HttpResponse:
    """List my API tokens and create one. The raw key is in this POST's response only: it is
    never stored (only its hash), put in the session or shown again."""
    form = ApiTokenForm(request.POST or None, user=request.user)
    if request.method == "POST":
        if not form.is_valid():
            return render(request, "shopper/tokens.html", _tokens_context(request, form=form), status=400)
        token, raw = ApiToken.issue(
            user=request.user, name=form.cleaned_data["name"], expires_at=form.expires_at
        )
        log.info(
            "api token created: user=%s name=%r prefix=%s id=%s expires_at=%s",
            request.user.get_username(),
            token.name,
            token.prefix,
            token.pk,
            token.expires_at.isoformat() if token.expires_at else "never",
        )
        context = _tokens_context(request, form=ApiTokenForm(user=request.user), new_token=token, raw_key=raw)
        response = render(request, "shopper/tokens.html", context)
        response["Cache-Control"] = "no-store"  # the key must not sit in a cache or the back button
        return response
    return render(request, "shopper/tokens.html", _tokens_context(request, form=form))


@require_POST
@login_required
def token_revoke(request: HtmxHttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of my tokens (404 for anyone else's). It stops working at once: the database
    row first, then the inventory fast path's cache entry in this process."""
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    if token.revoked_at is None:
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        local_cache.delete(f"{TOKEN_CACHE_PREFIX}{token.key_hash}")
        log.info(
            "api token revoked: user=%s name=%r prefix=%s id=%s",
            request.user.get_username(),
            token.name,
            token.prefix,
            token.pk,
        )
        message = f"Revoked the token “{token.name}” ({token.prefix}…). Scripts using it now get 401."
    else:
        message = f"The token “{token.name}” was already revoked."
    if is_fragment(request):
        context = _tokens_context(request, message=message)
        return render(request, "shopper/tokens.html#token-table", context)
    messages.success(request, message)
    return redirect("tokens")


# --------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------
def _health_caller_signed_in(request) -> bool:
    """A session or a valid API token; a bad token is just anonymous here (never a 401: probes)."""
    if request._request.user.is_authenticated:
        return True
    try:
        return ApiTokenAuthentication().authenticate(request) is not None
    except exceptions.AuthenticationFailed:
        return False


@extend_schema(
    summary="Liveness, database and provider status",
    auth=[],
    responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT},
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
def health(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        freshness = offers_freshness()
    except DatabaseError as exc:
        return Response({"status": "error", "database": f"unavailable: {type(exc).__name__}"}, status=503)
    # Health is public (load balancers, probes); a provider's error text is for signed-in users:
    # it can quote account details back, and anonymous callers only need to know it is failing.
    signed_in = _health_caller_signed_in(request)
    providers = [
        {
            "name": p["name"],
            "enabled": p["enabled"],
            "reason": p["reason"],
            "last_success_at": p["last_success_at"],
            "last_error": p["last_error"] if signed_in or not p["last_error"] else "failing",
            "offers": p["offers"],
            "search_pages": p["search_pages"],  # requests the last search took (never capped)
        }
        for p in freshness["providers"]
    ]
    # Where the provider has a balance endpoint (sessions/balances.py): an account detail, so only
    # signed-in callers see the figure; anonymous probes see that there is one.
    from sessions.models import ProviderBalance

    balances = {b.provider: b for b in ProviderBalance.objects.exclude(balance=None)}
    for p in providers:
        row = balances.get(p["name"])
        p["balance"] = (
            None
            if row is None
            else {
                "usd": str(row.balance) if signed_in else "hidden",
                "fetched_at": row.fetched_at.isoformat() if row.fetched_at else None,
            }
        )
    return Response(
        {"status": "ok", "database": "ok", "sandbox": freshness["sandbox"], "providers": providers}
    )


# --------------------------------------------------------------------------------------------
# Audit log
# --------------------------------------------------------------------------------------------
@require_GET
@login_required
def audit(request: HttpRequest) -> HttpResponse:
    """Staff: one audit log over rental events, API tokens and admin edits (shopper/audit.py).
    Anyone else gets a 404, as on the safety page; bad filters are shown as messages."""
    from django.http import Http404

    from shopper.audit import audit_context

    if not request.user.is_staff:
        raise Http404
    return render(request, "shopper/audit.html", audit_context(request.GET))


# --------------------------------------------------------------------------------------------
# Settings: the time zone pages write times in
# --------------------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@login_required
def user_settings(request: HttpRequest) -> HttpResponse:
    """The person's time zone: empty follows the browser (cookie ``tz``), else an IANA name.
    Kept in the profile (every browser of theirs) and in this session (no query per page)."""
    profile = Profile.objects.filter(user=request.user).first() or Profile(user=request.user)
    form = TimeZoneForm(request.POST or None, initial={"time_zone": profile.time_zone})
    if request.method == "POST" and form.is_valid():
        profile.time_zone = form.cleaned_data["time_zone"]
        profile.save()
        request.session[PROFILE_ZONE_SESSION_KEY] = profile.time_zone
        shown = profile.time_zone or "your browser's time zone"
        messages.success(request, f"Times are now shown in {shown}.")
        return redirect("settings")
    context = {
        "form": form,
        "browser_zone": getattr(zone_named(request.COOKIES.get(TZ_COOKIE, "")), "key", ""),
        "now": timezone.now(),
    }
    return render(request, "shopper/settings.html", context, status=400 if form.errors else 200)
