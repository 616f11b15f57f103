"""Project-level pages and endpoints: home, health."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.utils import DatabaseError
from django.shortcuts import render
from django.views.decorators.http import require_GET
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.response import Response

from inventory.services import offers_freshness


@require_GET
@login_required
def home(request):
    from sessions.models import Rental

    rentals = Rental.objects.filter(consumer=request.user)
    context = {
        "live_rentals": rentals.live().order_by("-created_at")[:20],
        "recent_rentals": rentals.exclude(id__in=rentals.live().values("id")).order_by("-created_at")[:10],
    }
    return render(request, "home.html", context)


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
    providers = [
        {
            "name": p["name"],
            "enabled": p["enabled"],
            "reason": p["reason"],
            "last_success_at": p["last_success_at"],
            "last_error": p["last_error"],
            "offers": p["offers"],
        }
        for p in freshness["providers"]
    ]
    return Response(
        {"status": "ok", "database": "ok", "sandbox": freshness["sandbox"], "providers": providers}
    )
